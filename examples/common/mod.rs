//! What the examples share: how they find codebox and a service token, one HTTP client that
//! turns codebox's errors into readable lines, and the demo's data. Each example includes it
//! with `mod common;` (a folder with no `main.rs` is no example of its own).

#![allow(dead_code)] // Each example uses its own part of this module.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// Where codebox listens when `CODEBOX_URL` does not say.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The file `codebox serve` writes when no token is configured.
pub const TOKENS_FILE: &str = "./codebox-data/tokens.toml";
/// The end user the examples act for.
pub const USER_ID: &str = "demo-user";
/// A run may take up to the server's maximum timeout (5 minutes by default), and the first
/// run of a message also starts its container, so requests get a generous deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(330);

/// The process's exit status for an example's outcome; a failure is one `error: ...` line.
pub fn exit_code(outcome: Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The server, the token, and one connection pool for every request.
pub struct Codebox {
    /// The server, without a trailing `/`.
    pub base_url: String,
    /// The service token.
    pub token: String,
    /// The client every request goes through.
    pub http: Client,
}

impl Codebox {
    /// Codebox at `CODEBOX_URL` (default [`DEFAULT_URL`]) with the token of [`service_token`].
    pub fn from_env() -> Result<Self> {
        let base_url = std::env::var("CODEBOX_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: service_token()?,
            http: Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .context("build the HTTP client")?,
        })
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Adds the service token and the end user a user-scoped route needs.
    pub fn user(&self, request: RequestBuilder) -> RequestBuilder {
        request
            .bearer_auth(&self.token)
            .header("X-User-Id", USER_ID)
    }

    /// Sends `request` and returns its JSON answer, or codebox's error as a readable line.
    pub async fn send(&self, request: RequestBuilder) -> Result<Value> {
        let (client, request) = request.build_split();
        let request = request.context("build the request")?;
        let what = format!("{} {}", request.method(), request.url());
        let response = self.check(client.execute(request).await, &what).await?;
        response
            .json()
            .await
            .with_context(|| format!("{what}: the answer is not JSON"))
    }

    /// The response if its status is a success; otherwise an error naming `what` and carrying
    /// codebox's error code and message.
    pub async fn check(&self, sent: reqwest::Result<Response>, what: &str) -> Result<Response> {
        // A signed link in an error message would hand out a working download.
        let what = redact(what);
        let response = sent.map_err(|error| {
            if error.is_connect() {
                anyhow!(
                    "{what}: cannot reach codebox ({error}); is `codebox serve` running and \
                     CODEBOX_URL right?"
                )
            } else {
                anyhow!("{what}: {error}")
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(anyhow!(
            "{what}: HTTP {}: {}",
            status.as_u16(),
            api_error(status, &body)
        ))
    }
}

/// `code: message` of codebox's error body, or the raw body when it has none.
pub fn api_error(status: StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    match parsed.as_ref().map(|value| &value["error"]) {
        Some(Value::Object(error)) => format!(
            "{}: {}",
            error.get("code").and_then(Value::as_str).unwrap_or("?"),
            error.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        _ if body.trim().is_empty() => status.canonical_reason().unwrap_or("").to_owned(),
        _ => body.trim().to_owned(),
    }
}

/// `text` with the value of every `signature=` parameter hidden: a printed signed link
/// would hand out a working download.
pub fn redact(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("signature=") {
        out.push_str(&rest[..at + "signature=".len()]);
        out.push('…');
        rest = &rest[at + "signature=".len()..];
        let end = rest.find(['&', ')', ' ']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A JSON string's text, or "" for anything else (a missing field prints as nothing).
pub fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// `CODEBOX_TOKEN`, else the first service token of `./codebox-data/tokens.toml`.
pub fn service_token() -> Result<String> {
    if let Ok(token) = std::env::var("CODEBOX_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let content = std::fs::read_to_string(TOKENS_FILE).with_context(|| {
        format!("no CODEBOX_TOKEN set and cannot read {TOKENS_FILE}; set CODEBOX_TOKEN to a service token")
    })?;
    let parsed: toml::Table =
        toml::from_str(&content).with_context(|| format!("{TOKENS_FILE} is not valid TOML"))?;
    parsed
        .get("tokens")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .find(|entry| entry.get("role").and_then(toml::Value::as_str) == Some("service"))
        .and_then(|entry| entry.get("token").and_then(toml::Value::as_str))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{TOKENS_FILE} has no service token; set CODEBOX_TOKEN"))
}

/// A small sales table; the same on every run (and the same as the Python client's), so
/// reports can be compared.
pub fn generate_csv(rows: u32) -> Vec<u8> {
    const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
    let mut csv = String::from("order,region,units,revenue\n");
    for order in 1..=rows {
        let units = (order * 37) % 50 + 1;
        let revenue = f64::from(units) * (4.5 + f64::from((order * 13) % 7));
        let region = REGIONS[(order % 4) as usize];
        csv.push_str(&format!("{order},{region},{units},{revenue:.2}\n"));
    }
    csv.into_bytes()
}

/// The target of the Markdown link `[label](...)` in `text`; it must be an http(s) URL.
pub fn markdown_link<'a>(text: &'a str, label: &str) -> Result<&'a str> {
    let opening = format!("[{label}](");
    let start = text
        .find(&opening)
        .map(|at| at + opening.len())
        .ok_or_else(|| anyhow!("the rendered text has no [{label}](...) link: {text:?}"))?;
    let end = text[start..]
        .find(')')
        .map(|at| start + at)
        .ok_or_else(|| anyhow!("the [{label}] link is not closed: {text:?}"))?;
    let link = &text[start..end];
    ensure!(
        link.starts_with("http://") || link.starts_with("https://"),
        "the link of {label} was not rendered into a URL: {link:?}"
    );
    Ok(link)
}
