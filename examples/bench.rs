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
//! generator's. The cases, in the order they run:
//!
//! 1. **New message `print(1)`.** `POST /v1/runs` for a message never seen before, so the
//!    server claims it and hands it a sandbox from the warm pool. Before each sample the
//!    benchmark waits, outside the clock, until the pool is full again and every slot's
//!    interpreter is idle (see *The warm pool from outside* below), so that no refill competes
//!    for the CPU; the clock covers the HTTP exchange alone, the JSON answer parsed. The
//!    baseline is `docker run --rm --network none <image> python3 -c 'print(1)'` through the
//!    docker CLI, in the same iterations, also started with the pool full. Target: at least
//!    30x faster than the baseline, and under 15 ms. To tell where the time goes, each
//!    iteration also times `GET /healthz` (the floor of an HTTP round trip) and one more
//!    `print(1)` in a message whose sandbox already runs (everything but taking a slot), and
//!    keeps the server's own `duration_ms` of the new message's run (the code's execution);
//!    the output also sets case 1 beside the same-message run back to back (case 5, one
//!    client), which shows what an isolated request on an idle machine pays on top.
//! 2. **New message pandas job.** A 10,000-row CSV is uploaded through `POST /v1/files`
//!    outside the clock; then a run in a new message, with the CSV in `file_ids`, reads it
//!    with pandas and writes `/mnt/data/report.xlsx`, which must come back registered in
//!    `files`. Baselines, in the same iterations: the same code in
//!    `docker run --rm --network none -v <folder with the CSV>:/mnt/data <image> python3 -c`,
//!    and AutoGen's `DockerCommandLineCodeExecutor` (`autogen-ext[docker]`) on the same
//!    image, timed around `execute_code_blocks` by a small Python helper. The helper makes
//!    one executor for the whole benchmark, as AutoGen's documentation uses it (an async
//!    context manager around a session's code blocks): its container is started once,
//!    outside the clock, and each sample is a `docker exec` of a fresh `python3` process that
//!    imports pandas. The CSV's folder is mounted at `/mnt/data` through `extra_volumes`, so
//!    that the code is byte for byte the same in all three, and the block's language is
//!    `python3` because the image has no `python` command. The helper lives in a venv under
//!    `~/.cache/codebox-bench/`, installed from PyPI on first use; when that fails, or with
//!    `--skip-autogen`, the AutoGen baseline is reported as skipped with the reason. Targets:
//!    at most 0.15x `docker run` and at most 0.3x AutoGen.
//! 3. **Same message, repeated runs.** Four clients, each with a message of its own whose
//!    sandbox already runs (warmed outside the clock), send `print(1)` back to back for
//!    `--duration` seconds. Reported: successful runs per second over all clients, and p50
//!    and p99 latency. Target: at least 200 runs/s.
//! 4. **Sustained new messages.** `--sustained` new-message `print(1)` runs, sent back to
//!    back by two clients, starting with a full pool. Reported: messages per second over the
//!    whole burst, and over the part after the pool's first slots were used up (the steady
//!    state, which the target applies to). The baseline is the engine's own rate of
//!    `create` + `start` + `remove --force` of a trivial hardened container (`sleep
//!    infinity`, the same image, network none, capabilities dropped, read-only root file
//!    system, an init, the same limits as a sandbox) through the engine API (bollard), one
//!    after the other, the same count: half just before the codebox burst, and half after
//!    it, once the burst's sandboxes are removed and the pool is full again, so that drift
//!    hits both and no refill competes with either. Target: at least 0.8x. The output says
//!    what bounds codebox here, with figures from the same run: once the pool is empty, each
//!    new message starts a container of its own whose interpreter imports nothing ahead, and
//!    the pool holds off refilling while messages keep missing it; the benchmark reports the
//!    CPU time each slot's interpreter used to get ready (read from `/proc` when the slot is
//!    found idle, below), which is what every message would pay without that, and how long
//!    the pool took to replace one slot in case 1.
//! 5. **Concurrency sweep.** For each count in `--clients` (default 1, 4, 16, 64), that many
//!    clients each run `print(1)` in a message of their own for `--duration` seconds. Each
//!    message's first run, which makes its sandbox, happens outside the clock, and the pool
//!    is full before each step starts. Reported per step: runs per second, p50, p99,
//!    errors (a transport error, an HTTP status other than 200, or a run that did not
//!    succeed and print 1), and the server process's peak resident memory during the step:
//!    its `VmHWM` from `/proc/<pid>/status`, reset to the current size just before the step
//!    (`echo 5 > /proc/<pid>/clear_refs`), and also sampled (`VmRSS`) every 20 ms. Target,
//!    for the largest step: at most 64 MB, read as 64 MiB (the kernel counts in KiB).
//!
//! Cases 1 and 2 run in one loop, a warm-up of `--warmup` iterations and then `--runs`
//! counted ones, so that noise on the machine hits codebox and its baselines alike. Latency
//! cases stop the benchmark at the first failed run, with its answer; load cases count
//! errors instead, and show the first one.
//!
//! **The warm pool from outside.** The server keeps its pool in memory, but marks each slot
//! it makes with a file `<data_dir>/workspaces/.pool/<id>` before it starts the slot's
//! sandbox, and removes the mark when a message takes the slot. The pool is full when there
//! are `--warm-pool` marks and the interpreter in each slot's container has used no CPU for
//! 150 ms: the benchmark finds it as the child of the container's init (`docker inspect`,
//! then `/proc/<init>/task/<init>/children`) and reads its CPU time from `/proc/<pid>/stat`.
//! An interpreter still importing pandas never sits still that long; a ready one waits on
//! its standard input. This needs the benchmark to run in the engine's PID namespace, as
//! codebox itself does.
//!
//! The download phase follows (skip it with `--skip-download`). A 1 GiB file is uploaded
//! once through `POST /v1/files`, streamed from memory, and then downloaded
//! `--download-runs` times through its signed link, with no token, by reqwest reading the
//! body chunk by chunk and counting bytes (nothing is buffered or hashed). nginx serves a hard
//! link to the same blob on another loopback port, from a temporary configuration (one
//! process, `sendfile on`), and is downloaded with the same code in the same iterations,
//! alternating which goes first. The ratio compares median throughputs (codebox / nginx).
//! When `nginx` cannot be found the nginx case is skipped with a note.
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
//! Clean-up: every message the benchmark made has its workspace deleted through
//! `DELETE /v1/messages/{id}/workspace` (per sample in cases 1 and 2, after the others), and
//! the server is then stopped with SIGTERM, which removes its pool and every sandbox it
//! started. After it exits, the benchmark removes whatever containers still carry the
//! server's instance label or the benchmark's own name prefix (the baselines' and
//! AutoGen's), and unmounts any workspace file system left under the scratch folder. This
//! runs when the benchmark ends, fails, or gets Ctrl-C or SIGTERM; if the benchmark is
//! killed outright, the server still gets SIGTERM from the kernel (a parent-death signal)
//! and removes its sandboxes, nginx is stopped the same way, and the AutoGen helper stops its
//! container when its standard input closes; what is left then is the scratch folder, with
//! the loop mounts of the workspaces that were live (`umount -l` them, then remove it), and
//! at most one container of the engine baseline if it was killed in the middle of a cycle.
//!
//! The default run takes about four minutes on the 2-core development machine (the release
//! build apart). It needs the local Docker engine, the image, root (as codebox's loop-mounted workspaces
//! do), and about 2 GiB free in the temporary folder for the download phase. The image runs
//! code as uid 1000, so the baselines' folder is made world-writable.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bytes::Bytes;
use clap::Parser;
use codebox::Config;
use codebox::blobs::Blobs;
use codebox::config::{BlobsConfig, DiskLimit};
use codebox::ids::{BlobKey, FileId};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The tenant of the benchmark's token.
const TENANT: &str = "bench";
/// The end user of every request.
const USER: &str = "user";
/// The service token the server accepts.
const TOKEN: &str = "svc_bench_0123456789abcdef";
/// The one chat every benchmark message belongs to.
const CHAT: &str = "bench-chat";
/// The smallest program: its time is the fixed cost of a run.
const PRINT_CODE: &str = "print(1)";
/// A typical report: read an attachment with pandas, write a spreadsheet. The same bytes run
/// in codebox, in `docker run` and in AutoGen.
const PANDAS_CODE: &str = "import pandas as pd; df = pd.read_csv('/mnt/data/data.csv'); \
     df.describe().to_excel('/mnt/data/report.xlsx')";
/// The rows of the generated CSV.
const CSV_ROWS: usize = 10_000;
/// The piece the download file is made of, repeated; its content does not matter to
/// throughput, since nothing on the way compresses.
const BLOCK_BYTES: usize = 1 << 20;
/// The download file's name in the catalog and under nginx's root.
const DOWNLOAD_NAME: &str = "download.bin";
/// The clients of the sustained case.
const SUSTAINED_CLIENTS: usize = 2;
/// The clients of case 3.
const SAME_MESSAGE_CLIENTS: usize = 4;
/// How many first runs of the sweep's messages are sent at once; more would only queue on
/// two cores, and each one imports pandas.
const WARM_CONCURRENCY: usize = 4;
/// How long a slot's interpreter must have used no CPU to count as ready.
const IDLE_FOR: Duration = Duration::from_millis(150);
/// How often the pool, and the server's memory, are looked at.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// The longest the benchmark waits for the pool to fill.
const POOL_WAIT_LIMIT: Duration = Duration::from_secs(180);
/// The unit of CPU times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;
/// The package AutoGen's Docker executor comes in.
const AUTOGEN_PACKAGE: &str = "autogen-ext[docker]";

/// The targets of the kernel work.
const TARGET_NEW_PRINT_SPEEDUP: f64 = 30.0;
const TARGET_NEW_PRINT_MS: f64 = 15.0;
const TARGET_PANDAS_VS_DOCKER: f64 = 0.15;
const TARGET_PANDAS_VS_AUTOGEN: f64 = 0.3;
const TARGET_SAME_MESSAGE_RUNS_PER_S: f64 = 200.0;
const TARGET_SUSTAINED_RATIO: f64 = 0.8;
const TARGET_PEAK_RSS_MIB: f64 = 64.0;

/// Times AutoGen's `DockerCommandLineCodeExecutor`. Arguments: image, work folder, the
/// folder to mount at /mnt/data, container name, the code. It starts one executor, prints
/// `{"ready": ...}`, then for every line on standard input runs the code once and prints
/// `{"ms": ..., "exit_code": ..., "output": ...}`; at the end of its input, or on SIGTERM,
/// it stops the executor, which removes the container (`auto_remove`).
const AUTOGEN_HELPER: &str = r#"
import asyncio, json, signal, sys, time
from importlib.metadata import version

def say(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    try:
        from autogen_core import CancellationToken
        from autogen_core.code_executor import CodeBlock
        from autogen_ext.code_executors.docker import DockerCommandLineCodeExecutor
    except Exception as error:
        say(error=f"cannot import AutoGen: {error!r}")
        return 2
    image, work_dir, data_dir, name, code = sys.argv[1:6]
    executor = DockerCommandLineCodeExecutor(
        image=image, container_name=name, work_dir=work_dir, auto_remove=True, timeout=300,
        extra_volumes={data_dir: {"bind": "/mnt/data", "mode": "rw"}})
    started = time.perf_counter()
    try:
        await executor.start()
    except Exception as error:
        say(error=f"the executor did not start: {error!r}")
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    say(ready=True, start_ms=(time.perf_counter() - started) * 1000,
        version=version("autogen-ext"))
    try:
        while True:
            line = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({line, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done or not line.result():
                break
            stopped.cancel()
            block = CodeBlock(code=code, language="python3")
            started = time.perf_counter()
            result = await executor.execute_code_blocks([block], CancellationToken())
            elapsed = (time.perf_counter() - started) * 1000
            say(ms=elapsed, exit_code=result.exit_code, output=result.output[-2000:])
    finally:
        await executor.stop()
    return 0

sys.exit(asyncio.run(main()))
"#;

#[derive(Debug, Parser)]
#[command(
    about = "Measures codebox's kernel and warm pool end to end over HTTP, against docker run, \
    AutoGen and the engine's own container rate, and download throughput against nginx"
)]
struct Args {
    /// Measured iterations of cases 1 and 2 (new message print(1), new message pandas).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The sandbox image, for codebox and every baseline alike.
    #[arg(long, default_value = "codebox-python:latest")]
    image: String,
    /// Iterations run first and not counted, in cases 1 and 2 and in the download phase:
    /// they pay for cold page caches, new connections and lazy setup.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seconds each load step runs (case 3 and each step of the sweep).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// New messages sent back to back in case 4 (and containers cycled by its baseline).
    #[arg(long, default_value_t = 30)]
    sustained: usize,
    /// The client counts of the concurrency sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// The server's warm pool size (`sandbox.warm_pool`).
    #[arg(long, default_value_t = 4)]
    warm_pool: usize,
    /// Leaves out the AutoGen baseline of case 2.
    #[arg(long)]
    skip_autogen: bool,
    /// The codebox binary to serve with (default: `codebox` beside this example's folder,
    /// i.e. `target/release/codebox` for a release build).
    #[arg(long)]
    codebox: Option<PathBuf>,
    /// Measured downloads of the large file, from codebox and from nginx each.
    #[arg(long, default_value_t = 5)]
    download_runs: usize,
    /// Size of the download file in MiB (1024 is the 1 GiB case).
    #[arg(long, default_value_t = 1024)]
    download_mib: u64,
    /// Leaves out the download phase (and its upload and nginx).
    #[arg(long)]
    skip_download: bool,
    /// How workspaces are capped (`sandbox.disk_limit`): `auto`, `loop` or `watchdog`.
    #[arg(long, default_value = "auto", value_parser = parse_disk_limit)]
    disk_limit: DiskLimit,
}

fn parse_disk_limit(text: &str) -> Result<DiskLimit, String> {
    match text {
        "auto" => Ok(DiskLimit::Auto),
        "loop" => Ok(DiskLimit::Loop),
        "watchdog" => Ok(DiskLimit::Watchdog),
        other => Err(format!("{other:?} is not one of auto, loop, watchdog")),
    }
}

fn disk_limit_name(limit: DiskLimit) -> &'static str {
    match limit {
        DiskLimit::Auto => "auto",
        DiskLimit::Loop => "loop",
        DiskLimit::Watchdog => "watchdog",
    }
}

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
struct Results {
    /// Cases 1 and 2.
    latency: Latency,
    /// Case 3.
    same_message: Load,
    /// Case 4.
    sustained: Sustained,
    /// Case 5, one step per client count.
    sweep: Vec<SweepStep>,
    /// The server's peak resident memory over its whole life, in KiB, when readable.
    lifetime_hwm_kib: Option<u64>,
    /// The CPU time each warm slot's interpreter took to get ready, in seconds.
    slot_cpu_s: Vec<f64>,
    /// The AutoGen baseline's executor, or why it was skipped.
    autogen: Result<AutogenInfo, String>,
    /// The download phase, unless skipped.
    downloads: Option<Downloads>,
}

/// The samples of cases 1 and 2, in milliseconds.
#[derive(Default)]
struct Latency {
    new_print: Vec<f64>,
    /// The server's `duration_ms` of each new-message `print(1)`.
    new_print_server: Vec<f64>,
    docker_print: Vec<f64>,
    healthz: Vec<f64>,
    same_print: Vec<f64>,
    new_pandas: Vec<f64>,
    docker_pandas: Vec<f64>,
    autogen_pandas: Vec<f64>,
    /// From just before a new message took a slot until the pool was full and idle again.
    refill: Vec<f64>,
}

/// What a load step saw.
struct Load {
    clients: usize,
    /// The latency of every run that succeeded, in milliseconds.
    latencies: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    /// From the first request sent to the last answer received.
    wall: Duration,
}

impl Load {
    fn runs_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

/// What case 4 saw.
struct Sustained {
    /// Every new message's run: latency, and when it ended after the burst began.
    latencies: Vec<f64>,
    ends: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
    /// The pool's size, whose slots the first messages take.
    pool: usize,
    /// The engine's create + start + remove cycles and their total time.
    engine_cycles: usize,
    engine_time: Duration,
}

impl Sustained {
    fn overall_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// Messages per second once the slots that were ready at the start are used up: from
    /// the end of the `pool`-th run to the end of the last.
    fn steady_per_s(&self) -> Option<f64> {
        let mut ends = self.ends.clone();
        ends.sort();
        let first = *ends.get(self.pool.checked_sub(1)?)?;
        let last = *ends.last()?;
        let span = last.checked_sub(first)?.as_secs_f64();
        let counted = ends.len() - self.pool;
        (counted > 0 && span > 0.0).then(|| counted as f64 / span)
    }

    fn engine_per_s(&self) -> f64 {
        self.engine_cycles as f64 / self.engine_time.as_secs_f64()
    }
}

/// One step of the sweep.
struct SweepStep {
    load: Load,
    /// The server's peak resident memory during the step, in KiB: the larger of `VmHWM`
    /// (reset just before the step) and the sampled `VmRSS`.
    peak_rss_kib: Option<u64>,
    /// Whether the reset worked, so that `VmHWM` covers this step only.
    hwm_reset: bool,
    /// The server's `VmHWM` just before the reset: its peak until then.
    hwm_before_kib: Option<u64>,
}

/// The AutoGen executor the helper runs.
struct AutogenInfo {
    version: String,
    start_ms: f64,
}

/// What the download phase measured.
struct Downloads {
    /// The file's size.
    bytes: u64,
    /// The one upload of the file through `POST /v1/files`.
    upload: Duration,
    /// Seconds per download through codebox's signed link.
    codebox: Vec<f64>,
    /// Seconds per download from nginx, or why that case was skipped.
    nginx: Result<Vec<f64>, String>,
}

/// The client side of the HTTP API.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base_url: String,
}

/// The answer to one `POST /v1/runs`.
struct Exchange {
    elapsed: Duration,
    status: StatusCode,
    /// The parsed body; a body that is not JSON is kept as a string.
    body: Value,
}

impl Exchange {
    /// Why this is not a successful run that printed `stdout`, if it is not.
    fn problem(&self, stdout: Option<&str>) -> Option<String> {
        if self.status != StatusCode::OK {
            return Some(format!("HTTP {}: {}", self.status, self.body));
        }
        if self.body["status"] != "succeeded" {
            return Some(format!("the run did not succeed: {}", self.body));
        }
        if let Some(expected) = stdout
            && self.body["stdout"].as_str().map(str::trim) != Some(expected)
        {
            return Some(format!("the run did not print {expected}: {}", self.body));
        }
        None
    }

    fn ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0
    }
}

impl Api {
    /// One `POST /v1/runs`; the clock covers sending the request, the whole exchange, and
    /// parsing the answer.
    async fn run(&self, message: &str, code: &str, file_ids: &[String]) -> Result<Exchange> {
        let request = json!({
            "chat_id": CHAT,
            "message_id": message,
            "code": code,
            "file_ids": file_ids,
        });
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/runs", self.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .json(&request)
            .send()
            .await
            .with_context(|| format!("send a run for message {message}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("read the run of message {message}"))?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Exchange {
            elapsed: started.elapsed(),
            status,
            body,
        })
    }

    /// A run that must succeed and, when `stdout` is given, print it.
    async fn run_ok(
        &self,
        case: &str,
        message: &str,
        code: &str,
        file_ids: &[String],
        stdout: Option<&str>,
    ) -> Result<Exchange> {
        let exchange = self.run(message, code, file_ids).await?;
        if let Some(problem) = exchange.problem(stdout) {
            bail!("{case}, message {message}: {problem}");
        }
        Ok(exchange)
    }

    /// `GET /healthz`, timed.
    async fn healthz(&self) -> Result<Duration> {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}/healthz", self.base_url))
            .send()
            .await
            .context("GET /healthz")?;
        let status = response.status();
        let body = response.bytes().await.context("read /healthz")?;
        let elapsed = started.elapsed();
        ensure!(
            status.is_success(),
            "GET /healthz: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(elapsed)
    }

    /// Uploads `content` as `name` into the benchmark's chat; returns the File.
    async fn upload(&self, name: &str, content: Vec<u8>) -> Result<Value> {
        let part = reqwest::multipart::Part::bytes(content)
            .file_name(name.to_owned())
            .mime_str("text/csv")
            .context("set the upload's content type")?;
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("chat_id", CHAT);
        let response = self
            .http
            .post(format!("{}/v1/files", self.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .multipart(form)
            .send()
            .await
            .with_context(|| format!("upload {name}"))?;
        let status = response.status();
        let text = response.text().await.context("read the upload's answer")?;
        ensure!(
            status == StatusCode::CREATED,
            "upload {name}: HTTP {status}: {text}"
        );
        serde_json::from_str(&text).context("parse the uploaded File")
    }

    /// Removes a message's container and workspace (its files stay).
    async fn delete_workspace(&self, message: &str) -> Result<()> {
        let response = self
            .http
            .delete(format!("{}/v1/messages/{message}/workspace", self.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .send()
            .await
            .with_context(|| format!("delete the workspace of {message}"))?;
        let status = response.status();
        // 404: the message never got a workspace (its first run failed before the claim).
        if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_FOUND {
            let text = response.text().await.unwrap_or_default();
            bail!("delete the workspace of {message}: HTTP {status}: {text}");
        }
        Ok(())
    }
}

/// The server under test, its client, and what the cases share.
struct Bench {
    server: Server,
    api: Api,
    docker: Docker,
    image: String,
    warm_pool: usize,
    /// The benchmark's own containers are named `codebox-bench-<nonce>-...`.
    nonce: String,
    /// The generated CSV, uploaded anew for every pandas message.
    csv: Vec<u8>,
    /// The folder the pandas baselines mount at `/mnt/data`; it holds a copy of the CSV.
    baseline_data: PathBuf,
    /// The scratch folder, for nginx's and the helper's files.
    scratch: PathBuf,
    /// Messages whose workspace may still exist.
    live: Vec<String>,
    /// Numbers fresh messages and baseline containers.
    minted: u64,
    /// The AutoGen helper, while it runs.
    autogen: Option<AutogenHelper>,
    /// Every warm slot seen ready, with its interpreter's CPU time (in clock ticks) then:
    /// what making it ready cost, since a slot runs nothing before a message takes it.
    slot_cpu_ticks: HashMap<String, u64>,
}

impl Bench {
    /// Starts the server on a free loopback port with a configuration written under
    /// `scratch`, waits until it answers and its pool is full, and writes the CSV.
    async fn open(scratch: &Path, args: &Args) -> Result<Self> {
        let binary = match &args.codebox {
            Some(binary) => binary.clone(),
            None => default_codebox_binary()?,
        };
        let nonce = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let docker = Docker::connect_with_local_defaults()
            .context("connect to the Docker engine")?
            .negotiate_version()
            .await
            .context("negotiate the engine's API version")?;
        let server = Server::start(&binary, scratch, args).await?;
        let http = reqwest::Client::builder()
            // Long enough for a 1 GiB transfer on a slow machine; a hung server still ends.
            .timeout(Duration::from_secs(600))
            .build()
            .context("build the HTTP client")?;
        let api = Api {
            http,
            base_url: server.base_url.clone(),
        };
        let csv = generate_csv(CSV_ROWS).into_bytes();
        let baseline_data = scratch.join("baseline");
        std::fs::create_dir(&baseline_data).context("create the baseline folder")?;
        // The image runs as uid 1000, which must be able to write the report next to the CSV.
        std::fs::set_permissions(&baseline_data, std::fs::Permissions::from_mode(0o777))
            .context("open the baseline folder to the sandbox user")?;
        std::fs::write(baseline_data.join("data.csv"), &csv).context("write the CSV")?;
        let mut bench = Self {
            server,
            api,
            docker,
            image: args.image.clone(),
            warm_pool: args.warm_pool,
            nonce,
            csv,
            baseline_data,
            scratch: scratch.to_owned(),
            live: Vec::new(),
            minted: 0,
            autogen: None,
            slot_cpu_ticks: HashMap::new(),
        };
        bench.wait_pool_full().await?;
        Ok(bench)
    }

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

    /// Cases 1 and 2, interleaved: `warmup` uncounted iterations, then `runs` counted ones.
    async fn measure_latency(&mut self, warmup: usize, runs: usize) -> Result<Latency> {
        // The message of the same-message runs gets its sandbox before its first timed run.
        let warm = format!("warm-{}", self.nonce);
        self.live.push(warm.clone());
        self.api
            .run_ok("warm-up", &warm, PRINT_CODE, &[], Some("1"))
            .await?;
        let mut latency = Latency::default();
        for iteration in 0..warmup + runs {
            let counted = iteration >= warmup;
            let keep = |samples: &mut Vec<f64>, ms: f64| {
                if counted {
                    samples.push(ms);
                }
            };

            // Case 1 and its baseline, each started with a full, idle pool.
            self.wait_pool_full().await?;
            let taken = Instant::now();
            let (total, server) = self.new_message_print().await?;
            keep(&mut latency.new_print, total);
            keep(&mut latency.new_print_server, server);
            self.wait_pool_full().await?;
            keep(&mut latency.refill, taken.elapsed().as_secs_f64() * 1000.0);
            keep(&mut latency.docker_print, self.docker_print().await?);
            let healthz = self.api.healthz().await?;
            keep(&mut latency.healthz, healthz.as_secs_f64() * 1000.0);
            let same = self
                .api
                .run_ok("same message print(1)", &warm, PRINT_CODE, &[], Some("1"))
                .await?;
            keep(&mut latency.same_print, same.ms());

            // Case 2 and its baselines.
            let file = self.api.upload("data.csv", self.csv.clone()).await?;
            let file_id = file["id"]
                .as_str()
                .ok_or_else(|| anyhow!("the upload's File has no id: {file}"))?
                .to_owned();
            self.wait_pool_full().await?;
            keep(
                &mut latency.new_pandas,
                self.new_message_pandas(file_id).await?,
            );
            self.wait_pool_full().await?;
            keep(&mut latency.docker_pandas, self.docker_pandas().await?);
            if let Some(helper) = self.autogen.as_mut() {
                let ms = helper.sample(&self.baseline_data).await?;
                keep(&mut latency.autogen_pandas, ms);
            }
            println!(
                "  iteration {}/{}{}",
                iteration + 1,
                warmup + runs,
                if counted { "" } else { " (warm-up)" }
            );
        }
        self.discard(&warm).await?;
        Ok(latency)
    }

    /// Case 1: the first run of a new message. Returns the round trip and the server's own
    /// `duration_ms`, in milliseconds.
    async fn new_message_print(&mut self) -> Result<(f64, f64)> {
        let message = self.fresh_message("new");
        let exchange = self
            .api
            .run_ok("new message print(1)", &message, PRINT_CODE, &[], Some("1"))
            .await?;
        ensure!(
            exchange.body["kernel"]["execution_count"] == 1
                && exchange.body["kernel"]["restarted"] == false,
            "new message print(1): not the first cell of a fresh interpreter: {}",
            exchange.body
        );
        let server = exchange.body["duration_ms"].as_f64().unwrap_or(f64::NAN);
        self.discard(&message).await?;
        Ok((exchange.ms(), server))
    }

    /// Case 2: a new message with the CSV attached, writing a report that must be
    /// registered.
    async fn new_message_pandas(&mut self, file_id: String) -> Result<f64> {
        let case = "new message pandas csv->xlsx";
        let message = self.fresh_message("pandas");
        let exchange = self
            .api
            .run_ok(case, &message, PANDAS_CODE, &[file_id], None)
            .await?;
        let files = exchange.body["files"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !files.iter().any(|file| file["name"] == "report.xlsx") {
            let names: Vec<&Value> = files.iter().map(|file| &file["name"]).collect();
            bail!("{case}: the run succeeded but registered {names:?}, not report.xlsx");
        }
        self.discard(&message).await?;
        Ok(exchange.ms())
    }

    /// Case 1's baseline, in milliseconds.
    async fn docker_print(&mut self) -> Result<f64> {
        let name = self.container_name("run");
        let started = Instant::now();
        let output = Command::new("docker")
            .args(["run", "--rm", "--name", &name, "--network", "none"])
            .arg(&self.image)
            .args(["python3", "-c", PRINT_CODE])
            .output()
            .await
            .context("start docker")?;
        let elapsed = started.elapsed();
        check_command("docker run print(1)", &output)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            stdout.trim() == "1",
            "docker run print(1): printed {stdout:?}, not 1"
        );
        Ok(elapsed.as_secs_f64() * 1000.0)
    }

    /// Case 2's `docker run` baseline, in milliseconds.
    async fn docker_pandas(&mut self) -> Result<f64> {
        let name = self.container_name("run");
        let mount = format!("{}:/mnt/data", self.baseline_data.display());
        let started = Instant::now();
        let output = Command::new("docker")
            .args(["run", "--rm", "--name", &name, "--network", "none"])
            .args(["-v", &mount, "-w", "/mnt/data"])
            .arg(&self.image)
            .args(["python3", "-c", PANDAS_CODE])
            .output()
            .await
            .context("start docker")?;
        let elapsed = started.elapsed();
        check_command("docker run pandas", &output)?;
        take_report(&self.baseline_data, "docker run pandas")?;
        Ok(elapsed.as_secs_f64() * 1000.0)
    }

    /// Case 4: `count` new messages from two clients, with the engine's baseline around it.
    async fn measure_sustained(&mut self, count: usize) -> Result<Sustained> {
        let before = count / 2;
        let mut engine_time = self.engine_cycles(before).await?;
        self.wait_pool_full().await?;
        let messages: Vec<String> = (0..count).map(|_| self.fresh_message("burst")).collect();
        let messages = Arc::new(messages);
        let next = Arc::new(AtomicUsize::new(0));
        let burst_start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..SUSTAINED_CLIENTS {
            let api = self.api.clone();
            let messages = messages.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(message) = messages.get(index) else {
                        break;
                    };
                    let outcome = api.run(message, PRINT_CODE, &[]).await;
                    seen.push((outcome, burst_start.elapsed()));
                }
                seen
            }));
        }
        let mut latencies = Vec::new();
        let mut ends = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        for task in tasks {
            for (outcome, end) in task.await.context("a sustained client panicked")? {
                match outcome.map(|exchange| (exchange.problem(Some("1")), exchange)) {
                    Ok((None, exchange)) => {
                        latencies.push(exchange.ms());
                        ends.push(end);
                    }
                    Ok((Some(problem), _)) => {
                        errors += 1;
                        first_error.get_or_insert(problem);
                    }
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert(format!("{error:#}"));
                    }
                }
            }
        }
        let wall = burst_start.elapsed();
        // The second half of the baseline runs as the first did: with no sandbox of the
        // burst left and the pool full, so that no refill competes with it.
        self.discard_all(&messages).await?;
        self.wait_pool_full().await?;
        engine_time += self.engine_cycles(count - before).await?;
        Ok(Sustained {
            latencies,
            ends,
            errors,
            first_error,
            wall,
            pool: self.warm_pool,
            engine_cycles: count,
            engine_time,
        })
    }

    /// The engine's baseline: `count` times create, start and force-remove a trivial
    /// hardened container, one after the other. Returns the total time.
    async fn engine_cycles(&mut self, count: usize) -> Result<Duration> {
        let mut total = Duration::ZERO;
        for _ in 0..count {
            let name = self.container_name("engine");
            let body = hardened_sleeper(&self.image);
            let create = CreateContainerOptionsBuilder::default().name(&name).build();
            let remove = RemoveContainerOptionsBuilder::default().force(true).build();
            let started = Instant::now();
            self.docker
                .create_container(Some(create), body)
                .await
                .with_context(|| format!("create {name}"))?;
            self.docker
                .start_container(&name, None)
                .await
                .with_context(|| format!("start {name}"))?;
            self.docker
                .remove_container(&name, Some(remove))
                .await
                .with_context(|| format!("remove {name}"))?;
            total += started.elapsed();
        }
        Ok(total)
    }

    /// Gives each of `messages` its sandbox, with a first run outside any clock; a few at a
    /// time, since each imports pandas. Messages that already have one run once more, which
    /// costs little.
    async fn warm_messages(&self, messages: &[String]) -> Result<()> {
        for chunk in messages.chunks(WARM_CONCURRENCY) {
            let runs = chunk.iter().map(|message| {
                self.api
                    .run_ok("warm-up", message, PRINT_CODE, &[], Some("1"))
            });
            for outcome in futures::future::join_all(runs).await {
                outcome?;
            }
        }
        Ok(())
    }

    /// One load step: a client per message, each sending `print(1)` in its message back to
    /// back until `duration` has passed.
    async fn load(&self, messages: &[String], duration: Duration) -> Load {
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = messages
            .iter()
            .map(|message| {
                let api = self.api.clone();
                let message = message.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = 0usize;
                    let mut first_error = None;
                    while Instant::now() < deadline {
                        match api.run(&message, PRINT_CODE, &[]).await {
                            Ok(exchange) => match exchange.problem(Some("1")) {
                                None => latencies.push(exchange.ms()),
                                Some(problem) => {
                                    errors += 1;
                                    first_error.get_or_insert(problem);
                                }
                            },
                            Err(error) => {
                                errors += 1;
                                first_error.get_or_insert(format!("{error:#}"));
                                // A refused connection fails at once: do not spin on it.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    (latencies, errors, first_error)
                })
            })
            .collect();
        let mut load = Load {
            clients: messages.len(),
            latencies: Vec::new(),
            errors: 0,
            first_error: None,
            wall: Duration::ZERO,
        };
        for task in tasks {
            match task.await {
                Ok((latencies, errors, first_error)) => {
                    load.latencies.extend(latencies);
                    load.errors += errors;
                    if load.first_error.is_none() {
                        load.first_error = first_error;
                    }
                }
                Err(error) => {
                    load.errors += 1;
                    load.first_error
                        .get_or_insert(format!("a client panicked: {error}"));
                }
            }
        }
        load.wall = started.elapsed();
        load
    }

    /// A sweep step: the load, with the server's memory watched.
    async fn sweep_step(&self, messages: &[String], duration: Duration) -> SweepStep {
        let pid = self.server.pid;
        let hwm_before_kib = proc_status_kib(pid, "VmHWM");
        let hwm_reset = reset_peak_rss(pid).is_ok();
        let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watcher = {
            let watching = watching.clone();
            tokio::spawn(async move {
                let mut peak = 0;
                while watching.load(Ordering::Relaxed) {
                    peak = peak.max(proc_status_kib(pid, "VmRSS").unwrap_or(0));
                    tokio::time::sleep(POLL_EVERY).await;
                }
                peak
            })
        };
        let load = self.load(messages, duration).await;
        watching.store(false, Ordering::Relaxed);
        let sampled = watcher.await.unwrap_or(0);
        let hwm = if hwm_reset {
            proc_status_kib(pid, "VmHWM").unwrap_or(0)
        } else {
            0
        };
        let peak = sampled.max(hwm);
        SweepStep {
            load,
            peak_rss_kib: (peak > 0).then_some(peak),
            hwm_reset,
            hwm_before_kib,
        }
    }

    /// Waits until the server's pool holds `warm_pool` slots whose interpreters are ready
    /// and idle (see the module's documentation), and records what each slot's interpreter
    /// used to get ready. Returns how long it waited.
    async fn wait_pool_full(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let marks = self.server.data_dir.join("workspaces").join(".pool");
        // Per slot: its runner's PID, its CPU time when last read, and since when unchanged.
        let mut seen: HashMap<String, (i32, u64, Instant)> = HashMap::new();
        loop {
            self.server.check_alive()?;
            let slots = list_names(&marks)?;
            seen.retain(|slot, _| slots.contains(slot));
            let mut ready = slots.len() >= self.warm_pool;
            if ready {
                for slot in &slots {
                    if !self.slot_idle(slot, &mut seen).await {
                        ready = false;
                    }
                }
            }
            if ready {
                for (slot, (_, ticks, _)) in seen {
                    self.slot_cpu_ticks.entry(slot).or_insert(ticks);
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > POOL_WAIT_LIMIT {
                bail!(
                    "the warm pool did not fill within {} s ({} of {} slots marked); the \
                     server's log:\n{}",
                    POOL_WAIT_LIMIT.as_secs(),
                    slots.len(),
                    self.warm_pool,
                    self.server.log_tail()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Whether `slot`'s interpreter runs and has used no CPU for [`IDLE_FOR`].
    async fn slot_idle(&self, slot: &str, seen: &mut HashMap<String, (i32, u64, Instant)>) -> bool {
        let now = Instant::now();
        let cached = seen.get(slot).map(|(pid, ..)| *pid);
        let pid = match cached {
            Some(pid) => pid,
            None => match self.runner_of(slot).await {
                Some(pid) => pid,
                None => return false,
            },
        };
        let Some(ticks) = cpu_ticks(pid) else {
            // The process is gone: the slot failed and is being remade.
            seen.remove(slot);
            return false;
        };
        let entry = seen.entry(slot.to_owned()).or_insert((pid, ticks, now));
        if entry.1 != ticks {
            *entry = (pid, ticks, now);
            return false;
        }
        now.duration_since(entry.2) >= IDLE_FOR
    }

    /// The host PID of the interpreter in `slot`'s container: the child of its init.
    async fn runner_of(&self, slot: &str) -> Option<i32> {
        let inspected = self
            .docker
            .inspect_container(&format!("codebox-{slot}"), None)
            .await
            .ok()?;
        let state = inspected.state?;
        if state.running != Some(true) {
            return None;
        }
        let init = i32::try_from(state.pid?).ok().filter(|pid| *pid > 0)?;
        let children =
            std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// A message id not used before; it is tracked so that its workspace is deleted even if
    /// the benchmark stops early.
    fn fresh_message(&mut self, kind: &str) -> String {
        self.minted += 1;
        let message = format!("{kind}-{}-{}", self.nonce, self.minted);
        self.live.push(message.clone());
        message
    }

    /// A name for one of the benchmark's own containers.
    fn container_name(&mut self, kind: &str) -> String {
        self.minted += 1;
        format!("codebox-bench-{}-{kind}-{}", self.nonce, self.minted)
    }

    /// Deletes a message's workspace and container.
    async fn discard(&mut self, message: &str) -> Result<()> {
        self.api.delete_workspace(message).await?;
        self.live.retain(|live| live != message);
        Ok(())
    }

    /// Deletes the workspaces of `messages`, a few at a time.
    async fn discard_all(&mut self, messages: &[String]) -> Result<()> {
        for chunk in messages.chunks(WARM_CONCURRENCY) {
            let deletes = chunk
                .iter()
                .map(|message| self.api.delete_workspace(message));
            for outcome in futures::future::join_all(deletes).await {
                outcome?;
            }
            self.live.retain(|live| !chunk.contains(live));
        }
        Ok(())
    }

    /// Stops the AutoGen helper, deletes the workspaces still left, stops the server (which
    /// removes its pool and sandboxes), then removes any container left with the server's
    /// instance label or the benchmark's name prefix and unmounts what is still mounted in
    /// the scratch folder. Tries every step even if one fails, and reports the first failure.
    async fn clean_up(&mut self) -> Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        if let Some(helper) = self.autogen.take() {
            helper.stop().await;
        }
        if self.server.check_alive().is_ok() {
            let live = self.live.clone();
            if let Err(error) = self.discard_all(&live).await {
                eprintln!("deleting the benchmark's workspaces: {error:#}");
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.server.stop().await {
            eprintln!("stopping the server: {error:#}");
            first_error.get_or_insert(error);
        }
        let mut filters = vec![("name", format!("codebox-bench-{}", self.nonce))];
        if let Some(instance) = &self.server.instance {
            filters.push(("label", format!("codebox.instance={instance}")));
        }
        for (key, value) in filters {
            match remove_containers(&self.docker, key, &value).await {
                Ok(0) => {}
                Ok(removed) => {
                    eprintln!("removed {removed} container(s) left behind ({key} {value})")
                }
                Err(error) => {
                    eprintln!("removing containers ({key} {value}): {error:#}");
                    first_error.get_or_insert(error);
                }
            }
        }
        unmount_below(&self.server.data_dir);
        first_error.map_or(Ok(()), Err)
    }
}

impl Bench {
    /// The download phase: uploads a file of `bytes` bytes through the API once, then
    /// downloads it `warmup + runs` times from codebox's signed link and from nginx, and
    /// returns the counted samples.
    async fn measure_downloads(
        &mut self,
        bytes: u64,
        warmup: usize,
        runs: usize,
    ) -> Result<Downloads> {
        let (file, upload) = self.upload_download_file(bytes).await?;
        let link = file["download_url"]
            .as_str()
            .ok_or_else(|| anyhow!("the upload's File has no download_url: {file}"))?
            .to_owned();
        let file_id = file["id"]
            .as_str()
            .ok_or_else(|| anyhow!("the upload's File has no id: {file}"))?;
        // The server keeps blobs in `<data_dir>/blobs`, under the key of the file's id.
        let blobs = Blobs::open(&BlobsConfig::Local { path: None }, &self.server.data_dir)
            .context("open the server's blob folder")?;
        let blob = blobs
            .local_path(&BlobKey::for_file(&FileId::from_stored(file_id)))
            .ok_or_else(|| anyhow!("the blob store is not a local folder; nginx needs one"))?;

        // The guard stops nginx when it goes out of scope, on success, error or interruption.
        let nginx = match find_nginx() {
            Some(binary) => Some(Nginx::start(&binary, &self.scratch.join("nginx"), &blob).await?),
            None => {
                println!(
                    "nginx not found on PATH (nor in /usr/sbin): the nginx download case is \
                     skipped. Install it with `apt-get install nginx-light` (Debian, Ubuntu) \
                     or your system's nginx package, then run again."
                );
                None
            }
        };

        let mut codebox = Vec::with_capacity(runs);
        let mut from_nginx = Vec::with_capacity(runs);
        for iteration in 0..warmup + runs {
            // Alternating which goes first keeps a systematic second-place effect (a warmer
            // cache, a busier disk) from favouring either.
            let (codebox_time, nginx_time) = if iteration % 2 == 0 {
                let codebox_time = self.download(&link, bytes, "codebox").await?;
                (
                    codebox_time,
                    self.download_nginx(nginx.as_ref(), bytes).await?,
                )
            } else {
                let nginx_time = self.download_nginx(nginx.as_ref(), bytes).await?;
                (self.download(&link, bytes, "codebox").await?, nginx_time)
            };
            if iteration >= warmup {
                codebox.push(codebox_time.as_secs_f64());
                from_nginx.extend(nginx_time.map(|time| time.as_secs_f64()));
            }
        }
        let nginx = match nginx {
            Some(nginx) => {
                nginx.stop()?;
                Ok(from_nginx)
            }
            None => Err("nginx not found; install nginx-light or nginx".to_owned()),
        };
        Ok(Downloads {
            bytes,
            upload,
            codebox,
            nginx,
        })
    }

    /// One download from `nginx`, when it runs.
    async fn download_nginx(&self, nginx: Option<&Nginx>, bytes: u64) -> Result<Option<Duration>> {
        match nginx {
            Some(nginx) => Ok(Some(self.download(&nginx.url, bytes, "nginx").await?)),
            None => Ok(None),
        }
    }

    /// Uploads `bytes` bytes through `POST /v1/files`, streamed from one repeated block, and
    /// checks the size and sha256 the server answers. Returns the File and the upload's time.
    async fn upload_download_file(&self, bytes: u64) -> Result<(Value, Duration)> {
        let block = Bytes::from(pseudo_random_block(BLOCK_BYTES));
        let expected = {
            let block = block.clone();
            tokio::task::spawn_blocking(move || sha256_of_repeated(&block, bytes))
                .await
                .context("hash the download file")?
        };
        let chunks = pieces(bytes, BLOCK_BYTES).map(move |length| {
            // A slice of a `Bytes` shares its memory: the stream allocates nothing per piece.
            Ok::<Bytes, std::io::Error>(block.slice(..length))
        });
        let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let part = reqwest::multipart::Part::stream_with_length(body, bytes)
            .file_name(DOWNLOAD_NAME)
            .mime_str("application/octet-stream")
            .context("set the upload's content type")?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let started = Instant::now();
        let response = self
            .api
            .http
            .post(format!("{}/v1/files", self.api.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .multipart(form)
            .send()
            .await
            .context("upload the download file")?;
        let status = response.status();
        let text = response.text().await.context("read the upload's answer")?;
        let elapsed = started.elapsed();
        ensure!(
            status == StatusCode::CREATED,
            "upload the download file: HTTP {status}: {text}"
        );
        let file: Value = serde_json::from_str(&text).context("parse the upload's File")?;
        ensure!(
            file["size"] == bytes && file["sha256"] == expected.as_str(),
            "the uploaded file's size or sha256 is not that of the bytes sent: {file}"
        );
        Ok((file, elapsed))
    }

    /// One download of `url`, read chunk by chunk and counted, never kept. `from` names the
    /// server in errors.
    async fn download(&self, url: &str, bytes: u64, from: &str) -> Result<Duration> {
        let started = Instant::now();
        let mut response = self
            .api
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("download from {from}"))?;
        let status = response.status();
        ensure!(
            status == StatusCode::OK,
            "download from {from}: HTTP {status}"
        );
        let mut received = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("download from {from}: read the body"))?
        {
            received += chunk.len() as u64;
        }
        let elapsed = started.elapsed();
        ensure!(
            received == bytes,
            "download from {from}: received {received} bytes, not {bytes}"
        );
        Ok(elapsed)
    }
}

/// `codebox serve` as a child process, with its own data folder and configuration.
struct Server {
    child: std::process::Child,
    pid: u32,
    base_url: String,
    data_dir: PathBuf,
    /// The instance id that labels its sandboxes, once it has written it.
    instance: Option<String>,
    /// Its standard output and error.
    log: PathBuf,
    /// Whether it has been stopped and waited for.
    stopped: bool,
}

impl Server {
    /// Writes the configuration, starts `binary serve` on a free loopback port and waits
    /// until it answers `/healthz`.
    async fn start(binary: &Path, scratch: &Path, args: &Args) -> Result<Self> {
        ensure!(
            binary.is_file(),
            "{} does not exist: build it first with `cargo build --release`, or pass --codebox",
            binary.display()
        );
        warn_if_stale(binary);
        let port = free_port()?;
        let base_url = format!("http://127.0.0.1:{port}");
        let data_dir = scratch.join("codebox");
        std::fs::create_dir_all(&data_dir).context("create the data folder")?;
        // The download file, and room to spare, must fit under the upload limit.
        let upload_limit = args.download_mib.saturating_mul(1 << 20).max(1 << 30) * 2;
        let config = json!({
            "data_dir": data_dir,
            "sandbox": {
                "image": args.image,
                "warm_pool": args.warm_pool,
                "disk_limit": disk_limit_name(args.disk_limit),
            },
            "limits": { "max_upload_bytes": upload_limit },
            "server": {
                "listen": format!("127.0.0.1:{port}"),
                "public_url": base_url,
                "shutdown_grace": "5s",
                // Far above what the load cases send at once: the limiter is not measured.
                "max_runs_in_flight": 256,
                "max_queued_runs": 1024,
                "tokens": [{ "token": TOKEN, "tenant": TENANT, "role": "service" }],
            },
        });
        let config_file = scratch.join("codebox.toml");
        let text = toml::to_string(&config).context("write the server's configuration")?;
        std::fs::write(&config_file, text).context("write the server's configuration")?;
        // The same loader the server uses: a bad key fails here, with the reason.
        Config::load(Some(&config_file), json!({})).context("check the server's configuration")?;

        let log = scratch.join("server.log");
        let output = std::fs::File::create(&log).context("create the server's log")?;
        let errors = output.try_clone().context("share the server's log")?;
        let mut command = std::process::Command::new(binary);
        command
            .arg("--config")
            .arg(&config_file)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe. It makes the kernel send the server SIGTERM, its
        // graceful stop, if the benchmark dies without running any clean-up (SIGKILL). The
        // spawning thread is the main thread (`#[tokio::main]` polls `main`'s future on it
        // and this is not a spawned task), which lives as long as the process.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        // From here on the guard stops the server if anything fails.
        let mut server = Self {
            pid: child.id(),
            child,
            base_url,
            data_dir,
            instance: None,
            log,
            stopped: false,
        };
        server.wait_until_ready().await?;
        server.instance = std::fs::read_to_string(server.data_dir.join("instance"))
            .ok()
            .map(|text| text.trim().to_owned());
        Ok(server)
    }

    /// Polls `/healthz` until it answers; fails if the server exits or takes over two
    /// minutes.
    async fn wait_until_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("build the HTTP client")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.check_alive()?;
            let answer = client
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await;
            if answer.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "codebox serve did not answer /healthz within 120 s; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, with the end of its log, if the server has exited.
    fn check_alive(&self) -> Result<()> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid));
        // The state follows the command name, which is in parentheses; `Z` is a zombie.
        let alive = stat.is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        });
        ensure!(
            alive && !self.stopped,
            "codebox serve (pid {}) has exited; its log:\n{}",
            self.pid,
            self.log_tail()
        );
        Ok(())
    }

    /// The last lines of the server's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|error| format!("({error})"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the server gracefully (SIGTERM), which removes its pool and its sandboxes;
    /// kills it if it takes over a minute.
    async fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self
            .child
            .try_wait()
            .context("check on the server")?
            .is_some()
        {
            return Ok(());
        }
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self
                .child
                .try_wait()
                .context("check on the server")?
                .is_some()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child.kill().context("kill the server")?;
        self.child.wait().context("wait for the server")?;
        bail!("codebox serve did not stop within 60 s of SIGTERM and was killed")
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid
            && let Err(error) = rustix::process::kill_process(pid, signal)
        {
            eprintln!("signalling the server (pid {}): {error}", self.pid);
        }
    }
}

impl Drop for Server {
    /// The path of early failures: the asynchronous clean-up did not run, so the server is
    /// stopped here, blocking, and what it left mounted is unmounted.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unmount_below(&self.data_dir);
    }
}

/// The Python helper that times AutoGen's executor.
struct AutogenHelper {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Its standard error, quoted when it fails.
    stderr: PathBuf,
    version: String,
    /// How long the executor took to start its container.
    start_ms: f64,
}

impl AutogenHelper {
    /// Installs AutoGen if needed and starts the helper; returns why not when it cannot.
    async fn start(bench: &mut Bench) -> Result<Self, String> {
        let python = autogen_python().await?;
        let work_dir = bench.scratch.join("autogen");
        std::fs::create_dir_all(&work_dir)
            .and_then(|()| {
                std::fs::set_permissions(&work_dir, std::fs::Permissions::from_mode(0o777))
            })
            .map_err(|error| format!("cannot make AutoGen's work folder: {error}"))?;
        let stderr = bench.scratch.join("autogen.log");
        let log = std::fs::File::create(&stderr)
            .map_err(|error| format!("cannot create the helper's log: {error}"))?;
        let container = bench.container_name("autogen");
        let mut child = Command::new(python)
            .arg("-c")
            .arg(AUTOGEN_HELPER)
            .arg(&bench.image)
            .arg(&work_dir)
            .arg(&bench.baseline_data)
            .arg(&container)
            .arg(PANDAS_CODE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot start the helper: {error}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the helper's pipes are missing".to_owned());
        };
        let mut helper = Self {
            child,
            stdin: Some(stdin),
            lines: BufReader::new(stdout).lines(),
            stderr,
            version: String::new(),
            start_ms: 0.0,
        };
        let first = helper
            .read(Duration::from_secs(180))
            .await
            .map_err(|error| format!("{error:#}"))?;
        if let Some(error) = first["error"].as_str() {
            let reason = format!("{error} ({})", helper.log_tail());
            helper.stop().await;
            return Err(reason);
        }
        helper.version = first["version"].as_str().unwrap_or("?").to_owned();
        helper.start_ms = first["start_ms"].as_f64().unwrap_or(f64::NAN);
        Ok(helper)
    }

    /// One timed `execute_code_blocks` of the pandas code, in milliseconds; the report it
    /// wrote is checked and removed.
    async fn sample(&mut self, data: &Path) -> Result<f64> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the AutoGen helper was stopped"))?;
        stdin
            .write_all(b"run\n")
            .await
            .context("ask the AutoGen helper for a run")?;
        stdin.flush().await.context("ask the AutoGen helper")?;
        let answer = self.read(Duration::from_secs(300)).await?;
        ensure!(
            answer["exit_code"] == 0,
            "AutoGen pandas: the code failed: {answer}"
        );
        take_report(data, "AutoGen pandas")?;
        answer["ms"]
            .as_f64()
            .ok_or_else(|| anyhow!("AutoGen helper: no time in {answer}"))
    }

    /// The helper's next line, as JSON.
    async fn read(&mut self, limit: Duration) -> Result<Value> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .with_context(|| format!("the AutoGen helper said nothing for {limit:?}"))?
            .context("read the AutoGen helper")?;
        let Some(line) = line else {
            bail!("the AutoGen helper exited: {}", self.log_tail());
        };
        serde_json::from_str(&line)
            .with_context(|| format!("the AutoGen helper said {line:?}: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Closes the helper's input, so that it stops its executor (removing the container),
    /// and waits for it; kills it after a minute.
    async fn stop(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(_)) => {}
            _ => {
                let _ = self.child.kill().await;
            }
        }
    }
}

/// The Python of a venv that has AutoGen's Docker executor, installing it on first use.
async fn autogen_python() -> Result<PathBuf, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
    let venv = cache.join("codebox-bench").join("venv");
    let python = venv.join("bin").join("python");
    if has_autogen(&python).await {
        return Ok(python);
    }
    println!(
        "installing {AUTOGEN_PACKAGE} into {} for the AutoGen baseline (first use only)",
        venv.display()
    );
    let python3 = Path::new("python3");
    let create: [&std::ffi::OsStr; 3] = ["-m".as_ref(), "venv".as_ref(), venv.as_os_str()];
    install_step(python3, &create, "python3 -m venv").await?;
    let install: [&std::ffi::OsStr; 6] = [
        "-m".as_ref(),
        "pip".as_ref(),
        "install".as_ref(),
        "--quiet".as_ref(),
        "--disable-pip-version-check".as_ref(),
        AUTOGEN_PACKAGE.as_ref(),
    ];
    install_step(&python, &install, "pip install").await?;
    if has_autogen(&python).await {
        Ok(python)
    } else {
        Err(format!(
            "{AUTOGEN_PACKAGE} installed, but its Docker executor does not import"
        ))
    }
}

/// Runs one step of the AutoGen install; fails with the end of its error output.
async fn install_step(
    program: &Path,
    arguments: &[&std::ffi::OsStr],
    step: &str,
) -> Result<(), String> {
    let output = Command::new(program)
        .args(arguments)
        .output()
        .await
        .map_err(|error| format!("cannot run {}: {error}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    Err(format!(
        "installing {AUTOGEN_PACKAGE} failed at {step}: {}",
        lines[lines.len().saturating_sub(3)..].join(" / ")
    ))
}

/// Whether `python` imports AutoGen's Docker executor.
async fn has_autogen(python: &Path) -> bool {
    python.is_file()
        && Command::new(python)
            .args([
                "-c",
                "import autogen_core, autogen_ext.code_executors.docker",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success())
}

/// The engine baseline's container: `sleep infinity` on the sandbox image, hardened and
/// limited as codebox's sandboxes are (without their bind mounts and interpreter).
fn hardened_sleeper(image: &str) -> ContainerCreateBody {
    let memory: i64 = 1 << 30;
    ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some("1000:1000".to_owned()),
        entrypoint: Some(vec!["sleep".to_owned()]),
        cmd: Some(vec!["infinity".to_owned()]),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_owned()),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,size=268435456,mode=1777".to_owned(),
            )])),
            pids_limit: Some(256),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(1_000_000_000),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".to_owned()),
                soft: Some(1024),
                hard: Some(1024),
            }]),
            init: Some(true),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_owned()),
                config: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Force-removes every container, running or not, that matches the engine filter
/// `key=value`. Returns how many it removed.
async fn remove_containers(docker: &Docker, key: &str, value: &str) -> Result<usize> {
    let filters = HashMap::from([(key, vec![value.to_owned()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .context("list containers")?;
    let mut removed = 0;
    for id in containers.into_iter().filter_map(|container| container.id) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) => removed += 1,
            // Already gone, or being removed by someone else.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(error) => return Err(error).with_context(|| format!("remove container {id}")),
        }
    }
    Ok(removed)
}

/// Lazily unmounts every file system mounted at or below `dir` (the server's loop-mounted
/// workspaces, should it have left any), deepest first.
fn unmount_below(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_path(point)))
        .filter(|point| point.starts_with(&dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
    for point in points {
        if let Err(error) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("unmounting {}: {error}", point.display());
        }
    }
}

/// `/proc/self/mountinfo` writes space, tab, newline and backslash in paths as octal escapes.
fn unescape_mount_path(text: &str) -> String {
    text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The entries of `dir` by name; none when it does not exist.
fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("list {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        names.extend(entry.file_name().to_str().map(str::to_owned));
    }
    Ok(names)
}

/// A process's user plus system CPU time, in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, ..., utime (the 12th), stime.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resets a process's `VmHWM` to its current resident size.
fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// Removes the report a baseline wrote, failing if there is none: that both checks the run
/// and keeps every iteration alike.
fn take_report(data: &Path, case: &str) -> Result<()> {
    std::fs::remove_file(data.join("report.xlsx"))
        .with_context(|| format!("{case}: no report.xlsx was written"))
}

/// `codebox` beside the folder this example was built into (`target/<profile>/examples`).
fn default_codebox_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the benchmark's own path")?;
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("{} has no grandparent folder", exe.display()))?;
    Ok(profile.join("codebox"))
}

/// Warns when a source file of the crate is newer than `binary`: the numbers would be those
/// of older code.
fn warn_if_stale(binary: &Path) {
    let Ok(built) = binary.metadata().and_then(|meta| meta.modified()) else {
        return;
    };
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newer = walkdir::WalkDir::new(&sources)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .find(|entry| {
            entry
                .metadata()
                .ok()
                .and_then(|meta| meta.modified().ok())
                .is_some_and(|modified| modified > built)
        });
    if let Some(entry) = newer {
        println!(
            "warning: {} is newer than {}; run `cargo build --release` to measure the current code",
            entry.path().display(),
            binary.display()
        );
    }
}

/// Fails unless the command exited 0, with its stderr for diagnosis.
fn check_command(case: &str, output: &std::process::Output) -> Result<()> {
    if !output.status.success() {
        bail!(
            "{case}: docker ended with {}; stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The engine's version, as the docker CLI reports it.
async fn docker_server_version() -> Result<String> {
    let output = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .await
        .context("run docker version")?;
    check_command("docker version", &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A running nginx serving one file on a loopback port. Dropping it stops nginx.
struct Nginx {
    child: std::process::Child,
    /// The URL of the file.
    url: String,
    /// nginx's error log, quoted when it fails.
    error_log: PathBuf,
}

impl Nginx {
    /// Starts `binary` in the foreground, as a single process, with every file it writes
    /// under `dir` and a hard link to `file` (a copy where linking is impossible) as the one
    /// file under its root. Returns once it accepts connections.
    async fn start(binary: &Path, dir: &Path, file: &Path) -> Result<Self> {
        let root = dir.join("www");
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        let served = root.join(DOWNLOAD_NAME);
        if std::fs::hard_link(file, &served).is_err() {
            // Another file system: a copy holds the same bytes, at the price of the disk.
            std::fs::copy(file, &served)
                .with_context(|| format!("copy {} for nginx", file.display()))?;
        }
        let port = free_port()?;
        let error_log = dir.join("error.log");
        let config = dir.join("nginx.conf");
        std::fs::write(&config, nginx_config(dir, &root, port))
            .with_context(|| format!("write {}", config.display()))?;
        let mut command = std::process::Command::new(binary);
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(&error_log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe. It makes the kernel stop nginx if the benchmark dies
        // without running any clean-up (SIGKILL). The spawning thread is the main thread
        // (`#[tokio::main]` runs `main`'s future on it), which lives as long as the process.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        // From here on the guard stops nginx if it fails to come up.
        let mut nginx = Self {
            child,
            url: format!("http://127.0.0.1:{port}/{DOWNLOAD_NAME}"),
            error_log,
        };
        nginx.wait_until_ready(port).await?;
        Ok(nginx)
    }

    /// Polls the port until nginx accepts a connection; fails if nginx exits or takes more
    /// than ten seconds.
    async fn wait_until_ready(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().context("check on nginx")? {
                bail!(
                    "nginx exited with {status} at start; its error log:\n{}",
                    self.log()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not accept connections within 10 s; its error log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops nginx, reporting a failure to do so.
    fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait().context("check on nginx")?.is_some() {
            return Ok(());
        }
        self.child.kill().context("stop nginx")?;
        self.child.wait().context("wait for nginx to stop")?;
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_else(|error| format!("({error})"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(error) = self.terminate() {
            eprintln!("stopping nginx (pid {}): {error:#}", self.child.id());
        }
    }
}

/// nginx's configuration: one foreground process that writes only under `dir` and serves
/// `root` on 127.0.0.1:`port`, with sendfile as a production static-file server would use.
fn nginx_config(dir: &Path, root: &Path, port: u16) -> String {
    let dir = dir.display();
    let root = root.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 64;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"
    )
}

/// The nginx binary: the first on PATH, else the usual place of distribution packages
/// (`/usr/sbin` is not on every user's PATH).
fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// A loopback port free right now. Another process could take it before nginx binds it;
/// nginx then fails to start, and says so.
fn free_port() -> Result<u16> {
    let listener =
        StdTcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("find a free port")?;
    Ok(listener.local_addr().context("read the free port")?.port())
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

/// The lengths of the pieces `total` bytes are cut into, none longer than `piece`.
fn pieces(total: u64, piece: usize) -> impl Iterator<Item = usize> {
    let whole = piece as u64;
    // Every piece is at most `piece` long, so it fits a usize.
    (0..total.div_ceil(whole)).map(move |index| whole.min(total - index * whole) as usize)
}

/// `bytes` bytes of a fixed sequence, the same on every run.
fn pseudo_random_block(bytes: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..bytes)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

/// The hex sha256 of `total` bytes made of `block` repeated (the last copy cut short).
fn sha256_of_repeated(block: &[u8], total: u64) -> String {
    let mut hasher = Sha256::new();
    for length in pieces(total, block.len()) {
        hasher.update(&block[..length]);
    }
    hex::encode(hasher.finalize())
}

/// A CSV of `rows` rows of mixed columns, the same on every run (a fixed linear congruential
/// sequence stands in for random data).
fn generate_csv(rows: usize) -> String {
    const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut csv = String::from("id,region,units,price,discount\n");
    for id in 0..rows {
        let region = REGIONS[(next() % 4) as usize];
        let units = next() % 500 + 1;
        let price = (next() % 100_000) as f64 / 100.0;
        let discount = (next() % 30) as f64 / 100.0;
        csv.push_str(&format!("{id},{region},{units},{price:.2},{discount:.2}\n"));
    }
    csv
}

/// The nearest-rank percentile of ascending `sorted` samples: the smallest sample that at least
/// `percent` per cent of the samples are less than or equal to. `sorted` must not be empty.
fn percentile(sorted: &[f64], percent: usize) -> f64 {
    let rank = (percent * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The summary of one case's samples; every figure is NaN when there are none.
struct Stats {
    n: usize,
    p50: f64,
    p95: f64,
    p99: f64,
    mean: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Self {
                n: 0,
                p50: f64::NAN,
                p95: f64::NAN,
                p99: f64::NAN,
                mean: f64::NAN,
            };
        }
        Self {
            n: sorted.len(),
            p50: percentile(&sorted, 50),
            p95: percentile(&sorted, 95),
            p99: percentile(&sorted, 99),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// The summary of one download case: seconds per download, and the throughput of the
/// median download.
struct Throughput {
    seconds: Stats,
    /// MiB/s at the p50 time, so that the two columns always describe the same download.
    p50_mib_per_s: f64,
}

impl Throughput {
    fn of(seconds: &[f64], bytes: u64) -> Self {
        let seconds = Stats::of(seconds);
        Self {
            p50_mib_per_s: bytes as f64 / f64::from(1 << 20) / seconds.p50,
            seconds,
        }
    }

    fn json(&self) -> Value {
        json!({
            "p50_s": round(self.seconds.p50, 3),
            "p95_s": round(self.seconds.p95, 3),
            "mean_s": round(self.seconds.mean, 3),
            "p50_mib_per_s": round(self.p50_mib_per_s, 1),
            "n": self.seconds.n,
        })
    }
}

/// "1 GiB" or "64 MiB": the size in the download cases' names.
fn size_label(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// One row of the summary table.
struct Row {
    case: String,
    p50: String,
    p99: String,
    throughput: String,
    errors: String,
    rss: String,
    baseline: String,
    ratio: String,
    target: String,
    met: String,
}

impl Row {
    const HEADER: [&'static str; 10] = [
        "case",
        "p50",
        "p99",
        "throughput",
        "errors",
        "server RSS",
        "baseline",
        "ratio",
        "target",
        "met",
    ];

    /// A row with only a case name; the other cells say "-".
    fn named(case: impl Into<String>) -> Self {
        let dash = || "-".to_owned();
        Self {
            case: case.into(),
            p50: dash(),
            p99: dash(),
            throughput: dash(),
            errors: dash(),
            rss: dash(),
            baseline: dash(),
            ratio: dash(),
            target: dash(),
            met: dash(),
        }
    }

    fn cells(&self) -> [&str; 10] {
        [
            &self.case,
            &self.p50,
            &self.p99,
            &self.throughput,
            &self.errors,
            &self.rss,
            &self.baseline,
            &self.ratio,
            &self.target,
            &self.met,
        ]
    }
}

/// Prints `rows` as a table whose columns are as wide as their widest cell.
fn print_table(rows: &[Row]) {
    let mut widths = Row::HEADER.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.cells()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 10]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(Row::HEADER);
    for row in rows {
        line(row.cells());
    }
}

/// "12.3 ms", or "-" when there is no sample.
fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else {
        format!("{value:.1} ms")
    }
}

fn yes_no(met: bool) -> String {
    if met { "yes" } else { "no" }.to_owned()
}

/// The JSON summary of latency samples, in milliseconds.
fn latency_json(stats: &Stats) -> Value {
    json!({
        "p50_ms": round(stats.p50, 2),
        "p99_ms": round(stats.p99, 2),
        "mean_ms": round(stats.mean, 2),
        "n": stats.n,
    })
}

/// The JSON summary of a load step.
fn load_json(load: &Load) -> Value {
    let stats = Stats::of(&load.latencies);
    json!({
        "clients": load.clients,
        "runs_per_s": round(load.runs_per_s(), 1),
        "p50_ms": round(stats.p50, 2),
        "p99_ms": round(stats.p99, 2),
        "runs": stats.n,
        "errors": load.errors,
        "first_error": load.first_error,
        "wall_s": round(load.wall.as_secs_f64(), 3),
    })
}

/// "1 client", "4 clients".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints the table, the notes and the `BENCH_JSON` line.
fn report(args: &Args, docker_version: &str, results: &Results, elapsed: Duration) -> Result<()> {
    let latency = &results.latency;
    let mut rows = Vec::new();

    // Case 1.
    let new_print = Stats::of(&latency.new_print);
    let docker_print = Stats::of(&latency.docker_print);
    let healthz = Stats::of(&latency.healthz);
    let same_print = Stats::of(&latency.same_print);
    let server_print = Stats::of(&latency.new_print_server);
    let refill = Stats::of(&latency.refill);
    let speedup = docker_print.p50 / new_print.p50;
    let case1_met = speedup >= TARGET_NEW_PRINT_SPEEDUP && new_print.p50 < TARGET_NEW_PRINT_MS;
    rows.push(Row {
        p50: ms(new_print.p50),
        p99: ms(new_print.p99),
        baseline: format!("docker run {}", ms(docker_print.p50)),
        ratio: format!("{speedup:.1}x faster"),
        target: format!(">={TARGET_NEW_PRINT_SPEEDUP}x faster, <{TARGET_NEW_PRINT_MS} ms"),
        met: yes_no(case1_met),
        ..Row::named("1 new message print(1), HTTP")
    });
    for (name, stats) in [
        ("  for comparison: GET /healthz", &healthz),
        ("  for comparison: same message print(1)", &same_print),
        ("  for comparison: server duration_ms", &server_print),
    ] {
        rows.push(Row {
            p50: ms(stats.p50),
            p99: ms(stats.p99),
            ..Row::named(name)
        });
    }

    // Case 2.
    let new_pandas = Stats::of(&latency.new_pandas);
    let docker_pandas = Stats::of(&latency.docker_pandas);
    let autogen_pandas = Stats::of(&latency.autogen_pandas);
    let vs_docker = new_pandas.p50 / docker_pandas.p50;
    let vs_autogen = new_pandas.p50 / autogen_pandas.p50;
    rows.push(Row {
        p50: ms(new_pandas.p50),
        p99: ms(new_pandas.p99),
        baseline: format!("docker run {}", ms(docker_pandas.p50)),
        ratio: format!("{vs_docker:.3}x"),
        target: format!("<={TARGET_PANDAS_VS_DOCKER}x"),
        met: yes_no(vs_docker <= TARGET_PANDAS_VS_DOCKER),
        ..Row::named("2 new message pandas csv->xlsx")
    });
    rows.push(match &results.autogen {
        Ok(_) => Row {
            p50: ms(new_pandas.p50),
            p99: ms(new_pandas.p99),
            baseline: format!("AutoGen {}", ms(autogen_pandas.p50)),
            ratio: format!("{vs_autogen:.3}x"),
            target: format!("<={TARGET_PANDAS_VS_AUTOGEN}x"),
            met: yes_no(vs_autogen <= TARGET_PANDAS_VS_AUTOGEN),
            ..Row::named("2 same, against AutoGen")
        },
        Err(reason) => Row {
            baseline: "AutoGen skipped".to_owned(),
            target: format!("<={TARGET_PANDAS_VS_AUTOGEN}x"),
            met: format!("skipped ({reason})"),
            ..Row::named("2 same, against AutoGen")
        },
    });

    // Case 3.
    let same = &results.same_message;
    let same_stats = Stats::of(&same.latencies);
    let case3_met = same.runs_per_s() >= TARGET_SAME_MESSAGE_RUNS_PER_S && same.errors == 0;
    rows.push(Row {
        p50: ms(same_stats.p50),
        p99: ms(same_stats.p99),
        throughput: format!("{:.0} runs/s", same.runs_per_s()),
        errors: same.errors.to_string(),
        target: format!(">={TARGET_SAME_MESSAGE_RUNS_PER_S} runs/s"),
        met: yes_no(case3_met),
        ..Row::named(format!("3 same message print(1), {} clients", same.clients))
    });

    // Case 4.
    let sustained = &results.sustained;
    let sustained_stats = Stats::of(&sustained.latencies);
    let steady = sustained.steady_per_s();
    let engine_rate = sustained.engine_per_s();
    let sustained_ratio = steady.unwrap_or(sustained.overall_per_s()) / engine_rate;
    let case4_met = sustained_ratio >= TARGET_SUSTAINED_RATIO && sustained.errors == 0;
    rows.push(Row {
        p50: ms(sustained_stats.p50),
        p99: ms(sustained_stats.p99),
        throughput: match steady {
            Some(steady) => format!("{steady:.2} msg/s"),
            None => format!("{:.2} msg/s (all)", sustained.overall_per_s()),
        },
        errors: sustained.errors.to_string(),
        baseline: format!("engine {engine_rate:.2}/s"),
        ratio: format!("{sustained_ratio:.2}x"),
        target: format!(">={TARGET_SUSTAINED_RATIO}x"),
        met: yes_no(case4_met),
        ..Row::named(format!(
            "4 new messages back to back, {SUSTAINED_CLIENTS} clients, steady"
        ))
    });
    rows.push(Row {
        throughput: format!("{:.2} msg/s", sustained.overall_per_s()),
        ratio: format!("{:.2}x", sustained.overall_per_s() / engine_rate),
        ..Row::named("  the whole burst, pooled slots included")
    });

    // Case 5.
    let largest = results.sweep.iter().max_by_key(|step| step.load.clients);
    let mut case5_met = None;
    for step in &results.sweep {
        let stats = Stats::of(&step.load.latencies);
        let rss = step.peak_rss_kib.map(kib_to_mib);
        let is_largest = largest.is_some_and(|largest| std::ptr::eq(largest, step));
        let met = rss.is_some_and(|mib| mib <= TARGET_PEAK_RSS_MIB) && step.load.errors == 0;
        if is_largest {
            case5_met = Some(met);
        }
        rows.push(Row {
            p50: ms(stats.p50),
            p99: ms(stats.p99),
            throughput: format!("{:.0} runs/s", step.load.runs_per_s()),
            errors: step.load.errors.to_string(),
            rss: rss.map_or("?".to_owned(), |mib| format!("{mib:.1} MiB")),
            target: if is_largest {
                format!("RSS <={TARGET_PEAK_RSS_MIB} MiB, no errors")
            } else {
                "-".to_owned()
            },
            met: if is_largest {
                yes_no(met)
            } else {
                "-".to_owned()
            },
            ..Row::named(format!(
                "5 sweep, {}, own message each",
                plural(step.load.clients, "client")
            ))
        });
    }
    print_table(&rows);
    println!();

    // Notes: where case 1's time goes, what bounds case 4, and anything that went wrong.
    let back_to_back = results
        .sweep
        .iter()
        .find(|step| step.load.clients == 1)
        .map(|step| Stats::of(&step.load.latencies).p50);
    println!(
        "case 1: a new message's print(1) takes {} at p50. For comparison, in the same \
         iterations: an HTTP round trip alone (GET /healthz) {}; print(1) in a message whose \
         sandbox already runs {} (so taking a warm slot and claiming the message add about \
         {:.1} ms); the code's execution as the server reports it (duration_ms) {}.{}",
        ms(new_print.p50),
        ms(healthz.p50),
        ms(same_print.p50),
        new_print.p50 - same_print.p50,
        ms(server_print.p50),
        back_to_back.map_or(String::new(), |p50| format!(
            " Back to back (case 5, one client) the same-message run takes {} at p50: an \
             isolated request on an otherwise idle machine pays more than one in a stream.",
            ms(p50)
        )),
    );
    match &results.autogen {
        Ok(info) => println!(
            "case 2: AutoGen {} with one DockerCommandLineCodeExecutor for the whole benchmark \
             (its container start, {:.0} ms, is not in the samples); each sample is a new \
             python3 process in that container, which imports pandas.",
            info.version, info.start_ms
        ),
        Err(reason) => println!("case 2: the AutoGen baseline was skipped: {reason}"),
    }
    let slot_cpu = Stats::of(&results.slot_cpu_s);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "case 4: {} messages in {:.2} s: {:.2} msg/s overall, {} after the {} pooled slots \
         were used up; the engine created, started and removed {} hardened containers at \
         {:.2}/s. Once the pool is empty each new message starts a sandbox of its own, \
         which imports nothing ahead, so the engine's container start bounds the rate; the \
         pool holds off refilling while messages keep finding it empty, because a warm slot \
         costs its interpreter {:.2} CPU s of preloading (p50 of {} slots; the pool took {} \
         at p50 to replace one), which would cap new messages at about {:.1}/s on {cores} \
         cores if every message paid it.",
        sustained.latencies.len(),
        sustained.wall.as_secs_f64(),
        sustained.overall_per_s(),
        steady.map_or("-".to_owned(), |steady| format!("{steady:.2} msg/s")),
        sustained.pool,
        sustained.engine_cycles,
        engine_rate,
        slot_cpu.p50,
        slot_cpu.n,
        ms(refill.p50),
        cores as f64 / slot_cpu.p50,
    );
    for (name, load) in std::iter::once(("case 3", same))
        .chain(results.sweep.iter().map(|step| ("case 5", &step.load)))
    {
        if let Some(error) = &load.first_error {
            println!(
                "{name}, {}: {} errors; the first: {error}",
                plural(load.clients, "client"),
                load.errors
            );
        }
    }
    if let Some(error) = &sustained.first_error {
        println!("case 4: {} errors; the first: {error}", sustained.errors);
    }
    if let Some(step) = largest {
        println!(
            "case 5: the server's peak RSS during the {}-client step: {} ({}); over its whole \
             life: {}. The server ran as its own process, apart from the load generator.",
            step.load.clients,
            step.peak_rss_kib
                .map_or("unknown".to_owned(), |kib| format!(
                    "{:.1} MiB",
                    kib_to_mib(kib)
                )),
            if step.hwm_reset {
                "VmHWM reset before the step, and VmRSS sampled"
            } else {
                "VmHWM could not be reset: sampled VmRSS only"
            },
            results
                .lifetime_hwm_kib
                .map_or("unknown".to_owned(), |kib| format!(
                    "{:.1} MiB",
                    kib_to_mib(kib)
                )),
        );
    }
    println!(
        "server: max_runs_in_flight = 256 and max_queued_runs = 1024 (raised from 4 and 32 so \
         that the limiter is not what the load cases measure); warm_pool = {}.",
        args.warm_pool
    );

    let mut skipped = serde_json::Map::new();
    if let Err(reason) = &results.autogen {
        skipped.insert("autogen".to_owned(), json!(reason));
    }
    let download = match &results.downloads {
        None => {
            skipped.insert("download".to_owned(), json!("--skip-download"));
            Value::Null
        }
        Some(downloads) => report_downloads(args, downloads, &mut skipped),
    };
    let line = json!({
        "runs": args.runs,
        "warmup": args.warmup,
        "image": args.image,
        "warm_pool": args.warm_pool,
        "duration_s": args.duration,
        "disk_limit": disk_limit_name(args.disk_limit),
        "elapsed_s": round(elapsed.as_secs_f64(), 1),
        "new_message_print": {
            "codebox": latency_json(&new_print),
            "docker_run": latency_json(&docker_print),
            "speedup": round(speedup, 2),
            "target_met": case1_met,
            "breakdown": {
                "healthz": latency_json(&healthz),
                "same_message_print": latency_json(&same_print),
                "server_duration": latency_json(&server_print),
            },
        },
        "new_message_pandas": {
            "codebox": latency_json(&new_pandas),
            "docker_run": latency_json(&docker_pandas),
            "autogen": results.autogen.as_ref().ok().map(|info| json!({
                "samples": latency_json(&autogen_pandas),
                "version": info.version,
                "executor": "one per benchmark run",
                "executor_start_ms": round(info.start_ms, 1),
            })),
            "ratio_docker_run": round(vs_docker, 4),
            "ratio_autogen": results.autogen.is_ok().then(|| round(vs_autogen, 4)),
            "target_met_docker_run": vs_docker <= TARGET_PANDAS_VS_DOCKER,
            "target_met_autogen": results
                .autogen
                .is_ok()
                .then_some(vs_autogen <= TARGET_PANDAS_VS_AUTOGEN),
        },
        "same_message": {
            "load": load_json(same),
            "target_met": case3_met,
        },
        "sustained_new_messages": {
            "messages": sustained.latencies.len(),
            "clients": SUSTAINED_CLIENTS,
            "errors": sustained.errors,
            "first_error": sustained.first_error,
            "wall_s": round(sustained.wall.as_secs_f64(), 3),
            "messages_per_s": round(sustained.overall_per_s(), 3),
            "steady_messages_per_s": steady.map(|steady| round(steady, 3)),
            "latency": latency_json(&sustained_stats),
            "engine_cycles": sustained.engine_cycles,
            "engine_cycles_per_s": round(engine_rate, 3),
            "ratio": round(sustained_ratio, 3),
            "target_met": case4_met,
            "slot_ready_cpu_s": {
                "p50": round(slot_cpu.p50, 3),
                "p99": round(slot_cpu.p99, 3),
                "n": slot_cpu.n,
            },
            "pool_refill_one_slot": latency_json(&refill),
        },
        "sweep": results.sweep.iter().map(|step| {
            let mut entry = load_json(&step.load);
            entry["peak_rss_mib"] = json!(step.peak_rss_kib.map(|kib| round(kib_to_mib(kib), 2)));
            entry["hwm_reset"] = json!(step.hwm_reset);
            entry
        }).collect::<Vec<_>>(),
        "sweep_target_met": case5_met,
        "server_lifetime_peak_rss_mib": results.lifetime_hwm_kib.map(|kib| round(kib_to_mib(kib), 2)),
        "download": download,
        "skipped": skipped,
        "machine": { "cores": cores, "docker_server_version": docker_version },
    });
    println!("BENCH_JSON {line}");
    Ok(())
}

/// Prints the download table and returns its JSON.
fn report_downloads(
    args: &Args,
    downloads: &Downloads,
    skipped: &mut serde_json::Map<String, Value>,
) -> Value {
    let size = size_label(downloads.bytes);
    let codebox_name = format!("codebox download {size}");
    let nginx_name = format!("nginx download {size}");
    let codebox = Throughput::of(&downloads.codebox, downloads.bytes);
    let nginx = downloads
        .nginx
        .as_ref()
        .map(|seconds| Throughput::of(seconds, downloads.bytes));
    let upload_s = downloads.upload.as_secs_f64();
    let upload_rate = downloads.bytes as f64 / f64::from(1 << 20) / upload_s;
    println!();
    println!(
        "{:<38} {:>4} {:>9} {:>9} {:>9}  p50 MiB/s ratio vs",
        "case", "n", "p50 s", "p95 s", "p50 MiB/s"
    );
    let row = |name: &str, t: &Throughput, ratio: &str| {
        println!(
            "{name:<38} {:>4} {:>9.3} {:>9.3} {:>9.1}  {ratio}",
            t.seconds.n, t.seconds.p50, t.seconds.p95, t.p50_mib_per_s
        );
    };
    let mut cases = serde_json::Map::new();
    let mut ratio = Value::Null;
    match &nginx {
        Ok(nginx) => {
            let throughput_ratio = codebox.p50_mib_per_s / nginx.p50_mib_per_s;
            row(
                &codebox_name,
                &codebox,
                &format!("{throughput_ratio:.2}x {nginx_name}"),
            );
            row(&nginx_name, nginx, "-");
            cases.insert(nginx_name.clone(), nginx.json());
            ratio = json!(round(throughput_ratio, 3));
        }
        Err(reason) => {
            row(&codebox_name, &codebox, "-");
            println!("{nginx_name:<38} skipped: {reason}");
            skipped.insert(nginx_name, json!(reason));
        }
    }
    cases.insert(codebox_name, codebox.json());
    println!(
        "upload of the {size} file through POST /v1/files (once): {upload_s:.2} s, \
         {upload_rate:.1} MiB/s"
    );
    json!({
        "bytes": downloads.bytes,
        "runs": args.download_runs,
        "upload_s": round(upload_s, 3),
        "upload_mib_per_s": round(upload_rate, 1),
        "cases": cases,
        "ratio_codebox_nginx": ratio,
    })
}

/// `value` rounded to `decimals` places, so that the JSON does not carry float noise; NaN
/// (no samples) stays NaN, which the JSON writes as null.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 50), 10.0);
        assert_eq!(percentile(&twenty, 95), 19.0);
        assert_eq!(percentile(&twenty, 100), 20.0);
        assert_eq!(percentile(&[7.0], 50), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0), 1.0);
    }

    #[test]
    fn pieces_cover_the_total() {
        assert_eq!(pieces(10, 4).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(pieces(8, 4).collect::<Vec<_>>(), [4, 4]);
        assert_eq!(pieces(0, 4).count(), 0);
        let block = pseudo_random_block(3);
        let whole: Vec<u8> = block
            .iter()
            .chain(&block)
            .chain(&block[..1])
            .copied()
            .collect();
        assert_eq!(
            sha256_of_repeated(&block, 7),
            hex::encode(Sha256::digest(&whole))
        );
    }

    #[test]
    fn proc_readers_read_this_process() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").is_some_and(|kib| kib > 0));
        assert!(proc_status_kib(pid, "NoSuchField").is_none());
        assert!(cpu_ticks(i32::try_from(pid).expect("a pid fits an i32")).is_some());
    }

    #[test]
    fn steady_rate_leaves_out_the_pooled_slots() {
        let sustained = Sustained {
            latencies: vec![1.0; 6],
            ends: [1, 2, 10, 20, 30, 40]
                .map(|s| Duration::from_secs(s))
                .to_vec(),
            errors: 0,
            first_error: None,
            wall: Duration::from_secs(40),
            pool: 2,
            engine_cycles: 4,
            engine_time: Duration::from_secs(2),
        };
        // Four messages ended in the 38 s after the second one.
        assert_eq!(sustained.steady_per_s(), Some(4.0 / 38.0));
        assert_eq!(sustained.overall_per_s(), 6.0 / 40.0);
        assert_eq!(sustained.engine_per_s(), 2.0);
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }
}
