//! One `Config` for the whole service, read in layers: built-in defaults, then a TOML file,
//! then `CODEBOX_*` environment variables, then command-line flags (the caller merges those).
//!
//! Nested keys are reached from the environment with a double underscore:
//! `CODEBOX_SANDBOX__IMAGE=codebox-python:test` sets `sandbox.image`. The defaults work on a
//! fresh machine: everything lives under `./codebox-data` (a SQLite catalog file and a local
//! blob folder) and runs on the local Docker engine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The prefix of every environment variable that configures codebox.
pub const ENV_PREFIX: &str = "CODEBOX_";

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
        }
    }
}

/// The catalog database.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// A sqlx database URL. Unset means a SQLite file `catalog.db` inside `data_dir`.
    pub url: Option<String>,
}

/// The blob store behind registered files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BlobsConfig {
    /// A folder on this machine; unset `path` means `blobs/` inside `data_dir`.
    Local {
        /// The folder that holds the blobs.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// Process memory: for tests only, everything is lost at exit.
    Memory,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self::Local { path: None }
    }
}

/// How sandbox containers are made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The image every sandbox runs (see `codebox image build`).
    pub image: String,
    /// The non-root `uid:gid` code runs as. It owns each workspace's `data/` folder.
    pub user: String,
    /// An OCI runtime other than Docker's default, e.g. `runsc` for gVisor.
    pub runtime: Option<String>,
    /// Memory limit of one sandbox; swap is not allowed on top of it.
    pub memory: ByteSize,
    /// CPU limit of one sandbox, in cores.
    pub cpus: f64,
    /// Most processes and threads one sandbox may have at once.
    pub pids_limit: i64,
    /// Most open files per process.
    pub nofile: i64,
    /// Size of the writable `/tmp` in the otherwise read-only root filesystem.
    pub tmpfs_size: ByteSize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: "codebox-python:latest".to_owned(),
            user: "1000:1000".to_owned(),
            runtime: None,
            memory: ByteSize::mib(1024),
            cpus: 1.0,
            pids_limit: 256,
            nofile: 1024,
            tmpfs_size: ByteSize::mib(256),
        }
    }
}

/// Caps on one run. Every cap that cuts something off is reported, never applied silently.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time a run gets when the request does not say.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The longest wall-clock time a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Largest accepted code.
    pub max_code_bytes: ByteSize,
    /// Bytes of stdout, and separately of stderr, kept per run.
    pub max_output_bytes: ByteSize,
    /// Most files registered by one run.
    pub max_files_per_run: usize,
    /// Largest file registered.
    pub max_file_bytes: ByteSize,
    /// Deepest folder level looked at below `/mnt/data` (1 is `/mnt/data/x`).
    pub max_depth: usize,
    /// Longest relative path registered, in bytes.
    pub max_path_bytes: usize,
    /// Most entries a workspace snapshot walks; past it the rest of the tree is not looked at.
    pub max_snapshot_entries: usize,
    /// Largest upload or attachment.
    pub max_upload_bytes: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_code_bytes: ByteSize::kib(512),
            max_output_bytes: ByteSize::mib(1),
            max_files_per_run: 50,
            max_file_bytes: ByteSize::mib(200),
            max_depth: 8,
            max_path_bytes: 512,
            max_snapshot_entries: 20_000,
            max_upload_bytes: ByteSize::mib(512),
        }
    }
}

/// Which files a run writes are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputsConfig {
    /// File extensions (without the dot, case-insensitive) that are registered.
    pub tracked_extensions: Vec<String>,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            tracked_extensions: ["xlsx", "xls", "csv", "pdf"].map(String::from).to_vec(),
        }
    }
}

impl OutputsConfig {
    /// Whether a file with this name is registered when a run creates or changes it.
    pub fn is_tracked(&self, name: &str) -> bool {
        let Some((_, extension)) = name.rsplit_once('.') else {
            return false;
        };
        self.tracked_extensions.iter().any(|tracked| {
            tracked
                .trim_start_matches('.')
                .eq_ignore_ascii_case(extension)
        })
    }
}

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
            .merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

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
        if self.limits.max_depth == 0 {
            return bad("limits.max_depth must be at least 1");
        }
        crate::runtime::parse_user(&self.sandbox.user)
            .map_err(|reason| ConfigError::Inconsistent(format!("sandbox.user: {reason}")))?;
        Ok(())
    }

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
#[allow(clippy::result_large_err)] // figment::Jail's own error type
mod tests {
    use super::*;

    #[test]
    fn tracked_extensions_ignore_case_and_dots() {
        let outputs = OutputsConfig {
            tracked_extensions: vec!["xlsx".into(), ".CSV".into()],
        };
        assert!(outputs.is_tracked("report.XLSX"));
        assert!(outputs.is_tracked("a.b.csv"));
        assert!(!outputs.is_tracked("csv"));
        assert!(!outputs.is_tracked("report.xlsx.txt"));
        assert!(!outputs.is_tracked("notes.txt"));
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "data_dir = \"/srv/codebox\"\n[sandbox]\nimage = \"from-file\"\nmemory = \"2 GiB\"\n",
            )?;
            jail.set_env("CODEBOX_SANDBOX__IMAGE", "from-env");
            jail.set_env("CODEBOX_LIMITS__DEFAULT_TIMEOUT", "5s");
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
            Ok(())
        });
    }

    #[test]
    fn default_catalog_is_a_sqlite_file_in_the_data_dir() {
        let config = Config::default();
        assert_eq!(
            config.catalog_url(),
            "sqlite://./codebox-data/catalog.db?mode=rwc"
        );
    }
}
