//! The `attachments` table: which stored file is attached to which message, under which name
//! in its workspace. A row outlives the workspace folder (a later run places the file again
//! under the same name, so paths the code and the user learned stay true) and the file's
//! deletion (the message then shows it as deleted; no run places it again).

use sqlx::AnyPool;

use super::CatalogError;
use crate::ids::{FileId, MessageId, TenantId};

/// One attachment of one message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttachmentRecord {
    /// The tenant.
    pub tenant: TenantId,
    /// The message the file is attached to.
    pub message_id: MessageId,
    /// The stored file.
    pub file_id: FileId,
    /// Its name in the workspace (`inputs/<name>`, linked as `data/<name>`).
    pub name: String,
    /// When it was attached.
    pub created_at: String,
}

/// Accessor for the `attachments` table.
pub struct Attachments<'a> {
    pool: &'a AnyPool,
}

impl<'a> Attachments<'a> {
    pub(super) fn new(pool: &'a AnyPool) -> Self {
        Self { pool }
    }

    /// Forgets every attachment of message `message_id` of `tenant` (its chat was deleted),
    /// so that a later message of the same id starts with none.
    pub async fn forget_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM attachments WHERE tenant = $1 AND message_id = $2")
            .bind(tenant)
            .bind(message_id)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// Reserves `record.name` for `record.file_id` in the message, unless that name is held by
    /// another attachment whose file is live, or the file is attached already. Returns whether
    /// the row was written. The check and the write are one statement, so two callers that
    /// race for a name (an upload and a run) cannot both get it.
    pub async fn reserve(&self, record: &AttachmentRecord) -> Result<bool, CatalogError> {
        let result = sqlx::query(
            "INSERT INTO attachments (tenant, message_id, file_id, name, created_at)
             SELECT $1, $2, $3, $4, $5
             WHERE NOT EXISTS (
                 SELECT 1 FROM attachments a JOIN files f ON f.id = a.file_id
                 WHERE a.tenant = $1 AND a.message_id = $2 AND a.name = $4
                   AND f.deleted_at IS NULL)
             AND NOT EXISTS (
                 SELECT 1 FROM attachments a
                 WHERE a.tenant = $1 AND a.message_id = $2 AND a.file_id = $3)",
        )
        .bind(&record.tenant)
        .bind(&record.message_id)
        .bind(&record.file_id)
        .bind(&record.name)
        .bind(&record.created_at)
        .execute(self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Gives an attachment another name, unless an attachment of a live file holds it. Returns
    /// whether the row changed.
    pub async fn rename(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
        file_id: &FileId,
        name: &str,
    ) -> Result<bool, CatalogError> {
        let result = sqlx::query(
            "UPDATE attachments SET name = $4
             WHERE tenant = $1 AND message_id = $2 AND file_id = $3
             AND NOT EXISTS (
                 SELECT 1 FROM attachments a JOIN files f ON f.id = a.file_id
                 WHERE a.tenant = $1 AND a.message_id = $2 AND a.name = $4
                   AND f.deleted_at IS NULL)",
        )
        .bind(tenant)
        .bind(message_id)
        .bind(file_id)
        .bind(name)
        .execute(self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Every attachment of a message, oldest first, whether or not its file is still live.
    pub async fn of_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Vec<AttachmentRecord>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT tenant, message_id, file_id, name, created_at FROM attachments
             WHERE tenant = $1 AND message_id = $2 ORDER BY created_at, file_id",
        )
        .bind(tenant)
        .bind(message_id)
        .fetch_all(self.pool)
        .await?)
    }

    /// The attachments of a message whose files are live (not deleted), oldest first: what
    /// its runs see.
    pub async fn live_of_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Vec<AttachmentRecord>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT a.tenant, a.message_id, a.file_id, a.name, a.created_at
             FROM attachments a JOIN files f ON f.id = a.file_id
             WHERE a.tenant = $1 AND a.message_id = $2 AND f.deleted_at IS NULL
             ORDER BY a.created_at, a.file_id",
        )
        .bind(tenant)
        .bind(message_id)
        .fetch_all(self.pool)
        .await?)
    }

    /// The attachment of `file_id` to a message, if there is one.
    pub async fn get(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
        file_id: &FileId,
    ) -> Result<Option<AttachmentRecord>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT tenant, message_id, file_id, name, created_at FROM attachments
             WHERE tenant = $1 AND message_id = $2 AND file_id = $3",
        )
        .bind(tenant)
        .bind(message_id)
        .bind(file_id)
        .fetch_optional(self.pool)
        .await?)
    }

    /// Every message a file is attached to: the workspaces a delete must reach.
    pub async fn of_file(
        &self,
        tenant: &TenantId,
        file_id: &FileId,
    ) -> Result<Vec<AttachmentRecord>, CatalogError> {
        Ok(sqlx::query_as(
            "SELECT tenant, message_id, file_id, name, created_at FROM attachments
             WHERE tenant = $1 AND file_id = $2 ORDER BY created_at, message_id",
        )
        .bind(tenant)
        .bind(file_id)
        .fetch_all(self.pool)
        .await?)
    }
}
