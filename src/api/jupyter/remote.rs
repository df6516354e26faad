//! Kernels held by another instance, when several share one catalog. A kernel is a message's
//! interpreter, which lives on the instance holding the message; a kernel's id names that
//! instance (its first eight hex digits are a tag of the instance's id), so that any instance
//! that gets a request for a kernel it does not know can find the one that does among the
//! live instances, and pass the request on: REST calls are forwarded as the API's are
//! (`api/forward.rs`), and the WebSocket is relayed message by message, both ways.
//!
//! Starting a kernel for a message another instance holds is forwarded too (see `start` in
//! `mod.rs`), and listing kernels puts every live instance's list together.

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::super::AppState;
use super::super::forward::{self, FORWARDED_BY, Hop};

/// Length of the instance's tag at the start of a kernel id, in hex digits: a UUID's first
/// group, so that the id still looks like the UUID Jupyter clients expect.
const TAG_DIGITS: usize = 8;

/// The tag of `instance` in the ids of its kernels.
fn tag_of(instance: &str) -> String {
    let digest = Sha256::digest(instance.as_bytes());
    hex::encode(digest)[..TAG_DIGITS].to_owned()
}

/// A new kernel id for a kernel of `instance`: a random (v4) UUID whose first group is the
/// instance's tag.
pub(super) fn mint_kernel_id(instance: &str) -> String {
    let random = uuid::Uuid::new_v4().to_string();
    format!("{}{}", tag_of(instance), &random[TAG_DIGITS..])
}

/// Middleware on the routes of one kernel: a kernel this instance does not know, whose id
/// names another live instance, is that instance's, and the request goes there. A request
/// forwarded already, or for a kernel no live instance's tag matches, is answered here.
pub(super) async fn to_kernel_holder(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(FORWARDED_BY) {
        return next.run(request).await;
    }
    let Some(kernel_id) = request
        .uri()
        .path()
        .strip_prefix("/jupyter/api/kernels/")
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    if state.jupyter.knows(&kernel_id) {
        return next.run(request).await;
    }
    let holder = match holder_of(&state, &kernel_id).await {
        Ok(Some(holder)) => holder,
        Ok(None) => return next.run(request).await,
        Err(error) => return super::super::error::ApiError::from(error).into_response(),
    };
    let (mut parts, body) = request.into_parts();
    if parts.uri.path().ends_with("/channels") {
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
        return relay(&state, Hop::of(&parts), upgrade, holder).await;
    }
    match forward::forward(&state, Hop::of(&parts), body, (&holder.0, &holder.1)).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// The kernels the other live instances serve for the caller, as their own lists show them,
/// so that a client listing its kernels through a load balancer sees every one of them,
/// wherever each lives. An instance that does not answer in time is left out.
pub(super) async fn kernels_elsewhere(state: &AppState, hop: Hop<'_>) -> Vec<serde_json::Value> {
    let nodes = match state.supervisor.nodes().await {
        Ok(nodes) => nodes,
        Err(error) => {
            tracing::warn!(%error, "could not list the other instances' kernels");
            return Vec::new();
        }
    };
    let this = state.supervisor.instance();
    let asked = nodes
        .into_iter()
        .filter(|(node, alive)| *alive && node.id != this)
        .map(
            |(node, _)| async move { forward::json_from(state, hop, (&node.id, &node.url)).await },
        );
    futures::future::join_all(asked)
        .await
        .into_iter()
        .flatten()
        .filter_map(|part| match part {
            serde_json::Value::Array(kernels) => Some(kernels),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The live instance other than this one whose tag starts `kernel_id`: `(id, url)`.
async fn holder_of(
    state: &AppState,
    kernel_id: &str,
) -> crate::supervisor::Result<Option<(String, String)>> {
    let Some(tag) = kernel_id.get(..TAG_DIGITS) else {
        return Ok(None);
    };
    let this = state.supervisor.instance();
    Ok(state
        .supervisor
        .nodes()
        .await?
        .into_iter()
        .find(|(node, alive)| *alive && node.id != this && tag_of(&node.id) == tag)
        .map(|(node, _)| (node.id, node.url)))
}

/// Opens the kernel's WebSocket on its holder, then accepts the client's and relays every
/// message both ways until either side closes. A holder that cannot be reached is answered
/// 503 before the client's socket is accepted.
async fn relay(
    state: &AppState,
    hop: Hop<'_>,
    upgrade: WebSocketUpgrade,
    (node, url): (String, String),
) -> Response {
    let ws_url = match url.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}{}", hop.path()),
        None => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let mut request = match ws_url.as_str().into_client_request() {
        Ok(request) => request,
        Err(error) => return forward::unreachable(state, &node, &url, &error).into_response(),
    };
    for (name, value) in &hop.headers_for_holder(state) {
        // The handshake's own headers are the client library's to write.
        if !name.as_str().starts_with("sec-websocket-") {
            request.headers_mut().insert(name, value.clone());
        }
    }
    let (upstream, handshake) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(error) => return forward::unreachable(state, &node, &url, &error).into_response(),
    };
    let mut response = upgrade.on_upgrade(move |client| pump(client, upstream));
    // The answer names the holder, which serves the kernel, as a forwarded answer does.
    if let Some(served_by) = handshake.headers().get(forward::SERVED_BY) {
        response
            .headers_mut()
            .insert(forward::SERVED_BY, served_by.clone());
    }
    response
}

/// Relays messages between the client's socket and the holder's until one side ends.
async fn pump(
    client: WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_holder, mut from_holder) = upstream.split();
    let up = async {
        while let Some(Ok(message)) = from_client.next().await {
            let relayed = match message {
                Message::Text(text) => tungstenite::Message::text(text.as_str()),
                Message::Binary(bytes) => tungstenite::Message::binary(bytes),
                Message::Ping(bytes) => tungstenite::Message::Ping(bytes),
                Message::Pong(bytes) => tungstenite::Message::Pong(bytes),
                Message::Close(_) => break,
            };
            if to_holder.send(relayed).await.is_err() {
                break;
            }
        }
        let _ = to_holder.close().await;
    };
    let down = async {
        while let Some(Ok(message)) = from_holder.next().await {
            let relayed = match message {
                tungstenite::Message::Text(text) => Message::Text(text.as_str().into()),
                tungstenite::Message::Binary(bytes) => Message::Binary(bytes),
                tungstenite::Message::Ping(bytes) => Message::Ping(bytes),
                tungstenite::Message::Pong(bytes) => Message::Pong(bytes),
                tungstenite::Message::Close(_) => break,
                tungstenite::Message::Frame(_) => continue,
            };
            if to_client.send(relayed).await.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    // Whichever side ends first ends the relay: the other's loop is dropped with it.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_id_is_a_uuid_that_names_its_instance() {
        let id = mint_kernel_id("inst_01a22a4dd05976af8f8c4c2c0efac2dc");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert!(id.starts_with(&tag_of("inst_01a22a4dd05976af8f8c4c2c0efac2dc")));
        assert_ne!(id, mint_kernel_id("inst_01a22a4dd05976af8f8c4c2c0efac2dc"));
        assert_ne!(tag_of("inst_a"), tag_of("inst_b"));
    }
}
