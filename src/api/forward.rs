//! Requests for a message held by another instance, forwarded there. When several instances
//! share one catalog, a message's workspace, interpreter and runs live on one of them (see
//! the supervisor's `placement.rs`); a load balancer may send its requests anywhere, and chat
//! backends do not follow redirects, so the instance that gets one passes it on to the holder
//! and streams the answer back, server-sent events included.
//!
//! Only the routes that touch a workspace are forwarded: a run, a tool call, a workspace's
//! deletion (here) and the Jupyter kernels (`jupyter/`). Everything else reads the shared
//! catalog and blob store and is answered by whichever instance gets it. A forwarded request
//! carries [`FORWARDED_BY`], and one that does is never forwarded again: one hop at most,
//! whatever two instances believe of each other. Every answer names the instance that did the
//! work in [`SERVED_BY`].

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth::owner_of;
use super::error::ApiError;
use crate::ids::MessageId;
use crate::supervisor::Placement;

/// The header a forwarded request carries: the id of the instance that forwarded it.
pub const FORWARDED_BY: &str = "x-codebox-forwarded-by";
/// The header every answer carries: the id of the instance that served the request.
pub const SERVED_BY: &str = "x-codebox-node";

/// Headers that describe one connection, not the request: never passed on (RFC 9110 7.6.1),
/// nor `Host` (the holder's own) and `Content-Length` (set again for the body sent).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// How long connecting to the holder may take before the request is answered 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The field of a JSON body that names the message: runs and tool calls.
#[derive(Deserialize)]
struct MessageField {
    message_id: Option<String>,
}

/// Middleware on every route: names this instance in [`SERVED_BY`] on answers it made itself
/// (a forwarded answer keeps the holder's), and forwards the requests of the routes that
/// touch a workspace when another instance holds the message.
pub async fn to_holder(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let forwardable = !request.headers().contains_key(FORWARDED_BY)
        && matches!(
            (request.method(), route.as_deref()),
            (&Method::POST, Some("/v1/runs" | "/v1/tools/{name}"))
                | (&Method::DELETE, Some("/v1/messages/{message_id}/workspace"))
        );
    let mut response = if forwardable {
        match forward_if_held_elsewhere(&state, request, next).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    } else {
        next.run(request).await
    };
    let node = state.supervisor.instance();
    if !response.headers().contains_key(SERVED_BY)
        && let Ok(value) = HeaderValue::from_str(node)
    {
        response.headers_mut().insert(SERVED_BY, value);
    }
    response
}

/// Reads the message a run, tool call or workspace deletion is for; forwards the request to
/// the holder if that is another instance, else lets the route answer it here. A request this
/// cannot read a message from (no token, a bad body) goes to the route, which says what is
/// wrong with it.
async fn forward_if_held_elsewhere(
    state: &AppState,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let Ok(owner) = owner_of(&parts.headers, &state.tokens) else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let limit = usize::try_from(state.supervisor.config().server.max_body_bytes.as_u64())
        .unwrap_or(usize::MAX);
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    // A body announced over the limit is the route's to refuse, before a byte of it is read.
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    }
    let (message, body) = if parts.method == Method::DELETE {
        (message_in_path(&parts), body)
    } else {
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|error| ApiError::from_body_error("JSON body", &error))?;
        let message = serde_json::from_slice::<MessageField>(&bytes)
            .ok()
            .and_then(|field| field.message_id)
            .and_then(|id| MessageId::parse(id).ok());
        (message, Body::from(bytes))
    };
    let Some(message) = message else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    match state
        .supervisor
        .placement(&owner.tenant, Some(&owner.user), &message)
        .await?
    {
        Placement::Here => Ok(next.run(Request::from_parts(parts, body)).await),
        Placement::Elsewhere { node, url } => {
            forward(state, Hop::of(&parts), body, (&node, &url)).await
        }
    }
}

/// The message id in `/v1/messages/{message_id}/...`.
fn message_in_path(parts: &Parts) -> Option<MessageId> {
    let mut segments = parts.uri.path().trim_start_matches('/').split('/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some("v1"), Some("messages"), Some(id)) => {
            let id = percent_encoding::percent_decode_str(id)
                .decode_utf8()
                .ok()?;
            MessageId::parse(id.into_owned()).ok()
        }
        _ => None,
    }
}

/// The client that forwards requests: no overall timeout (a run may take minutes, an event
/// stream as long), a bounded time to connect.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

/// What is forwarded of a request besides its body.
#[derive(Clone, Copy)]
pub struct Hop<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path and query (the authority is the holder's).
    pub uri: &'a Uri,
    /// The headers, of which those of one connection are left out.
    pub headers: &'a HeaderMap,
}

impl<'a> Hop<'a> {
    /// The request head `parts`.
    pub fn of(parts: &'a Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }

    /// The path and query to ask the holder for.
    pub fn path(&self) -> &'a str {
        self.uri
            .path_and_query()
            .map_or_else(|| self.uri.path(), |path| path.as_str())
    }

    /// The headers to send the holder: the client's, less those of one connection, plus
    /// [`FORWARDED_BY`] naming this instance.
    pub fn headers_for_holder(&self, state: &AppState) -> HeaderMap {
        let mut headers = passed_on(self.headers);
        if let Ok(value) = HeaderValue::from_str(state.supervisor.instance()) {
            headers.insert(HeaderName::from_static(FORWARDED_BY), value);
        }
        headers
    }
}

/// Sends the request to the instance `node` at `url` and streams its answer back as it comes.
/// An instance that cannot be reached is answered 503, to be retried: its heartbeat is still
/// fresh, so its messages are not taken over before it lapses.
pub async fn forward(
    state: &AppState,
    hop: Hop<'_>,
    body: Body,
    (node, url): (&str, &str),
) -> Result<Response, ApiError> {
    let sent = client()
        .request(hop.method.clone(), format!("{url}{}", hop.path()))
        .headers(hop.headers_for_holder(state))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(error) => {
            metrics::counter!("codebox_forwarded_requests_total", "outcome" => "unreachable")
                .increment(1);
            return Err(unreachable(state, node, url, &error));
        }
    };
    metrics::counter!("codebox_forwarded_requests_total", "outcome" => "forwarded").increment(1);
    let mut response = Response::builder().status(answer.status());
    if let Some(headers) = response.headers_mut() {
        *headers = passed_on(answer.headers());
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .map_err(|error| ApiError::internal(&error))
}

/// How long another instance may take to answer its part of an answer put together from
/// every instance's (a list of kernels): one that does not answer in time is left out.
const PART_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the instance `node` at `url` the same `GET` as `hop`, marked forwarded so that it
/// answers with its own part alone, and reads its JSON answer: for an answer put together
/// from every instance's part. `None`, logged, when it does not answer 200 with JSON in time.
pub async fn json_from(
    state: &AppState,
    hop: Hop<'_>,
    (node, url): (&str, &str),
) -> Option<serde_json::Value> {
    let asked = client()
        .get(format!("{url}{}", hop.path()))
        .headers(hop.headers_for_holder(state))
        .timeout(PART_TIMEOUT)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let answer = match asked {
        Ok(answer) => answer.json::<serde_json::Value>().await,
        Err(error) => Err(error),
    };
    answer
        .inspect_err(|error| {
            tracing::warn!(node, url, %error, "another instance did not answer its part");
        })
        .ok()
}

/// Asks the instance `node` at `url` to remove the workspace of `message_id` as the caller
/// whose `headers` these are (a chat being deleted here); returns whether it did. A holder
/// that cannot do it now is logged: its reaper removes the folder once the chat's messages
/// are gone from the catalog.
pub async fn delete_workspace_at(
    state: &AppState,
    headers: &HeaderMap,
    message_id: &MessageId,
    (node, url): (&str, &str),
) -> bool {
    let encoded = percent_encoding::utf8_percent_encode(
        message_id.as_str(),
        percent_encoding::NON_ALPHANUMERIC,
    );
    let Ok(uri) = format!("/v1/messages/{encoded}/workspace").parse::<Uri>() else {
        return false;
    };
    let hop = Hop {
        method: &Method::DELETE,
        uri: &uri,
        headers,
    };
    match forward(state, hop, Body::empty(), (node, url)).await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::warn!(node, message = %message_id, status = %response.status(),
                "the instance holding a deleted chat's message did not remove its workspace");
            false
        }
        Err(_) => false,
    }
}

/// The answer when the holder cannot be reached: 503, to be retried once its heartbeat lapsed
/// (then the message is taken over) or it answers again.
pub fn unreachable(
    state: &AppState,
    node: &str,
    url: &str,
    error: &dyn std::fmt::Display,
) -> ApiError {
    let retry = state
        .supervisor
        .config()
        .cluster
        .node_timeout
        .as_secs()
        .max(1);
    tracing::warn!(node, url, %error, "could not forward a request to the instance holding its message");
    ApiError::busy(
        format!(
            "the instance holding this message ({node}) did not answer; retry later, and once \
             its heartbeat lapses another instance takes the message over"
        ),
        retry,
    )
}

/// `headers` without those that describe one connection.
fn passed_on(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in HOP_BY_HOP {
        kept.remove(name);
    }
    kept
}
