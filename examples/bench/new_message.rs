//! **Case 1: new message `print(1)`.** `POST /v1/runs` for a message never seen before, so the
//! server claims it and hands it a sandbox from the warm pool. Before each sample the benchmark
//! waits, outside the clock, until the pool is full again and every slot's interpreter is idle (see
//! `pool.rs`), so that no refill competes for the CPU; the clock covers the HTTP exchange alone,
//! the JSON answer parsed. The baseline is `docker run --rm --network none <image> python3 -c
//! 'print(1)'` through the docker CLI, in the same iterations, also started with the pool full.
//! Target: at least 30x faster than the baseline, and under 15 ms. To tell where the time goes,
//! each iteration also times `GET /healthz` (the floor of an HTTP round trip) and one more
//! `print(1)` in a message whose sandbox already runs (everything but taking a slot), and keeps the
//! server's own `duration_ms` of the new message's run (the code's execution); the output also sets
//! case 1 beside the same-message run back to back (case 5, one client), which shows what an
//! isolated request on an idle machine pays on top.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use tokio::process::Command;

use crate::docker_cli::check_command;
use crate::harness::Bench;
use crate::workload::PRINT_CODE;

impl Bench {
    /// Case 1: the first run of a new message. Returns the round trip and the server's own
    /// `duration_ms`, in milliseconds.
    pub(crate) async fn new_message_print(&mut self) -> Result<(f64, f64)> {
        let message = self.fresh_message("new");
        let exchange = self
            .api
            .run_ok(
                ("new message print(1)", &message),
                PRINT_CODE,
                &[],
                Some("1"),
            )
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

    /// Case 1's baseline, in milliseconds.
    pub(crate) async fn docker_print(&mut self) -> Result<f64> {
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
}
