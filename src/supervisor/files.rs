//! What a user's files and messages look like from outside a run: lookups, listings per
//! message and chat, link rendering, renaming, and deletion, which takes a file out of every
//! workspace it was placed in at once. Uploads have their own file (`uploads.rs`).

use super::*;
use crate::ids::TenantId;

/// The most distinct `workspace://` ids one rendering looks up.
const MAX_RENDERED_REFS: usize = 1000;

impl Supervisor {
    /// The message `message_id` if it is bound to `owner`.
    pub async fn message(&self, owner: &Owner, message_id: &MessageId) -> Result<MessageRecord> {
        self.catalog
            .messages()
            .get(&owner.tenant, message_id)
            .await?
            .filter(|message| message.user_id == owner.user)
            .ok_or(Error::NotFound("message"))
    }

    /// The live files of one of `owner`'s messages, oldest first: those its runs generated,
    /// and, when `include_uploads` is set, every file attached to it (however it was
    /// attached: uploaded with the message, or named in a run's `file_ids`) with the path
    /// the code sees in this message's workspace.
    pub async fn message_files(
        &self,
        owner: &Owner,
        message_id: &MessageId,
        include_uploads: bool,
    ) -> Result<Vec<FileRecord>> {
        self.message(owner, message_id).await?;
        let mut files = self
            .catalog
            .files()
            .of_message(owner, message_id, include_uploads)
            .await?;
        if include_uploads {
            let mut attached = Vec::new();
            for attachment in self
                .catalog
                .attachments()
                .live_of_message(&owner.tenant, message_id)
                .await?
            {
                if let Some(mut file) = self.catalog.files().get(owner, &attachment.file_id).await?
                {
                    file.path = attachment_path(&attachment.name);
                    attached.push(file);
                }
            }
            files.retain(|file| !attached.iter().any(|other| other.id == file.id));
            files.extend(attached);
            files.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        }
        Ok(files)
    }

    /// The attachments of one of `owner`'s messages, oldest first, each with its file while
    /// that is live (`None` once it was deleted).
    pub async fn message_attachments(
        &self,
        owner: &Owner,
        message_id: &MessageId,
    ) -> Result<Vec<(AttachmentRecord, Option<FileRecord>)>> {
        self.message(owner, message_id).await?;
        let mut attachments = Vec::new();
        for attachment in self
            .catalog
            .attachments()
            .of_message(&owner.tenant, message_id)
            .await?
        {
            let file = self
                .catalog
                .files()
                .get(owner, &attachment.file_id)
                .await?
                .map(|mut file| {
                    file.path = attachment_path(&attachment.name);
                    file
                });
            attachments.push((attachment, file));
        }
        Ok(attachments)
    }

    /// The live generated files of one of `owner`'s chats, oldest first.
    pub async fn chat_files(&self, owner: &Owner, chat_id: &ChatId) -> Result<Vec<FileRecord>> {
        if !self.catalog.messages().chat_exists(owner, chat_id).await? {
            return Err(Error::NotFound("chat"));
        }
        Ok(self.catalog.files().of_chat(owner, chat_id).await?)
    }

    /// Replaces every `sandbox:/mnt/data/<path>` and `/mnt/data/<path>` in `text` that names a
    /// file of the message (the newest one at that path), and every `workspace://<file id>`
    /// that names a live file of `owner`'s (any message's, or none), by `url_for(file)`.
    pub async fn render_links(
        &self,
        owner: &Owner,
        message_id: &MessageId,
        text: &str,
        url_for: impl Fn(&FileRecord) -> String,
    ) -> Result<String> {
        let files = self.message_files(owner, message_id, true).await?;
        let mut by_path: HashMap<&str, &FileRecord> = HashMap::new();
        for file in &files {
            // Oldest first, so the newest file at a path wins.
            if let Some(relative) = file.path.strip_prefix("/mnt/data/") {
                by_path.insert(relative, file);
            }
        }
        let text = translate::render_links(text, |relative| {
            by_path.get(relative).map(|file| url_for(file))
        });
        let mut by_id: HashMap<String, String> = HashMap::new();
        let ids: BTreeSet<&str> = translate::workspace_refs(&text).collect();
        // Each distinct id is one lookup; past the cap, references stay as they are.
        for id in ids.into_iter().take(MAX_RENDERED_REFS) {
            let file_id = FileId::from_stored(id);
            if let Some(file) = self.catalog.files().get(owner, &file_id).await? {
                by_id.insert(id.to_owned(), url_for(&file));
            }
        }
        Ok(translate::render_workspace_refs(&text, |id| {
            by_id.get(id).cloned()
        }))
    }

    /// Renames one of `owner`'s files. Only the last part of `name` is kept, as for uploads;
    /// an upload is placed under its new name from then on, a generated file keeps the path
    /// the code wrote it at. In the user's own workspace the name must be free
    /// ([`Error::NameTaken`]).
    pub async fn rename_file(
        &self,
        owner: &Owner,
        file_id: &FileId,
        name: &str,
    ) -> Result<FileRecord> {
        let display = workspace::base_name(name)
            .filter(|display| display.chars().count() <= 1024)
            .ok_or_else(|| Error::invalid("name", "must name a file in at most 1024 characters"))?;
        super::uploads::check_no_nul(display)?;
        let file = self
            .catalog
            .files()
            .get(owner, file_id)
            .await?
            .ok_or(Error::NotFound("file"))?;
        let path = match file.source {
            FileSource::Upload => attachment_path(&workspace::sanitize_name(display)),
            FileSource::CodeExecution | FileSource::Figure => file.path,
        };
        if !self
            .catalog
            .files()
            .rename(owner, file_id, (display, &path), &catalog::now())
            .await?
        {
            return Err(Error::NotFound("file"));
        }
        self.file(owner, file_id).await
    }

    /// Soft-deletes one of `owner`'s files as `DELETE /v1/files/{id}` does: a file attached
    /// to a message of a chat that still exists needs `confirmed` (else
    /// [`Error::ConfirmationRequired`] names the chat and messages); then see
    /// [`Supervisor::delete_file`].
    pub async fn delete_file_confirmed(
        &self,
        owner: &Owner,
        file_id: &FileId,
        confirmed: bool,
    ) -> Result<()> {
        if !confirmed {
            let file = self.file(owner, file_id).await?;
            let mut chat_id = None;
            let mut message_ids = Vec::new();
            for attachment in self
                .catalog
                .attachments()
                .of_file(&owner.tenant, &file.id)
                .await?
            {
                let message = self
                    .catalog
                    .messages()
                    .get(&owner.tenant, &attachment.message_id)
                    .await?;
                if let Some(message) = message {
                    chat_id.get_or_insert(message.chat_id);
                    message_ids.push(message.message_id);
                }
            }
            if let Some(chat_id) = chat_id {
                return Err(Error::ConfirmationRequired {
                    file_id: file.id,
                    chat_id,
                    message_ids,
                });
            }
        }
        self.delete_file(owner, file_id).await
    }

    /// Soft-deletes one of `owner`'s files whatever uses it: gone from listings and downloads
    /// at once, and from every workspace it was placed in (see `Supervisor::unplace`); its
    /// bytes are purged by the reaper after the grace period.
    pub async fn delete_file(&self, owner: &Owner, file_id: &FileId) -> Result<()> {
        if !self
            .catalog
            .files()
            .soft_delete(owner, file_id, &catalog::now())
            .await?
        {
            return Err(Error::NotFound("file"));
        }
        self.unplace(&owner.tenant, file_id).await
    }

    /// Takes a deleted file out of every workspace it was placed in, without waiting for
    /// their locks (a long run must not delay a delete): its input file and its `data/` link
    /// go (see [`Workspace::remove_input`]). A run that places the file concurrently checks,
    /// once it has placed it, that the file is still live, and takes it out again if not; so
    /// whichever of the two comes second, the file is gone. Calling it again is harmless;
    /// the reaper does before it purges the bytes.
    pub(crate) async fn unplace(&self, tenant: &TenantId, file_id: &FileId) -> Result<()> {
        for attachment in self.catalog.attachments().of_file(tenant, file_id).await? {
            let Some(message) = self
                .catalog
                .messages()
                .get(tenant, &attachment.message_id)
                .await?
            else {
                continue;
            };
            let workspace = self.workspaces.get(message.workspace_id.as_str())?;
            workspace.remove_input(&attachment.name)?;
        }
        Ok(())
    }

    /// The inodes through which the workspaces a file was attached to still hold its bytes:
    /// what [`Supervisor::unplace`] would release.
    pub(crate) async fn placed_inodes(
        &self,
        tenant: &TenantId,
        file_id: &FileId,
    ) -> Result<Vec<(u64, u64)>> {
        let mut inodes = Vec::new();
        for attachment in self.catalog.attachments().of_file(tenant, file_id).await? {
            if let Some(message) = self
                .catalog
                .messages()
                .get(tenant, &attachment.message_id)
                .await?
                && let Some(inode) = self
                    .workspaces
                    .get(message.workspace_id.as_str())?
                    .input_inode(&attachment.name)
            {
                inodes.push(inode);
            }
        }
        Ok(inodes)
    }

    /// Deletes the bytes of a file that will have no catalog row. A failure is logged with the
    /// key: nothing else refers to the object, so the log line is what an operator has to
    /// find it by.
    pub(super) async fn delete_orphan_blob(&self, key: &BlobKey) {
        if let Err(error) = self.blobs.delete(key).await {
            tracing::warn!(%key, %error, "could not delete the bytes of an unrecorded file");
        }
    }

    /// The live file `file_id` of `owner`. Its path is the one the code sees in the message
    /// it was uploaded with, when it is attached there (a collision may have numbered its
    /// name); the same file attached to other messages may have other names there, which
    /// their listings show.
    pub async fn file(&self, owner: &Owner, file_id: &FileId) -> Result<FileRecord> {
        let mut file = self
            .catalog
            .files()
            .get(owner, file_id)
            .await?
            .ok_or(Error::NotFound("file"))?;
        self.show_attached_path(owner, &mut file).await?;
        Ok(file)
    }

    /// Sets a file's path to the one the code sees in the message it was uploaded with, when
    /// it is attached there (see [`Supervisor::file`]).
    pub(super) async fn show_attached_path(
        &self,
        owner: &Owner,
        file: &mut FileRecord,
    ) -> Result<()> {
        if let Some(message_id) = &file.message_id
            && let Some(attachment) = self
                .catalog
                .attachments()
                .get(&owner.tenant, message_id, &file.id)
                .await?
        {
            file.path = attachment_path(&attachment.name);
        }
        Ok(())
    }
}
