//! The warm pool, seen from outside the server: when it is full and idle, which the cases wait for
//! before they take slots, and what each slot cost to get ready.
//!
//! The server keeps its pool in memory, but marks each slot it makes with a file
//! `<data_dir>/workspaces/.pool/<id>` before it starts the slot's sandbox, and removes the mark
//! when a message takes the slot. The pool is full when there are `--warm-pool` marks and the
//! interpreter in each slot's container has used no CPU for 150 ms: the benchmark finds it as the
//! child of the container's init (`docker inspect`, then `/proc/<init>/task/<init>/children`) and
//! reads its CPU time from `/proc/<pid>/stat`. An interpreter still importing pandas never sits
//! still that long; a ready one waits on its standard input. This needs the benchmark to run in the
//! engine's PID namespace, as codebox itself does.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::harness::Bench;
use crate::procfs::cpu_ticks;

/// How long a slot's interpreter must have used no CPU to count as ready.
const IDLE_FOR: Duration = Duration::from_millis(150);
/// How often the pool, and the server's memory, are looked at.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(20);
/// The longest the benchmark waits for the pool to fill.
const POOL_WAIT_LIMIT: Duration = Duration::from_secs(180);

impl Bench {
    /// Waits until the server's pool holds `warm_pool` slots whose interpreters are ready
    /// and idle (see the module's documentation), and records what each slot's interpreter
    /// used to get ready. Returns how long it waited.
    pub(crate) async fn wait_pool_full(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let marks = self.server.data_dir.join("workspaces").join(".pool");
        // Per slot: its runner's PID, its CPU time when last read, and since when unchanged.
        let mut seen: HashMap<String, (i32, u64, Instant)> = HashMap::new();
        loop {
            self.server.check_alive()?;
            let slots = list_names(&marks)?;
            seen.retain(|slot, _| slots.contains(slot));
            let mut ready = slots.len() >= self.warm_pool;
            if ready {
                for slot in &slots {
                    if !self.slot_idle(slot, &mut seen).await {
                        ready = false;
                    }
                }
            }
            if ready {
                for (slot, (_, ticks, _)) in seen {
                    self.slot_cpu_ticks.entry(slot).or_insert(ticks);
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > POOL_WAIT_LIMIT {
                bail!(
                    "the warm pool did not fill within {} s ({} of {} slots marked); the \
                     server's log:\n{}",
                    POOL_WAIT_LIMIT.as_secs(),
                    slots.len(),
                    self.warm_pool,
                    self.server.log_tail()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Whether `slot`'s interpreter runs and has used no CPU for [`IDLE_FOR`].
    async fn slot_idle(&self, slot: &str, seen: &mut HashMap<String, (i32, u64, Instant)>) -> bool {
        let now = Instant::now();
        let cached = seen.get(slot).map(|(pid, ..)| *pid);
        let pid = match cached {
            Some(pid) => pid,
            None => match self.runner_of(slot).await {
                Some(pid) => pid,
                None => return false,
            },
        };
        let Some(ticks) = cpu_ticks(pid) else {
            // The process is gone: the slot failed and is being remade.
            seen.remove(slot);
            return false;
        };
        let entry = seen.entry(slot.to_owned()).or_insert((pid, ticks, now));
        if entry.1 != ticks {
            *entry = (pid, ticks, now);
            return false;
        }
        now.duration_since(entry.2) >= IDLE_FOR
    }

    /// The host PID of the interpreter in `slot`'s container: the child of its init.
    async fn runner_of(&self, slot: &str) -> Option<i32> {
        let inspected = self
            .docker
            .inspect_container(&format!("codebox-{slot}"), None)
            .await
            .ok()?;
        let state = inspected.state?;
        if state.running != Some(true) {
            return None;
        }
        let init = i32::try_from(state.pid?).ok().filter(|pid| *pid > 0)?;
        let children =
            std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

/// The entries of `dir` by name; none when it does not exist.
fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("list {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        names.extend(entry.file_name().to_str().map(str::to_owned));
    }
    Ok(names)
}
