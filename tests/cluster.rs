//! Several `codebox serve` nodes on one catalog: two real processes (A and B) with data
//! folders of their own on one PostgreSQL database and one S3 bucket, the same tokens and the
//! same signing secret. A message lives on the node that holds its workspace: a request for it
//! that reaches the other node is forwarded to the owner (runs, server-sent events, tool calls,
//! workspace deletion), and every answer names the node that did the work in
//! `X-Codebox-Node`. Downloads, listings and renders need no owner. When the owner is gone,
//! killed (its heartbeat lapses) or stopped (its row goes at once), the next run through the
//! other node takes the message over and rebuilds its workspace from its attachments and its
//! registered outputs, in a fresh interpreter, and says `workspace_restored: true`.
//!
//! Each test has a database of its own (dropped at its end) and ids of its own in the shared
//! bucket (file ids are random); the nodes' containers and mounts are removed when the test
//! ends, also when it panicked, and a failing test prints both nodes' logs.

mod common;

#[path = "cluster/failover.rs"]
mod failover;
#[path = "cluster/files.rs"]
mod files;
#[path = "cluster/forwarding.rs"]
mod forwarding;
#[path = "cluster/sharing.rs"]
mod sharing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{self, LogLines};
use common::services::{test_s3, with_database};
use common::web::{mask_links, parse_sse};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Child;

const TOKEN: &str = "svc-cluster-test-0123456789abcdef";
const TENANT: &str = "t-cluster";
const ADMIN_TOKEN: &str = "adm-cluster-test-0123456789abcdef";
const USER: &str = "alice";
const SIGNING_SECRET: &str = "cluster-test-signing-secret-0123456789abcdef";
const CHAT: &str = "chat-cluster";
/// How often a node beats, and after how long without a beat it is gone, in the tests that
/// wait for a lapse.
const HEARTBEAT: &str = "300ms";
const NODE_TIMEOUT: &str = "2s";
const NODE_TIMEOUT_SECS: u64 = 2;
/// The attachment the tests upload.
const CSV: &[u8] = b"region,units\nnorth,3\nsouth,5\n";

/// One `codebox serve` process of the cluster, and its data folder. Dropping it kills the
/// process and removes its containers and mounts (a killed node's stay behind otherwise); when
/// the test is panicking, its log is printed first.
struct Node {
    name: &'static str,
    data_dir: PathBuf,
    instance: String,
    url: String,
    /// In a mutex only so that a `&Node` may be held across an await in a spawned task.
    child: std::sync::Mutex<Option<Child>>,
    log: LogLines,
    client: reqwest::Client,
}

impl Node {
    /// Starts a node called `name` in a folder of its own below `dir`.
    async fn start(dir: &Path, name: &'static str, catalog: &str, node_timeout: &str) -> Self {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("the node's folder");
        let data_dir = home.join("data");
        let config = home.join("codebox.toml");
        let (endpoint, bucket) = test_s3();
        std::fs::write(
            &config,
            format!(
                "data_dir = {data_dir:?}\n\
                 [catalog]\nurl = {catalog:?}\n\
                 [blobs]\nkind = \"s3\"\nbucket = {bucket:?}\nendpoint = {endpoint:?}\n\
                 region = \"us-east-1\"\nallow_http = true\ncache_max_bytes = \"256 MiB\"\n\
                 [sandbox]\nimage = {image:?}\nmemory = \"256 MiB\"\nwarm_pool = 0\n\
                 [server]\nlisten = \"127.0.0.1:0\"\nsigning_secret = {SIGNING_SECRET:?}\n\
                 [[server.tokens]]\ntoken = {TOKEN:?}\ntenant = {TENANT:?}\nrole = \"service\"\n\
                 [[server.tokens]]\ntoken = {ADMIN_TOKEN:?}\ntenant = {TENANT:?}\nrole = \"admin\"\n\
                 [cluster]\nheartbeat_interval = {HEARTBEAT:?}\nnode_timeout = {node_timeout:?}\n",
                image = common::test_image(),
            ),
        )
        .expect("write the node's configuration");
        let (child, url, log) = process::start(&config, "text").await;
        let mut node = Self {
            name,
            data_dir,
            instance: String::new(),
            url,
            child: std::sync::Mutex::new(Some(child)),
            log,
            client: reqwest::Client::new(),
        };
        // Read once the node is owned by `node`, so that a failure here still cleans up.
        node.instance = std::fs::read_to_string(node.data_dir.join("instance"))
            .expect("the node's instance id")
            .trim()
            .to_owned();
        node
    }

    /// A request as Alice of the test's tenant.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
    }

    /// The instances this node lists in `GET /v1/admin/nodes`: `(id, alive, this)`.
    async fn nodes(&self) -> Vec<(String, bool, bool)> {
        let request = self
            .client
            .get(format!("{}/v1/admin/nodes", self.url))
            .bearer_auth(ADMIN_TOKEN);
        let (_, listed) = json_answer(self.send("the nodes", request).await, 200).await;
        listed["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|node| {
                (
                    text(&node["id"]).to_owned(),
                    node["alive"] == true,
                    node["this"] == true,
                )
            })
            .collect()
    }

    /// Sends `request`; a hang is a failure, not a stuck test.
    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> reqwest::Response {
        within(what, request.send())
            .await
            .unwrap_or_else(|error| panic!("{what} through node {}: {error}", self.name))
    }

    /// Runs `code` in message `message_id` of the test's chat through this node; the answer
    /// must be a succeeded Run. Returns the node that did the work and the Run.
    async fn run(&self, message_id: &str, code: &str, file_ids: &[&str]) -> (String, Value) {
        let response = self
            .send("a run", self.run_request(message_id, code, file_ids))
            .await;
        let (node, run) = json_answer(response, 200).await;
        assert_eq!(
            run["status"], "succeeded",
            "through node {}: {run:#}",
            self.name
        );
        assert_eq!(run["message_id"], message_id, "{run:#}");
        (node, run)
    }

    fn run_request(
        &self,
        message_id: &str,
        code: &str,
        file_ids: &[&str],
    ) -> reqwest::RequestBuilder {
        self.request(Method::POST, "/v1/runs").json(&json!({
            "chat_id": CHAT,
            "message_id": message_id,
            "code": code,
            "language": "python",
            "file_ids": file_ids,
        }))
    }

    /// `GET path` through this node, which must answer JSON with 200: the node that answered
    /// and the JSON.
    async fn get_json(&self, path: &str) -> (String, Value) {
        let response = self.send(path, self.request(Method::GET, path)).await;
        json_answer(response, 200).await
    }

    /// `GET path` through this node, which must answer 200: the node that answered and the
    /// bytes.
    async fn get_bytes(&self, path: &str) -> (String, Vec<u8>) {
        let response = self.send(path, self.request(Method::GET, path)).await;
        bytes_answer(response, 200).await
    }

    /// A signed link, fetched without a token: the node that answered and the bytes.
    async fn get_link(&self, link: &str) -> (String, Vec<u8>) {
        let response = self.send(link, self.client.get(link)).await;
        bytes_answer(response, 200).await
    }

    /// Uploads `bytes` as `name`, attached to `message_id` of the test's chat when given; the
    /// node that answered and the File.
    async fn upload(&self, name: &str, bytes: &[u8], message_id: Option<&str>) -> (String, Value) {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned());
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if let Some(message_id) = message_id {
            form = form
                .text("chat_id", CHAT.to_owned())
                .text("message_id", message_id.to_owned());
        }
        let response = self
            .send(
                "an upload",
                self.request(Method::POST, "/v1/files").multipart(form),
            )
            .await;
        json_answer(response, 201).await
    }

    /// Kills the process with SIGKILL, as a crash would: it cleans nothing up and its row in
    /// the catalog stays until its heartbeat lapses.
    async fn kill(&mut self) {
        process::kill(self.take_child()).await;
    }

    /// Stops the process with SIGTERM and waits for its clean exit.
    async fn stop(&mut self) {
        process::stop(self.take_child()).await;
    }

    fn take_child(&mut self) -> Child {
        self.child
            .get_mut()
            .expect("the child's lock")
            .take()
            .expect("the node is running")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(Some(child)) = self.child.get_mut() {
            let _ = child.start_kill();
            for _ in 0..200 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        if !self.instance.is_empty() {
            let ids: Vec<String> = process::containers_of(&self.instance)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        common::remove_containers_of(&self.data_dir);
        if std::thread::panicking() {
            let lines = self
                .log
                .lock()
                .map(|lines| lines.clone())
                .unwrap_or_default();
            eprintln!(
                "---- log of node {} (instance {}, {}) ----",
                self.name, self.instance, self.url
            );
            for line in lines {
                eprintln!("{}: {line}", self.name);
            }
        }
    }
}

/// Two nodes on one catalog and one bucket. The folder goes after the nodes.
struct Cluster {
    a: Node,
    b: Node,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts A, then B, on the database at `catalog`.
    async fn start(catalog: &str, node_timeout: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Node::start(dir.path(), "A", catalog, node_timeout).await;
        let b = Node::start(dir.path(), "B", catalog, node_timeout).await;
        assert_ne!(a.instance, b.instance, "two nodes, two instance ids");
        assert_ne!(a.url, b.url);
        Self { a, b, _dir: dir }
    }
}

/// The node an answer names in `X-Codebox-Node`, which every answer carries.
fn node_of(response: &reqwest::Response) -> String {
    node_header(response).unwrap_or_else(|| {
        panic!(
            "{} ({}): no X-Codebox-Node header",
            response.url(),
            response.status()
        )
    })
}

fn node_header(response: &reqwest::Response) -> Option<String> {
    response.headers().get("x-codebox-node").map(|value| {
        value
            .to_str()
            .expect("X-Codebox-Node is visible ASCII")
            .to_owned()
    })
}

/// The node an answer names and its JSON body; the answer must have `status` (checked
/// first, so that a wrong answer shows its body).
async fn json_answer(response: reqwest::Response, status: u16) -> (String, Value) {
    let node = node_header(&response);
    let url = response.url().clone();
    let body = common::json_of(response, status).await;
    let node = node.unwrap_or_else(|| panic!("{url}: no X-Codebox-Node header: {body}"));
    (node, body)
}

/// `response` when it is a 200 event stream; otherwise the test fails with its body.
async fn ok_stream(response: reqwest::Response) -> reqwest::Response {
    if response.status() == 200 {
        return response;
    }
    let url = response.url().clone();
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    panic!("{url}: {status}: {body}");
}

/// The node an answer names and its bytes; the answer must have `status`.
async fn bytes_answer(response: reqwest::Response, status: u16) -> (String, Vec<u8>) {
    let node = node_header(&response);
    let url = response.url().clone();
    let actual = response.status().as_u16();
    let body = response.bytes().await.expect("read the body").to_vec();
    assert_eq!(actual, status, "{url}: {}", String::from_utf8_lossy(&body));
    let node = node.unwrap_or_else(|| panic!("{url}: no X-Codebox-Node header"));
    (node, body)
}

/// Waits for `future` for at most two minutes: a hang fails the test with `what`.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), future)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {what}"))
}

/// The runs of message `message_id` in the catalog at `catalog`: `(status, reason)`.
async fn runs_of(catalog: &str, message_id: &str) -> Vec<(String, Option<String>)> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(catalog)
        .await
        .expect("connect to the catalog");
    let runs = sqlx::query_as("SELECT status, reason FROM runs WHERE message_id = $1")
        .bind(message_id)
        .fetch_all(&mut connection)
        .await
        .expect("read the catalog's runs");
    connection.close().await.ok();
    runs
}

/// The text of a JSON string.
fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

/// The one file of `files` named `name`.
fn file_named<'a>(files: &'a Value, name: &str) -> &'a Value {
    let matching: Vec<&Value> = files
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {files}"))
        .iter()
        .filter(|file| file["name"] == name)
        .collect();
    assert_eq!(matching.len(), 1, "one {name} in {files:#}");
    matching[0]
}

/// The sorted names of a list of Files.
fn names_of(files: &Value) -> Vec<String> {
    let mut names: Vec<String> = files
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {files}"))
        .iter()
        .map(|file| text(&file["name"]).to_owned())
        .collect();
    names.sort();
    names
}
