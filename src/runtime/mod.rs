//! The seam between the supervisor and whatever runs the code.
//!
//! [`Runtime`] is what the supervisor needs from a back end: a sandbox per workspace holding
//! one live interpreter (a kernel) that runs the message's cells one after another in one
//! namespace, with limits, and that can be listed and released. [`DockerRuntime`] is the back
//! end on the local Docker engine; [`EnterpriseGatewayRuntime`] runs each workspace's kernel on
//! a Jupyter Enterprise Gateway, which isolates only as far as its process proxy does.
//! [`image_build`] builds the sandbox image (`codebox image build`), and [`image`] holds the
//! engine calls it makes.

mod cgroup;
mod channel;
mod docker;
mod engine;
mod gateway;
pub mod image;
pub mod image_build;
mod kernel;
mod live;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use docker::DockerRuntime;
pub use gateway::EnterpriseGatewayRuntime;

pub use crate::config::{SANDBOX_DATA, SANDBOX_HOME, SANDBOX_INPUTS};

/// The label every codebox sandbox carries (`true`): [`Runtime::list`] finds its sandboxes by
/// it, and nothing else on the engine is touched.
pub const MANAGED_LABEL: &str = "codebox.managed";
/// The label that names the workspace a sandbox serves.
pub const WORKSPACE_LABEL: &str = "codebox.workspace";
/// The label that names the codebox instance a sandbox belongs to.
pub const INSTANCE_LABEL: &str = "codebox.instance";
/// The label that names the tenant of the message a sandbox serves, for operators only.
const TENANT_LABEL: &str = "codebox.tenant";
/// The label that names the message a sandbox serves, for operators only.
const MESSAGE_LABEL: &str = "codebox.message";
/// The label of a warm-pool sandbox (`true`), which no message holds yet.
pub const POOL_LABEL: &str = "codebox.pool";

/// The [`SandboxSpec::labels`] of a sandbox that serves message `message_id` of `tenant`.
pub fn message_labels(tenant: &str, message_id: &str) -> Vec<(String, String)> {
    vec![
        (TENANT_LABEL.to_owned(), tenant.to_owned()),
        (MESSAGE_LABEL.to_owned(), message_id.to_owned()),
    ]
}

/// What a sandbox is made for: one workspace.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The workspace the sandbox serves; it names the sandbox.
    pub workspace_id: String,
    /// The codebox instance (one data folder) the sandbox belongs to: reconciling only ever
    /// touches an instance's own sandboxes, so several instances can share one engine.
    pub instance: String,
    /// The host folder to show read-write at [`SANDBOX_DATA`].
    pub host_data: PathBuf,
    /// The host folder to show read-only at [`SANDBOX_INPUTS`].
    pub host_inputs: PathBuf,
    /// Extra labels for operators (tenant, message); never used for decisions.
    pub labels: Vec<(String, String)>,
    /// Modules a fresh interpreter imports before `ensure` returns: for a sandbox that will
    /// wait in the warm pool. Empty when a run waits for the sandbox: its code imports what
    /// it uses, and nobody waits for the rest.
    pub preload: Vec<String>,
}

/// One execution of code: a cell of the message's interpreter.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The program. It reaches the interpreter through its channel, never through the
    /// workspace.
    pub code: String,
    /// Code run first when the interpreter is fresh (no cell has run in it yet).
    pub init_code: Option<String>,
    /// Wall-clock limit; past it the cell is interrupted, and an interpreter that does not
    /// stop is killed.
    pub timeout: Duration,
    /// Bytes kept of stdout, and separately of stderr, and of each text of a rich output;
    /// the rest is counted and dropped.
    pub max_output_bytes: usize,
    /// Rich outputs kept; the rest are dropped and reported.
    pub max_outputs: usize,
    /// The largest figure kept, in bytes of PNG.
    pub max_image_bytes: usize,
    /// Whether an exception's traceback is also written to stderr, as `python3 -` does; a
    /// notebook client shows the `error` output alone.
    pub tracebacks_on_stderr: bool,
}

/// A piece of output as it happens, for callers that stream it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    /// Standard output.
    Stdout(Bytes),
    /// Standard error.
    Stderr(Bytes),
    /// A rich output.
    Output(RichOutput),
}

/// A rich output of a cell, as a notebook shows it. Everything in it came from the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RichOutput {
    /// The value of the cell's last expression, or something it displayed, by MIME type.
    Result {
        /// `text/plain`, and `text/html` or `text/markdown` where the value has them.
        data: BTreeMap<String, String>,
    },
    /// A figure, as PNG bytes (checked to start as a PNG, nothing more).
    Image {
        /// The bytes.
        png: Bytes,
    },
    /// An exception the cell raised.
    Error {
        /// Its type's name.
        ename: String,
        /// Its message.
        evalue: String,
        /// The traceback's lines.
        traceback: Vec<String>,
    },
}

/// Why an interpreter ended before its message was done with it. Its name (`timeout`) is the
/// word the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum KernelEnd {
    /// A cell ignored the interrupt at its deadline and was killed.
    Timeout,
    /// The interpreter exited or broke its channel.
    Crashed,
    /// The memory limit killed it.
    Memory,
    /// The caller asked for a fresh one.
    Requested,
}

/// The interpreter [`Runtime::ensure`] found or started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelStart {
    /// Whether it was started by this call: nothing of earlier cells is in it.
    pub fresh: bool,
    /// Why the previous interpreter of this sandbox ended, when this runtime saw it end.
    pub previous_end: Option<KernelEnd>,
}

/// How an execution ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutcome {
    /// The interpreter's exit status (128 + signal when a signal ended it), if known.
    pub exit_code: Option<i64>,
    /// Standard output, up to the cap.
    pub stdout: Vec<u8>,
    /// Standard error, up to the cap.
    pub stderr: Vec<u8>,
    /// Whether stdout went past the cap.
    pub stdout_truncated: bool,
    /// Whether stderr went past the cap.
    pub stderr_truncated: bool,
    /// Whether the wall-clock limit ended it.
    pub timed_out: bool,
    /// Set when a limit the runtime enforces (memory) killed it, saying which.
    pub killed_reason: Option<String>,
    /// Wall-clock time from start to end.
    pub duration: Duration,
    /// Rich outputs, in order.
    pub outputs: Vec<RichOutput>,
    /// Whether rich outputs past the cap were dropped.
    pub outputs_truncated: bool,
    /// The cell's number in its interpreter (1 for the first).
    pub execution_count: u64,
    /// Set when the interpreter did not survive the cell, saying why; the next `ensure`
    /// starts a fresh one.
    pub kernel_lost: Option<KernelEnd>,
}

/// A sandbox this runtime manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// The workspace it serves.
    pub workspace_id: String,
    /// The codebox instance that made it, if it says.
    pub instance: Option<String>,
    /// The back end's own id for it.
    pub sandbox_id: String,
    /// Whether it is running now.
    pub running: bool,
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine did not answer; the message is one line an operator can act on.
    #[error("{0}")]
    Unreachable(String),
    /// The configured image is not on the engine.
    #[error("sandbox image {0} is missing; build it with `codebox image build`")]
    ImageMissing(String),
    /// The engine refused or failed a request.
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// The Jupyter Enterprise Gateway refused or failed a request.
    #[error("gateway: {0}")]
    Gateway(String),
    /// The sandbox misbehaved in a way the runtime could not handle.
    #[error("sandbox {workspace_id}: {reason}")]
    Sandbox {
        /// The workspace concerned.
        workspace_id: String,
        /// What happened.
        reason: String,
    },
}

/// A back end that runs code in sandboxes, one per workspace, each with one live interpreter.
///
/// Every method is safe to call concurrently for different workspaces; the supervisor never
/// calls `ensure`/`exec`/`restart`/`release` concurrently for the same workspace.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Makes sure the sandbox of `spec.workspace_id` exists and its interpreter is live and
    /// ready for a cell: creates the sandbox on first use (hardened, labelled as codebox's),
    /// starts a fresh interpreter when the last one ended, and reuses a live one. Calling it
    /// again changes nothing. Says whether the interpreter is fresh, and why the last ended.
    async fn ensure(&self, spec: &SandboxSpec) -> Result<KernelStart, RuntimeError>;

    /// Runs `request.code` as the next cell of the interpreter of `workspace_id`, which
    /// `ensure` prepared. Output is forwarded to `live` as it comes (if given) and kept up to
    /// the caps. Past the deadline the cell is interrupted; an interpreter that does not stop
    /// within a grace is killed (`kernel_lost`). When this returns, no process started by the
    /// cell is left in the sandbox but the interpreter itself: whatever it left behind is
    /// killed from outside the sandbox (nothing the code can disable), or the sandbox is
    /// killed when that is not possible.
    async fn exec(
        &self,
        workspace_id: &str,
        request: &ExecRequest,
        live: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, RuntimeError>;

    /// Kills every process of the code of `workspace_id` now, from outside the sandbox, the
    /// interpreter included (the code runs in it): a cell in progress ends as killed, its
    /// `kernel_lost` set, and the next `ensure` starts a fresh interpreter. The workspace is
    /// untouched. A sandbox that is gone is success.
    async fn kill_processes(&self, workspace_id: &str) -> Result<(), RuntimeError>;

    /// Interrupts the cell the interpreter of `workspace_id` is running, as a notebook's
    /// interrupt does (KeyboardInterrupt in the cell); between cells nothing happens. A
    /// sandbox that is gone, or has no live interpreter, is success.
    async fn interrupt(&self, workspace_id: &str) -> Result<(), RuntimeError>;

    /// Ends the interpreter of `workspace_id` now, so that the next `ensure` starts a fresh
    /// one (reporting [`KernelEnd::Requested`]). A sandbox that is gone is success.
    async fn restart(&self, workspace_id: &str) -> Result<(), RuntimeError>;

    /// Removes the sandbox of `workspace_id`. Idempotent: a sandbox that is already gone
    /// (Docker's 404) is success. The workspace folder is not touched.
    async fn release(&self, workspace_id: &str) -> Result<(), RuntimeError>;

    /// Every sandbox this runtime manages (by label), for reconciling with the catalog.
    async fn list(&self) -> Result<Vec<SandboxInfo>, RuntimeError>;

    /// Checks that the back end answers, for readiness probes.
    async fn ping(&self) -> Result<(), RuntimeError>;

    /// Checks that sandboxes can mount `folder` of this machine: a bind mount needs the engine
    /// on the same host (or file system) as codebox. Runtimes that do not bind-mount succeed.
    async fn check_host_folder(&self, _folder: &std::path::Path) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Whether code sees the workspace at [`SANDBOX_DATA`]. A runtime that sees the host's
    /// paths instead (a remote kernel on a shared file system) returns `false`, and the
    /// supervisor rewrites `/mnt/data` in the code before sending it.
    fn mounts_workspace(&self) -> bool {
        true
    }
}
