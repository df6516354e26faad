//! **Case 2: new message pandas job.** A 10,000-row CSV is uploaded through `POST /v1/files`
//! outside the clock; then a run in a new message, with the CSV in `file_ids`, reads it with pandas
//! and writes `/mnt/data/report.xlsx`, which must come back registered in `files`. Baselines, in
//! the same iterations: the same code in `docker run --rm --network none -v <folder with the
//! CSV>:/mnt/data <image> python3 -c`, and AutoGen's `DockerCommandLineCodeExecutor`
//! (`autogen-ext[docker]`) on the same image, timed around `execute_code_blocks` by a small Python
//! helper. The helper makes one executor for the whole benchmark, as AutoGen's documentation uses
//! it (an async context manager around a session's code blocks): its container is started once,
//! outside the clock, and each sample is a `docker exec` of a fresh `python3` process that imports
//! pandas. The CSV's folder is mounted at `/mnt/data` through `extra_volumes`, so that the code is
//! byte for byte the same in all three, and the block's language is `python3` because the image has
//! no `python` command. The helper lives in a venv under `~/.cache/codebox-bench/`, installed from
//! PyPI on first use; when that fails, or with `--skip-autogen`, the AutoGen baseline is reported
//! as skipped with the reason. Targets: at most 0.15x `docker run` and at most 0.3x AutoGen.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::Command;

use crate::docker_cli::check_command;
use crate::harness::Bench;
use crate::workload::PANDAS_CODE;

impl Bench {
    /// Case 2: a new message with the CSV attached, writing a report that must be
    /// registered.
    pub(crate) async fn new_message_pandas(&mut self, file_id: String) -> Result<f64> {
        let case = "new message pandas csv->xlsx";
        let message = self.fresh_message("pandas");
        let exchange = self
            .api
            .run_ok((case, &message), PANDAS_CODE, &[file_id], None)
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

    /// Case 2's `docker run` baseline, in milliseconds.
    pub(crate) async fn docker_pandas(&mut self) -> Result<f64> {
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
}

/// Removes the report a baseline wrote, failing if there is none: that both checks the run
/// and keeps every iteration alike.
pub(crate) fn take_report(data: &Path, case: &str) -> Result<()> {
    std::fs::remove_file(data.join("report.xlsx"))
        .with_context(|| format!("{case}: no report.xlsx was written"))
}
