//! The HTTP API of `shared/API.md` (axum). Only this module knows HTTP and JSON: it parses
//! requests, calls the [`Supervisor`], and turns its records and errors into responses.
//!
//! | file | routes |
//! |---|---|
//! | `files.rs` | uploads, the user's listing, file metadata, renaming, deletion, downloads (token or signed link) |
//! | `runs.rs` | runs, as JSON or as server-sent events, and run lookup |
//! | `messages.rs` | per-message and per-chat listings, link rendering, workspace deletion |
//! | `text.rs` | what a model reads: a file's bounded text, a message's files as context |
//! | `usage.rs` | a user's stored and on-disk bytes against their quotas |
//! | `tools.rs` | tools for a model: their definitions, and a model's call of one |
//! | `admin.rs` | operators: workspaces, garbage collection, retention policy and quotas |
//! | `service.rs` | `/healthz`, `/readyz`, `/metrics`, `/openapi.json` |
//! | `jupyter/` | `/jupyter/api/...`: the Jupyter Server kernels API and its WebSocket |
//!
//! Beside them, `forward.rs` passes a message's requests on to the instance that holds the
//! message, when several share one catalog.
//!
//! Under the routes, `connections.rs` accepts connections and holds the timeouts and the
//! connection cap that protect the server from hostile clients.

mod admin;
pub mod auth;
mod chats;
pub mod connections;
pub mod download;
pub mod dto;
pub mod error;
mod files;
pub mod forward;
pub mod jupyter;
mod limiter;
mod messages;
pub mod request_log;
mod runs;
mod service;
pub mod signing;
mod text;
mod tools;
mod usage;

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

use crate::supervisor::FileRecord;
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
    /// The Jupyter kernels open on this server.
    pub jupyter: Arc<jupyter::Kernels>,
}

impl AppState {
    /// A state for `supervisor`, with the server settings of its configuration.
    pub fn new(supervisor: Arc<Supervisor>, tokens: Tokens, signer: Signer) -> Self {
        let server = &supervisor.config().server;
        let limiter = RunLimiter::new(server.max_runs_in_flight, server.max_queued_runs);
        Self {
            public_url: server.public_base_url().into(),
            limiter: Arc::new(limiter),
            tokens: Arc::new(tokens),
            signer,
            metrics: metrics_handle(),
            jupyter: Arc::new(jupyter::Kernels::default()),
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
        let signature = self.signer.sign(file.into(), expires);
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
        (name = "tools", description = "Tools a chat model calls"),
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

/// Room an upload's form takes beyond its file: the part headers, the boundaries and the text
/// fields (each at most [`files::MAX_FORM_TEXT_BYTES`]).
const FORM_OVERHEAD_BYTES: u64 = 64 * 1024;

/// The API's router, and its OpenAPI document generated from the same handlers.
pub fn router(state: AppState) -> Router {
    let config = state.supervisor.config();
    let max_body = config.server.max_body_bytes.as_u64();
    let max_upload_body = config
        .limits
        .max_upload_bytes
        .as_u64()
        .saturating_add(FORM_OVERHEAD_BYTES);
    let (upload_schemas, upload_paths, upload) = routes!(files::upload_file);
    let (api, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(files::list_files))
        .routes(routes!(
            files::get_file,
            files::rename_file,
            files::delete_file
        ))
        .routes(routes!(files::download))
        .routes(routes!(text::file_text))
        .routes(routes!(text::message_context))
        .routes(routes!(runs::create_run))
        .routes(routes!(runs::get_run))
        .routes(routes!(messages::message_files))
        .routes(routes!(messages::message_attachments))
        .routes(routes!(messages::chat_files))
        .routes(routes!(chats::get_chat, chats::delete_chat))
        .routes(routes!(messages::render))
        .routes(routes!(messages::delete_workspace))
        .routes(routes!(usage::usage))
        .routes(routes!(tools::list_tools))
        .routes(routes!(tools::call_tool))
        .routes(routes!(admin::workspaces))
        .routes(routes!(admin::gc))
        .routes(routes!(admin::nodes))
        .routes(routes!(admin::files))
        .routes(routes!(admin::retention))
        .routes(routes!(service::healthz))
        .routes(routes!(service::readyz))
        .routes(routes!(service::metrics))
        // Layers apply to the routes added before them: every route so far takes JSON (or
        // nothing) under the body limit.
        .layer(DefaultBodyLimit::max(body_limit(max_body)))
        .layer(middleware::from_fn_with_state(
            max_body,
            refuse_declared_oversize,
        ))
        // Uploads are streamed and capped by the upload limit (plus the form around the
        // file), not the JSON body limit.
        .routes((
            upload_schemas,
            upload_paths,
            upload
                .layer(DefaultBodyLimit::max(body_limit(max_upload_body)))
                .layer(middleware::from_fn_with_state(
                    max_upload_body,
                    refuse_declared_oversize,
                )),
        ))
        .split_for_parts();
    service::add_openapi_route(&mut openapi);
    document_configured_limits(&mut openapi, &state);
    document_transport_errors(&mut openapi);
    let document: Arc<str> = openapi.to_json().unwrap_or_default().into();
    // The Jupyter routes follow Jupyter's contract, not this API's, and are not in its
    // document; their JSON bodies are small.
    let jupyter = jupyter::routes(state.clone())
        .layer(DefaultBodyLimit::max(body_limit(max_body)))
        .layer(middleware::from_fn_with_state(
            max_body,
            refuse_declared_oversize,
        ));
    api.merge(jupyter)
        .route(
            "/openapi.json",
            axum::routing::get(move || service::openapi(document.clone())),
        )
        .fallback(service::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::to_holder,
        ))
        .layer(middleware::from_fn(rejections_as_api_errors))
        .layer(middleware::from_fn(count_requests))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_log::log_request,
        ))
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

/// A byte count as the `usize` axum's body limit takes.
fn body_limit(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Refuses a request whose `Content-Length` is over `limit` with 413 before a byte of its body
/// is read: a client announcing gigabytes gets its answer at once instead of being read
/// until the cap.
async fn refuse_declared_oversize(
    axum::extract::State(limit): axum::extract::State<u64>,
    request: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => error::ApiError::too_large(format!(
            "the request body of {length} bytes is larger than this route's limit of {limit} \
             bytes"
        ))
        .closing_connection()
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Gives axum's own answers (a malformed path, query or body, an unknown route, a method the
/// route does not take: plain text or no body at all) the API's JSON error shape and status,
/// so that every error a client sees has the documented body. A 405 keeps its `Allow`.
async fn rejections_as_api_errors(request: Request, next: Next) -> Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    let status = response.status();
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection bodies are short sentences; anything longer is cut.
    let body = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).into_owned();
    let Some(error) = error::ApiError::from_status(status, detail) else {
        return Response::from_parts(parts, axum::body::Body::from(body));
    };
    let mut answer = error.into_response();
    for name in [header::ALLOW, header::CONNECTION] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// Adds the errors the transport layer may answer any operation with to the document: 413 for
/// a `Content-Length` over the limit (any request may carry a body), and 408 for a request
/// body that arrives too slowly (operations that take one).
fn document_transport_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error_response = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for item in openapi.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut operation.responses.responses;
            responses
                .entry("413".to_owned())
                .or_insert_with(|| error_response("The request body is over the limit"));
            if operation.request_body.is_some() {
                responses
                    .entry("408".to_owned())
                    .or_insert_with(|| error_response("The request body arrived too slowly"));
            }
        }
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

/// Serves `state` on `listener` (with the connection limits of `server.*`, see
/// [`connections`]) until `shutdown` completes; then stops accepting, lets runs in flight
/// finish for up to the configured grace period, and marks the rest as failed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let supervisor = state.supervisor.clone();
    let grace = supervisor.config().server.shutdown_grace;
    let limits = connections::ConnectionLimits::of(&supervisor.config().server);
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let server = connections::serve(listener, router(state), limits, stopping_rx);
    // The signal, then the grace period: whichever ends first, the server or the grace,
    // ends the serving.
    let grace_over = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests; waiting for runs in flight");
        let _ = stopping_tx.send(true);
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
