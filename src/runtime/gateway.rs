//! [`EnterpriseGatewayRuntime`]: one kernel per workspace on a Jupyter Enterprise Gateway,
//! driven through Jupyter Server's kernels API (HTTP to start, interrupt and delete kernels,
//! the `channels` WebSocket speaking the messaging protocol's JSON form to run cells).
//!
//! This runtime does not isolate anything itself: the code runs wherever the gateway's process
//! proxy launches the kernel, with that kernel's rights. With local kernels (the gateway's
//! default) that is a plain process on the gateway's host, as the gateway's user: fit for tests
//! and trusted code only. In production the gateway's Kubernetes process proxy launches each
//! kernel as a pod, and the pod's kernelspec carries the isolation (see
//! `deploy/enterprise-gateway/`). Neither does it sweep what a cell leaves running: a local
//! kernel's child processes outlive their cell until the kernel goes; a pod's go with the pod.
//!
//! Kernels see the workspace at its host path (a shared volume), not at `/mnt/data`:
//! [`Runtime::mounts_workspace`] is `false`, so the supervisor rewrites `/mnt/data` in the
//! code to the host folder and every output path back. The kernel's working directory is the
//! workspace's `data/` folder, as the gateway sees it (`workspaces_path`); the rewriting of
//! code uses the host path, so for now `workspaces_path` must name the same path as codebox's
//! own `<data_dir>/workspaces` for code that names `/mnt/data` explicitly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::kernel::{self, CappedBuffer};
use super::{
    ExecOutcome, ExecRequest, KernelEnd, KernelStart, OutputChunk, RichOutput, Runtime,
    RuntimeError, SandboxInfo, SandboxSpec,
};
use crate::config::GatewayConfig;

/// How long a new kernel may take to start and answer, and to import what it preloads.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one HTTP request to the gateway may take (starting a kernel takes longest).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The user name kernels are started for (`KERNEL_USERNAME`).
const KERNEL_USERNAME: &str = "codebox";

/// The largest message codebox takes from a kernel; a larger one ends the channel (and the
/// kernel).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The messaging protocol version codebox speaks.
const PROTOCOL_VERSION: &str = "5.3";

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The channel to one kernel, held by the cell that runs.
struct Channel {
    socket: Socket,
    /// Whether the socket still works.
    open: bool,
    /// Cells run in this kernel so far.
    execution_count: u64,
}

/// A workspace's kernel on the gateway.
struct Live {
    kernel_id: String,
    instance: String,
    /// The messaging session every request of this kernel belongs to.
    session: String,
    channel: tokio::sync::Mutex<Channel>,
    /// Woken when the kernel is deleted from outside a cell (kill, restart), so that a cell
    /// waiting on it ends at once.
    killed: Notify,
}

/// A runtime on a Jupyter Enterprise Gateway.
pub struct EnterpriseGatewayRuntime {
    http: reqwest::Client,
    /// The gateway's base URL, without a trailing slash.
    base: String,
    token: Option<String>,
    kernel_name: String,
    /// `<data_dir>/workspaces` on this host.
    workspaces_root: PathBuf,
    /// The same folder as the kernels see it.
    kernel_workspaces: PathBuf,
    /// Per workspace: its live kernel.
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Per workspace: why its last kernel ended, until the next one starts.
    ended: Mutex<HashMap<String, KernelEnd>>,
}

/// What one kernel message said, as far as a cell cares.
struct Incoming {
    channel: String,
    msg_type: String,
    parent_id: Option<String>,
    content: Value,
}

impl EnterpriseGatewayRuntime {
    /// Connects to the gateway `config` names and checks that it answers. `workspaces_root`
    /// is codebox's `<data_dir>/workspaces`.
    pub async fn connect(
        config: &GatewayConfig,
        workspaces_root: &Path,
    ) -> Result<Self, RuntimeError> {
        let Some(url) = config.url.as_deref() else {
            return Err(RuntimeError::Unreachable(
                "runtime.gateway.url is not set".to_owned(),
            ));
        };
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|error| RuntimeError::Gateway(error.to_string()))?;
        let runtime = Self {
            http,
            base: url.trim_end_matches('/').to_owned(),
            token: config.token.clone().filter(|token| !token.is_empty()),
            kernel_name: config.kernel.clone(),
            workspaces_root: workspaces_root.to_owned(),
            kernel_workspaces: config
                .workspaces_path
                .clone()
                .unwrap_or_else(|| workspaces_root.to_owned()),
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
        };
        runtime.ping().await?;
        Ok(runtime)
    }

    /// The kernel id of a workspace's live kernel, for tests and operators.
    pub fn kernel_id(&self, workspace_id: &str) -> Option<String> {
        self.live_of(workspace_id)
            .map(|live| live.kernel_id.clone())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.header("Authorization", format!("token {token}")),
            None => builder,
        }
    }

    fn live_of(&self, workspace_id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .ok()
            .and_then(|live| live.get(workspace_id).cloned())
    }

    fn forget(&self, workspace_id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .ok()
            .and_then(|mut live| live.remove(workspace_id))
    }

    fn set_ended(&self, workspace_id: &str, end: KernelEnd) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.insert(workspace_id.to_owned(), end);
        }
    }

    fn take_ended(&self, workspace_id: &str) -> Option<KernelEnd> {
        self.ended
            .lock()
            .ok()
            .and_then(|mut ended| ended.remove(workspace_id))
    }

    /// Where the kernel sees a host folder under the workspaces root.
    fn kernel_path(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.workspaces_root) {
            Ok(relative) => self.kernel_workspaces.join(relative),
            Err(_) => host.to_owned(),
        }
    }

    /// Deletes a kernel on the gateway; one that is gone already is success.
    async fn delete_kernel(&self, kernel_id: &str) -> Result<(), RuntimeError> {
        let response = self
            .request(
                reqwest::Method::DELETE,
                &format!("/api/kernels/{kernel_id}"),
            )
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(RuntimeError::Gateway(format!(
                "deleting kernel {kernel_id} answered {status}"
            ))),
        }
    }

    /// Forgets a workspace's kernel and deletes it, waking a cell that waits on it.
    async fn drop_kernel(&self, workspace_id: &str) -> Result<bool, RuntimeError> {
        let Some(live) = self.forget(workspace_id) else {
            return Ok(false);
        };
        live.killed.notify_waiters();
        live.killed.notify_one();
        self.delete_kernel(&live.kernel_id).await?;
        Ok(true)
    }

    fn unreachable(&self, error: &reqwest::Error) -> RuntimeError {
        RuntimeError::Unreachable(format!(
            "cannot reach the Jupyter Enterprise Gateway at {}: {error}",
            self.base
        ))
    }

    /// Starts a kernel for `spec`, waits until it answers, moves it into the workspace and
    /// has it import `spec.preload`.
    async fn start_kernel(&self, spec: &SandboxSpec) -> Result<Live, RuntimeError> {
        let working_dir = self.kernel_path(&spec.host_data);
        let body = json!({
            "name": self.kernel_name,
            "env": {
                "KERNEL_WORKING_DIR": working_dir.to_string_lossy(),
                "KERNEL_USERNAME": KERNEL_USERNAME,
            },
        });
        let response = self
            .request(reqwest::Method::POST, "/api/kernels")
            .json(&body)
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(RuntimeError::Gateway(format!(
                "starting a {} kernel answered {status}: {}",
                self.kernel_name,
                kernel::cut(text, 512)
            )));
        }
        let model: Value = response
            .json()
            .await
            .map_err(|error| RuntimeError::Gateway(format!("a bad kernel model: {error}")))?;
        let Some(kernel_id) = model.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return Err(RuntimeError::Gateway(
                "the kernel model has no id".to_owned(),
            ));
        };
        let started = self.open_kernel(&kernel_id, spec, &working_dir).await;
        match started {
            Ok(live) => Ok(live),
            Err(why) => {
                let _ = self.delete_kernel(&kernel_id).await;
                Err(RuntimeError::Sandbox {
                    workspace_id: spec.workspace_id.clone(),
                    reason: why,
                })
            }
        }
    }

    /// Connects to a new kernel's channels and prepares it.
    async fn open_kernel(
        &self,
        kernel_id: &str,
        spec: &SandboxSpec,
        working_dir: &Path,
    ) -> Result<Live, String> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        let session = uuid::Uuid::new_v4().simple().to_string();
        let url = format!("{ws_base}/api/kernels/{kernel_id}/channels?session_id={session}");
        let mut request = url
            .into_client_request()
            .map_err(|error| format!("a bad channels URL: {error}"))?;
        if let Some(token) = &self.token {
            let value = format!("token {token}")
                .parse()
                .map_err(|_| "the gateway token is not a valid header value".to_owned())?;
            request.headers_mut().insert("Authorization", value);
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        // Everything the kernel says is hostile: one message may not make codebox hold more
        // than a figure at the cap, as base64, and its JSON around it.
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let (socket, _) = tokio::time::timeout_at(deadline, connecting)
            .await
            .map_err(|_| "the kernel's channels did not open in time".to_owned())?
            .map_err(|error| format!("cannot open the kernel's channels: {error}"))?;
        let live = Live {
            kernel_id: kernel_id.to_owned(),
            instance: spec.instance.clone(),
            session,
            channel: tokio::sync::Mutex::new(Channel {
                socket,
                open: true,
                execution_count: 0,
            }),
            killed: Notify::new(),
        };
        {
            let mut channel = live.channel.lock().await;
            // The kernel may not listen yet when the first request arrives: ask again until
            // it answers.
            loop {
                let asked = live.message("kernel_info_request", "shell", json!({}));
                let id = asked.0.clone();
                send(&mut channel, asked.1).await?;
                let answered = tokio::time::timeout(Duration::from_secs(2), async {
                    loop {
                        match receive(&mut channel).await? {
                            Some(incoming)
                                if incoming.msg_type == "kernel_info_reply"
                                    && incoming.parent_id.as_deref() == Some(&id) =>
                            {
                                return Ok::<(), String>(());
                            }
                            _ => {}
                        }
                    }
                })
                .await;
                match answered {
                    Ok(Ok(())) => break,
                    Ok(Err(why)) => return Err(format!("the kernel did not start: {why}")),
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return Err("the kernel did not answer in time".to_owned());
                    }
                    Err(_) => {}
                }
            }
            let dir = json_string(&working_dir.to_string_lossy());
            let modules = serde_json::to_string(&spec.preload).unwrap_or_else(|_| "[]".into());
            // The working directory is set here too: not every process proxy honours
            // KERNEL_WORKING_DIR for a local kernel.
            let setup = format!(
                "import os as __codebox_os\n__codebox_os.chdir({dir})\ndel __codebox_os\n\
                 for __codebox_m in {modules}:\n    try:\n        __import__(__codebox_m)\n    \
                 except ImportError:\n        pass\n"
            );
            let (id, frame) = live.message(
                "execute_request",
                "shell",
                json!({
                    "code": setup,
                    "silent": true,
                    "store_history": false,
                    "user_expressions": {},
                    "allow_stdin": false,
                    "stop_on_error": true,
                }),
            );
            send(&mut channel, frame).await?;
            let prepared = tokio::time::timeout_at(deadline, async {
                loop {
                    match receive(&mut channel).await? {
                        Some(incoming)
                            if incoming.msg_type == "execute_reply"
                                && incoming.parent_id.as_deref() == Some(&id) =>
                        {
                            return match incoming.content.get("status").and_then(Value::as_str) {
                                Some("ok") => Ok(()),
                                _ => Err(format!(
                                    "the kernel could not enter {}: {}",
                                    working_dir.display(),
                                    incoming.content.get("evalue").unwrap_or(&Value::Null)
                                )),
                            };
                        }
                        _ => {}
                    }
                }
            })
            .await;
            match prepared {
                Ok(result) => result?,
                Err(_) => return Err("the kernel did not preload in time".to_owned()),
            }
        }
        Ok(live)
    }

    /// Asks the gateway to interrupt a kernel.
    async fn interrupt_kernel(&self, kernel_id: &str) -> Result<(), RuntimeError> {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/api/kernels/{kernel_id}/interrupt"),
            )
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(RuntimeError::Gateway(format!(
                "interrupting kernel {kernel_id} answered {status}"
            ))),
        }
    }
}

impl Live {
    /// A request on `channel`, with its message id.
    fn message(&self, msg_type: &str, channel: &str, content: Value) -> (String, Value) {
        let msg_id = uuid::Uuid::new_v4().simple().to_string();
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let frame = json!({
            "header": {
                "msg_id": msg_id,
                "username": KERNEL_USERNAME,
                "session": self.session,
                "msg_type": msg_type,
                "version": PROTOCOL_VERSION,
                "date": date,
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        });
        (msg_id, frame)
    }
}

/// A Python string literal of `text` (JSON's escapes are Python's).
fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Sends one message.
async fn send(channel: &mut Channel, frame: Value) -> Result<(), String> {
    let sent = channel.socket.send(Message::text(frame.to_string())).await;
    sent.map_err(|error| {
        channel.open = false;
        format!("could not write to the kernel: {error}")
    })
}

/// The next message of the kernel; `None` for frames that are not messages. An error means
/// the channel ended.
async fn receive(channel: &mut Channel) -> Result<Option<Incoming>, String> {
    let frame = match channel.socket.next().await {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(_))) | None => {
            channel.open = false;
            return Err("the kernel's channels closed".to_owned());
        }
        Some(Ok(_)) => return Ok(None),
        Some(Err(error)) => {
            channel.open = false;
            return Err(format!("the kernel's channels failed: {error}"));
        }
    };
    let Ok(value) = serde_json::from_str::<Value>(frame.as_str()) else {
        return Ok(None);
    };
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    Ok(Some(Incoming {
        channel: text(value.get("channel")).unwrap_or_default(),
        msg_type: text(value.pointer("/header/msg_type"))
            .or_else(|| text(value.get("msg_type")))
            .unwrap_or_default(),
        parent_id: text(value.pointer("/parent_header/msg_id")),
        content: value.get("content").cloned().unwrap_or(Value::Null),
    }))
}

/// Text of a message field that is a string or a list of strings (both are allowed).
fn text_of(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// `text` without ANSI escape sequences (IPython colours its tracebacks).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, up to the final byte.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What one cell has gathered so far.
struct Gathered {
    stdout: CappedBuffer,
    stderr: CappedBuffer,
    outputs: Vec<RichOutput>,
    outputs_truncated: bool,
    /// Whether the cell raised.
    failed: bool,
}

impl Gathered {
    /// Takes one iopub message of the cell; returns what to forward live.
    fn take(&mut self, incoming: &Incoming, request: &ExecRequest) -> Vec<OutputChunk> {
        let content = &incoming.content;
        let mut chunks = Vec::new();
        match incoming.msg_type.as_str() {
            "stream" => {
                let text = text_of(content.get("text"));
                let stderr = content.get("name").and_then(Value::as_str) == Some("stderr");
                let buffer = if stderr {
                    &mut self.stderr
                } else {
                    &mut self.stdout
                };
                let kept = buffer.push(text.as_bytes());
                if !kept.is_empty() {
                    let kept = Bytes::copy_from_slice(kept);
                    chunks.push(if stderr {
                        OutputChunk::Stderr(kept)
                    } else {
                        OutputChunk::Stdout(kept)
                    });
                }
            }
            "execute_result" | "display_data" => {
                let Some(data) = content.get("data").and_then(Value::as_object) else {
                    return chunks;
                };
                let output = if let Some(png) = data.get("image/png") {
                    let png: String = text_of(Some(png))
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    match kernel::image_output(&png, request.max_image_bytes) {
                        Some(output) => Some(output),
                        None => {
                            self.stderr.push(
                                b"codebox: a figure was dropped: not a PNG within the size cap\n",
                            );
                            None
                        }
                    }
                } else {
                    let data: BTreeMap<String, String> = data
                        .iter()
                        .map(|(kind, value)| (kind.clone(), text_of(Some(value))))
                        .collect();
                    kernel::result_output(data, request.max_output_bytes)
                };
                if let Some(output) = output {
                    self.keep(output, request.max_outputs, &mut chunks);
                }
            }
            "error" => {
                self.failed = true;
                let cap = request.max_output_bytes;
                let traceback: Vec<String> = content
                    .get("traceback")
                    .and_then(Value::as_array)
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(Value::as_str)
                            .map(strip_ansi)
                            .collect()
                    })
                    .unwrap_or_default();
                if request.tracebacks_on_stderr {
                    let mut text = traceback.join("\n");
                    text.push('\n');
                    let kept = self.stderr.push(text.as_bytes());
                    if !kept.is_empty() {
                        chunks.push(OutputChunk::Stderr(Bytes::copy_from_slice(kept)));
                    }
                }
                let output = RichOutput::Error {
                    ename: kernel::cut(text_of(content.get("ename")), 256),
                    evalue: kernel::cut(text_of(content.get("evalue")), cap),
                    traceback: kernel::cut_lines(traceback, cap),
                };
                self.keep(output, request.max_outputs, &mut chunks);
            }
            _ => {}
        }
        chunks
    }

    fn keep(&mut self, output: RichOutput, cap: usize, chunks: &mut Vec<OutputChunk>) {
        if self.outputs.len() >= cap {
            self.outputs_truncated = true;
            return;
        }
        self.outputs.push(output.clone());
        chunks.push(OutputChunk::Output(output));
    }
}

/// How a cell's wait ended.
enum CellEnd {
    /// The kernel replied and went idle; whether the cell raised.
    Done,
    /// The kernel did not stop within the grace after the interrupt.
    Hung,
    /// The channel ended, or the kernel was deleted from outside.
    Lost(String),
}

#[async_trait]
impl Runtime for EnterpriseGatewayRuntime {
    async fn ensure(&self, spec: &SandboxSpec) -> Result<KernelStart, RuntimeError> {
        if let Some(live) = self.live_of(&spec.workspace_id) {
            if live.channel.lock().await.open {
                return Ok(KernelStart::default());
            }
            // It died between cells.
            self.forget(&spec.workspace_id);
            let _ = self.delete_kernel(&live.kernel_id).await;
            if let Ok(mut ended) = self.ended.lock() {
                ended
                    .entry(spec.workspace_id.clone())
                    .or_insert(KernelEnd::Crashed);
            }
        }
        let live = self.start_kernel(spec).await?;
        let previous_end = self.take_ended(&spec.workspace_id);
        if let Ok(mut all) = self.live.lock() {
            all.insert(spec.workspace_id.clone(), Arc::new(live));
        }
        Ok(KernelStart {
            fresh: true,
            previous_end,
        })
    }

    async fn exec(
        &self,
        workspace_id: &str,
        request: &ExecRequest,
        live_output: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, RuntimeError> {
        let Some(live) = self.live_of(workspace_id) else {
            return Err(RuntimeError::Sandbox {
                workspace_id: workspace_id.to_owned(),
                reason: "no live kernel: ensure the sandbox first".to_owned(),
            });
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + request.timeout;
        let mut gathered = Gathered {
            stdout: CappedBuffer::new(request.max_output_bytes),
            stderr: CappedBuffer::new(request.max_output_bytes),
            outputs: Vec::new(),
            outputs_truncated: false,
            failed: false,
        };
        let mut timed_out = false;
        let execution_count: u64;
        let mut end = CellEnd::Done;
        {
            let mut channel = live.channel.lock().await;
            let mut cells = Vec::new();
            if channel.execution_count == 0
                && let Some(init) = request.init_code.as_deref()
            {
                cells.push((init, false));
            }
            cells.push((request.code.as_str(), true));
            channel.execution_count += 1;
            execution_count = channel.execution_count;
            for (code, is_cell) in cells {
                let (id, frame) = live.message(
                    "execute_request",
                    "shell",
                    json!({
                        "code": code,
                        "silent": false,
                        "store_history": is_cell,
                        "user_expressions": {},
                        "allow_stdin": false,
                        "stop_on_error": true,
                    }),
                );
                if let Err(why) = send(&mut channel, frame).await {
                    end = CellEnd::Lost(why);
                    break;
                }
                let mut replied = false;
                let mut idle = false;
                let mut kill_at: Option<tokio::time::Instant> = None;
                end = loop {
                    if replied && idle {
                        break CellEnd::Done;
                    }
                    let now = tokio::time::Instant::now();
                    if !timed_out && now >= deadline {
                        timed_out = true;
                        kill_at = Some(now + kernel::INTERRUPT_GRACE);
                        if let Err(error) = self.interrupt_kernel(&live.kernel_id).await {
                            tracing::warn!(workspace_id, %error, "could not interrupt a kernel");
                        }
                    }
                    if kill_at.is_some_and(|at| now >= at) {
                        break CellEnd::Hung;
                    }
                    let incoming = tokio::select! {
                        biased;
                        () = live.killed.notified() => {
                            break CellEnd::Lost("the kernel was stopped".to_owned());
                        }
                        () = tokio::time::sleep_until(kill_at.unwrap_or(deadline)) => continue,
                        incoming = receive(&mut channel) => incoming,
                    };
                    let incoming = match incoming {
                        Ok(Some(incoming)) => incoming,
                        Ok(None) => continue,
                        Err(why) => break CellEnd::Lost(why),
                    };
                    if incoming.msg_type == "status"
                        && matches!(
                            incoming
                                .content
                                .get("execution_state")
                                .and_then(Value::as_str),
                            Some("restarting" | "dead")
                        )
                    {
                        // The kernel's process died (the gateway may start another in its
                        // place, without the namespace): the cell is lost with it.
                        break CellEnd::Lost("the kernel died".to_owned());
                    }
                    if incoming.parent_id.as_deref() != Some(id.as_str()) {
                        // Another request's messages (the setup's, a thread of an earlier
                        // cell still printing): not this run's.
                        continue;
                    }
                    match (incoming.channel.as_str(), incoming.msg_type.as_str()) {
                        ("shell", "execute_reply") => {
                            replied = true;
                            if incoming.content.get("status").and_then(Value::as_str) != Some("ok")
                            {
                                gathered.failed = true;
                            }
                        }
                        ("iopub", "status") => {
                            let state = incoming.content.get("execution_state");
                            idle |= state.and_then(Value::as_str) == Some("idle");
                        }
                        ("iopub", _) => {
                            for chunk in gathered.take(&incoming, request) {
                                if let Some(sender) = live_output {
                                    // A caller that reads slowly may not stretch the run past
                                    // its deadline.
                                    let _ = tokio::time::timeout_at(
                                        deadline.max(now),
                                        sender.send(chunk),
                                    )
                                    .await;
                                }
                            }
                        }
                        _ => {}
                    }
                };
                if !matches!(end, CellEnd::Done) || gathered.failed {
                    break;
                }
            }
        }
        let lost = match end {
            CellEnd::Done => None,
            CellEnd::Hung => Some(KernelEnd::Timeout),
            CellEnd::Lost(why) => {
                tracing::debug!(workspace_id, why, "a gateway kernel ended");
                Some(if timed_out {
                    KernelEnd::Timeout
                } else {
                    KernelEnd::Crashed
                })
            }
        };
        if let Some(end) = lost {
            // A kernel that did not stop, or whose channel broke, goes: the next `ensure`
            // starts a fresh one. One deleted from outside is gone already.
            if self.forget(workspace_id).is_some() {
                let _ = self.delete_kernel(&live.kernel_id).await;
                self.set_ended(workspace_id, end);
            }
        }
        let exit_code = match (lost, gathered.failed) {
            (Some(_), _) => None,
            (None, true) => Some(1),
            (None, false) => Some(0),
        };
        Ok(ExecOutcome {
            exit_code,
            stdout_truncated: gathered.stdout.truncated,
            stderr_truncated: gathered.stderr.truncated,
            stdout: gathered.stdout.bytes,
            stderr: gathered.stderr.bytes,
            timed_out,
            killed_reason: None,
            duration: started.elapsed(),
            outputs: gathered.outputs,
            outputs_truncated: gathered.outputs_truncated,
            execution_count,
            kernel_lost: lost,
        })
    }

    async fn kill_processes(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        // The code runs in the kernel's own process: stopping it takes the kernel.
        if self.drop_kernel(workspace_id).await? {
            self.set_ended(workspace_id, KernelEnd::Crashed);
        }
        Ok(())
    }

    async fn interrupt(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        match self.live_of(workspace_id) {
            Some(live) => self.interrupt_kernel(&live.kernel_id).await,
            None => Ok(()),
        }
    }

    async fn restart(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        if self.drop_kernel(workspace_id).await? {
            self.set_ended(workspace_id, KernelEnd::Requested);
        }
        Ok(())
    }

    async fn release(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        self.drop_kernel(workspace_id).await?;
        self.take_ended(workspace_id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, RuntimeError> {
        let live: Vec<(String, Arc<Live>)> = self
            .live
            .lock()
            .map(|live| {
                live.iter()
                    .map(|(id, live)| (id.clone(), live.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(live
            .into_iter()
            .map(|(workspace_id, live)| SandboxInfo {
                workspace_id,
                instance: Some(live.instance.clone()),
                sandbox_id: live.kernel_id.clone(),
                running: true,
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        let response = self
            .request(reqwest::Method::GET, "/api")
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(RuntimeError::Unreachable(format!(
                "the Jupyter Enterprise Gateway at {} answered {}",
                self.base,
                response.status()
            )))
        }
    }

    fn mounts_workspace(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[0;31mZeroDivisionError\u{1b}[0m: division by zero"),
            "ZeroDivisionError: division by zero"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn texts_may_be_lists() {
        assert_eq!(text_of(Some(&json!(["a", "b"]))), "ab");
        assert_eq!(text_of(Some(&json!("ab"))), "ab");
        assert_eq!(text_of(None), "");
    }

    #[test]
    fn python_literals_escape_quotes() {
        assert_eq!(json_string("/a/\"b\""), "\"/a/\\\"b\\\"\"");
    }
}
