//! What a user's files and messages look like from outside a run: uploads in two halves,
//! lookups, listings per message and chat, link rendering, and deletion, which takes a file
//! out of every workspace it was placed in at once.

use super::*;
use crate::ids::TenantId;

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
    /// file of the message (the newest one at that path) by `url_for(file)`.
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
        Ok(translate::render_links(text, |relative| {
            by_path.get(relative).map(|file| url_for(file))
        }))
    }

    /// Soft-deletes one of `owner`'s files: gone from listings and downloads at once, and
    /// from every workspace it was placed in (see `Supervisor::unplace`); its bytes are
    /// purged by the reaper after the grace period.
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

    /// Stores an uploaded file for `owner`, streamed from `body`, optionally tied to a chat
    /// and message (see [`UploadMeta`]).
    pub async fn upload(
        &self,
        owner: &Owner,
        upload: UploadMeta,
        body: impl AsyncRead + Unpin,
    ) -> Result<FileRecord> {
        upload.check()?;
        let stored = self.store_upload(body).await?;
        self.register_upload(owner, upload, stored).await
    }

    /// First half of an upload whose metadata may arrive after its bytes (a multipart form):
    /// streams the bytes into the blob store, capped at the upload limit.
    pub async fn store_upload(&self, body: impl AsyncRead + Unpin) -> Result<StoredUpload> {
        let id = FileId::new();
        let key = BlobKey::for_file(&id);
        let limit = self.config.limits.max_upload_bytes.as_u64();
        match self.blobs.put_stream(&key, body, limit).await {
            Ok(stored) => Ok(StoredUpload { id, stored }),
            Err(BlobError::TooLarge { limit }) => Err(Error::TooLarge(format!(
                "the upload is larger than {}",
                ByteSize::b(limit).display().iec()
            ))),
            Err(error) => Err(error.into()),
        }
    }

    /// Second half of an upload: checks the metadata, binds the message if one is named, and
    /// records the file. If anything is refused, the stored bytes are deleted again.
    pub async fn register_upload(
        &self,
        owner: &Owner,
        upload: UploadMeta,
        stored: StoredUpload,
    ) -> Result<FileRecord> {
        let key = stored.stored.key.clone();
        let result = self.record_upload(owner, upload, stored).await;
        if result.is_err() {
            // Without its row the blob would be an orphan nobody can reach.
            self.delete_orphan_blob(&key).await;
        }
        result
    }

    /// Deletes the bytes of an upload that will not be recorded (its request was refused).
    pub async fn discard_upload(&self, stored: StoredUpload) {
        if let Err(error) = self.blobs.delete(&stored.stored.key).await {
            tracing::warn!(key = %stored.stored.key, %error, "could not delete a refused upload");
        }
    }

    async fn record_upload(
        &self,
        owner: &Owner,
        upload: UploadMeta,
        stored: StoredUpload,
    ) -> Result<FileRecord> {
        let (mut chat_id, message_id) = upload.check()?;
        let message = match (&chat_id, &message_id) {
            (Some(chat_id), Some(message_id)) => {
                Some(self.claim(owner, chat_id, message_id).await?)
            }
            // A message named without its chat must already be the caller's.
            (None, Some(message_id)) => {
                let message = self.message(owner, message_id).await?;
                chat_id = Some(message.chat_id.clone());
                Some(message)
            }
            _ => None,
        };
        let safe_name = workspace::sanitize_name(&upload.name);
        // The client's folders are no part of the file's name: `C:\Users\a\report.csv` is
        // shown as `report.csv`, and `..` never survives (shared/API.md).
        let name = workspace::base_name(&upload.name)
            .unwrap_or("file")
            .to_owned();
        let mut record = FileRecord {
            id: stored.id,
            tenant: owner.tenant.clone(),
            user_id: owner.user.clone(),
            chat_id,
            message_id,
            run_id: None,
            name,
            path: attachment_path(&safe_name),
            size: i64::try_from(stored.stored.size).unwrap_or(i64::MAX),
            content_type: content_type_of(&safe_name),
            sha256: stored.stored.sha256,
            source: FileSource::Upload,
            derived_from: None,
            blob_key: stored.stored.key,
            created_at: catalog::now(),
            deleted_at: None,
        };
        self.catalog.files().insert(&record).await?;
        // A file uploaded with a message is attached to it: every run of the message sees it.
        if let Some(message) = message {
            let workspace = self.workspaces.get(message.workspace_id.as_str())?;
            match self.reserve_name(&message, &workspace, &record).await {
                Ok(name) => record.path = attachment_path(&name),
                Err(error) => {
                    // The row must not stay live without its bytes, which the caller deletes.
                    if let Err(expire_error) = self
                        .catalog
                        .files()
                        .expire(&record.id, &catalog::now())
                        .await
                    {
                        tracing::warn!(file = %record.id, error = %expire_error,
                            "could not mark a refused upload deleted");
                    }
                    return Err(error);
                }
            }
        }
        Ok(record)
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
        if let Some(message_id) = &file.message_id
            && let Some(attachment) = self
                .catalog
                .attachments()
                .get(&owner.tenant, message_id, &file.id)
                .await?
        {
            file.path = attachment_path(&attachment.name);
        }
        Ok(file)
    }
}
