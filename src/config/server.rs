//! The `[server]` section of `codebox serve`: where it listens and is reached, what a client may
//! take of it (runs, bodies, timeouts, connections), and the bearer tokens it accepts. The
//! signing secret and the tokens are secrets, so their `Debug` output is written by hand here.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// The HTTP server (`codebox serve`).
///
/// A hostile client gets a bounded share of it: the request head must arrive within
/// `header_read_timeout`, the body at `min_body_rate` once `body_read_timeout` has passed, a
/// connection where nothing moves for `idle_timeout` is closed, a `Content-Length` over the
/// route's limit is refused before any byte of the body is read, and at most
/// `max_connections` connections are served at once (further ones wait to be accepted).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The URL clients reach the server at, the base of signed download links. Unset means
    /// `http://<listen>` (see [`ServerConfig::public_base_url`]).
    pub public_url: Option<String>,
    /// The secret that signs download links. Unset means a random one kept in
    /// `<data_dir>/signing-secret`; several servers behind one name must share one.
    pub signing_secret: Option<String>,
    /// How long a signed download link stays valid.
    #[serde(with = "humantime_serde")]
    pub download_url_ttl: Duration,
    /// Runs executing at once; further runs wait in the queue.
    pub max_runs_in_flight: usize,
    /// Runs waiting for a slot; past that a run is refused with 503.
    pub max_queued_runs: usize,
    /// Largest JSON request body (code included).
    pub max_body_bytes: ByteSize,
    /// How long shutdown waits for runs in flight before they are marked failed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a client has to send a request's line and headers, counted from when the
    /// server is ready to read them; this also closes a kept-alive connection that sends no
    /// next request in that time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request body may take before it must keep up `min_body_rate`: a body is cut
    /// off (408) once it has taken longer than this plus the time its bytes so far need at
    /// `min_body_rate`. One byte every few seconds is refused after this long; a large upload
    /// over a slow but steady link is not.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// The slowest a request body may arrive, in bytes per second, on average over the body
    /// once `body_read_timeout` has passed; `0 B` makes `body_read_timeout` a plain deadline
    /// for the whole body.
    pub min_body_rate: ByteSize,
    /// A connection on which no byte moves either way for this long, while no request of it
    /// is being worked on, is closed: a client that stops reading a download or an event
    /// stream lets its connection go. (A run that takes minutes is worked on, so its silent
    /// connection stays open.)
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections served at once; past it new connections wait in the listen backlog
    /// until one closes.
    pub max_connections: usize,
    /// The bearer tokens the server accepts. With none configured, `codebox serve` creates
    /// `<data_dir>/tokens.toml` with one service and one admin token for tenant `default`.
    pub tokens: Vec<TokenConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            signing_secret: None,
            download_url_ttl: Duration::from_secs(3600),
            max_runs_in_flight: 4,
            max_queued_runs: 32,
            max_body_bytes: ByteSize::mib(2),
            shutdown_grace: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(30),
            min_body_rate: ByteSize::kib(16),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            tokens: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The base of signed download links, without a trailing slash: `public_url` when it is
    /// set, else the address the server listens at. A wildcard address (`0.0.0.0`, `::`) is no
    /// place a browser can go, so it becomes loopback on the same port. `codebox serve` puts
    /// the address it actually bound in `listen` first, so that port `0` gets its real port.
    pub fn public_base_url(&self) -> String {
        let url = match &self.public_url {
            Some(url) => url.clone(),
            None if self.listen.ip().is_unspecified() => {
                format!("http://127.0.0.1:{}", self.listen.port())
            }
            None => format!("http://{}", self.listen),
        };
        url.trim_end_matches('/').to_owned()
    }
}

/// Written by hand so that the signing secret and the tokens never reach a log line or an
/// error message; destructuring makes a new field a compile error here until it is listed.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            listen,
            public_url,
            signing_secret,
            download_url_ttl,
            max_runs_in_flight,
            max_queued_runs,
            max_body_bytes,
            shutdown_grace,
            header_read_timeout,
            body_read_timeout,
            min_body_rate,
            idle_timeout,
            max_connections,
            tokens,
        } = self;
        f.debug_struct("ServerConfig")
            .field("listen", listen)
            .field("public_url", public_url)
            .field("signing_secret", &signing_secret.as_ref().map(|_| REDACTED))
            .field("download_url_ttl", download_url_ttl)
            .field("max_runs_in_flight", max_runs_in_flight)
            .field("max_queued_runs", max_queued_runs)
            .field("max_body_bytes", max_body_bytes)
            .field("shutdown_grace", shutdown_grace)
            .field("header_read_timeout", header_read_timeout)
            .field("body_read_timeout", body_read_timeout)
            .field("min_body_rate", min_body_rate)
            .field("idle_timeout", idle_timeout)
            .field("max_connections", max_connections)
            .field("tokens", tokens)
            .finish()
    }
}

/// What a secret shows as in `Debug` output.
const REDACTED: &str = "<redacted>";

/// One accepted bearer token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token itself (keep the file private), or use `token_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The lower-case hex sha256 of the token, so the file need not hold the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// The tenant everything done with this token belongs to. An admin token of tenant
    /// [`ALL_TENANTS`] is a global operator; a service token must name one tenant.
    pub tenant: String,
    /// What the token may do.
    pub role: Role,
}

/// The tenant of a global operator's token: its admin routes see and reap every tenant.
pub const ALL_TENANTS: &str = "*";

impl TokenConfig {
    /// Why this entry cannot be used, if it cannot: a service token acts for end users of
    /// one tenant, so [`ALL_TENANTS`] means nothing for it and would mix every tenant's data.
    pub fn problem(&self) -> Option<String> {
        if self.tenant.is_empty() {
            return Some("server.tokens: a token's tenant must not be empty".to_owned());
        }
        if self.role == Role::Service && self.tenant == ALL_TENANTS {
            return Some(format!(
                "server.tokens: tenant \"{ALL_TENANTS}\" (every tenant) is for admin tokens only, \
                 not service tokens"
            ));
        }
        None
    }
}

/// Shows the tenant and role only: the token is a secret, and so, for a guessable token, is
/// its digest.
impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            token,
            token_sha256,
            tenant,
            role,
        } = self;
        f.debug_struct("TokenConfig")
            .field("token", &token.as_ref().map(|_| REDACTED))
            .field("token_sha256", &token_sha256.as_ref().map(|_| REDACTED))
            .field("tenant", tenant)
            .field("role", role)
            .finish()
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A chat backend: acts for the end user named in `X-User-Id`.
    Service,
    /// An operator: the admin routes.
    Admin,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_public_base_url_is_the_configured_one_or_the_listening_address() {
        let mut server = ServerConfig {
            listen: SocketAddr::from(([10, 0, 0, 7], 8080)),
            ..ServerConfig::default()
        };
        assert_eq!(server.public_base_url(), "http://10.0.0.7:8080");
        server.listen = SocketAddr::from(([0, 0, 0, 0], 9000));
        assert_eq!(server.public_base_url(), "http://127.0.0.1:9000");
        server.listen = "[::]:9001".parse().expect("address");
        assert_eq!(server.public_base_url(), "http://127.0.0.1:9001");
        server.public_url = Some("https://codebox.example/base//".to_owned());
        assert_eq!(server.public_base_url(), "https://codebox.example/base");
    }

    #[test]
    fn debug_output_hides_tokens_and_the_signing_secret() {
        let mut config = Config::default();
        config.server.signing_secret = Some("signing-secret-4f0d2c".to_owned());
        config.server.tokens = vec![
            TokenConfig {
                token: Some("plaintext-token-9a8b7c6d".to_owned()),
                token_sha256: None,
                tenant: "acme".to_owned(),
                role: Role::Service,
            },
            TokenConfig {
                token: None,
                token_sha256: Some("5e884898da28047151d0e56f8dc62927".to_owned()),
                tenant: "ops".to_owned(),
                role: Role::Admin,
            },
        ];
        for shown in [format!("{config:?}"), format!("{config:#?}")] {
            for secret in [
                "signing-secret-4f0d2c",
                "plaintext-token-9a8b7c6d",
                "5e884898da28047151d0e56f8dc62927",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            // The rest is still there to debug with.
            assert!(shown.contains("acme") && shown.contains("Admin"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }
}
