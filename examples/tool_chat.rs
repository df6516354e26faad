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

mod common;

use std::collections::VecDeque;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail, ensure};
use reqwest::multipart;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::{Codebox, generate_csv, markdown_link, redact, text};

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
    common::exit_code(run().await)
}

async fn run() -> Result<()> {
    let codebox = Codebox::from_env()?;
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

/// `text` on one line, at most `max` characters.
fn preview(text: &str, max: usize) -> String {
    let line = text.replace('\n', "\\n");
    match line.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}
