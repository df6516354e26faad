//! The orphan blob sweep: bytes in the blob store that no catalog row names. Storing a file
//! is two steps (the bytes, then the row; see `register.rs` and `uploads.rs`), and a process
//! killed between them, or halfway through the bytes, leaves bytes nobody can reach. The
//! reaper's pass over every tenant sweeps them once they are older than
//! `retention.orphan_blob_grace`, which protects the bytes of an upload or a registration in
//! flight (their row comes after them). Only keys of codebox's scheme are candidates
//! ([`BlobKey::parse_file_key`]): anything else in the bucket is left alone.
//!
//! The store is read a page at a time, each page checked against the catalog in one query,
//! so that a large store is never held in memory at once.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use super::*;
use crate::blobs::Listed;

/// How many listed blobs one catalog query checks.
const PAGE: usize = 500;

/// What one sweep removed (or, dry, would remove).
#[derive(Debug, Default)]
pub(super) struct Swept {
    /// The swept entries' locations in the store: keys, or unfinished uploads' staging files.
    pub locations: Vec<String>,
    /// The bytes they held.
    pub bytes: u64,
}

impl Supervisor {
    /// Deletes the blobs no catalog row names that are older than the grace; with `dry_run`,
    /// only reports them. A blob that cannot be deleted is logged and left to the next pass.
    pub(super) async fn sweep_orphan_blobs(&self, dry_run: bool) -> Result<Swept> {
        let grace = self.config.retention.orphan_blob_grace;
        let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(UNIX_EPOCH);
        let mut swept = Swept::default();
        let mut pages = self.blobs.list_files().chunks(PAGE);
        while let Some(page) = pages.next().await {
            let page = page
                .into_iter()
                .collect::<std::result::Result<Vec<_>, _>>()?;
            // Younger entries may be the bytes of a store in flight, whose row comes next.
            let old: Vec<Listed> = page
                .into_iter()
                .filter(|listed| listed.modified <= cutoff)
                .collect();
            let named = self.named_blobs(&old).await?;
            for listed in old {
                // A staging file is never a file's bytes, whatever row names its key: the
                // object itself is.
                if !listed.is_partial() && named.contains(&listed.key) {
                    continue;
                }
                if !dry_run && let Err(error) = self.blobs.delete_listed(&listed).await {
                    tracing::warn!(location = %listed.location, %error,
                        "could not sweep a blob no file names; the next pass retries");
                    continue;
                }
                swept.bytes += listed.bytes;
                swept.locations.push(listed.location);
            }
        }
        Ok(swept)
    }

    /// The keys among `listed` that some catalog row names, deleted files' rows included.
    async fn named_blobs(&self, listed: &[Listed]) -> Result<HashSet<BlobKey>> {
        let mut ids: Vec<FileId> = listed
            .iter()
            .filter_map(|listed| listed.key.file_id())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(self
            .catalog
            .files()
            .blob_keys_of(&ids)
            .await?
            .into_iter()
            .collect())
    }
}
