//! Which instance holds a message, when several share one catalog. A message's workspace is a
//! folder on one instance's disk, so its runs, its interpreter and its workspace's deletion
//! happen there; the catalog names that instance (`messages.node`), and every instance names
//! itself in `nodes` with the URL the others reach it at and a heartbeat.
//!
//! A request for a message reaching another instance is forwarded to the holder while the
//! holder's heartbeat is fresh (the API does that, asking [`Supervisor::placement`]). Once it
//! lapsed, or the holder said it is gone by stopping gracefully, the first instance asked for
//! the message takes it over with one conditional update, marks the runs the lost instance
//! left `running` as failed, and rebuilds the workspace on its own disk at the next run
//! (`restore.rs`). Downloads, listings and renders need no holder: they read the catalog and
//! the blob store, which every instance shares.

use super::*;
use crate::catalog::{MessageRecord, NodeRecord};
use crate::ids::{TenantId, UserId};

/// Where a message's requests are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this instance: it holds the message (it may just have taken it over), or the
    /// message does not exist yet (and whoever claims it here holds it).
    Here,
    /// On another instance, alive, which holds the message's workspace.
    Elsewhere {
        /// Its instance id.
        node: String,
        /// Its base URL, as it advertised it.
        url: String,
    },
}

/// The `reason` of the runs a lost instance left `running`, marked failed by the instance
/// that takes one of its messages over.
const LOST_INSTANCE: &str = "the instance running it stopped before it finished";

impl Supervisor {
    /// Records this instance in the catalog as living at `url` now: called at start and
    /// every `cluster.heartbeat_interval` by `codebox serve`.
    pub async fn heartbeat(&self, url: &str, started_at: &str) -> Result<()> {
        let node = NodeRecord {
            id: self.instance.clone(),
            url: url.to_owned(),
            started_at: started_at.to_owned(),
            heartbeat_at: catalog::now(),
        };
        Ok(self.catalog.nodes().beat(&node).await?)
    }

    /// Says this instance is gone, at a graceful stop: its messages are taken over by the
    /// next instance asked for them, without waiting for the heartbeat to lapse.
    pub async fn leave_cluster(&self) -> Result<()> {
        Ok(self.catalog.nodes().remove(&self.instance).await?)
    }

    /// The instances sharing the catalog, alive or not, with whether each is alive.
    pub async fn nodes(&self) -> Result<Vec<(NodeRecord, bool)>> {
        let cutoff = self.heartbeat_cutoff();
        Ok(self
            .catalog
            .nodes()
            .all()
            .await?
            .into_iter()
            .map(|node| {
                let alive = node.heartbeat_at >= cutoff;
                (node, alive)
            })
            .collect())
    }

    /// Where the requests for `tenant`'s message `message_id` are served. With `user`, a
    /// message of another user is left alone (`Here`: the operation answers not found);
    /// without, the message is placed whoever its user is (the instance that serves the
    /// request checks the user). A message whose holder is gone is taken over here.
    pub async fn placement(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        message_id: &MessageId,
    ) -> Result<Placement> {
        let Some(message) = self.catalog.messages().get(tenant, message_id).await? else {
            return Ok(Placement::Here);
        };
        if user.is_some_and(|user| *user != message.user_id) {
            return Ok(Placement::Here);
        }
        self.place(&message).await
    }

    /// Makes sure this instance holds `message` before it touches its workspace: takes it
    /// over if its holder is gone; refuses (busy, to be retried) if another instance holds it
    /// alive, which only happens to a request that raced a takeover or was sent here directly
    /// with the forwarding header.
    pub(super) async fn hold(&self, message: &MessageRecord) -> Result<()> {
        match self.place(message).await? {
            Placement::Here => Ok(()),
            Placement::Elsewhere { node, .. } => Err(Error::Busy(format!(
                "message {} is held by instance {node}; send the request again",
                message.message_id
            ))),
        }
    }

    /// [`Supervisor::placement`] of a message already read.
    pub(super) async fn place(&self, message: &MessageRecord) -> Result<Placement> {
        let holder = message.node.as_deref();
        if holder == Some(self.instance.as_str()) {
            return Ok(Placement::Here);
        }
        if let Some(alive) = self.alive_node(holder).await? {
            return Ok(alive);
        }
        let messages = self.catalog.messages();
        if messages
            .take_over(
                &message.tenant,
                &message.message_id,
                (holder, &self.instance),
            )
            .await?
        {
            if let Some(lost) = holder {
                tracing::warn!(message = %message.message_id, lost, "took over a message whose instance is gone");
                metrics::counter!("codebox_messages_taken_over_total").increment(1);
                self.catalog
                    .runs()
                    .fail_interrupted(lost, LOST_INSTANCE, &catalog::now())
                    .await?;
                self.drop_stale_copy(message).await?;
            }
            return Ok(Placement::Here);
        }
        // Another instance moved it first: it holds it now, unless it too is gone already.
        let now_held = messages
            .get(&message.tenant, &message.message_id)
            .await?
            .and_then(|message| message.node);
        if now_held.as_deref() == Some(self.instance.as_str()) {
            return Ok(Placement::Here);
        }
        match self.alive_node(now_held.as_deref()).await? {
            Some(alive) => Ok(alive),
            None => Err(Error::Busy(format!(
                "message {} is changing instance; send the request again",
                message.message_id
            ))),
        }
    }

    /// Removes what this instance kept of `message`'s workspace from a time it held it
    /// before: another instance had it since, so the copy is stale, and the next run must
    /// rebuild the workspace from the catalog rather than run on old files.
    async fn drop_stale_copy(&self, message: &MessageRecord) -> Result<()> {
        let workspace = self.workspaces.get(message.workspace_id.as_str())?;
        if workspace.exists() {
            let _lock = lock(&workspace).await?;
            self.remove_workspace_locked(&workspace).await?;
        }
        Ok(())
    }

    /// `Elsewhere` for `node` if it is another instance whose heartbeat is fresh.
    async fn alive_node(&self, node: Option<&str>) -> Result<Option<Placement>> {
        let Some(node) = node else {
            return Ok(None);
        };
        let record = self.catalog.nodes().get(node).await?;
        Ok(record
            .filter(|record| record.heartbeat_at >= self.heartbeat_cutoff())
            .map(|record| Placement::Elsewhere {
                node: record.id,
                url: record.url,
            }))
    }

    /// The oldest heartbeat of an instance still alive, as the catalog writes times.
    fn heartbeat_cutoff(&self) -> String {
        let timeout = time::Duration::try_from(self.config.cluster.node_timeout)
            .unwrap_or(time::Duration::MAX);
        catalog::format_time(
            time::OffsetDateTime::now_utc()
                .checked_sub(timeout)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        )
    }
}
