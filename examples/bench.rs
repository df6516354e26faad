//! End-to-end latency of codebox runs, against plain `docker run` as the baseline.
//!
//! Each iteration measures five cases, one after the other, so that noise on the machine hits
//! them all alike:
//!
//! 1. `codebox new message print(1)`: a run in a message never seen before, so the supervisor
//!    claims it, prepares its workspace and creates and starts its sandbox container. This is
//!    the cold path every new chat message pays.
//! 2. `codebox same message print(1)`: another run in one message whose container already
//!    runs (the warm path of a follow-up run).
//! 3. `codebox new message pandas csv->xlsx`: a new message with an attached 1000-row CSV,
//!    whose code reads it with pandas and writes `report.xlsx`, which must be registered.
//! 4. `docker run print(1)`: `docker run --rm --network none <image> python3 -c "print(1)"`.
//! 5. `docker run pandas csv->xlsx`: the pandas code in `docker run --rm --network none` with
//!    a folder holding the CSV mounted at `/mnt/data`.
//!
//! The clock is wall time around the whole `Supervisor::run` call or the whole `docker run`
//! command. Uploading the CSV and removing containers and workspaces happen outside it. Any
//! run that fails stops the benchmark with its stderr and a non-zero exit status.
//!
//! The output is a table, then one line `BENCH_JSON {...}` for scripts. Run it with:
//!
//! ```text
//! cargo run --release --example bench -- [--runs 20] [--image codebox-python:latest]
//! ```
//!
//! Read the ratios with two differences in mind. `docker run --rm` returns only once its
//! container is removed, while codebox removes a message's container later, outside the clock
//! here. And the baselines run with Docker's defaults (no CPU or memory limit, writable root
//! file system, no init), where codebox sandboxes are hardened.
//!
//! It needs the local Docker engine and the image. The image runs code as uid 1000, so the
//! baseline's folder is made world-writable.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use codebox::catalog::{FileRecord, Owner, RunStatus};
use codebox::config::SandboxConfig;
use codebox::{Config, RunReport, RunRequest, Supervisor};
use serde_json::{Map, Value, json};
use tokio::process::Command;

/// The tenant of every run; it is also the catalog key of its messages.
const TENANT: &str = "bench";
/// The one chat every benchmark message belongs to.
const CHAT: &str = "bench-chat";
/// The smallest program: its time is the fixed cost of a run.
const PRINT_CODE: &str = "print(1)";
/// A typical report: read an attachment with pandas, write a spreadsheet.
const PANDAS_CODE: &str = "import pandas as pd; df = pd.read_csv('/mnt/data/data.csv'); \
     df.describe().to_excel('/mnt/data/report.xlsx')";
/// The rows of the generated CSV.
const CSV_ROWS: usize = 1000;

const NEW_PRINT: usize = 0;
const SAME_PRINT: usize = 1;
const NEW_PANDAS: usize = 2;
const DOCKER_PRINT: usize = 3;
const DOCKER_PANDAS: usize = 4;

/// Case names, indexed by the constants above, as they appear in the table and the JSON.
const CASES: [&str; 5] = [
    "codebox new message print(1)",
    "codebox same message print(1)",
    "codebox new message pandas csv->xlsx",
    "docker run print(1)",
    "docker run pandas csv->xlsx",
];

/// Each codebox case and the `docker run` baseline doing the same work.
const RATIOS: [(usize, usize); 3] = [
    (NEW_PRINT, DOCKER_PRINT),
    (SAME_PRINT, DOCKER_PRINT),
    (NEW_PANDAS, DOCKER_PANDAS),
];

#[derive(Debug, Parser)]
#[command(about = "Measures codebox run latency against plain docker run")]
struct Args {
    /// Measured iterations; each one runs every case once.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The sandbox image, for codebox and the docker-run baselines alike.
    #[arg(long, default_value = "codebox-python:latest")]
    image: String,
    /// Iterations run first and not counted: they pay for cold page caches and lazy setup.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    let docker_version = docker_server_version().await?;
    let scratch = tempfile::tempdir().context("create the scratch folder")?;
    let mut bench = Bench::open(scratch.path(), &args.image).await?;
    let measured = bench.measure(args.warmup, args.runs).await;
    // Containers outlive the process, so they are removed whether or not the runs succeeded.
    let cleaned = bench.clean_up().await;
    let samples = measured?;
    cleaned?;
    report(&args, &docker_version, &samples)
}

/// The supervisor under test and what the cases share.
struct Bench {
    supervisor: Supervisor,
    owner: Owner,
    image: String,
    /// The generated CSV, uploaded anew for every pandas message.
    csv: PathBuf,
    /// The folder the pandas baseline mounts at `/mnt/data`; it holds a copy of the CSV.
    baseline_data: PathBuf,
    /// The message every warm run uses.
    warm_message: String,
    /// Messages whose container and workspace still exist.
    live: Vec<String>,
    /// Numbers the fresh messages.
    minted: u64,
}

impl Bench {
    /// Opens a supervisor whose catalog, blobs and workspaces live under `scratch`, and writes
    /// the CSV for both pandas cases.
    async fn open(scratch: &Path, image: &str) -> Result<Self> {
        let defaults = Config::default();
        let config = Config {
            data_dir: scratch.join("codebox"),
            sandbox: SandboxConfig {
                image: image.to_owned(),
                ..defaults.sandbox.clone()
            },
            ..defaults
        };
        let supervisor = Supervisor::open(config)
            .await
            .context("open the supervisor (is Docker running and the image built?)")?;
        let csv = scratch.join("data.csv");
        std::fs::write(&csv, generate_csv(CSV_ROWS)).context("write the CSV")?;
        let baseline_data = scratch.join("baseline");
        std::fs::create_dir(&baseline_data).context("create the baseline folder")?;
        // The image runs as uid 1000, which must be able to write the report next to the CSV.
        std::fs::set_permissions(&baseline_data, std::fs::Permissions::from_mode(0o777))
            .context("open the baseline folder to the sandbox user")?;
        std::fs::copy(&csv, baseline_data.join("data.csv")).context("copy the CSV")?;
        Ok(Self {
            supervisor,
            owner: Owner::new(TENANT, "user"),
            image: image.to_owned(),
            csv,
            baseline_data,
            warm_message: "bench-warm".to_owned(),
            live: Vec::new(),
            minted: 0,
        })
    }

    /// Runs `warmup` uncounted iterations, then `runs` counted ones, of every case in turn.
    /// Returns the wall-clock samples of each case, in milliseconds, indexed like [`CASES`].
    async fn measure(&mut self, warmup: usize, runs: usize) -> Result<Vec<Vec<f64>>> {
        // The warm case needs its container before its first timed run.
        self.live.push(self.warm_message.clone());
        let first = self.run(&self.warm_message, PRINT_CODE, Vec::new()).await?;
        check_print(CASES[SAME_PRINT], &first)?;

        let mut samples = vec![Vec::with_capacity(runs); CASES.len()];
        for iteration in 0..warmup + runs {
            let times = [
                self.new_message_print().await?,
                self.same_message_print().await?,
                self.new_message_pandas().await?,
                self.docker_print().await?,
                self.docker_pandas().await?,
            ];
            if iteration >= warmup {
                for (case, time) in times.into_iter().enumerate() {
                    samples[case].push(time.as_secs_f64() * 1000.0);
                }
            }
        }
        Ok(samples)
    }

    /// Case 1: the first run of a new message.
    async fn new_message_print(&mut self) -> Result<Duration> {
        let message = self.fresh_message();
        let started = Instant::now();
        let report = self.run(&message, PRINT_CODE, Vec::new()).await;
        let elapsed = started.elapsed();
        check_print(CASES[NEW_PRINT], &report?)?;
        self.discard(&message, &[]).await?;
        Ok(elapsed)
    }

    /// Case 2: one more run in the message whose container is up.
    async fn same_message_print(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let report = self.run(&self.warm_message, PRINT_CODE, Vec::new()).await;
        let elapsed = started.elapsed();
        check_print(CASES[SAME_PRINT], &report?)?;
        Ok(elapsed)
    }

    /// Case 3: a new message with an attachment, writing a report that must be registered.
    async fn new_message_pandas(&mut self) -> Result<Duration> {
        let message = self.fresh_message();
        // The upload is its own request before the run, as in a chat: it is not timed.
        let body = tokio::fs::File::open(&self.csv)
            .await
            .context("open the CSV")?;
        let upload = self
            .supervisor
            .upload(&self.owner, "data.csv", Some(CHAT), Some(&message), body)
            .await
            .context("upload the CSV")?;
        let started = Instant::now();
        let report = self
            .run(&message, PANDAS_CODE, vec![upload.id.clone()])
            .await;
        let elapsed = started.elapsed();
        let report = report?;
        check_succeeded(CASES[NEW_PANDAS], &report)?;
        if !report.files.iter().any(|file| file.name == "report.xlsx") {
            let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
            bail!(
                "{}: the run succeeded but registered {names:?}, not report.xlsx",
                CASES[NEW_PANDAS]
            );
        }
        let mut files = report.files;
        files.push(upload);
        self.discard(&message, &files).await?;
        Ok(elapsed)
    }

    /// Case 4: the print baseline.
    async fn docker_print(&self) -> Result<Duration> {
        let started = Instant::now();
        let output = Command::new("docker")
            .args(["run", "--rm", "--network", "none", self.image.as_str()])
            .args(["python3", "-c", PRINT_CODE])
            .output()
            .await
            .context("start docker")?;
        let elapsed = started.elapsed();
        check_command(CASES[DOCKER_PRINT], &output)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            stdout.trim() == "1",
            "{}: printed {stdout:?}, not 1",
            CASES[DOCKER_PRINT]
        );
        Ok(elapsed)
    }

    /// Case 5: the pandas baseline.
    async fn docker_pandas(&self) -> Result<Duration> {
        let mount = format!("{}:/mnt/data", self.baseline_data.display());
        let started = Instant::now();
        let output = Command::new("docker")
            .args(["run", "--rm", "--network", "none", "-v", &mount])
            .args(["-w", "/mnt/data", self.image.as_str()])
            .args(["python3", "-c", PANDAS_CODE])
            .output()
            .await
            .context("start docker")?;
        let elapsed = started.elapsed();
        check_command(CASES[DOCKER_PANDAS], &output)?;
        // Removing the report both checks that it was written and keeps every iteration alike.
        let written = self.baseline_data.join("report.xlsx");
        std::fs::remove_file(&written)
            .with_context(|| format!("{}: no report.xlsx was written", CASES[DOCKER_PANDAS]))?;
        Ok(elapsed)
    }

    /// Runs `code` in `message` with the files attached, all defaults otherwise.
    async fn run(&self, message: &str, code: &str, file_ids: Vec<String>) -> Result<RunReport> {
        let request = RunRequest {
            chat_id: CHAT.to_owned(),
            message_id: message.to_owned(),
            code: code.to_owned(),
            language: "python".to_owned(),
            file_ids,
            timeout: None,
        };
        self.supervisor
            .run(&self.owner, request, None)
            .await
            .with_context(|| format!("run in message {message}"))
    }

    /// A message id not used before; it is tracked so that its container is removed even if
    /// the benchmark stops early.
    fn fresh_message(&mut self) -> String {
        self.minted += 1;
        let message = format!("bench-{}", self.minted);
        self.live.push(message.clone());
        message
    }

    /// Removes a message's container, workspace and `files`, so that the next iteration starts
    /// with as many containers and as much disk as this one did.
    async fn discard(&mut self, message: &str, files: &[FileRecord]) -> Result<()> {
        let record = self
            .supervisor
            .catalog()
            .messages()
            .get(TENANT, message)
            .await?;
        if let Some(record) = record {
            self.supervisor
                .runtime()
                .release(&record.workspace_id)
                .await
                .with_context(|| format!("remove the container of {message}"))?;
            self.supervisor
                .workspaces()
                .remove(&record.workspace_id)
                .with_context(|| format!("remove the workspace of {message}"))?;
        }
        for file in files {
            self.supervisor
                .catalog()
                .files()
                .soft_delete(&self.owner, &file.id, &codebox::catalog::now())
                .await?;
            self.supervisor.blobs().delete(&file.blob_key).await?;
        }
        self.live.retain(|live| live != message);
        Ok(())
    }

    /// Removes every container and workspace still left, the warm one included.
    /// Tries them all even if one fails, and reports the first failure.
    async fn clean_up(&mut self) -> Result<()> {
        let mut first_error = None;
        for message in self.live.clone() {
            if let Err(error) = self.discard(&message, &[]).await {
                eprintln!("cleaning up {message}: {error:#}");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Fails unless the run succeeded, with its output for diagnosis.
fn check_succeeded(case: &str, report: &RunReport) -> Result<()> {
    let run = &report.run;
    if run.status != RunStatus::Succeeded {
        bail!(
            "{case}: run {} ended with status {} (exit code {:?}, {}); stderr:\n{}\nstdout:\n{}",
            run.id,
            run.status.as_str(),
            run.exit_code,
            run.reason.as_deref().unwrap_or("no reason given"),
            run.stderr,
            run.stdout
        );
    }
    Ok(())
}

/// Fails unless the run succeeded and printed `1`.
fn check_print(case: &str, report: &RunReport) -> Result<()> {
    check_succeeded(case, report)?;
    ensure!(
        report.run.stdout.trim() == "1",
        "{case}: printed {:?}, not 1",
        report.run.stdout
    );
    Ok(())
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

/// The summary of one case.
struct Stats {
    n: usize,
    p50: f64,
    p95: f64,
    mean: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            n: sorted.len(),
            p50: percentile(&sorted, 50),
            p95: percentile(&sorted, 95),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// Prints the table and the `BENCH_JSON` line.
fn report(args: &Args, docker_version: &str, samples: &[Vec<f64>]) -> Result<()> {
    let stats: Vec<Stats> = samples.iter().map(|s| Stats::of(s)).collect();
    let ratio_of = |case: usize| {
        RATIOS
            .iter()
            .find(|(codebox, _)| *codebox == case)
            .map(|&(codebox, baseline)| (baseline, stats[codebox].p50 / stats[baseline].p50))
    };

    println!(
        "{:<38} {:>4} {:>9} {:>9} {:>9}  p50 vs docker run",
        "case", "n", "p50 ms", "p95 ms", "mean ms"
    );
    for (case, (name, stats)) in CASES.iter().zip(&stats).enumerate() {
        let ratio = match ratio_of(case) {
            Some((baseline, ratio)) => format!("{ratio:.2}x {}", CASES[baseline]),
            None => "-".to_owned(),
        };
        println!(
            "{name:<38} {:>4} {:>9.1} {:>9.1} {:>9.1}  {ratio}",
            stats.n, stats.p50, stats.p95, stats.mean
        );
    }

    let cases: Map<String, Value> = CASES
        .iter()
        .zip(&stats)
        .map(|(name, stats)| {
            let summary = json!({
                "p50_ms": round(stats.p50, 1),
                "p95_ms": round(stats.p95, 1),
                "mean_ms": round(stats.mean, 1),
                "n": stats.n,
            });
            ((*name).to_owned(), summary)
        })
        .collect();
    let ratios: Map<String, Value> = RATIOS
        .iter()
        .map(|&(codebox, baseline)| {
            let ratio = stats[codebox].p50 / stats[baseline].p50;
            (
                format!("{} / {}", CASES[codebox], CASES[baseline]),
                json!(round(ratio, 3)),
            )
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let line = json!({
        "runs": args.runs,
        "image": args.image,
        "cases": cases,
        "ratios": ratios,
        "machine": { "cores": cores, "docker_server_version": docker_version },
    });
    println!("BENCH_JSON {line}");
    Ok(())
}

/// `value` rounded to `decimals` places, so that the JSON does not carry float noise.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
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
}
