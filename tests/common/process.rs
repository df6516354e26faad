//! `codebox serve` as a process: the real binary started on a configuration file, stopped
//! by a signal (`SIGTERM`, gracefully) or killed (`SIGKILL`, as a crash), and the containers
//! an instance has on the engine.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The lines a server wrote on stderr after it started listening.
pub type LogLines = Arc<Mutex<Vec<String>>>;

/// Starts `codebox serve` on a free port; returns the child, its base URL and the log lines
/// it writes from then on.
pub async fn start(config: &Path, log_format: &str) -> (Child, String, LogLines) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .arg("--config")
        .arg(config)
        .args(["--log-format", log_format])
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start codebox serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(url) = line.strip_prefix("codebox: listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("codebox serve ended before it listened");
    })
    .await
    .expect("codebox serve listens within two minutes");
    // Keep draining its log so that it never blocks on a full pipe, and keep what it says.
    let kept = LogLines::default();
    let sink = kept.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().expect("log lines").push(line);
        }
    });
    (child, url, kept)
}

/// Sends SIGTERM and waits for a clean exit.
pub async fn stop(mut child: Child) {
    let pid = child.id().expect("pid");
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(signalled.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("codebox serve stops within a minute")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// Kills the server with SIGKILL, as a crash would end it, and waits until it is gone: it
/// gets no chance to clean anything up.
pub async fn kill(mut child: Child) {
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert!(!status.success(), "{status:?}");
}

/// The containers of an instance, by label: `(container id, workspace id)`.
pub fn containers_of(instance: &str) -> Vec<(String, String)> {
    let output = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=codebox.instance={instance}"),
            "--format",
            "{{.ID}} {{.Label \"codebox.workspace\"}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(id, workspace)| (id.to_owned(), workspace.to_owned()))
        .collect()
}
