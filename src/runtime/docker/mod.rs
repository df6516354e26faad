//! [`DockerRuntime`]: one long-lived, hardened container per workspace on a Docker engine
//! (bollard, API version negotiated so that old engines speaking 1.41 work), whose main
//! process (under the engine's init) is the runner: the message's live interpreter.
//!
//! The supervisor talks to the runner over the container's own attached stdio
//! ([`super::kernel`]), attached before the container starts so that nothing it says is
//! missed. Nothing inside the sandbox can be trusted to clean up after the code, which now runs
//! in the runner's own process, so enforcement is from outside: a deadline sends SIGINT through
//! the engine (the init forwards it to the runner as KeyboardInterrupt) and kills the container
//! when the cell does not stop; every process a cell leaves behind is killed from the host
//! through the container's control group ([`super::cgroup`]), sparing only the init and the
//! runner; where that group is not visible, a container with leftovers is killed and the next
//! cell gets a fresh interpreter.
//!
//! One concept per file: [`container`] makes the container, [`interpreter`] starts and attaches
//! to its runner, [`sweep`] cleans up after each cell, and [`probe`] checks that the engine
//! shares this machine's file system; this file holds the [`Runtime`] impl that calls them.

mod container;
mod interpreter;
mod probe;
mod sweep;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use tokio::sync::mpsc;

use self::interpreter::{DockerEnforcer, Live};
use super::engine::{connect_engine, status_of};
use super::live::LiveKernels;
use super::{
    ExecOutcome, ExecRequest, INSTANCE_LABEL, KernelEnd, KernelStart, MANAGED_LABEL, OutputChunk,
    Runtime, RuntimeError, SandboxInfo, SandboxSpec, WORKSPACE_LABEL,
};
use crate::config::SandboxConfig;

/// A runtime on a Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    config: SandboxConfig,
    /// The `uid:gid` code runs as.
    user: String,
    /// Per container: its live interpreter, and why its last one ended.
    kernels: LiveKernels<Live>,
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket), negotiates the API
    /// version and checks that the engine answers and has the image. `user` is the `uid:gid`
    /// code runs as.
    pub async fn connect(config: &SandboxConfig, user: String) -> Result<Self, RuntimeError> {
        let docker = connect_engine()
            .await
            .map_err(|error| RuntimeError::Unreachable(error.to_string()))?;
        match docker.inspect_image(&config.image).await {
            Ok(_) => {}
            Err(error) if status_of(&error) == Some(404) => {
                return Err(RuntimeError::ImageMissing(config.image.clone()));
            }
            Err(error) => return Err(error.into()),
        }
        Ok(Self {
            docker,
            config: config.clone(),
            user,
            kernels: LiveKernels::new(),
        })
    }

    /// The container name of a workspace's sandbox.
    pub fn container_name(workspace_id: &str) -> String {
        format!("codebox-{workspace_id}")
    }

    /// The engine client, for operations outside the trait (image builds, tests).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

/// Sends `signal` to a container's init.
async fn kill_container(docker: Docker, container: String, signal: &str) {
    let options = KillContainerOptionsBuilder::default()
        .signal(signal)
        .build();
    if let Err(error) = docker.kill_container(&container, Some(options)).await {
        // 409: it does not run; 404: it is gone. Either way there is nothing to signal.
        if !matches!(status_of(&error), Some(404 | 409)) {
            tracing::warn!(%container, %error, signal, "could not signal a sandbox");
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ensure(&self, spec: &SandboxSpec) -> Result<KernelStart, RuntimeError> {
        let name = Self::container_name(&spec.workspace_id);
        if let Some(live) = self.kernels.get(&name) {
            if live.kernel.lock().await.is_open() {
                return Ok(KernelStart::default());
            }
            // It died between cells (a thread of the code ended the process, say).
            self.kernels.forget(&name);
            let (_, oom_killed) = self.how_it_ended(&name).await;
            let end = if oom_killed {
                KernelEnd::Memory
            } else {
                KernelEnd::Crashed
            };
            self.kernels.ended_unless_known(&name, end);
        }
        self.stopped_container(spec, &name).await?;
        let live = self.start_interpreter(&name, &spec.preload).await?;
        Ok(self.kernels.started(name, live))
    }

    async fn exec(
        &self,
        workspace_id: &str,
        request: &ExecRequest,
        live_output: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, RuntimeError> {
        let container = Self::container_name(workspace_id);
        let Some(live) = self.kernels.get(&container) else {
            return Err(RuntimeError::Sandbox {
                workspace_id: workspace_id.to_owned(),
                reason: "no live interpreter: ensure the sandbox first".to_owned(),
            });
        };
        let enforcer = Arc::new(DockerEnforcer {
            docker: self.docker.clone(),
            container: container.clone(),
        });
        let (executed, execution_count) = {
            let mut kernel = live.kernel.lock().await;
            let executed = kernel.execute(request, live_output, enforcer).await;
            (executed, kernel.execution_count)
        };
        let mut exit_code = executed.exit_code;
        let mut killed_reason = None;
        let mut lost = executed.lost;
        if lost.is_none() {
            // Whatever the cell left behind (a daemon it double-forked, a child that closed
            // its output) goes now, before the run is reported finished.
            if !self.sweep_after_cell(&container, &live).await? {
                lost = Some(KernelEnd::Crashed);
            } else if Self::memory_limit_hit(&live) {
                killed_reason = Some(self.memory_reason());
            }
        }
        if let Some(end) = lost {
            self.kernels.forget(&container);
            let mut end = end;
            if end == KernelEnd::Crashed {
                let (status, oom_killed) = self.how_it_ended(&container).await;
                exit_code = status;
                if oom_killed {
                    end = KernelEnd::Memory;
                    killed_reason = Some(self.memory_reason());
                } else if let Some(why) = &executed.closed_because {
                    let diagnostics = live.kernel.lock().await.diagnostics();
                    tracing::debug!(%container, why, %diagnostics, "a sandbox's interpreter ended");
                }
            } else {
                exit_code = None;
            }
            self.kernels.ended(&container, end);
        }
        Ok(ExecOutcome {
            exit_code,
            stdout_truncated: executed.stdout.truncated,
            stderr_truncated: executed.stderr.truncated,
            stdout: executed.stdout.bytes,
            stderr: executed.stderr.bytes,
            timed_out: executed.timed_out,
            killed_reason,
            duration: executed.duration,
            outputs: executed.outputs,
            outputs_truncated: executed.outputs_truncated,
            execution_count,
            kernel_lost: lost,
        })
    }

    async fn kill_processes(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        // The code runs in the interpreter's own process: stopping all of it takes the
        // container. The cell in progress sees its channel end.
        let container = Self::container_name(workspace_id);
        kill_container(self.docker.clone(), container, "SIGKILL").await;
        Ok(())
    }

    async fn interrupt(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        let container = Self::container_name(workspace_id);
        if self.kernels.get(&container).is_some() {
            // The runner ignores SIGINT between cells, so this cannot hit the wrong one.
            kill_container(self.docker.clone(), container, "SIGINT").await;
        }
        Ok(())
    }

    async fn restart(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        let container = Self::container_name(workspace_id);
        if self.kernels.forget(&container).is_some() {
            kill_container(self.docker.clone(), container.clone(), "SIGKILL").await;
            self.kernels.ended(&container, KernelEnd::Requested);
        }
        Ok(())
    }

    async fn release(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        let name = Self::container_name(workspace_id);
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        self.kernels.forget(&name);
        self.kernels.take_end(&name);
        match self.docker.remove_container(&name, Some(options)).await {
            Ok(()) => Ok(()),
            // 404: already gone. 409: a removal is already in progress.
            Err(error) if matches!(status_of(&error), Some(404 | 409)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{MANAGED_LABEL}=true")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let labels = container.labels.as_ref()?;
                let workspace_id = labels.get(WORKSPACE_LABEL)?.clone();
                Some(SandboxInfo {
                    workspace_id,
                    instance: labels.get(INSTANCE_LABEL).cloned(),
                    sandbox_id: container.id?,
                    running: container.state.map(|state| state.to_string())
                        == Some("running".to_owned()),
                })
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await?;
        Ok(())
    }

    async fn check_host_folder(&self, folder: &std::path::Path) -> Result<(), RuntimeError> {
        self.probe_host_folder(folder).await
    }
}
