//! `codebox serve` as an operator runs it: the real binary, stopped by a signal. A graceful
//! stop removes every sandbox the server started and keeps the workspaces; the next start
//! runs the same messages on the same files.

mod common;

use std::path::Path;

use common::process::{self, start, stop};

const TOKEN: &str = "svc-serve-test-0123456789abcdef";

/// The ids of an instance's containers.
fn containers_of(instance: &str) -> Vec<String> {
    process::containers_of(instance)
        .into_iter()
        .map(|(id, _)| id)
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

    let (server, url, _) = start(&config, "text").await;
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
    let (server, url, _) = start(&config, "text").await;
    let run = run(&url, "m-1", "print(open('/mnt/data/m-1.txt').read())").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "kept\n");
    stop(server).await;
    assert!(containers_of(instance.trim()).is_empty());
}

#[tokio::test]
async fn the_request_log_has_one_json_line_per_request_and_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let _cleanup = Cleanup(&data_dir);
    let config = dir.path().join("codebox.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data_dir:?}\n\
             [sandbox]\nimage = {image:?}\nwarm_pool = 0\n\
             [server]\nlisten = \"127.0.0.1:0\"\n\
             [[server.tokens]]\ntoken = {TOKEN:?}\ntenant = \"t-log\"\nrole = \"service\"\n",
            image = common::test_image(),
        ),
    )
    .expect("config");
    let (server, url, log) = start(&config, "json").await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let missing = client
        .get(format!("{url}/v1/files/file_nope"))
        .bearer_auth(TOKEN)
        .header("X-User-Id", "alice")
        .header("X-Request-Id", "backend-7")
        .send()
        .await
        .expect("get a file");
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-request-id"], "backend-7");
    let signature = "5ec2e7000000000000000000000000000000000000000000000000000000beef";
    let link = client
        .get(format!(
            "{url}/v1/files/file_nope/content?expires=1&signature={signature}"
        ))
        .send()
        .await
        .expect("a signed link");
    assert_eq!(link.status(), 403);
    let minted = link.headers()["x-request-id"].to_str().expect("ascii");
    assert!(minted.starts_with("req_"), "{minted}");
    stop(server).await;

    let lines = log.lock().expect("log lines").clone();
    let requests: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "codebox::request")
        .collect();
    assert_eq!(requests.len(), 3, "{lines:#?}");
    let by_route = |route: &str| {
        requests
            .iter()
            .find(|line| line["route"] == route)
            .unwrap_or_else(|| panic!("no line for {route}: {requests:#?}"))
            .clone()
    };
    let health = by_route("/healthz");
    assert_eq!(
        (health["tenant"].clone(), health["status"].clone()),
        ("-".into(), 200.into())
    );
    let missing = by_route("/v1/files/{file_id}");
    assert_eq!(missing["request_id"], "backend-7");
    assert_eq!(missing["tenant"], "t-log");
    assert_eq!(missing["method"], "GET");
    assert_eq!(missing["status"], 404);
    assert!(missing["duration_ms"].as_f64().is_some(), "{missing}");
    let link = by_route("/v1/files/{file_id}/content");
    assert_eq!(link["status"], 403);
    assert_eq!(link["request_id"], minted);
    // Nothing secret or caller-specific beyond the tenant: no token, no signature, no id.
    for line in &lines {
        assert!(!line.contains(TOKEN), "a token in the log: {line}");
        assert!(!line.contains(signature), "a signature in the log: {line}");
        assert!(!line.contains("file_nope"), "an id in the log: {line}");
    }
}
