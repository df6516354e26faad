//! The `[limits]` section: the caps on one run (time, code, output, registered files, the
//! snapshot's walk, uploads, rich outputs). Each cap that cuts something off is reported to the
//! caller; this file only holds the numbers and their defaults.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

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
