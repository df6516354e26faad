//! The kernel's WebSocket: Jupyter's messaging protocol in its JSON form (`header`,
//! `parent_header`, `metadata`, `content`, `channel`), as Jupyter Server relays it.
//!
//! An `execute_request` becomes a run of the kernel's message, streamed: `status: busy`,
//! `execute_input`, then `stream`, `execute_result`, `display_data` (figures as base64 PNG)
//! and `error` as the run produces them, one more `display_data` listing the files the run
//! registered with their download links (so that a client that only shows outputs shows the
//! links), the `execute_reply` on the shell channel, and `status: idle`. Requests are served
//! one at a time per connection, in order; runs of one message are serialized anyway.

use axum::extract::ws::{Message, WebSocket};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{KERNEL_NAME, Kernel};
use crate::api::AppState;
use crate::supervisor::{self, FileRecord, FileSource, RunOutput, RunStatus};
use crate::supervisor::{RunEvent, RunRequest};

/// The messaging protocol version spoken.
const PROTOCOL_VERSION: &str = "5.3";

/// A message's header, as the client sent it; echoed as the replies' `parent_header`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Header {
    #[serde(default)]
    msg_id: String,
    #[serde(default)]
    msg_type: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    version: String,
}

/// A message from the client; everything but what is used is ignored.
#[derive(Debug, Deserialize)]
struct Incoming {
    header: Header,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    channel: Option<String>,
}

/// Sends replies to one request.
struct Replies<'a> {
    out: &'a mpsc::Sender<String>,
    parent: Header,
}

impl Replies<'_> {
    async fn send(&self, channel: &str, msg_type: &str, content: Value) {
        let message = json!({
            "header": {
                "msg_id": uuid::Uuid::new_v4().to_string(),
                "msg_type": msg_type,
                "session": self.parent.session,
                "username": "codebox",
                "date": supervisor::now(),
                "version": PROTOCOL_VERSION,
            },
            "msg_id": uuid::Uuid::new_v4().to_string(),
            "msg_type": msg_type,
            "parent_header": self.parent,
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        });
        // A client that went away stops nothing: the run still completes and registers.
        let _ = self.out.send(message.to_string()).await;
    }

    async fn status(&self, state: &str) {
        self.send("iopub", "status", json!({"execution_state": state}))
            .await;
    }
}

/// Serves one WebSocket of kernel `kernel_id` until the client closes it.
pub async fn serve(socket: WebSocket, state: AppState, kernel: Kernel) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    state
        .jupyter
        .update(&kernel.id, |kernel| kernel.connections += 1);
    while let Some(Ok(message)) = stream.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            // Binary frames are the newer v1 WebSocket protocol, which is not offered.
            _ => continue,
        };
        let Ok(request) = serde_json::from_str::<Incoming>(&text) else {
            continue;
        };
        // The kernel may have been shut down meanwhile.
        let Some(current) = state.jupyter.get(&kernel.owner.tenant, &kernel.id) else {
            break;
        };
        handle(&state, &current, request, &out).await;
    }
    state.jupyter.update(&kernel.id, |kernel| {
        kernel.connections = kernel.connections.saturating_sub(1);
    });
    drop(out);
    let _ = writer.await;
}

async fn handle(state: &AppState, kernel: &Kernel, request: Incoming, out: &mpsc::Sender<String>) {
    let msg_type = request.header.msg_type.clone();
    let channel = request
        .channel
        .clone()
        .unwrap_or_else(|| "shell".to_owned());
    let replies = Replies {
        out,
        parent: request.header,
    };
    match msg_type.as_str() {
        "execute_request" => execute(state, kernel, &request.content, &replies).await,
        "kernel_info_request" => {
            replies.status("busy").await;
            replies
                .send(&channel, "kernel_info_reply", kernel_info())
                .await;
            replies.status("idle").await;
        }
        "comm_info_request" => {
            replies
                .send(
                    &channel,
                    "comm_info_reply",
                    json!({"status": "ok", "comms": {}}),
                )
                .await;
        }
        "is_complete_request" => {
            replies
                .send(&channel, "is_complete_reply", json!({"status": "unknown"}))
                .await;
        }
        "interrupt_request" => {
            let interrupted = state
                .supervisor
                .interrupt(&kernel.owner, &kernel.message_id)
                .await;
            let status = if interrupted.is_ok() { "ok" } else { "error" };
            replies
                .send(&channel, "interrupt_reply", json!({"status": status}))
                .await;
        }
        "shutdown_request" => {
            let restart = request.content["restart"].as_bool().unwrap_or(false);
            if restart {
                state
                    .jupyter
                    .update(&kernel.id, |kernel| kernel.restart_next = true);
            }
            replies
                .send(
                    &channel,
                    "shutdown_reply",
                    json!({"status": "ok", "restart": restart}),
                )
                .await;
        }
        other if other.ends_with("_request") => {
            let reply = other.replace("_request", "_reply");
            replies
                .send(
                    &channel,
                    &reply,
                    json!({
                        "status": "error",
                        "ename": "NotImplementedError",
                        "evalue": format!("codebox does not answer {other}"),
                        "traceback": [],
                    }),
                )
                .await;
        }
        _ => {}
    }
}

fn kernel_info() -> Value {
    json!({
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "codebox",
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "python",
            "version": "3",
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "nbconvert_exporter": "python",
        },
        "banner": format!("codebox {} ({KERNEL_NAME}, sandboxed)", env!("CARGO_PKG_VERSION")),
        "help_links": [],
    })
}

/// One `execute_request`: a run of the kernel's message, its events relayed as they come.
async fn execute(state: &AppState, kernel: &Kernel, content: &Value, replies: &Replies<'_>) {
    let code = content["code"].as_str().unwrap_or_default().to_owned();
    state.jupyter.update(&kernel.id, |kernel| {
        kernel.execution_state = "busy";
        kernel.last_activity = supervisor::now();
    });
    replies.status("busy").await;
    let restart = kernel.restart_next;
    let expected_count = if restart {
        1
    } else {
        kernel.execution_count + 1
    };
    replies
        .send(
            "iopub",
            "execute_input",
            json!({"code": code, "execution_count": expected_count}),
        )
        .await;
    let request = RunRequest {
        chat_id: kernel.chat_id.clone(),
        message_id: kernel.message_id.clone(),
        code,
        language: "python".to_owned(),
        file_ids: Vec::new(),
        timeout: None,
        restart,
        init_code: None,
        tracebacks_on_stderr: false,
    };
    let finished = run(state, kernel, request, expected_count, replies).await;
    let (reply, count) = match finished {
        Ok(done) => done,
        Err(evalue) => {
            let error = json!({"ename": "CodeboxError", "evalue": evalue, "traceback": [evalue]});
            replies.send("iopub", "error", error.clone()).await;
            (error_reply(error, expected_count), expected_count)
        }
    };
    replies.send("shell", "execute_reply", reply).await;
    replies.status("idle").await;
    state.jupyter.update(&kernel.id, |kernel| {
        kernel.execution_state = "idle";
        kernel.execution_count = count;
        if restart {
            kernel.restart_next = false;
        }
        kernel.last_activity = supervisor::now();
    });
}

/// Runs the request, relaying its events; returns the `execute_reply` content and the
/// execution count, or why it could not run.
async fn run(
    state: &AppState,
    kernel: &Kernel,
    request: RunRequest,
    expected_count: u64,
    replies: &Replies<'_>,
) -> Result<(Value, u64), String> {
    let permit = state
        .limiter
        .admit()
        .await
        .map_err(|_| "too many runs in flight and queued; retry later".to_owned())?;
    let accepted = state
        .supervisor
        .accept(&kernel.owner, request)
        .await
        .map_err(|error| error.to_string())?;
    let (events, mut received) = mpsc::channel::<RunEvent>(64);
    let supervisor = state.supervisor.clone();
    let running = tokio::spawn(async move {
        let report = supervisor.carry_out(accepted, Some(events)).await;
        drop(permit);
        report
    });
    let mut files: Vec<FileRecord> = Vec::new();
    let mut last_error = None;
    while let Some(event) = received.recv().await {
        match event {
            RunEvent::Stdout(text) => {
                replies
                    .send("iopub", "stream", json!({"name": "stdout", "text": text}))
                    .await;
            }
            RunEvent::Stderr(text) => {
                replies
                    .send("iopub", "stream", json!({"name": "stderr", "text": text}))
                    .await;
            }
            RunEvent::File(file) => files.push(*file),
            RunEvent::Output(output, file) => match *output {
                RunOutput::Result { data } => {
                    let content = json!({
                        "execution_count": expected_count,
                        "data": data,
                        "metadata": {},
                    });
                    replies.send("iopub", "execute_result", content).await;
                }
                RunOutput::Error {
                    ename,
                    evalue,
                    traceback,
                } => {
                    let error = json!({"ename": ename, "evalue": evalue, "traceback": traceback});
                    replies.send("iopub", "error", error.clone()).await;
                    last_error = Some(error);
                }
                RunOutput::Image { .. } => {
                    if let Some(file) = file {
                        figure(state, &file, replies).await;
                    }
                }
            },
        }
    }
    let report = running
        .await
        .map_err(|error| format!("the run failed: {error}"))?
        .map_err(|error| error.to_string())?;
    let count = report
        .run
        .kernel
        .as_ref()
        .map_or(expected_count, |kernel| kernel.execution_count);
    let listed: Vec<&FileRecord> = files
        .iter()
        .filter(|file| file.source != FileSource::Figure)
        .collect();
    if !listed.is_empty() {
        replies
            .send("iopub", "display_data", file_links(state, &listed))
            .await;
    }
    let reply = match report.run.status {
        RunStatus::Succeeded => json!({
            "status": "ok",
            "execution_count": count,
            "user_expressions": {},
            "payload": [],
        }),
        _ => {
            let reason = report
                .run
                .reason
                .clone()
                .unwrap_or_else(|| format!("the run {}", report.run.status));
            let error = last_error.unwrap_or_else(|| {
                let ename = match report.run.status {
                    RunStatus::TimedOut => "TimeoutError",
                    _ => "CodeboxError",
                };
                json!({"ename": ename, "evalue": reason, "traceback": [reason]})
            });
            error_reply(error, count)
        }
    };
    Ok((reply, count))
}

/// The `execute_reply` content of a failed execution.
fn error_reply(error: Value, count: u64) -> Value {
    json!({
        "status": "error",
        "execution_count": count,
        "ename": error["ename"],
        "evalue": error["evalue"],
        "traceback": error["traceback"],
    })
}

/// Sends a figure as Jupyter kernels do: base64 PNG in a `display_data`.
async fn figure(state: &AppState, file: &FileRecord, replies: &Replies<'_>) {
    let mut png = Vec::new();
    if let Err(error) = state.supervisor.copy_file_to(file, &mut png).await {
        tracing::warn!(file = %file.id, %error, "could not read a figure to send it");
        return;
    }
    let data = json!({
        "image/png": base64::engine::general_purpose::STANDARD.encode(&png),
        "text/plain": format!("<Figure {}>", file.name),
    });
    let metadata =
        json!({"codebox": {"file_id": file.id, "download_url": state.download_url(file)}});
    replies
        .send(
            "iopub",
            "display_data",
            json!({"data": data, "metadata": metadata, "transient": {}}),
        )
        .await;
}

/// The `display_data` that lists the run's files with their download links.
fn file_links(state: &AppState, files: &[&FileRecord]) -> Value {
    let mut markdown = String::from("Files:\n");
    let mut plain = String::from("Files:\n");
    for file in files {
        let url = state.download_url(file);
        let size = bytesize::ByteSize::b(u64::try_from(file.size).unwrap_or(0))
            .display()
            .iec()
            .to_string();
        markdown.push_str(&format!("- [{}]({url}) ({size})\n", file.name));
        plain.push_str(&format!("- {} ({size}): {url}\n", file.name));
    }
    json!({
        "data": {"text/markdown": markdown, "text/plain": plain},
        "metadata": {},
        "transient": {},
    })
}
