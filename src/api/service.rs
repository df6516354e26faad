//! Service routes: liveness, readiness (catalog, blob store and engine reachable), Prometheus
//! metrics, and the OpenAPI document generated from the handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// `/healthz` and `/readyz` bodies.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is not.
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// The catalog, the blob store and the container engine all answer.
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut failing = Vec::new();
    for (part, error) in state.supervisor.check_parts().await {
        if let Some(error) = error {
            tracing::warn!(part, %error, "not ready");
            failing.push(part);
        }
    }
    if failing.is_empty() {
        return healthz().await.into_response();
    }
    ApiError::busy(format!("not ready: {} unreachable", failing.join(", ")), 5).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let waiting = state.limiter.waiting();
    metrics::gauge!("codebox_runs_waiting").set(waiting as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Documents `/openapi.json` itself in the document.
pub fn add_openapi_route(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, ResponseBuilder};
    let response = ResponseBuilder::new()
        .description("This document")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(ObjectBuilder::new()))
                .build(),
        )
        .build();
    let operation = OperationBuilder::new()
        .tag("service")
        .summary(Some("The OpenAPI document"))
        .response("200", response)
        .build();
    openapi.paths.paths.insert(
        "/openapi.json".to_owned(),
        PathItem::new(HttpMethod::Get, operation),
    );
}

/// Serves the OpenAPI document.
pub async fn openapi(document: Arc<str>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.to_string(),
    )
        .into_response()
}

/// Any route that does not exist.
pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}
