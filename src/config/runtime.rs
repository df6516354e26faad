//! The `[runtime]` section: which back end runs the code, the local Docker engine or a Jupyter
//! Enterprise Gateway, and how to reach the gateway. Its own file because the gateway's
//! settings carry a secret (its token) whose redaction belongs next to the field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which back end runs the code, and how to reach it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The back end.
    pub kind: RuntimeKind,
    /// The Jupyter Enterprise Gateway, when `kind` is `enterprise-gateway`.
    pub gateway: GatewayConfig,
}

/// The back ends codebox can run code on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// One hardened container per workspace on the local Docker engine.
    #[default]
    Docker,
    /// One kernel per workspace on a Jupyter Enterprise Gateway, which isolates only as far
    /// as its process proxy does (not at all with local kernels).
    #[serde(alias = "enterprise_gateway")]
    EnterpriseGateway,
}

/// A Jupyter Enterprise Gateway.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Its base URL, `http://host:port`.
    pub url: Option<String>,
    /// Its auth token, sent as `Authorization: token <token>`.
    pub token: Option<String>,
    /// The kernelspec every kernel starts from.
    pub kernel: String,
    /// Where the kernels see `<data_dir>/workspaces`; by default the same path. It must hold
    /// the same files (a shared volume).
    pub workspaces_path: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            kernel: "python3".to_owned(),
            workspaces_path: None,
        }
    }
}

/// Written by hand so that the token never reaches a log line or an error message.
impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            token,
            kernel,
            workspaces_path,
        } = self;
        f.debug_struct("GatewayConfig")
            .field("url", url)
            .field("token", &token.as_ref().map(|_| "<redacted>"))
            .field("kernel", kernel)
            .field("workspaces_path", workspaces_path)
            .finish()
    }
}
