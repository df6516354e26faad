//! The `Bench`: the server under test, its client, and what the cases share (the Docker
//! connection, the CSV, the names of messages and containers, the messages still live). Each
//! case adds its own methods to it, in its own module.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::Docker;

use crate::api::Api;
use crate::args::Args;
use crate::autogen::AutogenHelper;
use crate::server::{Server, default_codebox_binary};
use crate::workload::{CSV_ROWS, generate_csv};

/// How many first runs of the sweep's messages are sent at once; more would only queue on
/// two cores, and each one imports pandas.
pub(crate) const WARM_CONCURRENCY: usize = 4;

/// The server under test, its client, and what the cases share.
pub(crate) struct Bench {
    pub(crate) server: Server,
    pub(crate) api: Api,
    pub(crate) docker: Docker,
    pub(crate) image: String,
    pub(crate) warm_pool: usize,
    /// The benchmark's own containers are named `codebox-bench-<nonce>-...`.
    pub(crate) nonce: String,
    /// The generated CSV, uploaded anew for every pandas message.
    pub(crate) csv: Vec<u8>,
    /// The folder the pandas baselines mount at `/mnt/data`; it holds a copy of the CSV.
    pub(crate) baseline_data: PathBuf,
    /// The scratch folder, for nginx's and the helper's files.
    pub(crate) scratch: PathBuf,
    /// Messages whose workspace may still exist.
    pub(crate) live: Vec<String>,
    /// Numbers fresh messages and baseline containers.
    pub(crate) minted: u64,
    /// The AutoGen helper, while it runs.
    pub(crate) autogen: Option<AutogenHelper>,
    /// Every warm slot seen ready, with its interpreter's CPU time (in clock ticks) then:
    /// what making it ready cost, since a slot runs nothing before a message takes it.
    pub(crate) slot_cpu_ticks: HashMap<String, u64>,
}

impl Bench {
    /// Starts the server on a free loopback port with a configuration written under
    /// `scratch`, waits until it answers and its pool is full, and writes the CSV.
    pub(crate) async fn open(scratch: &Path, args: &Args) -> Result<Self> {
        let binary = match &args.codebox {
            Some(binary) => binary.clone(),
            None => default_codebox_binary()?,
        };
        let nonce = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let docker = Docker::connect_with_local_defaults()
            .context("connect to the Docker engine")?
            .negotiate_version()
            .await
            .context("negotiate the engine's API version")?;
        let server = Server::start(&binary, scratch, args).await?;
        let http = reqwest::Client::builder()
            // Long enough for a 1 GiB transfer on a slow machine; a hung server still ends.
            .timeout(Duration::from_secs(600))
            .build()
            .context("build the HTTP client")?;
        let api = Api {
            http,
            base_url: server.base_url.clone(),
        };
        let csv = generate_csv(CSV_ROWS).into_bytes();
        let baseline_data = scratch.join("baseline");
        std::fs::create_dir(&baseline_data).context("create the baseline folder")?;
        // The image runs as uid 1000, which must be able to write the report next to the CSV.
        std::fs::set_permissions(&baseline_data, std::fs::Permissions::from_mode(0o777))
            .context("open the baseline folder to the sandbox user")?;
        std::fs::write(baseline_data.join("data.csv"), &csv).context("write the CSV")?;
        let mut bench = Self {
            server,
            api,
            docker,
            image: args.image.clone(),
            warm_pool: args.warm_pool,
            nonce,
            csv,
            baseline_data,
            scratch: scratch.to_owned(),
            live: Vec::new(),
            minted: 0,
            autogen: None,
            slot_cpu_ticks: HashMap::new(),
        };
        bench.wait_pool_full().await?;
        Ok(bench)
    }

    /// A message id not used before; it is tracked so that its workspace is deleted even if
    /// the benchmark stops early.
    pub(crate) fn fresh_message(&mut self, kind: &str) -> String {
        self.minted += 1;
        let message = format!("{kind}-{}-{}", self.nonce, self.minted);
        self.live.push(message.clone());
        message
    }

    /// A name for one of the benchmark's own containers.
    pub(crate) fn container_name(&mut self, kind: &str) -> String {
        self.minted += 1;
        format!("codebox-bench-{}-{kind}-{}", self.nonce, self.minted)
    }

    /// Deletes a message's workspace and container.
    pub(crate) async fn discard(&mut self, message: &str) -> Result<()> {
        self.api.delete_workspace(message).await?;
        self.live.retain(|live| live != message);
        Ok(())
    }

    /// Deletes the workspaces of `messages`, a few at a time.
    pub(crate) async fn discard_all(&mut self, messages: &[String]) -> Result<()> {
        for chunk in messages.chunks(WARM_CONCURRENCY) {
            let deletes = chunk
                .iter()
                .map(|message| self.api.delete_workspace(message));
            for outcome in futures::future::join_all(deletes).await {
                outcome?;
            }
            self.live.retain(|live| !chunk.contains(live));
        }
        Ok(())
    }
}
