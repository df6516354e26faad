//! After a cell: killing what it left running from the host (through the container's control
//! group, or by counting the engine's process list and killing the container), telling a new
//! out-of-memory kill from an old one, and finding out how a container whose interpreter died
//! ended. None of it runs inside the sandbox, which cannot be trusted to clean up after the
//! code.

use std::time::Duration;

use super::interpreter::Live;
use super::{DockerRuntime, kill_container};
use crate::runtime::RuntimeError;
use crate::runtime::engine::status_of;

/// How many processes a sandbox has between cells, as the engine counts them: its init and
/// the runner.
const IDLE_PROCESSES: usize = 2;

/// How long a container that lost its interpreter may take to stop by itself before it is
/// killed.
const STOP_WAIT: Duration = Duration::from_secs(2);

impl DockerRuntime {
    /// Kills whatever a finished cell left running but the interpreter. Returns `false` when
    /// that took killing the whole container (the interpreter with it).
    pub(super) async fn sweep_after_cell(
        &self,
        container: &str,
        live: &Live,
    ) -> Result<bool, RuntimeError> {
        if let (Some(cgroup), Some(runner)) = (&live.cgroup, live.runner_pid) {
            match cgroup.kill_all_but(|pid, _| pid == runner).await {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    tracing::warn!(%container, "processes kept appearing; killing the sandbox");
                }
                Err(error) => {
                    tracing::warn!(%container, %error, "could not sweep the sandbox; killing it");
                }
            }
            kill_container(self.docker.clone(), container.to_owned(), "SIGKILL").await;
            return Ok(false);
        }
        let top = match self.docker.top_processes(container, None).await {
            Ok(top) => top,
            // Already gone: nothing is left.
            Err(error) if matches!(status_of(&error), Some(404 | 409)) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        if top.processes.unwrap_or_default().len() > IDLE_PROCESSES {
            kill_container(self.docker.clone(), container.to_owned(), "SIGKILL").await;
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether the memory limit killed a process of a live sandbox since the last check.
    pub(super) fn memory_limit_hit(live: &Live) -> bool {
        let Some(count) = live.cgroup.as_ref().and_then(|cgroup| cgroup.oom_kills()) else {
            return false;
        };
        let Ok(mut seen) = live.oom_seen.lock() else {
            return false;
        };
        let hit = count > *seen;
        *seen = count;
        hit
    }

    /// How a container whose interpreter died ended: its exit status, and whether the
    /// memory limit killed it. The container is killed if it does not stop by itself.
    pub(super) async fn how_it_ended(&self, container: &str) -> (Option<i64>, bool) {
        if !self.wait_stopped(container, Some(STOP_WAIT)).await {
            kill_container(self.docker.clone(), container.to_owned(), "SIGKILL").await;
            self.wait_stopped(container, Some(STOP_WAIT)).await;
        }
        match self.docker.inspect_container(container, None).await {
            Ok(inspected) => {
                let state = inspected.state.unwrap_or_default();
                (state.exit_code, state.oom_killed.unwrap_or(false))
            }
            Err(_) => (None, false),
        }
    }

    pub(super) fn memory_reason(&self) -> String {
        format!(
            "memory limit of {} exceeded",
            self.config.memory.display().iec()
        )
    }
}
