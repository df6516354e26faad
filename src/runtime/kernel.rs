//! One live interpreter, seen through its channel: the part of running a cell that does not
//! depend on the engine. A runtime hands it the runner's stdin and a stream of its output,
//! and supplies the two ways of stopping code from outside ([`Enforcer`]); [`Kernel::execute`]
//! sends the cell and gathers what comes back under the run's caps and deadline.
//!
//! The same loop serves any runtime that can attach to a process's stdio: Docker's attach
//! stream today, a Kubernetes attach stream tomorrow.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::channel::{self, FrameDecoder, RESULT_TYPES, RunnerFrame, RunnerRequest, StreamName};
use super::{ExecRequest, KernelEnd, OutputChunk, RichOutput};

/// How long an interrupted cell may take to stop before its interpreter is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Frames waiting between the reader and the run; the runner blocks when the run lags.
const FRAME_QUEUE: usize = 64;

/// A piece of what the runner's process wrote.
#[derive(Debug)]
pub enum RawOutput {
    /// Its standard output: the channel.
    Channel(Bytes),
    /// Its standard error: the runner's own diagnostics, never the code's output (the runner
    /// captures that).
    Diagnostic(Bytes),
}

/// How a runtime stops code from outside the sandbox.
#[async_trait::async_trait]
pub trait Enforcer: Send + Sync {
    /// Interrupts the running cell (KeyboardInterrupt in the interpreter); the interpreter is
    /// expected to report the cell done soon after.
    async fn interrupt(&self);
    /// Ends the interpreter at once, whatever it does.
    async fn kill(&self);
}

/// What came through the channel, in order.
enum Incoming {
    Frame(RunnerFrame),
    /// The channel ended: the runner exited, was killed, or broke the protocol.
    Closed(String),
}

/// A live interpreter's channel.
pub struct Kernel {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    frames: mpsc::Receiver<Incoming>,
    closed: Arc<AtomicBool>,
    next_id: u64,
    /// Cells run in this interpreter so far (the notebook's execution count).
    pub execution_count: u64,
    /// The last bytes the runner wrote to its stderr, for reports of its death.
    diagnostics: Arc<std::sync::Mutex<Vec<u8>>>,
}

/// What one cell did.
#[derive(Debug, Default)]
pub struct Executed {
    /// The status the cell would have exited with as a script; `None` when it did not finish.
    pub exit_code: Option<i64>,
    /// Standard output up to the cap.
    pub stdout: CappedBuffer,
    /// Standard error up to the cap.
    pub stderr: CappedBuffer,
    /// Rich outputs, in order, up to the cap.
    pub outputs: Vec<RichOutput>,
    /// Whether outputs past the cap were dropped.
    pub outputs_truncated: bool,
    /// Whether the deadline passed.
    pub timed_out: bool,
    /// Set when the interpreter did not survive the cell: killed after the deadline, or its
    /// channel ended (the runtime finds out why).
    pub lost: Option<KernelEnd>,
    /// What the channel said when it ended.
    pub closed_because: Option<String>,
    /// Wall-clock time of the cell.
    pub duration: Duration,
}

impl Kernel {
    /// Starts reading `output` in the background. Nothing is sent until [`Kernel::ready`].
    pub fn attach(
        input: Pin<Box<dyn AsyncWrite + Send>>,
        output: impl Stream<Item = Result<RawOutput, String>> + Send + 'static,
    ) -> Self {
        let (sender, frames) = mpsc::channel(FRAME_QUEUE);
        let closed = Arc::new(AtomicBool::new(false));
        let diagnostics = Arc::new(std::sync::Mutex::new(Vec::new()));
        tokio::spawn(read_frames(
            Box::pin(output),
            sender,
            closed.clone(),
            diagnostics.clone(),
        ));
        Self {
            input,
            frames,
            closed,
            next_id: 1,
            execution_count: 0,
            diagnostics,
        }
    }

    /// Whether the channel is still open (the runner may still have died since).
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }

    /// The runner's last diagnostics, as text.
    pub fn diagnostics(&self) -> String {
        self.diagnostics
            .lock()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the runner to say it is ready, for at most `timeout`.
    pub async fn ready(&mut self, timeout: Duration) -> Result<(), String> {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                match self.frames.recv().await {
                    Some(Incoming::Frame(RunnerFrame::Ready {})) => return Ok(()),
                    Some(Incoming::Frame(_)) => {}
                    Some(Incoming::Closed(why)) => return Err(why),
                    None => return Err("the channel closed".to_owned()),
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(format!("the interpreter did not start: {why}")),
            Err(_) => Err(format!(
                "the interpreter was not ready within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// Asks the interpreter to import `modules` ahead of any cell and waits until it has,
    /// for at most `timeout`.
    pub async fn preload(&mut self, modules: &[String], timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.send(&RunnerRequest::Preload { modules }.encode(), deadline)
            .await?;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(Incoming::Frame(RunnerFrame::Preloaded {}))) => return Ok(()),
                Ok(Some(Incoming::Frame(_))) => {}
                Ok(Some(Incoming::Closed(why))) => return Err(why),
                Ok(None) => return Err("the channel closed".to_owned()),
                Err(_) => {
                    return Err(format!(
                        "the interpreter did not preload within {}",
                        humantime::format_duration(timeout)
                    ));
                }
            }
        }
    }

    /// Runs one cell: sends it, forwards output to `live` as it comes, keeps it up to the
    /// caps, and enforces the deadline: past it the cell is interrupted, and past
    /// [`INTERRUPT_GRACE`] more the interpreter is killed.
    pub async fn execute(
        &mut self,
        request: &ExecRequest,
        live: Option<&mpsc::Sender<OutputChunk>>,
        enforcer: Arc<dyn Enforcer>,
    ) -> Executed {
        let started = Instant::now();
        let mut run = Executed {
            stdout: CappedBuffer::new(request.max_output_bytes),
            stderr: CappedBuffer::new(request.max_output_bytes),
            ..Executed::default()
        };
        let id = self.next_id;
        self.next_id += 1;
        // What the interpreter said between cells is no run's output.
        while let Ok(incoming) = self.frames.try_recv() {
            if let Incoming::Closed(why) = incoming {
                run.lost = Some(KernelEnd::Crashed);
                run.closed_because = Some(why);
                run.duration = started.elapsed();
                return run;
            }
        }
        let init_code = request
            .init_code
            .as_deref()
            .filter(|_| self.execution_count == 0);
        let frame = RunnerRequest::Exec {
            id,
            code: &request.code,
            init_code,
            quiet_tracebacks: !request.tracebacks_on_stderr,
        }
        .encode();
        self.execution_count += 1;
        let deadline = tokio::time::Instant::now() + request.timeout;
        if let Err(error) = self.send(&frame, deadline).await {
            run.lost = Some(KernelEnd::Crashed);
            run.closed_because = Some(error);
            run.duration = started.elapsed();
            return run;
        }
        let mut kill_at: Option<tokio::time::Instant> = None;
        loop {
            // The clock is read on every turn: a runner that floods the channel keeps it
            // always ready, and a timer branch alone could then starve.
            let now = tokio::time::Instant::now();
            if !run.timed_out && now >= deadline {
                run.timed_out = true;
                let enforcer = enforcer.clone();
                // Beside this loop, which keeps reading: the runner must be able to write
                // what it is doing when the interrupt lands.
                tokio::spawn(async move { enforcer.interrupt().await });
                kill_at = Some(now + INTERRUPT_GRACE);
            }
            if kill_at.is_some_and(|at| now >= at) {
                enforcer.kill().await;
                run.lost = Some(KernelEnd::Timeout);
                break;
            }
            let incoming = tokio::select! {
                biased;
                () = tokio::time::sleep_until(kill_at.unwrap_or(deadline)) => continue,
                incoming = self.frames.recv() => incoming,
            };
            let frame = match incoming {
                Some(Incoming::Frame(frame)) => frame,
                Some(Incoming::Closed(why)) => {
                    run.lost = Some(if run.timed_out {
                        KernelEnd::Timeout
                    } else {
                        KernelEnd::Crashed
                    });
                    run.closed_because = Some(why);
                    break;
                }
                None => {
                    run.lost = Some(KernelEnd::Crashed);
                    break;
                }
            };
            let chunk = match frame {
                RunnerFrame::Stream {
                    id: Some(of),
                    name,
                    text,
                } if of == id => {
                    let buffer = match name {
                        StreamName::Stdout => &mut run.stdout,
                        StreamName::Stderr => &mut run.stderr,
                    };
                    let kept = buffer.push(text.as_bytes());
                    if kept.is_empty() {
                        continue;
                    }
                    let kept = Bytes::copy_from_slice(kept);
                    match name {
                        StreamName::Stdout => OutputChunk::Stdout(kept),
                        StreamName::Stderr => OutputChunk::Stderr(kept),
                    }
                }
                RunnerFrame::Result { id: of, data } if of == id => {
                    let Some(output) = result_output(data, request.max_output_bytes) else {
                        continue;
                    };
                    match keep_output(&mut run, output, request.max_outputs) {
                        Some(output) => OutputChunk::Output(output),
                        None => continue,
                    }
                }
                RunnerFrame::Image { id: of, png } if of == id => {
                    let Some(output) = image_output(&png, request.max_image_bytes) else {
                        run.stderr.push(
                            b"codebox: a figure was dropped: not a PNG within the size cap\n",
                        );
                        continue;
                    };
                    match keep_output(&mut run, output, request.max_outputs) {
                        Some(output) => OutputChunk::Output(output),
                        None => continue,
                    }
                }
                RunnerFrame::Error {
                    id: of,
                    ename,
                    evalue,
                    traceback,
                } if of == id => {
                    let cap = request.max_output_bytes;
                    let output = RichOutput::Error {
                        ename: cut(ename, 256),
                        evalue: cut(evalue, cap),
                        traceback: cut_lines(traceback, cap),
                    };
                    match keep_output(&mut run, output, request.max_outputs) {
                        Some(output) => OutputChunk::Output(output),
                        None => continue,
                    }
                }
                RunnerFrame::Done { id: of, exit_code } if of == id => {
                    run.exit_code = Some(exit_code);
                    break;
                }
                // Another cell's frames (a thread of an earlier one still printing), or a
                // second `ready`: not this run's.
                _ => continue,
            };
            if let Some(live) = live {
                // A caller that stopped listening does not stop the run, and one that reads
                // slowly may not stretch it past its deadline.
                let _ = tokio::time::timeout_at(deadline.max(now), live.send(chunk)).await;
            }
        }
        run.duration = started.elapsed();
        run
    }

    /// Writes one frame to the runner, giving up at `deadline` (a runner that stopped reading
    /// its input must not hold the run).
    async fn send(&mut self, frame: &[u8], deadline: tokio::time::Instant) -> Result<(), String> {
        let written = tokio::time::timeout_at(deadline, async {
            self.input.write_all(frame).await?;
            self.input.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("could not write to the interpreter: {error}")),
            Err(_) => Err("the interpreter did not read its input".to_owned()),
        }
    }
}

/// Reads the runner's output until it ends, cutting the channel into frames.
async fn read_frames(
    mut output: Pin<Box<dyn Stream<Item = Result<RawOutput, String>> + Send>>,
    frames: mpsc::Sender<Incoming>,
    closed: Arc<AtomicBool>,
    diagnostics: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let mut decoder = FrameDecoder::default();
    let why = loop {
        match output.next().await {
            Some(Ok(RawOutput::Channel(bytes))) => {
                decoder.push(&bytes);
                let mut broken = None;
                loop {
                    match decoder.next_frame() {
                        Ok(Some(body)) => {
                            if let Some(frame) = channel::parse(&body)
                                && frames.send(Incoming::Frame(frame)).await.is_err()
                            {
                                // The kernel was dropped: nobody listens any more.
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(error) => {
                            broken = Some(error.to_string());
                            break;
                        }
                    }
                }
                if let Some(why) = broken {
                    break why;
                }
            }
            Some(Ok(RawOutput::Diagnostic(bytes))) => {
                if let Ok(mut kept) = diagnostics.lock() {
                    kept.extend_from_slice(&bytes);
                    let excess = kept.len().saturating_sub(4096);
                    kept.drain(..excess);
                }
            }
            Some(Err(error)) => break format!("the channel failed: {error}"),
            None => break "the interpreter exited".to_owned(),
        }
    };
    closed.store(true, Ordering::Relaxed);
    let _ = frames.send(Incoming::Closed(why)).await;
}

/// Adds an output unless the cap is reached; returns it for the live stream if kept.
fn keep_output(run: &mut Executed, output: RichOutput, cap: usize) -> Option<RichOutput> {
    if run.outputs.len() >= cap {
        run.outputs_truncated = true;
        return None;
    }
    run.outputs.push(output.clone());
    Some(output)
}

/// A result with only the renderings codebox knows, each cut to the cap.
pub(super) fn result_output(
    data: std::collections::BTreeMap<String, String>,
    cap: usize,
) -> Option<RichOutput> {
    let data: std::collections::BTreeMap<String, String> = data
        .into_iter()
        .filter(|(kind, _)| RESULT_TYPES.contains(&kind.as_str()))
        .map(|(kind, text)| (kind, cut(text, cap)))
        .collect();
    (!data.is_empty()).then_some(RichOutput::Result { data })
}

/// A figure, if the runner sent a real PNG within the cap.
pub(super) fn image_output(png: &str, cap: usize) -> Option<RichOutput> {
    // Base64 takes 4 characters for 3 bytes: a longer text cannot decode within the cap.
    if png.len() / 4 * 3 > cap + 3 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(png).ok()?;
    (bytes.len() <= cap && bytes.starts_with(b"\x89PNG\r\n\x1a\n")).then(|| RichOutput::Image {
        png: Bytes::from(bytes),
    })
}

/// `text` cut to at most `cap` bytes, at a character boundary.
pub(super) fn cut(mut text: String, cap: usize) -> String {
    if text.len() > cap {
        let mut end = cap;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Lines kept until their total reaches `cap`.
pub(super) fn cut_lines(lines: Vec<String>, cap: usize) -> Vec<String> {
    let mut room = cap;
    let mut kept = Vec::new();
    for line in lines {
        if room == 0 {
            break;
        }
        let line = cut(line, room);
        room -= line.len();
        kept.push(line);
    }
    kept
}

/// Keeps the first `cap` bytes of a stream and notes whether more came.
#[derive(Debug, Default)]
pub struct CappedBuffer {
    /// What was kept.
    pub bytes: Vec<u8>,
    cap: usize,
    /// Whether more came than was kept.
    pub truncated: bool,
}

impl CappedBuffer {
    /// An empty buffer keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Adds a chunk; returns the part of it that was kept.
    pub fn push<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let room = self.cap.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        let kept = &chunk[..chunk.len().min(room)];
        self.bytes.extend_from_slice(kept);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_buffer_keeps_the_head() {
        let mut buffer = CappedBuffer::new(5);
        assert_eq!(buffer.push(b"abc"), b"abc");
        assert!(!buffer.truncated);
        assert_eq!(buffer.push(b"defg"), b"de");
        assert_eq!(buffer.push(b"h"), b"");
        assert_eq!(buffer.bytes, b"abcde");
        assert!(buffer.truncated);
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut("héllo".to_owned(), 2), "h");
        assert_eq!(cut("abc".to_owned(), 5), "abc");
        assert_eq!(
            cut_lines(vec!["abc".into(), "def".into(), "ghi".into()], 5),
            vec!["abc", "de"]
        );
    }

    #[test]
    fn only_real_pngs_within_the_cap_are_figures() {
        let engine = base64::engine::general_purpose::STANDARD;
        let png = engine.encode(b"\x89PNG\r\n\x1a\nrest");
        assert!(image_output(&png, 100).is_some());
        assert!(image_output(&png, 5).is_none());
        assert!(image_output(&engine.encode(b"GIF89a"), 100).is_none());
        assert!(image_output("not base64!", 100).is_none());
    }

    #[test]
    fn results_keep_known_renderings_only() {
        let data = [
            ("text/plain".to_owned(), "42".to_owned()),
            ("application/x-evil".to_owned(), "x".to_owned()),
        ]
        .into_iter()
        .collect();
        let Some(RichOutput::Result { data }) = result_output(data, 10) else {
            panic!("no result");
        };
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["text/plain"]);
        let only_unknown = [("image/svg+xml".to_owned(), "<svg/>".to_owned())]
            .into_iter()
            .collect();
        assert!(result_output(only_unknown, 10).is_none());
    }
}
