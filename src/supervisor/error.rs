//! The domain error every public operation of the supervisor returns.
//!
//! Its variants are the outcomes a caller must tell apart (not found, invalid, too large,
//! over a quota, name taken, unsupported, busy) plus the internal failures of each part the
//! supervisor drives. Only `api/` turns them into statuses, in one place; here they carry
//! enough context for a log line, and
//! nothing a user should not see is put into the messages of the user-facing variants. It
//! lives with the supervisor, above the parts it wraps, so that no part depends on another
//! through it.

use crate::blobs::BlobError;
use crate::catalog::{CatalogError, QuotaScope};
use crate::error::IoError;
use crate::ids::{ChatId, FileId, InvalidId, MessageId};
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
    /// Storing this would take the user or their tenant past a quota (stored bytes, or
    /// workspaces' bytes on disk); the message says which, how much is used, and what frees
    /// room. Nothing was stored.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A live file of the user's own workspace already has this name.
    #[error("a file named {0:?} already exists in your files")]
    NameTaken(String),
    /// The file's type is not one this operation takes (an upload's extension, a text view
    /// of a binary); the message says which and why.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Deleting the file needs the caller's confirmation: it is attached to messages of a
    /// chat that still exists, whose runs would lose it.
    #[error(
        "the file is attached to messages of chat {chat_id}; delete it with confirm=true, and those messages list it as file_deleted"
    )]
    ConfirmationRequired {
        /// The file.
        file_id: FileId,
        /// The chat of the first message that attaches it.
        chat_id: ChatId,
        /// Every message that still attaches it.
        message_ids: Vec<MessageId>,
    },
    /// No tool has this name (`POST /v1/tools/{name}`); the message lists the tools.
    #[error(
        "tool {0:?} not found; the tools are run_code, list_files, read_file, write_file and delete_file"
    )]
    NoSuchTool(String),
    /// The service is at capacity; try again later.
    #[error("busy: {0}")]
    Busy(String),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(CatalogError),
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

    /// Whether this is an outage of a part the service needs (the container engine does not
    /// answer) rather than a fault: callers should retry later.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Runtime(RuntimeError::Unreachable(_)))
    }

    /// The failure of reading the caller's own bytes, when that is what stopped a store: the
    /// body broke, was too large or too slow, which is the caller's error and not the store's.
    pub fn source_read_failure(&self) -> Option<&std::io::Error> {
        match self {
            Self::Blobs(BlobError::Read(io)) => Some(io),
            _ => None,
        }
    }
}

/// The catalog's refusal of a taken name is the caller's conflict, not a failure.
impl From<CatalogError> for Error {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::NameTaken(name) => Self::NameTaken(name),
            CatalogError::QuotaExceeded { scope, used, limit } => {
                Self::QuotaExceeded(quota_message(scope, used, limit))
            }
            other => Self::Catalog(other),
        }
    }
}

impl From<InvalidId> for Error {
    fn from(invalid: InvalidId) -> Self {
        Self::Invalid {
            field: invalid.field,
            reason: invalid.reason,
        }
    }
}

/// A refusal by a stored-bytes quota, in words a user can act on.
fn quota_message(scope: QuotaScope, used: u64, limit: u64) -> String {
    let whose = match scope {
        QuotaScope::User => "your files",
        QuotaScope::Tenant => "your organisation's files",
    };
    format!(
        "{whose} already take {} of the {} they may keep; delete files to make room",
        bytesize::ByteSize::b(used).display().iec(),
        bytesize::ByteSize::b(limit).display().iec()
    )
}

/// The result type of the supervisor's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
