//! nginx, the download phase's baseline (see `downloads.rs`): one foreground process serving
//! one file on a loopback port, from a configuration written into the scratch folder, and
//! stopped when its guard is dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::downloads::DOWNLOAD_NAME;
use crate::process::{free_port, stop_with_parent};

/// A running nginx serving one file on a loopback port. Dropping it stops nginx.
pub(crate) struct Nginx {
    child: std::process::Child,
    /// The URL of the file.
    pub(crate) url: String,
    /// nginx's error log, quoted when it fails.
    error_log: PathBuf,
}

impl Nginx {
    /// Starts `binary` in the foreground, as a single process, with every file it writes
    /// under `dir` and a hard link to `file` (a copy where linking is impossible) as the one
    /// file under its root. Returns once it accepts connections.
    pub(crate) async fn start(binary: &Path, dir: &Path, file: &Path) -> Result<Self> {
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
        stop_with_parent(&mut command);
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
    pub(crate) fn stop(mut self) -> Result<()> {
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
pub(crate) fn find_nginx() -> Option<PathBuf> {
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
