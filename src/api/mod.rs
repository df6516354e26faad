//! The HTTP API of `shared/API.md` (axum). Only this module knows HTTP and JSON: it parses
//! requests, calls the [`Supervisor`], and turns its records and errors into responses.
//!
//! | file | routes |
//! |---|---|
//! | `files.rs` | uploads, file metadata, deletion, downloads (token or signed link) |
//! | `runs.rs` | runs, as JSON or as server-sent events, and run lookup |
//! | `messages.rs` | per-message and per-chat listings, link rendering, workspace deletion |
//! | `admin.rs` | operators: workspaces, garbage collection, retention policy |
//! | `service.rs` | `/healthz`, `/readyz`, `/metrics`, `/openapi.json` |

mod admin;
pub mod auth;
pub mod download;
pub mod dto;
pub mod error;
mod files;
mod limiter;
mod messages;
mod runs;
mod service;
pub mod signing;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::FileRecord;
use crate::supervisor::Supervisor;
pub use auth::Tokens;
pub use limiter::RunLimiter;
pub use signing::Signer;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The run pipeline and its stores.
    pub supervisor: Arc<Supervisor>,
    /// The accepted tokens.
    pub tokens: Arc<Tokens>,
    /// Signs download links.
    pub signer: Signer,
    /// Bounds the runs in flight and waiting.
    pub limiter: Arc<RunLimiter>,
    /// The base URL of signed links, without a trailing slash.
    pub public_url: Arc<str>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// A state for `supervisor`, with the server settings of its configuration.
    pub fn new(supervisor: Arc<Supervisor>, tokens: Tokens, signer: Signer) -> Self {
        let server = &supervisor.config().server;
        let public_url = server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", server.listen));
        let limiter = RunLimiter::new(server.max_runs_in_flight, server.max_queued_runs);
        Self {
            public_url: public_url.trim_end_matches('/').into(),
            limiter: Arc::new(limiter),
            tokens: Arc::new(tokens),
            signer,
            metrics: metrics_handle(),
            supervisor,
        }
    }

    /// The signed download URL of a file, valid for the configured time.
    pub fn download_url(&self, file: &FileRecord) -> String {
        let ttl = self.supervisor.config().server.download_url_ttl;
        let expires = SystemTime::now()
            .checked_add(ttl)
            .unwrap_or(SystemTime::now())
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let signature = self
            .signer
            .sign(&file.id, &file.tenant, &file.user_id, expires);
        format!(
            "{}/v1/files/{}/content?expires={expires}&signature={signature}",
            self.public_url, file.id
        )
    }

    /// The API view of a file, with its signed link.
    pub fn file_dto(&self, file: &FileRecord) -> dto::File {
        dto::File::new(file, Some(self.download_url(file)))
    }
}

/// The process-wide Prometheus recorder (metrics macros write to one global recorder).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then ours only
            // renders what it sees, which is nothing, and the process keeps the other one.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "codebox",
        description = "Runs chat-generated code in sandboxes and serves the files it writes."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "files", description = "Uploads and downloads"),
        (name = "runs", description = "Code execution"),
        (name = "listings", description = "Files per message and per chat"),
        (name = "admin", description = "Operators"),
        (name = "service", description = "Health and metrics"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's router, and its OpenAPI document generated from the same handlers.
pub fn router(state: AppState) -> Router {
    let max_body = usize::try_from(state.supervisor.config().server.max_body_bytes.as_u64())
        .unwrap_or(usize::MAX);
    let (upload_schemas, upload_paths, upload) = routes!(files::upload_file);
    let (api, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        // Uploads are streamed and capped by the upload limit, not the body limit.
        .routes((
            upload_schemas,
            upload_paths,
            upload.layer(DefaultBodyLimit::disable()),
        ))
        .routes(routes!(files::get_file, files::delete_file))
        .routes(routes!(files::download))
        .routes(routes!(runs::create_run))
        .routes(routes!(runs::get_run))
        .routes(routes!(messages::message_files))
        .routes(routes!(messages::message_attachments))
        .routes(routes!(messages::chat_files))
        .routes(routes!(messages::render))
        .routes(routes!(messages::delete_workspace))
        .routes(routes!(admin::workspaces))
        .routes(routes!(admin::gc))
        .routes(routes!(admin::retention))
        .routes(routes!(service::healthz))
        .routes(routes!(service::readyz))
        .routes(routes!(service::metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .split_for_parts();
    service::add_openapi_route(&mut openapi);
    document_configured_limits(&mut openapi, &state);
    let document: Arc<str> = openapi.to_json().unwrap_or_default().into();
    api.route(
        "/openapi.json",
        axum::routing::get(move || service::openapi(document.clone())),
    )
    .fallback(service::not_found)
    .layer(middleware::from_fn(rejections_as_api_errors))
    .layer(middleware::from_fn(count_requests))
    .with_state(state)
}

/// Writes the limits that come from the configuration into the OpenAPI document, so that it
/// describes this server: the longest `timeout_secs` a run may ask for.
fn document_configured_limits(openapi: &mut utoipa::openapi::OpenApi, state: &AppState) {
    use utoipa::openapi::{RefOr, schema::Schema};
    let max_timeout = state.supervisor.config().limits.max_timeout.as_secs();
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(run_create))) = components.schemas.get_mut("RunCreate")
        && let Some(RefOr::T(Schema::Object(timeout))) =
            run_create.properties.get_mut("timeout_secs")
    {
        timeout.maximum = Some(max_timeout.into());
    }
}

/// Gives axum's own rejections (a malformed path, query or form: plain-text 400, 413 or 415)
/// the API's JSON error shape and status, so that every error a client sees is documented.
async fn rejections_as_api_errors(request: Request, next: Next) -> Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    let status = response.status();
    if is_json
        || !matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
        )
    {
        return response;
    }
    // Rejection bodies are short sentences; anything longer is cut.
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body).into_owned();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        error::ApiError::too_large(message).into_response()
    } else {
        error::ApiError::invalid(message).into_response()
    }
}

/// Counts requests by route and status for `/metrics`.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    metrics::counter!(
        "codebox_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Serves `state` on `listener` until `shutdown` completes; then stops accepting, lets runs in
/// flight finish for up to the configured grace period, and marks the rest as failed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let supervisor = state.supervisor.clone();
    let grace = supervisor.config().server.shutdown_grace;
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests; waiting for runs in flight");
        let _ = stopping_tx.send(true);
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    let mut stopping = stopping_rx;
    let grace_over = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served?,
        () = grace_over => {
            tracing::warn!("shutdown grace period over; runs still in flight are marked failed");
        }
    }
    match supervisor.fail_interrupted_runs().await {
        Ok(0) => {}
        Ok(count) => tracing::warn!(count, "runs were interrupted by the shutdown"),
        Err(error) => tracing::error!(%error, "could not mark interrupted runs"),
    }
    Ok(())
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
