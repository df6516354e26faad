//! The sandbox container: what it is made of (the hardened settings, the mounts, the labels,
//! the runner as its main process) and bringing it to a stopped state, created or found, from
//! which [`super::interpreter`] starts a fresh interpreter.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, WaitContainerOptionsBuilder};
use futures::StreamExt;

use super::{DockerRuntime, kill_container};
use crate::runtime::engine::status_of;
use crate::runtime::{
    INSTANCE_LABEL, MANAGED_LABEL, RuntimeError, SANDBOX_DATA, SANDBOX_HOME, SANDBOX_INPUTS,
    SandboxSpec, WORKSPACE_LABEL,
};

/// The runner, started as `python3 -c <source>`: it needs nothing from the image but Python,
/// so every image with a `python3` can serve, and a new runner needs no image rebuild.
const RUNNER_SOURCE: &str = include_str!("../../../images/python/runner.py");

/// Environment of the runner: unbuffered output so that nothing is lost when it is killed,
/// and a writable home and cache in the `/tmp` tmpfs because the root file system is
/// read-only.
const RUN_ENV: [(&str, &str); 5] = [
    ("HOME", SANDBOX_HOME),
    ("PYTHONUNBUFFERED", "1"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("MPLBACKEND", "Agg"),
    ("MPLCONFIGDIR", "/tmp/matplotlib"),
];

impl DockerRuntime {
    /// The container of `spec`: hardened, labelled as codebox's, with the workspace mounted
    /// and the runner as its main process.
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
            env: Some(
                RUN_ENV
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect(),
            ),
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

    /// Creates the container unless it exists; stops one that runs an interpreter this
    /// process has no channel to (codebox restarted), whose state is unknown.
    pub(super) async fn stopped_container(
        &self,
        spec: &SandboxSpec,
        name: &str,
    ) -> Result<(), RuntimeError> {
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
    pub(super) async fn wait_stopped(&self, name: &str, limit: Option<Duration>) -> bool {
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
}
