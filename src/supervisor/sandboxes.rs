//! Housekeeping of sandboxes and workspaces outside the run pipeline: start-up (interrupted
//! runs, orphan sandboxes, sandboxes a crashed process left), shutdown, removal of a
//! message's workspace or sandbox, and the operators' overview.

use super::*;
use crate::ids::TenantId;

impl Supervisor {
    /// Marks the runs this instance left `running` when it last stopped as failed. Call it at
    /// start-up, before accepting runs. Returns how many there were.
    pub async fn fail_interrupted_runs(&self) -> Result<u64> {
        Ok(self
            .catalog
            .runs()
            .fail_interrupted(
                &self.instance,
                "codebox stopped while the run was in progress",
                &catalog::now(),
            )
            .await?)
    }

    /// Removes this instance's sandboxes that no message owns (left by a crash, or by a
    /// catalog that was reset). Returns how many were removed. Sandboxes of other instances
    /// on the same engine are never touched.
    pub async fn reconcile(&self) -> Result<usize> {
        let mut removed = 0;
        for workspace_id in self.own_sandboxes().await? {
            // A warm slot (of this process, or of a server on the same folder) has no
            // message yet; stale slots are removed by `clear_pool`.
            if self.workspaces.is_pool_slot(&workspace_id) {
                continue;
            }
            let owned = self
                .catalog
                .messages()
                .by_workspace(&WorkspaceId::from_stored(workspace_id.as_str()))
                .await?
                .is_some();
            if !owned {
                self.runtime.release(&workspace_id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes this instance's sandboxes that a previous process left, whatever message owns
    /// them, as a graceful stop would have: each one's interpreter answered the process that
    /// started it alone (over the stdio it attached), and the code in it may still be running
    /// and writing to the workspace, so none can serve a run again. The workspaces stay, and
    /// the next run of each message starts a new sandbox on the same files. A sandbox whose
    /// workspace lock is held (a `codebox run` on the same folder is using it) is left alone,
    /// as are warm slots, which `clear_pool` handles. Call it at start-up, before accepting
    /// runs, after `clear_pool` (which hands slots claimed just before a crash to their
    /// messages). Returns how many were removed.
    pub async fn release_stale_sandboxes(&self) -> Result<usize> {
        let mut removed = 0;
        for workspace_id in self.own_sandboxes().await? {
            if self.workspaces.is_pool_slot(&workspace_id) {
                continue;
            }
            let workspace = self.workspaces.get(&workspace_id)?;
            let Some(_lock) = workspace.try_lock()? else {
                continue;
            };
            self.runtime.release(&workspace_id).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes every sandbox of this instance, whatever message owns it; the workspaces stay,
    /// and a later run of a message starts a new sandbox on the same files. Called when a
    /// server stops. Returns how many were removed. Sandboxes of other instances on the same
    /// engine are never touched.
    pub async fn release_own_sandboxes(&self) -> Result<usize> {
        let own = self.own_sandboxes().await?;
        for workspace_id in &own {
            self.runtime.release(workspace_id).await?;
        }
        Ok(own.len())
    }

    /// The workspace ids of this instance's sandboxes on the engine.
    async fn own_sandboxes(&self) -> Result<Vec<String>> {
        Ok(self
            .runtime
            .list()
            .await?
            .into_iter()
            .filter(|sandbox| sandbox.instance.as_deref() == Some(self.instance.as_str()))
            .map(|sandbox| sandbox.workspace_id)
            .collect())
    }

    /// Removes the container and the workspace folder of one of `owner`'s messages now; its
    /// registered files stay. A later run of the message starts from an empty workspace.
    pub async fn delete_workspace(&self, owner: &Owner, message_id: &MessageId) -> Result<()> {
        let message = self.message(owner, message_id).await?;
        self.hold(&message).await?;
        let workspace = self.workspaces.get(message.workspace_id.as_str())?;
        let _lock = lock(&workspace).await?;
        self.remove_workspace_locked(&workspace).await
    }

    /// Removes a workspace whose lock the caller holds: container, folder, and the lock file
    /// last. The message's attachments stay attached: its next run places them again under
    /// the same names.
    pub(crate) async fn remove_workspace_locked(&self, workspace: &Workspace) -> Result<()> {
        self.runtime.release(&workspace.id).await?;
        self.workspaces.remove(&workspace.id)?;
        workspace.remove_lock_file()?;
        Ok(())
    }

    /// The live files and their bytes per (tenant, user), of one tenant or (`None`) of all:
    /// the operators' view of stored files.
    pub async fn file_usage(&self, tenant: Option<&TenantId>) -> Result<Vec<FileUsage>> {
        Ok(self.catalog.files().usage(tenant).await?)
    }

    /// Every workspace this instance knows, of one tenant or (`None`) of all, least recently
    /// used first, with the bytes removing it would free and its container's state: the
    /// operators' view.
    pub async fn workspace_overview(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<WorkspaceOverview>> {
        let containers: HashMap<String, bool> = self
            .runtime
            .list()
            .await?
            .into_iter()
            .filter(|sandbox| sandbox.instance.as_deref() == Some(self.instance.as_str()))
            .map(|sandbox| (sandbox.workspace_id, sandbox.running))
            .collect();
        let mut overview = Vec::new();
        for message in self.catalog.messages().all().await? {
            if tenant.is_some_and(|tenant| message.tenant != *tenant) {
                continue;
            }
            let workspace = self.workspaces.get(message.workspace_id.as_str())?;
            let exists = workspace.exists();
            let container = match containers.get(message.workspace_id.as_str()) {
                Some(true) => ContainerState::Running,
                Some(false) => ContainerState::Stopped,
                None => ContainerState::None,
            };
            overview.push(WorkspaceOverview {
                bytes: if exists { workspace.bytes() } else { 0 },
                exists,
                container,
                message,
            });
        }
        Ok(overview)
    }

    /// Stops and removes the sandbox of `owner`'s message `message_id`, and unmounts its
    /// workspace's file system, keeping the workspace's files: a later run of the message
    /// mounts them again and starts a new sandbox on them. A process that ends after its run
    /// (`codebox run`) calls it so that it leaves neither a container nor a loop device behind.
    pub async fn release_sandbox(&self, owner: &Owner, message_id: &MessageId) -> Result<()> {
        let message = self.message(owner, message_id).await?;
        let workspace = self.workspaces.get(message.workspace_id.as_str())?;
        // Under the lock: a run of the message in another process reads data/ on the host.
        let _lock = lock(&workspace).await?;
        self.runtime.release(message.workspace_id.as_str()).await?;
        let data = workspace.data.clone();
        tokio::task::spawn_blocking(move || crate::workspace::disk::unmount_data(&data))
            .await
            .map_err(|error| IoError {
                action: "unmount",
                path: workspace.data.clone(),
                source: std::io::Error::other(error),
            })??;
        Ok(())
    }
}
