//! The reaper: applies the retention policy (`[retention]` in the configuration).
//!
//! One pass, in this order:
//!
//! 1. containers: a message's container goes after `container_idle` without a run, and any
//!    container of this instance that no message owns goes at once;
//! 2. workspaces: a message's folder goes after `workspace_idle` without a run, then the least
//!    recently used ones go until all of them fit in `max_workspace_bytes`, then, while the
//!    disk has less free space than `min_free_disk` (the watermark), the least recently used
//!    idle ones go early; a folder of a message another instance holds goes at once (it is
//!    a stale copy), and so does, in a pass over every tenant, a folder no message names (its
//!    chat was deleted through another instance);
//! 3. files: files older than `file_ttl` are deleted, and the bytes of files deleted more than
//!    `deleted_file_grace` ago are purged with their rows (the bytes first: a purge a crash
//!    cut off after them completes on the next pass);
//! 4. orphan blobs: bytes no catalog row names, older than `orphan_blob_grace`, are swept
//!    (see `orphans.rs`); only a pass over every tenant sweeps, since such bytes have no
//!    known tenant.
//!
//! `workspace_idle` and `file_ttl` are each tenant's own where `[tenants.<tenant>]` overrides
//! them.
//!
//! A workspace some run holds (its lock is taken) is never touched: the pass skips it and the
//! next pass looks again. With `dry_run` the pass reports what it would remove and changes
//! nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::{Result, Supervisor};
use crate::catalog::{self, MessageRecord};
use crate::error::IoError;
use crate::ids::{FileId, TenantId};
use crate::workspace::Workspace;

/// What one pass removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReapReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Workspace ids whose containers were removed.
    pub containers: Vec<String>,
    /// Workspace ids whose folders were removed.
    pub workspaces: Vec<String>,
    /// Ids of files deleted because they outlived `file_ttl`.
    pub files_expired: Vec<FileId>,
    /// Ids of deleted files whose bytes were purged.
    pub files_purged: Vec<FileId>,
    /// Blobs no catalog row names that were swept: their keys, or the staging files
    /// (`<key>#<n>`) of uploads that never completed.
    pub blobs_swept: Vec<String>,
    /// When another instance holds the reaper's lease: that instance, which expires, purges
    /// and sweeps the catalog's files, so this pass left them alone.
    pub files_left_to: Option<String>,
    /// Bytes freed on disk (or, for a remote blob store, the size of purged objects): what
    /// removing the workspace folders released (see `Workspace::bytes`) plus the purged
    /// files whose last link went, plus the swept blobs.
    pub bytes_freed: u64,
}

/// The time `age` ago, in the catalog's format.
fn ago(age: Duration) -> String {
    let age = time::Duration::try_from(age).unwrap_or(time::Duration::MAX);
    let at = time::OffsetDateTime::now_utc()
        .checked_sub(age)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    catalog::format_time(at)
}

impl Supervisor {
    /// Runs one pass of the reaper over every tenant: what the server's periodic reaper does.
    pub async fn reap(&self, dry_run: bool) -> Result<ReapReport> {
        self.reap_within(dry_run, None).await
    }

    /// Runs one pass of the reaper over one tenant's workspaces, containers and files, or
    /// over every tenant's (`None`). A pass over one tenant applies the idle and file rules
    /// to it alone; containers no message owns and the disk quota (`max_workspace_bytes`, a
    /// rule over every tenant's workspaces together) are left to a pass over every tenant, so
    /// that one tenant's operator never removes, nor learns of, what another tenant holds.
    pub async fn reap_within(
        &self,
        dry_run: bool,
        tenant: Option<&TenantId>,
    ) -> Result<ReapReport> {
        reap_pass(self, dry_run, tenant).await
    }
}

/// The pass behind [`Supervisor::reap_within`], in the order the module's doc gives.
async fn reap_pass(
    supervisor: &Supervisor,
    dry_run: bool,
    tenant: Option<&TenantId>,
) -> Result<ReapReport> {
    let mut report = ReapReport {
        dry_run,
        ..ReapReport::default()
    };
    let in_scope = |owner: &TenantId| tenant.is_none_or(|tenant| owner == tenant);
    let messages: Vec<MessageRecord> = supervisor
        .catalog()
        .messages()
        .all()
        .await?
        .into_iter()
        .filter(|message| in_scope(&message.tenant))
        .collect();
    let running = reap_containers(supervisor, &messages, tenant.is_none(), &mut report).await?;
    if tenant.is_none() {
        reap_orphan_workspaces(supervisor, &messages, &running, &mut report).await?;
    }
    reap_workspaces(
        supervisor,
        &messages,
        &running,
        tenant.is_none(),
        &mut report,
    )
    .await?;
    // The catalog's files are every instance's. A pass over every tenant that changes things
    // expires, purges and sweeps them only while this instance holds the reaper's lease, so
    // that instances sharing one catalog never do it twice at once; a dry pass and one
    // operator's pass over their own tenant (both idempotent) need no lease.
    let holder = match tenant {
        None if !dry_run => supervisor.take_reaper_lease().await?,
        _ => None,
    };
    if let Some(holder) = holder {
        report.files_left_to = Some(holder);
    } else {
        reap_files(supervisor, &in_scope, &mut report).await?;
        if tenant.is_none() {
            reap_orphan_blobs(supervisor, &mut report).await?;
        }
    }
    if tenant.is_none() && !dry_run {
        // This node's copies of a remote store's attachments: no tenant's alone.
        let cache = supervisor.blobs().reap_cache().await?;
        report.bytes_freed += cache.bytes_freed;
    }
    Ok(report)
}

/// The lease whose holder does the global part of the reaper.
const REAPER_LEASE: &str = "reaper";

impl Supervisor {
    /// Takes or renews the reaper's lease for this instance, for three reaper intervals (at
    /// least five minutes): held while this instance reaps, taken over by another once it
    /// stops. Returns `None` when this instance holds it, else the instance that does.
    async fn take_reaper_lease(&self) -> Result<Option<String>> {
        let interval = self.config().retention.reap_interval;
        let term = (interval * 3).max(Duration::from_secs(300));
        let until = catalog::format_time(
            time::OffsetDateTime::now_utc() + time::Duration::try_from(term).unwrap_or_default(),
        );
        let leases = self.catalog().leases();
        let now = catalog::now();
        if leases
            .acquire(REAPER_LEASE, self.instance(), (&now, &until))
            .await?
        {
            return Ok(None);
        }
        let holder = leases.holder(REAPER_LEASE).await?;
        Ok(Some(holder.map_or_else(
            || "another instance".to_owned(),
            |(holder, _)| holder,
        )))
    }
}

/// Sweeps the blobs no catalog row names (see `orphans.rs`), after the purge of deleted
/// files so that it never races the purge for the same bytes.
async fn reap_orphan_blobs(supervisor: &Supervisor, report: &mut ReapReport) -> Result<()> {
    let swept = supervisor.sweep_orphan_blobs(report.dry_run).await?;
    report.blobs_swept = swept.locations;
    report.bytes_freed += swept.bytes;
    Ok(())
}

/// Removes idle and orphaned containers; returns the workspaces whose containers remain.
async fn reap_containers(
    supervisor: &Supervisor,
    messages: &[MessageRecord],
    orphans_too: bool,
    report: &mut ReapReport,
) -> Result<HashSet<String>> {
    let mut remaining = HashSet::new();
    let policy = &supervisor.config().retention;
    let idle_before = ago(policy.container_idle);
    let by_workspace: HashMap<&str, &MessageRecord> = messages
        .iter()
        .map(|message| (message.workspace_id.as_str(), message))
        .collect();
    for sandbox in supervisor.runtime().list().await? {
        // A warm-pool slot belongs to no message yet, and is not idle: it waits for one.
        if sandbox.instance.as_deref() != Some(supervisor.instance())
            || supervisor.workspaces().is_pool_slot(&sandbox.workspace_id)
        {
            continue;
        }
        let idle = match by_workspace.get(sandbox.workspace_id.as_str()) {
            Some(message) => {
                message.last_used_at < idle_before || held_elsewhere(supervisor, message)
            }
            // A pass over every tenant knows every message, so this container has no owner;
            // a scoped pass does not know whose it is and leaves it alone.
            None if orphans_too => true,
            None => continue,
        };
        let workspace = supervisor.workspaces().get(&sandbox.workspace_id)?;
        let lock = if idle { workspace.try_lock()? } else { None };
        let Some(_lock) = lock else {
            remaining.insert(sandbox.workspace_id);
            continue;
        };
        if !report.dry_run {
            supervisor.runtime().release(&sandbox.workspace_id).await?;
        }
        report.containers.push(sandbox.workspace_id);
    }
    Ok(remaining)
}

async fn reap_workspaces(
    supervisor: &Supervisor,
    messages: &[MessageRecord],
    running: &HashSet<String>,
    quota_too: bool,
    report: &mut ReapReport,
) -> Result<()> {
    let config = supervisor.config();
    let policy = &config.retention;
    // Each tenant's own idle time, which `[tenants.<tenant>]` may override.
    let mut idle_before: HashMap<&TenantId, String> = HashMap::new();
    // Least recently used first: `messages` comes sorted that way. Sizes are walked only when
    // a quota needs them, or for a workspace that goes anyway.
    let limit = policy
        .max_workspace_bytes
        .filter(|_| quota_too)
        .map(|limit| limit.as_u64());
    let mut present = Vec::new();
    for message in messages {
        let workspace = supervisor.workspaces().get(message.workspace_id.as_str())?;
        if workspace.exists() {
            let bytes = limit.map(|_| workspace.bytes());
            present.push((message, workspace, bytes));
        }
    }
    let mut total: u64 = present.iter().filter_map(|(_, _, bytes)| *bytes).sum();
    let mut kept = Vec::new();
    for (message, workspace, bytes) in present {
        let cutoff = idle_before
            .entry(&message.tenant)
            .or_insert_with(|| ago(config.retention_for(message.tenant.as_str()).workspace_idle));
        let expired = message.last_used_at < *cutoff || held_elsewhere(supervisor, message);
        let over_quota = limit.is_some_and(|limit| total > limit);
        if !expired && !over_quota {
            kept.push(workspace);
            continue;
        }
        let Some(_lock) = workspace.try_lock()? else {
            continue;
        };
        let bytes = bytes.unwrap_or_else(|| workspace.bytes());
        remove_workspace(supervisor, &workspace, running, report).await?;
        report.bytes_freed += bytes;
        total = total.saturating_sub(bytes);
    }
    if quota_too {
        reap_below_watermark(supervisor, kept, running, report).await?;
    }
    Ok(())
}

/// Removes the workspace folders on this disk that no message names: a chat deleted through
/// another instance forgot its messages there, and only this instance can remove their
/// folders. Warm slots have no message yet and stay, as does a folder whose lock is held (a
/// run that is about to name it).
async fn reap_orphan_workspaces(
    supervisor: &Supervisor,
    messages: &[MessageRecord],
    running: &HashSet<String>,
    report: &mut ReapReport,
) -> Result<()> {
    let named: HashSet<&str> = messages
        .iter()
        .map(|message| message.workspace_id.as_str())
        .collect();
    for id in supervisor.workspaces().ids()? {
        if named.contains(id.as_str()) || supervisor.workspaces().is_pool_slot(&id) {
            continue;
        }
        let workspace = supervisor.workspaces().get(&id)?;
        let Some(_lock) = workspace.try_lock()? else {
            continue;
        };
        // A message may have named it since the list was read: look again under the lock.
        if supervisor
            .catalog()
            .messages()
            .by_workspace(&crate::ids::WorkspaceId::from_stored(id.as_str()))
            .await?
            .is_some()
        {
            continue;
        }
        let bytes = workspace.bytes();
        remove_workspace(supervisor, &workspace, running, report).await?;
        report.bytes_freed += bytes;
    }
    Ok(())
}

/// Whether another instance holds `message`: a copy of its workspace here is stale (this
/// instance held it before it was taken over) and goes at once, so that it is never mistaken
/// for the message's workspace should the message come back here.
fn held_elsewhere(supervisor: &Supervisor, message: &MessageRecord) -> bool {
    message
        .node
        .as_deref()
        .is_some_and(|node| node != supervisor.instance())
}

/// Removes a workspace the pass holds the lock of (or, dry, only reports it).
async fn remove_workspace(
    supervisor: &Supervisor,
    workspace: &Workspace,
    running: &HashSet<String>,
    report: &mut ReapReport,
) -> Result<()> {
    if !report.dry_run {
        supervisor.remove_workspace_locked(workspace).await?;
    }
    if running.contains(&workspace.id) {
        report.containers.push(workspace.id.clone());
    }
    report.workspaces.push(workspace.id.clone());
    Ok(())
}

/// The disk watermark (`min_free_disk`): while the file system that holds the workspaces has
/// less free space than that, idle workspaces go, least recently used first (`kept` comes in
/// that order). Free space is measured again after each removal, since what a removal frees
/// depends on what else holds the blocks; a dry pass counts each workspace's bytes instead.
async fn reap_below_watermark(
    supervisor: &Supervisor,
    kept: Vec<Workspace>,
    running: &HashSet<String>,
    report: &mut ReapReport,
) -> Result<()> {
    let Some(watermark) = supervisor.config().retention.min_free_disk else {
        return Ok(());
    };
    let folder = supervisor.config().workspaces_dir();
    let mut free = free_bytes(&folder)?;
    for workspace in kept {
        if free >= watermark.as_u64() {
            break;
        }
        let Some(_lock) = workspace.try_lock()? else {
            continue;
        };
        let bytes = workspace.bytes();
        remove_workspace(supervisor, &workspace, running, report).await?;
        report.bytes_freed += bytes;
        free = if report.dry_run {
            free.saturating_add(bytes)
        } else {
            free_bytes(&folder)?
        };
    }
    if free < watermark.as_u64() {
        tracing::warn!(free, watermark = watermark.as_u64(), folder = %folder.display(),
            "the workspaces' disk is below its watermark and no idle workspace is left to remove");
    }
    Ok(())
}

/// The bytes an unprivileged writer could still put on the file system that holds `folder`.
fn free_bytes(folder: &std::path::Path) -> Result<u64> {
    let stats = rustix::fs::statvfs(folder).map_err(|errno| IoError {
        action: "measure the free space of",
        path: folder.to_path_buf(),
        source: errno.into(),
    })?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

async fn reap_files(
    supervisor: &Supervisor,
    in_scope: &impl Fn(&TenantId) -> bool,
    report: &mut ReapReport,
) -> Result<()> {
    let config = supervisor.config();
    let policy = &config.retention;
    let files = supervisor.catalog().files();
    // Files older than the shortest time to live any tenant has are looked at, and each is
    // judged by its own tenant's (`[tenants.<tenant>] file_ttl` may override the default).
    if let Some(shortest) = config.shortest_file_ttl() {
        let now = catalog::now();
        let mut expired_before: HashMap<TenantId, Option<String>> = HashMap::new();
        for file in files.created_before(&ago(shortest)).await? {
            if !in_scope(&file.tenant) {
                continue;
            }
            let cutoff = expired_before
                .entry(file.tenant.clone())
                .or_insert_with(|| config.retention_for(file.tenant.as_str()).file_ttl.map(ago));
            // A tenant that keeps its files for good has no cutoff.
            if cutoff
                .as_ref()
                .is_none_or(|cutoff| file.created_at >= *cutoff)
            {
                continue;
            }
            if report.dry_run {
                report.files_expired.push(file.id);
            } else if files.expire(&file.id, &now).await? {
                // An expired file is a deleted one: out of every workspace at once.
                supervisor.unplace(&file.tenant, &file.id).await?;
                report.files_expired.push(file.id);
            }
        }
    }
    for file in files
        .deleted_before(&ago(policy.deleted_file_grace))
        .await?
    {
        if !in_scope(&file.tenant) {
            continue;
        }
        let freed = if report.dry_run {
            freed_by_purge(supervisor, &file, true).await?
        } else {
            // Deletes before this version left the file in workspaces; so may a failed one.
            supervisor.unplace(&file.tenant, &file.id).await?;
            let freed = freed_by_purge(supervisor, &file, false).await?;
            if let Err(error) = supervisor.blobs().delete(&file.blob_key).await {
                // The row stays, so the next pass tries again; nothing was freed.
                tracing::warn!(key = %file.blob_key, file = %file.id, %error,
                    "could not purge the bytes of a deleted file; the next pass retries");
                continue;
            }
            files.purge(&file.id).await?;
            freed
        };
        report.bytes_freed += freed;
        report.files_purged.push(file.id);
    }
    Ok(())
}

/// The bytes deleting a file's blob releases. For the local back end, that is the blocks of
/// its file once no other name holds it: `dry_run` discounts the workspace links a real pass
/// removes first, and whatever other link remains means nothing is freed. For other back
/// ends, the object's size.
async fn freed_by_purge(
    supervisor: &Supervisor,
    file: &catalog::FileRecord,
    dry_run: bool,
) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = supervisor.blobs().local_path(&file.blob_key) else {
        return Ok(u64::try_from(file.size).unwrap_or(0));
    };
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.is_file() => metadata,
        // Already gone, or not a file the purge can delete: nothing to free.
        _ => return Ok(0),
    };
    let inode = (metadata.dev(), metadata.ino());
    let placed = if dry_run {
        supervisor
            .placed_inodes(&file.tenant, &file.id)
            .await?
            .into_iter()
            .filter(|placed| *placed == inode)
            .count() as u64
    } else {
        0
    };
    Ok(if metadata.nlink().saturating_sub(placed) <= 1 {
        metadata.blocks() * 512
    } else {
        0
    })
}
