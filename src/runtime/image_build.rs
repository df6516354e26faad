//! Building the sandbox image: `codebox image build`.
//!
//! The sandbox image (`codebox-python:latest`, or the small `codebox-python:test`
//! for integration tests) is described by the files in `images/python`:
//! a package list per variant (`packages-full.txt`, `packages-test.txt`),
//! `build-rootfs.sh` and a `Dockerfile`. Two build methods produce equivalent
//! images:
//!
//! * [`BuildMethod::Debootstrap`] runs `build-rootfs.sh`, which bootstraps a
//!   minimal Debian bookworm root filesystem with the listed packages into a
//!   tar file, and imports that tar into the engine (`docker import`), adding
//!   the user, working directory, environment, command and labels. It needs
//!   root and `debootstrap`, but no registry access. Missing host tools are
//!   installed with apt-get when that is possible.
//! * [`BuildMethod::Dockerfile`] sends `images/python` as the build context to
//!   the engine's classic builder. It needs to pull `debian:bookworm-slim`.
//!
//! Every image carries the label [`INPUTS_LABEL`], a digest of the files it was
//! built from, so that [`image_state`] can tell an image that is out of date.
//! After either build the image's configuration is read back from the engine
//! and checked, so an engine that silently ignores part of the request fails
//! the build instead of producing a sandbox that runs as root.
//!
//! A debootstrap build works in a folder `codebox-build.*` under `$TMPDIR`
//! (default `/var/tmp`) and holds a lock in it for as long as any of its
//! processes runs; the next build removes every such folder whose lock is free,
//! so nothing an interrupted or killed build left behind survives it. A build
//! stopped through its cancellation token stops the script's whole process
//! group, waits for its cleanup and removes its folder before returning.
//!
//! Every engine call goes through [`crate::runtime::image`]. Every
//! [`ImageError`] message is a complete line that already includes its cause,
//! so it reads the same whether printed with `{}` or `{:#}`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};
use rustix::process::{Pid, Signal, kill_process_group};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::runtime::image::ImageEngine;
use crate::runtime::image::{DockerfileBuild, ImageEngineError, ImportRequest};

/// Repository name of the sandbox images.
pub const IMAGE_REPOSITORY: &str = "codebox-python";

/// Label set to `true` on every image this module builds, so that codebox can
/// tell its own images apart from anything else on the engine.
pub const MANAGED_LABEL: &str = "codebox.managed";

/// Label holding the digest of the files an image was built from (see
/// [`inputs_digest`]); a different digest means the image is out of date.
pub const INPUTS_LABEL: &str = "codebox.inputs";

/// Name of the root filesystem script inside the images directory.
pub const BUILD_ROOTFS_SCRIPT: &str = "build-rootfs.sh";

/// Name of the Dockerfile inside the images directory.
pub const DOCKERFILE: &str = "Dockerfile";

/// Prefix of the folders debootstrap builds work in, under the temporary folder.
pub const BUILD_DIR_PREFIX: &str = "codebox-build.";

/// The file, next to the build folders, that a build holds while it removes stale
/// folders and creates and locks its own, so that no build ever sees another's
/// folder before that folder is locked.
const BUILD_DIRS_LOCK: &str = "codebox-build.lock";

/// The lock file inside a build folder. The build holds an exclusive `flock` on it
/// and the script inherits it as standard input, so the lock stays held while any
/// process of the build is alive.
const BUILD_DIR_LOCK: &str = "lock";

/// Build argument of the Dockerfile that selects the package list.
const PACKAGES_FILE_BUILD_ARG: &str = "PACKAGES_FILE";

/// The sandbox user (uid:gid) created by `build-rootfs.sh` and the Dockerfile.
const SANDBOX_USER: &str = "1000:1000";

/// Working directory of sandboxed programs; the supervisor mounts the
/// session's output volume here.
const SANDBOX_WORKDIR: &str = "/mnt/data";

/// Default command of the image.
const SANDBOX_CMD: &[&str] = &["python3"];

/// Environment of the image. `docker import` starts from an empty
/// configuration, so unlike the Dockerfile build (where the base image
/// provides it) PATH has to be set explicitly.
const SANDBOX_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    // The root filesystem is read-only; trying to write bytecode caches
    // would only cost failed system calls.
    ("PYTHONDONTWRITEBYTECODE", "1"),
    // Output must reach the supervisor even when the program is killed.
    ("PYTHONUNBUFFERED", "1"),
    ("MPLBACKEND", "Agg"),
    // Matplotlib needs a writable cache directory; /tmp is a tmpfs.
    ("MPLCONFIGDIR", "/tmp/matplotlib"),
    ("HOME", "/home/sandbox"),
];

/// The keyring `build-rootfs.sh` checks the mirror's signatures with, unless
/// `CODEBOX_DEBIAN_KEYRING` names another.
const DEFAULT_DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Folders searched for programs besides `PATH`; `build-rootfs.sh` adds the
/// same ones, because debootstrap and chroot live there and a user's PATH
/// often lacks them.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// How long a stopped build script may take to clean up before its process
/// group is killed. Removing even the full image's root takes a few seconds.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// How long output is still read after a child exited: a process that left the
/// group (a daemon started in the chroot) could otherwise keep its pipe open
/// for ever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How many lines of script output a [`ImageError::ScriptFailed`] keeps.
const OUTPUT_TAIL_LINES: usize = 20;

/// Which package list, and therefore which default tag, to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageVariant {
    /// Everything the chat sandbox offers (pandas, openpyxl, xlrd,
    /// matplotlib, reportlab): `packages-full.txt`, `codebox-python:latest`.
    #[default]
    Full,
    /// A small image for integration tests (python3 and openpyxl only):
    /// `packages-test.txt`, `codebox-python:test`.
    Test,
}

impl ImageVariant {
    /// File name of the variant's package list inside the images directory.
    pub fn packages_file(self) -> &'static str {
        match self {
            ImageVariant::Full => "packages-full.txt",
            ImageVariant::Test => "packages-test.txt",
        }
    }

    /// Tag of the variant's image in the [`IMAGE_REPOSITORY`] repository.
    pub fn default_tag(self) -> &'static str {
        match self {
            ImageVariant::Full => "latest",
            ImageVariant::Test => "test",
        }
    }

    /// Full reference of the variant's image, such as `codebox-python:latest`.
    pub fn default_reference(self) -> String {
        format!("{IMAGE_REPOSITORY}:{}", self.default_tag())
    }
}

/// How the image is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildMethod {
    /// `build-rootfs.sh` (debootstrap) followed by `docker import`. Needs root
    /// and debootstrap, but no registry access.
    #[default]
    Debootstrap,
    /// `docker build` of the Dockerfile. Needs to pull `debian:bookworm-slim`.
    Dockerfile,
}

impl fmt::Display for BuildMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildMethod::Debootstrap => "debootstrap",
            BuildMethod::Dockerfile => "Dockerfile",
        })
    }
}

/// What to build and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuildOptions {
    /// The `images/python` directory holding the package lists,
    /// `build-rootfs.sh` and the `Dockerfile`.
    pub images_dir: PathBuf,
    /// Which package list to install.
    pub variant: ImageVariant,
    /// How to build the image.
    pub method: BuildMethod,
    /// Image reference (`name` or `name:tag`) to use instead of the variant's
    /// default. A reference without a tag gets `latest`, as with `docker build`.
    pub tag: Option<String>,
}

impl ImageBuildOptions {
    /// The reference the build will produce, always with an explicit tag.
    pub fn reference(&self) -> Result<String, ImageError> {
        let reference = match &self.tag {
            Some(tag) => tag.clone(),
            None => self.variant.default_reference(),
        };
        let (repository, tag) = split_reference(&reference)?;
        Ok(format!("{repository}:{tag}"))
    }

    /// Path of the variant's package list.
    pub fn packages_path(&self) -> PathBuf {
        self.images_dir.join(self.variant.packages_file())
    }
}

/// Errors of [`build`] and [`image_state`].
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
    fn io(action: &'static str, path: &Path, cause: std::io::Error) -> Self {
        ImageError::Io {
            action,
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// Whether the engine has an image built from the current image files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    /// The engine has no image by that reference.
    Missing,
    /// The image was built from other files (or before images carried the
    /// digest): `found` is its [`INPUTS_LABEL`], if any.
    Stale {
        /// The digest the image carries.
        found: Option<String>,
    },
    /// The image carries the digest of the current files.
    Current,
}

/// Compares the image `opts` would build with what the engine has.
pub async fn image_state(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
) -> Result<ImageState, ImageError> {
    let reference = opts.reference()?;
    let digest = inputs_digest(opts).await?;
    Ok(match engine.inspect(&reference).await? {
        None => ImageState::Missing,
        Some(settings) => match settings.labels.get(INPUTS_LABEL) {
            Some(found) if *found == digest => ImageState::Current,
            found => ImageState::Stale {
                found: found.cloned(),
            },
        },
    })
}

/// The sha256 (hex) of everything an image of `opts.variant` is made from: the
/// variant's package list, both builders (`build-rootfs.sh` and the
/// Dockerfile, since either may have made the image) and the settings codebox
/// applies on import. Comments count too: a changed file is a reason to
/// rebuild, and rebuilding is only ever slow, never wrong.
pub async fn inputs_digest(opts: &ImageBuildOptions) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    hasher.update(b"codebox image inputs v1\n");
    for path in [
        opts.packages_path(),
        opts.images_dir.join(BUILD_ROOTFS_SCRIPT),
        opts.images_dir.join(DOCKERFILE),
    ] {
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| ImageError::io("read", &path, e))?;
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        // Lengths keep one file's end from being read as the next one's start.
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    for change in settings_changes() {
        hasher.update(change.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Builds the sandbox image described by `opts` and returns its reference
/// (such as `codebox-python:latest`).
///
/// Every line of build output (apt-get, debootstrap, the import, the
/// Dockerfile steps) is passed to `progress` as it arrives; lines starting with
/// `==> ` mark the phases. The package list is checked before anything slow
/// starts.
///
/// Cancelling `cancel` stops the build: a running script's process group gets
/// SIGTERM, its output is still read while it removes its temporary files, the
/// build folder is removed, and the result is [`ImageError::Interrupted`].
/// An upload or Dockerfile build in progress is abandoned, so the engine keeps
/// no partial image.
pub async fn build(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<String, ImageError> {
    let reference = opts.reference()?;
    let packages_path = opts.packages_path();
    let packages = read_packages_file(&packages_path).await?;
    let digest = inputs_digest(opts).await?;
    progress(&format!(
        "==> building {reference} with the {} method from {} ({} packages)",
        opts.method,
        packages_path.display(),
        packages.len()
    ));

    match opts.method {
        BuildMethod::Debootstrap => {
            build_with_debootstrap(
                engine,
                opts,
                &packages_path,
                &reference,
                &digest,
                progress,
                cancel,
            )
            .await?
        }
        BuildMethod::Dockerfile => {
            let dockerfile_build =
                build_with_dockerfile(engine, opts, &reference, &digest, progress);
            tokio::select! {
                built = dockerfile_build => built?,
                () = cancel.cancelled() => return Err(ImageError::Interrupted),
            }
        }
    }

    verify_image_config(engine, &reference, &digest).await?;
    progress(&format!("==> built {reference}"));
    Ok(reference)
}

/// Makes sure the host tools exist, runs `build-rootfs.sh` into a build
/// folder and imports the tar it writes. The build folder is removed whatever
/// happens.
async fn build_with_debootstrap(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
    packages_path: &Path,
    reference: &str,
    digest: &str,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    let script = opts.images_dir.join(BUILD_ROOTFS_SCRIPT);
    tokio::fs::metadata(&script)
        .await
        .map_err(|e| ImageError::io("find", &script, e))?;
    ensure_build_tools(progress, cancel).await?;

    let parent = build_dirs_parent();
    let (build_dir, removed) = tokio::task::spawn_blocking({
        let parent = parent.clone();
        move || BuildDir::create(&parent)
    })
    .await
    .map_err(|e| ImageError::io("create a build folder in", &parent, e.into()))??;
    for (path, outcome) in removed {
        match outcome {
            Ok(()) => progress(&format!(
                "==> removed {}, left by an interrupted build",
                path.display()
            )),
            Err(e) => progress(&format!(
                "==> could not remove {}, left by an interrupted build: {e}",
                path.display()
            )),
        }
    }

    let tar_path = build_dir.path().join("rootfs.tar");
    let result = async {
        run_build_script(
            &script,
            packages_path,
            &tar_path,
            &build_dir,
            progress,
            cancel,
        )
        .await?;
        let import = import_rootfs(engine, &tar_path, reference, digest, progress);
        tokio::select! {
            imported = import => imported,
            () = cancel.cancelled() => Err(ImageError::Interrupted),
        }
    }
    .await;

    // Deleting the tar (or an interrupted root) can take a moment, so it is
    // done off the runtime.
    let dir = build_dir.path().to_path_buf();
    match tokio::task::spawn_blocking(move || build_dir.remove()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => progress(&format!("==> could not remove {}: {e}", dir.display())),
        Err(e) => progress(&format!("==> could not remove {}: {e}", dir.display())),
    }
    result
}

/// The folder that holds build folders: `$TMPDIR`, else `/var/tmp`. The root
/// file system of the full image is well over a gigabyte, too big for `/tmp`
/// when that is a RAM-backed tmpfs.
fn build_dirs_parent() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// A build's private folder, `codebox-build.XXXXXX`, locked while the build
/// lives.
#[derive(Debug)]
struct BuildDir {
    path: PathBuf,
    /// The open lock file; closing its last descriptor releases the lock.
    lock: File,
}

impl BuildDir {
    /// Removes the build folders under `parent` whose builds are gone, then
    /// creates and locks a new one. Returns it with what was removed and how
    /// that went.
    ///
    /// Both happen under the lock on [`BUILD_DIRS_LOCK`], so a folder is only
    /// ever seen by another build once it is locked: a folder without a held
    /// lock is always stale.
    #[allow(clippy::type_complexity)]
    fn create(parent: &Path) -> Result<(Self, Vec<(PathBuf, std::io::Result<()>)>), ImageError> {
        std::fs::create_dir_all(parent)
            .map_err(|e| ImageError::io("create the folder", parent, e))?;
        // Mount points are listed with canonical paths, so the folders are
        // named that way too.
        let parent = parent
            .canonicalize()
            .map_err(|e| ImageError::io("resolve", parent, e))?;
        let guard_path = parent.join(BUILD_DIRS_LOCK);
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)
            .map_err(|e| ImageError::io("open", &guard_path, e))?;
        flock(&guard, FlockOperation::LockExclusive)
            .map_err(|e| ImageError::io("lock", &guard_path, e.into()))?;

        let removed = remove_stale_build_dirs(&parent)?;

        let path = tempfile::Builder::new()
            .prefix(BUILD_DIR_PREFIX)
            .tempdir_in(&parent)
            .map_err(|e| ImageError::io("create a build folder in", &parent, e))?
            .keep();
        let lock_path = path.join(BUILD_DIR_LOCK);
        let lock = File::create(&lock_path).map_err(|e| ImageError::io("create", &lock_path, e))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| ImageError::io("lock", &lock_path, e.into()))?;
        drop(guard);
        Ok((Self { path, lock }, removed))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor of the lock file for a child's standard input, so that the
    /// lock stays held while the child or anything it starts runs.
    fn lock_for_child(&self) -> Result<Stdio, ImageError> {
        let lock = self
            .lock
            .try_clone()
            .map_err(|e| ImageError::io("share the lock", &self.path.join(BUILD_DIR_LOCK), e))?;
        Ok(Stdio::from(lock))
    }

    /// Removes the folder (unmounting anything left below it first), then
    /// releases the lock.
    fn remove(self) -> std::io::Result<()> {
        let removed = remove_tree(&self.path);
        drop(self.lock);
        removed
    }
}

/// Removes every `codebox-build.*` folder under `parent` whose lock nobody
/// holds. The caller holds the lock on [`BUILD_DIRS_LOCK`].
#[allow(clippy::type_complexity)]
fn remove_stale_build_dirs(
    parent: &Path,
) -> Result<Vec<(PathBuf, std::io::Result<()>)>, ImageError> {
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(parent).map_err(|e| ImageError::io("list", parent, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("list", parent, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(BUILD_DIR_PREFIX) || name == BUILD_DIRS_LOCK {
            continue;
        }
        // A link named like a build folder is not one of ours; following it
        // could delete anything.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            continue;
        }
        let path = entry.path();
        let lock_path = path.join(BUILD_DIR_LOCK);
        let lock = match File::open(&lock_path) {
            Ok(lock) => Some(lock),
            // Build folders are locked before the guard is released, so one
            // without a lock file belongs to a build that died right there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                removed.push((path, Err(e)));
                continue;
            }
        };
        if let Some(lock) = &lock {
            match flock(lock, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                // The build is alive.
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => {
                    removed.push((path, Err(e.into())));
                    continue;
                }
            }
        }
        let outcome = remove_tree(&path);
        removed.push((path, outcome));
    }
    Ok(removed)
}

/// Removes `dir` and everything below it without ever crossing into another
/// file system. debootstrap mounts /proc and /sys inside the root it builds
/// (and sometimes binds /dev); a build killed at the wrong moment leaves them
/// mounted, and deleting through such a mount would reach the host's files. So
/// everything mounted below `dir` is detached first, and the walk stays on
/// `dir`'s device in case a detach failed.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for mount_point in mounts_below(dir)? {
        if let Err(e) = rustix::mount::unmount(&mount_point, rustix::mount::UnmountFlags::DETACH) {
            // A mount that vanished in the meantime is what was wanted.
            if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                return Err(std::io::Error::other(format!(
                    "cannot unmount {}: {e}",
                    mount_point.display()
                )));
            }
        }
    }
    let mut first_error = None;
    let walk = walkdir::WalkDir::new(dir)
        .contents_first(true)
        .same_file_system(true)
        .follow_links(false);
    for entry in walk {
        let removed = entry.map_err(std::io::Error::from).and_then(|entry| {
            if entry.file_type().is_dir() {
                std::fs::remove_dir(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            }
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", entry.path().display())))
        });
        if let Err(e) = removed {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => Ok(()),
        Some(e) => Err(e),
    }
}

/// Every mount point at or below `dir`, deepest first, from
/// `/proc/self/mountinfo`.
fn mounts_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|mount_point| std::cmp::Reverse(mount_point.components().count()));
    mounts.dedup();
    Ok(mounts)
}

/// Decodes the octal escapes (`\040` for a space) the kernel writes into mount
/// paths in `/proc/self/mountinfo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A program or file the debootstrap build needs on the host, and the Debian
/// package that provides it.
struct HostNeed {
    /// A program name (looked up in PATH and the sbin folders) or an absolute
    /// path of a file.
    what: String,
    /// The Debian package providing it.
    package: &'static str,
}

impl HostNeed {
    fn is_present(&self) -> bool {
        if self.what.starts_with('/') {
            Path::new(&self.what).is_file()
        } else {
            find_program(&self.what).is_some()
        }
    }
}

/// Everything `build-rootfs.sh` and debootstrap use that a minimal Debian or
/// Ubuntu may lack: debootstrap downloads with wget and checks the mirror's
/// signatures with gpgv against the Debian archive keyring; the script chroots,
/// unmounts and writes a tar.
fn host_needs() -> Vec<HostNeed> {
    let keyring = std::env::var("CODEBOX_DEBIAN_KEYRING")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| DEFAULT_DEBIAN_KEYRING.to_owned());
    let mut needs: Vec<HostNeed> = [
        ("debootstrap", "debootstrap"),
        ("wget", "wget"),
        ("gpgv", "gpgv"),
        ("chroot", "coreutils"),
        ("umount", "mount"),
        ("tar", "tar"),
    ]
    .into_iter()
    .map(|(what, package)| HostNeed {
        what: what.to_owned(),
        package,
    })
    .collect();
    needs.push(HostNeed {
        what: keyring,
        package: "debian-archive-keyring",
    });
    needs
}

/// Finds an executable regular file named `name` in PATH or the sbin folders.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Checks that the build can run here: root, and every [`host_needs`]. Missing
/// tools are installed with apt-get (its output going to `progress`) when this
/// is a Debian-like system; otherwise the error names what to install.
async fn ensure_build_tools(
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    if !rustix::process::geteuid().is_root() {
        return Err(ImageError::NeedsRoot);
    }
    let missing = |needs: &[HostNeed]| -> (Vec<String>, Vec<String>) {
        let absent: Vec<&HostNeed> = needs.iter().filter(|n| !n.is_present()).collect();
        let mut packages: Vec<String> = absent.iter().map(|n| n.package.to_owned()).collect();
        packages.dedup();
        (absent.iter().map(|n| n.what.clone()).collect(), packages)
    };
    let needs = host_needs();
    let (absent, packages) = missing(&needs);
    if absent.is_empty() {
        return Ok(());
    }
    let Some(apt_get) = find_program("apt-get") else {
        return Err(ImageError::MissingTools {
            missing: absent,
            packages,
            why: "there is no apt-get here to install them".to_owned(),
        });
    };
    progress(&format!(
        "==> installing what the image build needs: apt-get install -y {}",
        packages.join(" ")
    ));
    let mut update = Command::new(&apt_get);
    update.arg("update");
    run_apt(update, "apt-get update", progress, cancel).await?;
    let mut install = Command::new(&apt_get);
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages);
    run_apt(install, "apt-get install", progress, cancel).await?;

    let (still_absent, packages) = missing(&needs);
    if still_absent.is_empty() {
        progress("==> installed what the image build needs");
        Ok(())
    } else {
        Err(ImageError::MissingTools {
            missing: still_absent,
            packages,
            why: "apt-get install did not provide them".to_owned(),
        })
    }
}

/// Runs one apt-get step without ever asking a question.
async fn run_apt(
    mut command: Command,
    name: &str,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    command
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    let outcome = run_streaming(command, Path::new(name), progress, cancel).await?;
    if outcome.interrupted {
        return Err(ImageError::Interrupted);
    }
    if !outcome.status.success() {
        return Err(ImageError::ScriptFailed {
            program: name.to_owned(),
            status: outcome.status,
            output_tail: outcome.tail.into(),
        });
    }
    Ok(())
}

/// Runs `bash <script> <packages> <tar>` inside the build folder, passing
/// every output line (stdout and stderr) to `progress`.
async fn run_build_script(
    script: &Path,
    packages_path: &Path,
    tar_path: &Path,
    build_dir: &BuildDir,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    progress(&format!(
        "==> running {} {} {}",
        script.display(),
        packages_path.display(),
        tar_path.display()
    ));
    // bash is named explicitly so that a checkout without the executable bit
    // (or on a noexec mount) still works. TMPDIR puts the script's own
    // temporary root inside the build folder, where the next build finds it
    // if this one is killed outright.
    let mut command = Command::new("bash");
    command
        .arg(script)
        .arg(packages_path)
        .arg(tar_path)
        .env("TMPDIR", build_dir.path())
        .stdin(build_dir.lock_for_child()?);
    let outcome = run_streaming(command, script, progress, cancel).await?;
    if outcome.interrupted {
        return Err(ImageError::Interrupted);
    }
    if outcome.status.success() {
        Ok(())
    } else {
        Err(ImageError::ScriptFailed {
            program: script.display().to_string(),
            status: outcome.status,
            output_tail: outcome.tail.into(),
        })
    }
}

/// How a child run by [`run_streaming`] ended.
struct Streamed {
    status: ExitStatus,
    /// Its last lines of output, oldest first.
    tail: VecDeque<String>,
    /// Whether it was stopped because `cancel` fired.
    interrupted: bool,
}

/// Runs `command` in a process group of its own, passing every line of its
/// stdout and stderr to `progress`.
///
/// Its own group keeps a terminal's Ctrl-C from reaching it directly: codebox
/// decides. When `cancel` fires, the whole group (the script, debootstrap,
/// wget, dpkg) gets SIGTERM, and the output is still read while the child
/// cleans up, so its cleanup never writes into a closed pipe. A group that
/// takes longer than [`STOP_GRACE`] gets SIGKILL; after a stop, whatever is
/// left of the group is killed so that nothing keeps writing into the build
/// folder.
async fn run_streaming(
    mut command: Command,
    program: &Path,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<Streamed, ImageError> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| ImageError::io("run", program, e))?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);

    // The two pipes are drained concurrently so that neither can fill up and
    // block the child; their lines meet in one channel so that `progress`,
    // which cannot be shared, is only called from here.
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(forward_lines(stdout, tx.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(forward_lines(stderr, tx.clone())));
    }
    drop(tx);

    let signal_group = |signal: Signal| {
        if let Some(group) = group {
            // ESRCH only means that every process of the group is gone.
            let _ = kill_process_group(group, signal);
        }
    };
    let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut tail = VecDeque::with_capacity(OUTPUT_TAIL_LINES);
    let mut status = None;
    let mut interrupted = false;
    let mut killed = false;
    let mut kill_at = never;
    let mut stop_reading_at = never;
    loop {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { break };
                progress(&line);
                if tail.len() == OUTPUT_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.map_err(|e| ImageError::io("wait for", program, e))?);
                stop_reading_at = Instant::now() + DRAIN_AFTER_EXIT;
            }
            () = cancel.cancelled(), if !interrupted && status.is_none() => {
                interrupted = true;
                progress(&format!(
                    "==> stopping {} and waiting for it to remove its temporary files",
                    program.display()
                ));
                signal_group(Signal::TERM);
                kill_at = Instant::now() + STOP_GRACE;
            }
            () = tokio::time::sleep_until(kill_at), if interrupted && !killed && status.is_none() => {
                killed = true;
                progress(&format!(
                    "==> {} did not stop within {}s; killing it",
                    program.display(),
                    STOP_GRACE.as_secs()
                ));
                signal_group(Signal::KILL);
            }
            () = tokio::time::sleep_until(stop_reading_at), if status.is_some() => break,
        }
    }
    for reader in readers {
        reader.abort();
    }
    let status = match status {
        Some(status) => status,
        None => child
            .wait()
            .await
            .map_err(|e| ImageError::io("wait for", program, e))?,
    };
    // A stop also counts when the child finished on its own at that moment:
    // the caller abandons the build either way.
    let interrupted = interrupted || cancel.is_cancelled();
    if interrupted {
        signal_group(Signal::KILL);
    }
    Ok(Streamed {
        status,
        tail,
        interrupted,
    })
}

/// Sends each line read from `reader` to `tx`, without its line ending.
/// Invalid UTF-8 is replaced rather than treated as an error, because the
/// output is only shown to a human.
async fn forward_lines(reader: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if tx.send(line.to_owned()).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Streams the root filesystem tar into the engine (`docker import`) with the
/// image settings and labels.
async fn import_rootfs(
    engine: &ImageEngine,
    tar_path: &Path,
    reference: &str,
    digest: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let (repository, tag) = split_reference(reference)?;
    let tar = tokio::fs::File::open(tar_path)
        .await
        .map_err(|e| ImageError::io("open", tar_path, e))?;
    let size = tar
        .metadata()
        .await
        .map_err(|e| ImageError::io("read the size of", tar_path, e))?
        .len();
    let request = ImportRequest {
        tar,
        size,
        repository,
        tag,
        changes: import_changes(digest),
        message: "codebox sandbox root filesystem built by build-rootfs.sh",
    };
    match engine.import(request, progress).await? {
        Some(id) => progress(&format!("==> imported {reference} ({id})")),
        None => progress(&format!("==> imported {reference}")),
    }
    Ok(())
}

/// The image settings as Dockerfile instructions; the Dockerfile sets the same
/// configuration with its own instructions.
fn settings_changes() -> Vec<String> {
    let mut changes = vec![
        format!("USER {SANDBOX_USER}"),
        format!("WORKDIR {SANDBOX_WORKDIR}"),
    ];
    changes.extend(
        SANDBOX_ENV
            .iter()
            .map(|(name, value)| format!("ENV {name}={value}")),
    );
    let cmd: Vec<String> = SANDBOX_CMD.iter().map(|arg| format!("\"{arg}\"")).collect();
    changes.push(format!("CMD [{}]", cmd.join(", ")));
    changes
}

/// Dockerfile instructions applied by the import: the settings and the labels.
fn import_changes(digest: &str) -> Vec<String> {
    let mut changes = settings_changes();
    changes.push(format!("LABEL {MANAGED_LABEL}=true"));
    changes.push(format!("LABEL {INPUTS_LABEL}={digest}"));
    changes
}

/// Builds the Dockerfile with `images_dir` as the context.
async fn build_with_dockerfile(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
    reference: &str,
    digest: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let dockerfile = opts.images_dir.join(DOCKERFILE);
    tokio::fs::metadata(&dockerfile)
        .await
        .map_err(|e| ImageError::io("find", &dockerfile, e))?;
    let context = build_context(&opts.images_dir).await?;
    progress(&format!(
        "==> sending build context {} ({} bytes)",
        opts.images_dir.display(),
        context.len()
    ));
    let build = DockerfileBuild {
        context,
        dockerfile: DOCKERFILE,
        reference,
        build_args: HashMap::from([(PACKAGES_FILE_BUILD_ARG, opts.variant.packages_file())]),
        labels: HashMap::from([(MANAGED_LABEL, "true"), (INPUTS_LABEL, digest)]),
    };
    engine.build_dockerfile(build, progress).await?;
    Ok(())
}

/// Packs `dir` into an uncompressed tar to serve as the build context.
async fn build_context(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let dir = dir.to_path_buf();
    let packed = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut builder = tar::Builder::new(Vec::new());
            builder.append_dir_all("", &dir)?;
            builder.into_inner()
        }
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|result| result);
    packed.map_err(|e| ImageError::io("pack the build context", &dir, e))
}

/// Reads the engine's view of the image and checks the settings the sandbox
/// relies on, above all that it does not run as root.
async fn verify_image_config(
    engine: &ImageEngine,
    reference: &str,
    digest: &str,
) -> Result<(), ImageError> {
    let mismatch = |detail: String| ImageError::ConfigMismatch {
        reference: reference.to_owned(),
        detail,
    };
    let Some(config) = engine.inspect(reference).await? else {
        return Err(mismatch("the engine does not list it".to_owned()));
    };

    if config.user != SANDBOX_USER {
        return Err(mismatch(format!(
            "user is `{}`, expected `{SANDBOX_USER}`",
            config.user
        )));
    }
    if config.working_dir != SANDBOX_WORKDIR {
        return Err(mismatch(format!(
            "working directory is `{}`, expected `{SANDBOX_WORKDIR}`",
            config.working_dir
        )));
    }
    for (name, value) in SANDBOX_ENV {
        let expected = format!("{name}={value}");
        if !config.env.contains(&expected) {
            return Err(mismatch(format!("environment lacks `{expected}`")));
        }
    }
    if config.cmd != SANDBOX_CMD {
        return Err(mismatch(format!(
            "command is {:?}, expected {SANDBOX_CMD:?}",
            config.cmd
        )));
    }
    for (label, value) in [(MANAGED_LABEL, "true"), (INPUTS_LABEL, digest)] {
        if config.labels.get(label).map(String::as_str) != Some(value) {
            return Err(mismatch(format!("label {label}={value} is missing")));
        }
    }
    Ok(())
}

/// Reads and parses a package list.
async fn read_packages_file(path: &Path) -> Result<Vec<String>, ImageError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ImageError::io("read", path, e))?;
    let packages =
        parse_packages(&text).map_err(|(line, name)| ImageError::InvalidPackageName {
            path: path.to_path_buf(),
            line,
            name,
        })?;
    if packages.is_empty() {
        return Err(ImageError::NoPackages {
            path: path.to_path_buf(),
        });
    }
    Ok(packages)
}

/// Parses a package list: `#` starts a comment, words are separated by white
/// space (normally one package per line), blank lines are ignored. These are
/// the rules `build-rootfs.sh` and the Dockerfile apply too.
///
/// On error returns the 1-based line number and the offending word.
fn parse_packages(text: &str) -> Result<Vec<String>, (usize, String)> {
    let mut packages = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or_default();
        for word in content.split_whitespace() {
            if !is_debian_package_name(word) {
                return Err((index + 1, word.to_owned()));
            }
            packages.push(word.to_owned());
        }
    }
    Ok(packages)
}

/// Debian policy 5.6.1: at least two characters, lower-case letters, digits
/// and `+ - .`, starting with a letter or digit.
fn is_debian_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// Splits `name[:tag]` into repository and tag (default `latest`). A colon
/// before the last `/` belongs to a registry port, not to the tag.
fn split_reference(reference: &str) -> Result<(&str, &str), ImageError> {
    let invalid = |reason| ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason,
    };
    if reference.is_empty() {
        return Err(invalid("it is empty"));
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("it contains white space"));
    }
    if reference.contains('@') {
        return Err(invalid("a digest cannot be assigned to a built image"));
    }
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    let (repository, tag) = match reference[name_start..].rfind(':') {
        Some(colon) => {
            let colon = name_start + colon;
            (&reference[..colon], &reference[colon + 1..])
        }
        None => (reference, "latest"),
    };
    if repository.is_empty() || repository.ends_with('/') {
        return Err(invalid("the repository name is empty"));
    }
    if tag.is_empty() {
        return Err(invalid("the tag after `:` is empty"));
    }
    Ok((repository, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_packages_skips_comments_and_blank_lines() {
        let text = "# header comment\n\npython3\n  python3-pandas   # trailing comment\n\t\n#python3-scipy\r\npython3-openpyxl\r\n";
        assert_eq!(
            parse_packages(text),
            Ok(vec![
                "python3".to_owned(),
                "python3-pandas".to_owned(),
                "python3-openpyxl".to_owned()
            ])
        );
    }

    #[test]
    fn parse_packages_accepts_several_words_per_line() {
        assert_eq!(
            parse_packages("python3 fonts-dejavu-core\nlibstdc++6 python3.11"),
            Ok(vec![
                "python3".to_owned(),
                "fonts-dejavu-core".to_owned(),
                "libstdc++6".to_owned(),
                "python3.11".to_owned()
            ])
        );
    }

    #[test]
    fn parse_packages_reports_line_of_invalid_name() {
        assert_eq!(
            parse_packages("python3\n# ok\nPython3-Pandas\n"),
            Err((3, "Python3-Pandas".to_owned()))
        );
        assert_eq!(parse_packages("x\n"), Err((1, "x".to_owned())));
        assert_eq!(
            parse_packages("python3;rm\n"),
            Err((1, "python3;rm".to_owned()))
        );
    }

    #[test]
    fn parse_packages_of_only_comments_is_empty() {
        assert_eq!(parse_packages("# nothing\n\n   \n"), Ok(vec![]));
    }

    #[test]
    fn shipped_package_lists_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/python");
        if !dir.exists() {
            return;
        }
        for variant in [ImageVariant::Full, ImageVariant::Test] {
            let path = dir.join(variant.packages_file());
            let text = std::fs::read_to_string(&path).expect("package list is readable");
            let packages = parse_packages(&text).expect("package list is valid");
            assert!(packages.contains(&"python3".to_owned()), "{path:?}");
            assert!(
                packages.contains(&"python3-openpyxl".to_owned()),
                "{path:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_packages_file_rejects_empty_list_and_names_path() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("packages.txt");
        std::fs::write(&path, "# only a comment\n").expect("write package list");
        let err = read_packages_file(&path).await.expect_err("empty list");
        assert!(matches!(err, ImageError::NoPackages { .. }));
        assert!(err.to_string().contains("packages.txt"), "{err}");

        let missing = dir.path().join("missing.txt");
        let err = read_packages_file(&missing)
            .await
            .expect_err("missing file");
        assert!(
            err.to_string().starts_with("cannot read ") && err.to_string().contains("missing.txt"),
            "{err}"
        );
    }

    #[test]
    fn variants_select_package_list_and_tag() {
        assert_eq!(ImageVariant::Full.packages_file(), "packages-full.txt");
        assert_eq!(ImageVariant::Test.packages_file(), "packages-test.txt");
        assert_eq!(
            ImageVariant::Full.default_reference(),
            "codebox-python:latest"
        );
        assert_eq!(
            ImageVariant::Test.default_reference(),
            "codebox-python:test"
        );
    }

    fn options(variant: ImageVariant, tag: Option<&str>) -> ImageBuildOptions {
        ImageBuildOptions {
            images_dir: PathBuf::from("/src/images/python"),
            variant,
            method: BuildMethod::Debootstrap,
            tag: tag.map(str::to_owned),
        }
    }

    #[test]
    fn reference_uses_override_or_variant_default() {
        assert_eq!(
            options(ImageVariant::Full, None)
                .reference()
                .ok()
                .as_deref(),
            Some("codebox-python:latest")
        );
        assert_eq!(
            options(ImageVariant::Test, None)
                .reference()
                .ok()
                .as_deref(),
            Some("codebox-python:test")
        );
        assert_eq!(
            options(ImageVariant::Test, Some("sandbox:v2"))
                .reference()
                .ok()
                .as_deref(),
            Some("sandbox:v2")
        );
        assert_eq!(
            options(ImageVariant::Full, Some("sandbox"))
                .reference()
                .ok()
                .as_deref(),
            Some("sandbox:latest")
        );
        assert_eq!(
            options(ImageVariant::Test, None).packages_path(),
            PathBuf::from("/src/images/python/packages-test.txt")
        );
    }

    #[test]
    fn split_reference_handles_registry_ports() {
        assert_eq!(
            split_reference("codebox-python:test").ok(),
            Some(("codebox-python", "test"))
        );
        assert_eq!(
            split_reference("localhost:5000/codebox").ok(),
            Some(("localhost:5000/codebox", "latest"))
        );
        assert_eq!(
            split_reference("localhost:5000/team/codebox:v1").ok(),
            Some(("localhost:5000/team/codebox", "v1"))
        );
    }

    #[test]
    fn split_reference_rejects_unusable_references() {
        for bad in [
            "",
            "codebox:",
            ":tag",
            "code box",
            "codebox@sha256:abcd",
            "registry/",
        ] {
            assert!(
                matches!(
                    split_reference(bad),
                    Err(ImageError::InvalidReference { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/var/tmp/a\040b\011c/proc"),
            "/var/tmp/a b\tc/proc"
        );
        assert_eq!(unescape_mount_path(r"/plain\09"), r"/plain\09");
        assert_eq!(unescape_mount_path("/"), "/");
    }

    #[test]
    fn mounts_below_lists_deepest_first_and_only_below() {
        let mounts = mounts_below(Path::new("/proc")).expect("read mountinfo");
        assert!(mounts.iter().all(|m| m.starts_with("/proc")), "{mounts:?}");
        assert!(mounts.contains(&PathBuf::from("/proc")), "{mounts:?}");
        let depths: Vec<usize> = mounts.iter().map(|m| m.components().count()).collect();
        assert!(depths.windows(2).all(|w| w[0] >= w[1]), "{mounts:?}");
        // A sibling that merely shares the prefix is not below.
        assert!(
            mounts_below(Path::new("/pro"))
                .expect("read mountinfo")
                .is_empty()
        );
    }

    #[test]
    fn import_changes_configure_the_sandbox() {
        let changes = import_changes("abc123");
        assert_eq!(changes[0], "USER 1000:1000");
        assert_eq!(changes[1], "WORKDIR /mnt/data");
        assert!(changes.contains(&"ENV PYTHONDONTWRITEBYTECODE=1".to_owned()));
        assert!(changes.contains(&"ENV HOME=/home/sandbox".to_owned()));
        assert!(changes.contains(&"LABEL codebox.managed=true".to_owned()));
        assert!(changes.contains(&"LABEL codebox.inputs=abc123".to_owned()));
        assert!(changes.contains(&r#"CMD ["python3"]"#.to_owned()));
        // The engine parses the changes as Dockerfile lines, so none may
        // contain a line break of its own.
        assert!(changes.iter().all(|c| !c.contains('\n')));
    }
}
