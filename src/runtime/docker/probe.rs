//! The check that the engine shares this machine's file system (workspaces are bind-mounted):
//! a probe file codebox writes, and a throwaway container that looks for it.

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;

use super::DockerRuntime;
use crate::runtime::RuntimeError;

/// The user of the short-lived probe container: nobody.
const PROBE_USER: &str = "65534:65534";

impl DockerRuntime {
    /// [`Runtime::check_host_folder`](crate::runtime::Runtime::check_host_folder) on this engine.
    pub(super) async fn probe_host_folder(
        &self,
        folder: &std::path::Path,
    ) -> Result<(), RuntimeError> {
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
