//! Quotas: how many bytes a user and their tenant may keep in file storage and hold in
//! workspaces on disk (`[quotas]`, with `[tenants.<tenant>]` overrides).
//!
//! - Stored bytes: every file is recorded through [`Supervisor::record_file`], and the catalog
//!   refuses a file past the quota in the same statement that would insert it, so two
//!   concurrent uploads cannot both take the last room. An upload's stream is also capped at
//!   the room left, so that a file past the quota is cut off while it arrives rather than
//!   stored whole and then refused; its bytes are deleted either way.
//! - Workspace bytes: before a run, [`Supervisor::make_workspace_room`] removes the owner's
//!   (then the tenant's) idle workspaces, least recently used first, until they hold less
//!   than the quota; when the other, busy ones alone reach it, the run is refused. The run's
//!   own workspace is never refused for its own size: the workspaces can overshoot the quota
//!   by one workspace, which its disk cap (`sandbox.disk_size`) bounds.

use super::*;
use crate::catalog::{StoredBytes, StoredQuota};

/// What a user has stored and holds on disk, against the quotas in force for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the user's live files.
    pub stored_bytes: u64,
    /// The most they may keep; `None` is no limit.
    pub stored_limit: Option<u64>,
    /// Bytes of their tenant's live files, theirs included.
    pub tenant_stored_bytes: u64,
    /// The most the tenant may keep.
    pub tenant_stored_limit: Option<u64>,
    /// Bytes the user's workspaces take on disk.
    pub workspace_bytes: u64,
    /// The most they may take.
    pub workspace_limit: Option<u64>,
}

/// A workspace on disk, with the message that owns it and the bytes removing it frees.
struct Held<'a> {
    message: &'a MessageRecord,
    workspace: Workspace,
    bytes: u64,
}

impl Supervisor {
    /// The stored-bytes quota in force for the owners of `tenant`.
    fn stored_quota(&self, tenant: &ids::TenantId) -> StoredQuota {
        let quotas = self.config.quotas_for(tenant.as_str());
        StoredQuota {
            user: quotas.user_stored_bytes.map(|bytes| bytes.as_u64()),
            tenant: quotas.tenant_stored_bytes.map(|bytes| bytes.as_u64()),
        }
    }

    /// Records `file` within its owner's stored quota: the only way a file enters the
    /// catalog. Past the quota it is [`Error::QuotaExceeded`] and nothing is recorded; the
    /// caller deletes the bytes it stored.
    pub(super) async fn record_file(&self, file: &FileRecord) -> Result<()> {
        let quota = self.stored_quota(&file.tenant);
        Ok(self.catalog.files().insert(file, quota).await?)
    }

    /// The bytes `owner` may still store before a quota refuses them; `None` is no limit.
    pub(super) async fn stored_room(&self, owner: &Owner) -> Result<Option<u64>> {
        let quota = self.stored_quota(&owner.tenant);
        if quota == StoredQuota::default() {
            return Ok(None);
        }
        let used = self
            .catalog
            .files()
            .stored_bytes(&owner.tenant, &owner.user)
            .await?;
        let room = |limit: Option<u64>, used: u64| limit.map(|limit| limit.saturating_sub(used));
        Ok(
            match (room(quota.user, used.user), room(quota.tenant, used.tenant)) {
                (Some(user), Some(tenant)) => Some(user.min(tenant)),
                (user, tenant) => user.or(tenant),
            },
        )
    }

    /// What `owner` has stored and holds on disk, against their quotas.
    pub async fn usage(&self, owner: &Owner) -> Result<Usage> {
        let quotas = self.config.quotas_for(owner.tenant.as_str());
        let StoredBytes { user, tenant } = self
            .catalog
            .files()
            .stored_bytes(&owner.tenant, &owner.user)
            .await?;
        let messages = self.catalog.messages().of_tenant(&owner.tenant).await?;
        let mine: Vec<&MessageRecord> = messages
            .iter()
            .filter(|message| message.user_id == owner.user)
            .collect();
        let held = self.held(mine).await?;
        Ok(Usage {
            stored_bytes: user,
            stored_limit: quotas.user_stored_bytes.map(|bytes| bytes.as_u64()),
            tenant_stored_bytes: tenant,
            tenant_stored_limit: quotas.tenant_stored_bytes.map(|bytes| bytes.as_u64()),
            workspace_bytes: held.iter().map(|held| held.bytes).sum(),
            workspace_limit: quotas.user_workspace_bytes.map(|bytes| bytes.as_u64()),
        })
    }

    /// Makes room for a run of `message` under its owner's and their tenant's workspace
    /// quotas: while the workspaces hold the quota or more, idle ones (no run holds their
    /// lock; never `message`'s own) go, least recently used first. When the others, busy,
    /// still hold the quota, the run is refused with [`Error::QuotaExceeded`]. The message's
    /// own workspace does not count against its run: it is bounded by its disk cap, and a
    /// chat must be able to go on in it.
    pub(super) async fn make_workspace_room(&self, message: &MessageRecord) -> Result<()> {
        let quotas = self.config.quotas_for(message.tenant.as_str());
        let limits = [
            (true, quotas.user_workspace_bytes),
            (false, quotas.tenant_workspace_bytes),
        ];
        if limits.iter().all(|(_, limit)| limit.is_none()) {
            return Ok(());
        }
        let messages = self.catalog.messages().of_tenant(&message.tenant).await?;
        // Measured once for both quotas; what the user's pass removes is gone for the tenant's.
        let mut tenant_held = self.held(messages.iter().collect()).await?;
        for (user_only, limit) in limits {
            let Some(limit) = limit.map(|limit| limit.as_u64()) else {
                continue;
            };
            let held: Vec<&Held> = tenant_held
                .iter()
                .filter(|held| !user_only || held.message.user_id == message.user_id)
                .collect();
            let own: u64 = held
                .iter()
                .filter(|held| held.message.workspace_id == message.workspace_id)
                .map(|held| held.bytes)
                .sum();
            let mut others: u64 = held.iter().map(|held| held.bytes).sum::<u64>() - own;
            let mut removed = Vec::new();
            for held in held {
                if others + own < limit {
                    break;
                }
                if held.message.workspace_id == message.workspace_id {
                    continue;
                }
                let Some(_lock) = held.workspace.try_lock()? else {
                    continue;
                };
                self.remove_workspace_locked(&held.workspace).await?;
                tracing::info!(workspace = %held.workspace.id, bytes = held.bytes,
                    "removed an idle workspace to make room under a workspace quota");
                others = others.saturating_sub(held.bytes);
                removed.push(held.workspace.id.clone());
            }
            tenant_held.retain(|held| !removed.contains(&held.workspace.id));
            if others >= limit {
                let whose = if user_only {
                    "your other workspaces"
                } else {
                    "your organisation's other workspaces"
                };
                return Err(Error::QuotaExceeded(format!(
                    "{whose} take {} on disk of the {} they may hold, and none of them is \
                     idle; try again once a run ends, or delete a chat",
                    ByteSize::b(others).display().iec(),
                    ByteSize::b(limit).display().iec()
                )));
            }
        }
        Ok(())
    }

    /// The workspaces of `messages` that are on disk, in the same order, with their bytes
    /// (measured off the async threads: a workspace without its own file system is walked).
    async fn held<'a>(&self, messages: Vec<&'a MessageRecord>) -> Result<Vec<Held<'a>>> {
        let mut workspaces = Vec::with_capacity(messages.len());
        for message in &messages {
            workspaces.push(self.workspaces.get(message.workspace_id.as_str())?);
        }
        let measured = tokio::task::spawn_blocking(move || {
            workspaces
                .into_iter()
                .map(|workspace| {
                    let bytes = workspace.exists().then(|| workspace.bytes());
                    (workspace, bytes)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|error| IoError {
            action: "measure",
            path: self.config.workspaces_dir(),
            source: std::io::Error::other(error),
        })?;
        Ok(messages
            .into_iter()
            .zip(measured)
            .filter_map(|(message, (workspace, bytes))| {
                bytes.map(|bytes| Held {
                    message,
                    workspace,
                    bytes,
                })
            })
            .collect())
    }
}
