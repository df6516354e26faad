//! The sandbox image on the engine: whether it exists, its settings, and the two ways of
//! making it (importing a root file system tar, or building a Dockerfile).
//!
//! `image_build/` decides what goes into the image and checks the result; every call to the
//! engine it needs is here, so that only `runtime/` knows Docker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use bytesize::ByteSize;
use futures::{StreamExt, TryStreamExt};
use tokio_util::io::ReaderStream;

pub use super::engine::EngineUnreachable;
use super::engine::{connect_engine, error_chain};

/// Bollard applies its client timeout (two minutes by default) to every request until the
/// response headers arrive. An import or build can take longer than that on a slow disk before
/// the engine answers, so those requests get a generous limit of their own.
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// How often the progress of an import is reported (at most once per 10 %).
const IMPORT_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the engine's image calls. Each message is one complete line that includes its
/// cause.
#[derive(Debug, thiserror::Error)]
pub enum ImageEngineError {
    /// The engine did not answer: socket missing, permission denied, daemon down or too old.
    #[error(transparent)]
    Unreachable(#[from] EngineUnreachable),

    /// The engine rejected or failed a request.
    #[error("failed to {action}: {cause}")]
    Request {
        /// What was attempted, such as `import codebox-python:test`.
        action: String,
        /// What went wrong, with its causes.
        cause: String,
    },
}

impl ImageEngineError {
    fn request(action: impl Into<String>, cause: &BollardError) -> Self {
        ImageEngineError::Request {
            action: action.into(),
            cause: error_chain(cause),
        }
    }
}

/// The settings of an image that the sandbox relies on, as the engine reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSettings {
    /// `USER`.
    pub user: String,
    /// `WORKDIR`.
    pub working_dir: String,
    /// `ENV`, as `NAME=value`.
    pub env: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `LABEL`s.
    pub labels: HashMap<String, String>,
}

/// A root file system tar to import, with the image settings to apply on top.
#[derive(Debug)]
pub struct ImportRequest<'a> {
    /// The open tar file; it is streamed, never read into memory.
    pub tar: tokio::fs::File,
    /// Its size, for progress reports.
    pub size: u64,
    /// Repository of the new image.
    pub repository: &'a str,
    /// Tag of the new image.
    pub tag: &'a str,
    /// Dockerfile instructions (`USER`, `ENV`, `LABEL`, `CMD`…) applied by the import.
    pub changes: Vec<String>,
    /// The image's commit message.
    pub message: &'a str,
}

/// A Dockerfile build.
#[derive(Debug)]
pub struct DockerfileBuild<'a> {
    /// The build context, an uncompressed tar.
    pub context: Vec<u8>,
    /// The Dockerfile's name inside the context.
    pub dockerfile: &'a str,
    /// The reference to tag the result with.
    pub reference: &'a str,
    /// `--build-arg`s.
    pub build_args: HashMap<&'a str, &'a str>,
    /// Labels added to the image.
    pub labels: HashMap<&'a str, &'a str>,
}

/// The engine, as the image builder sees it.
#[derive(Debug, Clone)]
pub struct ImageEngine {
    docker: Docker,
}

impl ImageEngine {
    /// Connects to the local engine the way the runtime does (`runtime/engine.rs`); the image
    /// builder's requests get a longer timeout than the runtime's.
    ///
    /// Any failure becomes [`ImageEngineError::Unreachable`], whose message tells the user what
    /// to check.
    pub async fn connect() -> Result<Self, ImageEngineError> {
        let docker = connect_engine().await?;
        Ok(Self {
            docker: docker.with_timeout(LONG_REQUEST_TIMEOUT),
        })
    }

    /// The settings of image `reference`, or `None` when the engine does not have it.
    pub async fn inspect(
        &self,
        reference: &str,
    ) -> Result<Option<ImageSettings>, ImageEngineError> {
        let inspect = match self.docker.inspect_image(reference).await {
            Ok(inspect) => inspect,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => {
                return Err(ImageEngineError::request(
                    format!("inspect {reference}"),
                    &e,
                ));
            }
        };
        let config = inspect.config.unwrap_or_default();
        Ok(Some(ImageSettings {
            user: config.user.unwrap_or_default(),
            working_dir: config.working_dir.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
        }))
    }

    /// Streams a root file system tar into the engine (`docker import`), reporting how much was
    /// sent to `progress`. Returns the new image's ID when the engine names it.
    ///
    /// Dropping the future aborts the upload; the engine then creates no image.
    pub async fn import(
        &self,
        request: ImportRequest<'_>,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<String>, ImageEngineError> {
        let reference = format!("{}:{}", request.repository, request.tag);
        let total = request.size;
        progress(&format!(
            "==> importing the root file system ({}) as {reference}",
            ByteSize(total)
        ));

        // The engine reports no progress for an import from a request body, so the bytes are
        // counted on the sending side.
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        let body = ReaderStream::with_capacity(request.tar, 1 << 20).inspect_ok(move |chunk| {
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        });

        // Bollard sends all changes as one newline-separated `changes` value; the engine parses
        // the changes as Dockerfile lines either way.
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(request.repository)
            .tag(request.tag)
            .message(request.message)
            .changes(request.changes)
            .build();
        let mut stream =
            self.docker
                .create_image(Some(options), Some(bollard::body_try_stream(body)), None);

        // The engine says nothing until the whole tar has been stored, so progress is reported
        // from a timer rather than from its messages.
        let mut ticker = tokio::time::interval(IMPORT_PROGRESS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut reported_tenths = 0;
        let mut image_id = None;
        loop {
            tokio::select! {
                info = stream.next() => {
                    let Some(info) = info else { break };
                    let info = info
                        .map_err(|e| ImageEngineError::request(format!("import {reference}"), &e))?;
                    // The engine's last message carries the new image's ID as status.
                    if let Some(status) = info.status.filter(|s| s.starts_with("sha256:")) {
                        image_id = Some(status);
                    }
                }
                _ = ticker.tick() => {
                    let done = sent.load(Ordering::Relaxed);
                    let tenths = progress_tenths(done, total);
                    if tenths > reported_tenths {
                        reported_tenths = tenths;
                        let waiting = if done >= total {
                            "; waiting for the engine to store it"
                        } else {
                            ""
                        };
                        progress(&format!(
                            "==> importing: {}% sent ({} of {}){waiting}",
                            tenths * 10,
                            ByteSize(done),
                            ByteSize(total)
                        ));
                    }
                }
            }
        }
        Ok(image_id)
    }

    /// Builds a Dockerfile with the engine's classic builder, passing every line of its output
    /// to `progress`.
    pub async fn build_dockerfile(
        &self,
        build: DockerfileBuild<'_>,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), ImageEngineError> {
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(build.dockerfile)
            .t(build.reference)
            .buildargs(&build.build_args)
            .labels(&build.labels)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream = self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(build.context.into())),
        );
        while let Some(info) = stream.next().await {
            let info = info
                .map_err(|e| ImageEngineError::request(format!("build {}", build.reference), &e))?;
            if let Some(text) = info.stream {
                for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                    progress(line);
                }
            }
            // Status messages come from pulling the base image.
            if let Some(status) = info.status {
                match info.id {
                    Some(id) => progress(&format!("{id}: {status}")),
                    None => progress(&status),
                }
            }
        }
        Ok(())
    }
}

/// Completed tenths of `done` out of `total`, for coarse progress reports.
fn progress_tenths(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    (done.min(total) * 10) / total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_sizes_are_formatted() {
        assert_eq!(progress_tenths(0, 0), 0);
        assert_eq!(progress_tenths(5, 100), 0);
        assert_eq!(progress_tenths(55, 100), 5);
        assert_eq!(progress_tenths(150, 100), 10);
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(3 * 1024 * 1024 * 1024).to_string(), "3.0 GiB");
    }
}
