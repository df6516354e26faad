//! `/v1/tools`: tools a chat backend hands straight to a model. `GET /v1/tools` lists their
//! definitions (OpenAI function style, JSON Schema parameters); `POST /v1/tools/{name}`
//! carries out the model's call and answers text for the model. The tools themselves, and
//! the reading of the model's arguments, are the supervisor's (`supervisor/tools.rs`); here
//! are only the HTTP parts: authentication, the body, and the limit on runs in flight.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{self, UserCaller};
use super::dto::File;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::runs::json_rejection;
use crate::ids::{ChatId, MessageId};
use crate::supervisor::{Tool, ToolAnswer, ToolCall, content_limit, tool_definitions};

/// The tools a model may call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    /// One entry per tool: `{"type": "function", "function": {"name", "description",
    /// "parameters"}}`, where `parameters` is the JSON Schema of its arguments.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
}

/// A model's call of a tool, as the chat backend passes it on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCallBody {
    /// The chat the message belongs to.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub chat_id: String,
    /// The message the model is answering: runs use its interpreter and its files.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub message_id: String,
    /// The arguments as the model produced them: a JSON object, or a string holding one (as
    /// OpenAI hands them over). Arguments the tool cannot take are answered with content
    /// that says what was wrong, not with an error.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Value,
    /// The most bytes of `content` (default 8192; larger values are taken as 65536; at
    /// least 256).
    #[schema(minimum = 256)]
    pub max_content_bytes: Option<u64>,
}

/// What a tool answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolResult {
    /// Text for the model, at most `max_content_bytes`.
    pub content: String,
    /// The files the answer concerns: those a run wrote, the file read or written, the
    /// files listed.
    pub files: Vec<File>,
}

/// The tools a model may call, as function definitions for a chat model.
#[utoipa::path(
    get,
    path = "/v1/tools",
    tag = "tools",
    security(("bearer" = [])),
    responses(
        (status = 200, body = ToolList),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn list_tools(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<ToolList>> {
    // Any known token, service or admin: the definitions hold nothing of anyone's.
    auth::caller_of(&headers, &state.tokens)?;
    Ok(Json(ToolList {
        tools: tool_definitions(),
    }))
}

/// Carry out a model's call of a tool for a message.
#[utoipa::path(
    post,
    path = "/v1/tools/{name}",
    tag = "tools",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The tool: run_code, list_files, read_file, write_file or delete_file"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    request_body = ToolCallBody,
    responses(
        (status = 200, description = "The tool's answer; arguments it cannot take, a file \
            that does not exist, a run refused, are explained in `content`", body = ToolResult),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such tool, or the message belongs to someone else", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, description = "The sandbox engine is unavailable; see Retry-After", body = ErrorBody),
    )
)]
pub async fn call_tool(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(name): Path<String>,
    body: Result<Json<ToolCallBody>, JsonRejection>,
) -> ApiResult<Json<ToolResult>> {
    let tool = Tool::named(&name)?;
    let Json(body) = body.map_err(json_rejection)?;
    let call = ToolCall {
        chat_id: ChatId::parse(body.chat_id)?,
        message_id: MessageId::parse(body.message_id)?,
        arguments: body.arguments,
        max_content_bytes: content_limit(body.max_content_bytes)?,
    };
    let permit = if tool.runs_code() {
        match state.limiter.admit().await {
            Ok(permit) => Some(permit),
            // A model can wait and call again: a refusal for load is an answer, not an error.
            Err(_) => {
                let answer = ToolAnswer::text(
                    "The code was not run: codebox has too many runs in flight; wait a few \
                     seconds and call run_code again.",
                    call.max_content_bytes,
                );
                return Ok(Json(result(&state, answer)));
            }
        }
    } else {
        None
    };
    // The call goes on in a task of its own: a client that hangs up must not cut a run or
    // an upload in half.
    let supervisor = state.supervisor.clone();
    let answer = tokio::spawn(async move {
        let answer = supervisor.call_tool(&owner, tool, call).await;
        drop(permit);
        answer
    })
    .await
    .map_err(|join_error| ApiError::internal(&join_error))??;
    Ok(Json(result(&state, answer)))
}

fn result(state: &AppState, answer: ToolAnswer) -> ToolResult {
    ToolResult {
        content: answer.content,
        files: answer
            .files
            .iter()
            .map(|file| state.file_dto(file))
            .collect(),
    }
}
