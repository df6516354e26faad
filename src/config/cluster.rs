//! The `[cluster]` section: how this instance takes part when several share one catalog and
//! one blob store. Every instance names itself in the catalog with the URL the others reach it
//! at and a heartbeat; a message's requests that reach another instance are forwarded to the
//! one that holds its workspace, and a message whose instance stopped beating is taken over
//! (`supervisor/placement.rs`). A lone instance needs none of it set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Taking part in a deployment of several instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The base URL the other instances reach this one at (`http://10.0.0.5:8080`): where
    /// they forward the requests of the messages this instance holds. Unset means
    /// `http://<the address it listens on>`, which only works where that address is not
    /// `0.0.0.0` (loopback, or one interface's address).
    pub advertise_url: Option<String>,
    /// How often this instance renews its heartbeat in the catalog.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An instance whose heartbeat is older than this is gone: the next request for one of
    /// its messages takes the message over and rebuilds its workspace here. It must be
    /// several heartbeats long, so that a slow beat is not taken for a death.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            advertise_url: None,
            heartbeat_interval: Duration::from_secs(5),
            node_timeout: Duration::from_secs(30),
        }
    }
}
