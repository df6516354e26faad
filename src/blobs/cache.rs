//! The node-local cache of a remote blob store: the bytes of attachments fetched once per
//! node, kept under their sha256 (content-addressed, so two files with the same bytes share
//! one copy), and hard-linked into every workspace that attaches them instead of being
//! downloaded again for each run. It is bounded: [`BlobCache::reap`] removes the least
//! recently used copies past `cache_max_bytes`.
//!
//! A copy is written under a temporary name, checked against the sha256 the catalog recorded
//! when the file was stored, and only then renamed into place, so a copy under its final name
//! is always whole and right. Copies are read-only for everyone but readable, as workspaces'
//! attachments must be.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::BlobError;

/// How old a temporary file must be before a reaper pass takes it for a fetch that died.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// The prefix of a copy being fetched.
const TEMPORARY_PREFIX: &str = ".fetch-";

/// The cache folder and its bound.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    max_bytes: u64,
}

/// What one pass over the cache removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheReaped {
    /// Copies removed.
    pub copies: u64,
    /// Bytes their removal freed (a copy still linked into a workspace frees nothing yet).
    pub bytes_freed: u64,
}

impl BlobCache {
    /// A cache in `root` (created if missing) holding at most `max_bytes`.
    pub fn open(root: PathBuf, max_bytes: u64) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&root)?;
        Ok(Self { root, max_bytes })
    }

    /// The copy of the bytes whose sha256 is `sha256`, fetched by `fetch` if this node has
    /// none yet. Using a copy marks it recently used.
    pub async fn copy_of<S>(&self, sha256: &str, fetch: S) -> Result<PathBuf, BlobError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, object_store::Error>> + Unpin,
    {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::Read(std::io::Error::other(format!(
                "not a sha256: {sha256:?}"
            ))));
        }
        let path = self.root.join(sha256);
        if let Ok(file) = std::fs::File::open(&path) {
            // Marks it used; a copy whose time cannot be set is still a good copy.
            let _ = file.set_modified(SystemTime::now());
            return Ok(path);
        }
        self.fetch(sha256, &path, fetch).await?;
        Ok(path)
    }

    /// Streams the bytes into a temporary file, checks their sha256, and renames the file
    /// into place.
    async fn fetch<S>(&self, sha256: &str, path: &Path, mut fetch: S) -> Result<(), BlobError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, object_store::Error>> + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let temporary = self.root.join(format!(
            "{TEMPORARY_PREFIX}{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut file = tokio::fs::File::create(&temporary).await?;
        let written = async {
            let mut hasher = Sha256::new();
            while let Some(chunk) = fetch.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let actual = hex::encode(hasher.finalize());
            if actual != sha256 {
                return Err(BlobError::Read(std::io::Error::other(format!(
                    "the stored object's sha256 is {actual}, not the {sha256} recorded"
                ))));
            }
            tokio::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o444)).await?;
            tokio::fs::rename(&temporary, path).await?;
            Ok(())
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&temporary).await;
        }
        written
    }

    /// Removes the least recently used copies until the cache holds at most its bound, and
    /// temporary files of fetches that died. Copies are judged by their blocks on disk.
    pub fn reap(&self) -> Result<CacheReaped, BlobError> {
        let mut copies = Vec::new();
        let mut reaped = CacheReaped::default();
        let now = SystemTime::now();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified().unwrap_or(now);
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TEMPORARY_PREFIX) {
                let age = now.duration_since(modified).unwrap_or_default();
                if age > STALE_TEMPORARY && std::fs::remove_file(entry.path()).is_ok() {
                    reaped.bytes_freed += metadata.blocks() * 512;
                }
                continue;
            }
            copies.push((modified, entry.path(), metadata));
        }
        copies.sort_by_key(|(modified, ..)| *modified);
        let mut total: u64 = copies.iter().map(|(.., m)| m.blocks() * 512).sum();
        for (_, path, metadata) in copies {
            if total <= self.max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            let bytes = metadata.blocks() * 512;
            total = total.saturating_sub(bytes);
            reaped.copies += 1;
            // Another name (a workspace's attachment) keeps the blocks until it goes too.
            if metadata.nlink() <= 1 {
                reaped.bytes_freed += bytes;
            }
        }
        Ok(reaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(
        parts: &[&'static [u8]],
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, object_store::Error>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|part| Ok(bytes::Bytes::from_static(part)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_copy_is_fetched_once_checked_and_the_least_recently_used_go_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path().join("cache"), 2 * 4096).expect("open");
        let sha = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
        let first = cache
            .copy_of(&sha(b"ab"), stream_of(&[b"a", b"b"]))
            .await
            .expect("fetch");
        assert_eq!(std::fs::read(&first).expect("read"), b"ab");
        assert_eq!(
            std::fs::metadata(&first)
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o444
        );
        // Present now: the stream is not read again (an empty one would not match).
        let again = cache
            .copy_of(&sha(b"ab"), stream_of(&[]))
            .await
            .expect("cached");
        assert_eq!(again, first);
        // Bytes that do not match the recorded sha256 are refused and leave nothing.
        let wrong = cache.copy_of(&sha(b"xy"), stream_of(&[b"zz"])).await;
        assert!(wrong.is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("cache"))
                .expect("ls")
                .count(),
            1
        );
        assert!(
            cache
                .copy_of("../../etc/passwd", stream_of(&[]))
                .await
                .is_err()
        );

        // Three copies of one block each over a bound of two: the oldest goes.
        std::thread::sleep(Duration::from_millis(20));
        let second = cache
            .copy_of(&sha(b"cd"), stream_of(&[b"cd"]))
            .await
            .expect("fetch");
        std::thread::sleep(Duration::from_millis(20));
        let third = cache
            .copy_of(&sha(b"ef"), stream_of(&[b"ef"]))
            .await
            .expect("fetch");
        let reaped = cache.reap().expect("reap");
        assert_eq!(reaped.copies, 1);
        assert!(!first.exists() && second.exists() && third.exists());
    }
}
