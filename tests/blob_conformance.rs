//! One conformance suite for the blob store, run against every back end: the local folder,
//! memory, and a real S3-compatible server (moto, started by `scripts/dev-services up` when
//! `CODEBOX_TEST_S3_ENDPOINT` does not name one). Whatever the back end, a stored object reads
//! back whole and in ranges with its size and sha256, a write past its cap stores nothing,
//! deletes are idempotent, the orphan sweep's listing sees exactly the scheme's keys, and an
//! attachment's bytes reach a file on this machine that a workspace can link.

mod common;

use codebox::blobs::{BlobError, Blobs};
use codebox::config::BlobsConfig;
use codebox::ids::{BlobKey, FileId};
use common::services::test_s3;
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// Bytes of a test object: past object_store's 5 MiB multipart part, so that S3 sees a real
/// multipart upload of several parts.
const OBJECT_BYTES: usize = 12 * 1024 * 1024 + 7;

fn key() -> BlobKey {
    BlobKey::for_file(&FileId::new())
}

fn object() -> Vec<u8> {
    (0..OBJECT_BYTES).map(|i| (i % 251) as u8).collect()
}

async fn read_all(blobs: &Blobs, key: &BlobKey, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut stream = blobs.read_stream(key, range).await.expect("read stream");
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    bytes
}

/// Every rule, against one back end.
async fn conformance(blobs: &Blobs) {
    blobs.ping().await.expect("ping");

    // A streamed write stores the bytes whole, with their size and sha256.
    let body = object();
    let stored_key = key();
    let stored = blobs
        .put_stream(&stored_key, body.as_slice(), body.len() as u64)
        .await
        .expect("put");
    assert_eq!(stored.key, stored_key);
    assert_eq!(stored.size, body.len() as u64);
    assert_eq!(stored.sha256, hex::encode(Sha256::digest(&body)));

    // Read back whole, in ranges (first byte, a middle piece across a part boundary, the
    // tail), and copied into a writer.
    assert_eq!(read_all(blobs, &stored_key, None).await, body);
    let part = 5 * 1024 * 1024;
    for range in [0..1, part - 10..part + 10, OBJECT_BYTES - 5..OBJECT_BYTES] {
        let bytes = read_all(
            blobs,
            &stored_key,
            Some(range.start as u64..range.end as u64),
        )
        .await;
        assert_eq!(bytes, &body[range]);
    }
    let mut copy = Vec::new();
    let copied = blobs.copy_to(&stored_key, &mut copy).await.expect("copy");
    assert_eq!(copied, body.len() as u64);
    assert_eq!(copy, body);

    // Past its cap, a write stores nothing (a multipart upload is aborted).
    let refused_key = key();
    let refused = blobs
        .put_stream(&refused_key, body.as_slice(), 6 * 1024 * 1024)
        .await
        .expect_err("over the cap");
    assert!(matches!(refused, BlobError::TooLarge { .. }), "{refused}");
    assert!(
        blobs.get(&refused_key, None).await.is_err(),
        "nothing stored"
    );

    // A reader that fails mid-stream stores nothing either.
    let broken_key = key();
    let broken = tokio_util::io::StreamReader::new(futures::stream::iter(vec![
        Ok(bytes::Bytes::from(vec![1u8; 1024])),
        Err(std::io::Error::other("the client went away")),
    ]));
    assert!(matches!(
        blobs.put_stream(&broken_key, broken, 1 << 30).await,
        Err(BlobError::Read(_))
    ));
    assert!(
        blobs.get(&broken_key, None).await.is_err(),
        "nothing stored"
    );

    // The bytes reach a file on this machine that a workspace can link, where there is one.
    if let Some(path) = blobs
        .local_copy(&stored_key, &stored.sha256)
        .await
        .expect("a local copy")
    {
        assert_eq!(std::fs::read(&path).expect("read the copy"), body);
        let again = blobs
            .local_copy(&stored_key, &stored.sha256)
            .await
            .expect("a local copy")
            .expect("still there");
        assert_eq!(again, path, "fetched once, then reused");
    }

    // The sweep's listing sees the stored key (and, whatever else the store holds, only
    // keys of the scheme).
    let listed: Vec<_> = blobs
        .list_files()
        .map(|listed| listed.expect("list"))
        .collect()
        .await;
    let found = listed
        .iter()
        .find(|entry| entry.key == stored_key)
        .expect("the stored key is listed");
    assert!(found.bytes > 0);
    assert!(
        listed
            .iter()
            .all(|entry| entry.key.as_str().starts_with("files/file_"))
    );

    // Deleting is idempotent, and a deleted object is gone.
    blobs.delete(&stored_key).await.expect("delete");
    blobs.delete(&stored_key).await.expect("delete again");
    assert!(blobs.get(&stored_key, None).await.is_err());
}

#[tokio::test]
async fn local_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = Blobs::open(&BlobsConfig::Local { path: None }, dir.path()).expect("open");
    conformance(&blobs).await;
}

#[tokio::test]
async fn memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = Blobs::open(&BlobsConfig::Memory, dir.path()).expect("open");
    conformance(&blobs).await;
}

#[tokio::test]
async fn s3() {
    let (endpoint, bucket) = test_s3();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BlobsConfig::S3 {
        bucket,
        endpoint: Some(endpoint),
        region: Some("us-east-1".to_owned()),
        allow_http: true,
        cache_max_bytes: bytesize::ByteSize::gib(1),
    };
    let blobs = Blobs::open(&config, dir.path()).expect("open");
    conformance(&blobs).await;
    // The node's cache holds the attachment it fetched, content-addressed.
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("blob-cache"))
        .expect("the cache folder")
        .collect();
    assert_eq!(cached.len(), 1);
}

#[tokio::test]
async fn the_service_runs_on_s3_end_to_end() {
    use common::web::{CSV, XLSX_FROM_CSV};
    use common::*;
    let (endpoint, bucket) = test_s3();
    let server = TestServer::with_config(|config| {
        config.blobs = BlobsConfig::S3 {
            bucket,
            endpoint: Some(endpoint),
            region: None,
            allow_http: true,
            cache_max_bytes: bytesize::ByteSize::mib(64),
        };
    })
    .await;
    let chat = ("chat-s3", "msg-s3");
    let upload = server.upload_ok(ALICE, "sales.csv", CSV, Some(chat)).await;
    let run = server.run_ok(ALICE, chat, XLSX_FROM_CSV, &[]).await;
    let report = &run["files"][0];
    assert_eq!(report["name"], "report.xlsx", "{run:#}");
    // The attachment came through this node's cache, under its sha256.
    let cached = server
        .data_dir()
        .join("blob-cache")
        .join(upload["sha256"].as_str().expect("sha256"));
    assert!(cached.exists(), "{}", cached.display());
    // A signed link downloads the output, whole and in a range.
    let link = report["download_url"].as_str().expect("link");
    let whole = server.client.get(link).send().await.expect("download");
    assert_eq!(whole.status(), 200);
    let bytes = whole.bytes().await.expect("bytes");
    assert_eq!(bytes.len() as u64, report["size"].as_u64().expect("size"));
    assert_eq!(common::web::sha256_hex(&bytes), report["sha256"]);
    let ranged = server
        .client
        .get(link)
        .header("range", "bytes=0-3")
        .send()
        .await
        .expect("range");
    assert_eq!(ranged.status(), 206);
    assert_eq!(&ranged.bytes().await.expect("bytes")[..], &bytes[..4]);
}
