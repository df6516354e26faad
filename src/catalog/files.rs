//! The `files` table: every stored file, uploaded or generated, with its owner, its place in
//! the chat and where its bytes are. Deleting is soft: `deleted_at` hides a file at once and
//! the reaper purges its bytes later.

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;

use super::usage::{QuotaScope, StoredQuota, TENANT_BYTES, USER_BYTES, clamp};
use super::{CatalogError, Owner};
use crate::ids::{BlobKey, ChatId, FileId, MessageId, RunId, TenantId, UserId};

/// Where a stored file came from. Its name (`code_execution`) is the text stored in the catalog
/// and shown in the API.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum FileSource {
    /// A user uploaded it.
    Upload,
    /// A run wrote it.
    CodeExecution,
    /// A run drew it: a figure the interpreter returned.
    Figure,
}

/// How the catalog's rows are read (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for FileSource {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value
            .parse()
            .map_err(|_| format!("unknown file source {value:?}"))
    }
}

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FileRecord {
    /// Opaque id (`file_...`).
    pub id: FileId,
    /// The owner's tenant.
    pub tenant: TenantId,
    /// The owner.
    pub user_id: UserId,
    /// The chat it belongs to, if any.
    pub chat_id: Option<ChatId>,
    /// The message it belongs to, if any.
    pub message_id: Option<MessageId>,
    /// The run that wrote it (generated files only).
    pub run_id: Option<RunId>,
    /// The file's name as the user or the code gave it (not sanitized: display only).
    pub name: String,
    /// Where the code sees it: `/mnt/data/<relative path>`.
    pub path: String,
    /// Size in bytes.
    pub size: i64,
    /// MIME type guessed from the name.
    pub content_type: String,
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
    /// Upload or generated.
    #[sqlx(try_from = "String")]
    pub source: FileSource,
    /// The input this file replaced, when the code overwrote an attachment.
    pub derived_from: Option<FileId>,
    /// The blob store key of the bytes.
    pub blob_key: BlobKey,
    /// When it was stored.
    pub created_at: String,
    /// When it was deleted, if it was.
    pub deleted_at: Option<String>,
    /// When it was last renamed; its `created_at` until then.
    pub modified_at: String,
    /// When the chat it was uploaded into went away, leaving it in the user's files.
    pub unlinked_at: Option<String>,
}

/// What [`Files::list`] shows: filters, a keyset position and a page size.
#[derive(Debug, Clone, Default)]
pub struct FileQuery {
    /// Only the files of this chat.
    pub chat_id: Option<ChatId>,
    /// Only the files of this message.
    pub message_id: Option<MessageId>,
    /// Only the files from this source.
    pub source: Option<FileSource>,
    /// Only the files whose name contains this text, whatever the case of its ASCII letters.
    pub name_contains: Option<String>,
    /// Only the files after this `(created_at, id)` in newest-first order.
    pub after: Option<(String, FileId)>,
    /// At most this many files.
    pub limit: i64,
}

/// A unique violation (only the index of workspace names can raise one: ids are minted
/// fresh) as [`CatalogError::NameTaken`]; any other error as it is.
fn name_taken(error: sqlx::Error, name: &str) -> CatalogError {
    match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            CatalogError::NameTaken(name.to_owned())
        }
        _ => error.into(),
    }
}

/// Escapes `LIKE`'s wildcards (and its escape character, `\`) so that `text` matches itself.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Accessor for the `files` table.
pub struct Files<'a> {
    pub(super) pool: &'a AnyPool,
}

const COLUMNS: &str = "id, tenant, user_id, chat_id, message_id, run_id, name, path, size, \
    content_type, sha256, source, derived_from, blob_key, created_at, deleted_at, modified_at, \
    unlinked_at";

impl<'a> Files<'a> {
    pub(super) fn new(pool: &'a AnyPool) -> Self {
        Self { pool }
    }

    /// Records a stored file within `quota`. A file without a chat whose name a live file of
    /// the owner's workspace already has is refused with [`CatalogError::NameTaken`]; one that
    /// would take its owner's or their tenant's live files past the quota, with
    /// [`CatalogError::QuotaExceeded`]. The sums and the insert are one statement, and under a
    /// quota the tenant's row of `quota_locks` is held until it commits, so that two
    /// concurrent inserts cannot both fit in the room only one has (SQLite runs one writer at
    /// a time; PostgreSQL would run both statements side by side).
    pub async fn insert(&self, file: &FileRecord, quota: StoredQuota) -> Result<(), CatalogError> {
        // Casts give every database a 64-bit integer to compare (Postgres sums BIGINT into
        // NUMERIC, and an untyped NULL parameter needs a type).
        let sql = format!(
            "INSERT INTO files ({COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18 WHERE (CAST($19 AS BIGINT) IS NULL OR {USER_BYTES} + $9 <= CAST($19 AS BIGINT)) \
             AND (CAST($20 AS BIGINT) IS NULL OR {TENANT_BYTES} + $9 <= CAST($20 AS BIGINT))"
        );
        let mut transaction = self.pool.begin().await?;
        if quota != StoredQuota::default() {
            // An upsert that changes nothing still locks the row (PostgreSQL) or takes the
            // write lock (SQLite) until the commit.
            sqlx::query(
                "INSERT INTO quota_locks (tenant) VALUES ($1) \
                 ON CONFLICT (tenant) DO UPDATE SET tenant = excluded.tenant",
            )
            .bind(&file.tenant)
            .execute(&mut *transaction)
            .await?;
        }
        let result = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&file.id)
            .bind(&file.tenant)
            .bind(&file.user_id)
            .bind(&file.chat_id)
            .bind(&file.message_id)
            .bind(&file.run_id)
            .bind(&file.name)
            .bind(&file.path)
            .bind(file.size)
            .bind(&file.content_type)
            .bind(&file.sha256)
            .bind(<&str>::from(file.source))
            .bind(&file.derived_from)
            .bind(&file.blob_key)
            .bind(&file.created_at)
            .bind(&file.deleted_at)
            .bind(&file.modified_at)
            .bind(&file.unlinked_at)
            .bind(quota.user.map(clamp))
            .bind(quota.tenant.map(clamp))
            .execute(&mut *transaction)
            .await
            .map_err(|error| name_taken(error, &file.name))?;
        transaction.commit().await?;
        if result.rows_affected() > 0 {
            return Ok(());
        }
        // Which quota refused it, for a message that says so.
        let used = self.stored_bytes(&file.tenant, &file.user_id).await?;
        let (scope, used, limit) = match (quota.user, quota.tenant) {
            (Some(limit), _) if used.user + file.size.max(0) as u64 > limit => {
                (QuotaScope::User, used.user, limit)
            }
            (_, Some(limit)) => (QuotaScope::Tenant, used.tenant, limit),
            (Some(limit), None) => (QuotaScope::User, used.user, limit),
            (None, None) => {
                return Err(CatalogError::Corrupt {
                    table: "files",
                    id: file.id.to_string(),
                    reason: "an insert without a quota inserted nothing".to_owned(),
                });
            }
        };
        Err(CatalogError::QuotaExceeded { scope, used, limit })
    }

    /// Renames the live file `id` of `owner` (its display name and the path the code sees),
    /// and sets its `modified_at`; returns whether there was such a file. The same name rule
    /// as [`Files::insert`] holds.
    pub async fn rename(
        &self,
        owner: &Owner,
        id: &FileId,
        (name, path): (&str, &str),
        now: &str,
    ) -> Result<bool, CatalogError> {
        let result = sqlx::query(
            "UPDATE files SET name = $4, path = $5, modified_at = $6 \
             WHERE id = $1 AND tenant = $2 AND user_id = $3 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(&owner.tenant)
        .bind(&owner.user)
        .bind(name)
        .bind(path)
        .bind(now)
        .execute(self.pool)
        .await
        .map_err(|error| name_taken(error, name))?;
        Ok(result.rows_affected() > 0)
    }

    /// The live file of `owner`'s own workspace (no chat) named `name`, if there is one.
    pub async fn in_workspace_named(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<Option<FileRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM files WHERE tenant = $1 AND user_id = $2 AND name = $3 \
             AND chat_id IS NULL AND deleted_at IS NULL"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&owner.tenant)
            .bind(&owner.user)
            .bind(name)
            .fetch_optional(self.pool)
            .await?)
    }

    /// One page of `owner`'s live files, newest first, that pass `query`'s filters and come
    /// after its keyset position: an index range scan, whatever the page's depth.
    pub async fn list(
        &self,
        owner: &Owner,
        query: &FileQuery,
    ) -> Result<Vec<FileRecord>, CatalogError> {
        // Each filter adds a condition on the next numbered parameter, bound in the same order.
        let mut sql = format!(
            "SELECT {COLUMNS} FROM files WHERE tenant = $1 AND user_id = $2 AND deleted_at IS NULL"
        );
        let mut texts: Vec<String> = Vec::new();
        let mut condition = |sql: &mut String, template: &str, value: String| {
            texts.push(value);
            sql.push_str(&template.replace('?', &format!("${}", texts.len() + 2)));
        };
        if let Some(chat_id) = &query.chat_id {
            condition(&mut sql, " AND chat_id = ?", chat_id.to_string());
        }
        if let Some(message_id) = &query.message_id {
            condition(&mut sql, " AND message_id = ?", message_id.to_string());
        }
        if let Some(source) = query.source {
            condition(&mut sql, " AND source = ?", <&str>::from(source).to_owned());
        }
        if let Some(part) = &query.name_contains {
            let pattern = format!("%{}%", escape_like(part));
            condition(
                &mut sql,
                " AND LOWER(name) LIKE LOWER(?) ESCAPE '\\'",
                pattern,
            );
        }
        if let Some((created_at, id)) = &query.after {
            condition(&mut sql, " AND (created_at < ?", created_at.clone());
            condition(&mut sql, " OR (created_at = ? AND ", created_at.clone());
            condition(&mut sql, "id < ?))", id.to_string());
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            texts.len() + 3
        ));
        let mut statement = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&owner.tenant)
            .bind(&owner.user);
        for text in texts {
            statement = statement.bind(text);
        }
        Ok(statement.bind(query.limit).fetch_all(self.pool).await?)
    }

    /// The live file `id` if `owner` owns it; another owner's file is `None`, as is a deleted one.
    pub async fn get(
        &self,
        owner: &Owner,
        id: &FileId,
    ) -> Result<Option<FileRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM files \
             WHERE id = $1 AND tenant = $2 AND user_id = $3 AND deleted_at IS NULL"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&owner.tenant)
            .bind(&owner.user)
            .fetch_optional(self.pool)
            .await?)
    }

    /// The live file `id` whoever owns it: for checking signed links, which carry no token.
    pub async fn get_live(&self, id: &FileId) -> Result<Option<FileRecord>, CatalogError> {
        let sql = format!("SELECT {COLUMNS} FROM files WHERE id = $1 AND deleted_at IS NULL");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool)
            .await?)
    }

    /// The live files a run registered, oldest first.
    pub async fn of_run(&self, run_id: &RunId) -> Result<Vec<FileRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM files WHERE run_id = $1 AND deleted_at IS NULL \
             ORDER BY created_at, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_all(self.pool)
            .await?)
    }

    /// The live files of one message of `owner`, oldest first: the generated ones, plus the
    /// uploads tied to the message when `include_uploads` is set.
    pub async fn of_message(
        &self,
        owner: &Owner,
        message_id: &MessageId,
        include_uploads: bool,
    ) -> Result<Vec<FileRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM files \
             WHERE tenant = $1 AND user_id = $2 AND message_id = $3 AND deleted_at IS NULL \
             AND (source <> 'upload' OR $4 = 1) ORDER BY created_at, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&owner.tenant)
            .bind(&owner.user)
            .bind(message_id)
            .bind(i64::from(include_uploads))
            .fetch_all(self.pool)
            .await?)
    }

    /// Live files of `owner` in chat `chat_id` that the code generated, oldest first.
    pub async fn of_chat(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
    ) -> Result<Vec<FileRecord>, CatalogError> {
        self.of_chat_where(owner, chat_id, "source <> 'upload'")
            .await
    }

    /// The uploads of `owner` still linked to chat `chat_id` (live, not unlinked), oldest
    /// first: what a chat's delete dialog offers.
    pub async fn linked_uploads(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
    ) -> Result<Vec<FileRecord>, CatalogError> {
        self.of_chat_where(owner, chat_id, "source = 'upload' AND unlinked_at IS NULL")
            .await
    }

    /// Live files of `owner` in chat `chat_id` that also meet `condition` (a constant of this
    /// module, never input), oldest first.
    async fn of_chat_where(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
        condition: &'static str,
    ) -> Result<Vec<FileRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM files \
             WHERE tenant = $1 AND user_id = $2 AND chat_id = $3 AND deleted_at IS NULL \
             AND {condition} ORDER BY created_at, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&owner.tenant)
            .bind(&owner.user)
            .bind(chat_id)
            .fetch_all(self.pool)
            .await?)
    }

    /// Marks the uploads of `owner` in chat `chat_id` unlinked (their chat is gone; they stay
    /// the user's files); returns how many.
    pub async fn unlink_chat_uploads(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
        now: &str,
    ) -> Result<u64, CatalogError> {
        let result = sqlx::query(
            "UPDATE files SET unlinked_at = $4 WHERE tenant = $1 AND user_id = $2 \
             AND chat_id = $3 AND source = 'upload' AND deleted_at IS NULL \
             AND unlinked_at IS NULL",
        )
        .bind(&owner.tenant)
        .bind(&owner.user)
        .bind(chat_id)
        .bind(now)
        .execute(self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Live files stored before `cutoff`, for the retention reaper.
    pub async fn created_before(&self, cutoff: &str) -> Result<Vec<FileRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL AND created_at < $1 \
             ORDER BY created_at, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(cutoff)
            .fetch_all(self.pool)
            .await?)
    }

    /// Files deleted before `cutoff`, whose bytes may now be purged.
    pub async fn deleted_before(&self, cutoff: &str) -> Result<Vec<FileRecord>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM files WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
             ORDER BY deleted_at, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(cutoff)
            .fetch_all(self.pool)
            .await?)
    }

    /// Soft-deletes a file whoever owns it (retention), if it is still live.
    pub async fn expire(&self, id: &FileId, now: &str) -> Result<bool, CatalogError> {
        let result =
            sqlx::query("UPDATE files SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(self.pool)
                .await?;
        Ok(result.rows_affected() > 0)
    }

    /// The blob keys that the rows of `ids` name, deleted files' rows included (their bytes
    /// are the purge's to remove): what the orphan sweep checks a page of keys against, in
    /// one query by primary key.
    pub async fn blob_keys_of(&self, ids: &[FileId]) -> Result<Vec<BlobKey>, CatalogError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT blob_key FROM files WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut statement = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for id in ids {
            statement = statement.bind(id);
        }
        let keys: Vec<String> = statement.fetch_all(self.pool).await?;
        Ok(keys.into_iter().map(BlobKey::from_stored).collect())
    }

    /// Removes the row of a deleted file, once its bytes are purged.
    pub async fn purge(&self, id: &FileId) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM files WHERE id = $1 AND deleted_at IS NOT NULL")
            .bind(id)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// Soft-deletes the file `id` of `owner`; returns whether a live file was deleted.
    pub async fn soft_delete(
        &self,
        owner: &Owner,
        id: &FileId,
        now: &str,
    ) -> Result<bool, CatalogError> {
        let result = sqlx::query(
            "UPDATE files SET deleted_at = $4 \
             WHERE id = $1 AND tenant = $2 AND user_id = $3 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(&owner.tenant)
        .bind(&owner.user)
        .bind(now)
        .execute(self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_stored_and_shown_by_the_same_name() {
        use FileSource::*;
        let names = ["upload", "code_execution", "figure"];
        for (source, name) in [Upload, CodeExecution, Figure].into_iter().zip(names) {
            assert_eq!(<&str>::from(source), name);
            assert_eq!(FileSource::try_from(name.to_owned()), Ok(source));
            assert_eq!(serde_json::to_value(source).expect("JSON"), name);
        }
        assert!(FileSource::try_from("Upload".to_owned()).is_err());
    }

    #[test]
    fn like_wildcards_match_themselves() {
        assert_eq!(escape_like("50%_a\\b.csv"), "50\\%\\_a\\\\b.csv");
        assert_eq!(escape_like("plain"), "plain");
    }
}
