//! The command-line verbs: `run` goes through the same supervisor as the server, as tenant
//! `local`; `image build` builds the sandbox image; the operators' verbs (`gc`, `workspaces`,
//! `files`) are in `operator.rs`.

pub mod operator;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use codebox::api::dto;
use codebox::catalog::{FileRecord, Owner};
use codebox::ids::{ChatId, MessageId};
use codebox::image::{self, BuildMethod, ImageBuildOptions, ImageEngine, ImageState, ImageVariant};
use codebox::safe_fs::join_safely;
use codebox::supervisor::UploadMeta;
use codebox::{Config, RunRequest, Supervisor};

/// The image files, built into the binary so that `codebox` can build its image from any
/// folder, not only from a checkout.
const IMAGE_FILES: [(&str, &str); 4] = [
    ("Dockerfile", include_str!("../../images/python/Dockerfile")),
    (
        "build-rootfs.sh",
        include_str!("../../images/python/build-rootfs.sh"),
    ),
    (
        "packages-full.txt",
        include_str!("../../images/python/packages-full.txt"),
    ),
    (
        "packages-test.txt",
        include_str!("../../images/python/packages-test.txt"),
    ),
];

/// The tenant every CLI run acts as.
const CLI_TENANT: &str = "local";

/// Flags that override configuration values; unset flags leave the configuration alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<SandboxOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<ServerOverrides>,
}

#[derive(Debug, Serialize)]
struct ServerOverrides {
    listen: std::net::SocketAddr,
}

#[derive(Debug, Serialize)]
struct SandboxOverrides {
    image: String,
}

impl Overrides {
    /// Overrides from the global flags.
    pub fn new(
        data_dir: Option<PathBuf>,
        image: Option<String>,
        listen: Option<std::net::SocketAddr>,
    ) -> Self {
        Self {
            data_dir,
            sandbox: image.map(|image| SandboxOverrides { image }),
            server: listen.map(|listen| ServerOverrides { listen }),
        }
    }
}

/// `codebox serve`: builds the sandbox image first if it is a built-in one and missing.
pub async fn serve(config_file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_file, overrides)?;
    // After a build, a stop signal that arrives before the server listens for its own is
    // lost (the build's handlers replaced the default action); a second one stops the server.
    ensure_image(&config).await?;
    codebox::server::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the configured image when it is one of the built-in ones and the engine lacks it.
/// Returns whether it built one.
async fn ensure_image(config: &Config) -> anyhow::Result<bool> {
    let image = &config.sandbox.image;
    if built_in_variant(image).is_none() {
        return Ok(false);
    }
    let engine = ImageEngine::connect().await?;
    if engine.inspect(image).await?.is_some() {
        return Ok(false);
    }
    // Another process may be building it right now (several servers started together): wait
    // for it, then look again.
    let _builds = image::lock_builds(|| {
        eprintln!("codebox: another process is building a sandbox image; waiting for it");
    })
    .await?;
    if engine.inspect(image).await?.is_some() {
        return Ok(false);
    }
    eprintln!(
        "codebox: the sandbox image {image} is missing; building it now (first use only, a few minutes)"
    );
    build_image(&engine, image).await?;
    Ok(true)
}

/// `codebox run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The Python script to run (`-` reads it from standard input).
    script: PathBuf,
    /// A file to attach; it appears at /mnt/data/<name>, read-only. Repeatable.
    #[arg(long = "attach", value_name = "FILE")]
    attachments: Vec<PathBuf>,
    /// The chat the message belongs to.
    #[arg(long, default_value = "cli")]
    chat: String,
    /// The message id; reuse one to run again in the same workspace. Default: a new message.
    #[arg(long)]
    message: Option<String>,
    /// The end user the run acts for.
    #[arg(long, default_value = "local")]
    user: String,
    /// Copy the registered files into this folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the API's Run object as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Wall-clock limit in seconds (default: the configured one).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

/// Runs a script as one message and reports like the API would. Exits with the code's exit
/// status (124 when it timed out, 137 when a limit killed it).
pub async fn run(
    config_file: Option<&Path>,
    overrides: &Overrides,
    args: RunArgs,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_file, overrides)?;
    let code = if args.script == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("read the script from stdin")?
    } else {
        std::fs::read_to_string(&args.script)
            .with_context(|| format!("read {}", args.script.display()))?
    };
    if ensure_image(&config).await? {
        // The build's signal handlers replaced the default action of Ctrl-C and SIGTERM for
        // good, so from here on they have to end the process explicitly, as before.
        exit_on_stop_signals()?;
    }
    let supervisor = Supervisor::open(config).await?;
    let removed = supervisor.reconcile().await?;
    if removed > 0 {
        tracing::info!(removed, "removed sandboxes that no message owns");
    }
    let owner = Owner::new(CLI_TENANT, &args.user);
    let chat_id = ChatId::parse(args.chat.clone())?;
    let message_id = MessageId::parse(
        args.message
            .clone()
            .unwrap_or_else(|| codebox::ids::mint("msg")),
    )?;
    // A message the user did not name is unlikely to be run again soon: its sandbox is removed
    // after the run (the workspace stays, and `--message` with its id starts a new sandbox).
    let one_shot = args.message.is_none();

    let mut file_ids = Vec::new();
    for path in &args.attachments {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("{} has no usable file name", path.display()))?;
        let body = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("open {}", path.display()))?;
        let file = supervisor
            .upload(
                &owner,
                UploadMeta {
                    name: name.to_owned(),
                    chat_id: Some(chat_id.to_string()),
                    message_id: Some(message_id.to_string()),
                    on_conflict: None,
                },
                body,
            )
            .await
            .with_context(|| format!("upload {}", path.display()))?;
        file_ids.push(file.id);
    }

    let report = supervisor
        .run(
            &owner,
            RunRequest {
                chat_id,
                message_id,
                code,
                language: "python".to_owned(),
                file_ids,
                timeout: args.timeout.map(Duration::from_secs),
                restart: false,
                init_code: None,
                tracebacks_on_stderr: true,
            },
            None,
        )
        .await?;
    if one_shot {
        supervisor
            .release_sandbox(&owner, &report.run.message_id)
            .await?;
    }

    if let Some(out) = &args.out {
        for file in &report.files {
            copy_out(&supervisor, file, out).await?;
        }
    }
    if args.json {
        let run = dto::Run::new(&report, |_| None);
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print_report(&report, args.out.as_deref());
    }
    let run = &report.run;
    let status = match run.status {
        codebox::catalog::RunStatus::TimedOut => 124,
        codebox::catalog::RunStatus::Killed => 137,
        _ => run.exit_code.unwrap_or(1).clamp(0, 255),
    };
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
}

/// Writes a registered file to `out/<its path below /mnt/data>`.
async fn copy_out(supervisor: &Supervisor, file: &FileRecord, out: &Path) -> anyhow::Result<()> {
    let relative = file.path.strip_prefix("/mnt/data/").unwrap_or(&file.name);
    let target = join_safely(out, Path::new(relative))
        .with_context(|| format!("place {} in {}", file.path, out.display()))?;
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("create {}", parent.display()))?;
    }
    let mut sink = tokio::fs::File::create(&target)
        .await
        .with_context(|| format!("create {}", target.display()))?;
    supervisor
        .copy_file_to(file, &mut sink)
        .await
        .with_context(|| format!("write {}", target.display()))?;
    Ok(())
}

fn print_report(report: &codebox::RunReport, out: Option<&Path>) {
    let run = &report.run;
    print!("{}", run.stdout);
    if run.stdout_truncated {
        println!("[stdout truncated]");
    }
    eprint!("{}", run.stderr);
    if run.stderr_truncated {
        eprintln!("[stderr truncated]");
    }
    // The notebook's results: the last expression's value and the figures (errors are on
    // stderr already, as their traceback).
    for output in &run.outputs {
        match output {
            codebox::catalog::RunOutput::Result { data } => {
                if let Some(text) = data.get("text/plain") {
                    println!("Out: {text}");
                }
            }
            codebox::catalog::RunOutput::Image { file_id } => {
                let name = report
                    .files
                    .iter()
                    .find(|file| &file.id == file_id)
                    .map_or(file_id.as_str(), |file| file.name.as_str());
                println!("Out: [figure {name}]");
            }
            codebox::catalog::RunOutput::Error { .. } => {}
        }
    }
    println!();
    let exit = run
        .exit_code
        .map_or_else(|| "-".to_owned(), |code| code.to_string());
    println!(
        "run {}  message {}  status {}  exit {}  {} ms",
        run.id, run.message_id, run.status, exit, run.duration_ms
    );
    if let Some(reason) = &run.reason {
        println!("reason: {reason}");
    }
    if report.files.is_empty() {
        println!("no files registered");
    } else {
        let width = report
            .files
            .iter()
            .map(|file| file.path.len())
            .max()
            .unwrap_or(0);
        println!("{:width$}  {:>10}  {:16}  ID", "PATH", "BYTES", "SHA256");
        for file in &report.files {
            println!(
                "{:width$}  {:>10}  {:16}  {}{}",
                file.path,
                file.size,
                &file.sha256[..16.min(file.sha256.len())],
                file.id,
                file.derived_from
                    .as_ref()
                    .map(|input| format!("  (derived from {input})"))
                    .unwrap_or_default()
            );
        }
        if let Some(out) = out {
            println!("copied to {}", out.display());
        }
    }
    for truncation in &run.truncated {
        println!("not registered: {}: {}", truncation.path, truncation.reason);
    }
}

/// Which built-in image a reference names, if it is one of the two codebox builds.
fn built_in_variant(reference: &str) -> Option<ImageVariant> {
    [ImageVariant::Full, ImageVariant::Test]
        .into_iter()
        .find(|variant| variant.default_reference() == reference)
}

/// Builds a missing built-in image from the embedded image files, showing progress.
async fn build_image(engine: &ImageEngine, reference: &str) -> anyhow::Result<()> {
    let variant = built_in_variant(reference)
        .with_context(|| format!("{reference} is not an image codebox can build"))?;
    let files = embedded_image_files()?;
    let options = ImageBuildOptions {
        images_dir: files.path().to_path_buf(),
        variant,
        method: BuildMethod::Debootstrap,
        tag: None,
    };
    build_until_stopped(engine, &options).await?;
    Ok(())
}

/// A build stopped by Ctrl-C or SIGTERM, after its temporary files were removed.
#[derive(Debug, thiserror::Error)]
#[error("the image build was stopped by {signal}; its temporary files are removed")]
pub struct BuildStopped {
    signal: &'static str,
    exit_code: u8,
}

impl BuildStopped {
    /// The exit code for the signal, 128 + its number, as if it had ended the process.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_code)
    }
}

/// Runs an image build, printing its progress, so that Ctrl-C and SIGTERM stop it cleanly:
/// the build stops its script, waits for the script's cleanup and removes its own folder,
/// and the result is [`BuildStopped`]. Without this the signal would end codebox at once and
/// leave the script writing into a closed pipe, its temporary root behind.
async fn build_until_stopped(
    engine: &ImageEngine,
    options: &ImageBuildOptions,
) -> anyhow::Result<String> {
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let cancel = CancellationToken::new();
    let mut progress = |line: &str| eprintln!("{line}");
    let build = image::build(engine, options, &mut progress, &cancel);
    tokio::pin!(build);
    let mut stopped_by = None;
    let built = loop {
        tokio::select! {
            built = &mut build => break built,
            _ = interrupt.recv() => {
                stopped_by.get_or_insert(BuildStopped { signal: "SIGINT", exit_code: 130 });
                cancel.cancel();
            }
            _ = terminate.recv() => {
                stopped_by.get_or_insert(BuildStopped { signal: "SIGTERM", exit_code: 143 });
                cancel.cancel();
            }
        }
    };
    // A stop that came while the build was finishing anyway still stops: the user asked
    // codebox to end, not to go on to serve or run.
    match stopped_by {
        Some(stopped) => Err(stopped.into()),
        None => Ok(built?),
    }
}

/// Ends the process on Ctrl-C or SIGTERM with the exit code the signal's default action
/// would give, once something registered handlers for them.
fn exit_on_stop_signals() -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        };
        std::process::exit(code);
    });
    Ok(())
}

/// Writes the embedded image files into a temporary folder.
fn embedded_image_files() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir().context("create a folder for the image files")?;
    for (name, content) in IMAGE_FILES {
        let path = dir.path().join(name);
        std::fs::write(&path, content).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(dir)
}

/// `codebox image build`.
#[derive(Debug, clap::Args)]
pub struct ImageBuildArgs {
    /// Build the small test image (python3 + openpyxl) instead of the full one.
    #[arg(long)]
    test: bool,
    /// Build from images/python/Dockerfile (needs a registry to pull the base image) instead
    /// of debootstrapping from the Debian mirror.
    #[arg(long)]
    dockerfile: bool,
    /// The image reference to build (default: codebox-python:latest, or :test).
    #[arg(long)]
    tag: Option<String>,
    /// A folder with the image's files (default: the copies built into codebox).
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// Build only when the image is missing or was built from other image files (its
    /// `codebox.inputs` label differs from the digest of the current ones).
    #[arg(long)]
    if_changed: bool,
}

/// Builds the sandbox image, printing progress.
pub async fn image_build(args: ImageBuildArgs) -> anyhow::Result<ExitCode> {
    let embedded;
    let images_dir = match args.images_dir {
        Some(dir) => {
            if !dir.join("packages-full.txt").is_file() {
                bail!(
                    "{} does not hold the image files (packages-full.txt)",
                    dir.display()
                );
            }
            dir
        }
        None => {
            embedded = embedded_image_files()?;
            embedded.path().to_path_buf()
        }
    };
    let engine = ImageEngine::connect().await?;
    let options = ImageBuildOptions {
        images_dir,
        variant: if args.test {
            ImageVariant::Test
        } else {
            ImageVariant::Full
        },
        method: if args.dockerfile {
            BuildMethod::Dockerfile
        } else {
            BuildMethod::Debootstrap
        },
        tag: args.tag,
    };
    if args.if_changed {
        let reference = options.reference()?;
        match image::image_state(&engine, &options).await? {
            ImageState::Current => {
                println!("{reference} is up to date");
                return Ok(ExitCode::SUCCESS);
            }
            ImageState::Missing => eprintln!("codebox: {reference} is missing; building it"),
            ImageState::Stale { found } => eprintln!(
                "codebox: {reference} was built from other image files ({}); rebuilding it",
                found.map_or_else(|| "no inputs label".to_owned(), |d| format!("inputs {d}"))
            ),
        }
    }
    let built = build_until_stopped(&engine, &options).await?;
    println!("built {built}");
    Ok(ExitCode::SUCCESS)
}
