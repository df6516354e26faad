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
//!   the user, working directory, environment, command and label. It needs
//!   root and `debootstrap`, but no registry access.
//! * [`BuildMethod::Dockerfile`] sends `images/python` as the build context to
//!   the engine's classic builder. It needs to pull `debian:bookworm-slim`.
//!
//! After either build the image's configuration is read back from the engine
//! and checked, so an engine that silently ignores part of the request fails
//! the build instead of producing a sandbox that runs as root.
//!
//! Every [`ImageError`] message is a complete line that already includes its
//! cause, so it reads the same whether printed with `{}` or `{:#}`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

/// Repository name of the sandbox images.
pub const IMAGE_REPOSITORY: &str = "codebox-python";

/// Label set to `true` on every image this module builds, so that codebox can
/// tell its own images apart from anything else on the engine.
pub const MANAGED_LABEL: &str = "codebox.managed";

/// Name of the root filesystem script inside the images directory.
pub const BUILD_ROOTFS_SCRIPT: &str = "build-rootfs.sh";

/// Name of the Dockerfile inside the images directory.
pub const DOCKERFILE: &str = "Dockerfile";

/// Build argument of the Dockerfile that selects the package list.
const PACKAGES_FILE_BUILD_ARG: &str = "PACKAGES_FILE";

/// Engine endpoint used by [`Docker::connect_with_local_defaults`] when
/// `DOCKER_HOST` does not name a Unix socket.
const DEFAULT_DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";

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

/// Bollard applies its client timeout (two minutes by default) to every
/// request until the response headers arrive. An import or build can take
/// longer than that on a slow disk before the engine answers, so those
/// requests get a generous limit of their own.
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// How often the progress of an import is reported (at most once per 10 %).
const IMPORT_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

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

/// Errors of [`connect`] and [`build`].
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The engine did not answer: socket missing, permission denied, daemon
    /// down or too old.
    #[error(
        "cannot reach the Docker engine at {endpoint}: {}; is the daemon running and is this user allowed to use it?",
        error_chain(.cause)
    )]
    EngineUnreachable {
        /// The endpoint that was tried, such as `unix:///var/run/docker.sock`.
        endpoint: String,
        /// What went wrong.
        cause: bollard::errors::Error,
    },

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

    /// `build-rootfs.sh` exited unsuccessfully.
    #[error(
        "{} failed ({status}); last lines of its output:\n{}",
        .script.display(),
        .output_tail.join("\n")
    )]
    ScriptFailed {
        /// The script that failed.
        script: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines it printed, oldest first.
        output_tail: Vec<String>,
    },

    /// The engine rejected or failed a request.
    #[error("failed to {action}: {}", error_chain(.cause))]
    Docker {
        /// What was attempted, such as `import codebox-python:test`.
        action: String,
        /// What went wrong.
        cause: bollard::errors::Error,
    },

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

    fn docker(action: impl Into<String>, cause: bollard::errors::Error) -> Self {
        ImageError::Docker {
            action: action.into(),
            cause,
        }
    }
}

/// Connects to the local engine (`DOCKER_HOST` if it names a Unix socket,
/// else `/var/run/docker.sock`), negotiates the API version and pings it.
///
/// Any failure becomes [`ImageError::EngineUnreachable`], whose message tells
/// the user what to check.
pub async fn connect() -> Result<Docker, ImageError> {
    let endpoint = match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => host,
        _ => DEFAULT_DOCKER_SOCKET.to_owned(),
    };
    let unreachable = |cause| ImageError::EngineUnreachable {
        endpoint: endpoint.clone(),
        cause,
    };
    let docker = Docker::connect_with_local_defaults()
        .map_err(unreachable)?
        .negotiate_version()
        .await
        .map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

/// Builds the sandbox image described by `opts` and returns its reference
/// (such as `codebox-python:latest`).
///
/// Every line of build output (debootstrap, the import, the Dockerfile steps)
/// is passed to `progress` as it arrives; lines starting with `==> ` mark the
/// phases. The package list is checked before anything slow starts.
///
/// Dropping the returned future does not stop a running `build-rootfs.sh`; the
/// script finishes or fails on its own and always removes its temporary files.
pub async fn build(
    docker: &Docker,
    opts: &ImageBuildOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<String, ImageError> {
    let reference = opts.reference()?;
    let packages_path = opts.packages_path();
    let packages = read_packages_file(&packages_path).await?;
    progress(&format!(
        "==> building {reference} with the {} method from {} ({} packages)",
        opts.method,
        packages_path.display(),
        packages.len()
    ));

    let docker = docker.clone().with_timeout(LONG_REQUEST_TIMEOUT);
    match opts.method {
        BuildMethod::Debootstrap => {
            build_with_debootstrap(&docker, opts, &packages_path, &reference, progress).await?
        }
        BuildMethod::Dockerfile => {
            build_with_dockerfile(&docker, opts, &reference, progress).await?
        }
    }

    verify_image_config(&docker, &reference).await?;
    progress(&format!("==> built {reference}"));
    Ok(reference)
}

/// Runs `build-rootfs.sh` into a temporary tar file and imports that.
async fn build_with_debootstrap(
    docker: &Docker,
    opts: &ImageBuildOptions,
    packages_path: &Path,
    reference: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let script = opts.images_dir.join(BUILD_ROOTFS_SCRIPT);
    tokio::fs::metadata(&script)
        .await
        .map_err(|e| ImageError::io("find", &script, e))?;

    // The root filesystem tar of the full image is well over a gigabyte, too
    // big for /tmp when that is a RAM-backed tmpfs, hence /var/tmp.
    let temp_parent = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let temp_dir = tempfile::Builder::new()
        .prefix("codebox-image-")
        .tempdir_in(&temp_parent)
        .map_err(|e| ImageError::io("create a temporary directory in", &temp_parent, e))?;
    let tar_path = temp_dir.path().join("rootfs.tar");

    run_build_script(&script, packages_path, &tar_path, progress).await?;
    import_rootfs(docker, &tar_path, reference, progress).await?;

    // Deleting the tar can take a moment, so it is done off the runtime.
    let closed = tokio::task::spawn_blocking(move || temp_dir.close()).await;
    if let Ok(Err(e)) = closed {
        tracing::warn!(error = %e, "cannot remove the temporary root filesystem tar");
    }
    Ok(())
}

/// Runs `bash <script> <packages> <tar>`, passing every output line (stdout
/// and stderr) to `progress`.
async fn run_build_script(
    script: &Path,
    packages_path: &Path,
    tar_path: &Path,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    progress(&format!(
        "==> running {} {} {}",
        script.display(),
        packages_path.display(),
        tar_path.display()
    ));
    // bash is named explicitly so that a checkout without the executable bit
    // (or on a noexec mount) still works.
    let mut child = Command::new("bash")
        .arg(script)
        .arg(packages_path)
        .arg(tar_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::io("run bash for", script, e))?;

    // The two pipes are drained concurrently so that neither can fill up and
    // block the script; their lines meet in one channel so that `progress`,
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

    let mut tail = VecDeque::with_capacity(OUTPUT_TAIL_LINES);
    while let Some(line) = rx.recv().await {
        progress(&line);
        if tail.len() == OUTPUT_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for reader in readers {
        // A reader only ends early on a broken pipe, which the exit status
        // below reports better.
        let _ = reader.await;
    }

    let status = child
        .wait()
        .await
        .map_err(|e| ImageError::io("wait for", script, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::ScriptFailed {
            script: script.to_path_buf(),
            status,
            output_tail: tail.into(),
        })
    }
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

/// Streams the root filesystem tar into the engine (`docker import`) and
/// applies the image configuration as Dockerfile-style changes.
async fn import_rootfs(
    docker: &Docker,
    tar_path: &Path,
    reference: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let (repository, tag) = split_reference(reference)?;
    let file = tokio::fs::File::open(tar_path)
        .await
        .map_err(|e| ImageError::io("open", tar_path, e))?;
    let total = file
        .metadata()
        .await
        .map_err(|e| ImageError::io("read the size of", tar_path, e))?
        .len();
    progress(&format!(
        "==> importing {} ({}) as {reference}",
        tar_path.display(),
        human_size(total)
    ));

    // The engine reports no progress for an import from a request body, so
    // the bytes are counted on the sending side.
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let body = ReaderStream::with_capacity(file, 1 << 20).inspect_ok(move |chunk| {
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    });

    // Bollard sends all changes as one newline-separated `changes` value;
    // the engine parses the changes as Dockerfile lines either way.
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repository)
        .tag(tag)
        .message("codebox sandbox root filesystem built by build-rootfs.sh")
        .changes(import_changes())
        .build();
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);

    // The engine says nothing until the whole tar has been stored, so
    // progress is reported from a timer rather than from its messages.
    let mut ticker = tokio::time::interval(IMPORT_PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reported_tenths = 0;
    let mut image_id = None;
    loop {
        tokio::select! {
            info = stream.next() => {
                let Some(info) = info else { break };
                let info =
                    info.map_err(|e| ImageError::docker(format!("import {reference}"), e))?;
                // The engine's last message carries the new image's ID as status.
                if let Some(status) = info.status.filter(|s| s.starts_with("sha256:")) {
                    image_id = Some(status);
                }
            }
            _ = ticker.tick() => {
                let done = sent.load(Ordering::Relaxed);
                let tenths = progress_tenths(done, total);
                if tenths > reported_tenths {
                    reported_tenths = tenths;
                    let waiting = if done >= total {
                        "; waiting for the engine to store it"
                    } else {
                        ""
                    };
                    progress(&format!(
                        "==> importing: {}% sent ({} of {}){waiting}",
                        tenths * 10,
                        human_size(done),
                        human_size(total)
                    ));
                }
            }
        }
    }
    match image_id {
        Some(id) => progress(&format!("==> imported {reference} ({id})")),
        None => progress(&format!("==> imported {reference}")),
    }
    Ok(())
}

/// Dockerfile instructions applied by the import; the Dockerfile sets the
/// same configuration with its own instructions.
fn import_changes() -> Vec<String> {
    let mut changes = vec![
        format!("USER {SANDBOX_USER}"),
        format!("WORKDIR {SANDBOX_WORKDIR}"),
    ];
    changes.extend(
        SANDBOX_ENV
            .iter()
            .map(|(name, value)| format!("ENV {name}={value}")),
    );
    changes.push(format!("LABEL {MANAGED_LABEL}=true"));
    let cmd: Vec<String> = SANDBOX_CMD.iter().map(|arg| format!("\"{arg}\"")).collect();
    changes.push(format!("CMD [{}]", cmd.join(", ")));
    changes
}

/// Builds the Dockerfile with `images_dir` as the context.
async fn build_with_dockerfile(
    docker: &Docker,
    opts: &ImageBuildOptions,
    reference: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let dockerfile = opts.images_dir.join(DOCKERFILE);
    tokio::fs::metadata(&dockerfile)
        .await
        .map_err(|e| ImageError::io("find", &dockerfile, e))?;
    let context = build_context(&opts.images_dir).await?;
    progress(&format!(
        "==> sending build context {} ({})",
        opts.images_dir.display(),
        human_size(context.len() as u64)
    ));

    let build_args = HashMap::from([(PACKAGES_FILE_BUILD_ARG, opts.variant.packages_file())]);
    let labels = HashMap::from([(MANAGED_LABEL, "true")]);
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(DOCKERFILE)
        .t(reference)
        .buildargs(&build_args)
        .labels(&labels)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(info) = stream.next().await {
        let info = info.map_err(|e| ImageError::docker(format!("build {reference}"), e))?;
        if let Some(text) = info.stream {
            for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                progress(line);
            }
        }
        // Status messages come from pulling the base image.
        if let Some(status) = info.status {
            match info.id {
                Some(id) => progress(&format!("{id}: {status}")),
                None => progress(&status),
            }
        }
    }
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
async fn verify_image_config(docker: &Docker, reference: &str) -> Result<(), ImageError> {
    let inspect = docker
        .inspect_image(reference)
        .await
        .map_err(|e| ImageError::docker(format!("inspect {reference}"), e))?;
    let config = inspect.config.unwrap_or_default();
    let mismatch = |detail: String| ImageError::ConfigMismatch {
        reference: reference.to_owned(),
        detail,
    };

    let user = config.user.unwrap_or_default();
    if user != SANDBOX_USER {
        return Err(mismatch(format!(
            "user is `{user}`, expected `{SANDBOX_USER}`"
        )));
    }
    let workdir = config.working_dir.unwrap_or_default();
    if workdir != SANDBOX_WORKDIR {
        return Err(mismatch(format!(
            "working directory is `{workdir}`, expected `{SANDBOX_WORKDIR}`"
        )));
    }
    let env = config.env.unwrap_or_default();
    for (name, value) in SANDBOX_ENV {
        let expected = format!("{name}={value}");
        if !env.contains(&expected) {
            return Err(mismatch(format!("environment lacks `{expected}`")));
        }
    }
    let cmd = config.cmd.unwrap_or_default();
    if cmd != SANDBOX_CMD {
        return Err(mismatch(format!(
            "command is {cmd:?}, expected {SANDBOX_CMD:?}"
        )));
    }
    let labels = config.labels.unwrap_or_default();
    if labels.get(MANAGED_LABEL).map(String::as_str) != Some("true") {
        return Err(mismatch(format!("label {MANAGED_LABEL}=true is missing")));
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

/// Completed tenths of `done` out of `total`, for coarse progress reports.
fn progress_tenths(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    (done.min(total) * 10) / total
}

/// Formats a byte count for progress messages, such as `1.4 GiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Joins an error's message with those of its sources, skipping a source
/// whose message the previous one already contains. Bollard's transport
/// errors say only "client error (Connect)" at the top; the useful part
/// ("Permission denied", "No such file or directory") is further down.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut last = message.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !last.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    message
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
    fn import_changes_configure_the_sandbox() {
        let changes = import_changes();
        assert_eq!(changes[0], "USER 1000:1000");
        assert_eq!(changes[1], "WORKDIR /mnt/data");
        assert!(changes.contains(&"ENV PYTHONDONTWRITEBYTECODE=1".to_owned()));
        assert!(changes.contains(&"ENV HOME=/home/sandbox".to_owned()));
        assert!(changes.contains(&"LABEL codebox.managed=true".to_owned()));
        assert_eq!(
            changes.last().map(String::as_str),
            Some(r#"CMD ["python3"]"#)
        );
        // The engine parses the changes as Dockerfile lines, so none may
        // contain a line break of its own.
        assert!(changes.iter().all(|c| !c.contains('\n')));
    }

    #[test]
    fn progress_and_sizes_are_formatted() {
        assert_eq!(progress_tenths(0, 0), 0);
        assert_eq!(progress_tenths(5, 100), 0);
        assert_eq!(progress_tenths(55, 100), 5);
        assert_eq!(progress_tenths(150, 100), 10);
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn error_chain_skips_repeated_messages() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(
            error_chain(&err),
            "client error (Connect): permission denied"
        );
    }

    /// Builds the test image end to end under a throw-away tag and removes
    /// it again. Needs no registry, but root, debootstrap, a Debian mirror and
    /// a Docker engine: `cargo test -- --ignored build_test_image`.
    #[tokio::test]
    #[ignore = "needs root, debootstrap, a Debian mirror and a Docker engine"]
    async fn build_test_image_with_debootstrap() {
        let docker = connect().await.expect("engine is reachable");
        let opts = ImageBuildOptions {
            images_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("images/python"),
            variant: ImageVariant::Test,
            method: BuildMethod::Debootstrap,
            tag: Some("codebox-python:build-test".to_owned()),
        };
        let mut lines = Vec::new();
        let reference = build(&docker, &opts, &mut |line: &str| {
            lines.push(line.to_owned())
        })
        .await
        .expect("image builds");
        assert_eq!(reference, "codebox-python:build-test");
        assert!(
            lines.iter().any(|l| l.starts_with("==> imported")),
            "{lines:?}"
        );
        docker
            .remove_image(
                &reference,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .expect("image is removed");
    }

    #[test]
    fn engine_unreachable_is_one_clear_line() {
        let err = ImageError::EngineUnreachable {
            endpoint: DEFAULT_DOCKER_SOCKET.to_owned(),
            cause: bollard::errors::Error::SocketNotFoundError("/var/run/docker.sock".to_owned()),
        };
        let message = err.to_string();
        assert!(!message.contains('\n'));
        assert!(
            message.starts_with("cannot reach the Docker engine at unix:///var/run/docker.sock: ")
        );
        assert!(message.ends_with("is the daemon running and is this user allowed to use it?"));
    }
}
