//! The operators' JSON objects (admin routes) and a user's usage: workspaces, reaper
//! reports, stored bytes, the retention policy and quotas in force.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{Config, QuotaConfig, TenantRetention};
use crate::supervisor::{FileUsage, ReapReport, Usage, WorkspaceOverview};

/// One workspace in `GET /v1/admin/workspaces`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceInfo {
    /// The workspace id.
    pub workspace_id: String,
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user_id: String,
    /// The chat.
    pub chat_id: String,
    /// The message.
    pub message_id: String,
    /// Bytes the folder takes.
    pub bytes: u64,
    /// Whether the folder exists.
    pub exists: bool,
    /// When a run last used it.
    pub last_used_at: String,
    /// `running`, `stopped` or `none`.
    #[schema(value_type = String)]
    pub container: &'static str,
    /// The instance that holds the message (`GET /v1/admin/nodes`); `bytes`, `exists` and
    /// `container` are what the instance that answered sees on its own disk and engine.
    pub node: Option<String>,
}

/// `GET /v1/admin/workspaces`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceList {
    /// Every workspace, least recently used first.
    pub workspaces: Vec<WorkspaceInfo>,
}

/// One instance in `GET /v1/admin/nodes`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeInfo {
    /// Its instance id.
    pub id: String,
    /// The URL the other instances reach it at.
    pub url: String,
    /// When it started.
    pub started_at: String,
    /// Its last heartbeat.
    pub heartbeat_at: String,
    /// Whether the heartbeat is fresh (within `cluster.node_timeout`); the messages of an
    /// instance that is not are taken over by the next instance asked for them.
    pub alive: bool,
    /// Whether it is the instance that answered.
    pub this: bool,
}

/// `GET /v1/admin/nodes`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeList {
    /// Every instance with a row in the catalog, by id.
    pub nodes: Vec<NodeInfo>,
}

/// `POST /v1/admin/gc`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Report what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a reaper pass removed (or would remove).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GcReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Workspaces whose containers were removed.
    pub containers: Vec<String>,
    /// Workspaces whose folders were removed.
    pub workspaces: Vec<String>,
    /// Files deleted for outliving the file retention.
    pub files_expired: Vec<String>,
    /// Deleted files whose bytes were purged.
    pub files_purged: Vec<String>,
    /// Blobs no file names (left by a crash) that were swept: their keys, or an unfinished
    /// upload's staging file (`<key>#<n>`). Only a pass over every tenant sweeps.
    pub blobs_swept: Vec<String>,
    /// Present when another instance sharing the catalog holds the reaper's lease: that
    /// instance expires, purges and sweeps files, so this pass left them to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_left_to: Option<String>,
    /// Bytes freed.
    pub bytes_freed: u64,
}

impl From<Vec<WorkspaceOverview>> for WorkspaceList {
    fn from(overview: Vec<WorkspaceOverview>) -> Self {
        Self {
            workspaces: overview
                .into_iter()
                .map(|workspace| WorkspaceInfo {
                    workspace_id: workspace.message.workspace_id.into(),
                    tenant: workspace.message.tenant.into(),
                    user_id: workspace.message.user_id.into(),
                    chat_id: workspace.message.chat_id.into(),
                    message_id: workspace.message.message_id.into(),
                    bytes: workspace.bytes,
                    exists: workspace.exists,
                    last_used_at: workspace.message.last_used_at,
                    container: workspace.container.into(),
                    node: workspace.message.node,
                })
                .collect(),
        }
    }
}

impl From<ReapReport> for GcReport {
    fn from(report: ReapReport) -> Self {
        Self {
            dry_run: report.dry_run,
            containers: report.containers,
            workspaces: report.workspaces,
            files_expired: report.files_expired.into_iter().map(String::from).collect(),
            files_purged: report.files_purged.into_iter().map(String::from).collect(),
            blobs_swept: report.blobs_swept,
            files_left_to: report.files_left_to,
            bytes_freed: report.bytes_freed,
        }
    }
}

/// One user's stored files in `GET /v1/admin/files`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileUsageInfo {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user_id: String,
    /// How many live files the user has.
    pub files: u64,
    /// The bytes they hold together.
    pub bytes: u64,
}

/// `GET /v1/admin/files`: live files and their bytes per user.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileUsageList {
    /// One entry per (tenant, user) with live files, ordered by tenant and user.
    pub users: Vec<FileUsageInfo>,
    /// Live files of them all.
    pub total_files: u64,
    /// Bytes of them all.
    pub total_bytes: u64,
}

impl From<Vec<FileUsage>> for FileUsageList {
    fn from(usage: Vec<FileUsage>) -> Self {
        let users: Vec<FileUsageInfo> = usage
            .into_iter()
            .map(|user| FileUsageInfo {
                tenant: user.tenant.into(),
                user_id: user.user_id.into(),
                files: u64::try_from(user.files).unwrap_or(0),
                bytes: u64::try_from(user.bytes).unwrap_or(0),
            })
            .collect();
        Self {
            total_files: users.iter().map(|user| user.files).sum(),
            total_bytes: users.iter().map(|user| user.bytes).sum(),
            users,
        }
    }
}

/// `GET /v1/admin/retention`: the policy in force. A tenant's operator sees the values in
/// force for their tenant; a global operator sees the defaults and, under `tenants`, every
/// tenant's overrides.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetentionPolicy {
    /// Seconds a container may sit idle.
    pub container_idle_secs: u64,
    /// Seconds a workspace folder may sit idle.
    pub workspace_idle_secs: u64,
    /// Seconds files are kept; `null` keeps them for good.
    pub file_ttl_secs: Option<u64>,
    /// Seconds between deleting a file and purging its bytes.
    pub deleted_file_grace_secs: u64,
    /// Bytes all workspaces may take; `null` is no limit.
    pub max_workspace_bytes: Option<u64>,
    /// Free bytes the workspaces' disk must keep; below it idle workspaces go early, least
    /// recently used first. `null` is no watermark.
    pub min_free_disk_bytes: Option<u64>,
    /// Seconds between reaper passes.
    pub reap_interval_secs: u64,
    /// Seconds a blob no file names is kept before the sweep deletes it.
    pub orphan_blob_grace_secs: u64,
    /// The quotas in force.
    pub quotas: Quotas,
    /// Per tenant, the retention times and quotas in force where they differ from the
    /// defaults (a global operator only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<BTreeMap<String, TenantPolicy>>,
}

/// Quotas in bytes; `null` is no limit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Quotas {
    /// Bytes of live files one user may keep.
    pub user_stored_bytes: Option<u64>,
    /// Bytes of live files one tenant may keep.
    pub tenant_stored_bytes: Option<u64>,
    /// Bytes one user's workspaces may take on disk.
    pub user_workspace_bytes: Option<u64>,
    /// Bytes one tenant's workspaces may take on disk.
    pub tenant_workspace_bytes: Option<u64>,
}

impl From<QuotaConfig> for Quotas {
    fn from(quotas: QuotaConfig) -> Self {
        let bytes = |value: Option<bytesize::ByteSize>| value.map(|bytes| bytes.as_u64());
        Self {
            user_stored_bytes: bytes(quotas.user_stored_bytes),
            tenant_stored_bytes: bytes(quotas.tenant_stored_bytes),
            user_workspace_bytes: bytes(quotas.user_workspace_bytes),
            tenant_workspace_bytes: bytes(quotas.tenant_workspace_bytes),
        }
    }
}

/// One tenant's retention times and quotas, as in force for it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantPolicy {
    /// Seconds its workspace folders may sit idle.
    pub workspace_idle_secs: u64,
    /// Seconds its files are kept; `null` keeps them for good.
    pub file_ttl_secs: Option<u64>,
    /// Its quotas.
    pub quotas: Quotas,
}

impl RetentionPolicy {
    /// The policy `config` puts in force for `tenant`, or (`None`) the defaults with every
    /// tenant's overrides.
    pub fn of(config: &Config, tenant: Option<&str>) -> Self {
        let policy = &config.retention;
        let (retention, quotas) = match tenant {
            Some(tenant) => (config.retention_for(tenant), config.quotas_for(tenant)),
            None => (
                TenantRetention {
                    file_ttl: policy.file_ttl,
                    workspace_idle: policy.workspace_idle,
                },
                config.quotas,
            ),
        };
        let tenants = tenant.is_none().then(|| {
            config
                .tenants
                .keys()
                .map(|name| {
                    let retention = config.retention_for(name);
                    let policy = TenantPolicy {
                        workspace_idle_secs: retention.workspace_idle.as_secs(),
                        file_ttl_secs: retention.file_ttl.map(|ttl| ttl.as_secs()),
                        quotas: config.quotas_for(name).into(),
                    };
                    (name.clone(), policy)
                })
                .collect()
        });
        Self {
            container_idle_secs: policy.container_idle.as_secs(),
            workspace_idle_secs: retention.workspace_idle.as_secs(),
            file_ttl_secs: retention.file_ttl.map(|ttl| ttl.as_secs()),
            deleted_file_grace_secs: policy.deleted_file_grace.as_secs(),
            max_workspace_bytes: policy.max_workspace_bytes.map(|bytes| bytes.as_u64()),
            min_free_disk_bytes: policy.min_free_disk.map(|bytes| bytes.as_u64()),
            reap_interval_secs: policy.reap_interval.as_secs(),
            orphan_blob_grace_secs: policy.orphan_blob_grace.as_secs(),
            quotas: quotas.into(),
            tenants,
        }
    }
}

/// `GET /v1/usage`: what the user has stored and holds on disk, against their quotas.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageReport {
    /// Bytes of the user's live files.
    pub stored_bytes: u64,
    /// The most they may keep; `null` is no limit.
    pub stored_limit: Option<u64>,
    /// Bytes of their tenant's live files, theirs included.
    pub tenant_stored_bytes: u64,
    /// The most the tenant may keep; `null` is no limit.
    pub tenant_stored_limit: Option<u64>,
    /// Bytes the user's workspaces take on disk.
    pub workspace_bytes: u64,
    /// The most they may take; `null` is no limit.
    pub workspace_limit: Option<u64>,
}

impl From<Usage> for UsageReport {
    fn from(usage: Usage) -> Self {
        Self {
            stored_bytes: usage.stored_bytes,
            stored_limit: usage.stored_limit,
            tenant_stored_bytes: usage.tenant_stored_bytes,
            tenant_stored_limit: usage.tenant_stored_limit,
            workspace_bytes: usage.workspace_bytes,
            workspace_limit: usage.workspace_limit,
        }
    }
}
