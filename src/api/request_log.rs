//! The request log: one line per request that reached the router, with its request id, tenant,
//! method, route, the node that served it (this one, or the holder of its message it was
//! forwarded to, which logs it under the same request id), status and duration, for operators (`codebox --log-format json serve` makes
//! each line a JSON object a log pipeline can index).
//!
//! What a line never holds: a token (the tenant is looked up from it, the token itself is
//! not written), the query string (a signed link's signature is in it), an id in the path
//! (the route is the matched template, such as `/v1/files/{file_id}`), or any body.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::auth::caller_of;
use crate::ids;

/// The header a request id travels in, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Logs the request after it is answered, and names its request id in the response.
pub(super) async fn log_request(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id_of(request.headers());
    // Set on the request too, so that a request forwarded to the node holding its message is
    // logged there under the same id.
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let tenant = caller_of(request.headers(), &state.tokens)
        .map_or_else(|_| "-".to_owned(), |caller| caller.tenant.to_string());
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    // The node that did the work: this one, or the holder the request was forwarded to.
    let node = response
        .headers()
        .get(super::forward::SERVED_BY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    tracing::info!(
        target: "codebox::request",
        request_id,
        tenant,
        method,
        route,
        node,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// The caller's own request id when it is a sane one (so that a chat backend's id shows in
/// codebox's log), else a new one. A caller's id is written to the log, so it must be short
/// and plain: the same rule as the ids callers choose.
fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| ids::check_external("x-request-id", value).is_ok())
        .map_or_else(|| ids::mint("req"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        assert!(request_id_of(&headers).starts_with("req_"));
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("backend-42"));
        assert_eq!(request_id_of(&headers), "backend-42");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("a b\"c"));
        assert!(request_id_of(&headers).starts_with("req_"));
    }
}
