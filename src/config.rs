//! One `Config` for the whole service, read in layers: built-in defaults, then a TOML file,
//! then `CODEBOX_*` environment variables, then command-line flags (the caller merges those).
//!
//! Nested keys are reached from the environment with a double underscore:
//! `CODEBOX_SANDBOX__IMAGE=codebox-python:test` sets `sandbox.image`. The defaults work on a
//! fresh machine: everything lives under `./codebox-data` (a SQLite catalog file and a local
//! blob folder) and runs on the local Docker engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The prefix of every environment variable that configures codebox.
pub const ENV_PREFIX: &str = "CODEBOX_";

/// Everything an operator can tune.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The folder that holds workspaces and, by default, the catalog and the blobs.
    pub data_dir: PathBuf,
    /// Where file metadata, runs and messages are recorded.
    pub catalog: CatalogConfig,
    /// Where the bytes of registered files are kept.
    pub blobs: BlobsConfig,
    /// How sandboxes are created and what they may use.
    pub sandbox: SandboxConfig,
    /// Caps on what one run may take and produce.
    pub limits: Limits,
    /// Which outputs are registered.
    pub outputs: OutputsConfig,
    /// The HTTP server.
    pub server: ServerConfig,
    /// How long containers, workspaces and files are kept.
    pub retention: RetentionConfig,
    /// Which back end runs the code.
    pub runtime: RuntimeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./codebox-data"),
            catalog: CatalogConfig::default(),
            blobs: BlobsConfig::default(),
            sandbox: SandboxConfig::default(),
            limits: Limits::default(),
            outputs: OutputsConfig::default(),
            server: ServerConfig::default(),
            retention: RetentionConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// Which back end runs the code, and how to reach it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The back end.
    pub kind: RuntimeKind,
    /// The Jupyter Enterprise Gateway, when `kind` is `enterprise-gateway`.
    pub gateway: GatewayConfig,
}

/// The back ends codebox can run code on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// One hardened container per workspace on the local Docker engine.
    #[default]
    Docker,
    /// One kernel per workspace on a Jupyter Enterprise Gateway, which isolates only as far
    /// as its process proxy does (not at all with local kernels).
    #[serde(alias = "enterprise_gateway")]
    EnterpriseGateway,
}

/// A Jupyter Enterprise Gateway.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Its base URL, `http://host:port`.
    pub url: Option<String>,
    /// Its auth token, sent as `Authorization: token <token>`.
    pub token: Option<String>,
    /// The kernelspec every kernel starts from.
    pub kernel: String,
    /// Where the kernels see `<data_dir>/workspaces`; by default the same path. It must hold
    /// the same files (a shared volume).
    pub workspaces_path: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            kernel: "python3".to_owned(),
            workspaces_path: None,
        }
    }
}

/// Written by hand so that the token never reaches a log line or an error message.
impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            token,
            kernel,
            workspaces_path,
        } = self;
        f.debug_struct("GatewayConfig")
            .field("url", url)
            .field("token", &token.as_ref().map(|_| "<redacted>"))
            .field("kernel", kernel)
            .field("workspaces_path", workspaces_path)
            .finish()
    }
}

/// The catalog database.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// A sqlx database URL. Unset means a SQLite file `catalog.db` inside `data_dir`.
    pub url: Option<String>,
}

/// The blob store behind registered files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BlobsConfig {
    /// A folder on this machine; unset `path` means `blobs/` inside `data_dir`.
    Local {
        /// The folder that holds the blobs.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// Process memory: for tests only, everything is lost at exit.
    Memory,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self::Local { path: None }
    }
}

/// How sandbox containers are made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The image every sandbox runs (see `codebox image build`).
    pub image: String,
    /// The non-root `uid:gid` code runs as. It owns each workspace's `data/` folder.
    pub user: String,
    /// An OCI runtime other than Docker's default, e.g. `runsc` for gVisor.
    pub runtime: Option<String>,
    /// Memory limit of one sandbox; swap is not allowed on top of it.
    pub memory: ByteSize,
    /// CPU limit of one sandbox, in cores.
    pub cpus: f64,
    /// Most processes and threads one sandbox may have at once.
    pub pids_limit: i64,
    /// Most open files per process.
    pub nofile: i64,
    /// Size of the writable `/tmp` in the otherwise read-only root filesystem.
    pub tmpfs_size: ByteSize,
    /// How `/mnt/data` is capped while code runs (see [`DiskLimit`]).
    pub disk_limit: DiskLimit,
    /// The most bytes one workspace's `/mnt/data` may hold.
    pub disk_size: ByteSize,
    /// The most files and folders one workspace's `/mnt/data` may hold (with a
    /// loop-mounted file system, its inode count).
    pub disk_files: u64,
    /// Modules a warm-pool sandbox's interpreter imports before it joins the pool, so that the
    /// first cell of a new message does not pay for them; those the image lacks are skipped.
    /// A sandbox started while a run waits imports nothing ahead.
    pub preload: Vec<String>,
    /// Python run first in every fresh interpreter (a chat backend's kernel set-up: plot
    /// styles, helper functions). A run may add its own (`init_code`), which runs after.
    pub init_code: Option<String>,
    /// Sandboxes kept started and ready for new messages, their interpreters warm: a new
    /// message's first run takes one instead of starting a container. `0` turns the pool off.
    /// Only `codebox serve` keeps a pool.
    pub warm_pool: usize,
}

/// How a workspace's `/mnt/data` is held to `sandbox.disk_size` while code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskLimit {
    /// `loop` when codebox runs as root and `mkfs.ext4` is installed, else `watchdog`.
    #[default]
    Auto,
    /// Each workspace's `data/` is an ext4 file system of its own in a sparse image file,
    /// loop-mounted: a write past the size fails in the kernel, so nothing overshoots.
    Loop,
    /// `data/` is a plain folder whose size is measured while code runs; a run past the size
    /// is killed at the next measurement, so it can overshoot by what it writes in between.
    Watchdog,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: "codebox-python:latest".to_owned(),
            user: "1000:1000".to_owned(),
            runtime: None,
            memory: ByteSize::mib(1024),
            cpus: 1.0,
            pids_limit: 256,
            nofile: 1024,
            tmpfs_size: ByteSize::mib(256),
            disk_limit: DiskLimit::Auto,
            disk_size: ByteSize::gib(1),
            disk_files: 100_000,
            preload: ["numpy", "pandas", "openpyxl", "matplotlib.pyplot"]
                .map(String::from)
                .to_vec(),
            init_code: None,
            // As many as runs may execute at once by default (`server.max_runs_in_flight`).
            warm_pool: 4,
        }
    }
}

/// Caps on one run. Every cap that cuts something off is reported, never applied silently.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time a run gets when the request does not say.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The longest wall-clock time a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Largest accepted code.
    pub max_code_bytes: ByteSize,
    /// Bytes of stdout, and separately of stderr, kept per run.
    pub max_output_bytes: ByteSize,
    /// Most files registered by one run.
    pub max_files_per_run: usize,
    /// Largest file registered.
    pub max_file_bytes: ByteSize,
    /// Deepest folder level looked at below `/mnt/data` (1 is `/mnt/data/x`).
    pub max_depth: usize,
    /// Longest relative path registered, in bytes.
    pub max_path_bytes: usize,
    /// Most entries a workspace snapshot walks; past it the rest of the tree is not looked at.
    pub max_snapshot_entries: usize,
    /// Largest upload or attachment.
    pub max_upload_bytes: ByteSize,
    /// Most rich outputs (results, figures, errors) kept per run.
    pub max_outputs: usize,
    /// Largest figure kept, as PNG.
    pub max_figure_bytes: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_code_bytes: ByteSize::kib(512),
            max_output_bytes: ByteSize::mib(1),
            max_files_per_run: 50,
            max_file_bytes: ByteSize::mib(200),
            max_depth: 8,
            max_path_bytes: 512,
            max_snapshot_entries: 20_000,
            max_upload_bytes: ByteSize::mib(512),
            max_outputs: 50,
            max_figure_bytes: ByteSize::mib(5),
        }
    }
}

/// Which files a run writes are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputsConfig {
    /// File extensions (without the dot, case-insensitive) that are registered.
    pub tracked_extensions: Vec<String>,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            tracked_extensions: ["xlsx", "xls", "csv", "pdf"].map(String::from).to_vec(),
        }
    }
}

impl OutputsConfig {
    /// Whether a file with this name is registered when a run creates or changes it. The
    /// check reads the name's bytes, so that a name that is not valid UTF-8 but ends in a
    /// tracked extension counts as an output (to be reported, since it cannot be registered).
    pub fn is_tracked(&self, name: &std::ffi::OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let name = name.as_bytes();
        let Some(dot) = name.iter().rposition(|&byte| byte == b'.') else {
            return false;
        };
        let extension = &name[dot + 1..];
        self.tracked_extensions.iter().any(|tracked| {
            tracked
                .trim_start_matches('.')
                .as_bytes()
                .eq_ignore_ascii_case(extension)
        })
    }
}

/// The HTTP server (`codebox serve`).
///
/// A hostile client gets a bounded share of it: the request head must arrive within
/// `header_read_timeout`, the body at `min_body_rate` once `body_read_timeout` has passed, a
/// connection where nothing moves for `idle_timeout` is closed, a `Content-Length` over the
/// route's limit is refused before any byte of the body is read, and at most
/// `max_connections` connections are served at once (further ones wait to be accepted).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The URL clients reach the server at, the base of signed download links. Unset means
    /// `http://<listen>`.
    pub public_url: Option<String>,
    /// The secret that signs download links. Unset means a random one kept in
    /// `<data_dir>/signing-secret`; several servers behind one name must share one.
    pub signing_secret: Option<String>,
    /// How long a signed download link stays valid.
    #[serde(with = "humantime_serde")]
    pub download_url_ttl: Duration,
    /// Runs executing at once; further runs wait in the queue.
    pub max_runs_in_flight: usize,
    /// Runs waiting for a slot; past that a run is refused with 503.
    pub max_queued_runs: usize,
    /// Largest JSON request body (code included).
    pub max_body_bytes: ByteSize,
    /// How long shutdown waits for runs in flight before they are marked failed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a client has to send a request's line and headers, counted from when the
    /// server is ready to read them; this also closes a kept-alive connection that sends no
    /// next request in that time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request body may take before it must keep up `min_body_rate`: a body is cut
    /// off (408) once it has taken longer than this plus the time its bytes so far need at
    /// `min_body_rate`. One byte every few seconds is refused after this long; a large upload
    /// over a slow but steady link is not.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// The slowest a request body may arrive, in bytes per second, on average over the body
    /// once `body_read_timeout` has passed; `0 B` makes `body_read_timeout` a plain deadline
    /// for the whole body.
    pub min_body_rate: ByteSize,
    /// A connection on which no byte moves either way for this long, while no request of it
    /// is being worked on, is closed: a client that stops reading a download or an event
    /// stream lets its connection go. (A run that takes minutes is worked on, so its silent
    /// connection stays open.)
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections served at once; past it new connections wait in the listen backlog
    /// until one closes.
    pub max_connections: usize,
    /// The bearer tokens the server accepts. With none configured, `codebox serve` creates
    /// `<data_dir>/tokens.toml` with one service and one admin token for tenant `default`.
    pub tokens: Vec<TokenConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            signing_secret: None,
            download_url_ttl: Duration::from_secs(3600),
            max_runs_in_flight: 4,
            max_queued_runs: 32,
            max_body_bytes: ByteSize::mib(2),
            shutdown_grace: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(30),
            min_body_rate: ByteSize::kib(16),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            tokens: Vec::new(),
        }
    }
}

/// Written by hand so that the signing secret and the tokens never reach a log line or an
/// error message; destructuring makes a new field a compile error here until it is listed.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            listen,
            public_url,
            signing_secret,
            download_url_ttl,
            max_runs_in_flight,
            max_queued_runs,
            max_body_bytes,
            shutdown_grace,
            header_read_timeout,
            body_read_timeout,
            min_body_rate,
            idle_timeout,
            max_connections,
            tokens,
        } = self;
        f.debug_struct("ServerConfig")
            .field("listen", listen)
            .field("public_url", public_url)
            .field("signing_secret", &signing_secret.as_ref().map(|_| REDACTED))
            .field("download_url_ttl", download_url_ttl)
            .field("max_runs_in_flight", max_runs_in_flight)
            .field("max_queued_runs", max_queued_runs)
            .field("max_body_bytes", max_body_bytes)
            .field("shutdown_grace", shutdown_grace)
            .field("header_read_timeout", header_read_timeout)
            .field("body_read_timeout", body_read_timeout)
            .field("min_body_rate", min_body_rate)
            .field("idle_timeout", idle_timeout)
            .field("max_connections", max_connections)
            .field("tokens", tokens)
            .finish()
    }
}

/// What a secret shows as in `Debug` output.
const REDACTED: &str = "<redacted>";

/// One accepted bearer token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token itself (keep the file private), or use `token_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The lower-case hex sha256 of the token, so the file need not hold the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// The tenant everything done with this token belongs to. An admin token of tenant
    /// [`ALL_TENANTS`] is a global operator; a service token must name one tenant.
    pub tenant: String,
    /// What the token may do.
    pub role: Role,
}

/// The tenant of a global operator's token: its admin routes see and reap every tenant.
pub const ALL_TENANTS: &str = "*";

impl TokenConfig {
    /// Why this entry cannot be used, if it cannot: a service token acts for end users of
    /// one tenant, so [`ALL_TENANTS`] means nothing for it and would mix every tenant's data.
    pub fn problem(&self) -> Option<String> {
        if self.tenant.is_empty() {
            return Some("server.tokens: a token's tenant must not be empty".to_owned());
        }
        if self.role == Role::Service && self.tenant == ALL_TENANTS {
            return Some(format!(
                "server.tokens: tenant \"{ALL_TENANTS}\" (every tenant) is for admin tokens only, \
                 not service tokens"
            ));
        }
        None
    }
}

/// Shows the tenant and role only: the token is a secret, and so, for a guessable token, is
/// its digest.
impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            token,
            token_sha256,
            tenant,
            role,
        } = self;
        f.debug_struct("TokenConfig")
            .field("token", &token.as_ref().map(|_| REDACTED))
            .field("token_sha256", &token_sha256.as_ref().map(|_| REDACTED))
            .field("tenant", tenant)
            .field("role", role)
            .finish()
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A chat backend: acts for the end user named in `X-User-Id`.
    Service,
    /// An operator: the admin routes.
    Admin,
}

/// Retention: how long things are kept, and how much disk workspaces may use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// A message's container is removed after this long without a run.
    #[serde(with = "humantime_serde")]
    pub container_idle: Duration,
    /// A message's workspace folder is removed after this long without a run (its registered
    /// files stay in storage).
    #[serde(with = "humantime_serde")]
    pub workspace_idle: Duration,
    /// Registered and uploaded files are deleted after this long; unset keeps them for good.
    #[serde(with = "humantime_serde")]
    pub file_ttl: Option<Duration>,
    /// The bytes of a deleted file are purged after this grace period.
    #[serde(with = "humantime_serde")]
    pub deleted_file_grace: Duration,
    /// Disk all workspaces together may use; past it the least recently used idle ones are
    /// removed first. Unset means no limit.
    pub max_workspace_bytes: Option<ByteSize>,
    /// How often the reaper runs inside `codebox serve`.
    #[serde(with = "humantime_serde")]
    pub reap_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            container_idle: Duration::from_secs(10 * 60),
            workspace_idle: Duration::from_secs(24 * 3600),
            file_ttl: None,
            deleted_file_grace: Duration::from_secs(24 * 3600),
            max_workspace_bytes: None,
            reap_interval: Duration::from_secs(60),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer held a value of the wrong shape or an unknown key.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// The values parse but make no sense together.
    #[error("invalid configuration: {0}")]
    Inconsistent(String),
}

/// Whether `name` is a dotted Python module name (`matplotlib.pyplot`).
fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl Config {
    /// Loads defaults, then `file` if given (it must exist) or `codebox.toml` if present, then
    /// `CODEBOX_*` variables, then `overrides` (the command line's flags, serialized).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        figment = match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment.merge(Toml::file("codebox.toml")),
        };
        let config: Config = figment
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .ignore(&["CONFIG"])
                    // `CODEBOX_TEST_*` belong to the test suite (the image, the gateway it
                    // tests against), never to the configuration.
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Inconsistent(what.to_owned()));
        if self.limits.default_timeout > self.limits.max_timeout {
            return bad("limits.default_timeout is longer than limits.max_timeout");
        }
        if self.limits.default_timeout.is_zero() {
            return bad("limits.default_timeout must be above zero");
        }
        if self.sandbox.cpus.is_nan() || self.sandbox.cpus <= 0.0 {
            return bad("sandbox.cpus must be above zero");
        }
        if self.sandbox.memory < ByteSize::mib(16) {
            return bad("sandbox.memory must be at least 16 MiB");
        }
        if self.sandbox.disk_size < ByteSize::mib(8) {
            return bad("sandbox.disk_size must be at least 8 MiB");
        }
        if self.sandbox.disk_files < 64 {
            return bad("sandbox.disk_files must be at least 64");
        }
        if self.limits.max_depth == 0 {
            return bad("limits.max_depth must be at least 1");
        }
        if self.server.max_runs_in_flight == 0 {
            return bad("server.max_runs_in_flight must be at least 1");
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections must be at least 1");
        }
        for (name, timeout) in [
            ("header_read_timeout", self.server.header_read_timeout),
            ("body_read_timeout", self.server.body_read_timeout),
            ("idle_timeout", self.server.idle_timeout),
        ] {
            if timeout.is_zero() {
                return Err(ConfigError::Inconsistent(format!(
                    "server.{name} must be above zero"
                )));
            }
        }
        for token in &self.server.tokens {
            if token.token.is_some() == token.token_sha256.is_some() {
                return bad("each server.tokens entry needs exactly one of token and token_sha256");
            }
            if token.token.as_ref().is_some_and(|t| t.len() < 16) {
                return bad("server.tokens: a token must be at least 16 characters");
            }
            if let Some(problem) = token.problem() {
                return bad(&problem);
            }
        }
        if self.runtime.kind == RuntimeKind::EnterpriseGateway {
            match self.runtime.gateway.url.as_deref() {
                None | Some("") => {
                    return bad("runtime.kind enterprise-gateway needs runtime.gateway.url");
                }
                Some(url) if !url.starts_with("http://") && !url.starts_with("https://") => {
                    return bad("runtime.gateway.url must start with http:// or https://");
                }
                Some(_) => {}
            }
            if self.runtime.gateway.kernel.is_empty() {
                return bad("runtime.gateway.kernel must name a kernelspec");
            }
        }
        parse_user(&self.sandbox.user)
            .map_err(|reason| ConfigError::Inconsistent(format!("sandbox.user: {reason}")))?;
        if let Some(module) = self.sandbox.preload.iter().find(|m| !is_module_name(m)) {
            return Err(ConfigError::Inconsistent(format!(
                "sandbox.preload: {module:?} is not a Python module name"
            )));
        }
        Ok(())
    }

    /// The catalog URL in force: the configured one, or the SQLite file in `data_dir`.
    pub fn catalog_url(&self) -> String {
        match &self.catalog.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("catalog.db").display()
            ),
        }
    }

    /// The folder that holds every workspace.
    pub fn workspaces_dir(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }
}

/// Parses a `uid:gid` user spec, refusing root: code never runs as uid 0.
pub fn parse_user(spec: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?} is not of the form uid:gid"))?;
    let uid: u32 = uid
        .parse()
        .map_err(|_| format!("uid {uid:?} is not a number"))?;
    let gid: u32 = gid
        .parse()
        .map_err(|_| format!("gid {gid:?} is not a number"))?;
    if uid == 0 || gid == 0 {
        return Err("code must not run as root (uid or gid 0)".to_owned());
    }
    Ok((uid, gid))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's own error type
mod tests {
    use super::*;

    #[test]
    fn user_specs() {
        assert_eq!(parse_user("1000:1000"), Ok((1000, 1000)));
        assert!(parse_user("0:1000").is_err());
        assert!(parse_user("1000:0").is_err());
        assert!(parse_user("sandbox").is_err());
        assert!(parse_user("a:b").is_err());
    }

    #[test]
    fn tracked_extensions_ignore_case_and_dots() {
        let outputs = OutputsConfig {
            tracked_extensions: vec!["xlsx".into(), ".CSV".into()],
        };
        let tracked = |name: &[u8]| {
            use std::os::unix::ffi::OsStrExt;
            outputs.is_tracked(std::ffi::OsStr::from_bytes(name))
        };
        assert!(tracked(b"report.XLSX"));
        assert!(tracked(b"a.b.csv"));
        assert!(!tracked(b"csv"));
        assert!(!tracked(b"report.xlsx.txt"));
        assert!(!tracked(b"notes.txt"));
        // Names that are not valid UTF-8 are judged by their extension's bytes.
        assert!(tracked(b"r\xff.csv"));
        assert!(!tracked(b"r.cs\xff"));
        assert!(!tracked(b"r.\xffcsv"));
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "data_dir = \"/srv/codebox\"\n[sandbox]\nimage = \"from-file\"\nmemory = \"2 GiB\"\n",
            )?;
            jail.set_env("CODEBOX_SANDBOX__IMAGE", "from-env");
            jail.set_env("CODEBOX_LIMITS__DEFAULT_TIMEOUT", "5s");
            // The test suite's own variables are not configuration.
            jail.set_env("CODEBOX_TEST_GATEWAY_URL", "http://127.0.0.1:1");
            jail.set_env("CODEBOX_TEST_IMAGE", "codebox-python:test");
            let config = Config::load(
                Some(Path::new("custom.toml")),
                serde_json::json!({ "limits": { "max_files_per_run": 3 } }),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(config.data_dir, PathBuf::from("/srv/codebox"));
            assert_eq!(config.sandbox.image, "from-env");
            assert_eq!(config.sandbox.memory, ByteSize::gib(2));
            assert_eq!(config.limits.default_timeout, Duration::from_secs(5));
            assert_eq!(config.limits.max_files_per_run, 3);
            assert_eq!(config.limits.max_depth, Limits::default().max_depth);
            Ok(())
        });
    }

    #[test]
    fn the_gateway_runtime_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CODEBOX_RUNTIME__KIND", "enterprise-gateway");
            jail.set_env("CODEBOX_RUNTIME__GATEWAY__URL", "http://127.0.0.1:8888");
            jail.set_env("CODEBOX_RUNTIME__GATEWAY__TOKEN", "secret-gateway-token");
            let config = Config::load(None, serde_json::json!({})).map_err(|e| e.to_string())?;
            assert_eq!(config.runtime.kind, RuntimeKind::EnterpriseGateway);
            assert_eq!(config.runtime.gateway.kernel, "python3");
            assert!(!format!("{config:?}").contains("secret-gateway-token"));
            jail.set_env("CODEBOX_RUNTIME__GATEWAY__URL", "");
            assert!(Config::load(None, serde_json::json!({})).is_err());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[sandbox]\nimgae = \"x\"\n")?;
            let error = Config::load(Some(Path::new("typo.toml")), serde_json::json!({}))
                .expect_err("a typo must not pass");
            assert!(error.to_string().contains("imgae"), "{error}");

            jail.create_file("bad.toml", "[limits]\ndefault_timeout = \"10m\"\n")?;
            let error = Config::load(Some(Path::new("bad.toml")), serde_json::json!({}))
                .expect_err("default above max must not pass");
            assert!(error.to_string().contains("max_timeout"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn debug_output_hides_tokens_and_the_signing_secret() {
        let mut config = Config::default();
        config.server.signing_secret = Some("signing-secret-4f0d2c".to_owned());
        config.server.tokens = vec![
            TokenConfig {
                token: Some("plaintext-token-9a8b7c6d".to_owned()),
                token_sha256: None,
                tenant: "acme".to_owned(),
                role: Role::Service,
            },
            TokenConfig {
                token: None,
                token_sha256: Some("5e884898da28047151d0e56f8dc62927".to_owned()),
                tenant: "ops".to_owned(),
                role: Role::Admin,
            },
        ];
        for shown in [format!("{config:?}"), format!("{config:#?}")] {
            for secret in [
                "signing-secret-4f0d2c",
                "plaintext-token-9a8b7c6d",
                "5e884898da28047151d0e56f8dc62927",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            // The rest is still there to debug with.
            assert!(shown.contains("acme") && shown.contains("Admin"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }

    #[test]
    fn default_catalog_is_a_sqlite_file_in_the_data_dir() {
        let config = Config::default();
        assert_eq!(
            config.catalog_url(),
            "sqlite://./codebox-data/catalog.db?mode=rwc"
        );
    }
}
