//! What the storage back ends cost: the same requests, in one run, against two `codebox serve`
//! processes side by side, one on the zero-setup default (a SQLite file and a local blob
//! folder) and one on PostgreSQL and S3 (the servers `scripts/dev-services up` starts on
//! loopback: PostgreSQL from Debian's packages, moto as the S3 server). The default is the
//! baseline; the table shows both and their ratio. A third column runs two nodes on the same
//! PostgreSQL and S3 and sends every request to the node that does not hold the message: each
//! run is forwarded to the holder and streamed back, and uploads and downloads are served by
//! the node that gets them. Its ratio is against one node on PostgreSQL and S3: what
//! forwarding costs.
//!
//! The cases, each after two warm-up requests, each a median over `--runs` (upload and
//! download over `--transfers`):
//!
//! 1. **run**: `print(1)` again in one message: the catalog's share of a run (its records);
//! 2. **register**: a run that writes a new 1 MiB csv: the output stored and recorded;
//! 3. **upload**: a `--mib` MiB csv, streamed to `POST /v1/files`, in MiB/s;
//! 4. **download**: the same file through its signed link, in MiB/s.
//!
//! moto keeps objects in its process's memory and answers over plain HTTP on loopback, so the
//! S3 column measures codebox's S3 path (multipart parts, streamed reads, the catalog on
//! PostgreSQL), not a real S3 region's network.
//!
//! The output is a table, then one line `BENCH_JSON {...}`. Run it with:
//!
//! ```text
//! scripts/dev-services up
//! cargo build --release && cargo run --release --example bench_backends -- \
//!     [--codebox target/release/codebox] [--image codebox-python:test] [--runs 15] \
//!     [--transfers 5] [--mib 64]
//! ```
//!
//! It needs the local Docker engine, the image, and root (codebox's loop-mounted workspaces).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use common::{Codebox, text};
use serde_json::{Value, json};

/// The service token both servers accept.
const TOKEN: &str = "bench-backends-service-token";
/// The link-signing secret every server shares, as the nodes of one deployment must.
const SIGNING_SECRET: &str = "bench-backends-signing-secret-0123456789";

#[derive(Debug, Parser)]
#[command(about = "Compare codebox on SQLite + a local folder with PostgreSQL + S3")]
struct Args {
    /// The codebox binary to start.
    #[arg(long, default_value = "target/release/codebox")]
    codebox: PathBuf,
    /// The sandbox image.
    #[arg(long, default_value = "codebox-python:test")]
    image: String,
    /// Counted requests of the run and register cases.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Counted uploads and downloads.
    #[arg(long, default_value_t = 5)]
    transfers: usize,
    /// MiB of the uploaded and downloaded file.
    #[arg(long, default_value_t = 64)]
    mib: usize,
}

/// One back end's medians.
#[derive(Debug, Clone, Copy)]
struct Measured {
    run_ms: f64,
    register_ms: f64,
    upload_mib_s: f64,
    download_mib_s: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::exit_code(bench(Args::parse()).await)
}

async fn bench(args: Args) -> Result<()> {
    ensure!(
        args.runs > 0 && args.transfers > 0 && args.mib > 0,
        "--runs, --transfers and --mib must be at least 1"
    );
    ensure!(
        args.codebox.is_file(),
        "{} does not exist: build it first with `cargo build --release`, or pass --codebox",
        args.codebox.display()
    );
    let services = dev_services()?;
    let scratch = tempfile::tempdir().context("create the scratch folder")?;
    let shared = json!({
        "catalog": { "url": setting(&services, "CODEBOX_TEST_POSTGRES_URL")? },
        "blobs": {
            "kind": "s3",
            "bucket": setting(&services, "CODEBOX_TEST_S3_BUCKET")?,
            "endpoint": setting(&services, "CODEBOX_TEST_S3_ENDPOINT")?,
            "allow_http": true,
        },
    });
    let mut results = Vec::new();
    for (name, backend) in [("sqlite+local", json!({})), ("postgres+s3", shared.clone())] {
        println!("{name}: starting codebox serve");
        let folder = scratch.path().join(name);
        let mut server = Server::start(&args, &folder, backend, &services)?;
        let measured = async {
            let codebox = server.client().await?;
            measure((&codebox, &codebox), &args, name).await
        }
        .await;
        server.stop();
        results.push((name, measured?));
    }
    let name = "2 nodes, forwarded";
    println!("{name}: starting two codebox serve on one catalog and bucket");
    let mut holder = Server::start(
        &args,
        &scratch.path().join("node-a"),
        shared.clone(),
        &services,
    )?;
    let mut entry = Server::start(&args, &scratch.path().join("node-b"), shared, &services)?;
    let measured = async {
        let (holder, entry) = (holder.client().await?, entry.client().await?);
        measure((&holder, &entry), &args, name).await
    }
    .await;
    holder.stop();
    entry.stop();
    results.push((name, measured?));
    report(&args, &results);
    Ok(())
}

/// The settings `scripts/dev-services env` prints (it must be up).
fn dev_services() -> Result<String> {
    let output = Command::new("scripts/dev-services")
        .arg("env")
        .output()
        .context("run scripts/dev-services env (from the repository's folder)")?;
    ensure!(output.status.success(), "scripts/dev-services env failed");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn setting(services: &str, key: &str) -> Result<String> {
    services
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .with_context(|| format!("scripts/dev-services env has no {key}"))
}

/// A `codebox serve` child with its own data folder.
struct Server {
    child: Child,
    base_url: String,
    folder: PathBuf,
}

impl Server {
    fn start(args: &Args, folder: &Path, backend: Value, services: &str) -> Result<Self> {
        std::fs::create_dir_all(folder).context("create the data folder")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("find a free port")?
            .port();
        let base_url = format!("http://127.0.0.1:{port}");
        let mut config = json!({
            "data_dir": folder.join("data"),
            "sandbox": { "image": args.image, "warm_pool": 1 },
            "limits": { "max_upload_bytes": (args.mib as u64 + 16) << 20 },
            "server": {
                "listen": format!("127.0.0.1:{port}"),
                "public_url": base_url,
                "shutdown_grace": "5s",
                "signing_secret": SIGNING_SECRET,
                "tokens": [{ "token": TOKEN, "tenant": "bench", "role": "service" }],
            },
        });
        if let (Some(config), Some(backend)) = (config.as_object_mut(), backend.as_object()) {
            config.extend(backend.clone());
        }
        let file = folder.join("codebox.toml");
        std::fs::write(
            &file,
            toml::to_string(&config).context("write the configuration")?,
        )
        .context("write the configuration")?;
        let log = std::fs::File::create(folder.join("serve.log")).context("create the log")?;
        let mut command = Command::new(&args.codebox);
        command
            .arg("--config")
            .arg(&file)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("share the log")?)
            .stderr(log);
        // moto takes any credentials; the S3 client needs some.
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            command.env(key, setting(services, key)?);
        }
        let child = command.spawn().context("start codebox serve")?;
        Ok(Self {
            child,
            base_url,
            folder: folder.to_path_buf(),
        })
    }

    /// A client once the server answers `/readyz`.
    async fn client(&mut self) -> Result<Codebox> {
        let codebox = Codebox {
            base_url: self.base_url.clone(),
            token: TOKEN.to_owned(),
            http: reqwest::Client::builder()
                .timeout(common::REQUEST_TIMEOUT)
                .build()
                .context("build the HTTP client")?,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("check the server")? {
                bail!(
                    "codebox serve exited ({status}); see {}",
                    self.folder.join("serve.log").display()
                );
            }
            let ready = codebox.http.get(codebox.url("/readyz")).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return Ok(codebox);
            }
            ensure!(
                started.elapsed() < Duration::from_secs(120),
                "codebox serve was not ready within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM (the graceful stop removes its sandboxes), then its workspaces' mounts go.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let prefix = format!("{}/", self.folder.display());
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for point in mounts.lines().filter_map(|line| line.split(' ').nth(4)) {
                if point.starts_with(&prefix) {
                    let _ = Command::new("umount").arg("-l").arg(point).status();
                }
            }
        }
    }
}

/// The four cases: the message is made on `holder` by a first run, and every counted
/// request goes to `codebox` (the same server, or another node on the same catalog).
async fn measure(
    (holder, codebox): (&Codebox, &Codebox),
    args: &Args,
    name: &str,
) -> Result<Measured> {
    let chat = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let message = format!("{chat}-m");
    let claim = json!({"chat_id": chat, "message_id": message, "code": "pass"});
    holder
        .send(
            holder
                .user(holder.http.post(holder.url("/v1/runs")))
                .json(&claim),
        )
        .await?;
    let run = |code: String| {
        let body = json!({"chat_id": chat, "message_id": message, "language": "python",
                          "code": code});
        async move {
            let started = Instant::now();
            let answer = codebox
                .send(
                    codebox
                        .user(codebox.http.post(codebox.url("/v1/runs")))
                        .json(&body),
                )
                .await?;
            ensure!(answer["status"] == "succeeded", "the run failed: {answer}");
            Ok::<_, anyhow::Error>((started.elapsed(), answer))
        }
    };
    let (mut runs, mut registers) = (Vec::new(), Vec::new());
    println!("{name}: run and register, {} + 2 each", args.runs);
    for index in 0..args.runs + 2 {
        let (elapsed, _) = run("print(1)".to_owned()).await?;
        timed(&mut runs, elapsed, index);
        let code = format!("open('/mnt/data/out-{index}.csv','w').write('n\\n' + '7' * (1 << 20))");
        let (elapsed, answer) = run(code).await?;
        ensure!(
            answer["files"]
                .as_array()
                .is_some_and(|files| files.len() == 1),
            "the csv was not registered: {answer}"
        );
        timed(&mut registers, elapsed, index);
    }

    println!(
        "{name}: {} MiB up and down, {} + 2 each",
        args.mib, args.transfers
    );
    let bytes = {
        let mut bytes = b"n\n".to_vec();
        bytes.resize(args.mib << 20, b'7');
        bytes
    };
    let mib = args.mib as f64;
    let (mut uploads, mut downloads) = (Vec::new(), Vec::new());
    for index in 0..args.transfers + 2 {
        let part = reqwest::multipart::Part::bytes(bytes.clone()).file_name("big.csv");
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("on_conflict", "rename");
        let started = Instant::now();
        let file = codebox
            .send(
                codebox
                    .user(codebox.http.post(codebox.url("/v1/files")))
                    .multipart(form),
            )
            .await?;
        let up = started.elapsed();
        let link = text(&file["download_url"]).to_owned();
        let started = Instant::now();
        let response = codebox
            .check(codebox.http.get(&link).send().await, "download")
            .await?;
        let body = response.bytes().await.context("read the download")?;
        let down = started.elapsed();
        ensure!(body.len() == bytes.len(), "the download is not the upload");
        if index >= 2 {
            uploads.push(mib / up.as_secs_f64());
            downloads.push(mib / down.as_secs_f64());
        }
        let id = text(&file["id"]);
        codebox
            .check(
                codebox
                    .user(codebox.http.delete(codebox.url(&format!("/v1/files/{id}"))))
                    .send()
                    .await,
                "delete",
            )
            .await?;
    }
    Ok(Measured {
        run_ms: median(runs),
        register_ms: median(registers),
        upload_mib_s: median(uploads),
        download_mib_s: median(downloads),
    })
}

/// Keeps `elapsed`, in milliseconds, unless it is one of the two warm-up requests.
fn timed(samples: &mut Vec<f64>, elapsed: Duration, index: usize) {
    if index >= 2 {
        samples.push(elapsed.as_secs_f64() * 1000.0);
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    match samples.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

fn report(args: &Args, results: &[(&str, Measured)]) {
    let [(base_name, base), (store_name, store), (nodes_name, nodes)] = results else {
        return;
    };
    println!();
    println!(
        "{:<22} {:>13} {:>13} {:>7} {:>19} {:>7}",
        "case (median)", base_name, store_name, "ratio", nodes_name, "ratio"
    );
    let rows = [
        ("run print(1), ms", base.run_ms, store.run_ms, nodes.run_ms),
        (
            "run + 1 MiB csv, ms",
            base.register_ms,
            store.register_ms,
            nodes.register_ms,
        ),
        (
            &*format!("upload {} MiB, MiB/s", args.mib),
            base.upload_mib_s,
            store.upload_mib_s,
            nodes.upload_mib_s,
        ),
        (
            &*format!("download {} MiB, MiB/s", args.mib),
            base.download_mib_s,
            store.download_mib_s,
            nodes.download_mib_s,
        ),
    ];
    for (case, base, store, nodes) in rows {
        println!(
            "{case:<22} {base:>13.1} {store:>13.1} {:>6.2}x {nodes:>19.1} {:>6.2}x",
            store / base,
            nodes / store
        );
    }
    let json = json!({
        "runs": args.runs, "transfers": args.transfers, "mib": args.mib, "image": args.image,
        "backends": results.iter().map(|(name, measured)| json!({
            "name": name,
            "run_ms": measured.run_ms,
            "register_ms": measured.register_ms,
            "upload_mib_s": measured.upload_mib_s,
            "download_mib_s": measured.download_mib_s,
        })).collect::<Vec<_>>(),
    });
    println!("BENCH_JSON {json}");
}
