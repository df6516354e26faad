//! A file's text for a model's context: `GET /v1/files/{id}/text`. Text files are read only
//! as far as the text asked for; xlsx and PDF files must be read whole to be parsed, so they
//! are capped in size, parsed off the async threads (a few at a time) under a deadline, and
//! refused with a reason when they cannot be parsed. The parsing itself is `crate::extract`.

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::*;
use crate::extract::{self, ExtractError, Extracted, Format};

/// The text a caller gets when it does not say how much.
pub const DEFAULT_TEXT_BYTES: u64 = 16 * 1024;
/// The most text a caller may ask for.
pub const MAX_TEXT_BYTES: u64 = 256 * 1024;
/// The largest file that is read whole to be parsed (xlsx, PDF).
const MAX_PARSED_BYTES: u64 = 32 * 1024 * 1024;
/// How long one parse may take, waiting for its turn included.
const PARSE_DEADLINE: Duration = Duration::from_secs(10);
/// How many parses run at once: each holds a whole file in memory and a blocking thread.
static PARSERS: Semaphore = Semaphore::const_new(2);

/// A file's text, as `GET /v1/files/{id}/text` answers it.
#[derive(Debug, Clone)]
pub struct FileText {
    /// The text, at most the bytes asked for.
    pub text: String,
    /// Whether the file has more text than `text` holds.
    pub truncated: bool,
    /// The encoding of `text` (always `utf-8`: invalid bytes are replaced).
    pub encoding: &'static str,
}

impl Supervisor {
    /// At most `max_bytes` (default [`DEFAULT_TEXT_BYTES`], at most [`MAX_TEXT_BYTES`]) of
    /// the text of `owner`'s live file `file_id`: a text file decoded as UTF-8, an xlsx
    /// workbook's sheets as CSV, a PDF's text. Other types, and xlsx or PDF files that
    /// cannot be parsed, are [`Error::Unsupported`].
    pub async fn file_text(
        &self,
        owner: &Owner,
        file_id: &FileId,
        max_bytes: Option<u64>,
    ) -> Result<FileText> {
        let max_bytes = max_bytes.unwrap_or(DEFAULT_TEXT_BYTES);
        if !(1..=MAX_TEXT_BYTES).contains(&max_bytes) {
            return Err(Error::invalid(
                "max_bytes",
                format!("must be 1 to {MAX_TEXT_BYTES}"),
            ));
        }
        // At most MAX_TEXT_BYTES, which fits any usize.
        let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let file = self.file(owner, file_id).await?;
        let extracted = match Format::of(&file.name) {
            Some(Format::Text) => {
                let (bytes, more) = self.read_head(&file, max_bytes).await?;
                extract::decode_text(&bytes, max_bytes, more)
            }
            Some(Format::Spreadsheet) => {
                self.parse(&file, move |bytes| extract::sheets_as_csv(bytes, max_bytes))
                    .await?
            }
            Some(Format::Pdf) => {
                self.parse(&file, move |bytes| extract::pdf_text(bytes, max_bytes))
                    .await?
            }
            None => {
                return Err(Error::Unsupported(format!(
                    "{:?} has no text view: only text (csv, txt, json, ...), xlsx and pdf \
                     files have one",
                    file.name
                )));
            }
        };
        Ok(FileText {
            text: extracted.text,
            truncated: extracted.truncated,
            encoding: "utf-8",
        })
    }

    /// The first `limit` bytes of `file` (streamed, never more read), and whether it has more.
    pub(super) async fn read_head(
        &self,
        file: &FileRecord,
        limit: usize,
    ) -> Result<(Vec<u8>, bool)> {
        let size = u64::try_from(file.size).unwrap_or(0);
        let take = size.min(u64::try_from(limit).unwrap_or(u64::MAX));
        let mut bytes = Vec::new();
        if take > 0 {
            let mut stream = self
                .blobs
                .read_stream(&file.blob_key, Some(0..take))
                .await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(BlobError::Read)?;
                let room = limit - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if bytes.len() == limit {
                    break;
                }
            }
        }
        Ok((bytes, size > take))
    }

    /// Reads `file` whole (it must be at most [`MAX_PARSED_BYTES`]) and parses it with
    /// `parse` on a blocking thread, a few at a time and under [`PARSE_DEADLINE`]. A parser
    /// that refuses the file, panics on it or takes too long makes it unsupported.
    pub(super) async fn parse(
        &self,
        file: &FileRecord,
        parse: impl FnOnce(&[u8]) -> std::result::Result<Extracted, ExtractError> + Send + 'static,
    ) -> Result<Extracted> {
        let name = &file.name;
        if u64::try_from(file.size).unwrap_or(u64::MAX) > MAX_PARSED_BYTES {
            return Err(Error::Unsupported(format!(
                "{name:?} is too large to extract text from (over {} MiB)",
                MAX_PARSED_BYTES >> 20
            )));
        }
        let timed_out = || {
            Error::Unsupported(format!(
                "extracting the text of {name:?} took longer than {} s",
                PARSE_DEADLINE.as_secs()
            ))
        };
        let deadline = tokio::time::Instant::now() + PARSE_DEADLINE;
        let permit = tokio::time::timeout_at(deadline, PARSERS.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| Error::Busy("text extraction is shut down".to_owned()))?;
        let limit = usize::try_from(MAX_PARSED_BYTES).unwrap_or(usize::MAX);
        let (bytes, _) = self.read_head(file, limit).await?;
        let task = tokio::task::spawn_blocking(move || {
            // The permit is held until the parse ends, even one whose caller stopped waiting.
            let _permit = permit;
            parse(&bytes)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(extracted))) => Ok(extracted),
            Ok(Ok(Err(refused))) => Err(Error::Unsupported(format!("{name:?}: {refused}"))),
            Ok(Err(panicked)) => {
                tracing::warn!(file = %file.id, error = %panicked, "a text extractor failed");
                Err(Error::Unsupported(format!(
                    "{name:?} could not be parsed to extract its text"
                )))
            }
            Err(_) => Err(timed_out()),
        }
    }
}
