//! The kernel's `channels` WebSocket: the messaging protocol's JSON form, one socket per
//! kernel, every message capped and parsed as hostile. Opening it also prepares the kernel:
//! waiting until it answers, entering the workspace and importing what it preloads.

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{EnterpriseGatewayRuntime, KERNEL_USERNAME};
use crate::runtime::SandboxSpec;

/// How long a new kernel may take to start and answer, and to import what it preloads.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest message codebox takes from a kernel; a larger one ends the channel (and the
/// kernel).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The messaging protocol version codebox speaks.
const PROTOCOL_VERSION: &str = "5.3";

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The channel to one kernel, held by the cell that runs.
pub(super) struct Channel {
    socket: Socket,
    /// Whether the socket still works.
    pub(super) open: bool,
    /// Cells run in this kernel so far.
    pub(super) execution_count: u64,
}

/// A workspace's kernel on the gateway.
pub(super) struct Live {
    pub(super) kernel_id: String,
    pub(super) instance: String,
    /// The messaging session every request of this kernel belongs to.
    session: String,
    pub(super) channel: tokio::sync::Mutex<Channel>,
    /// Woken when the kernel is deleted from outside a cell (kill, restart), so that a cell
    /// waiting on it ends at once.
    pub(super) killed: Notify,
}

/// What one kernel message said, as far as a cell cares.
pub(super) struct Incoming {
    pub(super) channel: String,
    pub(super) msg_type: String,
    pub(super) parent_id: Option<String>,
    pub(super) content: Value,
}

impl EnterpriseGatewayRuntime {
    /// Connects to a new kernel's channels and prepares it.
    pub(super) async fn open_kernel(
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
}

impl Live {
    /// A request on `channel`, with its message id.
    pub(super) fn message(&self, msg_type: &str, channel: &str, content: Value) -> (String, Value) {
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
pub(super) async fn send(channel: &mut Channel, frame: Value) -> Result<(), String> {
    let sent = channel.socket.send(Message::text(frame.to_string())).await;
    sent.map_err(|error| {
        channel.open = false;
        format!("could not write to the kernel: {error}")
    })
}

/// The next message of the kernel; `None` for frames that are not messages. An error means
/// the channel ended.
pub(super) async fn receive(channel: &mut Channel) -> Result<Option<Incoming>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_escape_quotes() {
        assert_eq!(json_string("/a/\"b\""), "\"/a/\\\"b\\\"\"");
    }
}
