//! The warm pool: sandboxes started ahead of need, their interpreters already past the slow
//! imports, so that a new message's first run takes one instead of waiting for a container.
//!
//! A slot is a complete workspace under a fresh workspace id (folders made, `data/` mounted
//! where the disk policy mounts it) with its sandbox started and its interpreter ready. A new
//! message claims its workspace id from the pool ([`Supervisor::claim`] offers the next slot
//! as the id to bind), so nothing is renamed or moved: the container's bind mounts already
//! are the message's folders. A marker file `<workspaces>/.pool/<id>` says a workspace is a
//! slot; start-up removes the slots a previous process left (no message owns them), and the
//! reaper leaves live slots alone.
//!
//! The pool is refilled in the background one slot at a time ([`Supervisor::keep_pool_warm`],
//! run by `codebox serve`), so that warming never takes more than one core from the runs in
//! progress, and not at all while new messages keep finding it empty. An empty pool costs
//! speed, never a run: the message then gets a new sandbox, which imports nothing ahead.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::*;

/// How long the refill waits after a slot failed to start, before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long after a new message found the pool empty the refill holds off. Under a sustained
/// stream of new messages each gets a sandbox of its own (no preload, so the engine's pace);
/// warming slots then would only take the CPU those runs need. The pool refills once the
/// stream pauses, ready for the next burst.
const HOLD_OFF_AFTER_MISS: Duration = Duration::from_secs(2);

/// The ready slots, by workspace id.
#[derive(Debug, Default)]
pub struct WarmPool {
    ready: Mutex<Vec<WorkspaceId>>,
    /// Wakes the refill when a slot was taken.
    taken: Notify,
    /// When a new message last found no slot.
    last_miss: Mutex<Option<tokio::time::Instant>>,
}

impl WarmPool {
    /// Takes a ready slot, if there is one.
    pub(super) fn take(&self) -> Option<WorkspaceId> {
        let slot = {
            let mut ready = self.ready.lock().ok()?;
            let slot = ready.pop();
            metrics::gauge!("codebox_warm_pool_ready").set(ready.len() as f64);
            slot
        };
        match slot {
            Some(slot) => {
                self.taken.notify_one();
                Some(slot)
            }
            None => {
                metrics::counter!("codebox_warm_pool_misses_total").increment(1);
                if let Ok(mut last_miss) = self.last_miss.lock() {
                    *last_miss = Some(tokio::time::Instant::now());
                }
                None
            }
        }
    }

    /// Returns a slot that was taken but not used, or adds a new one.
    pub(super) fn give_back(&self, slot: WorkspaceId) {
        if let Ok(mut ready) = self.ready.lock() {
            ready.push(slot);
            metrics::gauge!("codebox_warm_pool_ready").set(ready.len() as f64);
        }
    }

    /// How many slots are ready.
    pub fn len(&self) -> usize {
        self.ready.lock().map(|ready| ready.len()).unwrap_or(0)
    }

    /// Whether no slot is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `workspace_id` is a ready slot.
    pub fn holds(&self, workspace_id: &WorkspaceId) -> bool {
        self.ready
            .lock()
            .map(|ready| ready.iter().any(|slot| slot == workspace_id))
            .unwrap_or(false)
    }

    /// When the refill may warm the next slot: now, or a while after the last miss.
    fn refill_at(&self) -> Option<tokio::time::Instant> {
        let last_miss = (*self.last_miss.lock().ok()?)?;
        let at = last_miss + HOLD_OFF_AFTER_MISS;
        (at > tokio::time::Instant::now()).then_some(at)
    }

    fn drain(&self) -> Vec<WorkspaceId> {
        metrics::gauge!("codebox_warm_pool_ready").set(0.0);
        self.ready
            .lock()
            .map(|mut ready| std::mem::take(&mut *ready))
            .unwrap_or_default()
    }
}

impl Supervisor {
    /// The warm pool.
    pub fn pool(&self) -> &WarmPool {
        &self.pool
    }

    /// Keeps `sandbox.warm_pool` slots ready, for as long as it runs: started by `codebox
    /// serve` beside the server, and ended with it.
    pub async fn keep_pool_warm(self: Arc<Self>) {
        let size = self.config.sandbox.warm_pool;
        if size == 0 {
            return;
        }
        loop {
            while self.pool.len() < size {
                if let Some(at) = self.pool.refill_at() {
                    tokio::time::sleep_until(at).await;
                    continue;
                }
                match self.warm_slot().await {
                    Ok(slot) => self.pool.give_back(slot),
                    Err(error) => {
                        tracing::warn!(%error, "could not warm a sandbox; retrying");
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
            self.pool.taken.notified().await;
        }
    }

    /// Makes one slot: a workspace, mounted, with its sandbox ready.
    async fn warm_slot(&self) -> Result<WorkspaceId> {
        let id = WorkspaceId::new();
        self.workspaces.mark_pool_slot(id.as_str())?;
        let warmed = async {
            let workspace = self.workspaces.prepare(id.as_str())?;
            self.cap_workspace(&workspace).await?;
            let spec = SandboxSpec {
                workspace_id: id.to_string(),
                instance: self.instance.clone(),
                host_data: workspace.data.clone(),
                host_inputs: workspace.inputs.clone(),
                labels: vec![(crate::runtime::POOL_LABEL.to_owned(), "true".to_owned())],
                preload: self.config.sandbox.preload.clone(),
            };
            self.runtime.ensure(&spec).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(error) = warmed {
            self.remove_slot(&id).await;
            return Err(error);
        }
        Ok(id)
    }

    /// Records that a slot became a message's workspace.
    pub(super) fn slot_assigned(&self, slot: &WorkspaceId) {
        if let Err(error) = self.workspaces.unmark_pool_slot(slot.as_str()) {
            tracing::warn!(%slot, %error, "could not unmark a workspace taken from the pool");
        }
    }

    /// Removes every slot: the ready ones of this process, and those a previous process
    /// left behind (marked, and owned by no message). Called at start-up and at shutdown.
    pub async fn clear_pool(&self) -> Result<usize> {
        let mut slots = self.pool.drain();
        slots.extend(
            self.workspaces
                .pool_slots()?
                .into_iter()
                .map(WorkspaceId::from_stored),
        );
        slots.sort();
        slots.dedup();
        let mut removed = 0;
        for slot in slots {
            if self.catalog.messages().by_workspace(&slot).await?.is_some() {
                // Claimed just before a crash: the message's now.
                self.slot_assigned(&slot);
                continue;
            }
            self.remove_slot(&slot).await;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes a slot's sandbox and workspace; failures are logged, and the next start-up
    /// tries again.
    async fn remove_slot(&self, slot: &WorkspaceId) {
        let removed = async {
            self.runtime.release(slot.as_str()).await?;
            self.workspaces.remove(slot.as_str())?;
            self.workspaces.unmark_pool_slot(slot.as_str())?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(error) = removed {
            tracing::warn!(%slot, %error, "could not remove a warm sandbox");
        }
    }
}
