//! The `[retention]` section: how long idle containers, idle workspaces and files are kept,
//! how much disk all workspaces together may use, how much the disk must keep free, and how
//! old a blob without a catalog row must be before it is swept. The reaper (the supervisor's
//! `reap`) reads it.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

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
    /// The disk watermark: when the file system that holds the workspaces has less free
    /// space than this, idle workspaces are removed early, least recently used first, until
    /// it has this much again (or no idle one is left). Unset means no watermark.
    pub min_free_disk: Option<ByteSize>,
    /// How often the reaper runs inside `codebox serve`.
    #[serde(with = "humantime_serde")]
    pub reap_interval: Duration,
    /// A blob no catalog row names (left by a crash between storing the bytes and recording
    /// them) is swept once it is this old. The bytes of an upload or a registration in
    /// flight have no row yet: the grace must outlast the longest of them.
    #[serde(with = "humantime_serde")]
    pub orphan_blob_grace: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            container_idle: Duration::from_secs(10 * 60),
            workspace_idle: Duration::from_secs(24 * 3600),
            file_ttl: None,
            deleted_file_grace: Duration::from_secs(24 * 3600),
            max_workspace_bytes: None,
            min_free_disk: None,
            reap_interval: Duration::from_secs(60),
            orphan_blob_grace: Duration::from_secs(3600),
        }
    }
}
