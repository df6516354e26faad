//! The cross-field rules that serde cannot express: a default timeout within the maximum,
//! limits above zero, tokens that can be used, a gateway runtime that names its gateway, a
//! sandbox user that is not root, preloaded names that are Python modules, an upload allowlist
//! that admits something, tenant overrides that name a tenant, an orphan blob grace that can
//! be subtracted from now, a node timeout that outlasts a heartbeat. `Config::load`
//! runs them; a caller that builds a `Config` in code runs them itself.

use bytesize::ByteSize;

use super::{Config, ConfigError, RuntimeKind, parse_user};

/// The longest `retention.orphan_blob_grace`: a hundred years.
const MAX_ORPHAN_BLOB_GRACE: std::time::Duration =
    std::time::Duration::from_secs(100 * 365 * 24 * 3600);

impl Config {
    /// Checks the cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Inconsistent(what.to_owned()));
        if self.limits.default_timeout > self.limits.max_timeout {
            return bad("limits.default_timeout is longer than limits.max_timeout");
        }
        if self.limits.default_timeout.is_zero() {
            return bad("limits.default_timeout must be above zero");
        }
        if self.sandbox.cpus.is_nan() || self.sandbox.cpus <= 0.0 {
            return bad("sandbox.cpus must be above zero");
        }
        if self.sandbox.memory < ByteSize::mib(16) {
            return bad("sandbox.memory must be at least 16 MiB");
        }
        if self.sandbox.disk_size < ByteSize::mib(8) {
            return bad("sandbox.disk_size must be at least 8 MiB");
        }
        if self.sandbox.disk_files < 64 {
            return bad("sandbox.disk_files must be at least 64");
        }
        if self.uploads.allowed_extensions.is_empty() {
            return bad("uploads.allowed_extensions must name at least one extension");
        }
        if self.limits.max_depth == 0 {
            return bad("limits.max_depth must be at least 1");
        }
        // The sweep compares blobs' times with now minus the grace, which must be a time.
        if self.retention.orphan_blob_grace > MAX_ORPHAN_BLOB_GRACE {
            return bad("retention.orphan_blob_grace must be at most 100 years");
        }
        if self.cluster.heartbeat_interval.is_zero() {
            return bad("cluster.heartbeat_interval must be above zero");
        }
        if self.cluster.node_timeout < self.cluster.heartbeat_interval * 2 {
            return bad("cluster.node_timeout must be at least two cluster.heartbeat_interval");
        }
        if let Some(url) = &self.cluster.advertise_url
            && !url.starts_with("http://")
        {
            // Instances forward to one another in plain HTTP, on the deployment's own network.
            return bad("cluster.advertise_url must be an http:// URL");
        }
        if self.server.max_runs_in_flight == 0 {
            return bad("server.max_runs_in_flight must be at least 1");
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections must be at least 1");
        }
        for (name, timeout) in [
            ("header_read_timeout", self.server.header_read_timeout),
            ("body_read_timeout", self.server.body_read_timeout),
            ("idle_timeout", self.server.idle_timeout),
        ] {
            if timeout.is_zero() {
                return Err(ConfigError::Inconsistent(format!(
                    "server.{name} must be above zero"
                )));
            }
        }
        for token in &self.server.tokens {
            if token.token.is_some() == token.token_sha256.is_some() {
                return bad("each server.tokens entry needs exactly one of token and token_sha256");
            }
            if token.token.as_ref().is_some_and(|t| t.len() < 16) {
                return bad("server.tokens: a token must be at least 16 characters");
            }
            if let Some(problem) = token.problem() {
                return bad(&problem);
            }
        }
        if self.runtime.kind == RuntimeKind::EnterpriseGateway {
            match self.runtime.gateway.url.as_deref() {
                None | Some("") => {
                    return bad("runtime.kind enterprise-gateway needs runtime.gateway.url");
                }
                Some(url) if !url.starts_with("http://") && !url.starts_with("https://") => {
                    return bad("runtime.gateway.url must start with http:// or https://");
                }
                Some(_) => {}
            }
            if self.runtime.gateway.kernel.is_empty() {
                return bad("runtime.gateway.kernel must name a kernelspec");
            }
        }
        for (tenant, overrides) in &self.tenants {
            if tenant.is_empty() || tenant == super::ALL_TENANTS {
                return bad("tenants: a tenant's name must not be empty or \"*\"");
            }
            if overrides.workspace_idle.is_some_and(|idle| idle.is_zero()) {
                return Err(ConfigError::Inconsistent(format!(
                    "tenants.{tenant}.workspace_idle must be above zero"
                )));
            }
        }
        parse_user(&self.sandbox.user)
            .map_err(|reason| ConfigError::Inconsistent(format!("sandbox.user: {reason}")))?;
        if let Some(module) = self.sandbox.preload.iter().find(|m| !is_module_name(m)) {
            return Err(ConfigError::Inconsistent(format!(
                "sandbox.preload: {module:?} is not a Python module name"
            )));
        }
        Ok(())
    }
}

/// Whether `name` is a dotted Python module name (`matplotlib.pyplot`).
fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}
