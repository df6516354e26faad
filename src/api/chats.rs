//! A chat as a whole: `GET /v1/chats/{chat_id}` (its messages and the uploads linked to it,
//! what a delete dialog offers) and `DELETE /v1/chats/{chat_id}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::UserCaller;
use super::dto::File;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::forward;
use crate::ids::{ChatId, FileId};
use crate::supervisor::{ChatDeleted, ChatDeletion, Placement};

/// `GET /v1/chats/{chat_id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Chat {
    /// The chat.
    pub chat_id: String,
    /// Its messages, oldest first.
    pub messages: Vec<String>,
    /// The uploads linked to it: what deleting the chat would leave unlinked, or delete
    /// when listed in `delete_file_ids`.
    pub linked_files: Vec<File>,
}

/// The body of `DELETE /v1/chats/{chat_id}` (optional: an empty body is all defaults).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatDelete {
    /// Uploads linked to this chat to delete too; any other id is refused (422).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub delete_file_ids: Vec<FileId>,
    /// Keep the files the chat's code generated (by default they are deleted).
    #[serde(default)]
    pub keep_generated: bool,
}

/// What deleting a chat did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatDeleteReport {
    /// Workspaces (and their sandboxes) removed.
    pub workspaces_removed: u64,
    /// Files deleted.
    pub files_deleted: u64,
    /// Files kept (uploads now `unlinked`, and generated files when kept).
    pub files_kept: u64,
}

impl From<ChatDeleted> for ChatDeleteReport {
    fn from(deleted: ChatDeleted) -> Self {
        Self {
            workspaces_removed: deleted.workspaces_removed,
            files_deleted: deleted.files_deleted,
            files_kept: deleted.files_kept,
        }
    }
}

/// A chat's messages and the uploads linked to it.
#[utoipa::path(
    get,
    path = "/v1/chats/{chat_id}",
    tag = "listings",
    security(("bearer" = [])),
    params(
        ("chat_id" = String, Path, description = "The chat", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    responses(
        (status = 200, body = Chat),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn get_chat(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(chat_id): Path<String>,
) -> ApiResult<Json<Chat>> {
    let chat_id = ChatId::parse(chat_id)?;
    let chat = state.supervisor.chat(&owner, &chat_id).await?;
    Ok(Json(Chat {
        chat_id: chat_id.into(),
        messages: chat
            .messages
            .into_iter()
            .map(|message| message.message_id.into())
            .collect(),
        linked_files: chat
            .linked_files
            .iter()
            .map(|file| state.file_dto(file))
            .collect(),
    }))
}

/// Deletes a chat: every container and workspace of it now, its generated files unless
/// `keep_generated`; its uploads stay (`link_state: "unlinked"`) unless listed in
/// `delete_file_ids`.
#[utoipa::path(
    delete,
    path = "/v1/chats/{chat_id}",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("chat_id" = String, Path, description = "The chat", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    request_body(content = Option<ChatDelete>, content_type = "application/json"),
    responses(
        (status = 200, body = ChatDeleteReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn delete_chat(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(chat_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ChatDeleteReport>> {
    let chat_id = ChatId::parse(chat_id)?;
    // The body is optional; when there is one it must be the object above.
    let request: ChatDelete = if body.iter().all(u8::is_ascii_whitespace) {
        ChatDelete::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::invalid(format!("malformed body: {error}")))?
    };
    let deletion = ChatDeletion {
        delete_file_ids: request.delete_file_ids,
        keep_generated: request.keep_generated,
    };
    // Workspaces other instances hold go there first: only the holder can remove them.
    let mut removed_elsewhere = 0;
    for (message_id, placement) in state
        .supervisor
        .chat_held_elsewhere(&owner, &chat_id, &deletion)
        .await?
    {
        if let Placement::Elsewhere { node, url } = placement
            && forward::delete_workspace_at(&state, &headers, &message_id, (&node, &url)).await
        {
            removed_elsewhere += 1;
        }
    }
    let mut deleted = state
        .supervisor
        .delete_chat(&owner, &chat_id, deletion)
        .await?;
    deleted.workspaces_removed += removed_elsewhere;
    Ok(Json(deleted.into()))
}
