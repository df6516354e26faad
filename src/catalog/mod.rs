//! The catalog: what codebox remembers between processes, in SQL (sqlx).
//!
//! One accessor per table: [`Catalog::messages`], [`Catalog::runs`], [`Catalog::files`],
//! [`Catalog::attachments`], [`Catalog::leases`], [`Catalog::nodes`]. The queries are portable SQL behind sqlx's
//! `Any` driver, so the default SQLite file and a shared PostgreSQL server run the same code;
//! migrations are embedded in the binary and applied on connect.

mod attachments;
mod files;
mod leases;
mod messages;
mod nodes;
mod runs;
mod usage;

use std::num::NonZeroU8;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use time::format_description::well_known::Iso8601;
use time::format_description::well_known::iso8601::{Config, EncodedConfig, TimePrecision};

use crate::ids::{BlobKey, ChatId, FileId, MessageId, RunId, TenantId, UserId, WorkspaceId};

pub use attachments::{AttachmentRecord, Attachments};
pub use files::{FileQuery, FileRecord, FileSource, Files};
pub use leases::Leases;
pub use messages::{Claim, MessageRecord, Messages};
pub use nodes::{NodeRecord, Nodes};
pub use runs::{KernelState, RunOutput, RunRecord, RunStatus, Runs, Truncation};
pub use usage::{FileUsage, QuotaScope, StoredBytes, StoredQuota};

/// Who acts: a tenant (from the caller's token) and one of its end users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The tenant, from the credentials.
    pub tenant: TenantId,
    /// The end user within the tenant.
    pub user: UserId,
}

impl Owner {
    /// An owner from its two parts, as the credentials (checked where they came in) name them.
    pub fn new(tenant: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            tenant: TenantId::from_stored(tenant),
            user: UserId::from_stored(user),
        }
    }
}

/// Lets the id types be bound to statements and read from rows as the text columns they are
/// stored in. This lives here, not in `ids`, because only the catalog may know sqlx.
macro_rules! text_columns {
    ($($id:ty),* $(,)?) => {$(
        impl sqlx::Type<sqlx::Any> for $id {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <String as sqlx::Type<sqlx::Any>>::type_info()
            }
        }

        impl sqlx::Encode<'_, sqlx::Any> for $id {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Any>>::encode(self.as_str(), buf)
            }
        }

        /// A row holds an id that was checked when it was stored.
        impl<'r> sqlx::Decode<'r, sqlx::Any> for $id {
            fn decode(
                value: <sqlx::Any as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                <String as sqlx::Decode<sqlx::Any>>::decode(value).map(<$id>::from_stored)
            }
        }
    )*};
}

text_columns!(
    BlobKey,
    ChatId,
    FileId,
    MessageId,
    RunId,
    TenantId,
    UserId,
    WorkspaceId
);

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database failed or refused the statement.
    #[error("catalog: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A live file of the user's own workspace already has this name (names are unique
    /// there, by a unique index, so that two concurrent uploads cannot both take one).
    #[error("a file named {0:?} already exists")]
    NameTaken(String),
    /// Recording a file would take its owner's or their tenant's live files past a quota.
    #[error("over the {scope:?} quota: {used} bytes used of {limit}")]
    QuotaExceeded {
        /// Whose quota.
        scope: QuotaScope,
        /// The bytes of live files already kept.
        used: u64,
        /// The quota.
        limit: u64,
    },
    /// A row holds a value this version does not understand.
    #[error("catalog row {table}/{id}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A connection pool to the catalog database.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
}

impl Catalog {
    /// Connects to `url` (a sqlx URL: `sqlite://path?mode=rwc`, `postgres://...`) and applies
    /// the migrations this binary carries.
    pub async fn connect(url: &str) -> Result<Self, CatalogError> {
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(url)?;
        let is_sqlite = url.starts_with("sqlite:");
        if is_sqlite {
            create_sqlite_parent(url);
        }
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer at a time; a few connections serve concurrent readers.
            .max_connections(if is_sqlite { 4 } else { 16 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL lets readers proceed during a write, and several processes (a
                        // server and a CLI) share one file safely.
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA synchronous = NORMAL").await?;
                        connection.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        migrate(&pool, is_sqlite).await?;
        Ok(Self { pool })
    }

    /// The `messages` table: which (tenant, user, chat) each message belongs to.
    pub fn messages(&self) -> Messages<'_> {
        Messages::new(&self.pool)
    }

    /// The `runs` table.
    pub fn runs(&self) -> Runs<'_> {
        Runs::new(&self.pool)
    }

    /// The `files` table: uploads and registered outputs.
    pub fn files(&self) -> Files<'_> {
        Files::new(&self.pool)
    }

    /// The `attachments` table: which stored file sits under which name in which workspace.
    pub fn attachments(&self) -> Attachments<'_> {
        Attachments::new(&self.pool)
    }

    /// The `leases` table: which instance holds a duty that must not run twice at once.
    pub fn leases(&self) -> Leases<'_> {
        Leases::new(&self.pool)
    }

    /// The `nodes` table: the instances sharing this catalog, their URLs and heartbeats.
    pub fn nodes(&self) -> Nodes<'_> {
        Nodes::new(&self.pool)
    }

    /// Checks that the database answers, for readiness probes.
    pub async fn ping(&self) -> Result<(), CatalogError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How many times a process applies the migrations to a SQLite file before it gives up.
const SQLITE_MIGRATION_ATTEMPTS: u32 = 10;

/// Applies the migrations this binary carries that the database lacks. PostgreSQL's migrator
/// holds an advisory lock meanwhile, so processes that connect at once take turns. SQLite has no
/// such lock: of two processes opening a new file at once, both may set out to apply a
/// migration, and the one that comes second fails (`table ... already exists`) once the first
/// committed. Each migration is one transaction, so the loser's attempt left nothing behind, and
/// applying again skips what the other process applied.
async fn migrate(pool: &AnyPool, is_sqlite: bool) -> Result<(), CatalogError> {
    let migrator = sqlx::migrate!("./migrations");
    let mut attempt = 1;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(
                sqlx::migrate::MigrateError::ExecuteMigration(..)
                | sqlx::migrate::MigrateError::Execute(_),
            ) if is_sqlite && attempt < SQLITE_MIGRATION_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Creates the folder of a SQLite file URL so that `mode=rwc` can create the file itself.
fn create_sqlite_parent(url: &str) {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return;
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        // A failure shows up, with the path, as the connection error that follows.
        let _ = std::fs::create_dir_all(parent);
    }
}

/// The current time as fixed-width RFC 3339 UTC text (`2026-11-21T10:00:00.123456Z`), so that
/// text order in the database is time order.
pub fn now() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// The catalog's time format: ISO 8601 in UTC with microseconds always written out.
const CATALOG_TIME: EncodedConfig = Config::DEFAULT
    .set_time_precision(TimePrecision::Second {
        decimal_digits: NonZeroU8::new(6),
    })
    .encode();

/// Formats a time the way the catalog stores it. A year outside 0..=9999 (only an age of
/// millennia reaches one) gives empty text, which sorts before every stored time.
pub fn format_time(at: time::OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Iso8601::<CATALOG_TIME>)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_fixed_width_and_ordered() {
        let early = time::macros::datetime!(2026-01-02 03:04:05.000007 UTC);
        let late = time::macros::datetime!(2026-01-02 03:04:05.1 UTC);
        assert_eq!(format_time(early), "2026-01-02T03:04:05.000007Z");
        assert!(format_time(early) < format_time(late));
        assert_eq!(now().len(), 27);
    }
}
