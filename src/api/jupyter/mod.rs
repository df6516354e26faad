//! `/jupyter`: the Jupyter Server kernels API, for clients that already speak Jupyter (Open
//! WebUI's code interpreter, jupyter_client's gateway client, notebook front ends).
//!
//! A Jupyter kernel here is a message's live interpreter: the same workspace, limits and
//! registration as `POST /v1/runs`, reached through Jupyter's REST routes and the messaging
//! protocol's JSON form over a WebSocket (`channels.rs`). The end user comes from
//! `KERNEL_USERNAME` in the kernel's `env` (the Enterprise Gateway's convention), else
//! `X-User-Id`, else `jupyter`; `KERNEL_CHAT_ID` and `KERNEL_MESSAGE_ID` name the chat and the
//! message when the client knows them, and otherwise each kernel is a message of its own.
//!
//! Auth follows Jupyter's conventions: `Authorization: token <t>` (or `Bearer <t>`), or
//! `?token=<t>`, checked against codebox's service tokens; anything else is 403, as Jupyter
//! answers. The kernels themselves live in this process's memory ([`Kernels`]): a restarted
//! codebox forgets them, as a restarted Jupyter server does, while their messages, workspaces
//! and files stay. When several instances share one catalog, a kernel lives on the instance
//! that holds its message, and the others pass its requests on (`remote.rs`).

mod channels;
mod remote;

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::forward::{FORWARDED_BY, Hop, forward};
use crate::config::Role;
use crate::ids::{ChatId, MessageId, TenantId, UserId};
use crate::supervisor::{self, Owner, Placement};

/// The only kernel spec: Python in a codebox sandbox.
pub const KERNEL_NAME: &str = "python3";

/// The user of kernels whose client names none.
const DEFAULT_USER: &str = "jupyter";

/// The Jupyter routes, to be merged into the API's router. The routes of one kernel pass a
/// kernel another instance holds on to it (`remote.rs`).
pub fn routes(state: AppState) -> Router<AppState> {
    let one_kernel = Router::new()
        .route(
            "/jupyter/api/kernels/{kernel_id}",
            get(show).delete(shut_down),
        )
        .route(
            "/jupyter/api/kernels/{kernel_id}/interrupt",
            post(interrupt),
        )
        .route("/jupyter/api/kernels/{kernel_id}/restart", post(restart))
        .route("/jupyter/api/kernels/{kernel_id}/channels", get(channels))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            remote::to_kernel_holder,
        ));
    Router::new()
        .route("/jupyter/api", get(version))
        .route("/jupyter/api/kernelspecs", get(kernelspecs))
        .route("/jupyter/api/kernels", get(list).post(start))
        .merge(one_kernel)
}

/// One kernel: which message's interpreter it is, and what Jupyter shows of it.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Jupyter's id for it (a UUID).
    pub id: String,
    /// Whose it is.
    pub owner: Owner,
    /// The chat of its message.
    pub chat_id: ChatId,
    /// The message whose interpreter it is.
    pub message_id: MessageId,
    /// When it was last used (RFC 3339).
    pub last_activity: String,
    /// `idle` or `busy`.
    pub execution_state: &'static str,
    /// WebSockets open on it.
    pub connections: usize,
    /// Whether the next execution starts in a fresh interpreter (after a restart request).
    pub restart_next: bool,
    /// The last execution's number in its interpreter.
    pub execution_count: u64,
}

impl Kernel {
    fn model(&self) -> Value {
        json!({
            "id": self.id,
            "name": KERNEL_NAME,
            "last_activity": self.last_activity,
            "execution_state": self.execution_state,
            "connections": self.connections,
        })
    }
}

/// The kernels this process serves, by id.
#[derive(Debug, Default)]
pub struct Kernels {
    kernels: Mutex<HashMap<String, Kernel>>,
}

impl Kernels {
    /// The kernel `id` if `tenant` may use it.
    pub fn get(&self, tenant: &TenantId, id: &str) -> Option<Kernel> {
        let kernels = self.kernels.lock().ok()?;
        kernels
            .get(id)
            .filter(|kernel| kernel.owner.tenant == *tenant)
            .cloned()
    }

    /// Whether this process serves the kernel `id`, whoever's it is.
    pub fn knows(&self, id: &str) -> bool {
        self.kernels
            .lock()
            .is_ok_and(|kernels| kernels.contains_key(id))
    }

    /// Changes the kernel `id`, if it still exists.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Kernel)) {
        if let Ok(mut kernels) = self.kernels.lock()
            && let Some(kernel) = kernels.get_mut(id)
        {
            change(kernel);
        }
    }

    fn insert(&self, kernel: Kernel) {
        if let Ok(mut kernels) = self.kernels.lock() {
            kernels.insert(kernel.id.clone(), kernel);
        }
    }

    fn remove(&self, tenant: &TenantId, id: &str) -> Option<Kernel> {
        let mut kernels = self.kernels.lock().ok()?;
        if kernels.get(id)?.owner.tenant != *tenant {
            return None;
        }
        kernels.remove(id)
    }

    fn of_tenant(&self, tenant: &TenantId) -> Vec<Kernel> {
        let Ok(kernels) = self.kernels.lock() else {
            return Vec::new();
        };
        let mut found: Vec<Kernel> = kernels
            .values()
            .filter(|kernel| kernel.owner.tenant == *tenant)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }
}

/// `?token=` as Jupyter clients send it.
#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The caller, from Jupyter's token conventions; a service token only.
fn caller(headers: &HeaderMap, query: &TokenQuery, state: &AppState) -> Option<Caller> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("token ")
                .or_else(|| value.strip_prefix("Token "))
                .or_else(|| value.strip_prefix("Bearer "))
        })
        .map(str::trim);
    let presented = from_header.or(query.token.as_deref());
    presented
        .and_then(|token| state.tokens.check(token))
        .filter(|caller| caller.role == Role::Service)
}

/// Jupyter's answer to a missing or wrong token.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"message": "Forbidden", "reason": "a codebox service token is required"})),
    )
        .into_response()
}

/// Jupyter's answer for a kernel that does not exist (or is another tenant's).
fn no_such_kernel(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": format!("Kernel does not exist: {id}"), "reason": null})),
    )
        .into_response()
}

/// Why a request about one kernel is refused, in Jupyter's words.
enum Refusal {
    Forbidden,
    NoSuchKernel(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Forbidden => forbidden(),
            Self::NoSuchKernel(id) => no_such_kernel(&id),
        }
    }
}

/// The kernel `kernel_id` if the caller's token may use it.
fn kernel_of(
    headers: &HeaderMap,
    query: &TokenQuery,
    state: &AppState,
    kernel_id: &str,
) -> Result<Kernel, Refusal> {
    let caller = caller(headers, query, state).ok_or(Refusal::Forbidden)?;
    state
        .jupyter
        .get(&caller.tenant, kernel_id)
        .ok_or_else(|| Refusal::NoSuchKernel(kernel_id.to_owned()))
}

async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "server": "codebox"}))
}

async fn kernelspecs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if caller(&headers, &query, &state).is_none() {
        return forbidden();
    }
    Json(json!({
        "default": KERNEL_NAME,
        "kernelspecs": {
            KERNEL_NAME: {
                "name": KERNEL_NAME,
                "spec": {
                    "argv": [],
                    "display_name": "Python 3 (codebox sandbox)",
                    "language": "python",
                    "interrupt_mode": "signal",
                    "env": {},
                    "metadata": {},
                },
                "resources": {},
            }
        }
    }))
    .into_response()
}

/// Every kernel of the caller's tenant: this instance's, and, unless the request was
/// forwarded here, every other live instance's.
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<TokenQuery>,
) -> Response {
    let Some(caller) = caller(&headers, &query, &state) else {
        return forbidden();
    };
    let mut kernels: Vec<Value> = state
        .jupyter
        .of_tenant(&caller.tenant)
        .iter()
        .map(Kernel::model)
        .collect();
    if !headers.contains_key(FORWARDED_BY) {
        let hop = Hop {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
        };
        kernels.extend(remote::kernels_elsewhere(&state, hop).await);
        kernels.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    }
    Json(kernels).into_response()
}

/// `POST /jupyter/api/kernels`: `{"name", "env"}`.
#[derive(Debug, Default, Deserialize)]
struct StartKernel {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    env: HashMap<String, Value>,
}

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<TokenQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let Some(caller) = caller(&headers, &query, &state) else {
        return Ok(forbidden());
    };
    let request: StartKernel = if body.is_empty() {
        StartKernel::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::invalid(format!("the body is not a kernel request: {error}"))
        })?
    };
    if let Some(name) = request.name.as_deref()
        && !name.is_empty()
        && name != KERNEL_NAME
    {
        return Ok((
            StatusCode::NOT_FOUND,
            Json(json!({"message": format!("No such kernel spec: {name}"), "reason": null})),
        )
            .into_response());
    }
    let text = |key: &str| {
        request
            .env
            .get(key)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    // The notebook client names its user in the kernel's environment; it is trusted as the
    // `X-User-Id` header is, and checked by the same rule.
    let user = match text("KERNEL_USERNAME") {
        Some(user) => UserId::parse("KERNEL_USERNAME", user)?,
        None => match headers.get("x-user-id") {
            Some(_) => super::auth::user_of(&headers)?,
            None => UserId::from_stored(DEFAULT_USER),
        },
    };
    let owner = Owner {
        tenant: caller.tenant,
        user,
    };
    let id = remote::mint_kernel_id(state.supervisor.instance());
    let chat_id = ChatId::parse(text("KERNEL_CHAT_ID").unwrap_or_else(|| "jupyter".to_owned()))?;
    let message_id =
        MessageId::parse(text("KERNEL_MESSAGE_ID").unwrap_or_else(|| format!("jupyter-{id}")))?;
    // A message another instance holds gets its kernel there, where its workspace is.
    if !headers.contains_key(FORWARDED_BY)
        && let Placement::Elsewhere { node, url } = state
            .supervisor
            .placement(&owner.tenant, Some(&owner.user), &message_id)
            .await?
    {
        let hop = Hop {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
        };
        return forward(&state, hop, body.into(), (&node, &url)).await;
    }
    state
        .supervisor
        .open_message(&owner, &chat_id, &message_id)
        .await?;
    let kernel = Kernel {
        id,
        owner,
        chat_id,
        message_id,
        last_activity: supervisor::now(),
        execution_state: "idle",
        connections: 0,
        restart_next: false,
        execution_count: 0,
    };
    let model = kernel.model();
    state.jupyter.insert(kernel);
    metrics::counter!("codebox_jupyter_kernels_started_total").increment(1);
    Ok((StatusCode::CREATED, Json(model)).into_response())
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    Path(kernel_id): Path<String>,
) -> Response {
    match kernel_of(&headers, &query, &state, &kernel_id) {
        Ok(kernel) => Json(kernel.model()).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `DELETE`: the kernel is gone at once and the message's sandbox right after; its
/// workspace and files follow retention.
async fn shut_down(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    Path(kernel_id): Path<String>,
) -> ApiResult<Response> {
    let Some(caller) = caller(&headers, &query, &state) else {
        return Ok(forbidden());
    };
    let Some(kernel) = state.jupyter.remove(&caller.tenant, &kernel_id) else {
        return Ok(no_such_kernel(&kernel_id));
    };
    // The kernel is gone for the client at once; removing its container (a hundred
    // milliseconds of the engine's time) goes on in the background, under the workspace's
    // lock, so that a later run of the message waits for it rather than racing it.
    let supervisor = state.supervisor.clone();
    tokio::spawn(async move {
        if let Err(error) = supervisor
            .release_sandbox(&kernel.owner, &kernel.message_id)
            .await
        {
            tracing::warn!(kernel = %kernel.id, %error, "could not release a Jupyter kernel's sandbox");
        }
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn interrupt(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    Path(kernel_id): Path<String>,
) -> ApiResult<Response> {
    let kernel = match kernel_of(&headers, &query, &state, &kernel_id) {
        Ok(kernel) => kernel,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    state
        .supervisor
        .interrupt(&kernel.owner, &kernel.message_id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `restart`: the cell in progress is interrupted, and the next execution starts in a fresh
/// interpreter (`init_code` runs again).
async fn restart(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    Path(kernel_id): Path<String>,
) -> ApiResult<Response> {
    let kernel = match kernel_of(&headers, &query, &state, &kernel_id) {
        Ok(kernel) => kernel,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    state
        .supervisor
        .interrupt(&kernel.owner, &kernel.message_id)
        .await?;
    state.jupyter.update(&kernel_id, |kernel| {
        kernel.restart_next = true;
        kernel.last_activity = supervisor::now();
    });
    let model = state
        .jupyter
        .get(&kernel.owner.tenant, &kernel_id)
        .unwrap_or(kernel)
        .model();
    Ok(Json(model).into_response())
}

/// The WebSocket of the messaging protocol.
async fn channels(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    Path(kernel_id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let kernel = match kernel_of(&headers, &query, &state, &kernel_id) {
        Ok(kernel) => kernel,
        Err(refusal) => return refusal.into_response(),
    };
    // A message carries at most the code of one cell, plus its envelope.
    let max_message = state
        .supervisor
        .config()
        .limits
        .max_code_bytes
        .as_u64()
        .saturating_add(64 * 1024);
    upgrade
        .max_message_size(usize::try_from(max_message).unwrap_or(usize::MAX))
        .on_upgrade(move |socket| channels::serve(socket, state, kernel))
}
