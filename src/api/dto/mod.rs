//! The JSON objects of the API (`shared/API.md`): `File` and `Run`. Their field names are a
//! contract with chat backends and never change; fields may be added. The operators' objects
//! are in `operators.rs`.

mod operators;

pub use operators::{
    FileUsageInfo, FileUsageList, GcReport, GcRequest, NodeInfo, NodeList, Quotas, RetentionPolicy,
    TenantPolicy, UsageReport, WorkspaceInfo, WorkspaceList,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::FileId;
use crate::supervisor::{FileRecord, FileSource, KernelState, RunOutput, RunRecord, RunReport};

/// A stored file, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct File {
    /// Opaque id.
    pub id: String,
    /// The file's name.
    pub name: String,
    /// Where code sees it: `/mnt/data/<name>`.
    pub path: String,
    /// Size in bytes.
    pub size: i64,
    /// MIME type.
    pub content_type: String,
    /// The name's extension in lower case, without its dot (`csv`); empty when it has none.
    pub format: String,
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// `upload`, `code_execution`, or `figure` (a figure the interpreter returned; it has no
    /// `path`, since it is not in `/mnt/data`).
    #[schema(value_type = String, pattern = "^(upload|code_execution|figure)$")]
    pub source: &'static str,
    /// The chat, if any.
    pub chat_id: Option<String>,
    /// The message, if any.
    pub message_id: Option<String>,
    /// The run that wrote it, if any.
    pub run_id: Option<String>,
    /// The attachment this file replaced, if any.
    pub derived_from: Option<String>,
    /// For uploads into a chat: `linked` while the chat exists, `unlinked` once it is gone
    /// (the file stays in the user's files); `null` for every other file.
    #[schema(value_type = Option<String>, pattern = "^(linked|unlinked)$")]
    pub link_state: Option<&'static str>,
    /// When it was stored (RFC 3339 UTC).
    pub created_at: String,
    /// When it was last renamed (RFC 3339 UTC); `created_at` until then.
    pub modified_at: String,
    /// A signed download URL; `null` where no server signs one (the CLI).
    pub download_url: Option<String>,
    /// How a model's text names the file: `workspace://<id>` (rendered to its download URL).
    #[serde(rename = "ref")]
    #[schema(pattern = "^workspace://")]
    pub reference: String,
}

impl File {
    /// The API view of a record, with the download URL the caller computed.
    pub fn new(record: &FileRecord, download_url: Option<String>) -> Self {
        Self {
            id: record.id.to_string(),
            name: record.name.clone(),
            path: record.path.clone(),
            size: record.size,
            content_type: record.content_type.clone(),
            format: format_of(&record.name),
            sha256: record.sha256.clone(),
            source: record.source.into(),
            chat_id: record.chat_id.as_ref().map(ToString::to_string),
            message_id: record.message_id.as_ref().map(ToString::to_string),
            run_id: record.run_id.as_ref().map(ToString::to_string),
            derived_from: record.derived_from.as_ref().map(ToString::to_string),
            link_state: link_state_of(record),
            created_at: record.created_at.clone(),
            modified_at: record.modified_at.clone(),
            download_url,
            reference: format!("workspace://{}", record.id),
        }
    }
}

/// The lower-case extension of a name, without its dot; a leading dot (`.env`) is no
/// extension.
fn format_of(name: &str) -> String {
    match name.rfind('.') {
        Some(index) if index > 0 => name[index + 1..].to_lowercase(),
        _ => String::new(),
    }
}

/// Whether an upload is still tied to its chat; other files have no link state.
fn link_state_of(record: &FileRecord) -> Option<&'static str> {
    match (record.source, &record.chat_id, &record.unlinked_at) {
        (FileSource::Upload, _, Some(_)) => Some("unlinked"),
        (FileSource::Upload, Some(_), None) => Some("linked"),
        _ => None,
    }
}

/// Something a cap left out of a run's results.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Truncation {
    /// The path concerned (`/mnt/data/...`).
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// A run, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Run {
    /// Opaque id.
    pub id: String,
    /// The chat.
    pub chat_id: String,
    /// The message.
    pub message_id: String,
    /// `succeeded`, `failed`, `timed_out`, `killed` (or `running` while it runs).
    #[schema(value_type = String, pattern = "^(running|succeeded|failed|timed_out|killed)$")]
    pub status: &'static str,
    /// Why a limit stopped it, for `timed_out` and `killed`.
    pub reason: Option<String>,
    /// The exit status, if the code exited.
    pub exit_code: Option<i64>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// Whether stdout was cut at the cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    pub stderr_truncated: bool,
    /// Execution time.
    pub duration_ms: i64,
    /// The files the run registered.
    pub files: Vec<File>,
    /// What the caps left out.
    pub truncated: Vec<Truncation>,
    /// When the run started (RFC 3339 UTC).
    pub created_at: String,
    /// Rich results in order, as a notebook shows them.
    pub outputs: Vec<Output>,
    /// The interpreter the run ran in; `null` for runs that did not reach it.
    pub kernel: Option<Kernel>,
    /// Whether the run found the message's workspace lost with the instance that held it
    /// (another instance took the message over) and rebuilt it first: attachments and the
    /// files earlier runs registered are back in /mnt/data; unregistered files and the
    /// interpreter's variables are not.
    pub workspace_restored: bool,
}

/// A rich output of a run: the last expression's value, a figure, or an exception.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    /// The value of the last expression (or something displayed), by MIME type:
    /// `text/plain`, and `text/html` for a DataFrame.
    Result {
        /// Renderings by MIME type.
        data: BTreeMap<String, String>,
    },
    /// A figure, registered as a PNG file (`source: "figure"`).
    Image {
        /// The registered PNG.
        file: Box<File>,
    },
    /// An exception.
    Error {
        /// Its type's name.
        ename: String,
        /// Its message.
        evalue: String,
        /// The traceback, line by line.
        traceback: Vec<String>,
    },
}

impl Output {
    /// The API view of a stored output; a figure whose file is not among `files` (deleted
    /// since) is left out.
    pub fn new(
        output: &RunOutput,
        files: &[FileRecord],
        url_for: &impl Fn(&FileRecord) -> Option<String>,
    ) -> Option<Self> {
        Some(match output {
            RunOutput::Result { data } => Self::Result { data: data.clone() },
            RunOutput::Image { file_id } => {
                let file = files.iter().find(|file| &file.id == file_id)?;
                Self::Image {
                    file: Box::new(File::new(file, url_for(file))),
                }
            }
            RunOutput::Error {
                ename,
                evalue,
                traceback,
            } => Self::Error {
                ename: ename.clone(),
                evalue: evalue.clone(),
                traceback: traceback.clone(),
            },
        })
    }
}

/// The interpreter a run ran in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Kernel {
    /// The run's number in its interpreter (1 for the first).
    pub execution_count: u64,
    /// Whether the interpreter is a fresh one, not the one the message's earlier runs used.
    pub restarted: bool,
    /// Why it was restarted: `timeout`, `crashed`, `memory`, `requested`; `null` when codebox
    /// released the old one (idle, or codebox restarted).
    #[schema(value_type = Option<String>, pattern = "^(timeout|crashed|memory|requested)$")]
    pub reason: Option<String>,
}

impl From<&KernelState> for Kernel {
    fn from(state: &KernelState) -> Self {
        Self {
            execution_count: state.execution_count,
            restarted: state.restarted,
            reason: state.reason.clone(),
        }
    }
}

impl Run {
    /// The API view of a run and its files; `url_for` gives each file's download URL.
    pub fn new(report: &RunReport, url_for: impl Fn(&FileRecord) -> Option<String>) -> Self {
        let run: &RunRecord = &report.run;
        Self {
            id: run.id.to_string(),
            chat_id: run.chat_id.to_string(),
            message_id: run.message_id.to_string(),
            status: run.status.into(),
            reason: run.reason.clone(),
            exit_code: run.exit_code,
            stdout: run.stdout.clone(),
            stderr: run.stderr.clone(),
            stdout_truncated: run.stdout_truncated,
            stderr_truncated: run.stderr_truncated,
            duration_ms: run.duration_ms,
            files: report
                .files
                .iter()
                .map(|file| File::new(file, url_for(file)))
                .collect(),
            truncated: run
                .truncated
                .iter()
                .map(|t| Truncation {
                    path: t.path.clone(),
                    reason: t.reason.clone(),
                })
                .collect(),
            created_at: run.created_at.clone(),
            outputs: run
                .outputs
                .iter()
                .filter_map(|output| Output::new(output, &report.files, &url_for))
                .collect(),
            kernel: run.kernel.as_ref().map(Kernel::from),
            workspace_restored: run.workspace_restored,
        }
    }
}

/// `POST /v1/runs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCreate {
    /// The chat (1-128 characters of `[A-Za-z0-9._:-]`).
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub chat_id: String,
    /// The message (1-128 characters of `[A-Za-z0-9._:-]`); its workspace is reused by its
    /// later runs.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub message_id: String,
    /// The program.
    pub code: String,
    /// The language; only `python`.
    #[serde(default = "python")]
    #[schema(pattern = "^python$")]
    pub language: String,
    /// Files to attach (uploads of the same user).
    // Typed as they come: an unknown id is simply not found, so these need no check.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub file_ids: Vec<FileId>,
    /// Wall-clock limit in seconds (capped by the configuration).
    #[serde(default, deserialize_with = "whole_seconds")]
    #[schema(minimum = 1)]
    pub timeout_secs: Option<u64>,
    /// Start this run in a fresh interpreter (the message's variables are gone).
    #[serde(default)]
    pub restart: bool,
    /// Python run first when the interpreter is fresh (after the configured `init_code`);
    /// ignored when the message's interpreter is live.
    #[serde(default)]
    pub init_code: Option<String>,
}

/// Reads a whole number of seconds, also when written as a JSON float such as `30.0` (JSON
/// does not tell the two apart).
fn whole_seconds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(value) = Option::<f64>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if value.fract() != 0.0 || value < 0.0 || value > u64::MAX as f64 {
        return Err(D::Error::custom(
            "timeout_secs must be a whole number of seconds",
        ));
    }
    Ok(Some(value as u64))
}

fn python() -> String {
    "python".to_owned()
}

/// `GET /v1/files`: one page of the caller's files.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileList {
    /// The files, newest first.
    pub files: Vec<File>,
    /// The `cursor` of the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// `PATCH /v1/files/{file_id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameFile {
    /// The new name; only its last part is kept (`a/b.csv` is `b.csv`).
    #[schema(min_length = 1, max_length = 1024)]
    pub name: String,
}

/// `GET /v1/messages/{message_id}/files`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageFiles {
    /// The message.
    pub message_id: String,
    /// Its files, oldest first.
    pub files: Vec<File>,
}

/// One attachment of a message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attachment {
    /// The attached file.
    pub file_id: String,
    /// Its name in the message's workspace (numbered when another attachment had the name).
    pub name: String,
    /// Where the code sees it: `/mnt/data/<name>`.
    pub path: String,
    /// `attached`, or `file_deleted` once the file was deleted (no run sees it any more).
    #[schema(value_type = String, pattern = "^(attached|file_deleted)$")]
    pub state: &'static str,
    /// The file while it is live.
    pub file: Option<File>,
}

/// `GET /v1/messages/{message_id}/attachments`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageAttachments {
    /// The message's attachments, oldest first.
    pub attachments: Vec<Attachment>,
}

/// `GET /v1/chats/{chat_id}/files`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatFiles {
    /// The chat.
    pub chat_id: String,
    /// How many files in all.
    pub total_files: usize,
    /// The files, grouped by message, each group oldest first.
    pub messages: BTreeMap<String, Vec<File>>,
}

/// `POST /v1/messages/{message_id}/render`, both ways.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderText {
    /// The text.
    pub text: String,
}

/// Text output of a streamed run (`stdout` and `stderr` events).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputEvent {
    /// The output, host paths translated.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_is_the_lower_case_extension() {
        assert_eq!(format_of("Report.XLSX"), "xlsx");
        assert_eq!(format_of("archive.tar.gz"), "gz");
        assert_eq!(format_of("README"), "");
        assert_eq!(format_of(".env"), "");
    }
}
