//! The `codebox` command: parses flags into a `Config` and hands over to the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// codebox: run chat-generated code in hardened Docker sandboxes and keep the files it writes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file (default: ./codebox.toml if present).
    #[arg(long, global = true, env = "CODEBOX_CONFIG")]
    config: Option<PathBuf>,
    /// The data folder (workspaces, catalog, blobs); overrides the configuration.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The sandbox image; overrides the configuration.
    #[arg(long, global = true)]
    image: Option<String>,
    /// How log lines are written on stderr: `text` for people, `json` (one object per line)
    /// for a log pipeline. The level comes from `RUST_LOG` (default: warnings, plus one
    /// line per HTTP request).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (see shared/API.md) until Ctrl-C or SIGTERM.
    Serve {
        /// The address to listen on; overrides the configuration.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run a script as one chat message, register its outputs and print them.
    Run(cli::RunArgs),
    /// Run one reaper pass now (what `POST /v1/admin/gc` does).
    Gc(cli::operator::GcArgs),
    /// List every workspace with its owner, bytes and container (`GET /v1/admin/workspaces`).
    Workspaces(cli::operator::Scope),
    /// Live files and their bytes per tenant and user (`GET /v1/admin/files`).
    Files(cli::operator::Scope),
    /// Manage the sandbox image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// The shape of log lines (see `--log-format`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the sandbox image on the local Docker engine.
    Build(cli::ImageBuildArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("codebox: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listen = match &args.command {
        Command::Serve { listen } => *listen,
        _ => None,
    };
    let overrides = cli::Overrides::new(args.data_dir, args.image, listen);
    let outcome = runtime.block_on(async {
        match args.command {
            Command::Serve { .. } => cli::serve(args.config.as_deref(), &overrides).await,
            Command::Run(run) => cli::run(args.config.as_deref(), &overrides, run).await,
            Command::Gc(gc) => cli::operator::gc(args.config.as_deref(), &overrides, gc).await,
            Command::Workspaces(scope) => {
                cli::operator::workspaces(args.config.as_deref(), &overrides, scope).await
            }
            Command::Files(scope) => {
                cli::operator::files(args.config.as_deref(), &overrides, scope).await
            }
            Command::Image {
                command: ImageCommand::Build(build),
            } => cli::image_build(build).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) if error.is::<cli::BuildStopped>() => {
            eprintln!("codebox: {error}");
            error
                .downcast_ref::<cli::BuildStopped>()
                .map_or(ExitCode::FAILURE, cli::BuildStopped::exit_code)
        }
        Err(error) => {
            eprintln!("codebox: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends log lines to stderr in the chosen shape. Without `RUST_LOG`, warnings and the
/// request log (one line per HTTP request, see `api::request_log`) are written.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,codebox::request=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
