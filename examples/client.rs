//! A chat backend talking to codebox over HTTP with reqwest: the Rust twin of
//! `examples/python_client.py`.
//!
//! It plays one turn of a chat in which the user attaches a CSV and asks for an Excel report:
//!
//! 1. uploads a generated `sales.csv` for a fresh chat and message (user `demo-user`);
//! 2. runs code that turns it into `/mnt/data/report.xlsx` (with openpyxl only, so that the
//!    small test image `codebox-python:test` works as well as the full one);
//! 3. renders the assistant's answer, whose `sandbox:/mnt/data/report.xlsx` link becomes a
//!    signed download link;
//! 4. lists the chat's files;
//! 5. downloads the report through the signed link, with no token, hashing it as it streams
//!    in, and checks that its sha256 and size are those of the File.
//!
//! Each step is printed; any failure ends it with one `error: ...` line and exit status 1.
//!
//! Configuration, from the environment:
//!
//! - `CODEBOX_URL`: the server (default `http://127.0.0.1:8080`);
//! - `CODEBOX_TOKEN`: a service token. Without it, the first service token of
//!   `./codebox-data/tokens.toml` is used: the file `codebox serve` writes when no token is
//!   configured.
//!
//! ```text
//! codebox serve --image codebox-python:test &
//! cargo run --example client
//! ```

mod common;

use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use reqwest::multipart;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::{Codebox, USER_ID, generate_csv, markdown_link, text};

/// The report the code writes, and the answer the assistant gives about it.
const REPORT_NAME: &str = "report.xlsx";
const ASSISTANT_TEXT: &str = "Here is your report: [report.xlsx](sandbox:/mnt/data/report.xlsx)";

/// The code the "model" wrote. `{CSV_PATH}` is replaced by the path the upload answered,
/// because codebox renames an attachment whose name is taken (`sales (1).csv`).
const REPORT_CODE: &str = r#"import csv
from openpyxl import Workbook
from openpyxl.styles import Font

with open({CSV_PATH}, newline="") as source:
    rows = list(csv.DictReader(source))

totals = {}
for row in rows:
    units, revenue = totals.get(row["region"], (0, 0.0))
    totals[row["region"]] = (units + int(row["units"]), revenue + float(row["revenue"]))

book = Workbook()
summary = book.active
summary.title = "By region"
summary.append(["region", "units", "revenue"])
for cell in summary[1]:
    cell.font = Font(bold=True)
for region in sorted(totals):
    units, revenue = totals[region]
    summary.append([region, units, round(revenue, 2)])
orders = book.create_sheet("Orders")
orders.append(list(rows[0].keys()))
for row in rows:
    orders.append([row["order"], row["region"], int(row["units"]), float(row["revenue"])])
book.save("/mnt/data/report.xlsx")
print(f"Saved /mnt/data/report.xlsx: {len(rows)} orders in {len(totals)} regions")
"#;

#[tokio::main]
async fn main() -> ExitCode {
    common::exit_code(run().await)
}

async fn run() -> Result<()> {
    let codebox = Codebox::from_env()?;
    // The chat backend owns chat and message ids; fresh ones keep every demo run separate.
    let chat_id = format!("demo-chat-{}", uuid::Uuid::new_v4().simple());
    let message_id = format!("demo-msg-{}", uuid::Uuid::new_v4().simple());
    println!(
        "codebox at {}, user {USER_ID}, chat {chat_id}, message {message_id}",
        codebox.base_url
    );

    println!("[0/5] health");
    let health = codebox
        .send(codebox.http.get(codebox.url("/healthz")))
        .await?;
    println!("  /healthz: {}", text(&health["status"]));

    println!("[1/5] upload sales.csv");
    let csv = generate_csv(200);
    let csv_sha256 = hex::encode(Sha256::digest(&csv));
    let csv_len = csv.len();
    let file = multipart::Part::bytes(csv)
        .file_name("sales.csv")
        .mime_str("text/csv")
        .context("set the upload's content type")?;
    let form = multipart::Form::new()
        .text("chat_id", chat_id.clone())
        .text("message_id", message_id.clone())
        .part("file", file);
    let upload = codebox
        .send(
            codebox
                .user(codebox.http.post(codebox.url("/v1/files")))
                .multipart(form),
        )
        .await?;
    ensure!(
        upload["source"] == "upload",
        "the upload has source {}",
        upload["source"]
    );
    ensure!(
        upload["size"] == csv_len,
        "the upload's size {} is not the {csv_len} bytes sent",
        upload["size"]
    );
    ensure!(
        upload["sha256"] == csv_sha256.as_str(),
        "the upload's sha256 is not that of the bytes sent"
    );
    println!(
        "  {}  {}  {} bytes  sha256 {:.16}…",
        text(&upload["id"]),
        text(&upload["path"]),
        upload["size"],
        text(&upload["sha256"])
    );

    println!("[2/5] run code: csv -> xlsx");
    // The path goes into the code as a JSON string, which is also a valid Python literal.
    let code = REPORT_CODE.replace("{CSV_PATH}", &upload["path"].to_string());
    let body = json!({
        "chat_id": chat_id,
        "message_id": message_id,
        "code": code,
        "language": "python",
        "file_ids": [upload["id"]],
        "timeout_secs": 60,
    });
    let run = codebox
        .send(
            codebox
                .user(codebox.http.post(codebox.url("/v1/runs")))
                .json(&body),
        )
        .await?;
    println!(
        "  run {}: {}, exit {}, {} ms",
        text(&run["id"]),
        text(&run["status"]),
        run["exit_code"],
        run["duration_ms"]
    );
    for line in text(&run["stdout"]).lines() {
        println!("  | {line}");
    }
    if run["status"] != "succeeded" {
        let reason = run["reason"]
            .as_str()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default();
        bail!(
            "the run {}{reason}, exit code {}; stderr:\n{}",
            text(&run["status"]),
            run["exit_code"],
            text(&run["stderr"])
        );
    }
    for truncation in run["truncated"].as_array().into_iter().flatten() {
        println!(
            "  left out: {}: {}",
            text(&truncation["path"]),
            text(&truncation["reason"])
        );
    }
    let files = run["files"].as_array().cloned().unwrap_or_default();
    let Some(report) = files.iter().find(|file| file["name"] == REPORT_NAME) else {
        let names: Vec<&str> = files.iter().map(|file| text(&file["name"])).collect();
        bail!("the run succeeded but registered {names:?}, not {REPORT_NAME}");
    };
    println!(
        "  registered {}  {}  {} bytes  {}",
        text(&report["id"]),
        text(&report["path"]),
        report["size"],
        text(&report["content_type"])
    );

    println!("[3/5] render the assistant's answer");
    let render_url = codebox.url(&format!("/v1/messages/{message_id}/render"));
    let rendered = codebox
        .send(
            codebox
                .user(codebox.http.post(render_url))
                .json(&json!({ "text": ASSISTANT_TEXT })),
        )
        .await?;
    let rendered = text(&rendered["text"]);
    println!("  before: {ASSISTANT_TEXT}");
    println!("  after:  {rendered}");
    let link = markdown_link(rendered, REPORT_NAME)?;
    // Signed links carry their own expiry, so two renderings differ in the query; the file
    // they point at must be the same.
    let without_query = |url: &str| url.split('?').next().unwrap_or_default().to_owned();
    ensure!(
        without_query(link) == without_query(text(&report["download_url"])),
        "the rendered link {link} does not point at {}",
        text(&report["id"])
    );

    println!("[4/5] list the chat's files");
    let listing = codebox
        .send(
            codebox.user(
                codebox
                    .http
                    .get(codebox.url(&format!("/v1/chats/{chat_id}/files"))),
            ),
        )
        .await?;
    println!("  {} file(s)", listing["total_files"]);
    let groups = listing["messages"].as_object().cloned().unwrap_or_default();
    for (listed_message, files) in &groups {
        for file in files.as_array().into_iter().flatten() {
            println!(
                "  {listed_message}  {:<14} {:>8} bytes  {}",
                text(&file["name"]),
                // A JSON value ignores the width; the number itself honours it.
                file["size"].as_u64().unwrap_or_default(),
                text(&file["source"])
            );
        }
    }
    let listed = groups
        .get(&message_id)
        .and_then(Value::as_array)
        .is_some_and(|files| files.iter().any(|file| file["id"] == report["id"]));
    ensure!(
        listed,
        "{} is not in the chat's listing",
        text(&report["id"])
    );

    println!("[5/5] download the report through the signed link (no token)");
    // A fresh request with no Authorization header: the link alone must be enough.
    let response = codebox
        .check(codebox.http.get(link).send().await, link)
        .await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    let mut hasher = Sha256::new();
    let mut size = 0_u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("read the download")?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let digest = hex::encode(hasher.finalize());
    println!("  {size} bytes  sha256 {digest}");
    println!("  Content-Type: {content_type}");
    println!("  Content-Disposition: {disposition}");
    ensure!(
        report["size"] == size,
        "downloaded {size} bytes, the File says {}",
        report["size"]
    );
    ensure!(
        report["sha256"] == digest.as_str(),
        "the download's sha256 {digest} is not the File's {}",
        text(&report["sha256"])
    );
    println!("ok: the downloaded report matches its File's sha256");
    Ok(())
}
