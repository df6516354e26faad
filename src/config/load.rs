//! Reading the configuration's layers in order: the built-in defaults, a TOML file, the
//! `CODEBOX_*` environment, then the command line's flags. Nested keys are reached from the
//! environment with a double underscore: `CODEBOX_SANDBOX__IMAGE=codebox-python:test` sets
//! `sandbox.image`. What the layers give together is then checked by `validate`.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;

use super::Config;

/// The prefix of every environment variable that configures codebox.
pub const ENV_PREFIX: &str = "CODEBOX_";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer held a value of the wrong shape or an unknown key.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// The values parse but make no sense together.
    #[error("invalid configuration: {0}")]
    Inconsistent(String),
}

impl Config {
    /// Loads defaults, then `file` if given (it must exist) or `codebox.toml` if present, then
    /// `CODEBOX_*` variables, then `overrides` (the command line's flags, serialized).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        figment = match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment.merge(Toml::file("codebox.toml")),
        };
        let config: Config = figment
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .ignore(&["CONFIG"])
                    // `CODEBOX_TEST_*` belong to the test suite (the image, the gateway it
                    // tests against), never to the configuration.
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's own error type
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::*;
    use crate::config::{Limits, RuntimeKind};

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "data_dir = \"/srv/codebox\"\n[sandbox]\nimage = \"from-file\"\nmemory = \"2 GiB\"\n",
            )?;
            jail.set_env("CODEBOX_SANDBOX__IMAGE", "from-env");
            jail.set_env("CODEBOX_LIMITS__DEFAULT_TIMEOUT", "5s");
            // The test suite's own variables are not configuration.
            jail.set_env("CODEBOX_TEST_GATEWAY_URL", "http://127.0.0.1:1");
            jail.set_env("CODEBOX_TEST_IMAGE", "codebox-python:test");
            let config = Config::load(
                Some(Path::new("custom.toml")),
                serde_json::json!({ "limits": { "max_files_per_run": 3 } }),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(config.data_dir, PathBuf::from("/srv/codebox"));
            assert_eq!(config.sandbox.image, "from-env");
            assert_eq!(config.sandbox.memory, ByteSize::gib(2));
            assert_eq!(config.limits.default_timeout, Duration::from_secs(5));
            assert_eq!(config.limits.max_files_per_run, 3);
            assert_eq!(config.limits.max_depth, Limits::default().max_depth);
            Ok(())
        });
    }

    #[test]
    fn the_gateway_runtime_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CODEBOX_RUNTIME__KIND", "enterprise-gateway");
            jail.set_env("CODEBOX_RUNTIME__GATEWAY__URL", "http://127.0.0.1:8888");
            jail.set_env("CODEBOX_RUNTIME__GATEWAY__TOKEN", "secret-gateway-token");
            let config = Config::load(None, serde_json::json!({})).map_err(|e| e.to_string())?;
            assert_eq!(config.runtime.kind, RuntimeKind::EnterpriseGateway);
            assert_eq!(config.runtime.gateway.kernel, "python3");
            assert!(!format!("{config:?}").contains("secret-gateway-token"));
            jail.set_env("CODEBOX_RUNTIME__GATEWAY__URL", "");
            assert!(Config::load(None, serde_json::json!({})).is_err());
            Ok(())
        });
    }

    #[test]
    fn postgres_and_s3_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "CODEBOX_CATALOG__URL",
                "postgres://codebox@127.0.0.1:55432/codebox",
            );
            jail.set_env("CODEBOX_BLOBS__KIND", "s3");
            jail.set_env("CODEBOX_BLOBS__BUCKET", "codebox");
            jail.set_env("CODEBOX_BLOBS__ENDPOINT", "http://127.0.0.1:55433");
            jail.set_env("CODEBOX_BLOBS__ALLOW_HTTP", "true");
            let config = Config::load(None, serde_json::json!({})).map_err(|e| e.to_string())?;
            assert!(config.catalog_url().starts_with("postgres://"));
            match config.blobs {
                crate::config::BlobsConfig::S3 {
                    bucket,
                    allow_http,
                    cache_max_bytes,
                    ..
                } => {
                    assert_eq!(bucket, "codebox");
                    assert!(allow_http);
                    assert_eq!(cache_max_bytes, bytesize::ByteSize::gib(10));
                }
                other => panic!("not S3: {other:?}"),
            }
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[sandbox]\nimgae = \"x\"\n")?;
            let error = Config::load(Some(Path::new("typo.toml")), serde_json::json!({}))
                .expect_err("a typo must not pass");
            assert!(error.to_string().contains("imgae"), "{error}");

            jail.create_file("bad.toml", "[limits]\ndefault_timeout = \"10m\"\n")?;
            let error = Config::load(Some(Path::new("bad.toml")), serde_json::json!({}))
                .expect_err("default above max must not pass");
            assert!(error.to_string().contains("max_timeout"), "{error}");

            jail.create_file("grace.toml", "[retention]\norphan_blob_grace = \"0s\"\n")?;
            let config = Config::load(Some(Path::new("grace.toml")), serde_json::json!({}))
                .expect("no grace is allowed");
            assert!(config.retention.orphan_blob_grace.is_zero());
            jail.create_file(
                "forever.toml",
                "[retention]\norphan_blob_grace = \"1000years\"\n",
            )?;
            let error = Config::load(Some(Path::new("forever.toml")), serde_json::json!({}))
                .expect_err("a grace past any date must not pass");
            assert!(error.to_string().contains("orphan_blob_grace"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn cluster_settings_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CODEBOX_CLUSTER__ADVERTISE_URL", "http://10.0.0.5:8080");
            jail.set_env("CODEBOX_CLUSTER__NODE_TIMEOUT", "2s");
            jail.set_env("CODEBOX_CLUSTER__HEARTBEAT_INTERVAL", "500ms");
            let config = Config::load(None, serde_json::json!({})).map_err(|e| e.to_string())?;
            assert_eq!(
                config.cluster.advertise_url.as_deref(),
                Some("http://10.0.0.5:8080")
            );
            assert_eq!(
                config.cluster.node_timeout,
                std::time::Duration::from_secs(2)
            );
            // A timeout a slow beat could outlast, and an address the others cannot use.
            jail.set_env("CODEBOX_CLUSTER__NODE_TIMEOUT", "600ms");
            let error = Config::load(None, serde_json::json!({})).expect_err("too short");
            assert!(error.to_string().contains("node_timeout"), "{error}");
            jail.set_env("CODEBOX_CLUSTER__NODE_TIMEOUT", "30s");
            jail.set_env("CODEBOX_CLUSTER__ADVERTISE_URL", "10.0.0.5:8080");
            let error = Config::load(None, serde_json::json!({})).expect_err("not a URL");
            assert!(error.to_string().contains("advertise_url"), "{error}");
            Ok(())
        });
    }
}
