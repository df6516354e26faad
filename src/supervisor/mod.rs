//! The supervisor: the library both the CLI and the HTTP server call. It knows nothing of
//! HTTP; it owns the catalog, the blob store, the workspaces and a [`Runtime`], and the
//! types its callers use. One file per verb:
//!
//! - `run.rs`: the run pipeline, [`Supervisor::run`] and its steps, top to bottom
//!   (`check -> claim -> hold -> restore -> attach -> prepare -> snapshot -> execute ->
//!   snapshot -> register -> answer`), with the steps that take more than a screen beside it: `attach.rs` (placing
//!   attachments), `register.rs` (storing outputs), `figures.rs` (the interpreter's rich
//!   outputs);
//! - `uploads.rs`: a user's file stored and recorded, in two halves;
//! - `files.rs`: lookups, listings per message and chat, rendering, renaming, deletion;
//! - `listing.rs`: all of a user's files, filtered, a page at a time;
//! - `downloads.rs`: a file's bytes back out, and the parts' health;
//! - `text.rs`: a file's bounded text for a model (text, xlsx, PDF), parsed under caps;
//! - `context.rs`: a message's files as a model should be told of them, with previews;
//! - `tools.rs`: tools a model calls (run code, list, read, write and delete files), answered
//!   as bounded text for the model; `tool_defs.rs`: their definitions and JSON Schemas;
//!   `tool_text.rs`: how their answers are written, within the content limit;
//! - `placement.rs`: which instance holds a message when several share the catalog: the
//!   heartbeat, forwarding decisions, taking over the messages of a lost instance;
//! - `restore.rs`: a lost workspace rebuilt from the catalog at the message's next run;
//! - `disk_watch.rs`: the watchdog that stops a run once it fills its disk cap;
//! - `sandboxes.rs`: start-up, shutdown, removing a workspace, the operators' overview;
//! - `reap.rs`: the reaper, which applies the retention policy;
//! - `quotas.rs`: how much a user and a tenant may store and hold on disk;
//! - `orphans.rs`: the reaper's sweep of blobs no catalog row names (left by a crash);
//! - `pool.rs`: the warm pool;
//! - `kernels.rs`: a message's interpreter between runs, for notebook clients;
//! - `error.rs`: the domain error every operation returns.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::blobs::{BlobError, Blobs};
use crate::catalog::{self, AttachmentRecord, Catalog, Truncation};
use crate::config::{Config, RuntimeKind};
use crate::error::{IoContext, IoError};
use crate::ids::{self, BlobKey, ChatId, FileId, MessageId, RunId, WorkspaceId};
use crate::runtime::{
    DockerRuntime, EnterpriseGatewayRuntime, ExecOutcome, ExecRequest, KernelEnd, KernelStart,
    OutputChunk, RichOutput, Runtime, SANDBOX_DATA, SandboxSpec,
};
use crate::snapshot::{self, EntryKind, Omission, Snapshot, SnapshotLimits};
use crate::translate::{self, PathMap};
use crate::workspace::disk::DiskPolicy;
use crate::workspace::{self, Workspace, Workspaces};

mod attach;
mod chats;
mod context;
mod disk_watch;
mod downloads;
mod error;
mod figures;
mod files;
mod kernels;
mod listing;
mod orphans;
mod placement;
mod pool;
mod quotas;
mod reap;
mod register;
mod restore;
mod run;
mod sandboxes;
mod text;
mod tool_defs;
mod tool_text;
mod tools;
mod uploads;

/// The records the supervisor's operations take and give: its vocabulary, which callers use
/// without reaching into the catalog that stores them.
pub use crate::catalog::{
    FileRecord, FileSource, FileUsage, KernelState, MessageRecord, Owner, RunOutput, RunRecord,
    RunStatus, now,
};
pub use chats::{ChatDeleted, ChatDeletion, ChatOverview};
pub use context::{ContextFile, MessageContext};
pub use downloads::ByteStream;
pub use error::{Error, Result};
pub use listing::{FileListing, FilePage};
pub use placement::Placement;
pub use pool::WarmPool;
pub use quotas::Usage;
pub use reap::ReapReport;
pub use text::{DEFAULT_TEXT_BYTES, FileText, MAX_TEXT_BYTES};
pub use tool_defs::{
    DEFAULT_CONTENT_BYTES, MAX_CONTENT_BYTES, MIN_CONTENT_BYTES, Tool, content_limit,
    definitions as tool_definitions,
};
pub use tools::{ToolAnswer, ToolCall};
pub use uploads::{StoredUpload, UploadMeta};

/// The languages codebox runs.
pub const LANGUAGES: [&str; 1] = ["python"];

/// How long a run waits for a streaming consumer that does not read before it drops events.
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// The hint added to stderr when code tried to write to an attachment.
const READ_ONLY_HINT: &str = "codebox: attached files are read-only. Write a new file, or \
     delete the link first (os.remove('/mnt/data/<name>')) and then write a file of the same \
     name: it is registered as derived from the attachment.";

/// What a caller asks to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The chat the message belongs to.
    pub chat_id: ChatId,
    /// The message the code answers; its workspace and sandbox are reused across its runs.
    pub message_id: MessageId,
    /// The program.
    pub code: String,
    /// Its language (see [`LANGUAGES`]).
    pub language: String,
    /// Stored files to attach, all the caller's own.
    pub file_ids: Vec<FileId>,
    /// Wall-clock limit; `None` is the configured default. Above the configured maximum is
    /// refused.
    pub timeout: Option<Duration>,
    /// Whether to start the run in a fresh interpreter.
    pub restart: bool,
    /// Code to run first when the interpreter is fresh, after the configured `init_code`.
    pub init_code: Option<String>,
    /// Whether an exception's traceback also goes to stderr (as for a script); a notebook
    /// client, which shows the `error` output, turns it off.
    pub tracebacks_on_stderr: bool,
}

/// A run that passed its checks and bound its message; see [`Supervisor::accept`].
#[derive(Debug)]
pub struct AcceptedRun {
    owner: Owner,
    request: RunRequest,
    timeout: Duration,
    attachments: Vec<FileRecord>,
    message: MessageRecord,
}

/// What a run produced: its record and the files it registered, oldest first.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run as recorded.
    pub run: RunRecord,
    /// The files it registered.
    pub files: Vec<FileRecord>,
}

/// Something that happened during a run, for callers that stream runs.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// Output of the code, with host paths already translated.
    Stdout(String),
    /// Error output of the code, with host paths already translated.
    Stderr(String),
    /// A file was registered.
    File(Box<FileRecord>),
    /// A rich output: results and errors as they happen, figures once registered (with
    /// their file).
    Output(Box<RunOutput>, Option<Box<FileRecord>>),
}

/// A workspace as operators see it.
#[derive(Debug, Clone)]
pub struct WorkspaceOverview {
    /// The message it belongs to (tenant, user, chat, last use).
    pub message: MessageRecord,
    /// Whether its folder exists (the reaper may have removed it).
    pub exists: bool,
    /// Bytes its folder takes.
    pub bytes: u64,
    /// Its container's state.
    pub container: ContainerState,
}

/// The state of a workspace's container. Its name (`running`) is the word the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ContainerState {
    /// It exists and runs.
    Running,
    /// It exists but does not run.
    Stopped,
    /// There is none.
    None,
}

/// The run pipeline and the stores it works on.
pub struct Supervisor {
    config: Arc<Config>,
    /// This instance's id, kept in `<data_dir>/instance`; it labels every sandbox made here.
    instance: String,
    catalog: Catalog,
    blobs: Blobs,
    workspaces: Workspaces,
    runtime: Arc<dyn Runtime>,
    /// Sandboxes started ahead of need, for new messages.
    pool: WarmPool,
}

impl Supervisor {
    /// Opens everything the configuration names: the catalog (migrated), the blob store, the
    /// workspaces folder and the runtime (the local Docker engine, or a Jupyter Enterprise
    /// Gateway).
    pub async fn open(config: Config) -> Result<Self> {
        let runtime: Arc<dyn Runtime> = match config.runtime.kind {
            RuntimeKind::Docker => {
                let (user, _) = sandbox_user(&config)?;
                Arc::new(DockerRuntime::connect(&config.sandbox, user).await?)
            }
            RuntimeKind::EnterpriseGateway => Arc::new(
                EnterpriseGatewayRuntime::connect(
                    &config.runtime.gateway,
                    &config.workspaces_dir(),
                )
                .await?,
            ),
        };
        Self::with_runtime(config, runtime).await
    }

    /// Like [`Supervisor::open`] with a runtime of the caller's choosing.
    pub async fn with_runtime(config: Config, runtime: Arc<dyn Runtime>) -> Result<Self> {
        let (_, owner) = sandbox_user(&config)?;
        std::fs::create_dir_all(&config.data_dir).with_path("create", &config.data_dir)?;
        let catalog = Catalog::connect(&config.catalog_url()).await?;
        let blobs = Blobs::open(&config.blobs, &config.data_dir)?;
        let disk = DiskPolicy::resolve(&config.sandbox)
            .map_err(|error| Error::invalid("sandbox.disk_limit", error.to_string()))?;
        let workspaces = Workspaces::open(&config.workspaces_dir(), owner)?.with_disk(disk);
        let instance = instance_id(&config.data_dir)?;
        Ok(Self {
            config: Arc::new(config),
            instance,
            catalog,
            blobs,
            workspaces,
            runtime,
            pool: WarmPool::default(),
        })
    }

    /// This instance's id (one per data folder); it labels every sandbox made here.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The blob store.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// The workspaces.
    pub fn workspaces(&self) -> &Workspaces {
        &self.workspaces
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The run `run_id` of `owner`, with its files.
    pub async fn run_report(&self, owner: &Owner, run_id: &RunId) -> Result<RunReport> {
        let run = self
            .catalog
            .runs()
            .get(owner, run_id)
            .await?
            .ok_or(Error::NotFound("run"))?;
        let files = self.catalog.files().of_run(&run.id).await?;
        Ok(RunReport { run, files })
    }
}

/// A message's attachments: file id by name in the workspace.
type Inputs = HashMap<String, FileId>;

/// The `reason` of a run killed because `/mnt/data` reached its cap.
pub const DISK_QUOTA: &str = "disk_quota";

/// The word a truncation's reason starts with when a stored quota left an output out: the
/// API's error code for the same refusal.
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";

/// The `uid:gid` code runs as, and the owner to give `data/` folders. A supervisor running as
/// root runs code as the configured user and hands it `data/`; any other supervisor runs code
/// as itself, since it could not hand over the folder.
pub fn sandbox_user(config: &Config) -> Result<(String, Option<(u32, u32)>)> {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    if uid == 0 {
        let owner = crate::config::parse_user(&config.sandbox.user)
            .map_err(|reason| Error::invalid("sandbox.user", reason))?;
        Ok((config.sandbox.user.clone(), Some(owner)))
    } else {
        Ok((format!("{uid}:{gid}"), None))
    }
}

/// The id of the instance that owns `data_dir`, created on first use.
fn instance_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("instance");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(IoError::from_io("read", &path, error).into()),
    }
    // The id is written to a private file first and then linked into place, so that a second
    // process starting on the same new folder either wins the link or reads a complete id.
    let id = ids::mint("inst");
    let staged = data_dir.join(format!(".{id}"));
    std::fs::write(&staged, &id).with_path("write", &staged)?;
    let linked = std::fs::hard_link(&staged, &path);
    std::fs::remove_file(&staged).with_path("remove", &staged)?;
    match linked {
        Ok(()) => Ok(id),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)
                .with_path("read", &path)?
                .trim()
                .to_owned())
        }
        Err(error) => Err(IoError::from_io("link", &path, error).into()),
    }
}

/// Takes the workspace's lock on a blocking thread: waiting must not stall the runtime.
async fn lock(workspace: &Workspace) -> Result<std::fs::File> {
    let locked = workspace.clone();
    Ok(tokio::task::spawn_blocking(move || locked.lock())
        .await
        .map_err(|error| IoError {
            action: "lock",
            path: workspace.root.clone(),
            source: std::io::Error::other(error),
        })??)
}

/// Where the code sees an attachment named `name`.
pub fn attachment_path(name: &str) -> String {
    format!("{SANDBOX_DATA}/{name}")
}

fn path_map(workspace: &Workspace) -> PathMap {
    PathMap::new(
        workspace.data.to_string_lossy(),
        workspace.inputs.to_string_lossy(),
    )
}

/// The MIME type of a file name, `application/octet-stream` when unknown.
pub fn content_type_of(name: &str) -> String {
    mime_guess::from_path(name)
        .first_or_octet_stream()
        .essence_str()
        .to_owned()
}

/// Whether stderr shows code failing to write an attachment. Opening one to overwrite it fails
/// with "Read-only file system" (the mount); opening it to append fails earlier, with
/// "Permission denied" (the file belongs to the supervisor).
fn wrote_to_attachment(stderr: &str, inputs: &Inputs) -> bool {
    let refused = stderr.contains("Read-only file system") || stderr.contains("Permission denied");
    refused
        && (stderr.contains("/mnt/inputs/")
            || inputs
                .keys()
                .any(|name| stderr.contains(&format!("{SANDBOX_DATA}/{name}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_hint_needs_both_signs() {
        let inputs = Inputs::from([("a.csv".to_owned(), FileId::from_stored("file_1"))]);
        for stderr in [
            "OSError: [Errno 30] Read-only file system: '/mnt/data/a.csv'",
            "PermissionError: [Errno 13] Permission denied: '/mnt/data/a.csv'",
            "OSError: [Errno 30] Read-only file system: '/mnt/inputs/a.csv'",
        ] {
            assert!(wrote_to_attachment(stderr, &inputs), "{stderr}");
        }
        for stderr in [
            "Read-only file system: '/usr/lib/x'",
            "Permission denied: '/mnt/data/other.csv'",
            "wrote /mnt/data/a.csv",
        ] {
            assert!(!wrote_to_attachment(stderr, &inputs), "{stderr}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type_of("r.xlsx"),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        );
        assert_eq!(content_type_of("r.csv"), "text/csv");
        assert_eq!(content_type_of("r.pdf"), "application/pdf");
        assert_eq!(content_type_of("noext"), "application/octet-stream");
    }
}
