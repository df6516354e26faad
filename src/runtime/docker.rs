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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::cgroup::Cgroup;
use super::kernel::{Enforcer, Kernel, RawOutput};
use super::{
    ExecOutcome, ExecRequest, KernelEnd, KernelStart, OutputChunk, Runtime, RuntimeError,
    SANDBOX_DATA, SANDBOX_INPUTS, SandboxInfo, SandboxSpec,
};
use crate::config::SandboxConfig;

/// The label every codebox container carries.
pub const MANAGED_LABEL: &str = "codebox.managed";
/// The label that names the workspace a container serves.
pub const WORKSPACE_LABEL: &str = "codebox.workspace";
/// The label that names the codebox instance a container belongs to.
pub const INSTANCE_LABEL: &str = "codebox.instance";

/// The runner, started as `python3 -c <source>`: it needs nothing from the image but Python,
/// so every image with a `python3` can serve, and a new runner needs no image rebuild.
const RUNNER_SOURCE: &str = include_str!("../../images/python/runner.py");

/// Environment of the runner: unbuffered output so that nothing is lost when it is killed,
/// and a writable home and cache in `/tmp` because the root file system is read-only.
const RUN_ENV: [&str; 5] = [
    "HOME=/tmp",
    "PYTHONUNBUFFERED=1",
    "PYTHONDONTWRITEBYTECODE=1",
    "MPLBACKEND=Agg",
    "MPLCONFIGDIR=/tmp/matplotlib",
];

/// The user of the short-lived probe container of [`Runtime::check_host_folder`]: nobody.
const PROBE_USER: &str = "65534:65534";

/// How many processes a sandbox has between cells, as the engine counts them: its init and
/// the runner.
const IDLE_PROCESSES: usize = 2;

/// How long a fresh interpreter may take to import what it preloads and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a container that lost its interpreter may take to stop by itself before it is
/// killed.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A sandbox's live interpreter and what the host knows of its processes.
struct Live {
    kernel: tokio::sync::Mutex<Kernel>,
    /// The container's control group, when visible from here.
    cgroup: Option<Cgroup>,
    /// The runner's host PID, spared by the sweep after each cell.
    runner_pid: Option<i32>,
    /// OOM kills already accounted for, so that a new one can be told from an old one.
    oom_seen: Mutex<u64>,
}

/// A runtime on a Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    config: SandboxConfig,
    /// The `uid:gid` code runs as.
    user: String,
    /// Per container: its live interpreter.
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Per container: why its last interpreter ended, until the next one starts.
    ended: Mutex<HashMap<String, KernelEnd>>,
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket), negotiates the API
    /// version and checks that the engine answers and has the image. `user` is the `uid:gid`
    /// code runs as.
    pub async fn connect(config: &SandboxConfig, user: String) -> Result<Self, RuntimeError> {
        let docker = connect_engine().await?;
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
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
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

    fn create_body(&self, spec: &SandboxSpec) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
        labels.insert(MANAGED_LABEL.to_owned(), "true".to_owned());
        labels.insert(WORKSPACE_LABEL.to_owned(), spec.workspace_id.clone());
        labels.insert(INSTANCE_LABEL.to_owned(), spec.instance.clone());
        let bind = |source: &std::path::Path, target: &str, read_only: bool| Mount {
            source: Some(source.to_string_lossy().into_owned()),
            target: Some(target.to_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Default::default()
        };
        let memory = i64::try_from(self.config.memory.as_u64()).unwrap_or(i64::MAX);
        let tmpfs = HashMap::from([(
            "/tmp".to_owned(),
            format!(
                "rw,nosuid,nodev,size={},mode=1777",
                self.config.tmpfs_size.as_u64()
            ),
        )]);
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            user: Some(self.user.clone()),
            working_dir: Some(SANDBOX_DATA.to_owned()),
            entrypoint: Some(vec!["python3".to_owned()]),
            cmd: Some(vec!["-c".to_owned(), RUNNER_SOURCE.to_owned()]),
            env: Some(RUN_ENV.iter().map(|v| (*v).to_owned()).collect()),
            labels: Some(labels),
            network_disabled: Some(true),
            // Standard input stays open across attachments: it is the runner's channel.
            open_stdin: Some(true),
            stdin_once: Some(false),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(HostConfig {
                mounts: Some(vec![
                    bind(&spec.host_data, SANDBOX_DATA, false),
                    bind(&spec.host_inputs, SANDBOX_INPUTS, true),
                ]),
                network_mode: Some("none".to_owned()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(tmpfs),
                pids_limit: Some(self.config.pids_limit),
                memory: Some(memory),
                // Equal to memory: no swap on top of the limit.
                memory_swap: Some(memory),
                nano_cpus: Some((self.config.cpus * 1e9) as i64),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".to_owned()),
                    soft: Some(self.config.nofile),
                    hard: Some(self.config.nofile),
                }]),
                // The init forwards the engine's SIGINT to the runner and reaps orphans.
                init: Some(true),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }),
                runtime: self.config.runtime.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn live_of(&self, container: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .ok()
            .and_then(|live| live.get(container).cloned())
    }

    fn forget(&self, container: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .ok()
            .and_then(|mut live| live.remove(container))
    }

    fn set_ended(&self, container: &str, end: KernelEnd) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.insert(container.to_owned(), end);
        }
    }

    fn take_ended(&self, container: &str) -> Option<KernelEnd> {
        self.ended
            .lock()
            .ok()
            .and_then(|mut ended| ended.remove(container))
    }

    /// Creates the container unless it exists; stops one that runs an interpreter this
    /// process has no channel to (codebox restarted), whose state is unknown.
    async fn stopped_container(&self, spec: &SandboxSpec, name: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_container(name, None).await {
            Ok(existing) => {
                let running = existing
                    .state
                    .as_ref()
                    .and_then(|state| state.running)
                    .unwrap_or(false);
                if running {
                    kill_container(self.docker.clone(), name.to_owned(), "SIGKILL").await;
                    self.wait_stopped(name, None).await;
                }
                return Ok(());
            }
            Err(error) if status_of(&error) == Some(404) => {}
            Err(error) => return Err(error.into()),
        }
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        match self
            .docker
            .create_container(Some(options), self.create_body(spec))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if status_of(&error) == Some(404) => {
                Err(RuntimeError::ImageMissing(self.config.image.clone()))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Waits until the container does not run, for at most `limit` (unbounded: `None`).
    async fn wait_stopped(&self, name: &str, limit: Option<Duration>) -> bool {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waits = self.docker.wait_container(name, Some(options));
        let waited = async { waits.next().await };
        match limit {
            Some(limit) => tokio::time::timeout(limit, waited).await.is_ok(),
            None => {
                waited.await;
                true
            }
        }
    }

    /// Attaches to a stopped container's stdio, starts it and waits for its runner, and for
    /// it to import `preload`.
    async fn start_interpreter(
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

    /// Kills whatever a finished cell left running but the interpreter. Returns `false` when
    /// that took killing the whole container (the interpreter with it).
    async fn sweep_after_cell(&self, container: &str, live: &Live) -> Result<bool, RuntimeError> {
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
    fn memory_limit_hit(live: &Live) -> bool {
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
    async fn how_it_ended(&self, container: &str) -> (Option<i64>, bool) {
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

    fn memory_reason(&self) -> String {
        format!(
            "memory limit of {} exceeded",
            self.config.memory.display().iec()
        )
    }
}

/// Stops code in one container through the engine.
struct DockerEnforcer {
    docker: Docker,
    container: String,
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

/// Connects to the engine, negotiates the API version and pings it; every failure becomes
/// one line that says what to check.
pub async fn connect_engine() -> Result<Docker, RuntimeError> {
    let unreachable = |error: BollardError| {
        let host = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
        RuntimeError::Unreachable(format!(
            "cannot reach the Docker engine at {host}: {error}; is the daemon running, and may this user use it?"
        ))
    };
    let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

/// The HTTP status of an engine error, if it is one.
fn status_of(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ensure(&self, spec: &SandboxSpec) -> Result<KernelStart, RuntimeError> {
        let name = Self::container_name(&spec.workspace_id);
        if let Some(live) = self.live_of(&name) {
            if live.kernel.lock().await.is_open() {
                return Ok(KernelStart::default());
            }
            // It died between cells (a thread of the code ended the process, say).
            self.forget(&name);
            let (_, oom_killed) = self.how_it_ended(&name).await;
            if let Ok(mut ended) = self.ended.lock() {
                ended.entry(name.clone()).or_insert(if oom_killed {
                    KernelEnd::Memory
                } else {
                    KernelEnd::Crashed
                });
            }
        }
        self.stopped_container(spec, &name).await?;
        let live = self.start_interpreter(&name, &spec.preload).await?;
        let previous_end = self.take_ended(&name);
        if let Ok(mut all) = self.live.lock() {
            all.insert(name, Arc::new(live));
        }
        Ok(KernelStart {
            fresh: true,
            previous_end,
        })
    }

    async fn exec(
        &self,
        workspace_id: &str,
        request: &ExecRequest,
        live_output: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, RuntimeError> {
        let container = Self::container_name(workspace_id);
        let Some(live) = self.live_of(&container) else {
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
            self.forget(&container);
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
            self.set_ended(&container, end);
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
        if self.live_of(&container).is_some() {
            // The runner ignores SIGINT between cells, so this cannot hit the wrong one.
            kill_container(self.docker.clone(), container, "SIGINT").await;
        }
        Ok(())
    }

    async fn restart(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        let container = Self::container_name(workspace_id);
        if self.forget(&container).is_some() {
            kill_container(self.docker.clone(), container.clone(), "SIGKILL").await;
            self.set_ended(&container, KernelEnd::Requested);
        }
        Ok(())
    }

    async fn release(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        let name = Self::container_name(workspace_id);
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        self.forget(&name);
        self.take_ended(&name);
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
        // A probe file codebox writes, and a throwaway container that looks for it through a
        // bind mount: only an engine that shares this file system finds it.
        let probe = format!(".probe-{}", uuid::Uuid::new_v4().simple());
        let probe_path = folder.join(&probe);
        std::fs::write(&probe_path, b"").map_err(|error| {
            RuntimeError::Unreachable(format!(
                "cannot write a probe file into {}: {error}",
                folder.display()
            ))
        })?;
        let name = format!("codebox-{probe}");
        let body = ContainerCreateBody {
            image: Some(self.config.image.clone()),
            user: Some(PROBE_USER.to_owned()),
            entrypoint: Some(vec!["test".to_owned()]),
            cmd: Some(vec!["-e".to_owned(), format!("/probe/{probe}")]),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    source: Some(folder.to_string_lossy().into_owned()),
                    target: Some("/probe".to_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                }]),
                network_mode: Some("none".to_owned()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let outcome = async {
            self.docker.create_container(Some(options), body).await?;
            self.docker.start_container(&name, None).await?;
            let mut waits = self.docker.wait_container(&name, None);
            let status = match waits.next().await {
                Some(Ok(response)) => response.status_code,
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
                Some(Err(error)) => return Err(RuntimeError::from(error)),
                None => -1,
            };
            Ok(status)
        }
        .await;
        let _ = std::fs::remove_file(&probe_path);
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self.docker.remove_container(&name, Some(remove)).await;
        match outcome? {
            0 => Ok(()),
            _ => Err(RuntimeError::Unreachable(format!(
                "the Docker engine does not see {} of this machine: codebox and the engine must share a file system, because workspaces are bind-mounted",
                folder.display()
            ))),
        }
    }
}
