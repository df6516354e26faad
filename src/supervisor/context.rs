//! What a model should be told about a message's files: `GET /v1/messages/{id}/context`.
//! Its attachments and the files its runs wrote, each with the path the code reads it by,
//! its size and type and, for a table, its header and first rows; and one paragraph that
//! says all of it, ready to put in a prompt. Every part is bounded: the files listed, each
//! preview, the time all previews take, and the paragraph.

use super::*;
use crate::extract::{self, Extracted, Format};

/// The most files described.
const MAX_CONTEXT_FILES: usize = 50;
/// The rows of a table's preview, its header included.
const PREVIEW_ROWS: usize = 6;
/// The most bytes of one preview.
const PREVIEW_BYTES: usize = 4 * 1024;
/// The most bytes of a delimited file read for its preview.
const PREVIEW_READ_BYTES: usize = 16 * 1024;
/// How long all previews of one message may take together: past it, the files left are
/// listed without one (each workbook may take the text view's whole deadline to parse).
const PREVIEWS_DEADLINE: Duration = Duration::from_secs(15);
/// Past this length of the paragraph, previews are left out of it (they stay in `files`).
const MAX_TEXT_PREVIEWS_BYTES: usize = 16 * 1024;

/// One file as a model should see it.
#[derive(Debug, Clone)]
pub struct ContextFile {
    /// The path the code reads it by (`/mnt/data/<name>`).
    pub path: String,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its MIME type.
    pub content_type: String,
    /// For a csv, tsv or xlsx file, its header and first rows as CSV; `None` for others,
    /// or when they could not be read.
    pub preview: Option<String>,
}

/// A message's files as a model should be told of them.
#[derive(Debug, Clone)]
pub struct MessageContext {
    /// A paragraph for the prompt that lists them.
    pub text: String,
    /// The files, oldest first, at most [`MAX_CONTEXT_FILES`].
    pub files: Vec<ContextFile>,
}

impl Supervisor {
    /// The files of one of `owner`'s messages (its attachments and its runs' outputs) as a
    /// model should be told of them.
    pub async fn message_context(
        &self,
        owner: &Owner,
        message_id: &MessageId,
    ) -> Result<MessageContext> {
        let files = self.message_files(owner, message_id, true).await?;
        let left_out = files.len().saturating_sub(MAX_CONTEXT_FILES);
        let deadline = tokio::time::Instant::now() + PREVIEWS_DEADLINE;
        let mut described = Vec::new();
        for file in files.iter().take(MAX_CONTEXT_FILES) {
            let preview = tokio::time::timeout_at(deadline, self.preview(file)).await;
            described.push(ContextFile {
                path: file.path.clone(),
                name: file.name.clone(),
                size: u64::try_from(file.size).unwrap_or(0),
                content_type: file.content_type.clone(),
                preview: preview.ok().flatten(),
            });
        }
        Ok(MessageContext {
            text: context_text(&described, left_out),
            files: described,
        })
    }

    /// The header and first rows of a table file, or `None` for other files and tables
    /// that cannot be read (a preview is a courtesy: its failure is no error).
    async fn preview(&self, file: &FileRecord) -> Option<String> {
        if !Format::is_table(&file.name) {
            return None;
        }
        let preview = match Format::of(&file.name) {
            Some(Format::Spreadsheet) => {
                self.parse(file, |bytes| {
                    extract::sheet_preview(bytes, PREVIEW_ROWS, PREVIEW_BYTES)
                })
                .await
            }
            _ => self
                .read_head(file, PREVIEW_READ_BYTES)
                .await
                .map(|(bytes, more)| {
                    let text = extract::decode_text(&bytes, PREVIEW_READ_BYTES, more);
                    extract::first_lines(&text.text, PREVIEW_ROWS, PREVIEW_BYTES)
                }),
        };
        match preview {
            Ok(Extracted { text, .. }) => Some(text),
            Err(error) => {
                tracing::debug!(file = %file.id, %error, "no preview");
                None
            }
        }
    }
}

/// The paragraph for the prompt: one line per file, each table followed by its preview
/// while the paragraph is short enough.
fn context_text(files: &[ContextFile], left_out: usize) -> String {
    if files.is_empty() {
        return "No files are attached to this message, and its code has written none.".to_owned();
    }
    let mut text =
        String::from("The code runs with these files in /mnt/data; read them by these paths:\n");
    for file in files {
        text.push_str(&format!(
            "- {} ({}, {})\n",
            file.path,
            file.content_type,
            ByteSize::b(file.size).display().iec()
        ));
        if let Some(preview) = &file.preview
            && !preview.is_empty()
            && text.len() + preview.len() <= MAX_TEXT_PREVIEWS_BYTES
        {
            text.push_str("  First rows:\n");
            for line in preview.lines() {
                text.push_str(&format!("    {line}\n"));
            }
        }
    }
    if left_out > 0 {
        text.push_str(&format!("({left_out} more files are not listed.)\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, preview: Option<&str>) -> ContextFile {
        ContextFile {
            path: format!("/mnt/data/{name}"),
            name: name.to_owned(),
            size: 2048,
            content_type: "text/csv".to_owned(),
            preview: preview.map(str::to_owned),
        }
    }

    #[test]
    fn the_paragraph_lists_paths_sizes_and_previews() {
        let text = context_text(&[file("a.csv", Some("x,y\n1,2\n")), file("b.pdf", None)], 3);
        assert!(
            text.contains("- /mnt/data/a.csv (text/csv, 2.0 KiB)\n"),
            "{text}"
        );
        assert!(text.contains("    x,y\n    1,2\n"), "{text}");
        assert!(text.contains("/mnt/data/b.pdf"), "{text}");
        assert!(text.contains("3 more files"), "{text}");
        assert!(context_text(&[], 0).starts_with("No files"));
    }
}
