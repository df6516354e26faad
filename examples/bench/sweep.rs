//! **Case 5: concurrency sweep.** For each count in `--clients` (default 1, 4, 16, 64), that many
//! clients each run `print(1)` in a message of their own for `--duration` seconds. Each message's
//! first run, which makes its sandbox, happens outside the clock, and the pool is full before each
//! step starts. Reported per step: runs per second, p50, p99, errors (a transport error, an HTTP
//! status other than 200, or a run that did not succeed and print 1), and the server process's peak
//! resident memory during the step: its `VmHWM` from `/proc/<pid>/status`, reset to the current
//! size just before the step (`echo 5 > /proc/<pid>/clear_refs`), and also sampled (`VmRSS`) every
//! 20 ms. Target, for the largest step: at most 64 MB, read as 64 MiB (the kernel counts in KiB).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::harness::Bench;
use crate::load::Load;
use crate::pool::POLL_EVERY;
use crate::procfs::{proc_status_kib, reset_peak_rss};

/// One step of the sweep.
pub(crate) struct SweepStep {
    pub(crate) load: Load,
    /// The server's peak resident memory during the step, in KiB: the larger of `VmHWM`
    /// (reset just before the step) and the sampled `VmRSS`.
    pub(crate) peak_rss_kib: Option<u64>,
    /// Whether the reset worked, so that `VmHWM` covers this step only.
    pub(crate) hwm_reset: bool,
    /// The server's `VmHWM` just before the reset: its peak until then.
    pub(crate) hwm_before_kib: Option<u64>,
}

impl Bench {
    /// A sweep step: the load, with the server's memory watched.
    pub(crate) async fn sweep_step(&self, messages: &[String], duration: Duration) -> SweepStep {
        let pid = self.server.pid;
        let hwm_before_kib = proc_status_kib(pid, "VmHWM");
        let hwm_reset = reset_peak_rss(pid).is_ok();
        let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watcher = {
            let watching = watching.clone();
            tokio::spawn(async move {
                let mut peak = 0;
                while watching.load(Ordering::Relaxed) {
                    peak = peak.max(proc_status_kib(pid, "VmRSS").unwrap_or(0));
                    tokio::time::sleep(POLL_EVERY).await;
                }
                peak
            })
        };
        let load = self.load(messages, duration).await;
        watching.store(false, Ordering::Relaxed);
        let sampled = watcher.await.unwrap_or(0);
        let hwm = if hwm_reset {
            proc_status_kib(pid, "VmHWM").unwrap_or(0)
        } else {
            0
        };
        let peak = sampled.max(hwm);
        SweepStep {
            load,
            peak_rss_kib: (peak > 0).then_some(peak),
            hwm_reset,
            hwm_before_kib,
        }
    }
}
