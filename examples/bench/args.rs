//! The command line: the benchmark's flags, and the names of `sandbox.disk_limit`'s values,
//! which the server's configuration and the JSON line both spell out.

use std::path::PathBuf;

use clap::Parser;
use codebox::config::DiskLimit;

#[derive(Debug, Parser)]
#[command(
    about = "Measures codebox's kernel and warm pool end to end over HTTP, against docker run, \
    AutoGen and the engine's own container rate, and download throughput against nginx"
)]
pub(crate) struct Args {
    /// Measured iterations of cases 1 and 2 (new message print(1), new message pandas).
    #[arg(long, default_value_t = 10)]
    pub(crate) runs: usize,
    /// The sandbox image, for codebox and every baseline alike.
    #[arg(long, default_value = "codebox-python:latest")]
    pub(crate) image: String,
    /// Iterations run first and not counted, in cases 1 and 2 and in the download phase:
    /// they pay for cold page caches, new connections and lazy setup.
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
    /// Seconds each load step runs (case 3 and each step of the sweep).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// New messages sent back to back in case 4 (and containers cycled by its baseline).
    #[arg(long, default_value_t = 30)]
    pub(crate) sustained: usize,
    /// The client counts of the concurrency sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub(crate) clients: Vec<usize>,
    /// The server's warm pool size (`sandbox.warm_pool`).
    #[arg(long, default_value_t = 4)]
    pub(crate) warm_pool: usize,
    /// Leaves out the AutoGen baseline of case 2.
    #[arg(long)]
    pub(crate) skip_autogen: bool,
    /// The codebox binary to serve with (default: `codebox` beside this example's folder,
    /// i.e. `target/release/codebox` for a release build).
    #[arg(long)]
    pub(crate) codebox: Option<PathBuf>,
    /// Measured downloads of the large file, from codebox and from nginx each.
    #[arg(long, default_value_t = 5)]
    pub(crate) download_runs: usize,
    /// Size of the download file in MiB (1024 is the 1 GiB case).
    #[arg(long, default_value_t = 1024)]
    pub(crate) download_mib: u64,
    /// Leaves out the download phase (and its upload and nginx).
    #[arg(long)]
    pub(crate) skip_download: bool,
    /// How workspaces are capped (`sandbox.disk_limit`): `auto`, `loop` or `watchdog`.
    #[arg(long, default_value = "auto", value_parser = parse_disk_limit)]
    pub(crate) disk_limit: DiskLimit,
}

fn parse_disk_limit(text: &str) -> Result<DiskLimit, String> {
    match text {
        "auto" => Ok(DiskLimit::Auto),
        "loop" => Ok(DiskLimit::Loop),
        "watchdog" => Ok(DiskLimit::Watchdog),
        other => Err(format!("{other:?} is not one of auto, loop, watchdog")),
    }
}

pub(crate) fn disk_limit_name(limit: DiskLimit) -> &'static str {
    match limit {
        DiskLimit::Auto => "auto",
        DiskLimit::Loop => "loop",
        DiskLimit::Watchdog => "watchdog",
    }
}
