//! The JSON objects of the API (`shared/API.md`): `File` and `Run`. Their field names are a
//! contract with chat backends and never change; fields may be added.

use serde::Serialize;

use crate::catalog::{FileRecord, RunRecord, Truncation};
use crate::supervisor::RunReport;

/// A stored file, as the API shows it.
#[derive(Debug, Clone, Serialize)]
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
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// `upload` or `code_execution`.
    pub source: &'static str,
    /// The chat, if any.
    pub chat_id: Option<String>,
    /// The message, if any.
    pub message_id: Option<String>,
    /// The run that wrote it, if any.
    pub run_id: Option<String>,
    /// The attachment this file replaced, if any.
    pub derived_from: Option<String>,
    /// When it was stored (RFC 3339 UTC).
    pub created_at: String,
    /// A signed download URL; `null` where no server signs one (the CLI).
    pub download_url: Option<String>,
}

impl File {
    /// The API view of a record, with the download URL the caller computed.
    pub fn new(record: &FileRecord, download_url: Option<String>) -> Self {
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            path: record.path.clone(),
            size: record.size,
            content_type: record.content_type.clone(),
            sha256: record.sha256.clone(),
            source: record.source.as_str(),
            chat_id: record.chat_id.clone(),
            message_id: record.message_id.clone(),
            run_id: record.run_id.clone(),
            derived_from: record.derived_from.clone(),
            created_at: record.created_at.clone(),
            download_url,
        }
    }
}

/// A run, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Opaque id.
    pub id: String,
    /// The chat.
    pub chat_id: String,
    /// The message.
    pub message_id: String,
    /// `succeeded`, `failed`, `timed_out`, `killed` (or `running` while it runs).
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
}

impl Run {
    /// The API view of a run and its files; `url_for` gives each file's download URL.
    pub fn new(report: &RunReport, url_for: impl Fn(&FileRecord) -> Option<String>) -> Self {
        let run: &RunRecord = &report.run;
        Self {
            id: run.id.clone(),
            chat_id: run.chat_id.clone(),
            message_id: run.message_id.clone(),
            status: run.status.as_str(),
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
            truncated: run.truncated.clone(),
            created_at: run.created_at.clone(),
        }
    }
}
