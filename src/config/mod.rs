//! One `Config` for the whole service, read in layers: built-in defaults, then a TOML file,
//! then `CODEBOX_*` environment variables, then command-line flags (the caller merges those).
//!
//! The defaults work on a fresh machine: everything lives under `./codebox-data` (a SQLite
//! catalog file and a local blob folder) and runs on the local Docker engine.
//!
//! This file holds the whole `Config` and what it resolves from `data_dir`. Each section of
//! the file has a module of its own with its types and defaults (`runtime`, `storage`,
//! `sandbox`, `limits`, `outputs`, `uploads`, `server`, `retention`, `quotas` with the
//! per-tenant overrides, `cluster`); `load` reads the layers,
//! `validate` checks what serde cannot, and `user` parses the sandbox user. Everything is
//! re-exported here, so callers name `crate::config::X` whatever file `X` is in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod cluster;
mod limits;
mod load;
mod outputs;
mod quotas;
mod retention;
mod runtime;
mod sandbox;
mod server;
mod storage;
mod uploads;
mod user;
mod validate;

pub use cluster::ClusterConfig;
pub use limits::Limits;
pub use load::{ConfigError, ENV_PREFIX};
pub use outputs::OutputsConfig;
pub use quotas::{QuotaConfig, TenantConfig, TenantRetention};
pub use retention::RetentionConfig;
pub use runtime::{GatewayConfig, RuntimeConfig, RuntimeKind};
pub use sandbox::{
    DEFAULT_SANDBOX_USER, DiskLimit, SANDBOX_DATA, SANDBOX_HOME, SANDBOX_INPUTS, SandboxConfig,
};
pub use server::{ALL_TENANTS, Role, ServerConfig, TokenConfig};
pub use storage::{BlobsConfig, CatalogConfig};
pub use uploads::UploadsConfig;
pub use user::parse_user;

/// Everything an operator can tune.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The folder that holds workspaces and, by default, the catalog and the blobs.
    pub data_dir: PathBuf,
    /// Where file metadata, runs and messages are recorded.
    pub catalog: CatalogConfig,
    /// Where the bytes of registered files are kept.
    pub blobs: BlobsConfig,
    /// How sandboxes are created and what they may use.
    pub sandbox: SandboxConfig,
    /// Caps on what one run may take and produce.
    pub limits: Limits,
    /// Which outputs are registered.
    pub outputs: OutputsConfig,
    /// Which uploads are accepted.
    pub uploads: UploadsConfig,
    /// The HTTP server.
    pub server: ServerConfig,
    /// How long containers, workspaces and files are kept.
    pub retention: RetentionConfig,
    /// Which back end runs the code.
    pub runtime: RuntimeConfig,
    /// How many bytes a user and a tenant may keep and hold on disk.
    pub quotas: QuotaConfig,
    /// Per tenant, retention times and quotas in place of the defaults.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Taking part in a deployment of several instances on one catalog.
    pub cluster: ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./codebox-data"),
            catalog: CatalogConfig::default(),
            blobs: BlobsConfig::default(),
            sandbox: SandboxConfig::default(),
            limits: Limits::default(),
            outputs: OutputsConfig::default(),
            uploads: UploadsConfig::default(),
            server: ServerConfig::default(),
            retention: RetentionConfig::default(),
            runtime: RuntimeConfig::default(),
            quotas: QuotaConfig::default(),
            tenants: BTreeMap::new(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Config {
    /// The catalog URL in force: the configured one, or the SQLite file in `data_dir`.
    pub fn catalog_url(&self) -> String {
        match &self.catalog.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("catalog.db").display()
            ),
        }
    }

    /// The folder that holds every workspace.
    pub fn workspaces_dir(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_is_a_sqlite_file_in_the_data_dir() {
        let config = Config::default();
        assert_eq!(
            config.catalog_url(),
            "sqlite://./codebox-data/catalog.db?mode=rwc"
        );
    }
}
