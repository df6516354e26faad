//! The gateway's REST side (Jupyter Server's kernels API over HTTP): starting, interrupting
//! and deleting kernels, each request with the gateway's token. A started kernel is handed to
//! [`super::websocket`] to be connected and prepared.

use serde_json::{Value, json};

use super::websocket::Live;
use super::{EnterpriseGatewayRuntime, KERNEL_USERNAME};
use crate::runtime::kernel;
use crate::runtime::{RuntimeError, SandboxSpec};

impl EnterpriseGatewayRuntime {
    /// A request to the gateway, with its token.
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.header("Authorization", format!("token {token}")),
            None => builder,
        }
    }

    /// Deletes a kernel on the gateway; one that is gone already is success.
    pub(super) async fn delete_kernel(&self, kernel_id: &str) -> Result<(), RuntimeError> {
        let path = format!("/api/kernels/{kernel_id}");
        self.kernel_action(reqwest::Method::DELETE, &path, "deleting", kernel_id)
            .await
    }

    /// Asks the gateway to interrupt a kernel; one that is gone already is success.
    pub(super) async fn interrupt_kernel(&self, kernel_id: &str) -> Result<(), RuntimeError> {
        let path = format!("/api/kernels/{kernel_id}/interrupt");
        self.kernel_action(reqwest::Method::POST, &path, "interrupting", kernel_id)
            .await
    }

    /// One request about a kernel that answers nothing but its status: any 2xx, or a 404 (the
    /// kernel is gone, so there is nothing left to do), is success; `doing` names the action
    /// in the error.
    async fn kernel_action(
        &self,
        method: reqwest::Method,
        path: &str,
        doing: &str,
        kernel_id: &str,
    ) -> Result<(), RuntimeError> {
        let response = self
            .request(method, path)
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(RuntimeError::Gateway(format!(
                "{doing} kernel {kernel_id} answered {status}"
            ))),
        }
    }

    /// The error of a request the gateway did not answer.
    pub(super) fn unreachable(&self, error: &reqwest::Error) -> RuntimeError {
        RuntimeError::Unreachable(format!(
            "cannot reach the Jupyter Enterprise Gateway at {}: {error}",
            self.base
        ))
    }

    /// Starts a kernel for `spec`, waits until it answers, moves it into the workspace and
    /// has it import `spec.preload`.
    pub(super) async fn start_kernel(&self, spec: &SandboxSpec) -> Result<Live, RuntimeError> {
        let working_dir = self.kernel_path(&spec.host_data);
        let body = json!({
            "name": self.kernel_name,
            "env": {
                "KERNEL_WORKING_DIR": working_dir.to_string_lossy(),
                "KERNEL_USERNAME": KERNEL_USERNAME,
            },
        });
        let response = self
            .request(reqwest::Method::POST, "/api/kernels")
            .json(&body)
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(RuntimeError::Gateway(format!(
                "starting a {} kernel answered {status}: {}",
                self.kernel_name,
                kernel::cut(text, 512)
            )));
        }
        let model: Value = response
            .json()
            .await
            .map_err(|error| RuntimeError::Gateway(format!("a bad kernel model: {error}")))?;
        let Some(kernel_id) = model.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return Err(RuntimeError::Gateway(
                "the kernel model has no id".to_owned(),
            ));
        };
        let started = self.open_kernel(&kernel_id, spec, &working_dir).await;
        match started {
            Ok(live) => Ok(live),
            Err(why) => {
                let _ = self.delete_kernel(&kernel_id).await;
                Err(RuntimeError::Sandbox {
                    workspace_id: spec.workspace_id.clone(),
                    reason: why,
                })
            }
        }
    }
}
