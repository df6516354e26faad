//! The bytes of stored files, in any `object_store` back end: a local folder, S3 (or an
//! S3-compatible server), or memory for tests.
//!
//! One type, [`Blobs`], wraps an `Arc<dyn ObjectStore>`; every object key is a [`BlobKey`],
//! built by [`BlobKey::for_file`] and nowhere else. Writes are streamed (constant memory for any size)
//! and hashed on the way, with a byte cap so that nothing the sandbox wrote can fill the store.
//! A remote store's attachments are fetched once per node into a bounded, content-addressed
//! cache (`cache.rs`) and linked into workspaces from there.

mod cache;

use cache::BlobCache;
pub use cache::CacheReaped;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::BlobsConfig;
use crate::ids::BlobKey;

/// Size of the pieces a streamed write is read and uploaded in.
const CHUNK_BYTES: usize = 256 * 1024;

/// Size of the pieces a local blob is read in for a download.
const STREAM_CHUNK_BYTES: usize = 256 * 1024;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The store refused or failed.
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    /// The source could not be read.
    #[error("read blob source: {0}")]
    Read(#[from] std::io::Error),
    /// The source held more than the allowed bytes; nothing was stored.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The cap that was passed.
        limit: u64,
    },
}

/// What a streamed write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The object's key.
    pub key: BlobKey,
    /// Bytes written.
    pub size: u64,
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
}

/// One entry of the store under codebox's key scheme, as the orphan sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key whose bytes the entry holds, or (an unfinished upload) was to hold.
    pub key: BlobKey,
    /// Where the entry is: the key itself, or, for the local back end, the staging file
    /// (`<key>#<n>`) of an upload that never completed, which the store's own listing hides.
    pub location: String,
    /// When it was last written.
    pub modified: SystemTime,
    /// What deleting it frees: for the local back end the blocks its file holds, unless
    /// another link holds them too (then nothing), like a purge counts; otherwise its size.
    pub bytes: u64,
}

impl Listed {
    /// Whether the entry is an unfinished upload's staging file rather than an object.
    pub fn is_partial(&self) -> bool {
        self.location != self.key.as_str()
    }
}

/// The blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// For the local back end: the folder the keys live under, so that attachments can be
    /// hard-linked into workspaces instead of copied.
    local_root: Option<PathBuf>,
    /// For a remote back end: this node's copies of attachments.
    cache: Option<BlobCache>,
}

impl Blobs {
    /// Opens the configured back end; relative local paths are taken from `data_dir`.
    pub fn open(config: &BlobsConfig, data_dir: &FsPath) -> Result<Self, BlobError> {
        match config {
            BlobsConfig::Local { path } => {
                let root = path.clone().unwrap_or_else(|| data_dir.join("blobs"));
                std::fs::create_dir_all(&root)?;
                let root = root.canonicalize()?;
                let store = LocalFileSystem::new_with_prefix(&root)?;
                Ok(Self {
                    store: Arc::new(store),
                    local_root: Some(root),
                    cache: None,
                })
            }
            BlobsConfig::S3 {
                bucket,
                endpoint,
                region,
                allow_http,
                cache_max_bytes,
            } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http);
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = region {
                    builder = builder.with_region(region);
                }
                let cache = BlobCache::open(data_dir.join("blob-cache"), cache_max_bytes.as_u64())?;
                Ok(Self {
                    store: Arc::new(builder.build()?),
                    local_root: None,
                    cache: Some(cache),
                })
            }
            BlobsConfig::Memory => Ok(Self {
                store: Arc::new(InMemory::new()),
                local_root: None,
                cache: None,
            }),
        }
    }

    /// Streams `source` into the object `key` while hashing it. If the source holds more than
    /// `max_bytes`, the upload is aborted and nothing is stored.
    pub async fn put_stream(
        &self,
        key: &BlobKey,
        mut source: impl AsyncRead + Unpin,
        max_bytes: u64,
    ) -> Result<Stored, BlobError> {
        let location = Path::from(key.as_str());
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let outcome = loop {
            let read = match source.read(&mut buffer).await {
                Ok(0) => break Ok(()),
                Ok(read) => read,
                Err(error) => break Err(BlobError::Read(error)),
            };
            size += read as u64;
            if size > max_bytes {
                break Err(BlobError::TooLarge { limit: max_bytes });
            }
            hasher.update(&buffer[..read]);
            writer.write(&buffer[..read]);
            if let Err(error) = writer.wait_for_capacity(4).await {
                break Err(error.into());
            }
        };
        match outcome {
            Ok(()) => {
                writer.finish().await?;
                Ok(Stored {
                    key: key.clone(),
                    size,
                    sha256: hex::encode(hasher.finalize()),
                })
            }
            Err(error) => {
                // The upload's own failure is secondary to the reason it was abandoned.
                if let Err(abort_error) = writer.abort().await {
                    tracing::warn!(%key, error = %abort_error, "could not abort an upload");
                }
                Err(error)
            }
        }
    }

    /// Opens the object `key` for streaming, optionally a byte range of it.
    pub async fn get(
        &self,
        key: &BlobKey,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<object_store::GetResult, BlobError> {
        let options = object_store::GetOptions::new().with_range(range);
        Ok(self
            .store
            .get_opts(&Path::from(key.as_str()), options)
            .await?)
    }

    /// The bytes of object `key` (optionally a range of it) as a stream for a response body.
    /// The local back end reads the file directly in large chunks: object_store's own local
    /// stream reads 8 KiB at a time, which caps a download far below what the disk gives.
    pub async fn read_stream(
        &self,
        key: &BlobKey,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>, BlobError>
    {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        if let Some(path) = self.local_path(key) {
            let mut file = tokio::fs::File::open(&path).await?;
            let length = match range {
                Some(range) => {
                    file.seek(std::io::SeekFrom::Start(range.start)).await?;
                    range.end.saturating_sub(range.start)
                }
                None => file.metadata().await?.len(),
            };
            let reader = file.take(length);
            return Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                reader,
                STREAM_CHUNK_BYTES,
            )));
        }
        let stream = self.get(key, range).await?.into_stream();
        Ok(Box::pin(
            stream.map(|chunk| chunk.map_err(std::io::Error::other)),
        ))
    }

    /// Streams the object `key` into `sink`, returning the bytes copied.
    pub async fn copy_to(
        &self,
        key: &BlobKey,
        sink: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, BlobError> {
        use tokio::io::AsyncWriteExt;
        let mut stream = self.get(key, None).await?.into_stream();
        let mut copied = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            sink.write_all(&chunk).await?;
            copied += chunk.len() as u64;
        }
        sink.flush().await?;
        Ok(copied)
    }

    /// Deletes the object `key`; a missing object is not an error.
    pub async fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        match self.store.delete(&Path::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Every entry under the files scheme ([`BlobKey::parse_file_key`]), streamed so that a
    /// large store is never held in memory at once; anything else in the store is skipped.
    /// The local back end also yields the staging files of uploads a crash interrupted.
    pub fn list_files(&self) -> BoxStream<'static, Result<Listed, BlobError>> {
        match &self.local_root {
            Some(root) => list_local(root.join(FILES_PREFIX)),
            None => self
                .store
                .list(Some(&Path::from(FILES_PREFIX)))
                .filter_map(|meta| async move {
                    let meta = match meta {
                        Ok(meta) => meta,
                        Err(error) => return Some(Err(error.into())),
                    };
                    let key = BlobKey::parse_file_key(meta.location.as_ref())?;
                    Some(Ok(Listed {
                        location: key.to_string(),
                        key,
                        modified: meta.last_modified.into(),
                        bytes: meta.size,
                    }))
                })
                .boxed(),
        }
    }

    /// Deletes a listed entry: its object, or an unfinished upload's staging file. An entry
    /// that is already gone is not an error.
    pub async fn delete_listed(&self, listed: &Listed) -> Result<(), BlobError> {
        if !listed.is_partial() {
            return self.delete(&listed.key).await;
        }
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let Ok(path) = crate::safe_fs::join_safely(root, FsPath::new(&listed.location)) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The object's file on this machine, for the local back end.
    pub fn local_path(&self, key: &BlobKey) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        crate::safe_fs::join_safely(root, FsPath::new(key.as_str())).ok()
    }

    /// A file on this machine with the bytes of object `key` (whose sha256 is `sha256`), to be
    /// linked into a workspace: the local back end's own file, or this node's cached copy of
    /// a remote object, fetched now if it has none. `None` where there is no such file (the
    /// memory back end): the caller copies the bytes instead.
    pub async fn local_copy(
        &self,
        key: &BlobKey,
        sha256: &str,
    ) -> Result<Option<PathBuf>, BlobError> {
        if let Some(path) = self.local_path(key) {
            return Ok(Some(path));
        }
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        let stream = self.get(key, None).await?.into_stream();
        Ok(Some(cache.copy_of(sha256, stream).await?))
    }

    /// Removes this node's least recently used cached copies past the cache's bound.
    pub async fn reap_cache(&self) -> Result<CacheReaped, BlobError> {
        let Some(cache) = self.cache.clone() else {
            return Ok(CacheReaped::default());
        };
        tokio::task::spawn_blocking(move || cache.reap())
            .await
            .map_err(|error| BlobError::Read(std::io::Error::other(error)))?
    }

    /// Checks that the store answers, for readiness probes.
    pub async fn ping(&self) -> Result<(), BlobError> {
        let mut listing = self.store.list(Some(&Path::from("files")));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(error.into()),
        }
    }
}

/// The folder (and key prefix) every stored file's bytes live under: see [`BlobKey::for_file`].
const FILES_PREFIX: &str = "files";

/// Where a walk of the local files folder is.
enum Walk {
    /// The folder is not open yet.
    Start(PathBuf),
    /// Reading its entries.
    Reading(tokio::fs::ReadDir),
    /// Every entry was read, or reading failed (the error was the last item).
    Done,
}

/// The local back end's entries under `folder`, read a directory entry at a time: objects,
/// and the staging files (`<name>#<digits>`) that the store's own listing hides.
fn list_local(folder: PathBuf) -> BoxStream<'static, Result<Listed, BlobError>> {
    futures::stream::unfold(Walk::Start(folder), |walk| async move {
        let mut entries = match walk {
            Walk::Start(folder) => match tokio::fs::read_dir(&folder).await {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
                Err(error) => return Some((Err(BlobError::Read(error)), Walk::Done)),
            },
            Walk::Reading(entries) => entries,
            Walk::Done => return None,
        };
        loop {
            let entry = match entries.next_entry().await {
                Ok(Some(entry)) => entry,
                Ok(None) => return None,
                Err(error) => return Some((Err(BlobError::Read(error)), Walk::Done)),
            };
            if let Some(listed) = local_entry(&entry).await {
                return Some((Ok(listed), Walk::Reading(entries)));
            }
        }
    })
    .boxed()
}

/// A directory entry of the local files folder as a [`Listed`], if it is a regular file
/// whose name is a key of the scheme, or such a key's staging file.
async fn local_entry(entry: &tokio::fs::DirEntry) -> Option<Listed> {
    use std::os::unix::fs::MetadataExt;
    let name = entry.file_name();
    let name = name.to_str()?;
    let base = match name.split_once('#') {
        Some((base, suffix))
            if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        Some(_) => return None,
        None => name,
    };
    let key = BlobKey::parse_file_key(&format!("{FILES_PREFIX}/{base}"))?;
    // Not followed: a link or a folder here is not something codebox wrote.
    let metadata = entry.metadata().await.ok()?;
    if !metadata.is_file() {
        return None;
    }
    let bytes = if metadata.nlink() <= 1 {
        metadata.blocks() * 512
    } else {
        0
    };
    Some(Listed {
        key,
        location: format!("{FILES_PREFIX}/{name}"),
        modified: metadata.modified().ok()?,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FileId;

    /// The key of the bytes of file `id`.
    fn key(id: &str) -> BlobKey {
        BlobKey::for_file(&FileId::from_stored(id))
    }

    async fn round_trip(blobs: &Blobs) {
        let body = vec![7u8; 3 * CHUNK_BYTES + 11];
        let stored = blobs
            .put_stream(&key("a"), body.as_slice(), 10 * 1024 * 1024)
            .await
            .expect("put");
        assert_eq!(stored.size, body.len() as u64);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&body)));

        let mut copy = Vec::new();
        blobs.copy_to(&key("a"), &mut copy).await.expect("copy");
        assert_eq!(copy, body);
        for range in [None, Some(10..20), Some(0..body.len() as u64)] {
            let mut streamed = Vec::new();
            let mut stream = blobs
                .read_stream(&key("a"), range.clone())
                .await
                .expect("stream");
            while let Some(chunk) = stream.next().await {
                streamed.extend_from_slice(&chunk.expect("chunk"));
            }
            let expected = match range {
                Some(range) => &body[range.start as usize..range.end as usize],
                None => &body[..],
            };
            assert_eq!(streamed, expected);
        }

        let error = blobs
            .put_stream(&key("b"), body.as_slice(), 1000)
            .await
            .expect_err("over the cap");
        assert!(matches!(error, BlobError::TooLarge { limit: 1000 }));
        assert!(blobs.get(&key("b"), None).await.is_err(), "nothing stored");

        blobs.delete(&key("a")).await.expect("delete");
        blobs.delete(&key("a")).await.expect("delete again");
        blobs.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn local_back_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::open(&BlobsConfig::Local { path: None }, dir.path()).expect("open");
        round_trip(&blobs).await;
        blobs
            .put_stream(&key("c"), &b"abc"[..], 10)
            .await
            .expect("put");
        let path = blobs.local_path(&key("c")).expect("local");
        assert_eq!(std::fs::read(path).expect("read"), b"abc");
        assert_eq!(blobs.local_path(&key("../x")), None);
    }

    /// The locations `blobs` lists, sorted.
    async fn listed(blobs: &Blobs) -> Vec<(String, bool)> {
        let mut found: Vec<(String, bool)> = blobs
            .list_files()
            .map(|listed| {
                let listed = listed.expect("listed");
                (listed.location.clone(), listed.is_partial())
            })
            .collect()
            .await;
        found.sort();
        found
    }

    #[tokio::test]
    async fn listing_sees_the_scheme_and_staging_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::open(&BlobsConfig::Local { path: None }, dir.path()).expect("open");
        assert_eq!(listed(&blobs).await, vec![], "no files folder yet");
        let kept = BlobKey::for_file(&FileId::new());
        blobs.put_stream(&kept, &b"abc"[..], 10).await.expect("put");
        let files = dir.path().join("blobs").join("files");
        let staging = format!("{}#2", kept.file_id().expect("id"));
        std::fs::write(files.join(&staging), b"ab").expect("staging");
        for foreign in ["notes.txt", "file_x", "file_x#1", "a#b"] {
            std::fs::write(files.join(foreign), b"x").expect("foreign");
        }
        std::fs::create_dir(files.join(FileId::new().as_str())).expect("a folder");
        assert_eq!(
            listed(&blobs).await,
            vec![
                (kept.to_string(), false),
                (format!("files/{staging}"), true)
            ]
        );
        for entry in blobs.list_files().collect::<Vec<_>>().await {
            blobs
                .delete_listed(&entry.expect("listed"))
                .await
                .expect("delete");
        }
        assert_eq!(listed(&blobs).await, vec![]);
        assert!(files.join("notes.txt").exists());

        let memory = Blobs::open(&BlobsConfig::Memory, FsPath::new("/nonexistent")).expect("open");
        memory
            .put_stream(&kept, &b"abc"[..], 10)
            .await
            .expect("put");
        memory
            .put_stream(&key("other"), &b"abc"[..], 10)
            .await
            .expect("put");
        assert_eq!(listed(&memory).await, vec![(kept.to_string(), false)]);
    }

    #[tokio::test]
    async fn memory_back_end() {
        let blobs = Blobs::open(&BlobsConfig::Memory, FsPath::new("/nonexistent")).expect("open");
        round_trip(&blobs).await;
        assert_eq!(blobs.local_path(&key("a")), None);
    }
}
