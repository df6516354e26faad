//! **Case 4: sustained new messages.** `--sustained` new-message `print(1)` runs, sent back to back
//! by two clients, starting with a full pool. Reported: messages per second over the whole burst,
//! and over the part after the pool's first slots were used up (the steady state, which the target
//! applies to). The baseline is the engine's own rate of `create` + `start` + `remove --force` of a
//! trivial hardened container (`sleep infinity`, the same image, network none, capabilities
//! dropped, read-only root file system, an init, the same limits as a sandbox) through the engine
//! API (bollard), one after the other, the same count: half just before the codebox burst, and half
//! after it, once the burst's sandboxes are removed and the pool is full again, so that drift hits
//! both and no refill competes with either. Target: at least 0.8x. The output says what bounds
//! codebox here, with figures from the same run: once the pool is empty, each new message starts a
//! container of its own whose interpreter imports nothing ahead, and the pool holds off refilling
//! while messages keep missing it; the benchmark reports the CPU time each slot's interpreter used
//! to get ready (read from `/proc` when the slot is found idle, see `pool.rs`), which is what every
//! message would pay without that, and how long the pool took to replace one slot in case 1.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};

use crate::harness::Bench;
use crate::workload::PRINT_CODE;

/// The clients of the sustained case.
pub(crate) const SUSTAINED_CLIENTS: usize = 2;

/// What case 4 saw.
pub(crate) struct Sustained {
    /// Every new message's run: latency, and when it ended after the burst began.
    pub(crate) latencies: Vec<f64>,
    pub(crate) ends: Vec<Duration>,
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) wall: Duration,
    /// The pool's size, whose slots the first messages take.
    pub(crate) pool: usize,
    /// The engine's create + start + remove cycles and their total time.
    pub(crate) engine_cycles: usize,
    pub(crate) engine_time: Duration,
}

impl Sustained {
    pub(crate) fn overall_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// Messages per second once the slots that were ready at the start are used up: from
    /// the end of the `pool`-th run to the end of the last.
    pub(crate) fn steady_per_s(&self) -> Option<f64> {
        let mut ends = self.ends.clone();
        ends.sort();
        let first = *ends.get(self.pool.checked_sub(1)?)?;
        let last = *ends.last()?;
        let span = last.checked_sub(first)?.as_secs_f64();
        let counted = ends.len() - self.pool;
        (counted > 0 && span > 0.0).then(|| counted as f64 / span)
    }

    pub(crate) fn engine_per_s(&self) -> f64 {
        self.engine_cycles as f64 / self.engine_time.as_secs_f64()
    }
}

impl Bench {
    /// Case 4: `count` new messages from two clients, with the engine's baseline around it.
    pub(crate) async fn measure_sustained(&mut self, count: usize) -> Result<Sustained> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
