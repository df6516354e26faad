//! The test environment every integration test runs in: a fresh data folder (SQLite catalog,
//! local blob folder, workspaces) and the real Docker engine. Dropping it removes the
//! containers it created, also when the test panicked.
//!
//! [`TestEnv`] drives the supervisor as a library; [`TestServer`] serves the HTTP API on top of
//! one, in this process, on a free local port, with two tenants' service tokens, an admin
//! token for each of them and a global admin token configured.

#![allow(dead_code)] // Each test binary uses its own part of this module.

pub mod process;
pub mod services;
pub mod web;

use std::path::{Path, PathBuf};
use std::process::Command;

use codebox::api::{self, AppState};
use codebox::catalog::{FileRecord, Owner};
use codebox::config::{Role, RuntimeKind, TokenConfig};
use codebox::ids::{ChatId, MessageId, TenantId};
use codebox::supervisor::UploadMeta;
use codebox::{Config, RunReport, RunRequest, Supervisor};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The image tests run: the small one unless `CODEBOX_TEST_IMAGE` says otherwise.
pub fn test_image() -> String {
    std::env::var("CODEBOX_TEST_IMAGE").unwrap_or_else(|_| "codebox-python:test".to_owned())
}

/// A supervisor on a throwaway data folder.
pub struct TestEnv {
    /// The supervisor under test.
    pub supervisor: Supervisor,
    /// The user most tests act as.
    pub owner: Owner,
    /// The configuration the supervisor was opened with.
    pub config: Config,
    dir: tempfile::TempDir,
}

impl TestEnv {
    /// An environment with the default configuration (and the test image).
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// An environment whose configuration `adjust` changed first.
    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.sandbox.image = test_image();
        config.sandbox.memory = bytesize::ByteSize::mib(256);
        adjust(&mut config);
        if config.runtime.kind == RuntimeKind::EnterpriseGateway {
            // Gateway kernels are processes of another user on this host: they reach the
            // workspaces through the test's folder, which the temporary folder keeps private.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("open the test folder to the gateway's kernels");
        }
        let supervisor = Supervisor::open(config.clone())
            .await
            .expect("open the supervisor (is the test image built? see .ci/run)");
        Self {
            supervisor,
            owner: Owner::new("tenant-a", "alice"),
            config,
            dir,
        }
    }

    /// An environment on the Jupyter Enterprise Gateway of [`test_gateway`].
    pub async fn gateway() -> Self {
        let (url, token) = test_gateway();
        Self::with_config(|config| {
            config.runtime.kind = RuntimeKind::EnterpriseGateway;
            config.runtime.gateway.url = Some(url);
            config.runtime.gateway.token = token;
        })
        .await
    }

    /// Opens a second supervisor on the same data folder, as a restarted process would.
    pub async fn reopen(&self) -> Supervisor {
        Supervisor::open(self.config.clone())
            .await
            .expect("reopen the supervisor")
    }

    /// A folder outside the data folder that the test may use.
    pub fn scratch(&self) -> PathBuf {
        let path = self.dir.path().join("scratch");
        std::fs::create_dir_all(&path).expect("scratch");
        path
    }

    /// Uploads `bytes` as `name` for the default owner.
    pub async fn upload(&self, name: &str, bytes: &[u8]) -> FileRecord {
        self.supervisor
            .upload(
                &self.owner,
                UploadMeta {
                    name: name.to_owned(),
                    ..UploadMeta::default()
                },
                bytes,
            )
            .await
            .expect("upload")
    }

    /// Runs `code` as message `message_id` of chat `chat-1` with these attachments.
    pub async fn run(&self, message_id: &str, code: &str, files: &[&FileRecord]) -> RunReport {
        self.supervisor
            .run(&self.owner, request(message_id, code, files), None)
            .await
            .expect("run")
    }

    /// The stored bytes of a file.
    pub async fn bytes_of(&self, file: &FileRecord) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.supervisor
            .blobs()
            .copy_to(&file.blob_key, &mut bytes)
            .await
            .expect("read blob");
        bytes
    }

    /// The host folder mounted at /mnt/data for a message.
    pub async fn data_dir_of(&self, message_id: &str) -> PathBuf {
        let message = self
            .supervisor
            .catalog()
            .messages()
            .get(&self.owner.tenant, &msg_id(message_id))
            .await
            .expect("catalog")
            .expect("message exists");
        self.supervisor
            .workspaces()
            .get(message.workspace_id.as_str())
            .expect("workspace")
            .data
    }
}

/// The Jupyter Enterprise Gateway the tests use, as its URL and token:
/// `CODEBOX_TEST_GATEWAY_URL` (and `CODEBOX_TEST_GATEWAY_TOKEN`) when set, else one started on
/// loopback by `scripts/enterprise-gateway up`. A gateway that cannot be had fails the test:
/// the suite never skips a runtime silently.
pub fn test_gateway() -> (String, Option<String>) {
    static GATEWAY: std::sync::OnceLock<(String, Option<String>)> = std::sync::OnceLock::new();
    GATEWAY
        .get_or_init(|| {
            if let Ok(url) = std::env::var("CODEBOX_TEST_GATEWAY_URL") {
                return (url, std::env::var("CODEBOX_TEST_GATEWAY_TOKEN").ok());
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/enterprise-gateway");
            let up = Command::new(&script)
                .arg("up")
                .status()
                .expect("run scripts/enterprise-gateway up");
            assert!(up.success(), "scripts/enterprise-gateway up failed");
            let env = Command::new(&script)
                .arg("env")
                .output()
                .expect("run scripts/enterprise-gateway env");
            assert!(
                env.status.success(),
                "scripts/enterprise-gateway env failed"
            );
            let text = String::from_utf8_lossy(&env.stdout).into_owned();
            let value = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .map(str::to_owned)
            };
            let url = value("CODEBOX_TEST_GATEWAY_URL=").expect("the gateway's URL");
            (url, value("CODEBOX_TEST_GATEWAY_TOKEN="))
        })
        .clone()
}

/// The message id `id`, which must be a valid one.
pub fn msg_id(id: &str) -> MessageId {
    MessageId::parse(id).expect("a valid message id")
}

/// The chat id `id`, which must be a valid one.
pub fn chat_id(id: &str) -> ChatId {
    ChatId::parse(id).expect("a valid chat id")
}

/// The tenant `id`.
pub fn tenant_id(id: &str) -> TenantId {
    TenantId::from_stored(id)
}

/// A run request in chat `chat-1`.
pub fn request(message_id: &str, code: &str, files: &[&FileRecord]) -> RunRequest {
    RunRequest {
        chat_id: chat_id("chat-1"),
        message_id: msg_id(message_id),
        code: code.to_owned(),
        language: "python".to_owned(),
        file_ids: files.iter().map(|file| file.id.clone()).collect(),
        timeout: None,
        restart: false,
        init_code: None,
        tracebacks_on_stderr: true,
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        remove_containers_of(&self.config.data_dir);
    }
}

/// Removes the container of every workspace under `data_dir`, whatever state it is in. Used on
/// drop, so it also runs when a test panicked.
pub fn remove_containers_of(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("workspaces")) else {
        return;
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|id| !id.starts_with('.'))
        .map(|id| format!("codebox-{id}"))
        .collect();
    if !names.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&names)
            .output();
    }
    unmount_under(data_dir);
}

/// Unmounts every file system mounted below `dir` (the workspaces' loop-mounted `data/`), so
/// that removing the test's folder neither empties a mounted file system nor leaks it.
pub fn unmount_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in mountinfo.lines() {
        let Some(point) = line.split(' ').nth(4) else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if Path::new(&point).starts_with(&dir) {
            let _ = Command::new("umount").args(["-l", &point]).output();
        }
    }
}

/// The service token of tenant `tenant-a`.
pub const TENANT_A_TOKEN: &str = "svc-tenant-a-0123456789abcdef";
/// The service token of tenant `tenant-b`.
pub const TENANT_B_TOKEN: &str = "svc-tenant-b-0123456789abcdef";
/// The global operators' token (tenant `*`: every tenant).
pub const ADMIN_TOKEN: &str = "admin-ops-0123456789abcdef";
/// An operator of tenant `tenant-a` alone.
pub const ADMIN_A_TOKEN: &str = "admin-tenant-a-0123456789abcdef";
/// An operator of tenant `tenant-b` alone.
pub const ADMIN_B_TOKEN: &str = "admin-tenant-b-0123456789abcdef";

/// Who a request is made as: a bearer token and the end user named in `X-User-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The bearer token.
    pub token: &'static str,
    /// The end user.
    pub user: &'static str,
}

/// The user most HTTP tests act as.
pub const ALICE: Caller = Caller {
    token: TENANT_A_TOKEN,
    user: "alice",
};
/// Another user of Alice's tenant.
pub const BOB: Caller = Caller {
    token: TENANT_A_TOKEN,
    user: "bob",
};
/// A user of the other tenant with Alice's very user id, so that only the tenant tells them
/// apart.
pub const ALICE_OF_B: Caller = Caller {
    token: TENANT_B_TOKEN,
    user: "alice",
};

/// The HTTP API served in this process on `127.0.0.1:<free port>`, built the way
/// `codebox serve` builds it (`codebox::server::prepare`) on a throwaway data folder. Dropping
/// it stops the server and removes the containers it created, also when the test panicked.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`, also the base of signed download links.
    pub base_url: String,
    /// The state the server runs with (its supervisor, signer and limiter).
    pub state: AppState,
    /// The configuration the server was prepared with.
    pub config: Config,
    /// A client without a default timeout; downloads of any size stream through it.
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
    /// Holds the data folder; it is deleted when the server is dropped.
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with the default configuration (and the test image).
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// A server whose configuration `adjust` changed first.
    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Bound before the configuration is made, so that signed links name the real port.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let address = listener.local_addr().expect("bound address");
        let base_url = format!("http://{address}");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.sandbox.image = test_image();
        config.sandbox.memory = bytesize::ByteSize::mib(256);
        config.server.listen = address;
        config.server.public_url = Some(base_url.clone());
        config.server.tokens = vec![
            token(TENANT_A_TOKEN, "tenant-a", Role::Service),
            token(TENANT_B_TOKEN, "tenant-b", Role::Service),
            token(ADMIN_TOKEN, "*", Role::Admin),
            token(ADMIN_A_TOKEN, "tenant-a", Role::Admin),
            token(ADMIN_B_TOKEN, "tenant-b", Role::Admin),
        ];
        adjust(&mut config);
        let state = codebox::server::prepare(config.clone())
            .await
            .expect("prepare the server (is the test image built? see .ci/run)");
        let (shutdown, stop) = oneshot::channel::<()>();
        let served = tokio::spawn(api::serve(listener, state.clone(), async move {
            // A dropped sender stops the server too.
            let _ = stop.await;
        }));
        Self {
            base_url,
            state,
            config,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            served: Some(served),
            _dir: dir,
        }
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The data folder: `catalog.db`, `blobs/` and `workspaces/`.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// A request as `caller`: its bearer token and `X-User-Id`.
    pub fn request(
        &self,
        caller: Caller,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(caller.token)
            .header("x-user-id", caller.user)
    }

    /// A `GET` as `caller`.
    pub fn get(&self, caller: Caller, path: &str) -> reqwest::RequestBuilder {
        self.request(caller, reqwest::Method::GET, path)
    }

    /// Uploads `bytes` as `name` for `caller`, optionally tied to a chat and message, and
    /// returns the response whatever its status.
    pub async fn upload(
        &self,
        caller: Caller,
        name: &str,
        bytes: &[u8],
        chat_message: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned());
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if let Some((chat_id, message_id)) = chat_message {
            form = form
                .text("chat_id", chat_id.to_owned())
                .text("message_id", message_id.to_owned());
        }
        self.request(caller, reqwest::Method::POST, "/v1/files")
            .multipart(form)
            .send()
            .await
            .expect("send the upload")
    }

    /// Uploads like [`TestServer::upload`] and returns the File, which must have been created.
    pub async fn upload_ok(
        &self,
        caller: Caller,
        name: &str,
        bytes: &[u8],
        chat_message: Option<(&str, &str)>,
    ) -> serde_json::Value {
        let response = self.upload(caller, name, bytes, chat_message).await;
        json_of(response, 201).await
    }

    /// `POST /v1/runs` with this JSON body as `caller`; the response whatever its status.
    pub async fn run(&self, caller: Caller, body: &serde_json::Value) -> reqwest::Response {
        self.request(caller, reqwest::Method::POST, "/v1/runs")
            .json(body)
            .send()
            .await
            .expect("send the run")
    }

    /// Runs `code` as `caller` in message `message_id` of chat `chat_id` with these
    /// attachments; the Run, which must have succeeded.
    pub async fn run_ok(
        &self,
        caller: Caller,
        (chat_id, message_id): (&str, &str),
        code: &str,
        file_ids: &[&str],
    ) -> serde_json::Value {
        let body = serde_json::json!({
            "chat_id": chat_id,
            "message_id": message_id,
            "code": code,
            "language": "python",
            "file_ids": file_ids,
        });
        let run = json_of(self.run(caller, &body).await, 200).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        run
    }

    /// The workspace of message `message_id` of tenant `tenant`, from the catalog.
    pub async fn workspace_id(&self, tenant: &str, message_id: &str) -> String {
        self.state
            .supervisor
            .catalog()
            .messages()
            .get(&tenant_id(tenant), &msg_id(message_id))
            .await
            .expect("catalog")
            .expect("the message is bound")
            .workspace_id
            .into()
    }

    /// The folder of workspace `workspace_id` (it holds `data/` and `inputs/`).
    pub fn workspace_dir(&self, workspace_id: &str) -> PathBuf {
        self.config.workspaces_dir().join(workspace_id)
    }

    /// Stops accepting requests, lets the requests in flight finish, and waits until the server
    /// has stopped (as on SIGTERM).
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.served.take() {
            Some(served) => served.await.expect("the server task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(served) = self.served.take() {
            // Whatever still runs stops with the test's runtime; the containers go now.
            served.abort();
        }
        remove_containers_of(&self.config.data_dir);
    }
}

/// A token entry of the configuration.
pub fn token(token: &str, tenant: &str, role: Role) -> TokenConfig {
    TokenConfig {
        token: Some(token.to_owned()),
        token_sha256: None,
        tenant: tenant.to_owned(),
        role,
    }
}

/// The JSON body of `response`, which must have `status`.
pub async fn json_of(response: reqwest::Response, status: u16) -> serde_json::Value {
    let actual = response.status().as_u16();
    let url = response.url().clone();
    let text = response.text().await.expect("read the body");
    assert_eq!(actual, status, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{url}: not JSON ({error}): {text}"))
}

/// Checks that `response` is the API's error: `status`, and the body
/// `{"error": {"code": code, "message": "..."}}` and nothing else. Returns the message.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let method_url = response.url().clone();
    let body = json_of(response, status).await;
    let object = body.as_object().expect("an object");
    assert_eq!(object.len(), 1, "{method_url}: {body}");
    let error = body["error"].as_object().expect("an error object");
    assert_eq!(error.len(), 2, "{method_url}: {body}");
    assert_eq!(error["code"], code, "{method_url}: {body}");
    let message = error["message"].as_str().expect("a message");
    assert!(!message.is_empty(), "{method_url}: {body}");
    message.to_owned()
}
