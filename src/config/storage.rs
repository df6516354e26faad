//! The `[catalog]` and `[blobs]` sections: where codebox keeps what outlives a run, the records
//! (a sqlx database: SQLite or PostgreSQL) and the bytes of registered files (an object
//! store: a local folder or S3). Both default to a
//! place inside `data_dir`, which `Config` resolves.

use std::path::PathBuf;

use bytesize::ByteSize;
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
        // Left out when unset, so that the defaults' layer holds no field another kind lacks
        // (`CODEBOX_BLOBS__KIND=s3` over the default local store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
    /// An S3 bucket (or an S3-compatible server: MinIO, Ceph, moto). Credentials come from the
    /// usual AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`), or the instance's role where there are none.
    S3 {
        /// The bucket; it must exist.
        bucket: String,
        /// The server, for an S3-compatible one (`http://127.0.0.1:9000`); unset means AWS.
        #[serde(default)]
        endpoint: Option<String>,
        /// The region; unset means `AWS_REGION` or `us-east-1`.
        #[serde(default)]
        region: Option<String>,
        /// Whether a plain `http://` endpoint is allowed (a server on loopback).
        #[serde(default)]
        allow_http: bool,
        /// The most this node's cache of attachments (`<data_dir>/blob-cache`) may hold; the
        /// least recently used copies go past it.
        #[serde(default = "default_cache_max_bytes")]
        cache_max_bytes: ByteSize,
    },
    /// Process memory: for tests only, everything is lost at exit.
    Memory,
}

/// 10 GiB of attachments fetched from a remote store, per node.
fn default_cache_max_bytes() -> ByteSize {
    ByteSize::gib(10)
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self::Local { path: None }
    }
}
