//! The `nodes` table: the codebox instances that share this catalog, each with the URL the
//! others reach it at and its last heartbeat. A message names the node that holds its
//! workspace (`messages.node`); another node forwards the message's requests to that URL while
//! the heartbeat is fresh, and takes the message over once it lapsed (`supervisor/placement.rs`).

use sqlx::AnyPool;

use super::CatalogError;

/// One instance sharing the catalog.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRecord {
    /// The instance id (one per data folder: `inst_...`).
    pub id: String,
    /// The base URL the other instances reach it at (`http://10.0.0.5:8080`).
    pub url: String,
    /// When it started.
    pub started_at: String,
    /// When it last said it lives.
    pub heartbeat_at: String,
}

/// Accessor for the `nodes` table.
pub struct Nodes<'a> {
    pool: &'a AnyPool,
}

impl<'a> Nodes<'a> {
    pub(super) fn new(pool: &'a AnyPool) -> Self {
        Self { pool }
    }

    /// Records that `node` lives now at its URL: inserts its row, or updates the URL and the
    /// heartbeat of the one it has. One statement, so that two processes never both insert.
    pub async fn beat(&self, node: &NodeRecord) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO nodes (id, url, started_at, heartbeat_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&node.id)
        .bind(&node.url)
        .bind(&node.started_at)
        .bind(&node.heartbeat_at)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// The node `id`, if it has a row.
    pub async fn get(&self, id: &str) -> Result<Option<NodeRecord>, CatalogError> {
        Ok(
            sqlx::query_as("SELECT id, url, started_at, heartbeat_at FROM nodes WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool)
                .await?,
        )
    }

    /// Every node with a row, alive or not, by id.
    pub async fn all(&self) -> Result<Vec<NodeRecord>, CatalogError> {
        Ok(
            sqlx::query_as("SELECT id, url, started_at, heartbeat_at FROM nodes ORDER BY id")
                .fetch_all(self.pool)
                .await?,
        )
    }

    /// Removes the row of `id`: a node that stops gracefully says it is gone, so that its
    /// messages are taken over at once instead of after the heartbeat lapses.
    pub async fn remove(&self, id: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(self.pool)
            .await?;
        Ok(())
    }
}
