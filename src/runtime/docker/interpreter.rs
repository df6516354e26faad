//! The interpreter of a sandbox: attaching to the stopped container's stdio before starting
//! it (so that nothing the runner says is missed), waiting for the runner to say it is ready
//! and to import what it preloads, and finding what the host knows of its processes (the
//! control group, the runner's PID) for the sweep after each cell. A running cell is stopped
//! through the engine by [`DockerEnforcer`].

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use futures::StreamExt;

use super::{DockerRuntime, kill_container};
use crate::runtime::RuntimeError;
use crate::runtime::cgroup::Cgroup;
use crate::runtime::engine::status_of;
use crate::runtime::kernel::{Enforcer, Kernel, RawOutput};

/// How long a fresh interpreter may take to import what it preloads and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A sandbox's live interpreter and what the host knows of its processes.
pub(super) struct Live {
    pub(super) kernel: tokio::sync::Mutex<Kernel>,
    /// The container's control group, when visible from here.
    pub(super) cgroup: Option<Cgroup>,
    /// The runner's host PID, spared by the sweep after each cell.
    pub(super) runner_pid: Option<i32>,
    /// OOM kills already accounted for, so that a new one can be told from an old one.
    pub(super) oom_seen: Mutex<u64>,
}

impl DockerRuntime {
    /// Attaches to a stopped container's stdio, starts it and waits for its runner, and for
    /// it to import `preload`.
    pub(super) async fn start_interpreter(
        &self,
        name: &str,
        preload: &[String],
    ) -> Result<Live, RuntimeError> {
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self.docker.attach_container(name, Some(options)).await?;
        let output = attached.output.filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok(RawOutput::Channel(message))),
                Ok(LogOutput::StdErr { message }) => Some(Ok(RawOutput::Diagnostic(message))),
                Ok(LogOutput::StdIn { .. } | LogOutput::Console { .. }) => None,
                Err(error) => Some(Err(error.to_string())),
            }
        });
        let mut kernel = Kernel::attach(attached.input, output);
        if let Err(error) = self.docker.start_container(name, None).await {
            // 304: started already (a concurrent start of the same container).
            if status_of(&error) != Some(304) {
                return Err(error.into());
            }
        }
        let started = async {
            kernel.ready(START_TIMEOUT).await?;
            if preload.is_empty() {
                return Ok(());
            }
            kernel.preload(preload, START_TIMEOUT).await
        }
        .await;
        if let Err(why) = started {
            kill_container(self.docker.clone(), name.to_owned(), "SIGKILL").await;
            let diagnostics = kernel.diagnostics();
            return Err(RuntimeError::Sandbox {
                workspace_id: name.to_owned(),
                reason: if diagnostics.is_empty() {
                    why
                } else {
                    format!("{why}: {}", diagnostics.trim())
                },
            });
        }
        // Right after `ready` the group holds the init and the runner, nothing else: no cell
        // has run yet.
        let cgroup = self.cgroup_of(name).await;
        let runner_pid = cgroup.as_ref().and_then(|cgroup| {
            let others: Vec<i32> = cgroup
                .pids()
                .ok()?
                .into_iter()
                .filter(|pid| *pid != cgroup.init_pid)
                .collect();
            match others.as_slice() {
                [runner] => Some(*runner),
                _ => None,
            }
        });
        let oom_seen = cgroup
            .as_ref()
            .and_then(|cgroup| cgroup.oom_kills())
            .unwrap_or(0);
        Ok(Live {
            kernel: tokio::sync::Mutex::new(kernel),
            cgroup,
            runner_pid,
            oom_seen: Mutex::new(oom_seen),
        })
    }

    /// The control group of a running container on this host; `None` when codebox cannot see
    /// it (another PID namespace), or the container does not run.
    async fn cgroup_of(&self, container: &str) -> Option<Cgroup> {
        let inspected = self.docker.inspect_container(container, None).await.ok()?;
        let pid = inspected.state.and_then(|state| state.pid)?;
        let pid = i32::try_from(pid).ok().filter(|pid| *pid > 0)?;
        match Cgroup::of_process(pid) {
            Ok(cgroup) => Some(cgroup),
            Err(error) => {
                tracing::debug!(%container, %error, "the sandbox's control group is not visible");
                None
            }
        }
    }
}

/// Stops code in one container through the engine.
pub(super) struct DockerEnforcer {
    pub(super) docker: Docker,
    pub(super) container: String,
}

#[async_trait]
impl Enforcer for DockerEnforcer {
    async fn interrupt(&self) {
        // To the init, which forwards it to the runner.
        kill_container(self.docker.clone(), self.container.clone(), "SIGINT").await;
    }

    async fn kill(&self) {
        kill_container(self.docker.clone(), self.container.clone(), "SIGKILL").await;
    }
}
