//! End-to-end latency of codebox runs, against plain `docker run` as the baseline; the cost of
//! the HTTP API on top of the library; and download throughput, against nginx.
//!
//! The benchmark starts the HTTP API in process, the way `codebox serve` does
//! (`codebox::server::prepare`, then `codebox::api::serve` on a loopback port), and uses the
//! same supervisor for the library calls, so that both paths share one catalog, blob store
//! and sandbox configuration.
//!
//! Each iteration of the latency phase measures seven cases, one after the other, so that
//! noise on the machine hits them all alike:
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
//! 6. `codebox HTTP same message print(1)`: case 2 as a chat backend sends it, a
//!    `POST /v1/runs` over loopback with a bearer token, the JSON `Run` read back. Its ratio
//!    to case 2 is the HTTP overhead.
//! 7. `codebox HTTP GET /healthz`: the smallest request, the floor of an HTTP round trip
//!    (connection reused), to tell the transport's share of that overhead from the rest.
//!
//! The clock is wall time around the whole `Supervisor::run` call, the whole HTTP exchange,
//! or the whole `docker run` command. Uploading the CSV and removing containers and
//! workspaces happen outside it. Any run that fails stops the benchmark with its stderr and a
//! non-zero exit status.
//!
//! The download phase follows (skip it with `--skip-download`). A 1 GiB file is uploaded
//! once through `POST /v1/files`, streamed from memory, and then downloaded
//! `--download-runs` times through its signed link, with no token, by reqwest reading the
//! body chunk by chunk and counting bytes (nothing is buffered or hashed). nginx serves a hard
//! link to the same blob on another loopback port, from a temporary configuration (one
//! process, `sendfile on`), and is downloaded with the same code in the same iterations,
//! alternating which goes first. The ratio compares median throughputs (codebox / nginx).
//! When `nginx` cannot be found the nginx case is skipped with a note; nginx is stopped when
//! the benchmark ends, fails, is interrupted, or is killed.
//!
//! The output is a table, then one line `BENCH_JSON {...}` for scripts. Run it with:
//!
//! ```text
//! cargo run --release --example bench -- [--runs 20] [--image codebox-python:latest]
//!     [--warmup 2] [--download-runs 5] [--download-mib 1024] [--skip-download]
//! ```
//!
//! Read the ratios with two differences in mind. `docker run --rm` returns only once its
//! container is removed, while codebox removes a message's container later, outside the clock
//! here. And the baselines run with Docker's defaults (no CPU or memory limit, writable root
//! file system, no init), where codebox sandboxes are hardened. For downloads, the server and
//! the client share the machine's cores; codebox also shares the benchmark's process.
//!
//! It needs the local Docker engine and the image, and about 2 GiB free in the temporary
//! folder for the download phase. The image runs code as uid 1000, so the baseline's folder
//! is made world-writable.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use bytesize::ByteSize;
use clap::Parser;
use codebox::catalog::{FileRecord, Owner, RunStatus};
use codebox::config::{DiskLimit, Limits, Role, SandboxConfig, ServerConfig, TokenConfig};
use codebox::{Config, RunReport, RunRequest, Supervisor};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The tenant of every run; it is also the catalog key of its messages.
const TENANT: &str = "bench";
/// The end user of every run, through the library and through HTTP alike.
const USER: &str = "user";
/// The service token the in-process server accepts.
const TOKEN: &str = "svc_bench_0123456789abcdef";
/// The one chat every benchmark message belongs to.
const CHAT: &str = "bench-chat";
/// The smallest program: its time is the fixed cost of a run.
const PRINT_CODE: &str = "print(1)";
/// A typical report: read an attachment with pandas, write a spreadsheet.
const PANDAS_CODE: &str = "import pandas as pd; df = pd.read_csv('/mnt/data/data.csv'); \
     df.describe().to_excel('/mnt/data/report.xlsx')";
/// The rows of the generated CSV.
const CSV_ROWS: usize = 1000;
/// The piece the download file is made of, repeated; its content does not matter to
/// throughput, since nothing on the way compresses.
const BLOCK_BYTES: usize = 1 << 20;
/// The download file's name in the catalog and under nginx's root.
const DOWNLOAD_NAME: &str = "download.bin";

const NEW_PRINT: usize = 0;
const SAME_PRINT: usize = 1;
const NEW_PANDAS: usize = 2;
const DOCKER_PRINT: usize = 3;
const DOCKER_PANDAS: usize = 4;
const HTTP_SAME_PRINT: usize = 5;
const HTTP_HEALTHZ: usize = 6;

/// Case names, indexed by the constants above, as they appear in the table and the JSON.
const CASES: [&str; 7] = [
    "codebox new message print(1)",
    "codebox same message print(1)",
    "codebox new message pandas csv->xlsx",
    "docker run print(1)",
    "docker run pandas csv->xlsx",
    "codebox HTTP same message print(1)",
    "codebox HTTP GET /healthz",
];

/// Each case and the case it is compared with, by p50: the `docker run` baseline doing the
/// same work, and for the HTTP run the library call doing the same work.
const RATIOS: [(usize, usize); 5] = [
    (NEW_PRINT, DOCKER_PRINT),
    (SAME_PRINT, DOCKER_PRINT),
    (NEW_PANDAS, DOCKER_PANDAS),
    (HTTP_SAME_PRINT, SAME_PRINT),
    (HTTP_SAME_PRINT, DOCKER_PRINT),
];

#[derive(Debug, Parser)]
#[command(
    about = "Measures codebox run latency against plain docker run, the HTTP API's \
    overhead, and download throughput against nginx"
)]
struct Args {
    /// Measured iterations; each one runs every latency case once.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The sandbox image, for codebox and the docker-run baselines alike.
    #[arg(long, default_value = "codebox-python:latest")]
    image: String,
    /// Iterations run first and not counted, in both phases: they pay for cold page caches,
    /// new connections and lazy setup.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Measured downloads of the large file, from codebox and from nginx each.
    #[arg(long, default_value_t = 5)]
    download_runs: usize,
    /// Size of the download file in MiB (1024 is the 1 GiB case).
    #[arg(long, default_value_t = 1024)]
    download_mib: u64,
    /// Leaves out the download phase (and its upload and nginx).
    #[arg(long)]
    skip_download: bool,
    /// How workspaces are capped: `loop` (each a loop-mounted file system, made for every new
    /// message) or `watchdog` (a plain folder); comparing the two measures what the loop mount
    /// costs a new message.
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.skip_download || (args.download_runs > 0 && args.download_mib > 0),
        "--download-runs and --download-mib must be at least 1 (or pass --skip-download)"
    );
    let docker_version = docker_server_version().await?;
    let scratch = tempfile::tempdir().context("create the scratch folder")?;
    let mut bench = Bench::open(scratch.path(), &args).await?;
    // Ctrl-C or SIGTERM stops the measurements but not the clean-up below, so that no
    // container, server or nginx outlives the benchmark.
    let measured = tokio::select! {
        measured = bench.measure_all(&args) => measured,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    // Containers outlive the process, so they are removed whether or not the runs succeeded.
    let cleaned = bench.clean_up().await;
    let results = measured?;
    cleaned?;
    report(&args, &docker_version, &results)
}

/// Everything measured.
struct Results {
    /// The wall-clock samples of each latency case, in milliseconds, indexed like [`CASES`].
    latency: Vec<Vec<f64>>,
    /// The download phase, unless skipped.
    downloads: Option<Downloads>,
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

/// The supervisor under test, its HTTP server, and what the cases share.
struct Bench {
    /// The supervisor the library cases call; the HTTP server runs on the same one.
    supervisor: Arc<Supervisor>,
    owner: Owner,
    image: String,
    /// The generated CSV, uploaded anew for every pandas message.
    csv: PathBuf,
    /// The folder the pandas baseline mounts at `/mnt/data`; it holds a copy of the CSV.
    baseline_data: PathBuf,
    /// The scratch folder, for nginx's files.
    scratch: PathBuf,
    /// The message every warm library run uses.
    warm_message: String,
    /// The message every warm HTTP run uses.
    http_warm_message: String,
    /// Messages whose container and workspace still exist.
    live: Vec<String>,
    /// Numbers the fresh messages.
    minted: u64,
    /// The in-process server's base URL.
    base_url: String,
    /// The client of every HTTP case; its pool keeps connections open, as a chat backend's
    /// would.
    http: reqwest::Client,
    /// Stops the server.
    stop_server: Option<oneshot::Sender<()>>,
    /// The server's task.
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Bench {
    /// Opens a supervisor whose catalog, blobs and workspaces live under `scratch`, serves
    /// the HTTP API on it on a free loopback port, and writes the CSV for both pandas cases.
    async fn open(scratch: &Path, args: &Args) -> Result<Self> {
        // The port is bound first so that signed links can name it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind a loopback port for the HTTP API")?;
        let address = listener.local_addr().context("read the bound address")?;
        let base_url = format!("http://{address}");

        // The download file, and room to spare, must fit under the upload limit.
        let download_bytes = args.download_mib.saturating_mul(1 << 20);
        let defaults = Config::default();
        let config = Config {
            data_dir: scratch.join("codebox"),
            sandbox: SandboxConfig {
                image: args.image.clone(),
                disk_limit: args.disk_limit,
                ..defaults.sandbox.clone()
            },
            limits: Limits {
                max_upload_bytes: ByteSize::b(download_bytes.max(1 << 30) * 2),
                ..defaults.limits.clone()
            },
            server: ServerConfig {
                listen: address,
                public_url: Some(base_url.clone()),
                shutdown_grace: Duration::from_secs(5),
                tokens: vec![TokenConfig {
                    token: Some(TOKEN.to_owned()),
                    token_sha256: None,
                    tenant: TENANT.to_owned(),
                    role: Role::Service,
                }],
                ..defaults.server.clone()
            },
            ..defaults
        };
        std::fs::create_dir_all(&config.data_dir).context("create the data folder")?;
        let state = codebox::server::prepare(config)
            .await
            .context("open the supervisor (is Docker running and the image built?)")?;
        let supervisor = state.supervisor.clone();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(codebox::api::serve(listener, state, async move {
            // A dropped sender stops the server as surely as a sent value.
            let _ = stopped.await;
        }));

        let csv = scratch.join("data.csv");
        std::fs::write(&csv, generate_csv(CSV_ROWS)).context("write the CSV")?;
        let baseline_data = scratch.join("baseline");
        std::fs::create_dir(&baseline_data).context("create the baseline folder")?;
        // The image runs as uid 1000, which must be able to write the report next to the CSV.
        std::fs::set_permissions(&baseline_data, std::fs::Permissions::from_mode(0o777))
            .context("open the baseline folder to the sandbox user")?;
        std::fs::copy(&csv, baseline_data.join("data.csv")).context("copy the CSV")?;
        let http = reqwest::Client::builder()
            // Long enough for a 1 GiB transfer on a slow machine; a hung server still ends.
            .timeout(Duration::from_secs(600))
            .build()
            .context("build the HTTP client")?;
        Ok(Self {
            supervisor,
            owner: Owner::new(TENANT, USER),
            image: args.image.clone(),
            csv,
            baseline_data,
            scratch: scratch.to_owned(),
            warm_message: "bench-warm".to_owned(),
            http_warm_message: "bench-warm-http".to_owned(),
            live: Vec::new(),
            minted: 0,
            base_url,
            http,
            stop_server: Some(stop_server),
            server: Some(server),
        })
    }

    /// The latency phase, then the download phase unless it is skipped.
    async fn measure_all(&mut self, args: &Args) -> Result<Results> {
        let latency = self.measure(args.warmup, args.runs).await?;
        let downloads = if args.skip_download {
            None
        } else {
            let bytes = args.download_mib * (1 << 20);
            Some(
                self.measure_downloads(bytes, args.warmup, args.download_runs)
                    .await?,
            )
        };
        Ok(Results { latency, downloads })
    }

    /// Runs `warmup` uncounted iterations, then `runs` counted ones, of every case in turn.
    /// Returns the wall-clock samples of each case, in milliseconds, indexed like [`CASES`].
    async fn measure(&mut self, warmup: usize, runs: usize) -> Result<Vec<Vec<f64>>> {
        // The warm cases need their containers before their first timed run.
        self.live.push(self.warm_message.clone());
        let first = self.run(&self.warm_message, PRINT_CODE, Vec::new()).await?;
        check_print(CASES[SAME_PRINT], &first)?;
        self.live.push(self.http_warm_message.clone());
        self.http_same_message_print().await?;

        let mut samples = vec![Vec::with_capacity(runs); CASES.len()];
        for iteration in 0..warmup + runs {
            let times = [
                self.new_message_print().await?,
                self.same_message_print().await?,
                self.new_message_pandas().await?,
                self.docker_print().await?,
                self.docker_pandas().await?,
                self.http_same_message_print().await?,
                self.http_healthz().await?,
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

    /// Case 6: case 2 through `POST /v1/runs`. The clock covers what a chat backend waits
    /// for: serializing the request, the exchange, and parsing the `Run`.
    async fn http_same_message_print(&self) -> Result<Duration> {
        let case = CASES[HTTP_SAME_PRINT];
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/runs", self.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .json(&json!({
                "chat_id": CHAT,
                "message_id": self.http_warm_message,
                "code": PRINT_CODE,
            }))
            .send()
            .await
            .with_context(|| format!("{case}: send the request"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("{case}: read the answer"))?;
        let run: Value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{case}: HTTP {status}, and the answer is not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        let elapsed = started.elapsed();
        ensure!(status.is_success(), "{case}: HTTP {status}: {run}");
        ensure!(
            run["status"] == "succeeded" && run["stdout"].as_str().map(str::trim) == Some("1"),
            "{case}: the run did not print 1: {run}"
        );
        Ok(elapsed)
    }

    /// Case 7: the floor of an HTTP exchange with this server.
    async fn http_healthz(&self) -> Result<Duration> {
        let case = CASES[HTTP_HEALTHZ];
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}/healthz", self.base_url))
            .send()
            .await
            .with_context(|| format!("{case}: send the request"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("{case}: read the answer"))?;
        let elapsed = started.elapsed();
        ensure!(
            status.is_success(),
            "{case}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(elapsed)
    }

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
        let file_id = file["id"].as_str().unwrap_or_default();
        let record = self
            .supervisor
            .file(&self.owner, file_id)
            .await
            .with_context(|| format!("look up the uploaded file {file_id}"))?;
        let blob = self
            .supervisor
            .blobs()
            .local_path(&record.blob_key)
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
            .http
            .post(format!("{}/v1/files", self.base_url))
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
            status == reqwest::StatusCode::CREATED,
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
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("download from {from}"))?;
        let status = response.status();
        ensure!(
            status == reqwest::StatusCode::OK,
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

    /// Runs `code` in `message` with the files attached, all defaults otherwise.
    async fn run(&self, message: &str, code: &str, file_ids: Vec<String>) -> Result<RunReport> {
        let request = RunRequest {
            chat_id: CHAT.to_owned(),
            message_id: message.to_owned(),
            code: code.to_owned(),
            language: "python".to_owned(),
            file_ids,
            timeout: None,
            restart: false,
            init_code: None,
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

    /// Stops the HTTP server, then removes every container and workspace still left, the warm
    /// ones included. Tries them all even if one fails, and reports the first failure.
    async fn clean_up(&mut self) -> Result<()> {
        let mut first_error = None;
        if let Err(error) = self.stop_server().await {
            eprintln!("stopping the HTTP server: {error:#}");
            first_error.get_or_insert(error);
        }
        for message in self.live.clone() {
            if let Err(error) = self.discard(&message, &[]).await {
                eprintln!("cleaning up {message}: {error:#}");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Asks the server to stop and waits for it; no run is in flight by then.
    async fn stop_server(&mut self) -> Result<()> {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .context("the HTTP server did not stop within 30 s")?
                .context("the HTTP server's task failed")?
                .context("the HTTP server failed")?;
        }
        Ok(())
    }
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

/// Prints the tables and the `BENCH_JSON` line.
fn report(args: &Args, docker_version: &str, results: &Results) -> Result<()> {
    let stats: Vec<Stats> = results.latency.iter().map(|s| Stats::of(s)).collect();
    let ratio = |(case, baseline): (usize, usize)| stats[case].p50 / stats[baseline].p50;

    println!(
        "{:<38} {:>4} {:>9} {:>9} {:>9}  p50 ratio vs",
        "case", "n", "p50 ms", "p95 ms", "mean ms"
    );
    for (case, (name, stats)) in CASES.iter().zip(&stats).enumerate() {
        let ratios: Vec<String> = RATIOS
            .iter()
            .filter(|(codebox, _)| *codebox == case)
            .map(|&pair| format!("{:.2}x {}", ratio(pair), CASES[pair.1]))
            .collect();
        let ratios = if ratios.is_empty() {
            "-".to_owned()
        } else {
            ratios.join("; ")
        };
        println!(
            "{name:<38} {:>4} {:>9.1} {:>9.1} {:>9.1}  {ratios}",
            stats.n, stats.p50, stats.p95, stats.mean
        );
    }
    let overhead = stats[HTTP_SAME_PRINT].p50 - stats[SAME_PRINT].p50;
    println!(
        "HTTP overhead on a warm print(1): {overhead:+.1} ms at p50 ({:.2}x); an HTTP round trip \
         alone (GET /healthz) is {:.2} ms",
        ratio((HTTP_SAME_PRINT, SAME_PRINT)),
        stats[HTTP_HEALTHZ].p50
    );

    let mut cases: Map<String, Value> = CASES
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
    let mut ratios: Map<String, Value> = RATIOS
        .iter()
        .map(|&pair| {
            (
                format!("{} / {}", CASES[pair.0], CASES[pair.1]),
                json!(round(ratio(pair), 3)),
            )
        })
        .collect();
    let mut skipped: Map<String, Value> = Map::new();
    let mut download = Value::Null;

    match &results.downloads {
        None => {
            skipped.insert("download".to_owned(), json!("--skip-download"));
        }
        Some(downloads) => {
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
                    ratios.insert(
                        format!("{codebox_name} / {nginx_name}"),
                        json!(round(throughput_ratio, 3)),
                    );
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
            download = json!({
                "bytes": downloads.bytes,
                "runs": args.download_runs,
                "upload_s": round(upload_s, 3),
                "upload_mib_per_s": round(upload_rate, 1),
            });
        }
    }

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let line = json!({
        "runs": args.runs,
        "image": args.image,
        "disk_limit": format!("{:?}", args.disk_limit).to_lowercase(),
        "cases": cases,
        "ratios": ratios,
        "download": download,
        "skipped": skipped,
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
}
