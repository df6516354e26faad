//! What the `files` table says of how much users keep: the live bytes per user and tenant,
//! which operators list and quotas are weighed against, and the quota an insert is checked
//! against (see [`Files::insert`]).

use super::CatalogError;
use super::files::Files;
use crate::ids::{TenantId, UserId};

/// The live files of one user and the bytes they hold (see [`Files::usage`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FileUsage {
    /// The tenant.
    pub tenant: TenantId,
    /// The user within it.
    pub user_id: UserId,
    /// How many live files the user has.
    pub files: i64,
    /// The bytes they hold together.
    pub bytes: i64,
}

/// The bytes of the live files of the user `$2`/`$3` name, and of their tenant: parts of
/// [`Files::insert`]'s statement, which binds the tenant and the user as `$2` and `$3`.
pub(super) const USER_BYTES: &str = "(SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM files \
    WHERE tenant = $2 AND user_id = $3 AND deleted_at IS NULL)";
pub(super) const TENANT_BYTES: &str = "(SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM files \
    WHERE tenant = $2 AND deleted_at IS NULL)";

/// How many bytes of live files an insert may bring its owner and their tenant to; `None`
/// is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredQuota {
    /// The most one user may keep.
    pub user: Option<u64>,
    /// The most one tenant's users may keep together.
    pub tenant: Option<u64>,
}

/// Whose quota refused a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    /// The user's own.
    User,
    /// Their tenant's, shared by its users.
    Tenant,
}

/// The bytes of live files a user keeps, and their whole tenant keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredBytes {
    /// The user's.
    pub user: u64,
    /// The tenant's, the user's included.
    pub tenant: u64,
}

/// A quota as the database compares it.
pub(super) fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Files<'_> {
    /// The bytes of live files `user` of `tenant` keeps, and their whole tenant keeps.
    pub async fn stored_bytes(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<StoredBytes, CatalogError> {
        let (user, tenant): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(CASE WHEN user_id = $2 THEN size ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(size), 0) AS BIGINT) \
             FROM files WHERE tenant = $1 AND deleted_at IS NULL",
        )
        .bind(tenant)
        .bind(user)
        .fetch_one(self.pool)
        .await?;
        Ok(StoredBytes {
            user: u64::try_from(user).unwrap_or(0),
            tenant: u64::try_from(tenant).unwrap_or(0),
        })
    }

    /// Live files and the bytes they hold per (tenant, user), of `tenant` or of every tenant,
    /// ordered by tenant and user: what operators see of stored files.
    pub async fn usage(&self, tenant: Option<&TenantId>) -> Result<Vec<FileUsage>, CatalogError> {
        // The sum is cast so that every database returns a 64-bit integer (Postgres sums
        // BIGINT into NUMERIC).
        let scope = if tenant.is_some() {
            "AND tenant = $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT tenant, user_id, COUNT(*) AS files, \
             CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
             FROM files WHERE deleted_at IS NULL {scope} \
             GROUP BY tenant, user_id ORDER BY tenant, user_id"
        );
        let query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        let query = match tenant {
            Some(tenant) => query.bind(tenant),
            None => query,
        };
        Ok(query.fetch_all(self.pool).await?)
    }
}
