//! Cases 1 and 2 in one loop (`new_message.rs` and `pandas.rs` hold each case and its
//! baselines): a warm-up of `--warmup` iterations, then `--runs` counted ones, so that noise
//! on the machine hits codebox and its baselines alike.

use std::time::Instant;

use anyhow::{Result, anyhow};

use crate::harness::Bench;
use crate::workload::PRINT_CODE;

/// The samples of cases 1 and 2, in milliseconds.
#[derive(Default)]
pub(crate) struct Latency {
    pub(crate) new_print: Vec<f64>,
    /// The server's `duration_ms` of each new-message `print(1)`.
    pub(crate) new_print_server: Vec<f64>,
    pub(crate) docker_print: Vec<f64>,
    pub(crate) healthz: Vec<f64>,
    pub(crate) same_print: Vec<f64>,
    pub(crate) new_pandas: Vec<f64>,
    pub(crate) docker_pandas: Vec<f64>,
    pub(crate) autogen_pandas: Vec<f64>,
    /// From just before a new message took a slot until the pool was full and idle again.
    pub(crate) refill: Vec<f64>,
}

impl Bench {
    /// Cases 1 and 2, interleaved: `warmup` uncounted iterations, then `runs` counted ones.
    pub(crate) async fn measure_latency(&mut self, warmup: usize, runs: usize) -> Result<Latency> {
        // The message of the same-message runs gets its sandbox before its first timed run.
        let warm = format!("warm-{}", self.nonce);
        self.live.push(warm.clone());
        self.api
            .run_ok(("warm-up", &warm), PRINT_CODE, &[], Some("1"))
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
                .run_ok(("same message print(1)", &warm), PRINT_CODE, &[], Some("1"))
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
}
