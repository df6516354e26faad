//! The download phase, after the cases (skip it with `--skip-download`). A 1 GiB file is uploaded
//! once through `POST /v1/files`, streamed from memory, and then downloaded `--download-runs` times
//! through its signed link, with no token, by reqwest reading the body chunk by chunk and counting
//! bytes (nothing is buffered or hashed). nginx serves a hard link to the same blob on another
//! loopback port, from a temporary configuration (one process, `sendfile on`), and is downloaded
//! with the same code in the same iterations, alternating which goes first. The ratio compares
//! median throughputs (codebox / nginx). When `nginx` cannot be found the nginx case is skipped
//! with a note.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use bytes::Bytes;
use codebox::blobs::Blobs;
use codebox::config::BlobsConfig;
use codebox::ids::{BlobKey, FileId};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::{TOKEN, USER};
use crate::harness::Bench;
use crate::nginx::{Nginx, find_nginx};

/// The piece the download file is made of, repeated; its content does not matter to
/// throughput, since nothing on the way compresses.
const BLOCK_BYTES: usize = 1 << 20;
/// The download file's name in the catalog and under nginx's root.
pub(crate) const DOWNLOAD_NAME: &str = "download.bin";

/// What the download phase measured.
pub(crate) struct Downloads {
    /// The file's size.
    pub(crate) bytes: u64,
    /// The one upload of the file through `POST /v1/files`.
    pub(crate) upload: Duration,
    /// Seconds per download through codebox's signed link.
    pub(crate) codebox: Vec<f64>,
    /// Seconds per download from nginx, or why that case was skipped.
    pub(crate) nginx: Result<Vec<f64>, String>,
}

impl Bench {
    /// The download phase: uploads a file of `bytes` bytes through the API once, then
    /// downloads it `warmup + runs` times from codebox's signed link and from nginx, and
    /// returns the counted samples.
    pub(crate) async fn measure_downloads(
        &mut self,
        bytes: u64,
        warmup: usize,
        runs: usize,
    ) -> Result<Downloads> {
        let (file, upload) = self.upload_download_file(bytes).await?;
        let link = file["download_url"]
            .as_str()
            .ok_or_else(|| anyhow!("the upload's File has no download_url: {file}"))?
            .to_owned();
        let file_id = file["id"]
            .as_str()
            .ok_or_else(|| anyhow!("the upload's File has no id: {file}"))?;
        // The server keeps blobs in `<data_dir>/blobs`, under the key of the file's id.
        let blobs = Blobs::open(&BlobsConfig::Local { path: None }, &self.server.data_dir)
            .context("open the server's blob folder")?;
        let blob = blobs
            .local_path(&BlobKey::for_file(&FileId::from_stored(file_id)))
            .ok_or_else(|| anyhow!("the blob store is not a local folder; nginx needs one"))?;

        // The guard stops nginx when it goes out of scope, on success, error or interruption.
        let nginx = match find_nginx() {
            Some(binary) => Some(Nginx::start(&binary, &self.scratch.join("nginx"), &blob).await?),
            None => {
                println!(
                    "nginx not found on PATH (nor in /usr/sbin): the nginx download case is \
                     skipped. Install it with `apt-get install nginx-light` (Debian, Ubuntu) \
                     or your system's nginx package, then run again."
                );
                None
            }
        };

        let mut codebox = Vec::with_capacity(runs);
        let mut from_nginx = Vec::with_capacity(runs);
        for iteration in 0..warmup + runs {
            // Alternating which goes first keeps a systematic second-place effect (a warmer
            // cache, a busier disk) from favouring either.
            let (codebox_time, nginx_time) = if iteration % 2 == 0 {
                let codebox_time = self.download(&link, bytes, "codebox").await?;
                (
                    codebox_time,
                    self.download_nginx(nginx.as_ref(), bytes).await?,
                )
            } else {
                let nginx_time = self.download_nginx(nginx.as_ref(), bytes).await?;
                (self.download(&link, bytes, "codebox").await?, nginx_time)
            };
            if iteration >= warmup {
                codebox.push(codebox_time.as_secs_f64());
                from_nginx.extend(nginx_time.map(|time| time.as_secs_f64()));
            }
        }
        let nginx = match nginx {
            Some(nginx) => {
                nginx.stop()?;
                Ok(from_nginx)
            }
            None => Err("nginx not found; install nginx-light or nginx".to_owned()),
        };
        Ok(Downloads {
            bytes,
            upload,
            codebox,
            nginx,
        })
    }

    /// One download from `nginx`, when it runs.
    async fn download_nginx(&self, nginx: Option<&Nginx>, bytes: u64) -> Result<Option<Duration>> {
        match nginx {
            Some(nginx) => Ok(Some(self.download(&nginx.url, bytes, "nginx").await?)),
            None => Ok(None),
        }
    }

    /// Uploads `bytes` bytes through `POST /v1/files`, streamed from one repeated block, and
    /// checks the size and sha256 the server answers. Returns the File and the upload's time.
    async fn upload_download_file(&self, bytes: u64) -> Result<(Value, Duration)> {
        let block = Bytes::from(pseudo_random_block(BLOCK_BYTES));
        let expected = {
            let block = block.clone();
            tokio::task::spawn_blocking(move || sha256_of_repeated(&block, bytes))
                .await
                .context("hash the download file")?
        };
        let chunks = pieces(bytes, BLOCK_BYTES).map(move |length| {
            // A slice of a `Bytes` shares its memory: the stream allocates nothing per piece.
            Ok::<Bytes, std::io::Error>(block.slice(..length))
        });
        let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let part = reqwest::multipart::Part::stream_with_length(body, bytes)
            .file_name(DOWNLOAD_NAME)
            .mime_str("application/octet-stream")
            .context("set the upload's content type")?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let started = Instant::now();
        let response = self
            .api
            .http
            .post(format!("{}/v1/files", self.api.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .multipart(form)
            .send()
            .await
            .context("upload the download file")?;
        let status = response.status();
        let text = response.text().await.context("read the upload's answer")?;
        let elapsed = started.elapsed();
        ensure!(
            status == StatusCode::CREATED,
            "upload the download file: HTTP {status}: {text}"
        );
        let file: Value = serde_json::from_str(&text).context("parse the upload's File")?;
        ensure!(
            file["size"] == bytes && file["sha256"] == expected.as_str(),
            "the uploaded file's size or sha256 is not that of the bytes sent: {file}"
        );
        Ok((file, elapsed))
    }

    /// One download of `url`, read chunk by chunk and counted, never kept. `from` names the
    /// server in errors.
    async fn download(&self, url: &str, bytes: u64, from: &str) -> Result<Duration> {
        let started = Instant::now();
        let mut response = self
            .api
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("download from {from}"))?;
        let status = response.status();
        ensure!(
            status == StatusCode::OK,
            "download from {from}: HTTP {status}"
        );
        let mut received = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("download from {from}: read the body"))?
        {
            received += chunk.len() as u64;
        }
        let elapsed = started.elapsed();
        ensure!(
            received == bytes,
            "download from {from}: received {received} bytes, not {bytes}"
        );
        Ok(elapsed)
    }
}

/// The lengths of the pieces `total` bytes are cut into, none longer than `piece`.
fn pieces(total: u64, piece: usize) -> impl Iterator<Item = usize> {
    let whole = piece as u64;
    // Every piece is at most `piece` long, so it fits a usize.
    (0..total.div_ceil(whole)).map(move |index| whole.min(total - index * whole) as usize)
}

/// `bytes` bytes of a fixed sequence, the same on every run.
fn pseudo_random_block(bytes: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..bytes)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

/// The hex sha256 of `total` bytes made of `block` repeated (the last copy cut short).
fn sha256_of_repeated(block: &[u8], total: u64) -> String {
    let mut hasher = Sha256::new();
    for length in pieces(total, block.len()) {
        hasher.update(&block[..length]);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_total() {
        assert_eq!(pieces(10, 4).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(pieces(8, 4).collect::<Vec<_>>(), [4, 4]);
        assert_eq!(pieces(0, 4).count(), 0);
        let block = pseudo_random_block(3);
        let whole: Vec<u8> = block
            .iter()
            .chain(&block)
            .chain(&block[..1])
            .copied()
            .collect();
        assert_eq!(
            sha256_of_repeated(&block, 7),
            hex::encode(Sha256::digest(&whole))
        );
    }
}
