//! `codebox serve` as an operator runs it: the real binary, stopped by a signal. A graceful
//! stop removes every sandbox the server started and keeps the workspaces; the next start
//! runs the same messages on the same files.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "svc-serve-test-0123456789abcdef";

/// Starts `codebox serve` on a free port; returns the child and its base URL.
async fn start(config: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start codebox serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(url) = line.strip_prefix("codebox: listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("codebox serve ended before it listened");
    })
    .await
    .expect("codebox serve listens within a minute");
    // Keep draining its log so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// Sends SIGTERM and waits for a clean exit.
async fn stop(mut child: Child) {
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

/// The containers of an instance, by label.
fn containers_of(instance: &str) -> Vec<String> {
    let output = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=codebox.instance={instance}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn run(url: &str, message_id: &str, code: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/runs"))
        .bearer_auth(TOKEN)
        .header("X-User-Id", "alice")
        .json(&serde_json::json!({"chat_id": "c", "message_id": message_id, "code": code}))
        .send()
        .await
        .expect("run");
    common::json_of(response, 200).await
}

struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        common::remove_containers_of(self.0);
    }
}

#[tokio::test]
async fn a_graceful_stop_removes_the_sandboxes_and_keeps_the_workspaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let _cleanup = Cleanup(&data_dir);
    let config = dir.path().join("codebox.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data_dir:?}\n\
             [sandbox]\nimage = {image:?}\nmemory = \"256 MiB\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\n\
             [[server.tokens]]\ntoken = {TOKEN:?}\ntenant = \"t\"\nrole = \"service\"\n",
            image = common::test_image(),
        ),
    )
    .expect("config");

    let (server, url) = start(&config).await;
    let instance = std::fs::read_to_string(data_dir.join("instance")).expect("instance id");
    for message in ["m-1", "m-2"] {
        let run = run(
            &url,
            message,
            &format!("open('/mnt/data/{message}.txt', 'w').write('kept')"),
        )
        .await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    // The messages' sandboxes, and the warm pool's.
    assert!(containers_of(instance.trim()).len() >= 2);
    stop(server).await;
    assert_eq!(
        containers_of(instance.trim()),
        Vec::<String>::new(),
        "a stopped server left its sandboxes running"
    );
    let slots = data_dir.join("workspaces").join(".pool");
    let left = std::fs::read_dir(&slots)
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "a stopped server left warm workspaces");

    // The workspaces stayed: a new start runs the same message on the same files.
    let (server, url) = start(&config).await;
    let run = run(&url, "m-1", "print(open('/mnt/data/m-1.txt').read())").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "kept\n");
    stop(server).await;
    assert!(containers_of(instance.trim()).is_empty());
}
