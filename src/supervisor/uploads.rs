//! Uploads: a user's file streamed into the blob store and recorded, optionally attached to a
//! message. It comes in two halves, because a multipart form may send a file's bytes before
//! the fields that say where it belongs: `store_upload` streams and caps the bytes, then
//! `register_upload` checks the metadata, binds the message and records the file, deleting
//! the bytes again if anything is refused, so that no blob is left without its row.

use super::*;

/// What a user says about a file they upload.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    /// The file's name as the client sent it. Only its last part is kept (see
    /// [`workspace::base_name`]), and that is sanitized where it becomes a path.
    pub name: String,
    /// The chat it belongs to, if any.
    pub chat_id: Option<String>,
    /// The message it belongs to, if any. With `chat_id` it binds the message like a run
    /// does; without, it must name an existing message of the uploader.
    pub message_id: Option<String>,
    /// What to do when a file without a chat takes a name a live file of the user's own
    /// workspace has: `rename` (`report (1).csv`) or `replace` (the old file is deleted);
    /// without it the upload fails with [`Error::NameTaken`]. Uploads into a chat keep their names.
    pub on_conflict: Option<String>,
}

/// What an upload into the user's own workspace does with a name that is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnConflict {
    /// Refuse the upload.
    Fail,
    /// Take the first free `name (n).ext`.
    Rename,
    /// Delete the live file of that name first.
    Replace,
}

/// How many numbered names an upload tries before it gives up as taken.
const MAX_NUMBERED_NAMES: u64 = 10_000;

/// How often a replacing upload deletes a file that holds its name and tries again (another
/// upload may take the name in between).
const MAX_REPLACEMENTS: u32 = 8;

impl UploadMeta {
    /// Checks what the user said, and gives the chat and message ids it names and what a
    /// taken name does.
    fn check(&self) -> Result<(Option<ChatId>, Option<MessageId>, OnConflict)> {
        check_name(&self.name)?;
        let chat_id = self.chat_id.clone().map(ChatId::parse).transpose()?;
        let message_id = self.message_id.clone().map(MessageId::parse).transpose()?;
        let on_conflict = match self.on_conflict.as_deref() {
            None => OnConflict::Fail,
            Some("rename") => OnConflict::Rename,
            Some("replace") => OnConflict::Replace,
            Some(_) => {
                return Err(Error::invalid("on_conflict", "must be rename or replace"));
            }
        };
        Ok((chat_id, message_id, on_conflict))
    }
}

/// Bytes of an upload that are stored but not yet recorded.
#[derive(Debug)]
pub struct StoredUpload {
    id: FileId,
    stored: crate::blobs::Stored,
}

impl Supervisor {
    /// Stores an uploaded file for `owner`, streamed from `body`, optionally tied to a chat
    /// and message (see [`UploadMeta`]).
    pub async fn upload(
        &self,
        owner: &Owner,
        upload: UploadMeta,
        body: impl AsyncRead + Unpin,
    ) -> Result<FileRecord> {
        upload.check()?;
        self.check_upload_name(&upload.name)?;
        let stored = self.store_upload(owner, body).await?;
        self.register_upload(owner, upload, stored).await
    }

    /// Refuses an upload whose kept name (its last part) does not end in an allowed
    /// extension (`uploads.allowed_extensions`). Callers that read a form check the name
    /// before its bytes; recording checks it again, so that nothing refused is ever kept.
    pub fn check_upload_name(&self, name: &str) -> Result<()> {
        // A name that is no name at all is the caller's mistake (422) before it is a type.
        check_name(name)?;
        let kept = workspace::base_name(name).unwrap_or_default();
        if self.config.uploads.is_allowed(kept) {
            return Ok(());
        }
        Err(Error::Unsupported(format!(
            "{kept:?} is not a file type that can be uploaded; allowed extensions: {}",
            self.config.uploads.allowed_extensions.join(", ")
        )))
    }

    /// First half of an upload whose metadata may arrive after its bytes (a multipart form):
    /// streams the bytes into the blob store, capped at the upload limit and at the room
    /// `owner`'s stored quota leaves, so that a file past the quota is cut off as it arrives.
    pub async fn store_upload(
        &self,
        owner: &Owner,
        body: impl AsyncRead + Unpin,
    ) -> Result<StoredUpload> {
        let id = FileId::new();
        let key = BlobKey::for_file(&id);
        let upload_limit = self.config.limits.max_upload_bytes.as_u64();
        let room = self.stored_room(owner).await?;
        let limit = room.map_or(upload_limit, |room| room.min(upload_limit));
        match self.blobs.put_stream(&key, body, limit).await {
            Ok(stored) => Ok(StoredUpload { id, stored }),
            Err(BlobError::TooLarge { .. }) if limit < upload_limit => {
                Err(Error::QuotaExceeded(format!(
                    "the upload is larger than the {} left of your storage quota; delete \
                     files to make room",
                    ByteSize::b(limit).display().iec()
                )))
            }
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
        let (mut chat_id, message_id, on_conflict) = upload.check()?;
        self.check_upload_name(&upload.name)?;
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
        let now = catalog::now();
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
            created_at: now.clone(),
            deleted_at: None,
            modified_at: now,
            unlinked_at: None,
        };
        if record.chat_id.is_some() {
            self.record_file(&record).await?;
        } else {
            self.insert_in_workspace(owner, &mut record, on_conflict)
                .await?;
        }
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

    /// Records an upload of the user's own workspace, where a live file's name is unique:
    /// the catalog's unique index refuses a taken name, whoever took it and however recently,
    /// and `on_conflict` says what happens then. Nothing is recorded when it fails.
    async fn insert_in_workspace(
        &self,
        owner: &Owner,
        record: &mut FileRecord,
        on_conflict: OnConflict,
    ) -> Result<()> {
        let wanted = record.name.clone();
        let mut tries = 0u64;
        loop {
            match self.record_file(record).await {
                Err(Error::NameTaken(_)) => {}
                done => return done,
            }
            tries += 1;
            match on_conflict {
                OnConflict::Rename if tries <= MAX_NUMBERED_NAMES => {
                    record.name = workspace::numbered_name(&wanted, tries);
                    record.path = attachment_path(&workspace::sanitize_name(&record.name));
                }
                OnConflict::Replace if tries <= u64::from(MAX_REPLACEMENTS) => {
                    if let Some(old) = self
                        .catalog
                        .files()
                        .in_workspace_named(owner, &wanted)
                        .await?
                    {
                        // Deleted as `DELETE` deletes it; another request may have done so.
                        match self.delete_file(owner, &old.id).await {
                            Ok(()) | Err(Error::NotFound(_)) => {}
                            Err(error) => return Err(error),
                        }
                    }
                }
                _ => return Err(Error::NameTaken(wanted)),
            }
        }
    }
}

/// The rule every uploaded file's name meets before anything else is looked at.
fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 1024 {
        return Err(Error::invalid(
            "name",
            "must be 1 to 1024 bytes and not blank",
        ));
    }
    check_no_nul(name)
}

/// Refuses a name holding NUL: no file system has such names, and PostgreSQL, which may hold
/// the catalog, cannot store it in text.
pub(super) fn check_no_nul(name: &str) -> Result<()> {
    if name.contains('\0') {
        return Err(Error::invalid("name", "may not contain a NUL character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_may_not_hold_nul() {
        assert!(check_name("report.csv").is_ok());
        assert!(check_name("a\0b.csv").is_err());
        assert!(check_no_nul("a\0").is_err());
    }
}
