//! IO errors that carry their path: every module that touches the file system reports what it
//! was doing and to which path, so a log line names the file without a second look.
//!
//! This is a leaf: it knows nothing of the other modules. The domain error that callers see
//! is the supervisor's `Error`, which wraps this one.

use std::path::{Path, PathBuf};

/// An IO error together with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct IoError {
    /// What was being done, as a verb: "create", "read", "link", ...
    pub action: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The operating system's reason.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// Wraps an IO error with what was being done and to which path.
    pub fn from_io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Attaches the action and path to an IO result, so that every IO error names its path.
pub trait IoContext<T> {
    /// Wraps the error with `action` and `path`.
    fn with_path(self, action: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn with_path(self, action: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError {
            action,
            path: path.to_owned(),
            source,
        })
    }
}
