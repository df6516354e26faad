//! `codebox serve` as a child process: its configuration, its start, its health, its log,
//! and its stop (graceful, or blocking on the path of early failures); and which binary it
//! is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use codebox::Config;
use serde_json::json;

use crate::api::{TENANT, TOKEN};
use crate::args::{Args, disk_limit_name};
use crate::cleanup::unmount_below;
use crate::process::{free_port, stop_with_parent};

/// `codebox serve` as a child process, with its own data folder and configuration.
pub(crate) struct Server {
    child: std::process::Child,
    pub(crate) pid: u32,
    pub(crate) base_url: String,
    pub(crate) data_dir: PathBuf,
    /// The instance id that labels its sandboxes, once it has written it.
    pub(crate) instance: Option<String>,
    /// Its standard output and error.
    log: PathBuf,
    /// Whether it has been stopped and waited for.
    stopped: bool,
}

impl Server {
    /// Writes the configuration, starts `binary serve` on a free loopback port and waits
    /// until it answers `/healthz`.
    pub(crate) async fn start(binary: &Path, scratch: &Path, args: &Args) -> Result<Self> {
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
        // SIGTERM is the server's graceful stop.
        stop_with_parent(&mut command);
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
    pub(crate) fn check_alive(&self) -> Result<()> {
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
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|error| format!("({error})"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the server gracefully (SIGTERM), which removes its pool and its sandboxes;
    /// kills it if it takes over a minute.
    pub(crate) async fn stop(&mut self) -> Result<()> {
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

/// `codebox` beside the folder this example was built into (`target/<profile>/examples`).
pub(crate) fn default_codebox_binary() -> Result<PathBuf> {
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
