//! A chat as a whole: what it holds (its messages and the uploads linked to it, for a delete
//! dialog) and its deletion, which ends every sandbox and workspace of the chat at once.
//!
//! Deleting a chat never takes a user's uploads with it unless asked: they stay the user's
//! files, `unlinked` from the chat, and only those listed in `delete_file_ids` go. The files
//! the chat's code generated go unless `keep_generated`. Every file deleted here is deleted
//! the way `DELETE /v1/files/{id}` deletes one: gone from listings and downloads at once,
//! bytes purged after the grace period.

use std::collections::BTreeSet;

use super::*;

/// What a chat holds, for a delete dialog.
#[derive(Debug, Clone)]
pub struct ChatOverview {
    /// Its messages, oldest first.
    pub messages: Vec<MessageRecord>,
    /// The uploads still linked to it.
    pub linked_files: Vec<FileRecord>,
}

/// What the caller asks of a chat's deletion.
#[derive(Debug, Clone, Default)]
pub struct ChatDeletion {
    /// Uploads of this chat to delete too (each must be one of its linked uploads).
    pub delete_file_ids: Vec<FileId>,
    /// Keep the files the chat's code generated.
    pub keep_generated: bool,
}

/// What a chat's deletion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatDeleted {
    /// Workspaces (and their sandboxes) removed.
    pub workspaces_removed: u64,
    /// Files deleted: generated ones unless kept, and the listed uploads.
    pub files_deleted: u64,
    /// Files kept: the uploads now unlinked, and the generated files when kept.
    pub files_kept: u64,
}

impl Supervisor {
    /// The messages of chat `chat_id` of `owner` and the uploads linked to it. A chat with
    /// neither is not found.
    pub async fn chat(&self, owner: &Owner, chat_id: &ChatId) -> Result<ChatOverview> {
        let messages = self.catalog.messages().of_chat(owner, chat_id).await?;
        let linked_files = self.catalog.files().linked_uploads(owner, chat_id).await?;
        if messages.is_empty() && linked_files.is_empty() {
            return Err(Error::NotFound("chat"));
        }
        Ok(ChatOverview {
            messages,
            linked_files,
        })
    }

    /// Deletes chat `chat_id` of `owner`: every workspace and sandbox of its messages now,
    /// its generated files unless kept, the listed uploads; the other uploads stay, unlinked.
    /// `delete_file_ids` is checked before anything is touched.
    pub async fn delete_chat(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
        deletion: ChatDeletion,
    ) -> Result<ChatDeleted> {
        let overview = self.chat(owner, chat_id).await?;
        check_deletion(&overview, chat_id, &deletion)?;
        let mut deleted = ChatDeleted::default();
        for message in &overview.messages {
            if self.remove_message_workspace(message).await? {
                deleted.workspaces_removed += 1;
            }
        }
        let generated = self.catalog.files().of_chat(owner, chat_id).await?;
        if deletion.keep_generated {
            deleted.files_kept += generated.len() as u64;
        } else {
            for file in &generated {
                self.delete_file(owner, &file.id).await?;
                deleted.files_deleted += 1;
            }
        }
        let unique: BTreeSet<&FileId> = deletion.delete_file_ids.iter().collect();
        for file_id in unique {
            self.delete_file(owner, file_id).await?;
            deleted.files_deleted += 1;
        }
        deleted.files_kept += self
            .catalog
            .files()
            .unlink_chat_uploads(owner, chat_id, &catalog::now())
            .await?;
        for message in &overview.messages {
            let message_id = &message.message_id;
            self.catalog
                .attachments()
                .forget_message(&owner.tenant, message_id)
                .await?;
            self.catalog
                .messages()
                .forget(&owner.tenant, message_id)
                .await?;
        }
        Ok(deleted)
    }

    /// The messages of chat `chat_id` that other live instances hold, with where they are:
    /// their workspaces are removed there (the API asks each holder) before the chat is
    /// deleted here. Checks `deletion` as [`Supervisor::delete_chat`] does, so that nothing is
    /// removed anywhere for a deletion that will be refused.
    pub async fn chat_held_elsewhere(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
        deletion: &ChatDeletion,
    ) -> Result<Vec<(MessageId, Placement)>> {
        let overview = self.chat(owner, chat_id).await?;
        check_deletion(&overview, chat_id, deletion)?;
        let mut elsewhere = Vec::new();
        for message in overview.messages {
            let placement = self.place(&message).await?;
            if placement != Placement::Here {
                elsewhere.push((message.message_id, placement));
            }
        }
        Ok(elsewhere)
    }

    /// Removes the sandbox and workspace folder of one message of a chat being deleted,
    /// under its lock; returns whether there was a folder to remove.
    async fn remove_message_workspace(&self, message: &MessageRecord) -> Result<bool> {
        let workspace = self.workspaces.get(message.workspace_id.as_str())?;
        let _lock = lock(&workspace).await?;
        let existed = workspace.exists();
        self.remove_workspace_locked(&workspace).await?;
        Ok(existed)
    }
}

/// Refuses a deletion that names an upload the chat does not link.
fn check_deletion(
    overview: &ChatOverview,
    chat_id: &ChatId,
    deletion: &ChatDeletion,
) -> Result<()> {
    let linked: BTreeSet<&FileId> = overview.linked_files.iter().map(|file| &file.id).collect();
    match deletion
        .delete_file_ids
        .iter()
        .find(|id| !linked.contains(id))
    {
        Some(stranger) => Err(Error::invalid(
            "delete_file_ids",
            format!("{stranger} is not an upload linked to chat {chat_id}"),
        )),
        None => Ok(()),
    }
}
