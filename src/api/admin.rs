//! Operators' routes (admin tokens): the workspaces on this instance, the instances sharing its
//! catalog, a reaper pass on demand,
//! and the retention policy and quotas in force. An admin token acts within its own tenant: it lists and
//! reaps that tenant's workspaces and files alone. Only a token of tenant `*` is global.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;

use super::AppState;
use super::auth::AdminCaller;
use super::dto::{
    FileUsageList, GcReport, GcRequest, NodeInfo, NodeList, RetentionPolicy, WorkspaceList,
};
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

/// The instances sharing this catalog, with their URLs and heartbeats: a deployment's nodes.
/// Any admin token may read it (it names no tenant's data).
#[utoipa::path(
    get,
    path = "/v1/admin/nodes",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = NodeList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    )
)]
pub async fn nodes(
    State(state): State<AppState>,
    AdminCaller(_admin): AdminCaller,
) -> ApiResult<Json<NodeList>> {
    let this = state.supervisor.instance();
    let nodes = state
        .supervisor
        .nodes()
        .await?
        .into_iter()
        .map(|(node, alive)| NodeInfo {
            this: node.id == this,
            id: node.id,
            url: node.url,
            started_at: node.started_at,
            heartbeat_at: node.heartbeat_at,
            alive,
        })
        .collect();
    Ok(Json(NodeList { nodes }))
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

/// The retention times and quotas in force: for a tenant's operator, those of their tenant;
/// for a global operator, the defaults and every tenant's overrides.
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
    AdminCaller(admin): AdminCaller,
) -> Json<RetentionPolicy> {
    let tenant = admin.tenant_scope().map(|tenant| tenant.as_str());
    Json(RetentionPolicy::of(state.supervisor.config(), tenant))
}
