//! Step 2a'': a message's workspace rebuilt from the catalog. A workspace is a folder on one
//! instance's disk; when that instance is gone, another takes the message over
//! (`placement.rs`), and the message's next run there finds no folder. This brings back what
//! its earlier runs registered, the newest file at each path, under the path the code wrote
//! it at; its attachments then come back as on any run (`attach.rs`). What was never
//! registered (scratch files, formats outside the registered list) is lost, and the run says
//! the workspace was restored (`workspace_restored`), so that a chat backend can tell the
//! model.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::catalog::{FileSource, MessageRecord};
use crate::safe_fs;

impl Supervisor {
    /// Whether `message`'s latest run was on another instance: a message without a folder
    /// here then lost its workspace with that instance, and is rebuilt. One that never ran is
    /// new; one whose latest run was here had its folder removed here (deleted on request,
    /// or reaped when idle), and starts afresh as it always has.
    pub(super) async fn ran_elsewhere(&self, message: &MessageRecord) -> Result<bool> {
        let last = self
            .catalog
            .runs()
            .last_instance_of_message(&message.tenant, &message.message_id, &message.created_at)
            .await?;
        Ok(last.is_some_and(|instance| instance != self.instance))
    }

    /// Writes back into `workspace`'s `data/` the newest live file the message's runs
    /// registered at each path. It runs before the attachments are placed, so that a file the
    /// code wrote over an attachment comes back at its path, and the attachment is placed
    /// under a free name, as when the code writes over one. A file that cannot be written back
    /// (the disk cap, a failing blob store) is left out with a warning rather than failing
    /// the run, which can still use the rest. Returns how many files came back.
    pub(super) async fn restore_outputs(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
    ) -> Result<usize> {
        let owner = Owner {
            tenant: message.tenant.clone(),
            user: message.user_id.clone(),
        };
        let mut newest = BTreeMap::new();
        for file in self
            .catalog
            .files()
            .of_message(&owner, &message.message_id, false)
            .await?
            .into_iter()
            // Files of an earlier message with the same id (its chat deleted, its generated
            // files kept) are not this message's.
            .filter(|file| {
                file.source == FileSource::CodeExecution && file.created_at >= message.created_at
            })
        {
            // Oldest first: a later file at the same path replaces an earlier one.
            newest.insert(file.path.clone(), file);
        }
        let (_, sandbox_owner) = sandbox_user(&self.config)?;
        let mut restored = 0;
        for (path, file) in newest {
            let Some(relative) = path
                .strip_prefix(SANDBOX_DATA)
                .and_then(|rest| rest.strip_prefix('/'))
            else {
                continue;
            };
            match self
                .write_back(workspace, relative, &file, sandbox_owner)
                .await
            {
                Ok(()) => restored += 1,
                Err(error) => {
                    tracing::warn!(message = %message.message_id, file = %file.id, %path, %error,
                        "could not restore a registered file into the rebuilt workspace");
                }
            }
        }
        Ok(restored)
    }

    /// Creates `relative` in `data/` (never through a link, never over anything) and streams
    /// the file's bytes into it; a half-written file is removed.
    async fn write_back(
        &self,
        workspace: &Workspace,
        relative: &str,
        file: &FileRecord,
        sandbox_owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let data = workspace.data.clone();
        let target = data.join(relative);
        let relative = relative.to_owned();
        let created = tokio::task::spawn_blocking(move || {
            safe_fs::create_beneath(&data, Path::new(&relative), sandbox_owner)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|created| created)
        .with_path("create", &target)?;
        let mut created = tokio::fs::File::from_std(created);
        if let Err(error) = self.blobs.copy_to(&file.blob_key, &mut created).await {
            drop(created);
            if let Err(removal) = std::fs::remove_file(&target) {
                tracing::warn!(path = %target.display(), error = %removal,
                    "could not remove a half-restored file");
            }
            return Err(error.into());
        }
        Ok(())
    }
}
