//! The `messages` table: the binding of each message id to the (tenant, user, chat) that named
//! it first, and the workspace that message uses.

use sqlx::AnyPool;

use super::{CatalogError, Owner};
use crate::ids::{ChatId, MessageId, TenantId, UserId, WorkspaceId};

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRecord {
    /// The tenant.
    pub tenant: TenantId,
    /// The caller-chosen message id.
    pub message_id: MessageId,
    /// The user the message belongs to.
    pub user_id: UserId,
    /// The chat the message belongs to.
    pub chat_id: ChatId,
    /// The message's workspace.
    pub workspace_id: WorkspaceId,
    /// When the message was first named.
    pub created_at: String,
    /// When a run last used the message.
    pub last_used_at: String,
    /// The instance (node) that holds its workspace; `None` for a message recorded before
    /// codebox ran on several nodes, which the next instance to run it takes.
    pub node: Option<String>,
}

impl MessageRecord {
    /// Whether `owner` and `chat_id` are the ones the message is bound to.
    pub fn is_bound_to(&self, owner: &Owner, chat_id: &ChatId) -> bool {
        self.tenant == owner.tenant && self.user_id == owner.user && self.chat_id == *chat_id
    }
}

/// What [`Messages::claim`] binds: a message of `owner` in `chat_id`, with the workspace id to
/// give it if it is new.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Who names the message.
    pub owner: &'a Owner,
    /// The chat it belongs to.
    pub chat_id: &'a ChatId,
    /// The message.
    pub message_id: &'a MessageId,
    /// Its workspace, if the message is new.
    pub new_workspace_id: &'a WorkspaceId,
    /// The time to record.
    pub now: &'a str,
    /// The instance claiming it, which holds its workspace if it is new.
    pub node: &'a str,
}

/// Accessor for the `messages` table.
pub struct Messages<'a> {
    pool: &'a AnyPool,
}

const COLUMNS: &str =
    "tenant, message_id, user_id, chat_id, workspace_id, created_at, last_used_at, node";

impl<'a> Messages<'a> {
    pub(super) fn new(pool: &'a AnyPool) -> Self {
        Self { pool }
    }

    /// Binds `message_id` to `owner` and `chat_id` with a new workspace id if it is not bound
    /// yet, and returns the binding in force, which may belong to someone else: the caller
    /// checks [`MessageRecord::is_bound_to`].
    pub async fn claim(&self, claim: &Claim<'_>) -> Result<MessageRecord, CatalogError> {
        let Claim {
            owner,
            chat_id,
            message_id,
            new_workspace_id,
            now,
            node,
        } = *claim;
        sqlx::query(
            "INSERT INTO messages (tenant, message_id, user_id, chat_id, workspace_id, created_at, last_used_at, node)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
             ON CONFLICT (tenant, message_id) DO NOTHING",
        )
        .bind(&owner.tenant)
        .bind(message_id)
        .bind(&owner.user)
        .bind(chat_id)
        .bind(new_workspace_id)
        .bind(now)
        .bind(node)
        .execute(self.pool)
        .await?;
        self.get(&owner.tenant, message_id)
            .await?
            .ok_or_else(|| CatalogError::Corrupt {
                table: "messages",
                id: message_id.to_string(),
                reason: "vanished right after it was claimed".to_owned(),
            })
    }

    /// The message `message_id` of `tenant`, whoever its user is.
    pub async fn get(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Option<MessageRecord>, CatalogError> {
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE tenant = $1 AND message_id = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(message_id)
            .fetch_optional(self.pool)
            .await?)
    }

    /// Records that a run used the message now.
    pub async fn touch(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
        now: &str,
    ) -> Result<(), CatalogError> {
        sqlx::query("UPDATE messages SET last_used_at = $3 WHERE tenant = $1 AND message_id = $2")
            .bind(tenant)
            .bind(message_id)
            .bind(now)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// Moves message `message_id` of `tenant` to node `to` if it is still held by `from`
    /// (`None`: by no node), and returns whether it moved. One conditional statement, so that
    /// of two nodes taking over one message at once, one wins and the other learns it lost.
    pub async fn take_over(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
        (from, to): (Option<&str>, &str),
    ) -> Result<bool, CatalogError> {
        let moved = match from {
            Some(from) => {
                sqlx::query(
                    "UPDATE messages SET node = $3 WHERE tenant = $1 AND message_id = $2 AND node = $4",
                )
                .bind(tenant)
                .bind(message_id)
                .bind(to)
                .bind(from)
                .execute(self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE messages SET node = $3 WHERE tenant = $1 AND message_id = $2 AND node IS NULL",
                )
                .bind(tenant)
                .bind(message_id)
                .bind(to)
                .execute(self.pool)
                .await?
            }
        };
        Ok(moved.rows_affected() > 0)
    }

    /// Every message, least recently used first.
    pub async fn all(&self) -> Result<Vec<MessageRecord>, CatalogError> {
        let sql = format!("SELECT {COLUMNS} FROM messages ORDER BY last_used_at, message_id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool)
            .await?)
    }

    /// The messages of `tenant`, least recently used first.
    pub async fn of_tenant(&self, tenant: &TenantId) -> Result<Vec<MessageRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE tenant = $1 ORDER BY last_used_at, message_id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_all(self.pool)
            .await?)
    }

    /// Whether `owner` has any message in chat `chat_id`: a chat exists for its user only.
    pub async fn chat_exists(&self, owner: &Owner, chat_id: &ChatId) -> Result<bool, CatalogError> {
        let row = sqlx::query(
            "SELECT 1 FROM messages WHERE tenant = $1 AND user_id = $2 AND chat_id = $3 LIMIT 1",
        )
        .bind(&owner.tenant)
        .bind(&owner.user)
        .bind(chat_id)
        .fetch_optional(self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The messages of `owner` in chat `chat_id`, oldest first.
    pub async fn of_chat(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
    ) -> Result<Vec<MessageRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE tenant = $1 AND user_id = $2 AND chat_id = $3 \
             ORDER BY created_at, message_id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&owner.tenant)
            .bind(&owner.user)
            .bind(chat_id)
            .fetch_all(self.pool)
            .await?)
    }

    /// Forgets message `message_id` of `tenant` (its chat was deleted): the same id used
    /// again later is a new message with a new workspace. Its runs stay, as history.
    pub async fn forget(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM messages WHERE tenant = $1 AND message_id = $2")
            .bind(tenant)
            .bind(message_id)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// The message that uses `workspace_id`, if any.
    pub async fn by_workspace(
        &self,
        workspace_id: &WorkspaceId,
    ) -> Result<Option<MessageRecord>, CatalogError> {
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE workspace_id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(workspace_id)
            .fetch_optional(self.pool)
            .await?)
    }
}
