//! Measures the targets of the kernel work (one live interpreter per message, and a warm pool
//! of sandboxes whose interpreters have already imported pandas and friends) end to end,
//! through the HTTP API, against the baselines a user of codebox would otherwise reach for.
//!
//! The benchmark starts `codebox serve` as a child process (`target/release/codebox`, or
//! `--codebox PATH`), with a configuration it writes into a scratch folder: the image, the
//! warm pool (`--warm-pool`, default 4, as `codebox serve` has it), one service token, and
//! `server.max_runs_in_flight = 256` and `server.max_queued_runs = 1024`, raised from the
//! defaults (4 and 32) so that the run limiter is never what the load cases measure. Every
//! case talks to that process over loopback HTTP with one keep-alive `reqwest` client, as a
//! chat backend would, so that the server's memory can be read apart from the load
//! generator's. The cases (each module's documentation says what its case measures and how):
//!
//! 1. **New message `print(1)`** (`new_message.rs`), against `docker run`.
//! 2. **New message pandas job** (`pandas.rs`), against `docker run` and AutoGen
//!    (`autogen.rs`).
//! 3. **Same message, repeated runs** (`load.rs`, the load step case 5 shares).
//! 4. **Sustained new messages** (`sustained.rs`), against the engine's own container rate.
//! 5. **Concurrency sweep** (`sweep.rs`), with the server's peak memory.
//!
//! `Bench::measure_all` below runs them: cases 1 and 2 in one loop (`latency.rs`), then case
//! 4, case 3 and the steps of case 5. Cases 1 and 2 run a warm-up of `--warmup` iterations
//! and then `--runs` counted ones, so that noise on the machine hits codebox and its baselines
//! alike. Latency cases stop the benchmark at the first failed run, with its answer; load
//! cases count errors instead, and show the first one. Before a case takes warm slots, the
//! benchmark waits until the warm pool is full and idle (`pool.rs`).
//!
//! The download phase follows (`downloads.rs`, against nginx in `nginx.rs`; skip it with
//! `--skip-download`).
//!
//! The output is a table, then one line `BENCH_JSON {...}` for scripts. Run it with:
//!
//! ```text
//! cargo build --release
//! cargo run --release --example bench -- [--runs 10] [--image codebox-python:latest]
//!     [--warmup 1] [--duration 5] [--sustained 30] [--clients 1,4,16,64] [--warm-pool 4]
//!     [--skip-autogen] [--skip-download] [--download-runs 5] [--download-mib 1024]
//! ```
//!
//! The rest: `args.rs` the command line; `server.rs` the `codebox serve` child and
//! `process.rs` what it shares with nginx; `api.rs` the HTTP client; `harness.rs` what the
//! cases share; `workload.rs` the code and the CSV they run; `docker_cli.rs` the docker
//! command; `procfs.rs` what is read from `/proc`; `stats.rs` the percentiles; `report.rs`
//! the notes and the `BENCH_JSON` line, `table.rs` the table; `cleanup.rs` what happens when
//! the benchmark ends, fails, or is interrupted.
//!
//! The default run takes about four minutes on the 2-core development machine (the release
//! build apart). It needs the local Docker engine, the image, root (as codebox's loop-mounted
//! workspaces do), and about 2 GiB free in the temporary folder for the download phase. The
//! image runs code as uid 1000, so the baselines' folder is made world-writable.

mod api;
mod args;
mod autogen;
mod cleanup;
mod docker_cli;
mod downloads;
mod harness;
mod latency;
mod load;
mod new_message;
mod nginx;
mod pandas;
mod pool;
mod process;
mod procfs;
mod report;
mod server;
mod stats;
mod sustained;
mod sweep;
mod table;
mod workload;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;

use crate::args::Args;
use crate::autogen::{AutogenHelper, AutogenInfo};
use crate::docker_cli::docker_server_version;
use crate::downloads::Downloads;
use crate::harness::Bench;
use crate::latency::Latency;
use crate::load::Load;
use crate::procfs::{USER_HZ, proc_status_kib};
use crate::report::report;
use crate::sustained::Sustained;
use crate::sweep::SweepStep;
use crate::table::plural;

/// The clients of case 3.
const SAME_MESSAGE_CLIENTS: usize = 4;

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be above zero"
    );
    ensure!(
        args.sustained > 0,
        "--sustained must be at least 1 (the messages of case 4)"
    );
    ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&c| c > 0),
        "--clients must list counts above zero"
    );
    ensure!(
        args.warm_pool > 0,
        "--warm-pool must be at least 1: the cases measure the pool"
    );
    ensure!(
        args.skip_download || (args.download_runs > 0 && args.download_mib > 0),
        "--download-runs and --download-mib must be at least 1 (or pass --skip-download)"
    );
    let docker_version = docker_server_version().await?;
    let scratch = tempfile::tempdir().context("create the scratch folder")?;
    // Ctrl-C or SIGTERM stops the measurements but not the clean-up below, so that no
    // container, server or helper outlives the benchmark.
    let mut bench = tokio::select! {
        bench = Bench::open(scratch.path(), &args) => bench?,
        signal = interrupted() => bail!("interrupted by {signal} while starting"),
    };
    let measured = tokio::select! {
        measured = bench.measure_all(&args) => measured,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    let cleaned = bench.clean_up().await;
    let results = measured?;
    cleaned?;
    report(&args, &docker_version, &results, started.elapsed())
}

/// Everything measured.
pub(crate) struct Results {
    /// Cases 1 and 2.
    pub(crate) latency: Latency,
    /// Case 3.
    pub(crate) same_message: Load,
    /// Case 4.
    pub(crate) sustained: Sustained,
    /// Case 5, one step per client count.
    pub(crate) sweep: Vec<SweepStep>,
    /// The server's peak resident memory over its whole life, in KiB, when readable.
    pub(crate) lifetime_hwm_kib: Option<u64>,
    /// The CPU time each warm slot's interpreter took to get ready, in seconds.
    pub(crate) slot_cpu_s: Vec<f64>,
    /// The AutoGen baseline's executor, or why it was skipped.
    pub(crate) autogen: Result<AutogenInfo, String>,
    /// The download phase, unless skipped.
    pub(crate) downloads: Option<Downloads>,
}

impl Bench {
    /// Every case, in order; then the download phase unless it is skipped.
    async fn measure_all(&mut self, args: &Args) -> Result<Results> {
        let autogen = if args.skip_autogen {
            Err("--skip-autogen".to_owned())
        } else {
            match AutogenHelper::start(self).await {
                Ok(helper) => {
                    let info = AutogenInfo {
                        version: helper.version.clone(),
                        start_ms: helper.start_ms,
                    };
                    self.autogen = Some(helper);
                    Ok(info)
                }
                Err(reason) => {
                    println!("AutoGen baseline skipped: {reason}");
                    Err(reason)
                }
            }
        };
        let duration = Duration::from_secs_f64(args.duration);
        println!("cases 1 and 2: {} + {} iterations", args.warmup, args.runs);
        let latency = self.measure_latency(args.warmup, args.runs).await?;
        if let Some(helper) = self.autogen.take() {
            helper.stop().await;
        }
        println!("case 4: {} new messages, 2 clients", args.sustained);
        let sustained = self.measure_sustained(args.sustained).await?;
        let most = args.clients.iter().copied().max().unwrap_or(1);
        let messages: Vec<String> = (0..most.max(SAME_MESSAGE_CLIENTS))
            .map(|index| format!("load-{}-{index}", self.nonce))
            .collect();
        self.live.extend(messages.iter().cloned());
        println!("case 3: {SAME_MESSAGE_CLIENTS} clients, same message each");
        self.warm_messages(&messages[..SAME_MESSAGE_CLIENTS])
            .await?;
        self.wait_pool_full().await?;
        let same_message = self.load(&messages[..SAME_MESSAGE_CLIENTS], duration).await;
        let mut sweep = Vec::new();
        for &clients in &args.clients {
            println!("case 5: {}", plural(clients, "client"));
            self.warm_messages(&messages[..clients]).await?;
            self.wait_pool_full().await?;
            sweep.push(self.sweep_step(&messages[..clients], duration).await);
        }
        // Each step reset the peak, so the server's lifetime peak is the largest of the peaks
        // read before each reset and the one since the last.
        let lifetime_hwm_kib = sweep
            .iter()
            .filter_map(|step| step.hwm_before_kib)
            .chain(proc_status_kib(self.server.pid, "VmHWM"))
            .max();
        self.discard_all(&messages).await?;
        let downloads = if args.skip_download {
            None
        } else {
            let bytes = args.download_mib * (1 << 20);
            Some(
                self.measure_downloads(bytes, args.warmup, args.download_runs)
                    .await?,
            )
        };
        Ok(Results {
            latency,
            same_message,
            sustained,
            sweep,
            lifetime_hwm_kib,
            slot_cpu_s: self
                .slot_cpu_ticks
                .values()
                .map(|&ticks| ticks as f64 / USER_HZ)
                .collect(),
            autogen,
            downloads,
        })
    }
}

/// Resolves on Ctrl-C or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
