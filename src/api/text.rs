//! What a model reads: `GET /v1/files/{file_id}/text`, a file's bounded text, and
//! `GET /v1/messages/{message_id}/context`, a message's files described for a prompt. Their
//! own file because they answer the model's questions rather than manage files: the
//! supervisor does the reading and parsing (`supervisor/text.rs`, `supervisor/context.rs`).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::UserCaller;
use super::error::{ApiResult, ErrorBody};
use crate::ids::{FileId, MessageId};
use crate::supervisor::{ContextFile, FileText, MessageContext};

/// How much text to answer with.
#[derive(Debug, Deserialize, IntoParams)]
pub struct TextQuery {
    /// The most bytes of text: 1 to 262144, 16384 when not given.
    #[param(minimum = 1, maximum = 262144)]
    max_bytes: Option<u64>,
}

/// A file's text, bounded.
#[derive(Debug, Serialize, ToSchema)]
pub struct TextView {
    /// The text: at most `max_bytes` bytes, cut on a character boundary.
    pub text: String,
    /// Whether the file has more text than this.
    pub truncated: bool,
    /// Always `utf-8` (bytes that are not UTF-8 are replaced).
    pub encoding: &'static str,
}

impl From<FileText> for TextView {
    fn from(text: FileText) -> Self {
        Self {
            text: text.text,
            truncated: text.truncated,
            encoding: text.encoding,
        }
    }
}

/// A message's files as a model should be told of them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Context {
    /// A paragraph for the prompt that lists the files (and the first rows of tables).
    pub text: String,
    /// The files (attachments and generated), oldest first, at most 50.
    pub files: Vec<ContextEntry>,
}

/// One file of a message's context.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContextEntry {
    /// The path the code reads it by.
    pub path: String,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its MIME type.
    pub content_type: String,
    /// For csv, tsv and xlsx files: the header and first 5 rows as CSV (at most 4 KiB).
    pub preview: Option<String>,
}

impl From<MessageContext> for Context {
    fn from(context: MessageContext) -> Self {
        Self {
            text: context.text,
            files: context.files.into_iter().map(ContextEntry::from).collect(),
        }
    }
}

impl From<ContextFile> for ContextEntry {
    fn from(file: ContextFile) -> Self {
        Self {
            path: file.path,
            name: file.name,
            size: file.size,
            content_type: file.content_type,
            preview: file.preview,
        }
    }
}

/// A file's text for a model's context: text files as UTF-8, xlsx as CSV per sheet, PDF as
/// its text.
#[utoipa::path(
    get,
    path = "/v1/files/{file_id}/text",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("file_id" = String, Path, description = "The file"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
        TextQuery,
    ),
    responses(
        (status = 200, body = TextView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 415, description = "A type without a text view, or a file that cannot be parsed or is too large to", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn file_text(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(file_id): Path<FileId>,
    Query(query): Query<TextQuery>,
) -> ApiResult<Json<TextView>> {
    let text = state
        .supervisor
        .file_text(&owner, &file_id, query.max_bytes)
        .await?;
    Ok(Json(text.into()))
}

/// What a model should be told about a message's files: paths, sizes, types, the first
/// rows of tables, and a paragraph for the prompt.
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}/context",
    tag = "listings",
    security(("bearer" = [])),
    params(
        ("message_id" = String, Path, description = "The message", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    responses(
        (status = 200, body = Context),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn message_context(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(message_id): Path<String>,
) -> ApiResult<Json<Context>> {
    let message_id = MessageId::parse(message_id)?;
    let context = state
        .supervisor
        .message_context(&owner, &message_id)
        .await?;
    Ok(Json(context.into()))
}
