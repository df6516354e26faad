//! Listings per message and per chat, link rendering, and workspace deletion.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::UserCaller;
use super::dto::{Attachment, ChatFiles, MessageAttachments, MessageFiles, RenderText};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::runs::json_rejection;
use crate::ids::{ChatId, MessageId};

/// Which files a message listing shows.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// `generated` (the default): what the code wrote; `all` adds the uploads attached to
    /// the message.
    #[param(pattern = "^(generated|all)$")]
    source: Option<String>,
}

/// Files of one message, oldest first.
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}/files",
    tag = "listings",
    security(("bearer" = [])),
    params(
        ("message_id" = String, Path, description = "The message", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
        ListQuery,
    ),
    responses(
        (status = 200, body = MessageFiles),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn message_files(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(message_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<MessageFiles>> {
    let message_id = MessageId::parse(message_id)?;
    let include_uploads = match query.source.as_deref() {
        None | Some("generated") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "source must be generated or all, not {other:?}"
            )));
        }
    };
    let files = state
        .supervisor
        .message_files(&owner, &message_id, include_uploads)
        .await?;
    Ok(Json(MessageFiles {
        message_id: message_id.into(),
        files: files.iter().map(|file| state.file_dto(file)).collect(),
    }))
}

/// The attachments of one message, oldest first, with their state: a deleted file stays
/// listed as `file_deleted`.
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}/attachments",
    tag = "listings",
    security(("bearer" = [])),
    params(
        ("message_id" = String, Path, description = "The message", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    responses(
        (status = 200, body = MessageAttachments),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn message_attachments(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(message_id): Path<String>,
) -> ApiResult<Json<MessageAttachments>> {
    let message_id = MessageId::parse(message_id)?;
    let attachments = state
        .supervisor
        .message_attachments(&owner, &message_id)
        .await?;
    Ok(Json(MessageAttachments {
        attachments: attachments
            .into_iter()
            .map(|(attachment, file)| Attachment {
                path: crate::supervisor::attachment_path(&attachment.name),
                state: if file.is_some() {
                    "attached"
                } else {
                    "file_deleted"
                },
                file: file.as_ref().map(|file| state.file_dto(file)),
                file_id: attachment.file_id.into(),
                name: attachment.name,
            })
            .collect(),
    }))
}

/// Generated files of a whole chat, grouped by message.
#[utoipa::path(
    get,
    path = "/v1/chats/{chat_id}/files",
    tag = "listings",
    security(("bearer" = [])),
    params(
        ("chat_id" = String, Path, description = "The chat", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    responses(
        (status = 200, body = ChatFiles),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn chat_files(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(chat_id): Path<String>,
) -> ApiResult<Json<ChatFiles>> {
    let chat_id = ChatId::parse(chat_id)?;
    let files = state.supervisor.chat_files(&owner, &chat_id).await?;
    let mut messages: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for file in &files {
        let message = file
            .message_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        messages
            .entry(message)
            .or_default()
            .push(state.file_dto(file));
    }
    Ok(Json(ChatFiles {
        chat_id: chat_id.into(),
        total_files: files.len(),
        messages,
    }))
}

/// Turn `sandbox:/mnt/data/<name>` and `/mnt/data/<name>` references to the message's files,
/// and `workspace://<file_id>` references to any live file of the user, into download links.
#[utoipa::path(
    post,
    path = "/v1/messages/{message_id}/render",
    tag = "listings",
    security(("bearer" = [])),
    params(
        ("message_id" = String, Path, description = "The message", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    request_body = RenderText,
    responses(
        (status = 200, body = RenderText),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn render(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(message_id): Path<String>,
    body: Result<Json<RenderText>, JsonRejection>,
) -> ApiResult<Json<RenderText>> {
    let message_id = MessageId::parse(message_id)?;
    let Json(body) = body.map_err(json_rejection)?;
    let text = state
        .supervisor
        .render_links(&owner, &message_id, &body.text, |file| {
            state.download_url(file)
        })
        .await?;
    Ok(Json(RenderText { text }))
}

/// Remove the message's container and workspace folder now; its registered files stay.
#[utoipa::path(
    delete,
    path = "/v1/messages/{message_id}/workspace",
    tag = "listings",
    security(("bearer" = [])),
    params(
        ("message_id" = String, Path, description = "The message", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn delete_workspace(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(message_id): Path<String>,
) -> ApiResult<StatusCode> {
    let message_id = MessageId::parse(message_id)?;
    state
        .supervisor
        .delete_workspace(&owner, &message_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
