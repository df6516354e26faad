//! The `leases` table: a named duty held by one codebox instance until a time. Several
//! instances share one catalog; a duty that must not run twice at once (the global part of
//! the reaper: file expiry, purges, the orphan sweep) is done only by the holder of its lease.
//! The holder renews it while it lives; once it lapses, any instance may take it over.
//!
//! Every change is one conditional statement, so that two instances racing for a lease never
//! both win: the insert of a new lease is refused by the primary key, and taking over or
//! renewing one is an update that names the holder or a lapsed time.

use sqlx::AnyPool;

use super::CatalogError;

/// Accessor for the `leases` table.
pub struct Leases<'a> {
    pool: &'a AnyPool,
}

impl<'a> Leases<'a> {
    pub(super) fn new(pool: &'a AnyPool) -> Self {
        Self { pool }
    }

    /// Takes the lease `name` for `holder` until `until`, or renews it if `holder` has it;
    /// returns whether `holder` holds it now. Another holder's lease is taken over only once
    /// it lapsed (`expires_at` before `now`). Times are the catalog's (`catalog::now`).
    pub async fn acquire(
        &self,
        name: &str,
        holder: &str,
        (now, until): (&str, &str),
    ) -> Result<bool, CatalogError> {
        let renewed = sqlx::query(
            "UPDATE leases SET holder = $2, expires_at = $3 \
             WHERE name = $1 AND (holder = $2 OR expires_at < $4)",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(self.pool)
        .await?;
        if renewed.rows_affected() > 0 {
            return Ok(true);
        }
        let inserted = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) SELECT $1, $2, $3 \
             WHERE NOT EXISTS (SELECT 1 FROM leases WHERE name = $1)",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .execute(self.pool)
        .await;
        match inserted {
            Ok(result) => Ok(result.rows_affected() > 0),
            // Another instance inserted it between our two statements: it holds it.
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Gives up the lease `name` if `holder` has it, so that another instance need not wait
    /// for it to lapse.
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// Who holds the lease `name` and until when, lapsed or not.
    pub async fn holder(&self, name: &str) -> Result<Option<(String, String)>, CatalogError> {
        Ok(
            sqlx::query_as("SELECT holder, expires_at FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool)
                .await?,
        )
    }
}
