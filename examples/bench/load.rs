//! The load step cases 3 and 5 share: a client per message, each sending `print(1)` back to back
//! for `--duration` seconds, with the messages given their sandboxes first.
//!
//! **Case 3: same message, repeated runs.** Four clients, each with a message of its own whose
//! sandbox already runs (warmed outside the clock), send `print(1)` back to back for `--duration`
//! seconds. Reported: successful runs per second over all clients, and p50 and p99 latency. Target:
//! at least 200 runs/s.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::harness::{Bench, WARM_CONCURRENCY};
use crate::workload::PRINT_CODE;

/// What a load step saw.
pub(crate) struct Load {
    pub(crate) clients: usize,
    /// The latency of every run that succeeded, in milliseconds.
    pub(crate) latencies: Vec<f64>,
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
    /// From the first request sent to the last answer received.
    pub(crate) wall: Duration,
}

impl Load {
    pub(crate) fn runs_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

impl Bench {
    /// Gives each of `messages` its sandbox, with a first run outside any clock; a few at a
    /// time, since each imports pandas. Messages that already have one run once more, which
    /// costs little.
    pub(crate) async fn warm_messages(&self, messages: &[String]) -> Result<()> {
        for chunk in messages.chunks(WARM_CONCURRENCY) {
            let runs = chunk.iter().map(|message| {
                self.api
                    .run_ok(("warm-up", message), PRINT_CODE, &[], Some("1"))
            });
            for outcome in futures::future::join_all(runs).await {
                outcome?;
            }
        }
        Ok(())
    }

    /// One load step: a client per message, each sending `print(1)` in its message back to
    /// back until `duration` has passed.
    pub(crate) async fn load(&self, messages: &[String], duration: Duration) -> Load {
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = messages
            .iter()
            .map(|message| {
                let api = self.api.clone();
                let message = message.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = 0usize;
                    let mut first_error = None;
                    while Instant::now() < deadline {
                        match api.run(&message, PRINT_CODE, &[]).await {
                            Ok(exchange) => match exchange.problem(Some("1")) {
                                None => latencies.push(exchange.ms()),
                                Some(problem) => {
                                    errors += 1;
                                    first_error.get_or_insert(problem);
                                }
                            },
                            Err(error) => {
                                errors += 1;
                                first_error.get_or_insert(format!("{error:#}"));
                                // A refused connection fails at once: do not spin on it.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    (latencies, errors, first_error)
                })
            })
            .collect();
        let mut load = Load {
            clients: messages.len(),
            latencies: Vec::new(),
            errors: 0,
            first_error: None,
            wall: Duration::ZERO,
        };
        for task in tasks {
            match task.await {
                Ok((latencies, errors, first_error)) => {
                    load.latencies.extend(latencies);
                    load.errors += errors;
                    if load.first_error.is_none() {
                        load.first_error = first_error;
                    }
                }
                Err(error) => {
                    load.errors += 1;
                    load.first_error
                        .get_or_insert(format!("a client panicked: {error}"));
                }
            }
        }
        load.wall = started.elapsed();
        load
    }
}
