//! [`EnterpriseGatewayRuntime`]: one kernel per workspace on a Jupyter Enterprise Gateway,
//! driven through Jupyter Server's kernels API (HTTP to start, interrupt and delete kernels,
//! the `channels` WebSocket speaking the messaging protocol's JSON form to run cells).
//!
//! This runtime does not isolate anything itself: the code runs wherever the gateway's process
//! proxy launches the kernel, with that kernel's rights. With local kernels (the gateway's
//! default) that is a plain process on the gateway's host, as the gateway's user: fit for tests
//! and trusted code only. In production the gateway's Kubernetes process proxy launches each
//! kernel as a pod, and the pod's kernelspec carries the isolation (see
//! `deploy/enterprise-gateway/`). Neither does it sweep what a cell leaves running: a local
//! kernel's child processes outlive their cell until the kernel goes; a pod's go with the pod.
//!
//! Kernels see the workspace at its host path (a shared volume), not at `/mnt/data`:
//! [`Runtime::mounts_workspace`] is `false`, so the supervisor rewrites `/mnt/data` in the
//! code to the host folder and every output path back. The kernel's working directory is the
//! workspace's `data/` folder, as the gateway sees it (`workspaces_path`); the rewriting of
//! code uses the host path, so for now `workspaces_path` must name the same path as codebox's
//! own `<data_dir>/workspaces` for code that names `/mnt/data` explicitly.
//!
//! One concept per file: [`rest`] is the HTTP client of the kernels API, [`websocket`] the
//! channel to one kernel (and its preparation), [`cell`] runs one cell over it; this file
//! holds the [`Runtime`] impl that calls them.

mod cell;
mod rest;
mod websocket;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use self::websocket::Live;
use super::live::LiveKernels;
use super::{
    ExecOutcome, ExecRequest, KernelEnd, KernelStart, OutputChunk, Runtime, RuntimeError,
    SandboxInfo, SandboxSpec,
};
use crate::config::GatewayConfig;

/// How long one HTTP request to the gateway may take (starting a kernel takes longest).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The user name kernels are started for (`KERNEL_USERNAME`).
const KERNEL_USERNAME: &str = "codebox";

/// A runtime on a Jupyter Enterprise Gateway.
pub struct EnterpriseGatewayRuntime {
    http: reqwest::Client,
    /// The gateway's base URL, without a trailing slash.
    base: String,
    token: Option<String>,
    kernel_name: String,
    /// `<data_dir>/workspaces` on this host.
    workspaces_root: PathBuf,
    /// The same folder as the kernels see it.
    kernel_workspaces: PathBuf,
    /// Per workspace: its live kernel, and why its last one ended.
    kernels: LiveKernels<Live>,
}

impl EnterpriseGatewayRuntime {
    /// Connects to the gateway `config` names and checks that it answers. `workspaces_root`
    /// is codebox's `<data_dir>/workspaces`.
    pub async fn connect(
        config: &GatewayConfig,
        workspaces_root: &Path,
    ) -> Result<Self, RuntimeError> {
        let Some(url) = config.url.as_deref() else {
            return Err(RuntimeError::Unreachable(
                "runtime.gateway.url is not set".to_owned(),
            ));
        };
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|error| RuntimeError::Gateway(error.to_string()))?;
        let runtime = Self {
            http,
            base: url.trim_end_matches('/').to_owned(),
            token: config.token.clone().filter(|token| !token.is_empty()),
            kernel_name: config.kernel.clone(),
            workspaces_root: workspaces_root.to_owned(),
            kernel_workspaces: config
                .workspaces_path
                .clone()
                .unwrap_or_else(|| workspaces_root.to_owned()),
            kernels: LiveKernels::new(),
        };
        runtime.ping().await?;
        Ok(runtime)
    }

    /// The kernel id of a workspace's live kernel, for tests and operators.
    pub fn kernel_id(&self, workspace_id: &str) -> Option<String> {
        self.kernels
            .get(workspace_id)
            .map(|live| live.kernel_id.clone())
    }

    /// Where the kernel sees a host folder under the workspaces root.
    fn kernel_path(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.workspaces_root) {
            Ok(relative) => self.kernel_workspaces.join(relative),
            Err(_) => host.to_owned(),
        }
    }

    /// Forgets a workspace's kernel and deletes it, waking a cell that waits on it.
    async fn drop_kernel(&self, workspace_id: &str) -> Result<bool, RuntimeError> {
        let Some(live) = self.kernels.forget(workspace_id) else {
            return Ok(false);
        };
        live.killed.notify_waiters();
        live.killed.notify_one();
        self.delete_kernel(&live.kernel_id).await?;
        Ok(true)
    }
}

#[async_trait]
impl Runtime for EnterpriseGatewayRuntime {
    async fn ensure(&self, spec: &SandboxSpec) -> Result<KernelStart, RuntimeError> {
        if let Some(live) = self.kernels.get(&spec.workspace_id) {
            if live.channel.lock().await.open {
                return Ok(KernelStart::default());
            }
            // It died between cells.
            self.kernels.forget(&spec.workspace_id);
            let _ = self.delete_kernel(&live.kernel_id).await;
            self.kernels
                .ended_unless_known(&spec.workspace_id, KernelEnd::Crashed);
        }
        let live = self.start_kernel(spec).await?;
        Ok(self.kernels.started(spec.workspace_id.clone(), live))
    }

    async fn exec(
        &self,
        workspace_id: &str,
        request: &ExecRequest,
        live_output: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, RuntimeError> {
        self.execute(workspace_id, request, live_output).await
    }

    async fn kill_processes(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        // The code runs in the kernel's own process: stopping it takes the kernel.
        if self.drop_kernel(workspace_id).await? {
            self.kernels.ended(workspace_id, KernelEnd::Crashed);
        }
        Ok(())
    }

    async fn interrupt(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        match self.kernels.get(workspace_id) {
            Some(live) => self.interrupt_kernel(&live.kernel_id).await,
            None => Ok(()),
        }
    }

    async fn restart(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        if self.drop_kernel(workspace_id).await? {
            self.kernels.ended(workspace_id, KernelEnd::Requested);
        }
        Ok(())
    }

    async fn release(&self, workspace_id: &str) -> Result<(), RuntimeError> {
        self.drop_kernel(workspace_id).await?;
        self.kernels.take_end(workspace_id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, RuntimeError> {
        Ok(self
            .kernels
            .all()
            .into_iter()
            .map(|(workspace_id, live)| SandboxInfo {
                workspace_id,
                instance: Some(live.instance.clone()),
                sandbox_id: live.kernel_id.clone(),
                running: true,
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        let response = self
            .request(reqwest::Method::GET, "/api")
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(RuntimeError::Unreachable(format!(
                "the Jupyter Enterprise Gateway at {} answered {}",
                self.base,
                response.status()
            )))
        }
    }

    fn mounts_workspace(&self) -> bool {
        false
    }
}
