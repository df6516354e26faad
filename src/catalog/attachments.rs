//! The `attachments` table: which stored file is placed under which name in a message's
//! workspace, so that attaching the same file again adds no second link and a replaced input
//! can be traced back to the file it came from.

use sqlx::AnyPool;

use super::CatalogError;

/// One attachment of one message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttachmentRecord {
    /// The tenant.
    pub tenant: String,
    /// The message the file is attached to.
    pub message_id: String,
    /// The stored file.
    pub file_id: String,
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

    /// Records an attachment.
    pub async fn insert(&self, record: &AttachmentRecord) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO attachments (tenant, message_id, file_id, name, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&record.tenant)
        .bind(&record.message_id)
        .bind(&record.file_id)
        .bind(&record.name)
        .bind(&record.created_at)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Forgets every attachment of a message, when its workspace folder is removed: a later
    /// run places them again.
    pub async fn delete_of_message(
        &self,
        tenant: &str,
        message_id: &str,
    ) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM attachments WHERE tenant = $1 AND message_id = $2")
            .bind(tenant)
            .bind(message_id)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// Every attachment of a message, oldest first.
    pub async fn of_message(
        &self,
        tenant: &str,
        message_id: &str,
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
}
