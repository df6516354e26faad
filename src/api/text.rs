//! What a model reads: `GET /v1/files/{file_id}/text`, a file's bounded text. Its own file
//! because it answers the model's questions rather than manages files: the supervisor does
//! the reading and parsing (`supervisor/text.rs`).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::UserCaller;
use super::error::{ApiResult, ErrorBody};
use crate::ids::FileId;
use crate::supervisor::FileText;

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
