//! Operators' routes (admin tokens): the workspaces on this instance, a reaper pass on demand,
//! and the retention policy in force. An admin token acts within its own tenant: it lists and
//! reaps that tenant's workspaces and files alone. Only a token of tenant `*` is global.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;

use super::AppState;
use super::auth::AdminCaller;
use super::dto::{FileUsageList, GcReport, GcRequest, RetentionPolicy, WorkspaceList};
use super::error::{ApiResult, ErrorBody};
use super::runs::json_rejection;

/// Every workspace of the caller's tenant (of every tenant for a global operator), least
/// recently used first.
#[utoipa::path(
    get,
    path = "/v1/admin/workspaces",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = WorkspaceList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub async fn workspaces(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
) -> ApiResult<Json<WorkspaceList>> {
    let overview = state
        .supervisor
        .workspace_overview(admin.tenant_scope())
        .await?;
    Ok(Json(overview.into()))
}

#[utoipa::path(
    post,
    path = "/v1/admin/gc",
    tag = "admin",
    security(("bearer" = [])),
    request_body = GcRequest,
    responses(
        (status = 200, body = GcReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn gc(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    body: Result<Json<GcRequest>, JsonRejection>,
) -> ApiResult<Json<GcReport>> {
    let Json(request) = body.map_err(json_rejection)?;
    let report = state
        .supervisor
        .reap_within(request.dry_run, admin.tenant_scope())
        .await?;
    Ok(Json(report.into()))
}

/// Live files and the bytes they hold, per user of the admin's tenant (or of every tenant).
#[utoipa::path(
    get,
    path = "/v1/admin/files",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = FileUsageList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub async fn files(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
) -> ApiResult<Json<FileUsageList>> {
    let usage = state.supervisor.file_usage(admin.tenant_scope()).await?;
    Ok(Json(usage.into()))
}

#[utoipa::path(
    get,
    path = "/v1/admin/retention",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = RetentionPolicy),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub async fn retention(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Json<RetentionPolicy> {
    let policy = &state.supervisor.config().retention;
    Json(RetentionPolicy {
        container_idle_secs: policy.container_idle.as_secs(),
        workspace_idle_secs: policy.workspace_idle.as_secs(),
        file_ttl_secs: policy.file_ttl.map(|ttl| ttl.as_secs()),
        deleted_file_grace_secs: policy.deleted_file_grace.as_secs(),
        max_workspace_bytes: policy.max_workspace_bytes.map(|bytes| bytes.as_u64()),
        reap_interval_secs: policy.reap_interval.as_secs(),
        orphan_blob_grace_secs: policy.orphan_blob_grace.as_secs(),
    })
}
