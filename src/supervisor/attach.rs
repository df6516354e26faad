//! Step 2a of the pipeline: a message's attachments placed in its workspace, each once, under
//! a name free in the message, and linked into `data/`.

use super::*;

impl Supervisor {
    /// Step 2a: attaches the run's `files` to the message (each under a name free in the
    /// message), then places every live attachment of the message that is not in the
    /// workspace yet (new ones, uploads tied to the message, all of them in a new workspace)
    /// into `inputs/` (a hard link from the local blob store where possible, else a
    /// streamed copy) and links it into `data/`. Returns every placed attachment of the
    /// message, by its name in the workspace.
    pub(super) async fn attach(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
        files: &[FileRecord],
    ) -> Result<Inputs> {
        let attachments = self.catalog.attachments();
        let all = attachments
            .of_message(&message.tenant, &message.message_id)
            .await?;
        let attached: BTreeSet<&FileId> =
            all.iter().map(|attachment| &attachment.file_id).collect();
        for file in files.iter().filter(|file| !attached.contains(&file.id)) {
            self.reserve_name(message, workspace, file).await?;
        }
        let live = attachments
            .live_of_message(&message.tenant, &message.message_id)
            .await?;
        // A file deleted through another instance is still here: it goes before any code runs.
        let live_names: BTreeSet<&str> = live
            .iter()
            .map(|attachment| attachment.name.as_str())
            .collect();
        for gone in all
            .iter()
            .filter(|attachment| !live_names.contains(attachment.name.as_str()))
        {
            if workspace.input_inode(&gone.name).is_some() {
                workspace.remove_input(&gone.name)?;
            }
        }
        let mut inputs = Inputs::new();
        for attachment in live {
            if workspace.input_inode(&attachment.name).is_some() {
                if workspace.placed_file(&attachment.name).as_deref()
                    == Some(attachment.file_id.as_str())
                {
                    inputs.insert(attachment.name, attachment.file_id);
                    continue;
                }
                // Another file's input under this name (deleted through another instance,
                // its name given to this file since), or one placed before inputs were
                // marked: placed again, so that the code reads this file and only this one.
                workspace.remove_input(&attachment.name)?;
            }
            let Some(file) = self
                .catalog
                .files()
                .get_live(&attachment.file_id)
                .await?
                .filter(|file| file.tenant == message.tenant && file.user_id == message.user_id)
            else {
                continue;
            };
            let name = self.free_placement(message, workspace, &attachment).await?;
            self.place_input(workspace, &name, &file).await?;
            workspace.mark_placed(&name, file.id.as_str())?;
            workspace.link_input(&name)?;
            // A delete does not wait for this lock: if the file was deleted while it was being
            // placed, the delete may have looked before it was here, so it goes again now.
            if self.catalog.files().get_live(&file.id).await?.is_none() {
                workspace.remove_input(&name)?;
                continue;
            }
            inputs.insert(name, file.id);
        }
        Ok(inputs)
    }

    /// Attaches `file` to the message under a name free both in the workspace and among the
    /// message's attachments, and returns that name.
    pub(super) async fn reserve_name(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
        file: &FileRecord,
    ) -> Result<String> {
        let attachments = self.catalog.attachments();
        loop {
            let held: BTreeSet<String> = attachments
                .live_of_message(&message.tenant, &message.message_id)
                .await?
                .into_iter()
                .map(|attachment| attachment.name)
                .collect();
            let name = workspace.free_name(&file.name, |name| held.contains(name))?;
            let record = AttachmentRecord {
                tenant: message.tenant.clone(),
                message_id: message.message_id.clone(),
                file_id: file.id.clone(),
                name: name.clone(),
                created_at: catalog::now(),
            };
            if attachments.reserve(&record).await? {
                return Ok(name);
            }
            // Someone else took the name (or attached this very file) meanwhile.
            if let Some(existing) = attachments
                .get(&message.tenant, &message.message_id, &file.id)
                .await?
            {
                return Ok(existing.name);
            }
        }
    }

    /// The name an attachment is placed under: its own, unless the code has since put
    /// something of its own there (then a free one, recorded).
    async fn free_placement(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
        attachment: &AttachmentRecord,
    ) -> Result<String> {
        let attachments = self.catalog.attachments();
        let mut name = attachment.name.clone();
        while workspace.is_taken(&name)? {
            let held: BTreeSet<String> = attachments
                .live_of_message(&message.tenant, &message.message_id)
                .await?
                .into_iter()
                .map(|attachment| attachment.name)
                .collect();
            name = workspace.free_name(&attachment.name, |name| held.contains(name))?;
            if !attachments
                .rename(
                    &message.tenant,
                    &message.message_id,
                    &attachment.file_id,
                    &name,
                )
                .await?
            {
                name = attachment.name.clone();
            }
        }
        Ok(name)
    }

    async fn place_input(
        &self,
        workspace: &Workspace,
        name: &str,
        file: &FileRecord,
    ) -> Result<()> {
        if let Some(source) = self.blobs.local_copy(&file.blob_key, &file.sha256).await?
            && workspace.place_input_by_link(name, &source)?
        {
            return Ok(());
        }
        let target = workspace.create_input(name)?;
        let mut target = tokio::fs::File::from_std(target);
        if let Err(error) = self.blobs.copy_to(&file.blob_key, &mut target).await {
            workspace.discard_input(name)?;
            return Err(error.into());
        }
        Ok(())
    }
}
