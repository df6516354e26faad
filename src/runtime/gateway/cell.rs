//! One cell on a gateway kernel: the `execute_request`, then the kernel's messages until it
//! has replied and gone idle, kept up to the caps and forwarded as they come, with the
//! deadline enforced by an interrupt and, past the grace, by deleting the kernel.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::EnterpriseGatewayRuntime;
use super::websocket::{Incoming, receive, send};
use crate::runtime::kernel::{self, CappedBuffer};
use crate::runtime::{ExecOutcome, ExecRequest, KernelEnd, OutputChunk, RichOutput, RuntimeError};

impl EnterpriseGatewayRuntime {
    /// Runs `request` as the next cell of the live kernel of `workspace_id`
    /// ([`crate::runtime::Runtime::exec`]).
    pub(super) async fn execute(
        &self,
        workspace_id: &str,
        request: &ExecRequest,
        live_output: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, RuntimeError> {
        let Some(live) = self.kernels.get(workspace_id) else {
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
            if self.kernels.forget(workspace_id).is_some() {
                let _ = self.delete_kernel(&live.kernel_id).await;
                self.kernels.ended(workspace_id, end);
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
}
