//! The domain error every public operation of the supervisor returns.
//!
//! Its variants are the outcomes a caller must tell apart (not found, invalid, too large,
//! busy) plus the internal failures of each part. Only `api/` turns them into statuses, in one
//! place; here they carry enough context for a log line and nothing a user should not see is
//! put into the messages of the user-facing variants.

use std::path::{Path, PathBuf};

use crate::blobs::BlobError;
use crate::catalog::CatalogError;
use crate::runtime::RuntimeError;

/// What went wrong, as far as a caller needs to know.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing does not exist or is not the caller's: both answer the same so ids cannot be probed.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is malformed; the message says which field and why.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The request field at fault.
        field: &'static str,
        /// Why it was refused, in words a caller can act on.
        reason: String,
    },
    /// The request or one of its parts is over a configured cap.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The service is at capacity; try again later.
    #[error("busy: {0}")]
    Busy(String),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The blob store failed.
    #[error(transparent)]
    Blobs(#[from] BlobError),
    /// The container runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A file or folder on this machine could not be used.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

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

/// The result type of the supervisor's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
