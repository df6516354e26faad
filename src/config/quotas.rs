//! The `[quotas]` section and the `[tenants.<tenant>]` overrides: how many bytes one user and
//! one tenant may keep in file storage and hold in workspaces on disk, and, per tenant, its
//! own retention times and quotas in place of the defaults.
//!
//! ```toml
//! [quotas]
//! user_stored_bytes = "2 GiB"
//! tenant_workspace_bytes = "50 GiB"
//!
//! [tenants.acme]
//! file_ttl = "30d"
//! workspace_idle = "2h"
//! user_stored_bytes = "500 MiB"
//! ```

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::Config;

/// Quotas. Unset means no limit. Stored bytes are the sizes of a user's (or tenant's) live
/// files: uploads, outputs and figures, not those deleted and waiting for their purge.
/// Workspace bytes are what their workspace folders take on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Bytes of live files one user may keep.
    pub user_stored_bytes: Option<ByteSize>,
    /// Bytes of live files one tenant's users may keep together.
    pub tenant_stored_bytes: Option<ByteSize>,
    /// Bytes one user's workspaces may take on disk together.
    pub user_workspace_bytes: Option<ByteSize>,
    /// Bytes one tenant's workspaces may take on disk together.
    pub tenant_workspace_bytes: Option<ByteSize>,
}

/// What one tenant has in place of the defaults; every field left out keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// In place of `retention.file_ttl`; `"0s"` keeps this tenant's files for good even when
    /// the default expires them.
    #[serde(with = "humantime_serde")]
    pub file_ttl: Option<Duration>,
    /// In place of `retention.workspace_idle`.
    #[serde(with = "humantime_serde")]
    pub workspace_idle: Option<Duration>,
    /// In place of `quotas.user_stored_bytes`.
    pub user_stored_bytes: Option<ByteSize>,
    /// In place of `quotas.tenant_stored_bytes`.
    pub tenant_stored_bytes: Option<ByteSize>,
    /// In place of `quotas.user_workspace_bytes`.
    pub user_workspace_bytes: Option<ByteSize>,
    /// In place of `quotas.tenant_workspace_bytes`.
    pub tenant_workspace_bytes: Option<ByteSize>,
}

/// The retention times in force for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TenantRetention {
    /// How long its files are kept; `None` keeps them for good.
    #[serde(with = "humantime_serde")]
    pub file_ttl: Option<Duration>,
    /// How long its idle workspaces are kept.
    #[serde(with = "humantime_serde")]
    pub workspace_idle: Duration,
}

impl Config {
    /// The quotas in force for `tenant`: its overrides, else the defaults.
    pub fn quotas_for(&self, tenant: &str) -> QuotaConfig {
        let defaults = self.quotas;
        let Some(tenant) = self.tenants.get(tenant) else {
            return defaults;
        };
        QuotaConfig {
            user_stored_bytes: tenant.user_stored_bytes.or(defaults.user_stored_bytes),
            tenant_stored_bytes: tenant.tenant_stored_bytes.or(defaults.tenant_stored_bytes),
            user_workspace_bytes: tenant
                .user_workspace_bytes
                .or(defaults.user_workspace_bytes),
            tenant_workspace_bytes: tenant
                .tenant_workspace_bytes
                .or(defaults.tenant_workspace_bytes),
        }
    }

    /// The retention times in force for `tenant`: its overrides, else the defaults.
    pub fn retention_for(&self, tenant: &str) -> TenantRetention {
        let defaults = TenantRetention {
            file_ttl: self.retention.file_ttl,
            workspace_idle: self.retention.workspace_idle,
        };
        let Some(tenant) = self.tenants.get(tenant) else {
            return defaults;
        };
        TenantRetention {
            // A zero time to live is how a tenant keeps its files when the default does not.
            file_ttl: match tenant.file_ttl {
                Some(ttl) if ttl.is_zero() => None,
                Some(ttl) => Some(ttl),
                None => defaults.file_ttl,
            },
            workspace_idle: tenant.workspace_idle.unwrap_or(defaults.workspace_idle),
        }
    }

    /// The shortest file time to live any tenant has: the reaper looks at files older than
    /// that, then judges each by its own tenant's.
    pub fn shortest_file_ttl(&self) -> Option<Duration> {
        let overrides = self.tenants.keys().map(|tenant| self.retention_for(tenant));
        std::iter::once(self.retention.file_ttl)
            .chain(overrides.map(|retention| retention.file_ttl))
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut config = Config::default();
        config.retention.file_ttl = Some(Duration::from_secs(3600));
        config.quotas.user_stored_bytes = Some(ByteSize::mib(10));
        config.tenants.insert(
            "acme".to_owned(),
            TenantConfig {
                file_ttl: Some(Duration::ZERO),
                workspace_idle: Some(Duration::from_secs(60)),
                tenant_stored_bytes: Some(ByteSize::gib(1)),
                ..TenantConfig::default()
            },
        );
        config.tenants.insert(
            "brief".to_owned(),
            TenantConfig {
                file_ttl: Some(Duration::from_secs(60)),
                ..TenantConfig::default()
            },
        );
        config
    }

    #[test]
    fn a_tenant_override_replaces_only_what_it_names() {
        let config = config();
        let acme = config.quotas_for("acme");
        assert_eq!(acme.user_stored_bytes, Some(ByteSize::mib(10)));
        assert_eq!(acme.tenant_stored_bytes, Some(ByteSize::gib(1)));
        assert_eq!(config.quotas_for("other"), config.quotas);
        let retention = config.retention_for("acme");
        assert_eq!(retention.file_ttl, None, "0s keeps files for good");
        assert_eq!(retention.workspace_idle, Duration::from_secs(60));
        assert_eq!(
            config.retention_for("other").workspace_idle,
            config.retention.workspace_idle
        );
        assert_eq!(config.shortest_file_ttl(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn tenants_read_from_toml() {
        let config: Config = toml::from_str(
            "[quotas]\nuser_stored_bytes = \"1 MiB\"\n\
             [tenants.acme]\nfile_ttl = \"30d\"\nuser_workspace_bytes = \"5 MiB\"\n",
        )
        .expect("parses");
        assert_eq!(config.quotas.user_stored_bytes, Some(ByteSize::mib(1)));
        let acme = &config.tenants["acme"];
        assert_eq!(acme.file_ttl, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(acme.user_workspace_bytes, Some(ByteSize::mib(5)));
        assert!(toml::from_str::<Config>("[tenants.acme]\nfile_tl = \"1d\"\n").is_err());
    }
}
