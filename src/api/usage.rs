//! `GET /v1/usage`: what the calling user has stored and holds on disk, against the quotas in
//! force for them, so that a chat product can show it before an upload is refused.

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::auth::UserCaller;
use super::dto::UsageReport;
use super::error::{ApiResult, ErrorBody};

/// The user's stored bytes and workspaces' bytes on disk, with their quotas (`null`: none).
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "files",
    security(("bearer" = [])),
    params(("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$")),
    responses(
        (status = 200, body = UsageReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
) -> ApiResult<Json<UsageReport>> {
    Ok(Json(state.supervisor.usage(&owner).await?.into()))
}
