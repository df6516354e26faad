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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_one_message_sent_alternately_land_in_one_workspace() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        // Every answer names the node that served it, whatever it is.
        let (served, _) = a.get_json("/healthz").await;
        assert_eq!(served, a.instance);
        let (served, _) = b.get_json("/healthz").await;
        assert_eq!(served, b.instance);

        let message = "m-alternate";
        let (node, first) = a
            .run(
                message,
                "import uuid\n\
                 open('/mnt/data/a.txt', 'w').write('written through A')\n\
                 x = 41\n\
                 token = uuid.uuid4().hex\n\
                 print(token)",
                &[],
            )
            .await;
        assert_eq!(node, a.instance, "the first run's node owns the message");
        let token = text(&first["stdout"]).trim().to_owned();
        assert_eq!(token.len(), 32, "{first:#}");

        // Through B: forwarded to A, into the same interpreter and the same /mnt/data.
        let (node, second) = b
            .run(
                message,
                "print(open('/mnt/data/a.txt').read())\n\
                 print(x + 1)\n\
                 print(token)\n\
                 open('/mnt/data/b.txt', 'w').write('written through B')\n\
                 x += 1",
                &[],
            )
            .await;
        assert_eq!(node, a.instance, "the owner did the work: {second:#}");
        assert_eq!(
            second["stdout"],
            format!("written through A\n42\n{token}\n"),
            "{second:#}"
        );

        // Through A again: what the run through B did is there.
        let (node, third) = a
            .run(
                message,
                "print(open('/mnt/data/b.txt').read())\nprint(x)\nprint(token)",
                &[],
            )
            .await;
        assert_eq!(node, a.instance, "{third:#}");
        assert_eq!(
            third["stdout"],
            format!("written through B\n42\n{token}\n"),
            "{third:#}"
        );

        // One interpreter throughout, never a rebuilt workspace, three distinct runs.
        let runs = [&first, &second, &third];
        for run in runs {
            assert_eq!(run["workspace_restored"], false, "{run:#}");
        }
        for run in &runs[1..] {
            assert_eq!(run["kernel"]["restarted"], false, "{run:#}");
        }
        let counts: Vec<u64> = runs
            .iter()
            .map(|run| {
                run["kernel"]["execution_count"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("an execution count: {run:#}"))
            })
            .collect();
        assert!(
            counts.windows(2).all(|pair| pair[0] < pair[1]),
            "one interpreter counts on: {counts:?}"
        );
        let mut ids: Vec<&str> = runs.iter().map(|run| text(&run["id"])).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "three runs: {ids:?}");

        // Each run's record reads back through either node.
        for node in [a, b] {
            for run in runs {
                let (_, record) = node
                    .get_json(&format!("/v1/runs/{}", text(&run["id"])))
                    .await;
                assert_eq!(record["status"], "succeeded", "{record:#}");
                assert_eq!(record["stdout"], run["stdout"], "{record:#}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_registered_through_one_node_downloads_through_the_other() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        let message = "m-report";
        let report: &[u8] = b"region,units\nnorth,3\nsouth,5\n";
        let (node, run) = a
            .run(
                message,
                "open('/mnt/data/report.csv', 'w').write('region,units\\nnorth,3\\nsouth,5\\n')",
                &[],
            )
            .await;
        assert_eq!(node, a.instance);
        let registered = file_named(&run["files"], "report.csv");
        let id = text(&registered["id"]).to_owned();
        assert_eq!(registered["source"], "code_execution", "{run:#}");
        assert_eq!(registered["path"], "/mnt/data/report.csv", "{run:#}");
        let link_of_a = text(&registered["download_url"]).to_owned();
        assert!(link_of_a.starts_with(&a.url), "{link_of_a}");

        // B lists it, from the shared catalog; B serves these itself.
        let (node, listing) = b.get_json(&format!("/v1/messages/{message}/files")).await;
        assert_eq!(node, b.instance, "a listing needs no owner");
        assert_eq!(names_of(&listing["files"]), ["report.csv"], "{listing:#}");
        let listed = file_named(&listing["files"], "report.csv");
        assert_eq!(listed["id"], id.as_str());
        assert_eq!(listed["size"], report.len(), "{listed:#}");
        assert_eq!(
            listed["sha256"],
            common::web::sha256_hex(report),
            "{listed:#}"
        );
        let (node, chat) = b.get_json(&format!("/v1/chats/{CHAT}/files")).await;
        assert_eq!(node, b.instance);
        assert_eq!(chat["total_files"], 1, "{chat:#}");
        let (node, metadata) = b.get_json(&format!("/v1/files/{id}")).await;
        assert_eq!(node, b.instance);
        assert_eq!(metadata["name"], "report.csv", "{metadata:#}");

        // Downloads through B: with the token, by B's signed link, and by A's link sent to B
        // (the nodes share the signing secret), all from the shared bucket.
        let (node, bytes) = b.get_bytes(&format!("/v1/files/{id}/content")).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, report);
        let link_of_b = text(&listed["download_url"]).to_owned();
        assert!(
            link_of_b.starts_with(&b.url),
            "B signs links to itself: {link_of_b}"
        );
        let (node, bytes) = b.get_link(&link_of_b).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, report);
        let a_link_to_b = format!("{}{}", b.url, &link_of_a[a.url.len()..]);
        let (node, bytes) = b.get_link(&a_link_to_b).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, report);

        // A model's reference to the file renders through B to a link that downloads it.
        let rendered = b
            .send(
                "a render",
                b.request(Method::POST, &format!("/v1/messages/{message}/render"))
                    .json(&json!({"text": "See sandbox:/mnt/data/report.csv for the numbers."})),
            )
            .await;
        let (node, rendered) = json_answer(rendered, 200).await;
        assert_eq!(node, b.instance);
        let (masked, links) = mask_links(text(&rendered["text"]), &b.url);
        assert_eq!(
            masked,
            format!("See <link:{id}> for the numbers."),
            "{rendered:#}"
        );
        assert_eq!(links.len(), 1);
        let (_, bytes) = b.get_link(&links[0]).await;
        assert_eq!(bytes, report);

        // Even an error names the node that answered it.
        let missing = b
            .send(
                "a missing file",
                b.request(Method::GET, "/v1/files/file_0000000000000000000000000000"),
            )
            .await;
        assert_eq!(node_of(&missing), b.instance);
        assert!(missing.status().is_client_error(), "{}", missing.status());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_mid_run_leaves_the_other_node_serving_and_restores_the_workspace() {
    with_database(|catalog| async move {
        let mut cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let message = "m-killed";
        let out: Vec<u8> = CSV.to_ascii_uppercase();

        // The message is A's: its attachment uploaded and an output registered through A.
        let (node, upload) = cluster.a.upload("sales.csv", CSV, Some(message)).await;
        assert_eq!(node, cluster.a.instance);
        assert_eq!(upload["path"], "/mnt/data/sales.csv", "{upload:#}");
        let upload_id = text(&upload["id"]).to_owned();
        let (node, written) = cluster
            .a
            .run(
                message,
                "data = open('/mnt/data/sales.csv').read()\n\
                 open('/mnt/data/out.csv', 'w').write(data.upper())\n\
                 x = 1",
                &[],
            )
            .await;
        assert_eq!(node, cluster.a.instance);
        let out_id = text(&file_named(&written["files"], "out.csv")["id"]).to_owned();

        // A long run on A, streamed so that the test knows its code has started.
        let response = cluster
            .a
            .send(
                "a long run",
                cluster
                    .a
                    .run_request(
                        message,
                        "print('sleeping', flush=True)\nimport time\ntime.sleep(60)",
                        &[],
                    )
                    .header("Accept", "text/event-stream"),
            )
            .await;
        let response = ok_stream(response).await;
        let mut stream = response.bytes_stream();
        let mut seen = String::new();
        within("the long run to start", async {
            while !seen.contains("sleeping") {
                let chunk = stream
                    .next()
                    .await
                    .expect("more events")
                    .expect("a chunk");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await;

        cluster.a.kill().await;
        // The killed run's own call ends without an answer.
        let rest = within("the killed run's stream to end", async {
            let mut rest = String::new();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => rest.push_str(&String::from_utf8_lossy(&chunk)),
                    Err(_) => break,
                }
            }
            rest
        })
        .await;
        assert!(
            !format!("{seen}{rest}").contains("event: done"),
            "a killed node answered its run: {seen}{rest}"
        );

        let b = &cluster.b;
        // At once, before A's heartbeat has lapsed, B lists and downloads the message's files.
        let (node, listing) = b
            .get_json(&format!("/v1/messages/{message}/files?source=all"))
            .await;
        assert_eq!(node, b.instance);
        assert_eq!(
            names_of(&listing["files"]),
            ["out.csv", "sales.csv"],
            "{listing:#}"
        );
        let (node, bytes) = b.get_bytes(&format!("/v1/files/{out_id}/content")).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, out);
        let (_, bytes) = b.get_bytes(&format!("/v1/files/{upload_id}/content")).await;
        assert_eq!(bytes, CSV);
        let link = text(&file_named(&listing["files"], "out.csv")["download_url"]).to_owned();
        let (node, bytes) = b.get_link(&link).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, out);

        // Once A's heartbeat is older than node_timeout, B takes the message over and rebuilds
        // its workspace: the attachment and the registered output, not the variables.
        tokio::time::sleep(Duration::from_secs(NODE_TIMEOUT_SECS + 2)).await;
        let (node, restored) = b
            .run(
                message,
                "print(open('/mnt/data/sales.csv').read(), end='')\n\
                 print('--')\n\
                 print(open('/mnt/data/out.csv').read(), end='')\n\
                 print('--')\n\
                 print('x' in globals())",
                &[],
            )
            .await;
        assert_eq!(node, b.instance, "B took the message over: {restored:#}");
        assert_eq!(restored["workspace_restored"], true, "{restored:#}");
        assert_eq!(restored["kernel"]["restarted"], true, "{restored:#}");
        assert_eq!(
            restored["stdout"],
            format!(
                "{}--\n{}--\nFalse\n",
                String::from_utf8_lossy(CSV),
                String::from_utf8_lossy(&out)
            ),
            "{restored:#}"
        );
        assert_eq!(
            restored["files"],
            json!([]),
            "files put back are not registered again: {restored:#}"
        );
        // The run A was killed in is no longer `running`: the takeover failed it.
        let runs = runs_of(&catalog, message).await;
        assert_eq!(
            runs.iter().filter(|(status, _)| status == "running").count(),
            0,
            "{runs:?}"
        );
        let interrupted: Vec<_> = runs
            .iter()
            .filter(|(status, _)| status == "failed")
            .collect();
        assert_eq!(interrupted.len(), 1, "{runs:?}");
        assert!(
            interrupted[0].1.as_deref().is_some_and(|reason| reason.contains("stopped")),
            "{runs:?}"
        );
        let (_, after) = b
            .get_json(&format!("/v1/messages/{message}/files?source=all"))
            .await;
        assert_eq!(
            names_of(&after["files"]),
            ["out.csv", "sales.csv"],
            "{after:#}"
        );

        // The message is B's now: the next run is at home, in the same interpreter.
        let (node, again) = b
            .run(message, "print(open('/mnt/data/out.csv').read() == open('/mnt/data/sales.csv').read().upper())", &[])
            .await;
        assert_eq!(node, b.instance);
        assert_eq!(again["stdout"], "True\n", "{again:#}");
        assert_eq!(again["workspace_restored"], false, "{again:#}");
        assert_eq!(again["kernel"]["restarted"], false, "{again:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_message_over_at_once() {
    with_database(|catalog| async move {
        // A heartbeat that never lapses within the test: only the stop can hand over.
        let mut cluster = Cluster::start(&catalog, "10m").await;
        let message = "m-handover";
        // An upload of the user's own, attached by the run (file_ids).
        let (_, upload) = cluster.a.upload("sales.csv", CSV, None).await;
        let upload_id = text(&upload["id"]).to_owned();
        let (node, written) = cluster
            .a
            .run(
                message,
                "open('/mnt/data/totals.csv', 'w').write('units\\n8\\n')\nx = 1",
                &[upload_id.as_str()],
            )
            .await;
        assert_eq!(node, cluster.a.instance);
        file_named(&written["files"], "totals.csv");

        cluster.a.stop().await;

        let b = &cluster.b;
        let (node, restored) = b
            .run(
                message,
                "print(open('/mnt/data/sales.csv').read(), end='')\n\
                 print(open('/mnt/data/totals.csv').read(), end='')\n\
                 print('x' in globals())",
                &[],
            )
            .await;
        assert_eq!(node, b.instance, "B took the message over: {restored:#}");
        assert_eq!(restored["workspace_restored"], true, "{restored:#}");
        assert_eq!(restored["kernel"]["restarted"], true, "{restored:#}");
        assert_eq!(
            restored["stdout"],
            format!("{}units\n8\nFalse\n", String::from_utf8_lossy(CSV)),
            "{restored:#}"
        );
        assert_eq!(restored["files"], json!([]), "{restored:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_and_tool_calls_are_forwarded() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        let message = "m-forwarded";
        let (node, _) = a
            .run(
                message,
                "open('/mnt/data/a.txt', 'w').write('kept')\nx = 41",
                &[],
            )
            .await;
        assert_eq!(node, a.instance);

        // A streamed run through B: the owner's events, in order, the Run last.
        let response = b
            .send(
                "a streamed run",
                b.run_request(
                    message,
                    "print('one', flush=True)\n\
                     print('two', flush=True)\n\
                     open('/mnt/data/stream.csv', 'w').write('n\\n1\\n')\n\
                     print(x)",
                    &[],
                )
                .header("Accept", "text/event-stream"),
            )
            .await;
        let response = ok_stream(response).await;
        assert_eq!(node_of(&response), a.instance, "the owner streamed it");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let body = within("the streamed run", response.text())
            .await
            .expect("the event stream");
        let events = parse_sse(&body);
        let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"done"), "{body}");
        assert_eq!(names.iter().filter(|name| **name == "done").count(), 1, "{body}");
        let first_file = names.iter().position(|name| *name == "file");
        let last_stdout = names.iter().rposition(|name| *name == "stdout");
        assert!(
            matches!((last_stdout, first_file), (Some(out), Some(file)) if out < file),
            "output streams before the files are registered: {names:?}"
        );
        let streamed: String = events
            .iter()
            .filter(|event| event.name == "stdout")
            .map(|event| text(&event.data["text"]))
            .collect();
        assert_eq!(streamed, "one\ntwo\n41\n", "{body}");
        let files: Vec<&Value> = events
            .iter()
            .filter(|event| event.name == "file")
            .map(|event| &event.data)
            .collect();
        assert_eq!(files.len(), 1, "{body}");
        assert_eq!(files[0]["name"], "stream.csv", "{body}");
        let done = &events.last().expect("events").data;
        assert_eq!(done["status"], "succeeded", "{done:#}");
        assert_eq!(done["stdout"], "one\ntwo\n41\n", "{done:#}");
        assert_eq!(done["workspace_restored"], false, "{done:#}");
        assert_eq!(done["kernel"]["restarted"], false, "{done:#}");
        assert_eq!(names_of(&done["files"]), ["stream.csv"], "{done:#}");
        // The streamed file downloads through either node.
        let stream_id = text(&files[0]["id"]).to_owned();
        for node in [a, b] {
            let (_, bytes) = node.get_bytes(&format!("/v1/files/{stream_id}/content")).await;
            assert_eq!(bytes, b"n\n1\n");
        }

        // A model's run_code through B runs in A's interpreter.
        let call = b
            .send(
                "a tool call",
                b.request(Method::POST, "/v1/tools/run_code").json(&json!({
                    "chat_id": CHAT,
                    "message_id": message,
                    "arguments": {"code": "x += 1\nprint(f'x is {x}')\nprint(open('/mnt/data/a.txt').read())"},
                })),
            )
            .await;
        let (node, answer) = json_answer(call, 200).await;
        assert_eq!(node, a.instance, "the owner ran the tool");
        let content = text(&answer["content"]);
        assert!(content.starts_with("status: succeeded"), "{content}");
        assert!(content.contains("x is 42"), "{content}");
        assert!(content.contains("kept"), "{content}");

        // Deleting the workspace through B removes it on A: the next run finds neither the
        // file nor the variables.
        let deleted = b
            .send(
                "a workspace deletion",
                b.request(Method::DELETE, &format!("/v1/messages/{message}/workspace")),
            )
            .await;
        let (node, body) = bytes_answer(deleted, 204).await;
        assert_eq!(node, a.instance, "the owner deleted it");
        assert_eq!(body, b"");
        let (_, fresh) = b
            .run(
                message,
                "import os\nprint(os.path.exists('/mnt/data/a.txt'))\nprint('x' in globals())",
                &[],
            )
            .await;
        assert_eq!(fresh["stdout"], "False\nFalse\n", "{fresh:#}");
    })
    .await;
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends an `execute_request` over a kernel's channels and gathers every message about it
/// until its `status: idle`.
async fn execute(socket: &mut Socket, code: &str) -> Vec<Value> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let msg_id = uuid::Uuid::new_v4().to_string();
    let request = json!({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": USER,
                   "session": "s1", "date": "", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": false, "store_history": true,
                    "user_expressions": {}, "allow_stdin": false, "stop_on_error": true},
    });
    within(
        "sending an execute_request",
        socket.send(Message::Text(request.to_string().into())),
    )
    .await
    .expect("send");
    let mut messages = Vec::new();
    loop {
        let next = within("a message of the kernel", socket.next())
            .await
            .expect("the socket is open")
            .expect("a message");
        let Message::Text(text) = next else { continue };
        let message: Value = serde_json::from_str(&text).expect("JSON");
        if message["parent_header"]["msg_id"] != msg_id.as_str() {
            continue;
        }
        let is_status =
            message["msg_type"] == "status" || message["header"]["msg_type"] == "status";
        let idle = is_status && message["content"]["execution_state"] == "idle";
        messages.push(message);
        if idle {
            return messages;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jupyter_kernel_started_through_the_other_node_is_the_owners_interpreter() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        let message = "m-jupyter";
        let (node, _) = a.run(message, "x = 41", &[]).await;
        assert_eq!(node, a.instance);

        // The kernel of A's message, started through B, is A's.
        let started = b
            .send(
                "a kernel start",
                b.client
                    .post(format!("{}/jupyter/api/kernels", b.url))
                    .header("authorization", format!("token {TOKEN}"))
                    .json(&json!({"name": "python3", "env": {
                        "KERNEL_USERNAME": USER,
                        "KERNEL_CHAT_ID": CHAT,
                        "KERNEL_MESSAGE_ID": message,
                    }})),
            )
            .await;
        let (node, kernel) = json_answer(started, 201).await;
        assert_eq!(node, a.instance, "the owner started the kernel");
        let kernel_id = text(&kernel["id"]).to_owned();
        let shown = b
            .send(
                "a kernel's model",
                b.client.get(format!(
                    "{}/jupyter/api/kernels/{kernel_id}?token={TOKEN}",
                    b.url
                )),
            )
            .await;
        let (node, shown) = json_answer(shown, 200).await;
        assert_eq!(node, a.instance);
        assert_eq!(shown["id"], kernel_id.as_str());

        // Its channels, opened through B, reach the message's interpreter on A.
        let url = format!(
            "{}/jupyter/api/kernels/{kernel_id}/channels?token={TOKEN}",
            b.url.replace("http://", "ws://")
        );
        let (mut socket, upgrade) = within("the channels", tokio_tungstenite::connect_async(url))
            .await
            .expect("open the channels through B");
        let upgraded_by = upgrade
            .headers()
            .get("x-codebox-node")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let messages = execute(&mut socket, "y = x + 1\nprint(y)").await;
        let stdout: String = messages
            .iter()
            .filter(|message| {
                message["header"]["msg_type"] == "stream" && message["content"]["name"] == "stdout"
            })
            .filter_map(|message| message["content"]["text"].as_str())
            .collect();
        assert_eq!(stdout, "42\n", "{messages:#?}");
        let reply: Vec<&Value> = messages
            .iter()
            .filter(|message| message["header"]["msg_type"] == "execute_reply")
            .collect();
        assert_eq!(reply.len(), 1, "{messages:#?}");
        assert_eq!(reply[0]["content"]["status"], "ok", "{messages:#?}");
        drop(socket);

        // What the kernel did is the message's: a run through A sees it.
        let (node, run) = a.run(message, "print(y)", &[]).await;
        assert_eq!(node, a.instance);
        assert_eq!(run["stdout"], "42\n", "{run:#}");

        // Shut down through B, the kernel is gone on every node.
        let deleted = b
            .send(
                "a kernel shutdown",
                b.client
                    .delete(format!("{}/jupyter/api/kernels/{kernel_id}", b.url))
                    .header("authorization", format!("token {TOKEN}")),
            )
            .await;
        let (node, _) = bytes_answer(deleted, 204).await;
        assert_eq!(node, a.instance);
        for node in [a, b] {
            let gone = node
                .send(
                    "a kernel's model",
                    node.client.get(format!(
                        "{}/jupyter/api/kernels/{kernel_id}?token={TOKEN}",
                        node.url
                    )),
                )
                .await;
            assert_eq!(gone.status(), 404, "through node {}", node.name);
        }
        // The relayed WebSocket's handshake names the owner, as every forwarded answer does
        // (checked last, so that a failure here says the relay itself works).
        assert_eq!(
            upgraded_by.as_deref(),
            Some(a.instance.as_str()),
            "the 101 of channels relayed through B names the holder A ({}), not B ({})",
            a.instance,
            b.instance
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_whose_heartbeat_is_still_fresh_keeps_its_message() {
    with_database(|catalog| async move {
        // A heartbeat that does not lapse within the test: the killed owner is still alive as
        // far as the catalog knows, and B must not take its message.
        let mut cluster = Cluster::start(&catalog, "10m").await;
        let message = "m-fresh";
        let (node, written) = cluster
            .a
            .run(
                message,
                "open('/mnt/data/kept.csv', 'w').write('a\\n1\\n')",
                &[],
            )
            .await;
        assert_eq!(node, cluster.a.instance);
        let kept_id = text(&file_named(&written["files"], "kept.csv")["id"]).to_owned();
        cluster.a.kill().await;

        let b = &cluster.b;
        // What would touch the workspace is refused, to be retried: a run, a tool call, a
        // workspace deletion.
        let refusals = [
            b.run_request(message, "print('two holders')", &[]),
            b.request(Method::POST, "/v1/tools/run_code").json(&json!({
                "chat_id": CHAT,
                "message_id": message,
                "arguments": {"code": "print('two holders')"},
            })),
            b.request(Method::DELETE, &format!("/v1/messages/{message}/workspace")),
        ];
        for request in refusals {
            let refused = b.send("a request for A's message", request).await;
            let url = refused.url().clone();
            assert_eq!(node_of(&refused), b.instance, "{url}");
            assert!(
                refused.headers().contains_key("retry-after"),
                "{url}: {:?}",
                refused.headers()
            );
            common::assert_error(refused, 503, "busy").await;
        }
        // What needs no holder is served.
        let (node, listing) = b.get_json(&format!("/v1/messages/{message}/files")).await;
        assert_eq!(node, b.instance);
        assert_eq!(names_of(&listing["files"]), ["kept.csv"], "{listing:#}");
        let (_, bytes) = b.get_bytes(&format!("/v1/files/{kept_id}/content")).await;
        assert_eq!(bytes, b"a\n1\n");

        // The message is still A's, and nothing ran for it on B.
        let runs = runs_of(&catalog, message).await;
        assert_eq!(runs, [("succeeded".to_owned(), None)], "{runs:?}");
        let holder: Option<String> = {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&catalog)
                .await
                .expect("connect to the catalog");
            let holder = sqlx::query_scalar("SELECT node FROM messages WHERE message_id = $1")
                .bind(message)
                .fetch_one(&mut connection)
                .await
                .expect("read the catalog's message");
            connection.close().await.ok();
            holder
        };
        assert_eq!(holder.as_deref(), Some(cluster.a.instance.as_str()));
    })
    .await;
}
