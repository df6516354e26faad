//! The one error type of the image builder. Every message is a complete line that already
//! includes its cause, so the command can print it as it is; it has a file of its own because
//! every build step returns it.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::runtime::image::ImageEngineError;

/// Errors of [`build`](super::build) and [`image_state`](super::image_state).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The engine could not be reached or failed a request.
    #[error(transparent)]
    Engine(#[from] ImageEngineError),

    /// A file or directory could not be read, written or executed.
    #[error("cannot {action} {}: {cause}", .path.display())]
    Io {
        /// What was attempted, such as `read` or `run`.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// What went wrong.
        cause: std::io::Error,
    },

    /// A line of a package list holds something that is not a Debian package
    /// name.
    #[error("invalid package name `{name}` in {} line {line}", .path.display())]
    InvalidPackageName {
        /// The package list.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The offending word.
        name: String,
    },

    /// A package list holds only comments and blank lines.
    #[error("no packages listed in {}", .path.display())]
    NoPackages {
        /// The package list.
        path: PathBuf,
    },

    /// The requested image reference cannot be used as a tag.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A debootstrap build was started without root.
    #[error(
        "building the sandbox image with debootstrap needs root (it sets file owners and uses chroot); run codebox as root, or build with `codebox image build --dockerfile` where debian:bookworm-slim can be pulled"
    )]
    NeedsRoot,

    /// Host tools the debootstrap build needs are missing and could not be
    /// installed.
    #[error(
        "the sandbox image build needs {} ({why}); install them with `apt-get install -y {}` (or your distribution's equivalent), or build with `codebox image build --dockerfile` where debian:bookworm-slim can be pulled",
        .missing.join(", "),
        .packages.join(" ")
    )]
    MissingTools {
        /// The programs and files that are missing.
        missing: Vec<String>,
        /// The Debian packages that provide them.
        packages: Vec<String>,
        /// Why they were not installed.
        why: String,
    },

    /// A build step (`build-rootfs.sh`, `apt-get`) exited unsuccessfully.
    #[error(
        "{} failed ({status}); last lines of its output:\n{}",
        .program,
        .output_tail.join("\n")
    )]
    ScriptFailed {
        /// What failed, such as the script's path or `apt-get install`.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines it printed, oldest first.
        output_tail: Vec<String>,
    },

    /// The build was stopped through its cancellation token; its temporary
    /// files are removed.
    #[error("the image build was stopped; its temporary files are removed")]
    Interrupted,

    /// The image was created but its configuration is not what was requested.
    #[error("image {reference} was built but its configuration is wrong: {detail}")]
    ConfigMismatch {
        /// The image built.
        reference: String,
        /// Which setting differs.
        detail: String,
    },
}

impl ImageError {
    pub(super) fn io(action: &'static str, path: &Path, cause: std::io::Error) -> Self {
        ImageError::Io {
            action,
            path: path.to_path_buf(),
            cause,
        }
    }
}
