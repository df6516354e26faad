//! A chat loop that lets a model use codebox's tools (`GET /v1/tools`,
//! `POST /v1/tools/{name}`), with a FAKE model that replays a scripted conversation, so that
//! it needs no network besides codebox and always does the same thing:
//!
//! 1. the user attaches `sales.csv` to their message (`POST /v1/files` with chat and message);
//! 2. the chat backend fetches the tool definitions and hands them to the model, which checks
//!    that every call of its script names a real tool with arguments its schema takes;
//! 3. the model calls `list_files`, finds the csv, and calls `run_code` with code that writes
//!    `/mnt/data/report.xlsx` (openpyxl only, so that the small test image works);
//! 4. the model answers with text linking `sandbox:/mnt/data/report.xlsx`, which the backend
//!    renders (`POST /v1/messages/{id}/render`) into a download link;
//! 5. the backend downloads the report through that link and checks it against the File the
//!    tool returned.
//!
//! Every step is printed; a failure ends it with one `error: ...` line and exit status 1.
//! Configuration, as for `examples/client.rs`: `CODEBOX_URL` (default
//! `http://127.0.0.1:8080`) and `CODEBOX_TOKEN` (default: the first service token of
//! `./codebox-data/tokens.toml`).
//!
//! ```text
//! codebox serve --image codebox-python:test &
//! cargo run --example tool_chat
//! ```

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use reqwest::{Client, RequestBuilder, multipart};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";
const TOKENS_FILE: &str = "./codebox-data/tokens.toml";
const USER_ID: &str = "demo-user";
/// A run may take up to the server's maximum timeout, and the first one also starts the
/// message's container.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(330);
const USER_TEXT: &str = "Here are my sales. Can you make me an Excel report by region?";

/// The code the model writes; `{CSV_PATH}` is the path `list_files` showed it.
const REPORT_CODE: &str = r#"import csv
from openpyxl import Workbook

with open({CSV_PATH}, newline="") as source:
    rows = list(csv.DictReader(source))
totals = {}
for row in rows:
    units, revenue = totals.get(row["region"], (0, 0.0))
    totals[row["region"]] = (units + int(row["units"]), revenue + float(row["revenue"]))
book = Workbook()
sheet = book.active
sheet.title = "By region"
sheet.append(["region", "units", "revenue"])
for region in sorted(totals):
    units, revenue = totals[region]
    sheet.append([region, units, round(revenue, 2)])
book.save("/mnt/data/report.xlsx")
print(f"Saved /mnt/data/report.xlsx: {len(rows)} orders in {len(totals)} regions")
"#;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let base_url = std::env::var("CODEBOX_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let codebox = Codebox {
        base_url: base_url.trim_end_matches('/').to_owned(),
        token: service_token()?,
        http: Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("build the HTTP client")?,
    };
    let chat_id = format!("tool-chat-{}", uuid::Uuid::new_v4().simple());
    let message_id = format!("tool-msg-{}", uuid::Uuid::new_v4().simple());
    println!(
        "codebox at {}, chat {chat_id}, message {message_id}",
        codebox.base_url
    );

    println!("[user] {USER_TEXT} (attaches sales.csv)");
    let form = multipart::Form::new()
        .text("chat_id", chat_id.clone())
        .text("message_id", message_id.clone())
        .part(
            "file",
            multipart::Part::bytes(generate_csv(120)).file_name("sales.csv"),
        );
    let upload = codebox
        .send(
            codebox
                .user(codebox.http.post(codebox.url("/v1/files")))
                .multipart(form),
        )
        .await?;
    println!(
        "  uploaded {} at {}",
        text(&upload["id"]),
        text(&upload["path"])
    );

    let definitions = codebox
        .send(
            codebox
                .http
                .get(codebox.url("/v1/tools"))
                .bearer_auth(&codebox.token),
        )
        .await?;
    let mut model = FakeModel::new(&definitions["tools"])?;
    println!(
        "[backend] tools for the model: {}",
        model.tool_names().join(", ")
    );

    // The loop of any tool-using chat: the model calls tools until it answers with text.
    let mut last_result: Option<Value> = None;
    let mut report: Option<Value> = None;
    let answer = loop {
        match model.reply(last_result.as_ref())? {
            Reply::Call { name, arguments } => {
                println!("[model] calls {name} {}", preview(&arguments, 120));
                let body = json!({
                    "chat_id": chat_id,
                    "message_id": message_id,
                    // As OpenAI hands them over: the model's arguments as a JSON string.
                    "arguments": arguments,
                });
                let url = codebox.url(&format!("/v1/tools/{name}"));
                let result = codebox
                    .send(codebox.user(codebox.http.post(url)).json(&body))
                    .await?;
                for line in text(&result["content"]).lines() {
                    println!("  | {line}");
                }
                if let Some(file) = result["files"]
                    .as_array()
                    .and_then(|files| files.iter().find(|file| file["name"] == "report.xlsx"))
                {
                    report = Some(file.clone());
                }
                last_result = Some(result);
            }
            Reply::Answer(answer) => break answer,
        }
    };
    println!("[model] {answer}");
    let report = report.ok_or_else(|| anyhow!("no tool call returned report.xlsx"))?;

    let render_url = codebox.url(&format!("/v1/messages/{message_id}/render"));
    let rendered = codebox
        .send(
            codebox
                .user(codebox.http.post(render_url))
                .json(&json!({ "text": answer })),
        )
        .await?;
    let rendered = text(&rendered["text"]);
    println!("[backend] rendered: {}", redact(rendered));
    let link = markdown_link(rendered, "report.xlsx")?;
    ensure!(
        link.contains(&format!("/v1/files/{}/content", text(&report["id"]))),
        "the rendered link does not point at the report the tool returned"
    );

    // The link alone downloads it: no token.
    let response = codebox
        .http
        .get(link)
        .send()
        .await
        .context("download the report")?;
    ensure!(
        response.status().is_success(),
        "the download answered {}",
        response.status()
    );
    let bytes = response.bytes().await.context("read the report")?;
    let digest = hex::encode(Sha256::digest(&bytes));
    ensure!(
        report["sha256"] == digest.as_str(),
        "the report's sha256 differs from its File's"
    );
    ensure!(
        bytes.starts_with(b"PK"),
        "the report is not an xlsx (zip) file"
    );
    println!(
        "[backend] downloaded report.xlsx: {} bytes, sha256 {digest:.16}… matches",
        bytes.len()
    );
    Ok(())
}

/// What the model says next: a tool call, or its answer.
enum Reply {
    /// A call of a tool with its arguments as a JSON string (as OpenAI's API gives them).
    Call { name: String, arguments: String },
    /// The answer for the user.
    Answer(String),
}

/// One step of the script.
enum Step {
    /// Call `name` with these arguments; `{CSV_PATH}` in them is replaced by the csv's path
    /// the previous tool result named.
    Call(&'static str, Value),
    /// Answer with this text.
    Answer(&'static str),
}

/// A stand-in for a chat model: it replays a script, but only with the tools it was given,
/// and fills in what it "read" in the previous tool result.
struct FakeModel {
    /// The definitions it was handed, by name.
    tools: Vec<(String, Value)>,
    script: VecDeque<Step>,
}

impl FakeModel {
    /// A model given the tool definitions of `GET /v1/tools`; every call of its script must
    /// name one of them with arguments its schema takes.
    fn new(definitions: &Value) -> Result<Self> {
        let tools: Vec<(String, Value)> = definitions
            .as_array()
            .ok_or_else(|| anyhow!("GET /v1/tools has no tools list"))?
            .iter()
            .map(|tool| {
                let function = &tool["function"];
                (
                    text(&function["name"]).to_owned(),
                    function["parameters"].clone(),
                )
            })
            .collect();
        let script = VecDeque::from([
            Step::Call("list_files", json!({})),
            Step::Call(
                "run_code",
                json!({"code": REPORT_CODE, "timeout_seconds": 60}),
            ),
            Step::Answer(
                "I made the report: [report.xlsx](sandbox:/mnt/data/report.xlsx) has the units \
                 and revenue per region.",
            ),
        ]);
        let model = Self { tools, script };
        for step in &model.script {
            if let Step::Call(name, arguments) = step {
                model.check_call(name, arguments)?;
            }
        }
        Ok(model)
    }

    fn tool_names(&self) -> Vec<&str> {
        self.tools.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Refuses a call of a tool it was not given, or arguments the tool's schema refuses
    /// (a missing required field, an unknown one).
    fn check_call(&self, name: &str, arguments: &Value) -> Result<()> {
        let Some((_, schema)) = self.tools.iter().find(|(known, _)| known == name) else {
            bail!(
                "the script calls {name}, which is not one of {:?}",
                self.tool_names()
            );
        };
        let properties = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = text(required);
            ensure!(arguments.get(required).is_some(), "{name} needs {required}");
        }
        for field in arguments
            .as_object()
            .into_iter()
            .flatten()
            .map(|(field, _)| field)
        {
            ensure!(properties.contains_key(field), "{name} takes no {field}");
        }
        Ok(())
    }

    /// Its next reply, having read `last_result` (the previous tool's answer).
    fn reply(&mut self, last_result: Option<&Value>) -> Result<Reply> {
        match self.script.pop_front() {
            Some(Step::Call(name, mut arguments)) => {
                if let Some(code) = arguments.get_mut("code") {
                    let path = last_result
                        .map(|result| text(&result["content"]))
                        .and_then(csv_path)
                        .ok_or_else(|| anyhow!("the model found no csv in the last tool result"))?;
                    // A JSON string is also a valid Python string literal.
                    *code = json!(text(code).replace("{CSV_PATH}", &json!(path).to_string()));
                }
                Ok(Reply::Call {
                    name: name.to_owned(),
                    arguments: arguments.to_string(),
                })
            }
            Some(Step::Answer(answer)) => Ok(Reply::Answer(answer.to_owned())),
            None => bail!("the script ended without an answer"),
        }
    }
}

/// The first `/mnt/data/....csv` path of a `list_files` answer (`- <path> (<type>, ...)`).
fn csv_path(content: &str) -> Option<String> {
    content.lines().find_map(|line| {
        let path = line.strip_prefix("- ")?.split(" (").next()?;
        (path.starts_with("/mnt/data/") && path.ends_with(".csv")).then(|| path.to_owned())
    })
}

/// The server, the token, and one connection pool for every request.
struct Codebox {
    base_url: String,
    token: String,
    http: Client,
}

impl Codebox {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Adds the service token and the end user a user-scoped route needs.
    fn user(&self, request: RequestBuilder) -> RequestBuilder {
        request
            .bearer_auth(&self.token)
            .header("X-User-Id", USER_ID)
    }

    /// Sends `request` and returns its JSON answer, or codebox's error as a readable line.
    async fn send(&self, request: RequestBuilder) -> Result<Value> {
        let (client, request) = request.build_split();
        let request = request.context("build the request")?;
        let what = format!("{} {}", request.method(), request.url());
        let response = client.execute(request).await.map_err(|error| {
            anyhow!("{what}: {error}; is `codebox serve` running and CODEBOX_URL right?")
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("{what}: read the answer"))?;
        ensure!(
            status.is_success(),
            "{what}: HTTP {}: {}",
            status.as_u16(),
            body.trim()
        );
        serde_json::from_str(&body).with_context(|| format!("{what}: the answer is not JSON"))
    }
}

/// A JSON string's text, or "" for anything else.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// `text` on one line, at most `max` characters.
fn preview(text: &str, max: usize) -> String {
    let line = text.replace('\n', "\\n");
    match line.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// `text` with the value of every `signature=` parameter hidden: a printed signed link
/// would hand out a working download.
fn redact(text: &str) -> String {
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

/// `CODEBOX_TOKEN`, else the first service token of `./codebox-data/tokens.toml`.
fn service_token() -> Result<String> {
    if let Ok(token) = std::env::var("CODEBOX_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let content = std::fs::read_to_string(TOKENS_FILE)
        .with_context(|| format!("no CODEBOX_TOKEN set and cannot read {TOKENS_FILE}"))?;
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

/// A small sales table, the same on every run.
fn generate_csv(rows: u32) -> Vec<u8> {
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
fn markdown_link<'a>(text: &'a str, label: &str) -> Result<&'a str> {
    let opening = format!("[{label}](");
    let start = text
        .find(&opening)
        .map(|at| at + opening.len())
        .ok_or_else(|| anyhow!("the rendered text has no [{label}](...) link"))?;
    let end = text[start..]
        .find(')')
        .map(|at| start + at)
        .ok_or_else(|| anyhow!("the [{label}] link is not closed"))?;
    let link = &text[start..end];
    ensure!(
        link.starts_with("http://") || link.starts_with("https://"),
        "the link of {label} was not rendered into a URL"
    );
    Ok(link)
}
