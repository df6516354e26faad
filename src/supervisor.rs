//! The run pipeline, one message at a time. Read [`Supervisor::run`] top to bottom: each step
//! of `shared/DESIGN.md` is one function below it, in the same order.
//!
//! ```text
//! check -> claim -> attach -> prepare -> snapshot -> execute -> snapshot -> register -> answer
//! ```
//!
//! The supervisor is the library both the CLI and the HTTP server call; it knows nothing of
//! HTTP. It owns the catalog, the blob store, the workspaces and a [`Runtime`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::blobs::{BlobError, Blobs};
use crate::catalog::{
    self, AttachmentRecord, Catalog, FileRecord, FileSource, MessageRecord, Owner, RunRecord,
    RunStatus, Truncation,
};
use crate::config::Config;
use crate::disk::DiskPolicy;
use crate::error::{Error, IoContext, IoError, Result};
use crate::ids;
use crate::runtime::{
    DockerRuntime, ExecOutcome, ExecRequest, OutputChunk, Runtime, SANDBOX_DATA, SandboxSpec,
};
use crate::snapshot::{self, EntryKind, Omission, Snapshot, SnapshotLimits};
use crate::translate::{self, PathMap};
use crate::workspace::{self, Workspace, Workspaces};

/// The languages codebox runs.
pub const LANGUAGES: [&str; 1] = ["python"];

/// How long a run waits for a streaming consumer that does not read before it drops events.
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// The hint added to stderr when code tried to write to an attachment.
const READ_ONLY_HINT: &str = "codebox: attached files are read-only. Write a new file, or \
     delete the link first (os.remove('/mnt/data/<name>')) and then write a file of the same \
     name: it is registered as derived from the attachment.";

/// What a user says about a file they upload.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    /// The file's name as the client sent it. Only its last part is kept (see
    /// [`workspace::base_name`]), and that is sanitized where it becomes a path.
    pub name: String,
    /// The chat it belongs to, if any.
    pub chat_id: Option<String>,
    /// The message it belongs to, if any. With `chat_id` it binds the message like a run
    /// does; without, it must name an existing message of the uploader.
    pub message_id: Option<String>,
}

impl UploadMeta {
    fn check(&self) -> Result<()> {
        if self.name.trim().is_empty() || self.name.len() > 1024 {
            return Err(Error::invalid(
                "name",
                "must be 1 to 1024 bytes and not blank",
            ));
        }
        if let Some(chat_id) = &self.chat_id {
            ids::check_external("chat_id", chat_id)?;
        }
        if let Some(message_id) = &self.message_id {
            ids::check_external("message_id", message_id)?;
        }
        Ok(())
    }
}

/// Bytes of an upload that are stored but not yet recorded.
#[derive(Debug)]
pub struct StoredUpload {
    id: String,
    stored: crate::blobs::Stored,
}

/// What a caller asks to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The chat the message belongs to.
    pub chat_id: String,
    /// The message the code answers; its workspace and sandbox are reused across its runs.
    pub message_id: String,
    /// The program.
    pub code: String,
    /// Its language (see [`LANGUAGES`]).
    pub language: String,
    /// Stored files to attach, all the caller's own.
    pub file_ids: Vec<String>,
    /// Wall-clock limit; `None` is the configured default. Above the configured maximum is
    /// refused.
    pub timeout: Option<Duration>,
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

/// The state of a workspace's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// It exists and runs.
    Running,
    /// It exists but does not run.
    Stopped,
    /// There is none.
    None,
}

impl ContainerState {
    /// The word the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::None => "none",
        }
    }
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
}

impl Supervisor {
    /// Opens everything the configuration names: the catalog (migrated), the blob store, the
    /// workspaces folder and the local Docker engine.
    pub async fn open(config: Config) -> Result<Self> {
        let (user, _) = sandbox_user(&config)?;
        let runtime = DockerRuntime::connect(&config.sandbox, user).await?;
        Self::with_runtime(config, Arc::new(runtime)).await
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

    /// Marks the runs this instance left `running` when it last stopped as failed. Call it at
    /// start-up, before accepting runs. Returns how many there were.
    pub async fn fail_interrupted_runs(&self) -> Result<u64> {
        Ok(self
            .catalog
            .runs()
            .fail_interrupted(
                &self.instance,
                "codebox stopped while the run was in progress",
                &catalog::now(),
            )
            .await?)
    }

    /// Removes this instance's sandboxes that no message owns (left by a crash, or by a
    /// catalog that was reset). Returns how many were removed. Sandboxes of other instances
    /// on the same engine are never touched.
    pub async fn reconcile(&self) -> Result<usize> {
        let mut removed = 0;
        for workspace_id in self.own_sandboxes().await? {
            let owned = self
                .catalog
                .messages()
                .by_workspace(&workspace_id)
                .await?
                .is_some();
            if !owned {
                self.runtime.release(&workspace_id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every sandbox of this instance, whatever message owns it; the workspaces stay,
    /// and a later run of a message starts a new sandbox on the same files. Called when a
    /// server stops. Returns how many were removed. Sandboxes of other instances on the same
    /// engine are never touched.
    pub async fn release_own_sandboxes(&self) -> Result<usize> {
        let own = self.own_sandboxes().await?;
        for workspace_id in &own {
            self.runtime.release(workspace_id).await?;
        }
        Ok(own.len())
    }

    /// The workspace ids of this instance's sandboxes on the engine.
    async fn own_sandboxes(&self) -> Result<Vec<String>> {
        Ok(self
            .runtime
            .list()
            .await?
            .into_iter()
            .filter(|sandbox| sandbox.instance.as_deref() == Some(self.instance.as_str()))
            .map(|sandbox| sandbox.workspace_id)
            .collect())
    }

    /// The message `message_id` if it is bound to `owner`.
    pub async fn message(&self, owner: &Owner, message_id: &str) -> Result<MessageRecord> {
        self.catalog
            .messages()
            .get(&owner.tenant, message_id)
            .await?
            .filter(|message| message.user_id == owner.user)
            .ok_or(Error::NotFound("message"))
    }

    /// The live files of one of `owner`'s messages, oldest first: those its runs generated,
    /// and, when `include_uploads` is set, every file attached to it (however it was
    /// attached: uploaded with the message, or named in a run's `file_ids`) with the path
    /// the code sees in this message's workspace.
    pub async fn message_files(
        &self,
        owner: &Owner,
        message_id: &str,
        include_uploads: bool,
    ) -> Result<Vec<FileRecord>> {
        self.message(owner, message_id).await?;
        let mut files = self
            .catalog
            .files()
            .of_message(owner, message_id, include_uploads)
            .await?;
        if include_uploads {
            let mut attached = Vec::new();
            for attachment in self
                .catalog
                .attachments()
                .live_of_message(&owner.tenant, message_id)
                .await?
            {
                if let Some(mut file) = self.catalog.files().get(owner, &attachment.file_id).await?
                {
                    file.path = attachment_path(&attachment.name);
                    attached.push(file);
                }
            }
            files.retain(|file| !attached.iter().any(|other| other.id == file.id));
            files.extend(attached);
            files.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        }
        Ok(files)
    }

    /// The attachments of one of `owner`'s messages, oldest first, each with its file while
    /// that is live (`None` once it was deleted).
    pub async fn message_attachments(
        &self,
        owner: &Owner,
        message_id: &str,
    ) -> Result<Vec<(AttachmentRecord, Option<FileRecord>)>> {
        self.message(owner, message_id).await?;
        let mut attachments = Vec::new();
        for attachment in self
            .catalog
            .attachments()
            .of_message(&owner.tenant, message_id)
            .await?
        {
            let file = self
                .catalog
                .files()
                .get(owner, &attachment.file_id)
                .await?
                .map(|mut file| {
                    file.path = attachment_path(&attachment.name);
                    file
                });
            attachments.push((attachment, file));
        }
        Ok(attachments)
    }

    /// The live generated files of one of `owner`'s chats, oldest first.
    pub async fn chat_files(&self, owner: &Owner, chat_id: &str) -> Result<Vec<FileRecord>> {
        if !self.catalog.messages().chat_exists(owner, chat_id).await? {
            return Err(Error::NotFound("chat"));
        }
        Ok(self.catalog.files().of_chat(owner, chat_id).await?)
    }

    /// Replaces every `sandbox:/mnt/data/<path>` and `/mnt/data/<path>` in `text` that names a
    /// file of the message (the newest one at that path) by `url_for(file)`.
    pub async fn render_links(
        &self,
        owner: &Owner,
        message_id: &str,
        text: &str,
        url_for: impl Fn(&FileRecord) -> String,
    ) -> Result<String> {
        let files = self.message_files(owner, message_id, true).await?;
        let mut by_path: HashMap<&str, &FileRecord> = HashMap::new();
        for file in &files {
            // Oldest first, so the newest file at a path wins.
            if let Some(relative) = file.path.strip_prefix("/mnt/data/") {
                by_path.insert(relative, file);
            }
        }
        Ok(translate::render_links(text, |relative| {
            by_path.get(relative).map(|file| url_for(file))
        }))
    }

    /// Soft-deletes one of `owner`'s files: gone from listings and downloads at once, and
    /// from every workspace it was placed in (see `Supervisor::unplace`); its bytes are
    /// purged by the reaper after the grace period.
    pub async fn delete_file(&self, owner: &Owner, file_id: &str) -> Result<()> {
        if !self
            .catalog
            .files()
            .soft_delete(owner, file_id, &catalog::now())
            .await?
        {
            return Err(Error::NotFound("file"));
        }
        self.unplace(&owner.tenant, file_id).await
    }

    /// Takes a deleted file out of every workspace it was placed in, without waiting for
    /// their locks (a long run must not delay a delete): its input file and its `data/` link
    /// go (see [`Workspace::remove_input`]). A run that places the file concurrently checks,
    /// once it has placed it, that the file is still live, and takes it out again if not; so
    /// whichever of the two comes second, the file is gone. Calling it again is harmless;
    /// the reaper does before it purges the bytes.
    pub(crate) async fn unplace(&self, tenant: &str, file_id: &str) -> Result<()> {
        for attachment in self.catalog.attachments().of_file(tenant, file_id).await? {
            let Some(message) = self
                .catalog
                .messages()
                .get(tenant, &attachment.message_id)
                .await?
            else {
                continue;
            };
            let workspace = self.workspaces.get(&message.workspace_id)?;
            workspace.remove_input(&attachment.name)?;
        }
        Ok(())
    }

    /// The inodes through which the workspaces a file was attached to still hold its bytes:
    /// what [`Supervisor::unplace`] would release.
    pub(crate) async fn placed_inodes(
        &self,
        tenant: &str,
        file_id: &str,
    ) -> Result<Vec<(u64, u64)>> {
        let mut inodes = Vec::new();
        for attachment in self.catalog.attachments().of_file(tenant, file_id).await? {
            if let Some(message) = self
                .catalog
                .messages()
                .get(tenant, &attachment.message_id)
                .await?
                && let Some(inode) = self
                    .workspaces
                    .get(&message.workspace_id)?
                    .input_inode(&attachment.name)
            {
                inodes.push(inode);
            }
        }
        Ok(inodes)
    }

    /// Removes the container and the workspace folder of one of `owner`'s messages now; its
    /// registered files stay. A later run of the message starts from an empty workspace.
    pub async fn delete_workspace(&self, owner: &Owner, message_id: &str) -> Result<()> {
        let message = self.message(owner, message_id).await?;
        let workspace = self.workspaces.get(&message.workspace_id)?;
        let _lock = lock(&workspace).await?;
        self.remove_workspace_locked(&workspace).await
    }

    /// Removes a workspace whose lock the caller holds: container, folder, and the lock file
    /// last. The message's attachments stay attached: its next run places them again under
    /// the same names.
    pub(crate) async fn remove_workspace_locked(&self, workspace: &Workspace) -> Result<()> {
        self.runtime.release(&workspace.id).await?;
        self.workspaces.remove(&workspace.id)?;
        workspace.remove_lock_file()?;
        Ok(())
    }

    /// Every workspace this instance knows, of one tenant or (`None`) of all, least recently
    /// used first, with the bytes removing it would free and its container's state: the
    /// operators' view.
    pub async fn workspace_overview(&self, tenant: Option<&str>) -> Result<Vec<WorkspaceOverview>> {
        let containers: HashMap<String, bool> = self
            .runtime
            .list()
            .await?
            .into_iter()
            .filter(|sandbox| sandbox.instance.as_deref() == Some(self.instance.as_str()))
            .map(|sandbox| (sandbox.workspace_id, sandbox.running))
            .collect();
        let mut overview = Vec::new();
        for message in self.catalog.messages().all().await? {
            if tenant.is_some_and(|tenant| tenant != message.tenant) {
                continue;
            }
            let workspace = self.workspaces.get(&message.workspace_id)?;
            let exists = workspace.exists();
            let container = match containers.get(&message.workspace_id) {
                Some(true) => ContainerState::Running,
                Some(false) => ContainerState::Stopped,
                None => ContainerState::None,
            };
            overview.push(WorkspaceOverview {
                bytes: if exists { workspace.bytes() } else { 0 },
                exists,
                container,
                message,
            });
        }
        Ok(overview)
    }

    /// Stops and removes the sandbox of `owner`'s message `message_id`, and unmounts its
    /// workspace's file system, keeping the workspace's files: a later run of the message
    /// mounts them again and starts a new sandbox on them. A process that ends after its run
    /// (`codebox run`) calls it so that it leaves neither a container nor a loop device behind.
    pub async fn release_sandbox(&self, owner: &Owner, message_id: &str) -> Result<()> {
        let message = self.message(owner, message_id).await?;
        let workspace = self.workspaces.get(&message.workspace_id)?;
        // Under the lock: a run of the message in another process reads data/ on the host.
        let _lock = lock(&workspace).await?;
        self.runtime.release(&message.workspace_id).await?;
        let data = workspace.data.clone();
        tokio::task::spawn_blocking(move || crate::disk::unmount_data(&data))
            .await
            .map_err(|error| IoError {
                action: "unmount",
                path: workspace.data.clone(),
                source: std::io::Error::other(error),
            })??;
        Ok(())
    }

    /// Stores an uploaded file for `owner`, streamed from `body`, optionally tied to a chat
    /// and message (see [`UploadMeta`]).
    pub async fn upload(
        &self,
        owner: &Owner,
        name: &str,
        chat_id: Option<&str>,
        message_id: Option<&str>,
        body: impl AsyncRead + Unpin,
    ) -> Result<FileRecord> {
        let upload = UploadMeta {
            name: name.to_owned(),
            chat_id: chat_id.map(str::to_owned),
            message_id: message_id.map(str::to_owned),
        };
        upload.check()?;
        let stored = self.store_upload(body).await?;
        self.register_upload(owner, upload, stored).await
    }

    /// First half of an upload whose metadata may arrive after its bytes (a multipart form):
    /// streams the bytes into the blob store, capped at the upload limit.
    pub async fn store_upload(&self, body: impl AsyncRead + Unpin) -> Result<StoredUpload> {
        let id = ids::mint("file");
        let key = Blobs::file_key(&id);
        let limit = self.config.limits.max_upload_bytes.as_u64();
        match self.blobs.put_stream(&key, body, limit).await {
            Ok(stored) => Ok(StoredUpload { id, stored }),
            Err(BlobError::TooLarge { limit }) => Err(Error::TooLarge(format!(
                "the upload is larger than {}",
                ByteSize::b(limit).display().iec()
            ))),
            Err(error) => Err(error.into()),
        }
    }

    /// Second half of an upload: checks the metadata, binds the message if one is named, and
    /// records the file. If anything is refused, the stored bytes are deleted again.
    pub async fn register_upload(
        &self,
        owner: &Owner,
        upload: UploadMeta,
        stored: StoredUpload,
    ) -> Result<FileRecord> {
        let key = stored.stored.key.clone();
        let result = self.record_upload(owner, upload, stored).await;
        if result.is_err() {
            // Without its row the blob would be an orphan nobody can reach.
            self.delete_orphan_blob(&key).await;
        }
        result
    }

    /// Deletes the bytes of an upload that will not be recorded (its request was refused).
    pub async fn discard_upload(&self, stored: StoredUpload) {
        if let Err(error) = self.blobs.delete(&stored.stored.key).await {
            tracing::warn!(key = %stored.stored.key, %error, "could not delete a refused upload");
        }
    }

    async fn record_upload(
        &self,
        owner: &Owner,
        upload: UploadMeta,
        stored: StoredUpload,
    ) -> Result<FileRecord> {
        let mut upload = upload;
        upload.check()?;
        let message = match (&upload.chat_id, &upload.message_id) {
            (Some(chat_id), Some(message_id)) => {
                Some(self.claim(owner, chat_id, message_id).await?)
            }
            // A message named without its chat must already be the caller's.
            (None, Some(message_id)) => {
                let message = self.message(owner, message_id).await?;
                upload.chat_id = Some(message.chat_id.clone());
                Some(message)
            }
            _ => None,
        };
        let safe_name = workspace::sanitize_name(&upload.name);
        // The client's folders are no part of the file's name: `C:\Users\a\report.csv` is
        // shown as `report.csv`, and `..` never survives (shared/API.md).
        let name = workspace::base_name(&upload.name)
            .unwrap_or("file")
            .to_owned();
        let mut record = FileRecord {
            id: stored.id,
            tenant: owner.tenant.clone(),
            user_id: owner.user.clone(),
            chat_id: upload.chat_id,
            message_id: upload.message_id,
            run_id: None,
            name,
            path: attachment_path(&safe_name),
            size: i64::try_from(stored.stored.size).unwrap_or(i64::MAX),
            content_type: content_type_of(&safe_name),
            sha256: stored.stored.sha256,
            source: FileSource::Upload,
            derived_from: None,
            blob_key: stored.stored.key,
            created_at: catalog::now(),
            deleted_at: None,
        };
        self.catalog.files().insert(&record).await?;
        // A file uploaded with a message is attached to it: every run of the message sees it.
        if let Some(message) = message {
            let workspace = self.workspaces.get(&message.workspace_id)?;
            match self.reserve_name(&message, &workspace, &record).await {
                Ok(name) => record.path = attachment_path(&name),
                Err(error) => {
                    // The row must not stay live without its bytes, which the caller deletes.
                    if let Err(expire_error) = self
                        .catalog
                        .files()
                        .expire(&record.id, &catalog::now())
                        .await
                    {
                        tracing::warn!(file = %record.id, error = %expire_error,
                            "could not mark a refused upload deleted");
                    }
                    return Err(error);
                }
            }
        }
        Ok(record)
    }

    /// Deletes the bytes of a file that will have no catalog row. A failure is logged with the
    /// key: nothing else refers to the object, so the log line is what an operator has to
    /// find it by.
    async fn delete_orphan_blob(&self, key: &str) {
        if let Err(error) = self.blobs.delete(key).await {
            tracing::warn!(%key, %error, "could not delete the bytes of an unrecorded file");
        }
    }

    /// The live file `file_id` of `owner`. Its path is the one the code sees in the message
    /// it was uploaded with, when it is attached there (a collision may have numbered its
    /// name); the same file attached to other messages may have other names there, which
    /// their listings show.
    pub async fn file(&self, owner: &Owner, file_id: &str) -> Result<FileRecord> {
        let mut file = self
            .catalog
            .files()
            .get(owner, file_id)
            .await?
            .ok_or(Error::NotFound("file"))?;
        if let Some(message_id) = &file.message_id
            && let Some(attachment) = self
                .catalog
                .attachments()
                .get(&owner.tenant, message_id, &file.id)
                .await?
        {
            file.path = attachment_path(&attachment.name);
        }
        Ok(file)
    }

    /// The run `run_id` of `owner`, with its files.
    pub async fn run_report(&self, owner: &Owner, run_id: &str) -> Result<RunReport> {
        let run = self
            .catalog
            .runs()
            .get(owner, run_id)
            .await?
            .ok_or(Error::NotFound("run"))?;
        let files = self.catalog.files().of_run(&run.id).await?;
        Ok(RunReport { run, files })
    }

    /// Runs code for one message of `owner`: the whole pipeline. A run that executes returns
    /// `Ok` whatever its exit status; `Err` means it could not be run (bad request, someone
    /// else's message or file, or an infrastructure failure). `events`, if given, receives
    /// output and registered files as they happen.
    pub async fn run(
        &self,
        owner: &Owner,
        request: RunRequest,
        events: Option<mpsc::Sender<RunEvent>>,
    ) -> Result<RunReport> {
        let accepted = self.accept(owner, request).await?;
        self.carry_out(accepted, events).await
    }

    /// The first half of [`Supervisor::run`], for callers that must answer a refusal before
    /// they start streaming: checks the request, looks up the attachments and binds the
    /// message. Nothing is executed yet.
    pub async fn accept(&self, owner: &Owner, request: RunRequest) -> Result<AcceptedRun> {
        let timeout = self.check(&request)?;
        let attachments = self.attachments_of(owner, &request.file_ids).await?;
        let message = self
            .claim(owner, &request.chat_id, &request.message_id)
            .await?;
        Ok(AcceptedRun {
            owner: owner.clone(),
            request,
            timeout,
            attachments,
            message,
        })
    }

    /// The second half of [`Supervisor::run`]: everything from the workspace on.
    pub async fn carry_out(
        &self,
        accepted: AcceptedRun,
        events: Option<mpsc::Sender<RunEvent>>,
    ) -> Result<RunReport> {
        let AcceptedRun {
            owner,
            request,
            timeout,
            attachments,
            message,
        } = accepted;
        let owner = &owner;
        let _lock = lock(&self.workspaces.get(&message.workspace_id)?).await?;
        // Prepared under the lock: the reaper may have removed the folder while we waited.
        let workspace = self.workspaces.prepare(&message.workspace_id)?;
        self.cap_workspace(&workspace).await?;
        let inputs = self.attach(&message, &workspace, &attachments).await?;
        self.prepare_sandbox(&message, &workspace).await?;
        let before = self.snapshot(&workspace).await?;
        let mut run = self.record_start(owner, &message, &request).await?;
        // From here on the run is in the catalog: whatever fails marks it failed there too.
        let finished = async {
            let outcome = self
                .execute(&workspace, &request, timeout, events.as_ref())
                .await?;
            let after = self.snapshot(&workspace).await?;
            let (files, truncated) = self
                .register(
                    owner,
                    &message,
                    &run,
                    &workspace,
                    &inputs,
                    &before,
                    &after,
                    events.as_ref(),
                )
                .await?;
            self.answer(&mut run, outcome, truncated, &workspace, &inputs, timeout)
                .await?;
            Ok(files)
        }
        .await;
        let files = match finished {
            Ok(files) => files,
            Err(error) => return Err(self.record_failure(run, error).await),
        };
        Ok(RunReport { run, files })
    }

    /// Step 0: refuses what cannot run, before anything is written. Returns the timeout.
    fn check(&self, request: &RunRequest) -> Result<Duration> {
        ids::check_external("chat_id", &request.chat_id)?;
        ids::check_external("message_id", &request.message_id)?;
        if !LANGUAGES.contains(&request.language.as_str()) {
            return Err(Error::invalid(
                "language",
                format!("{:?} is not one of {LANGUAGES:?}", request.language),
            ));
        }
        let limits = &self.config.limits;
        if request.code.len() as u64 > limits.max_code_bytes.as_u64() {
            return Err(Error::TooLarge(format!(
                "code is larger than {}",
                limits.max_code_bytes.display().iec()
            )));
        }
        let timeout = request.timeout.unwrap_or(limits.default_timeout);
        if timeout.is_zero() || timeout > limits.max_timeout {
            return Err(Error::invalid(
                "timeout_secs",
                format!(
                    "must be above 0 and at most {}",
                    limits.max_timeout.as_secs()
                ),
            ));
        }
        Ok(timeout)
    }

    /// Looks up the files to attach: each must be a live file of `owner`. Duplicates collapse.
    async fn attachments_of(&self, owner: &Owner, file_ids: &[String]) -> Result<Vec<FileRecord>> {
        let mut seen = BTreeSet::new();
        let mut files = Vec::new();
        for id in file_ids {
            if seen.insert(id.as_str()) {
                files.push(self.file(owner, id).await?);
            }
        }
        Ok(files)
    }

    /// Step 1: binds the message to (tenant, user, chat) on first use. A message bound to
    /// another user or chat is reported as not found, so message ids cannot be probed.
    async fn claim(&self, owner: &Owner, chat_id: &str, message_id: &str) -> Result<MessageRecord> {
        let message = self
            .catalog
            .messages()
            .claim(
                owner,
                chat_id,
                message_id,
                &ids::mint("ws"),
                &catalog::now(),
            )
            .await?;
        if message.is_bound_to(owner, chat_id) {
            Ok(message)
        } else {
            Err(Error::NotFound("message"))
        }
    }

    /// Step 2a: attaches the run's `files` to the message (each under a name free in the
    /// message), then places every live attachment of the message that is not in the
    /// workspace yet (new ones, uploads tied to the message, all of them in a new workspace)
    /// into `inputs/` (a hard link from the local blob store where possible, else a
    /// streamed copy) and links it into `data/`. Returns every placed attachment of the
    /// message, by its name in the workspace.
    async fn attach(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
        files: &[FileRecord],
    ) -> Result<Inputs> {
        let attachments = self.catalog.attachments();
        let attached: BTreeSet<String> = attachments
            .of_message(&message.tenant, &message.message_id)
            .await?
            .into_iter()
            .map(|attachment| attachment.file_id)
            .collect();
        for file in files.iter().filter(|file| !attached.contains(&file.id)) {
            self.reserve_name(message, workspace, file).await?;
        }
        let mut inputs = Inputs::new();
        for attachment in attachments
            .live_of_message(&message.tenant, &message.message_id)
            .await?
        {
            if workspace.input_inode(&attachment.name).is_some() {
                inputs.insert(attachment.name, attachment.file_id);
                continue;
            }
            let Some(file) = self
                .catalog
                .files()
                .get_live(&attachment.file_id)
                .await?
                .filter(|file| file.tenant == message.tenant && file.user_id == message.user_id)
            else {
                continue;
            };
            let name = self.free_placement(message, workspace, &attachment).await?;
            self.place_input(workspace, &name, &file).await?;
            workspace.link_input(&name)?;
            // A delete does not wait for this lock: if the file was deleted while it was being
            // placed, the delete may have looked before it was here, so it goes again now.
            if self.catalog.files().get_live(&file.id).await?.is_none() {
                workspace.remove_input(&name)?;
                continue;
            }
            inputs.insert(name, file.id);
        }
        Ok(inputs)
    }

    /// Attaches `file` to the message under a name free both in the workspace and among the
    /// message's attachments, and returns that name.
    async fn reserve_name(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
        file: &FileRecord,
    ) -> Result<String> {
        let attachments = self.catalog.attachments();
        loop {
            let held: BTreeSet<String> = attachments
                .live_of_message(&message.tenant, &message.message_id)
                .await?
                .into_iter()
                .map(|attachment| attachment.name)
                .collect();
            let name = workspace.free_name(&file.name, |name| held.contains(name))?;
            let record = AttachmentRecord {
                tenant: message.tenant.clone(),
                message_id: message.message_id.clone(),
                file_id: file.id.clone(),
                name: name.clone(),
                created_at: catalog::now(),
            };
            if attachments.reserve(&record).await? {
                return Ok(name);
            }
            // Someone else took the name (or attached this very file) meanwhile.
            if let Some(existing) = attachments
                .get(&message.tenant, &message.message_id, &file.id)
                .await?
            {
                return Ok(existing.name);
            }
        }
    }

    /// The name an attachment is placed under: its own, unless the code has since put
    /// something of its own there (then a free one, recorded).
    async fn free_placement(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
        attachment: &AttachmentRecord,
    ) -> Result<String> {
        let attachments = self.catalog.attachments();
        let mut name = attachment.name.clone();
        while workspace.is_taken(&name)? {
            let held: BTreeSet<String> = attachments
                .live_of_message(&message.tenant, &message.message_id)
                .await?
                .into_iter()
                .map(|attachment| attachment.name)
                .collect();
            name = workspace.free_name(&attachment.name, |name| held.contains(name))?;
            if !attachments
                .rename(
                    &message.tenant,
                    &message.message_id,
                    &attachment.file_id,
                    &name,
                )
                .await?
            {
                name = attachment.name.clone();
            }
        }
        Ok(name)
    }

    async fn place_input(
        &self,
        workspace: &Workspace,
        name: &str,
        file: &FileRecord,
    ) -> Result<()> {
        if let Some(source) = self.blobs.local_path(&file.blob_key)
            && workspace.place_input_by_link(name, &source)?
        {
            return Ok(());
        }
        let target = workspace.create_input(name)?;
        let mut target = tokio::fs::File::from_std(target);
        if let Err(error) = self.blobs.copy_to(&file.blob_key, &mut target).await {
            workspace.discard_input(name)?;
            return Err(error.into());
        }
        Ok(())
    }

    /// Step 2a': gives the workspace's `data/` its own capped file system, where the disk
    /// policy is `loop`. A sandbox made before that saw the bare folder (the host restarted,
    /// say): it goes, and the next step makes a new one on the mounted file system.
    async fn cap_workspace(&self, workspace: &Workspace) -> Result<()> {
        let workspaces = self.workspaces.clone();
        let mounting = workspace.clone();
        let mounted_now = tokio::task::spawn_blocking(move || workspaces.mount_data(&mounting))
            .await
            .map_err(|error| IoError {
                action: "mount",
                path: workspace.data.clone(),
                source: std::io::Error::other(error),
            })??;
        if mounted_now {
            self.runtime.release(&workspace.id).await?;
        }
        Ok(())
    }

    /// Step 2b: makes sure the message's sandbox runs, with the workspace mounted.
    async fn prepare_sandbox(&self, message: &MessageRecord, workspace: &Workspace) -> Result<()> {
        let spec = SandboxSpec {
            workspace_id: workspace.id.clone(),
            instance: self.instance.clone(),
            host_data: workspace.data.clone(),
            host_inputs: workspace.inputs.clone(),
            labels: vec![
                ("codebox.tenant".to_owned(), message.tenant.clone()),
                ("codebox.message".to_owned(), message.message_id.clone()),
            ],
        };
        self.runtime.ensure(&spec).await?;
        Ok(())
    }

    /// Steps 3 and 5: what `data/` holds, by `lstat` alone.
    async fn snapshot(&self, workspace: &Workspace) -> Result<Snapshot> {
        let data = workspace.data.clone();
        let limits = SnapshotLimits {
            max_depth: self.config.limits.max_depth,
            max_entries: self.config.limits.max_snapshot_entries,
        };
        let taken = tokio::task::spawn_blocking(move || snapshot::take(&data, limits))
            .await
            .map_err(|error| IoError {
                action: "snapshot",
                path: workspace.data.clone(),
                source: std::io::Error::other(error),
            })?;
        Ok(taken.with_path("snapshot", &workspace.data)?)
    }

    /// Records the run as `running` before it starts, so that a crash leaves a trace.
    async fn record_start(
        &self,
        owner: &Owner,
        message: &MessageRecord,
        request: &RunRequest,
    ) -> Result<RunRecord> {
        let now = catalog::now();
        self.catalog
            .messages()
            .touch(&message.tenant, &message.message_id, &now)
            .await?;
        let run = RunRecord {
            id: ids::mint("run"),
            tenant: owner.tenant.clone(),
            user_id: owner.user.clone(),
            chat_id: message.chat_id.clone(),
            message_id: message.message_id.clone(),
            language: request.language.clone(),
            status: RunStatus::Running,
            exit_code: None,
            reason: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            truncated: Vec::new(),
            duration_ms: 0,
            created_at: now,
            finished_at: None,
        };
        self.catalog.runs().insert_running(&run).await?;
        self.catalog
            .runs()
            .set_instance(&run.id, &self.instance)
            .await?;
        Ok(run)
    }

    /// Step 4: runs the code in the sandbox, forwarding translated output to `events`.
    async fn execute(
        &self,
        workspace: &Workspace,
        request: &RunRequest,
        timeout: Duration,
        events: Option<&mpsc::Sender<RunEvent>>,
    ) -> Result<ExecOutcome> {
        let paths = path_map(workspace);
        let code = if self.runtime.mounts_workspace() {
            request.code.clone()
        } else {
            translate::to_host_paths(&request.code, &paths)
        };
        let exec = ExecRequest {
            code,
            timeout,
            max_output_bytes: usize::try_from(self.config.limits.max_output_bytes.as_u64())
                .unwrap_or(usize::MAX),
        };
        let Some(events) = events else {
            return self.exec_within_disk_cap(workspace, &exec, None).await;
        };
        // Output is translated on its way to the caller by a small relay task.
        let (chunks, mut received) = mpsc::channel::<OutputChunk>(64);
        let events = events.clone();
        let relay = tokio::spawn(async move {
            while let Some(chunk) = received.recv().await {
                let event =
                    match chunk {
                        OutputChunk::Stdout(bytes) => RunEvent::Stdout(
                            translate::to_sandbox_paths(&String::from_utf8_lossy(&bytes), &paths),
                        ),
                        OutputChunk::Stderr(bytes) => RunEvent::Stderr(
                            translate::to_sandbox_paths(&String::from_utf8_lossy(&bytes), &paths),
                        ),
                    };
                let _ = events.send(event).await;
            }
        });
        let outcome = self
            .exec_within_disk_cap(workspace, &exec, Some(&chunks))
            .await;
        drop(chunks);
        // A consumer that does not read may not hold the run: what it has not taken by then
        // is dropped from the stream (the run's record carries all of it).
        let mut relay = relay;
        if tokio::time::timeout(EVENT_WAIT, &mut relay).await.is_err() {
            relay.abort();
        }
        outcome
    }

    /// Executes while watching the workspace's disk cap: a run that fills `/mnt/data` has all
    /// its processes killed from outside the sandbox at once, and is reported as killed with
    /// reason [`DISK_QUOTA`] (also when it filled the disk and ended by itself between two
    /// checks), with a line on stderr that says which cap it hit.
    async fn exec_within_disk_cap(
        &self,
        workspace: &Workspace,
        exec: &ExecRequest,
        live: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome> {
        let before = disk_usage(workspace).await;
        let running = self.runtime.exec(&workspace.id, exec, live);
        tokio::pin!(running);
        let watched = disk_filled(workspace.clone(), before.clone());
        tokio::pin!(watched);
        let (outcome, mut full) = tokio::select! {
            outcome = &mut running => (outcome?, None),
            reason = &mut watched => {
                self.runtime.kill_processes(&workspace.id).await?;
                (running.await?, Some(reason))
            }
        };
        if full.is_none()
            && !outcome.timed_out
            && let (Some(before), Some(after)) = (&before, disk_usage(workspace).await)
        {
            full = after.filled_since(before).map(str::to_owned);
        }
        let mut outcome = outcome;
        if let Some(reason) = full {
            outcome.killed_reason = Some(DISK_QUOTA.to_owned());
            if !outcome.stderr.is_empty() && !outcome.stderr.ends_with(b"\n") {
                outcome.stderr.push(b'\n');
            }
            outcome
                .stderr
                .extend_from_slice(format!("codebox: killed: {reason}\n").as_bytes());
        }
        Ok(outcome)
    }

    /// Marks a run that could not be carried through as failed, and returns the error to
    /// report.
    async fn record_failure(&self, mut run: RunRecord, error: Error) -> Error {
        run.status = RunStatus::Failed;
        run.reason = Some("codebox could not carry the run through".to_owned());
        run.finished_at = Some(catalog::now());
        if let Err(record_error) = self.catalog.runs().finish(&run).await {
            tracing::error!(run = %run.id, error = %record_error, "could not record a failed run");
        }
        error
    }

    /// Step 6: stores every created or modified file with a tracked extension, within the
    /// caps, and records it. Everything a cap or a check left out is returned as a
    /// truncation, never dropped silently.
    #[allow(clippy::too_many_arguments)]
    async fn register(
        &self,
        owner: &Owner,
        message: &MessageRecord,
        run: &RunRecord,
        workspace: &Workspace,
        inputs: &Inputs,
        before: &Snapshot,
        after: &Snapshot,
        events: Option<&mpsc::Sender<RunEvent>>,
    ) -> Result<(Vec<FileRecord>, Vec<Truncation>)> {
        let limits = &self.config.limits;
        let changes = snapshot::diff(before, after);
        let mut truncated = omissions(before, after, &self.config, limits.max_depth);
        let mut candidates: Vec<&Path> = changes
            .created
            .iter()
            .chain(&changes.modified)
            .map(|path| path.as_path())
            .collect();
        candidates.sort();
        let mut files = Vec::new();
        for relative in candidates {
            // Only an untracked extension lets a file go unreported; the check reads bytes, so
            // a name that is not valid UTF-8 is reported below rather than skipped here.
            let Some(name) = relative.file_name() else {
                continue;
            };
            if !self.config.outputs.is_tracked(name) {
                continue;
            }
            let shown = format!("{SANDBOX_DATA}/{}", relative.to_string_lossy());
            let mut skip = |reason: String| {
                truncated.push(Truncation {
                    path: shown.clone(),
                    reason,
                })
            };
            let Some(name) = name.to_str() else {
                skip("the name is not valid UTF-8: not registered".to_owned());
                continue;
            };
            let Some(relative_text) = relative.to_str() else {
                skip("the path is not valid UTF-8: not registered".to_owned());
                continue;
            };
            let Some(entry) = after.entries.get(relative) else {
                continue;
            };
            match &entry.kind {
                EntryKind::File => {}
                EntryKind::Symlink(_) => {
                    skip("a symbolic link, not a file: not registered".to_owned());
                    continue;
                }
                EntryKind::Dir | EntryKind::Other => {
                    skip("not a regular file".to_owned());
                    continue;
                }
            }
            if relative_text.len() > limits.max_path_bytes {
                skip(format!("path longer than {} bytes", limits.max_path_bytes));
                continue;
            }
            if entry.size > limits.max_file_bytes.as_u64() {
                skip(too_big(limits.max_file_bytes));
                continue;
            }
            if files.len() >= limits.max_files_per_run {
                skip(format!(
                    "over the limit of {} files per run",
                    limits.max_files_per_run
                ));
                continue;
            }
            let derived_from = match before.entries.get(relative).map(|entry| &entry.kind) {
                Some(EntryKind::Symlink(target)) => Workspace::input_name_of_link(target)
                    .and_then(|input| inputs.get(&input).cloned()),
                _ => None,
            };
            let stored = match self.store_output(workspace, relative).await {
                Ok(stored) => stored,
                Err(Stored::Skipped(reason)) => {
                    skip(reason);
                    continue;
                }
                Err(Stored::Failed(error)) => return Err(error),
            };
            let record = FileRecord {
                id: stored.0,
                tenant: owner.tenant.clone(),
                user_id: owner.user.clone(),
                chat_id: Some(message.chat_id.clone()),
                message_id: Some(message.message_id.clone()),
                run_id: Some(run.id.clone()),
                name: name.to_owned(),
                path: format!("{SANDBOX_DATA}/{relative_text}"),
                size: i64::try_from(stored.1.size).unwrap_or(i64::MAX),
                content_type: content_type_of(name),
                sha256: stored.1.sha256,
                source: FileSource::CodeExecution,
                derived_from,
                blob_key: stored.1.key,
                created_at: catalog::now(),
                deleted_at: None,
            };
            if let Err(error) = self.catalog.files().insert(&record).await {
                self.delete_orphan_blob(&record.blob_key).await;
                return Err(error.into());
            }
            if let Some(events) = events {
                let event = RunEvent::File(Box::new(record.clone()));
                let _ = tokio::time::timeout(EVENT_WAIT, events.send(event)).await;
            }
            files.push(record);
        }
        Ok((files, truncated))
    }

    /// Streams one output into the blob store: opened without following any link, regular
    /// files only, capped while streaming (the file may still be growing).
    async fn store_output(
        &self,
        workspace: &Workspace,
        relative: &Path,
    ) -> Result<(String, crate::blobs::Stored), Stored> {
        let limit = self.config.limits.max_file_bytes;
        let data = workspace.data.clone();
        let owned = relative.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || workspace::open_beneath(&data, &owned))
            .await
            .map_err(|error| {
                Stored::Failed(
                    IoError {
                        action: "open",
                        path: relative.to_path_buf(),
                        source: std::io::Error::other(error),
                    }
                    .into(),
                )
            })?;
        let (file, size) = match opened {
            Ok(opened) => opened,
            // The sandbox controls this tree: whatever it did to the entry since the snapshot
            // (removed it, swapped in a link) means the file is not registered, with a reason.
            Err(error) => {
                return Err(Stored::Skipped(format!(
                    "could not be opened safely: {error}"
                )));
            }
        };
        if size > limit.as_u64() {
            return Err(Stored::Skipped(too_big(limit)));
        }
        let id = ids::mint("file");
        let key = Blobs::file_key(&id);
        match self
            .blobs
            .put_stream(&key, tokio::fs::File::from_std(file), limit.as_u64())
            .await
        {
            Ok(stored) => Ok((id, stored)),
            Err(BlobError::TooLarge { .. }) => Err(Stored::Skipped(too_big(limit))),
            Err(error) => Err(Stored::Failed(error.into())),
        }
    }

    /// Steps 7 and 8: translates the output, turns the outcome into a status and records it.
    async fn answer(
        &self,
        run: &mut RunRecord,
        outcome: ExecOutcome,
        truncated: Vec<Truncation>,
        workspace: &Workspace,
        inputs: &Inputs,
        timeout: Duration,
    ) -> Result<()> {
        let paths = path_map(workspace);
        let stdout = translate::to_sandbox_paths(&String::from_utf8_lossy(&outcome.stdout), &paths);
        let mut stderr =
            translate::to_sandbox_paths(&String::from_utf8_lossy(&outcome.stderr), &paths);
        if wrote_to_attachment(&stderr, inputs) {
            if !stderr.ends_with('\n') && !stderr.is_empty() {
                stderr.push('\n');
            }
            stderr.push_str(READ_ONLY_HINT);
            stderr.push('\n');
        }
        let (status, reason) = if outcome.timed_out {
            (
                RunStatus::TimedOut,
                Some(format!(
                    "wall-clock limit of {} reached",
                    humantime::format_duration(timeout)
                )),
            )
        } else if let Some(reason) = outcome.killed_reason {
            (RunStatus::Killed, Some(reason))
        } else if outcome.exit_code == Some(0) {
            (RunStatus::Succeeded, None)
        } else {
            (RunStatus::Failed, None)
        };
        run.status = status;
        run.reason = reason;
        run.exit_code = outcome.exit_code;
        run.stdout = stdout;
        run.stderr = stderr;
        run.stdout_truncated = outcome.stdout_truncated;
        run.stderr_truncated = outcome.stderr_truncated;
        run.truncated = truncated;
        run.duration_ms = i64::try_from(outcome.duration.as_millis()).unwrap_or(i64::MAX);
        run.finished_at = Some(catalog::now());
        self.catalog.runs().finish(run).await?;
        Ok(())
    }
}

/// A message's attachments: file id by name in the workspace.
type Inputs = HashMap<String, String>;

/// The `reason` of a run killed because `/mnt/data` reached its cap.
pub const DISK_QUOTA: &str = "disk_quota";

/// Resolves, with a sentence saying which cap, once the run fills the workspace's `data/`
/// up to its cap (it is full, and holds more than `before`); never, if it does not.
async fn disk_filled(workspace: Workspace, before: Option<crate::disk::Usage>) -> String {
    let (Some(interval), Some(before)) = (workspace.disk_check_interval(), before) else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(now) = disk_usage(&workspace).await
            && let Some(reason) = now.filled_since(&before)
        {
            return reason.to_owned();
        }
    }
}

/// [`Workspace::disk_usage`] on a blocking thread: in watchdog mode it walks the folder.
async fn disk_usage(workspace: &Workspace) -> Option<crate::disk::Usage> {
    let checked = workspace.clone();
    tokio::task::spawn_blocking(move || checked.disk_usage())
        .await
        .ok()
        .flatten()
}

/// Why an output was not stored.
enum Stored {
    /// A check or cap left it out; the reason is reported to the caller.
    Skipped(String),
    /// The stores failed.
    Failed(Error),
}

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
fn attachment_path(name: &str) -> String {
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

fn too_big(limit: ByteSize) -> String {
    format!("larger than the limit of {}", limit.display().iec())
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

/// Truncations for what the after-snapshot left out that could hide an output of this run:
/// - a folder below the depth cap, and one that could not be read, every time: what they hold
///   was not looked at, so a file the code wrote there cannot be ruled out;
/// - an entry below the depth cap with a tracked extension, when this run created or changed
///   it (the before-snapshot described it otherwise, or not at all);
/// - the entry cap, every time it is reached: files past it were not looked at, even when an
///   earlier run had already filled the workspace up to it.
fn omissions(
    before: &Snapshot,
    after: &Snapshot,
    config: &Config,
    max_depth: usize,
) -> Vec<Truncation> {
    let described: HashMap<&Path, &snapshot::Entry> = before
        .omissions
        .iter()
        .filter_map(|omission| match omission {
            Omission::TooDeep(path, entry) => Some((path.as_path(), entry)),
            _ => None,
        })
        .collect();
    let shown = |path: &Path| format!("{SANDBOX_DATA}/{}", path.to_string_lossy());
    let mut truncations = Vec::new();
    for omission in &after.omissions {
        match omission {
            Omission::TooDeep(path, entry) if entry.kind == EntryKind::Dir => {
                truncations.push(Truncation {
                    path: shown(path),
                    reason: format!(
                        "a folder deeper than {max_depth} folders: nothing in it was looked at"
                    ),
                });
            }
            Omission::TooDeep(path, entry) => {
                let tracked = path
                    .file_name()
                    .is_some_and(|name| config.outputs.is_tracked(name));
                if tracked && described.get(path.as_path()) != Some(&entry) {
                    truncations.push(Truncation {
                        path: shown(path),
                        reason: format!("deeper than {max_depth} folders: not looked at"),
                    });
                }
            }
            Omission::TooManyEntries => truncations.push(Truncation {
                path: SANDBOX_DATA.to_owned(),
                reason: format!(
                    "more than {} entries: the rest was not looked at",
                    config.limits.max_snapshot_entries
                ),
            }),
            Omission::Unreadable(path) => truncations.push(Truncation {
                path: shown(path),
                reason: "could not be read: not looked at".to_owned(),
            }),
        }
    }
    truncations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_hint_needs_both_signs() {
        let inputs = Inputs::from([("a.csv".to_owned(), "file_1".to_owned())]);
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
    fn omissions_hide_nothing_an_earlier_run_also_missed() {
        let config = Config::default();
        let file = |size| snapshot::Entry {
            kind: EntryKind::File,
            size,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 7,
        };
        let folder = snapshot::Entry {
            kind: EntryKind::Dir,
            ..file(0)
        };
        let before = Snapshot {
            entries: Default::default(),
            omissions: vec![
                Omission::Unreadable("locked".into()),
                Omission::TooDeep("a/changed.csv".into(), file(1)),
                Omission::TooDeep("a/same.csv".into(), file(1)),
                Omission::TooDeep("a/c".into(), folder.clone()),
                Omission::TooManyEntries,
            ],
        };
        let after = Snapshot {
            entries: Default::default(),
            omissions: vec![
                Omission::Unreadable("locked".into()),
                Omission::TooDeep("a/changed.csv".into(), file(2)),
                Omission::TooDeep("a/same.csv".into(), file(1)),
                Omission::TooDeep("a/c".into(), folder),
                Omission::TooDeep("a/new.csv".into(), file(1)),
                Omission::TooDeep("a/notes.txt".into(), file(1)),
                Omission::TooManyEntries,
            ],
        };
        let lines: Vec<String> = omissions(&before, &after, &config, 1)
            .into_iter()
            .map(|t| format!("{}: {}", t.path, t.reason))
            .collect();
        assert_eq!(
            lines,
            [
                "/mnt/data/locked: could not be read: not looked at",
                "/mnt/data/a/changed.csv: deeper than 1 folders: not looked at",
                "/mnt/data/a/c: a folder deeper than 1 folders: nothing in it was looked at",
                "/mnt/data/a/new.csv: deeper than 1 folders: not looked at",
                "/mnt/data: more than 20000 entries: the rest was not looked at",
            ]
        );
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
