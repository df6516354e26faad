//! The `[catalog]` and `[blobs]` sections: where codebox keeps what outlives a run, the records
//! (a sqlx database) and the bytes of registered files (an object store). Both default to a
//! place inside `data_dir`, which `Config` resolves.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
