//! `codebox serve`: everything around the HTTP API that a long-running server does at start,
//! in the background and at the end. Start-up checks that the engine sees the workspaces folder
//! (bind mounts need a shared file system), marks runs interrupted by the last stop as failed,
//! removes orphaned sandboxes, warm slots and whatever sandbox a crash left running, loads
//! tokens and the link-signing secret, then serves; a reaper pass runs every
//! `retention.reap_interval`, and the warm pool is kept full in the background. A graceful stop removes the warm slots and every sandbox this instance
//! started (the messages' workspaces stay).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState, Signer, Tokens};
use crate::config::{Config, Role, TokenConfig};
use crate::supervisor::Supervisor;

/// The file `serve` creates with development tokens when none are configured.
pub const TOKENS_FILE: &str = "tokens.toml";
/// The file that keeps a generated link-signing secret.
pub const SECRET_FILE: &str = "signing-secret";

/// The tokens file's shape.
#[derive(serde::Serialize, serde::Deserialize)]
struct TokensFile {
    tokens: Vec<TokenConfig>,
}

/// Opens the supervisor and builds the API state the way `codebox serve` does.
pub async fn prepare(config: Config) -> anyhow::Result<AppState> {
    let supervisor = Arc::new(Supervisor::open(config).await?);
    supervisor.check_host_folder().await?;
    let interrupted = supervisor.fail_interrupted_runs().await?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "marked runs interrupted by the last stop as failed"
        );
    }
    let removed = supervisor.reconcile().await?;
    if removed > 0 {
        tracing::info!(removed, "removed sandboxes that no message owns");
    }
    let stale = supervisor.clear_pool().await?;
    if stale > 0 {
        tracing::info!(stale, "removed warm sandboxes left by the last stop");
    }
    // After a crash (kill -9, a lost host) the messages' sandboxes are still there, with
    // interpreters no process can talk to: they go, as a graceful stop would have removed them.
    let left = supervisor.release_stale_sandboxes().await?;
    if left > 0 {
        tracing::info!(left, "removed sandboxes the last process left running");
    }
    let config = supervisor.config();
    let tokens = if config.server.tokens.is_empty() {
        development_tokens(&config.data_dir)?
    } else {
        config.server.tokens.clone()
    };
    let tokens = Tokens::new(&tokens).map_err(anyhow::Error::msg)?;
    let secret = match &config.server.signing_secret {
        Some(secret) => secret.clone(),
        None => stored_secret(&config.data_dir.join(SECRET_FILE))?,
    };
    let signer = Signer::new(secret.as_bytes())
        .map_err(|_| anyhow::anyhow!("server.signing_secret must not be empty"))?;
    Ok(AppState::new(supervisor, tokens, signer))
}

/// Serves until Ctrl-C or SIGTERM, with the reaper running in the background.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let address = listener.local_addr().context("read the bound address")?;
    // Signed links name the address actually bound (`--listen 127.0.0.1:0` gets its real
    // port) unless `server.public_url` names another: see `ServerConfig::public_base_url`.
    config.server.listen = address;
    if config.server.public_url.is_none() && address.ip().is_unspecified() {
        tracing::warn!(
            "listening on {address}: signed links will name 127.0.0.1; set server.public_url to the name clients use"
        );
    }
    let advertised = advertise_url(&config, address);
    let state = prepare(config).await?;
    // The first heartbeat before the first request: other instances forward this one's
    // messages to it only once it is in `nodes`.
    let started_at = crate::catalog::now();
    state
        .supervisor
        .heartbeat(&advertised, &started_at)
        .await
        .context("record this instance in the catalog's nodes")?;
    eprintln!("codebox: listening on http://{address}");
    let reaper = tokio::spawn(reap_forever(state.supervisor.clone()));
    let pool = tokio::spawn(state.supervisor.clone().keep_pool_warm());
    let heart = tokio::spawn(beat_forever(
        state.supervisor.clone(),
        advertised,
        started_at,
    ));
    let served = api::serve(listener, state.clone(), shutdown_signal()).await;
    reaper.abort();
    pool.abort();
    heart.abort();
    let _ = pool.await;
    let _ = heart.await;
    // Every request has been answered: this instance's messages may go to another now,
    // without waiting for the heartbeat to lapse.
    if let Err(error) = state.supervisor.leave_cluster().await {
        tracing::error!(%error, "could not remove this instance from the catalog's nodes");
    }
    if let Err(error) = state.supervisor.clear_pool().await {
        tracing::error!(%error, "could not remove the warm sandboxes");
    }
    // A stopped server's sandboxes would run on for good, holding memory and processes: they
    // go now. Their workspaces stay, and the next run of each message starts a new sandbox on
    // the same files.
    match state.supervisor.release_own_sandboxes().await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed this instance's sandboxes"),
        Err(error) => tracing::error!(%error, "could not remove this instance's sandboxes"),
    }
    served?;
    Ok(())
}

/// The URL the other instances reach this one at: `cluster.advertise_url`, else the address it
/// listens on, which names this host's name where it listens on every interface.
fn advertise_url(config: &Config, address: std::net::SocketAddr) -> String {
    if let Some(url) = &config.cluster.advertise_url {
        return url.trim_end_matches('/').to_owned();
    }
    if !address.ip().is_unspecified() {
        return format!("http://{address}");
    }
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    tracing::warn!(
        "listening on {address}: other instances will reach this one at http://{host}:{}; set cluster.advertise_url if they cannot",
        address.port()
    );
    format!("http://{host}:{}", address.port())
}

/// Renews this instance's heartbeat every `cluster.heartbeat_interval`. A failed beat is
/// logged and tried again at the next tick: the instance keeps serving, and only once beats
/// fail for `cluster.node_timeout` do others take its messages over.
async fn beat_forever(supervisor: Arc<Supervisor>, url: String, started_at: String) {
    let mut ticks = tokio::time::interval(supervisor.config().cluster.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = supervisor.heartbeat(&url, &started_at).await {
            tracing::warn!(%error, "could not renew this instance's heartbeat");
        }
    }
}

/// One reaper pass every `reap_interval`, logging what it removed.
async fn reap_forever(supervisor: Arc<Supervisor>) {
    let mut ticks = tokio::time::interval(supervisor.config().retention.reap_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match supervisor.reap(false).await {
            Ok(report) => {
                if !(report.containers.is_empty()
                    && report.workspaces.is_empty()
                    && report.files_purged.is_empty()
                    && report.files_expired.is_empty()
                    && report.blobs_swept.is_empty())
                {
                    tracing::info!(?report, "reaper pass");
                }
            }
            Err(error) => tracing::warn!(%error, "reaper pass failed"),
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// A fresh random secret: two v4 UUIDs, 244 random bits from the OS.
fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes `content` to a new file readable by its owner only; refuses to overwrite.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// The link-signing secret kept in `path`, created on first use.
fn stored_secret(path: &Path) -> anyhow::Result<String> {
    if !path.exists() {
        write_private(path, &random_secret())?;
    }
    let secret =
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(secret.trim().to_owned())
}

/// With no tokens configured: the tokens in `<data_dir>/tokens.toml`, created on first use
/// with one service and one admin token for tenant `default`.
fn development_tokens(data_dir: &Path) -> anyhow::Result<Vec<TokenConfig>> {
    let path = data_dir.join(TOKENS_FILE);
    if !path.exists() {
        let tokens = TokensFile {
            tokens: vec![
                TokenConfig {
                    token: Some(format!("svc_{}", random_secret())),
                    token_sha256: None,
                    tenant: "default".to_owned(),
                    role: Role::Service,
                },
                TokenConfig {
                    token: Some(format!("adm_{}", random_secret())),
                    token_sha256: None,
                    tenant: "default".to_owned(),
                    role: Role::Admin,
                },
            ],
        };
        let text = toml::to_string(&tokens).context("write the development tokens")?;
        write_private(&path, &text)?;
        eprintln!(
            "codebox: no tokens configured; created {} with a service and an admin token for tenant \"default\"",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let file: TokensFile =
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    Ok(file.tokens)
}
