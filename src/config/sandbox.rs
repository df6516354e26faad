//! The `[sandbox]` section: how each sandbox is made (image, user, OCI runtime), what it may
//! use (memory, CPUs, processes, files, `/tmp`), how its `/mnt/data` is capped, and what a
//! fresh interpreter does before its first run (preloaded modules, `init_code`, the warm pool).

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// The workspace folder as the sandbox sees it: the one path code and chat text name.
pub const SANDBOX_DATA: &str = "/mnt/data";
/// The attachments folder as the sandbox sees it (read-only originals).
pub const SANDBOX_INPUTS: &str = "/mnt/inputs";
/// The sandbox's home folder. The root file system is mounted read-only at run time, so a
/// home under `/home` could not be written; `/tmp` is a tmpfs every user may write (mode
/// 1777), and tools that keep state in `$HOME` (matplotlib, pip, IPython) need it writable.
/// The image builder sets the same value, so the image run alone behaves alike.
pub const SANDBOX_HOME: &str = "/tmp";
/// The non-root `uid:gid` sandboxes run as unless `sandbox.user` says otherwise; the images
/// codebox builds are made for it.
pub const DEFAULT_SANDBOX_USER: &str = "1000:1000";

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
            user: DEFAULT_SANDBOX_USER.to_owned(),
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
