//! The client side of the HTTP API, as a chat backend would use it: the benchmark's token
//! and user, and one call per endpoint the cases use (runs, health, uploads, workspace
//! deletion), each answer kept with the time it took.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The tenant of the benchmark's token.
pub(crate) const TENANT: &str = "bench";
/// The end user of every request.
pub(crate) const USER: &str = "user";
/// The service token the server accepts.
pub(crate) const TOKEN: &str = "svc_bench_0123456789abcdef";
/// The one chat every benchmark message belongs to.
pub(crate) const CHAT: &str = "bench-chat";

/// The client side of the HTTP API.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: String,
}

/// The answer to one `POST /v1/runs`.
pub(crate) struct Exchange {
    elapsed: Duration,
    status: StatusCode,
    /// The parsed body; a body that is not JSON is kept as a string.
    pub(crate) body: Value,
}

impl Exchange {
    /// Why this is not a successful run that printed `stdout`, if it is not.
    pub(crate) fn problem(&self, stdout: Option<&str>) -> Option<String> {
        if self.status != StatusCode::OK {
            return Some(format!("HTTP {}: {}", self.status, self.body));
        }
        if self.body["status"] != "succeeded" {
            return Some(format!("the run did not succeed: {}", self.body));
        }
        if let Some(expected) = stdout
            && self.body["stdout"].as_str().map(str::trim) != Some(expected)
        {
            return Some(format!("the run did not print {expected}: {}", self.body));
        }
        None
    }

    pub(crate) fn ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0
    }
}

impl Api {
    /// One `POST /v1/runs`; the clock covers sending the request, the whole exchange, and
    /// parsing the answer.
    pub(crate) async fn run(
        &self,
        message: &str,
        code: &str,
        file_ids: &[String],
    ) -> Result<Exchange> {
        let request = json!({
            "chat_id": CHAT,
            "message_id": message,
            "code": code,
            "file_ids": file_ids,
        });
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/runs", self.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .json(&request)
            .send()
            .await
            .with_context(|| format!("send a run for message {message}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("read the run of message {message}"))?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Exchange {
            elapsed: started.elapsed(),
            status,
            body,
        })
    }

    /// A run of `message` that must succeed and, when `stdout` is given, print it; `case`
    /// names it in the error.
    pub(crate) async fn run_ok(
        &self,
        (case, message): (&str, &str),
        code: &str,
        file_ids: &[String],
        stdout: Option<&str>,
    ) -> Result<Exchange> {
        let exchange = self.run(message, code, file_ids).await?;
        if let Some(problem) = exchange.problem(stdout) {
            bail!("{case}, message {message}: {problem}");
        }
        Ok(exchange)
    }

    /// `GET /healthz`, timed.
    pub(crate) async fn healthz(&self) -> Result<Duration> {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}/healthz", self.base_url))
            .send()
            .await
            .context("GET /healthz")?;
        let status = response.status();
        let body = response.bytes().await.context("read /healthz")?;
        let elapsed = started.elapsed();
        ensure!(
            status.is_success(),
            "GET /healthz: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(elapsed)
    }

    /// Uploads `content` as `name` into the benchmark's chat; returns the File.
    pub(crate) async fn upload(&self, name: &str, content: Vec<u8>) -> Result<Value> {
        let part = reqwest::multipart::Part::bytes(content)
            .file_name(name.to_owned())
            .mime_str("text/csv")
            .context("set the upload's content type")?;
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("chat_id", CHAT);
        let response = self
            .http
            .post(format!("{}/v1/files", self.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .multipart(form)
            .send()
            .await
            .with_context(|| format!("upload {name}"))?;
        let status = response.status();
        let text = response.text().await.context("read the upload's answer")?;
        ensure!(
            status == StatusCode::CREATED,
            "upload {name}: HTTP {status}: {text}"
        );
        serde_json::from_str(&text).context("parse the uploaded File")
    }

    /// Removes a message's container and workspace (its files stay).
    pub(crate) async fn delete_workspace(&self, message: &str) -> Result<()> {
        let response = self
            .http
            .delete(format!("{}/v1/messages/{message}/workspace", self.base_url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", USER)
            .send()
            .await
            .with_context(|| format!("delete the workspace of {message}"))?;
        let status = response.status();
        // 404: the message never got a workspace (its first run failed before the claim).
        if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_FOUND {
            let text = response.text().await.unwrap_or_default();
            bail!("delete the workspace of {message}: HTTP {status}: {text}");
        }
        Ok(())
    }
}
