//! [`DockerRuntime`]: one long-lived, hardened container per workspace on a Docker engine
//! (bollard, API version negotiated so that old engines speaking 1.41 work).
//!
//! The container's main process only sleeps; each run is an `exec` of the interpreter with
//! the code on standard input, so nothing is written into `/mnt/data` but what the code
//! writes itself. Docker cannot kill an exec, and nothing inside the sandbox can be trusted to
//! clean up after the code, so every process a run leaves behind, and every process of a run
//! that timed out, is killed from the host through the container's control group
//! ([`super::cgroup`]); where that group is not visible, the container itself is killed and
//! the next run starts it again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::cgroup::Cgroup;
use super::{
    ExecOutcome, ExecRequest, OutputChunk, Runtime, RuntimeError, SANDBOX_DATA, SANDBOX_INPUTS,
    SandboxInfo, SandboxSpec,
};
use crate::config::SandboxConfig;

/// The label every codebox container carries.
pub const MANAGED_LABEL: &str = "codebox.managed";
/// The label that names the workspace a container serves.
pub const WORKSPACE_LABEL: &str = "codebox.workspace";
/// The label that names the codebox instance a container belongs to.
pub const INSTANCE_LABEL: &str = "codebox.instance";

/// Environment of every run: unbuffered output so that nothing is lost when a run is killed,
/// and a writable home and cache in `/tmp` because the root file system is read-only.
const RUN_ENV: [&str; 5] = [
    "HOME=/tmp",
    "PYTHONUNBUFFERED=1",
    "PYTHONDONTWRITEBYTECODE=1",
    "MPLBACKEND=Agg",
    "MPLCONFIGDIR=/tmp/matplotlib",
];

/// The run's command: the interpreter reads the code from standard input.
const RUN_COMMAND: [&str; 2] = ["python3", "-"];

/// Prints the memory cgroup's OOM-kill counter (cgroup v2 and v1 layouts).
const OOM_COUNTER_SCRIPT: &str =
    "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null";

/// The user of the container's main process. It differs from the user code runs as, so that
/// the code's user can never signal it and stop the container, and so that the sweep after
/// each run can tell it from what the code started (code cannot change its uid: no
/// capabilities, `no-new-privileges`).
const KEEPER_USER: &str = "65534:65534";
/// The uid of [`KEEPER_USER`].
const KEEPER_UID: u32 = 65534;

/// How many processes a sandbox has between runs, as the engine counts them: its init and the
/// keeper.
const IDLE_PROCESSES: usize = 2;

/// How long output may keep coming after the timeout kill before the container is killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(3);

/// A runtime on a Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    config: SandboxConfig,
    /// The `uid:gid` code runs as.
    user: String,
    /// Per container: the OOM-kill count already accounted for, so that a new kill can be
    /// told apart from an old one.
    oom_seen: Mutex<HashMap<String, u64>>,
    /// Per running container: its control group on this host, when visible.
    cgroups: Mutex<HashMap<String, Cgroup>>,
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket), negotiates the API
    /// version and checks that the engine answers and has the image. `user` is the `uid:gid`
    /// code runs as.
    pub async fn connect(config: &SandboxConfig, user: String) -> Result<Self, RuntimeError> {
        if user.split(':').next() == Some(&KEEPER_UID.to_string()) {
            return Err(RuntimeError::Unreachable(format!(
                "code may not run as uid {KEEPER_UID}: it is the sandbox's own keeper process"
            )));
        }
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
            oom_seen: Mutex::new(HashMap::new()),
            cgroups: Mutex::new(HashMap::new()),
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
            user: Some(KEEPER_USER.to_owned()),
            working_dir: Some(SANDBOX_DATA.to_owned()),
            // The main process only keeps the container alive; runs are execs.
            entrypoint: Some(vec!["sleep".to_owned()]),
            cmd: Some(vec!["infinity".to_owned()]),
            env: Some(RUN_ENV.iter().map(|v| (*v).to_owned()).collect()),
            labels: Some(labels),
            network_disabled: Some(true),
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

    /// The control group of a running container on this host, found from its init's PID and
    /// kept until the container is started again or released. `None` when codebox cannot see
    /// it (another PID namespace), or the container does not run.
    async fn cgroup(&self, container: &str) -> Option<Cgroup> {
        if let Some(cgroup) = self
            .cgroups
            .lock()
            .ok()
            .and_then(|groups| groups.get(container).cloned())
        {
            return Some(cgroup);
        }
        let inspected = self.docker.inspect_container(container, None).await.ok()?;
        let pid = inspected.state.and_then(|state| state.pid)?;
        let pid = i32::try_from(pid).ok().filter(|pid| *pid > 0)?;
        let cgroup = match Cgroup::of_process(pid) {
            Ok(cgroup) => cgroup,
            Err(error) => {
                tracing::debug!(%container, %error, "the sandbox's control group is not visible");
                return None;
            }
        };
        if let Ok(mut groups) = self.cgroups.lock() {
            groups.insert(container.to_owned(), cgroup.clone());
        }
        Some(cgroup)
    }

    fn forget_cgroup(&self, container: &str) {
        if let Ok(mut groups) = self.cgroups.lock() {
            groups.remove(container);
        }
    }

    /// Kills whatever a finished run left running. Through the control group when visible;
    /// otherwise the engine counts the container's processes, and a container with more than
    /// its idle ones is killed.
    async fn sweep_after_run(&self, container: &str) -> Result<(), RuntimeError> {
        if let Some(cgroup) = self.cgroup(container).await {
            kill_run_processes(self.docker.clone(), container.to_owned(), Some(cgroup)).await;
            return Ok(());
        }
        let top = match self.docker.top_processes(container, None).await {
            Ok(top) => top,
            // Already gone (the timeout killed it): nothing is left.
            Err(error) if matches!(status_of(&error), Some(404 | 409)) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        if top.processes.unwrap_or_default().len() > IDLE_PROCESSES {
            kill_container(self.docker.clone(), container.to_owned()).await;
        }
        Ok(())
    }

    /// Runs a short command in the container as the sandbox user and returns its stdout.
    async fn exec_capture(&self, container: &str, script: &str) -> Result<String, RuntimeError> {
        exec_capture(&self.docker, container, &self.user, script).await
    }

    /// The container's OOM-kill counter, or `None` where the cgroup files are not visible.
    async fn oom_kills(&self, container: &str) -> Option<u64> {
        if let Some(count) = self
            .cgroup(container)
            .await
            .and_then(|cgroup| cgroup.oom_kills())
        {
            return Some(count);
        }
        let text = self
            .exec_capture(container, OOM_COUNTER_SCRIPT)
            .await
            .ok()?;
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("oom_kill"), Some(count)) => count.parse().ok(),
                _ => None,
            }
        })
    }

    /// Records the current OOM-kill count of a container this process did not create, so
    /// that kills from before are not blamed on the next run.
    async fn remember_oom_baseline(&self, container: &str) {
        if self.oom_seen_get(container).is_none() {
            let count = self.oom_kills(container).await.unwrap_or(0);
            self.oom_seen_set(container, count);
        }
    }

    fn oom_seen_get(&self, container: &str) -> Option<u64> {
        self.oom_seen
            .lock()
            .ok()
            .and_then(|seen| seen.get(container).copied())
    }

    fn oom_seen_set(&self, container: &str, count: u64) {
        if let Ok(mut seen) = self.oom_seen.lock() {
            seen.insert(container.to_owned(), count);
        }
    }

    /// Whether the memory limit killed something since the last check.
    async fn memory_limit_hit(&self, container: &str) -> bool {
        let Some(count) = self.oom_kills(container).await else {
            return false;
        };
        let before = self.oom_seen_get(container).unwrap_or(0);
        self.oom_seen_set(container, count);
        count > before
    }
}

/// Runs a short command in `container` as `user` and returns its stdout.
async fn exec_capture(
    docker: &Docker,
    container: &str,
    user: &str,
    script: &str,
) -> Result<String, RuntimeError> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec!["sh", "-c", script]),
                user: Some(user),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut stdout = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            if let LogOutput::StdOut { message } = chunk? {
                stdout.push_str(&String::from_utf8_lossy(&message));
            }
        }
    }
    Ok(stdout)
}

/// Kills every process the runs of `container` started, from the host through its control
/// group, sparing only the init and the keeper. When the group is not visible, or processes
/// keep appearing, the container itself is killed (the next `ensure` starts it again; the
/// workspace is untouched).
async fn kill_run_processes(docker: Docker, container: String, cgroup: Option<Cgroup>) {
    if let Some(cgroup) = cgroup {
        match cgroup.kill_all_but(|_, uid| uid == KEEPER_UID).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(%container, "processes kept appearing; killing the sandbox");
            }
            Err(error) => {
                tracing::warn!(%container, %error, "could not sweep the sandbox; killing it");
            }
        }
    }
    kill_container(docker, container).await;
}

/// Kills a container with SIGKILL.
async fn kill_container(docker: Docker, container: String) {
    let options = KillContainerOptionsBuilder::default()
        .signal("SIGKILL")
        .build();
    if let Err(error) = docker.kill_container(&container, Some(options)).await {
        tracing::warn!(%container, %error, "could not kill a sandbox");
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

/// Keeps the first `cap` bytes of a stream and counts whether more came.
struct CappedBuffer {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl CappedBuffer {
    fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            truncated: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ensure(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let name = Self::container_name(&spec.workspace_id);
        match self.docker.inspect_container(&name, None).await {
            Ok(existing) => {
                let running = existing
                    .state
                    .as_ref()
                    .and_then(|state| state.running)
                    .unwrap_or(false);
                if !running {
                    self.docker.start_container(&name, None).await?;
                }
                self.forget_cgroup(&name);
                self.remember_oom_baseline(&name).await;
                return Ok(());
            }
            Err(error) if status_of(&error) == Some(404) => {}
            Err(error) => return Err(error.into()),
        }
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        match self
            .docker
            .create_container(Some(options), self.create_body(spec))
            .await
        {
            Ok(_) => {}
            // Another supervisor created it between our inspect and create: use theirs.
            Err(error) if status_of(&error) == Some(409) => {}
            Err(error) if status_of(&error) == Some(404) => {
                return Err(RuntimeError::ImageMissing(self.config.image.clone()));
            }
            Err(error) => return Err(error.into()),
        }
        if let Err(error) = self.docker.start_container(&name, None).await {
            // 304: already started by the other creator.
            if status_of(&error) != Some(304) {
                return Err(error.into());
            }
        }
        self.forget_cgroup(&name);
        self.oom_seen_set(&name, 0);
        Ok(())
    }

    async fn exec(
        &self,
        workspace_id: &str,
        request: &ExecRequest,
        live: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, RuntimeError> {
        let container = Self::container_name(workspace_id);
        let started = Instant::now();
        let exec = self
            .docker
            .create_exec(
                &container,
                CreateExecOptions {
                    cmd: Some(RUN_COMMAND.to_vec()),
                    user: Some(self.user.as_str()),
                    working_dir: Some(SANDBOX_DATA),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = self.docker.start_exec(&exec.id, None).await?
        else {
            return Err(RuntimeError::Sandbox {
                workspace_id: workspace_id.to_owned(),
                reason: "the engine started the run detached".to_owned(),
            });
        };

        // The code goes in on stdin, in the background: a program larger than the pipe's
        // buffer must not block reading its output.
        let code = request.code.clone().into_bytes();
        let writer = tokio::spawn(async move {
            let written = input.write_all(&code).await;
            let closed = input.shutdown().await;
            written.and(closed)
        });

        let mut stdout = CappedBuffer::new(request.max_output_bytes);
        let mut stderr = CappedBuffer::new(request.max_output_bytes);
        let deadline_at = tokio::time::Instant::now() + request.timeout;
        let mut timed_out = false;
        // Set once the run is killed: how long its remaining output may still take to arrive.
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            // The clock is read on every turn, not only through a timer: code that floods
            // its output keeps the stream always ready, and a timer branch could then starve.
            let now = tokio::time::Instant::now();
            if !timed_out && now >= deadline_at {
                timed_out = true;
                // The kill runs beside this loop, which keeps reading: an engine whose output
                // stream is not read stalls, and with it the kill's own exec.
                tokio::spawn(kill_run_processes(
                    self.docker.clone(),
                    container.clone(),
                    self.cgroup(&container).await,
                ));
                drain_until = Some(now + DRAIN_AFTER_KILL);
            }
            if drain_until.is_some_and(|until| now >= until) {
                // The kill from inside did not end the output: stop the whole container.
                tokio::spawn(kill_container(self.docker.clone(), container.clone()));
                break;
            }
            let next = tokio::select! {
                biased;
                () = tokio::time::sleep_until(drain_until.unwrap_or(deadline_at)) => continue,
                next = output.next() => next,
            };
            let Some(item) = next else { break };
            let (buffer, chunk) = match item? {
                LogOutput::StdOut { message } => (&mut stdout, OutputChunk::Stdout(message)),
                LogOutput::StdErr { message } => (&mut stderr, OutputChunk::Stderr(message)),
                LogOutput::StdIn { .. } | LogOutput::Console { .. } => continue,
            };
            let bytes = match &chunk {
                OutputChunk::Stdout(bytes) | OutputChunk::Stderr(bytes) => bytes.clone(),
            };
            let room_before = buffer.cap.saturating_sub(buffer.bytes.len());
            buffer.push(&bytes);
            if let Some(live) = live {
                // Live output obeys the same cap as the captured one.
                if room_before > 0 {
                    let kept = bytes.slice(..bytes.len().min(room_before));
                    let chunk = match chunk {
                        OutputChunk::Stdout(_) => OutputChunk::Stdout(kept),
                        OutputChunk::Stderr(_) => OutputChunk::Stderr(kept),
                    };
                    // A caller that stopped listening does not stop the run, and one that
                    // reads slowly may not stretch it: the wait for room in the channel
                    // ends at the run's deadline, where the loop above takes over.
                    let _ = tokio::time::timeout_at(deadline_at, live.send(chunk)).await;
                }
            }
        }
        let duration = started.elapsed();
        // A program that never reads stdin may exit before all of it was written: a broken
        // pipe then is no failure of the run.
        if let Ok(Err(error)) = writer.await {
            tracing::debug!(%container, %error, "code was not fully written to stdin");
        }

        // Whatever the run left behind (a daemon it double-forked, a child that closed its
        // output) goes now, before the run is reported finished.
        self.sweep_after_run(&container).await?;
        let exit_code = self.docker.inspect_exec(&exec.id).await?.exit_code;
        let killed_reason = if !timed_out && exit_code == Some(137) {
            if self.memory_limit_hit(&container).await {
                Some(format!(
                    "memory limit of {} exceeded",
                    self.config.memory.display().iec()
                ))
            } else {
                Some("killed by SIGKILL".to_owned())
            }
        } else {
            None
        };
        Ok(ExecOutcome {
            exit_code,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            stdout: stdout.bytes,
            stderr: stderr.bytes,
            timed_out,
            killed_reason,
            duration,
        })
    }

    async fn kill_processes(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        let container = Self::container_name(workspace_id);
        let cgroup = self.cgroup(&container).await;
        kill_run_processes(self.docker.clone(), container, cgroup).await;
        Ok(())
    }

    async fn release(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        let name = Self::container_name(workspace_id);
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        self.forget_cgroup(&name);
        if let Ok(mut seen) = self.oom_seen.lock() {
            seen.remove(&name);
        }
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
            user: Some(KEEPER_USER.to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_buffer_keeps_the_head() {
        let mut buffer = CappedBuffer::new(5);
        buffer.push(b"abc");
        assert!(!buffer.truncated);
        buffer.push(b"defg");
        buffer.push(b"h");
        assert_eq!(buffer.bytes, b"abcde");
        assert!(buffer.truncated);
    }
}
