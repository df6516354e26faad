//! Case 2's AutoGen baseline (see `pandas.rs`): a Python helper that times AutoGen's
//! `DockerCommandLineCodeExecutor`, run from a venv under `~/.cache/codebox-bench/` that is
//! installed from PyPI on first use. When it cannot be installed or started, the baseline is
//! skipped with the reason instead of failing the benchmark.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::harness::Bench;
use crate::pandas::take_report;
use crate::workload::PANDAS_CODE;

/// The package AutoGen's Docker executor comes in.
const AUTOGEN_PACKAGE: &str = "autogen-ext[docker]";

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

/// The AutoGen executor the helper runs.
pub(crate) struct AutogenInfo {
    pub(crate) version: String,
    pub(crate) start_ms: f64,
}

/// The Python helper that times AutoGen's executor.
pub(crate) struct AutogenHelper {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Its standard error, quoted when it fails.
    stderr: PathBuf,
    pub(crate) version: String,
    /// How long the executor took to start its container.
    pub(crate) start_ms: f64,
}

impl AutogenHelper {
    /// Installs AutoGen if needed and starts the helper; returns why not when it cannot.
    pub(crate) async fn start(bench: &mut Bench) -> Result<Self, String> {
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
    pub(crate) async fn sample(&mut self, data: &Path) -> Result<f64> {
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
    pub(crate) async fn stop(mut self) {
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
