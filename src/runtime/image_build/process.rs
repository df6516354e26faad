//! Running one build step (the rootfs script, an apt-get) as a child in its own process group:
//! every output line is passed on as it arrives, the last ones are kept for the error, and a
//! cancelled build stops the whole group, lets it clean up and kills what is left. It is the
//! only place that starts and signals processes.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ImageError;

/// How long a stopped build script may take to clean up before its process
/// group is killed. Removing even the full image's root takes a few seconds.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// How long output is still read after a child exited: a process that left the
/// group (a daemon started in the chroot) could otherwise keep its pipe open
/// for ever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How many lines of script output a [`ImageError::ScriptFailed`] keeps.
const OUTPUT_TAIL_LINES: usize = 20;

/// How a child run by [`run_streaming`] ended.
pub(super) struct Streamed {
    pub(super) status: ExitStatus,
    /// Its last lines of output, oldest first.
    pub(super) tail: VecDeque<String>,
    /// Whether it was stopped because `cancel` fired.
    pub(super) interrupted: bool,
}

/// Runs `command` in a process group of its own, passing every line of its
/// stdout and stderr to `progress`.
///
/// Its own group keeps a terminal's Ctrl-C from reaching it directly: codebox
/// decides. When `cancel` fires, the whole group (the script, debootstrap,
/// wget, dpkg) gets SIGTERM, and the output is still read while the child
/// cleans up, so its cleanup never writes into a closed pipe. A group that
/// takes longer than [`STOP_GRACE`] gets SIGKILL; after a stop, whatever is
/// left of the group is killed so that nothing keeps writing into the build
/// folder.
pub(super) async fn run_streaming(
    mut command: Command,
    program: &Path,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<Streamed, ImageError> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| ImageError::io("run", program, e))?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);

    // The two pipes are drained concurrently so that neither can fill up and
    // block the child; their lines meet in one channel so that `progress`,
    // which cannot be shared, is only called from here.
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(forward_lines(stdout, tx.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(forward_lines(stderr, tx.clone())));
    }
    drop(tx);

    let signal_group = |signal: Signal| {
        if let Some(group) = group {
            // ESRCH only means that every process of the group is gone.
            let _ = kill_process_group(group, signal);
        }
    };
    let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut tail = VecDeque::with_capacity(OUTPUT_TAIL_LINES);
    let mut status = None;
    let mut interrupted = false;
    let mut killed = false;
    let mut kill_at = never;
    let mut stop_reading_at = never;
    loop {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { break };
                progress(&line);
                if tail.len() == OUTPUT_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.map_err(|e| ImageError::io("wait for", program, e))?);
                stop_reading_at = Instant::now() + DRAIN_AFTER_EXIT;
            }
            () = cancel.cancelled(), if !interrupted && status.is_none() => {
                interrupted = true;
                progress(&format!(
                    "==> stopping {} and waiting for it to remove its temporary files",
                    program.display()
                ));
                signal_group(Signal::TERM);
                kill_at = Instant::now() + STOP_GRACE;
            }
            () = tokio::time::sleep_until(kill_at), if interrupted && !killed && status.is_none() => {
                killed = true;
                progress(&format!(
                    "==> {} did not stop within {}s; killing it",
                    program.display(),
                    STOP_GRACE.as_secs()
                ));
                signal_group(Signal::KILL);
            }
            () = tokio::time::sleep_until(stop_reading_at), if status.is_some() => break,
        }
    }
    for reader in readers {
        reader.abort();
    }
    let status = match status {
        Some(status) => status,
        None => child
            .wait()
            .await
            .map_err(|e| ImageError::io("wait for", program, e))?,
    };
    // A stop also counts when the child finished on its own at that moment:
    // the caller abandons the build either way.
    let interrupted = interrupted || cancel.is_cancelled();
    if interrupted {
        signal_group(Signal::KILL);
    }
    Ok(Streamed {
        status,
        tail,
        interrupted,
    })
}

/// Sends each line read from `reader` to `tx`, without its line ending.
/// Invalid UTF-8 is replaced rather than treated as an error, because the
/// output is only shown to a human.
async fn forward_lines(reader: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if tx.send(line.to_owned()).await.is_err() {
                    break;
                }
            }
        }
    }
}
