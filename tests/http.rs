//! The HTTP API of `shared/API.md` end to end, as a chat backend sees it: a server in this
//! process on a free local port (built by `codebox::server::prepare`, served by
//! `codebox::api::serve`), the real Docker engine, a real SQLite file and the local blob
//! folder, and `reqwest` as the client. Nothing is mocked.
//!
//! Every test starts its own `TestServer` on its own data folder, so tests run in parallel;
//! dropping the server removes the containers it created, also when a test panicked. No test
//! asserts how long anything took.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use codebox::catalog::Owner;
use common::{
    ADMIN_TOKEN, ALICE, ALICE_OF_B, BOB, Caller, TENANT_A_TOKEN, TestServer, assert_error, json_of,
};
use futures::StreamExt;
use reqwest::{Method, Url, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The attachment most tests upload.
const CSV: &[u8] = b"region,units\nnorth,3\nsouth,5\n";

/// Writes `/mnt/data/report.xlsx` from the attached `/mnt/data/sales.csv` (the test image has
/// python3 and openpyxl only).
const XLSX_FROM_CSV: &str = r#"
import csv, openpyxl
book = openpyxl.Workbook()
for row in csv.reader(open('/mnt/data/sales.csv')):
    book.active.append(row)
book.save('/mnt/data/report.xlsx')
print('saved /mnt/data/report.xlsx')
"#;

/// The MIME type of an xlsx file.
const XLSX_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn text_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

/// `value` without the signed links, which carry an expiry computed at each answer and so may
/// differ between two answers about the same file.
fn without_links(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(key, _)| key.as_str() != "download_url")
                .map(|(key, value)| (key.clone(), without_links(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_links).collect()),
        other => other.clone(),
    }
}

/// The ids of a list of Files, in order.
fn ids_of(files: &Value) -> Vec<&str> {
    files
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {files}"))
        .iter()
        .map(|file| text_of(&file["id"]))
        .collect()
}

/// Checks that a time is RFC 3339 in UTC.
fn assert_utc_time(value: &Value) {
    let text = text_of(value);
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{text} is not RFC 3339: {error}"));
    assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{text}");
    assert!(text.ends_with('Z'), "{text}");
}

/// Whether the engine has the sandbox container of workspace `workspace_id`.
fn container_exists(workspace_id: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", &format!("codebox-{workspace_id}")])
        .output()
        .expect("run docker")
        .status
        .success()
}

/// Every regular file below `folder` (none if it does not exist).
fn files_below(folder: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_below(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// The body of a response that must have `status`.
async fn bytes_of(response: reqwest::Response, status: u16) -> Vec<u8> {
    let url = response.url().clone();
    assert_eq!(response.status().as_u16(), status, "{url}");
    response.bytes().await.expect("read the body").to_vec()
}

/// A header of a response as text; it must be there and be visible ASCII.
fn header_of(response: &reqwest::Response, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap_or_else(|_| panic!("the {name} header is not visible ASCII"))
}

/// Decodes `%XX` escapes into bytes and those into UTF-8.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex_digits = std::str::from_utf8(&bytes[index + 1..index + 3]).expect("ASCII");
            decoded.push(u8::from_str_radix(hex_digits, 16).expect("two hex digits"));
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).expect("filename* is UTF-8")
}

/// The plain `filename` and the decoded `filename*` of an attachment's Content-Disposition.
fn disposition_names(disposition: &str) -> (String, String) {
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    let plain = disposition
        .split("filename=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no quoted filename: {disposition}"));
    let extended = disposition
        .split("filename*=UTF-8''")
        .nth(1)
        .unwrap_or_else(|| panic!("no filename*: {disposition}"));
    // RFC 5987 `attr-char`s and `%XX` only: nothing that ends the parameter or the header.
    assert!(
        extended
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~%".contains(&b)),
        "{disposition}"
    );
    (plain.to_owned(), percent_decode(extended))
}

/// Replaces every signed download link to a file in `text` by `<link:FILE_ID>` and returns the
/// text and the links, so that a rendered text can be compared whatever the signatures are.
fn mask_links(text: &str, base_url: &str) -> (String, Vec<String>) {
    let prefix = format!("{base_url}/v1/files/");
    let mut masked = String::new();
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&prefix) {
        masked.push_str(&rest[..at]);
        let after = &rest[at + prefix.len()..];
        let id_end = after.find('/').expect("a file id");
        let id = &after[..id_end];
        let query = after[id_end..]
            .strip_prefix("/content?expires=")
            .expect("a signed content link");
        let digits = query.bytes().take_while(u8::is_ascii_digit).count();
        let signature = query[digits..]
            .strip_prefix("&signature=")
            .expect("a signature");
        let hex_digits = signature.bytes().take_while(u8::is_ascii_hexdigit).count();
        let link_length = prefix.len()
            + id_end
            + "/content?expires=".len()
            + digits
            + "&signature=".len()
            + hex_digits;
        links.push(rest[at..at + link_length].to_owned());
        masked.push_str(&format!("<link:{id}>"));
        rest = &rest[at + link_length..];
    }
    masked.push_str(rest);
    (masked, links)
}

/// A multipart upload body written by hand, for file names no client library sends as they are:
/// `filename` is put between the quotes byte for byte.
fn raw_multipart(filename: &[u8], content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "codebox-test-boundary-7d1c5a";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Disposition: form-data; name=\"file\"; filename=\"");
    body.extend_from_slice(filename);
    body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A value of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    kib * 1024
}

/// Held by each test that measures this process's memory (the server runs in it), so that two
/// such tests never overlap: each resets and reads the process-wide peak.
static MEMORY_MEASURE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Forgets the peak resident size so far (Linux 4.0+) and returns the resident size now. If
/// the reset is refused, the earlier peak stays in later readings, which only makes a check on
/// them stricter.
fn reset_memory_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    proc_status_bytes("VmRSS")
}

/// Checks that the peak resident size since [`reset_memory_peak`] stayed within `limit` bytes
/// of `before`.
fn assert_memory_flat(before: u64, limit: u64) {
    let peak = proc_status_bytes("VmHWM");
    let growth = peak.saturating_sub(before);
    assert!(
        growth < limit,
        "memory grew by {} MiB (from {} MiB to a peak of {} MiB)",
        growth >> 20,
        before >> 20,
        peak >> 20
    );
}

/// One server-sent event: its name and its JSON data.
#[derive(Debug)]
struct SseEvent {
    name: String,
    data: Value,
}

/// Parses a `text/event-stream` body: blocks separated by blank lines, `event:` and `data:`
/// fields, comments (keep-alives) skipped.
fn parse_sse(body: &str) -> Vec<SseEvent> {
    let body = body.replace("\r\n", "\n");
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut name = "message".to_owned();
        let mut data = Vec::new();
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => name = value.to_owned(),
                "data" => data.push(value),
                _ => {}
            }
        }
        if data.is_empty() {
            continue;
        }
        let data = serde_json::from_str(&data.join("\n"))
            .unwrap_or_else(|error| panic!("event {name}: data is not JSON ({error}): {block}"));
        events.push(SseEvent { name, data });
    }
    events
}

// ---------------------------------------------------------------------------------------------
// 1. Every route, happy path.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_uploaded_described_downloaded_and_deleted() {
    let server = TestServer::new().await;
    let file = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let id = text_of(&file["id"]).to_owned();
    assert!(id.starts_with("file_"), "{file:#}");
    assert_eq!(file["name"], "sales.csv");
    assert_eq!(file["path"], "/mnt/data/sales.csv");
    assert_eq!(file["size"], CSV.len());
    assert_eq!(file["content_type"], "text/csv");
    assert_eq!(file["sha256"], sha256_hex(CSV));
    assert_eq!(file["source"], "upload");
    assert_eq!(file["chat_id"], "chat-1");
    assert_eq!(file["message_id"], "msg-1");
    assert_eq!(file["run_id"], Value::Null);
    assert_eq!(file["derived_from"], Value::Null);
    assert_utc_time(&file["created_at"]);
    let link = text_of(&file["download_url"]).to_owned();
    assert!(
        link.starts_with(&server.url(&format!("/v1/files/{id}/content?expires="))),
        "{link}"
    );

    // An upload without a chat belongs to none.
    let loose = server.upload_ok(ALICE, "loose.csv", CSV, None).await;
    assert_eq!(loose["chat_id"], Value::Null);
    assert_eq!(loose["message_id"], Value::Null);

    let path = format!("/v1/files/{id}");
    let described = json_of(server.get(ALICE, &path).send().await.expect("get"), 200).await;
    assert_eq!(without_links(&described), without_links(&file));

    let content_path = format!("{path}/content");
    let with_token = server.get(ALICE, &content_path).send().await.expect("get");
    assert_eq!(bytes_of(with_token, 200).await, CSV);
    let by_link = server.client.get(&link).send().await.expect("get");
    assert_eq!(bytes_of(by_link, 200).await, CSV);

    let deleted = server
        .request(ALICE, Method::DELETE, &path)
        .send()
        .await
        .expect("delete");
    assert_eq!(bytes_of(deleted, 204).await, b"");

    // Gone from metadata and downloads at once, by token and by link.
    let response = server.get(ALICE, &path).send().await.expect("get");
    assert_error(response, 404, "not_found").await;
    let response = server.get(ALICE, &content_path).send().await.expect("get");
    assert_error(response, 404, "not_found").await;
    // The server answers a deleted file's link like a forged one (403), so that links cannot
    // tell a deleted file from a bad signature.
    let response = server.client.get(&link).send().await.expect("get");
    assert_error(response, 403, "forbidden").await;
    let response = server
        .request(ALICE, Method::DELETE, &path)
        .send()
        .await
        .expect("delete");
    assert_error(response, 404, "not_found").await;
    let listing = server
        .get(ALICE, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    let listing = json_of(listing, 200).await;
    assert_eq!(listing["files"], json!([]), "{listing:#}");

    // The other file is untouched.
    let other = format!("/v1/files/{}/content", text_of(&loose["id"]));
    let response = server.get(ALICE, &other).send().await.expect("get");
    assert_eq!(bytes_of(response, 200).await, CSV);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_listings_render_and_workspace_deletion() {
    let server = TestServer::new().await;
    let csv = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let csv_id = text_of(&csv["id"]);
    let run = server
        .run_ok(ALICE, "chat-1", "msg-1", XLSX_FROM_CSV, &[csv_id])
        .await;
    let run_id = text_of(&run["id"]).to_owned();
    assert!(run_id.starts_with("run_"), "{run:#}");
    assert_eq!(run["chat_id"], "chat-1");
    assert_eq!(run["message_id"], "msg-1");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["stdout"], "saved /mnt/data/report.xlsx\n");
    assert_eq!(run["stderr"], "");
    assert_eq!(run["stdout_truncated"], false);
    assert_eq!(run["stderr_truncated"], false);
    assert!(run["duration_ms"].is_i64(), "{run:#}");
    assert_eq!(run["truncated"], json!([]));
    assert_utc_time(&run["created_at"]);
    let files = run["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{run:#}");
    let xlsx = &files[0];
    let xlsx_id = text_of(&xlsx["id"]).to_owned();
    assert_eq!(xlsx["name"], "report.xlsx");
    assert_eq!(xlsx["path"], "/mnt/data/report.xlsx");
    assert_eq!(xlsx["source"], "code_execution");
    assert_eq!(xlsx["content_type"], XLSX_TYPE);
    assert_eq!(xlsx["run_id"], run_id.as_str());
    assert_eq!(xlsx["chat_id"], "chat-1");
    assert_eq!(xlsx["message_id"], "msg-1");
    assert_eq!(xlsx["derived_from"], Value::Null);
    let xlsx_link = text_of(&xlsx["download_url"]).to_owned();
    let bytes = bytes_of(
        server.client.get(&xlsx_link).send().await.expect("get"),
        200,
    )
    .await;
    assert!(bytes.starts_with(b"PK"), "an xlsx is a zip file");
    assert_eq!(xlsx["size"], bytes.len());
    assert_eq!(xlsx["sha256"], sha256_hex(&bytes));

    let again = server
        .get(ALICE, &format!("/v1/runs/{run_id}"))
        .send()
        .await
        .expect("get run");
    let again = json_of(again, 200).await;
    assert_eq!(without_links(&again), without_links(&run));

    // The message listing shows what the code generated; `source=all` adds the upload tied to
    // the message, oldest first.
    let generated = server
        .get(ALICE, "/v1/messages/msg-1/files")
        .send()
        .await
        .expect("list");
    let generated = json_of(generated, 200).await;
    assert_eq!(generated["message_id"], "msg-1");
    assert_eq!(ids_of(&generated["files"]), [xlsx_id.as_str()]);
    let all = server
        .get(ALICE, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    let all = json_of(all, 200).await;
    assert_eq!(ids_of(&all["files"]), [csv_id, xlsx_id.as_str()]);
    let response = server
        .get(ALICE, "/v1/messages/msg-1/files?source=everything")
        .send()
        .await
        .expect("list");
    assert_error(response, 422, "invalid").await;

    // A second message of the same chat; the chat listing groups generated files by message.
    let second = server
        .run_ok(
            ALICE,
            "chat-1",
            "msg-2",
            "open('/mnt/data/summary.csv', 'w').write('a,b\\n1,2\\n')",
            &[],
        )
        .await;
    let summary_id = text_of(&second["files"][0]["id"]).to_owned();
    let chat = server
        .get(ALICE, "/v1/chats/chat-1/files")
        .send()
        .await
        .expect("list");
    let chat = json_of(chat, 200).await;
    assert_eq!(chat["chat_id"], "chat-1");
    assert_eq!(chat["total_files"], 2, "{chat:#}");
    let groups = chat["messages"].as_object().expect("messages");
    assert_eq!(
        groups.keys().collect::<Vec<_>>(),
        ["msg-1", "msg-2"],
        "{chat:#}"
    );
    assert_eq!(ids_of(&groups["msg-1"]), [xlsx_id.as_str()]);
    assert_eq!(ids_of(&groups["msg-2"]), [summary_id.as_str()]);

    // Rendering: references to this message's files become their links; a name no file of
    // this message has (unknown, or another message's) stays as it is.
    let text = "Here: [report](sandbox:/mnt/data/report.xlsx). Also /mnt/data/report.xlsx, \
                from /mnt/data/sales.csv; sandbox:/mnt/data/missing.xlsx stays, and so does \
                /mnt/data/summary.csv.";
    let rendered = server
        .request(ALICE, Method::POST, "/v1/messages/msg-1/render")
        .json(&json!({ "text": text }))
        .send()
        .await
        .expect("render");
    let rendered = json_of(rendered, 200).await;
    let (masked, links) = mask_links(text_of(&rendered["text"]), &server.base_url);
    assert_eq!(
        masked,
        format!(
            "Here: [report](<link:{xlsx_id}>). Also <link:{xlsx_id}>, from <link:{csv_id}>; \
             sandbox:/mnt/data/missing.xlsx stays, and so does /mnt/data/summary.csv."
        )
    );
    assert_eq!(links.len(), 3);
    for (link, expected) in links.iter().zip([&bytes, &bytes, &CSV.to_vec()]) {
        let response = server.client.get(link).send().await.expect("get");
        assert_eq!(&bytes_of(response, 200).await, expected, "{link}");
    }

    // Deleting the workspace removes the container and the folder now; the files stay.
    let workspace_id = server.workspace_id("tenant-a", "msg-1").await;
    let folder = server.workspace_dir(&workspace_id);
    assert!(container_exists(&workspace_id));
    assert!(folder.exists());
    let response = server
        .request(ALICE, Method::DELETE, "/v1/messages/msg-1/workspace")
        .send()
        .await
        .expect("delete workspace");
    assert_eq!(bytes_of(response, 204).await, b"");
    assert!(!container_exists(&workspace_id), "the container is gone");
    assert!(!folder.exists(), "the folder is gone: {}", folder.display());
    let response = server.client.get(&xlsx_link).send().await.expect("get");
    assert_eq!(bytes_of(response, 200).await, bytes);
    let response = server
        .get(ALICE, &format!("/v1/files/{xlsx_id}/content"))
        .send()
        .await
        .expect("get");
    assert_eq!(bytes_of(response, 200).await, bytes);
    let still = server
        .get(ALICE, "/v1/messages/msg-1/files")
        .send()
        .await
        .expect("list");
    assert_eq!(
        ids_of(&json_of(still, 200).await["files"]),
        [xlsx_id.as_str()]
    );
    // The other message's sandbox is not touched.
    let other_workspace = server.workspace_id("tenant-a", "msg-2").await;
    assert!(container_exists(&other_workspace));
    assert!(server.workspace_dir(&other_workspace).exists());
    // A later run of the message starts from a new workspace, in a new sandbox: what the code
    // wrote is gone, and the message's attachment is placed again.
    let fresh = server
        .run_ok(
            ALICE,
            "chat-1",
            "msg-1",
            "import os; print(sorted(os.listdir('/mnt/data')))",
            &[],
        )
        .await;
    assert_eq!(fresh["stdout"], "['sales.csv']\n", "{fresh:#}");
    assert!(container_exists(&workspace_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_report_and_reap() {
    let server = TestServer::with_config(|config| {
        // Everything is idle, and deleted files past their grace, as soon as it is made.
        config.retention.container_idle = std::time::Duration::ZERO;
        config.retention.workspace_idle = std::time::Duration::ZERO;
        config.retention.deleted_file_grace = std::time::Duration::ZERO;
    })
    .await;
    let admin = |method: Method, path: &str| {
        server
            .client
            .request(method, server.url(path))
            .bearer_auth(ADMIN_TOKEN)
    };

    let csv = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let run = server
        .run_ok(
            ALICE,
            "chat-1",
            "msg-1",
            XLSX_FROM_CSV,
            &[text_of(&csv["id"])],
        )
        .await;
    let xlsx_link = text_of(&run["files"][0]["download_url"]).to_owned();
    let doomed = server.upload_ok(ALICE, "doomed.csv", CSV, None).await;
    let doomed_id = text_of(&doomed["id"]).to_owned();
    let doomed_blob = server.data_dir().join("blobs/files").join(&doomed_id);
    assert!(doomed_blob.exists(), "{}", doomed_blob.display());
    let response = server
        .request(ALICE, Method::DELETE, &format!("/v1/files/{doomed_id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status().as_u16(), 204);
    let workspace_id = server.workspace_id("tenant-a", "msg-1").await;
    let folder = server.workspace_dir(&workspace_id);

    let policy = json_of(
        admin(Method::GET, "/v1/admin/retention")
            .send()
            .await
            .expect("retention"),
        200,
    )
    .await;
    assert_eq!(policy["container_idle_secs"], 0, "{policy:#}");
    assert_eq!(policy["workspace_idle_secs"], 0);
    assert_eq!(policy["deleted_file_grace_secs"], 0);
    assert_eq!(policy["file_ttl_secs"], Value::Null);
    assert_eq!(policy["max_workspace_bytes"], Value::Null);
    assert!(policy["reap_interval_secs"].is_u64(), "{policy:#}");

    let list = json_of(
        admin(Method::GET, "/v1/admin/workspaces")
            .send()
            .await
            .expect("workspaces"),
        200,
    )
    .await;
    let workspaces = list["workspaces"].as_array().expect("workspaces");
    assert_eq!(workspaces.len(), 1, "{list:#}");
    let workspace = &workspaces[0];
    assert_eq!(workspace["workspace_id"], workspace_id.as_str());
    assert_eq!(workspace["tenant"], "tenant-a");
    assert_eq!(workspace["user_id"], "alice");
    assert_eq!(workspace["chat_id"], "chat-1");
    assert_eq!(workspace["message_id"], "msg-1");
    assert!(workspace["bytes"].as_u64().expect("bytes") > 0, "{list:#}");
    assert_eq!(workspace["exists"], true);
    assert_eq!(workspace["container"], "running");
    assert_utc_time(&workspace["last_used_at"]);

    // A dry run reports what would go and changes nothing.
    let dry = json_of(
        admin(Method::POST, "/v1/admin/gc")
            .json(&json!({ "dry_run": true }))
            .send()
            .await
            .expect("gc"),
        200,
    )
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["containers"], json!([workspace_id]), "{dry:#}");
    assert_eq!(dry["workspaces"], json!([workspace_id]), "{dry:#}");
    assert_eq!(dry["files_purged"], json!([doomed_id]), "{dry:#}");
    assert_eq!(dry["files_expired"], json!([]));
    assert!(
        dry["bytes_freed"].as_u64().expect("bytes") >= CSV.len() as u64,
        "{dry:#}"
    );
    assert!(container_exists(&workspace_id));
    assert!(folder.exists());
    assert!(doomed_blob.exists());
    let unchanged = json_of(
        admin(Method::GET, "/v1/admin/workspaces")
            .send()
            .await
            .expect("workspaces"),
        200,
    )
    .await;
    assert_eq!(unchanged["workspaces"][0]["container"], "running");
    assert_eq!(unchanged["workspaces"][0]["exists"], true);

    // The real pass removes what the dry run named.
    let reaped = json_of(
        admin(Method::POST, "/v1/admin/gc")
            .json(&json!({ "dry_run": false }))
            .send()
            .await
            .expect("gc"),
        200,
    )
    .await;
    assert_eq!(reaped["dry_run"], false);
    assert_eq!(reaped["containers"], json!([workspace_id]), "{reaped:#}");
    assert_eq!(reaped["workspaces"], json!([workspace_id]), "{reaped:#}");
    assert_eq!(reaped["files_purged"], json!([doomed_id]), "{reaped:#}");
    assert!(!container_exists(&workspace_id), "the container is gone");
    assert!(!folder.exists(), "the folder is gone");
    assert!(!doomed_blob.exists(), "the deleted file's bytes are purged");
    let after = json_of(
        admin(Method::GET, "/v1/admin/workspaces")
            .send()
            .await
            .expect("workspaces"),
        200,
    )
    .await;
    assert_eq!(after["workspaces"][0]["container"], "none", "{after:#}");
    assert_eq!(after["workspaces"][0]["exists"], false);
    assert_eq!(after["workspaces"][0]["bytes"], 0);

    // Registered files outlive their workspace.
    let response = server.client.get(&xlsx_link).send().await.expect("get");
    assert!(bytes_of(response, 200).await.starts_with(b"PK"));

    // A second pass finds nothing left to do.
    let idle = json_of(
        admin(Method::POST, "/v1/admin/gc")
            .json(&json!({}))
            .send()
            .await
            .expect("gc"),
        200,
    )
    .await;
    assert_eq!(idle["containers"], json!([]), "{idle:#}");
    assert_eq!(idle["workspaces"], json!([]), "{idle:#}");
    assert_eq!(idle["files_purged"], json!([]), "{idle:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_routes_answer() {
    let server = TestServer::new().await;
    for path in ["/healthz", "/readyz"] {
        let response = server
            .client
            .get(server.url(path))
            .send()
            .await
            .expect(path);
        assert_eq!(
            json_of(response, 200).await,
            json!({ "status": "ok" }),
            "{path}"
        );
    }

    server
        .run_ok(ALICE, "chat-1", "msg-1", "print('counted')", &[])
        .await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        header_of(&response, header::CONTENT_TYPE).starts_with("text/plain"),
        "{:?}",
        response.headers()
    );
    let metrics = response.text().await.expect("text");
    let counted = metrics
        .lines()
        .any(|line| line.starts_with("codebox_runs_total{") && line.contains("succeeded"));
    assert!(counted, "{metrics}");
    assert!(metrics.contains("codebox_http_requests_total"), "{metrics}");

    let response = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("openapi");
    let document = json_of(response, 200).await;
    assert!(
        text_of(&document["openapi"]).starts_with("3."),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/v1/files", &["post"][..]),
        ("/v1/files/{file_id}", &["get", "delete"]),
        ("/v1/files/{file_id}/content", &["get"]),
        ("/v1/runs", &["post"]),
        ("/v1/runs/{run_id}", &["get"]),
        ("/v1/messages/{message_id}/files", &["get"]),
        ("/v1/chats/{chat_id}/files", &["get"]),
        ("/v1/messages/{message_id}/render", &["post"]),
        ("/v1/messages/{message_id}/workspace", &["delete"]),
        ("/v1/admin/workspaces", &["get"]),
        ("/v1/admin/gc", &["post"]),
        ("/v1/admin/retention", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ] {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not documented"));
        for method in methods {
            assert!(
                item.get(*method).is_some(),
                "{method} {path} is not documented"
            );
        }
    }

    // A route that does not exist answers in the API's error shape.
    let response = server
        .client
        .get(server.url("/v1/nothing"))
        .send()
        .await
        .expect("get");
    assert_error(response, 404, "not_found").await;
}

// ---------------------------------------------------------------------------------------------
// 2. Authorization.
// ---------------------------------------------------------------------------------------------

/// One request of the matrix: a method, a path and an optional JSON body.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl Call {
    fn new(method: Method, path: impl Into<String>, body: Option<Value>) -> Self {
        Self {
            method,
            path: path.into(),
            body,
        }
    }

    /// The request with these headers: `token` as bearer (if any), `user` as `X-User-Id` (if
    /// any).
    async fn send(
        &self,
        server: &TestServer,
        token: Option<&str>,
        user: Option<&str>,
    ) -> reqwest::Response {
        let mut request = server
            .client
            .request(self.method.clone(), server.url(&self.path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        request.send().await.expect("send")
    }
}

/// An upload tied to `chat-1`/`msg-1`, with these headers.
async fn upload_as(
    server: &TestServer,
    token: Option<&str>,
    user: Option<&str>,
) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(CSV.to_vec()).file_name("probe.csv");
    let form = reqwest::multipart::Form::new()
        .part("file", part)
        .text("chat_id", "chat-1")
        .text("message_id", "msg-1");
    let mut request = server.client.post(server.url("/v1/files")).multipart(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    request.send().await.expect("send")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_route_hides_other_owners_and_checks_credentials() {
    let server = TestServer::new().await;
    let csv = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let csv_id = text_of(&csv["id"]).to_owned();
    let run = server
        .run_ok(ALICE, "chat-1", "msg-1", XLSX_FROM_CSV, &[&csv_id])
        .await;
    let run_id = text_of(&run["id"]).to_owned();
    let xlsx_id = text_of(&run["files"][0]["id"]).to_owned();
    let workspace_id = server.workspace_id("tenant-a", "msg-1").await;

    // Every user-scoped route aimed at Alice's things.
    let owned = |probe: &str| {
        vec![
            Call::new(Method::GET, format!("/v1/files/{csv_id}"), None),
            Call::new(Method::GET, format!("/v1/files/{xlsx_id}"), None),
            Call::new(Method::GET, format!("/v1/files/{csv_id}/content"), None),
            Call::new(Method::GET, format!("/v1/files/{xlsx_id}/content"), None),
            Call::new(Method::DELETE, format!("/v1/files/{csv_id}"), None),
            Call::new(Method::DELETE, format!("/v1/files/{xlsx_id}"), None),
            Call::new(Method::GET, format!("/v1/runs/{run_id}"), None),
            Call::new(Method::GET, "/v1/messages/msg-1/files", None),
            Call::new(Method::GET, "/v1/messages/msg-1/files?source=all", None),
            Call::new(Method::GET, "/v1/chats/chat-1/files", None),
            Call::new(
                Method::POST,
                "/v1/messages/msg-1/render",
                Some(json!({ "text": "see sandbox:/mnt/data/report.xlsx" })),
            ),
            Call::new(Method::DELETE, "/v1/messages/msg-1/workspace", None),
            // Attaching Alice's file to a fresh message of the caller.
            Call::new(
                Method::POST,
                "/v1/runs",
                Some(json!({
                    "chat_id": format!("chat-{probe}"),
                    "message_id": format!("msg-{probe}"),
                    "code": "print(open('/mnt/data/sales.csv').read())",
                    "file_ids": [csv_id],
                })),
            ),
        ]
    };
    // Runs in Alice's message, and uploads into it: only another user of her tenant can name
    // it, since message ids are the tenant's own namespace (checked below).
    let reuse_message = Call::new(
        Method::POST,
        "/v1/runs",
        Some(json!({
            "chat_id": "chat-1",
            "message_id": "msg-1",
            "code": "import os; print(os.listdir('/mnt/data'))",
        })),
    );

    for (index, other) in [BOB, ALICE_OF_B].into_iter().enumerate() {
        for call in owned(&format!("probe-{index}")) {
            let response = call
                .send(&server, Some(other.token), Some(other.user))
                .await;
            let context = format!("{other:?} {} {}", call.method, call.path);
            assert_eq!(response.status().as_u16(), 404, "{context}");
            assert_error(response, 404, "not_found").await;
        }
    }
    let response = reuse_message
        .send(&server, Some(BOB.token), Some(BOB.user))
        .await;
    assert_error(response, 404, "not_found").await;
    let response = upload_as(&server, Some(BOB.token), Some(BOB.user)).await;
    assert_error(response, 404, "not_found").await;

    // The probes bound nothing: the fresh messages that tried to attach Alice's file do not
    // exist, and Alice's message is still hers.
    for probe in ["msg-probe-0", "msg-probe-1"] {
        for tenant in ["tenant-a", "tenant-b"] {
            let message = server
                .state
                .supervisor
                .catalog()
                .messages()
                .get(tenant, probe)
                .await
                .expect("catalog");
            assert!(message.is_none(), "{tenant}/{probe}: {message:?}");
        }
    }

    // Credentials: no token or an unknown one is 401, a missing X-User-Id 422, an admin token
    // on a user route 403. Alice's own routes and an upload are all checked.
    let mut calls = owned("creds");
    calls.push(reuse_message.clone());
    let bad_tokens = [
        "not-a-configured-token-0123",
        "svc-tenant-a-0123456789abcdeX",
    ];
    for call in &calls {
        let context = format!("{} {}", call.method, call.path);
        let response = call.send(&server, None, Some("alice")).await;
        assert_error(response, 401, "unauthorized").await;
        for bad in bad_tokens {
            let response = call.send(&server, Some(bad), Some("alice")).await;
            assert_eq!(response.status().as_u16(), 401, "{context} with {bad}");
            assert_error(response, 401, "unauthorized").await;
        }
        let response = call.send(&server, Some(TENANT_A_TOKEN), None).await;
        assert_eq!(
            response.status().as_u16(),
            422,
            "{context} without X-User-Id"
        );
        assert_error(response, 422, "invalid").await;
        let response = call
            .send(&server, Some(TENANT_A_TOKEN), Some("al ice"))
            .await;
        assert_eq!(
            response.status().as_u16(),
            422,
            "{context} with a bad X-User-Id"
        );
        assert_error(response, 422, "invalid").await;
        let response = call.send(&server, Some(ADMIN_TOKEN), Some("alice")).await;
        assert_eq!(
            response.status().as_u16(),
            403,
            "{context} with the admin token"
        );
        assert_error(response, 403, "forbidden").await;
    }
    let response = upload_as(&server, None, Some("alice")).await;
    assert_error(response, 401, "unauthorized").await;
    let response = upload_as(&server, Some(bad_tokens[0]), Some("alice")).await;
    assert_error(response, 401, "unauthorized").await;
    let response = upload_as(&server, Some(TENANT_A_TOKEN), None).await;
    assert_error(response, 422, "invalid").await;
    let response = upload_as(&server, Some(ADMIN_TOKEN), Some("alice")).await;
    assert_error(response, 403, "forbidden").await;
    // A token in another scheme is not a bearer token.
    let response = server
        .client
        .get(server.url(&format!("/v1/files/{csv_id}")))
        .header(header::AUTHORIZATION, format!("Basic {TENANT_A_TOKEN}"))
        .header("x-user-id", "alice")
        .send()
        .await
        .expect("get");
    assert_error(response, 401, "unauthorized").await;

    // Admin routes: a service token is forbidden, no token or an unknown one unauthorized.
    let admin_calls = [
        Call::new(Method::GET, "/v1/admin/workspaces", None),
        Call::new(
            Method::POST,
            "/v1/admin/gc",
            Some(json!({ "dry_run": true })),
        ),
        Call::new(Method::GET, "/v1/admin/retention", None),
    ];
    for call in &admin_calls {
        let context = format!("{} {}", call.method, call.path);
        for service in [TENANT_A_TOKEN, common::TENANT_B_TOKEN] {
            let response = call.send(&server, Some(service), Some("alice")).await;
            assert_eq!(response.status().as_u16(), 403, "{context}");
            assert_error(response, 403, "forbidden").await;
        }
        let response = call.send(&server, None, None).await;
        assert_error(response, 401, "unauthorized").await;
        let response = call.send(&server, Some(bad_tokens[0]), None).await;
        assert_error(response, 401, "unauthorized").await;
        let response = call.send(&server, Some(ADMIN_TOKEN), None).await;
        assert_eq!(response.status().as_u16(), 200, "{context} as admin");
    }

    // None of the refused calls changed anything of Alice's.
    for id in [&csv_id, &xlsx_id] {
        let response = server
            .get(ALICE, &format!("/v1/files/{id}"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status().as_u16(), 200, "{id} survived");
    }
    let listing = server
        .get(ALICE, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    assert_eq!(
        ids_of(&json_of(listing, 200).await["files"]),
        [csv_id.as_str(), xlsx_id.as_str()],
        "no upload of Bob's joined the message"
    );
    assert!(container_exists(&workspace_id), "the sandbox survived");
    assert!(server.workspace_dir(&workspace_id).exists());
    let mine = reuse_message
        .send(&server, Some(ALICE.token), Some(ALICE.user))
        .await;
    let mine = json_of(mine, 200).await;
    assert!(
        text_of(&mine["stdout"]).contains("report.xlsx"),
        "Alice still works in her workspace: {mine:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_are_each_tenants_own() {
    // Message ids are chosen by each tenant's chat backend, so two tenants may pick the same
    // one: the other tenant's `msg-1` is a message of its own, which sees nothing of Alice's.
    let server = TestServer::new().await;
    let csv = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    server
        .run_ok(
            ALICE,
            "chat-1",
            "msg-1",
            XLSX_FROM_CSV,
            &[text_of(&csv["id"])],
        )
        .await;

    let theirs = server
        .upload_ok(ALICE_OF_B, "theirs.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let run = server
        .run_ok(
            ALICE_OF_B,
            "chat-1",
            "msg-1",
            "import os; print(sorted(os.listdir('/mnt/data')))",
            &[],
        )
        .await;
    // Only the file tenant B uploaded with its own msg-1 is there.
    assert_eq!(run["stdout"], "['theirs.csv']\n", "{run:#}");
    let listing = server
        .get(ALICE_OF_B, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    assert_eq!(
        ids_of(&json_of(listing, 200).await["files"]),
        [text_of(&theirs["id"])]
    );
    let listing = server
        .get(ALICE, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    let listing = json_of(listing, 200).await;
    let names: Vec<&str> = listing["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| text_of(&file["name"]))
        .collect();
    assert_eq!(names, ["sales.csv", "report.xlsx"]);
    assert_ne!(
        server.workspace_id("tenant-a", "msg-1").await,
        server.workspace_id("tenant-b", "msg-1").await
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Signed links.
// ---------------------------------------------------------------------------------------------

/// `link` with its query replaced by these pairs.
fn with_query(link: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = Url::parse(link).expect("a URL");
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

/// The `expires` and `signature` of a signed link.
fn link_parts(link: &str) -> (String, String) {
    let url = Url::parse(link).expect("a URL");
    let pairs: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    (pairs["expires"].clone(), pairs["signature"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_links_work_without_a_token_and_only_unaltered_and_in_time() {
    let server = TestServer::new().await;
    let file = server.upload_ok(ALICE, "sales.csv", CSV, None).await;
    let id = text_of(&file["id"]).to_owned();
    let link = text_of(&file["download_url"]).to_owned();
    let other = server.upload_ok(ALICE, "other.csv", b"a,b\n", None).await;
    let other_link = text_of(&other["download_url"]).to_owned();
    let (expires, signature) = link_parts(&link);
    let expires_at: u64 = expires.parse().expect("unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(expires_at > now, "the link is valid for a while");

    let response = server.client.get(&link).send().await.expect("get");
    assert_eq!(bytes_of(response, 200).await, CSV);

    let flipped = {
        let mut chars: Vec<char> = signature.chars().collect();
        let last = chars.last_mut().expect("a signature");
        *last = if *last == '0' { '1' } else { '0' };
        chars.into_iter().collect::<String>()
    };
    let later = (expires_at + 1).to_string();
    let (other_expires, other_signature) = link_parts(&other_link);
    let expired = now - 10;
    let expired_signature = server.state.signer.sign(&id, "tenant-a", "alice", expired);
    let expired_text = expired.to_string();
    let bobs_signature = server.state.signer.sign(&id, "tenant-a", "bob", expires_at);
    let other_tenants = server
        .state
        .signer
        .sign(&id, "tenant-b", "alice", expires_at);
    let refused: Vec<(&str, String)> = vec![
        (
            "altered signature",
            with_query(&link, &[("expires", &expires), ("signature", &flipped)]),
        ),
        (
            "altered expiry",
            with_query(&link, &[("expires", &later), ("signature", &signature)]),
        ),
        (
            "another file's signature",
            with_query(
                &link,
                &[("expires", &other_expires), ("signature", &other_signature)],
            ),
        ),
        (
            "expired",
            with_query(
                &link,
                &[
                    ("expires", &expired_text),
                    ("signature", &expired_signature),
                ],
            ),
        ),
        (
            "signed for another user",
            with_query(
                &link,
                &[("expires", &expires), ("signature", &bobs_signature)],
            ),
        ),
        (
            "signed for another tenant",
            with_query(
                &link,
                &[("expires", &expires), ("signature", &other_tenants)],
            ),
        ),
        ("no signature", with_query(&link, &[("expires", &expires)])),
        ("no expiry", with_query(&link, &[("signature", &signature)])),
        // An expiry altered into something that is not a Unix time is still an altered link.
        (
            "expiry not a number",
            with_query(&link, &[("expires", "soon"), ("signature", &signature)]),
        ),
        (
            "expiry out of range",
            with_query(
                &link,
                &[
                    ("expires", "99999999999999999999999"),
                    ("signature", &signature),
                ],
            ),
        ),
        (
            "signature not hex",
            with_query(&link, &[("expires", &expires), ("signature", "zz")]),
        ),
        (
            "a file that does not exist",
            link.replace(&id, "file_0000000000000000000000000000dead"),
        ),
    ];
    for (case, url) in &refused {
        let response = server.client.get(url).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 403, "{case}: {url}");
        assert_error(response, 403, "forbidden").await;
    }

    // A link is not a way around the token either: a token of another user does not turn a
    // bad link into a good one.
    let response = server
        .client
        .get(with_query(
            &link,
            &[("expires", &expires), ("signature", &flipped)],
        ))
        .bearer_auth(TENANT_A_TOKEN)
        .header("x-user-id", "alice")
        .send()
        .await
        .expect("get");
    assert_error(response, 403, "forbidden").await;

    // Once the file is deleted, its link is refused like a forged one.
    let response = server
        .request(ALICE, Method::DELETE, &format!("/v1/files/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status().as_u16(), 204);
    let response = server.client.get(&link).send().await.expect("get");
    assert_error(response, 403, "forbidden").await;
    let response = server.client.get(&other_link).send().await.expect("get");
    assert_eq!(bytes_of(response, 200).await, b"a,b\n");
}

// ---------------------------------------------------------------------------------------------
// 4. Ranges and ETags.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_answer_ranges_and_etags_with_safe_headers() {
    let server = TestServer::new().await;
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = server.upload_ok(ALICE, "numbers.csv", &data, None).await;
    let id = text_of(&file["id"]).to_owned();
    let path = format!("/v1/files/{id}/content");
    let etag = format!("\"{}\"", sha256_hex(&data));
    let get = |range: Option<&str>, if_none_match: Option<&str>| {
        let mut request = server.get(ALICE, &path);
        if let Some(range) = range {
            request = request.header(header::RANGE, range);
        }
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        request.send()
    };

    let full = get(None, None).await.expect("get");
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(header_of(&full, header::CONTENT_LENGTH), "1000");
    assert_eq!(header_of(&full, header::ETAG), etag);
    assert_eq!(header_of(&full, header::CONTENT_TYPE), "text/csv");
    assert_eq!(header_of(&full, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(header_of(&full, header::ACCEPT_RANGES), "bytes");
    assert_eq!(
        header_of(&full, header::CONTENT_DISPOSITION),
        "attachment; filename=\"numbers.csv\"; filename*=UTF-8''numbers.csv"
    );
    assert_eq!(full.bytes().await.expect("body"), data);

    for (range, start, end) in [
        ("bytes=0-9", 0, 10),
        ("bytes=-5", 995, 1000),
        ("bytes=990-", 990, 1000),
        ("bytes=500-2000", 500, 1000),
    ] {
        let partial = get(Some(range), None).await.expect("get");
        assert_eq!(partial.status().as_u16(), 206, "{range}");
        assert_eq!(
            header_of(&partial, header::CONTENT_RANGE),
            format!("bytes {start}-{}/1000", end - 1),
            "{range}"
        );
        assert_eq!(
            header_of(&partial, header::CONTENT_LENGTH),
            (end - start).to_string(),
            "{range}"
        );
        assert_eq!(header_of(&partial, header::ETAG), etag, "{range}");
        assert_eq!(
            partial.bytes().await.expect("body"),
            data[start..end],
            "{range}"
        );
    }

    for range in ["bytes=1000-", "bytes=1000-1005", "bytes=-0"] {
        let unsatisfiable = get(Some(range), None).await.expect("get");
        assert_eq!(unsatisfiable.status().as_u16(), 416, "{range}");
        assert_eq!(
            header_of(&unsatisfiable, header::CONTENT_RANGE),
            "bytes */1000",
            "{range}"
        );
    }

    // Several ranges are answered with the whole file, as RFC 9110 allows.
    let several = get(Some("bytes=0-1,5-6"), None).await.expect("get");
    assert_eq!(several.status().as_u16(), 200);
    assert!(several.headers().get(header::CONTENT_RANGE).is_none());
    assert_eq!(several.bytes().await.expect("body"), data);

    let cached = get(None, Some(&etag)).await.expect("get");
    assert_eq!(cached.status().as_u16(), 304);
    assert_eq!(header_of(&cached, header::ETAG), etag);
    assert!(cached.bytes().await.expect("body").is_empty());
    let listed = get(None, Some(&format!("\"nope\", {etag}")))
        .await
        .expect("get");
    assert_eq!(listed.status().as_u16(), 304);
    let stale = get(None, Some("\"0000\"")).await.expect("get");
    assert_eq!(stale.status().as_u16(), 200);
    assert_eq!(stale.bytes().await.expect("body"), data);

    // Signed links get the same treatment.
    let link = text_of(&file["download_url"]);
    let partial = server
        .client
        .get(link)
        .header(header::RANGE, "bytes=0-9")
        .send()
        .await
        .expect("get");
    assert_eq!(partial.status().as_u16(), 206);
    assert_eq!(header_of(&partial, header::CONTENT_RANGE), "bytes 0-9/1000");
    assert_eq!(partial.bytes().await.expect("body"), data[..10]);
    let cached = server
        .client
        .get(link)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(cached.status().as_u16(), 304);
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile file names.
// ---------------------------------------------------------------------------------------------

/// Downloads `file` and checks its Content-Disposition: visible ASCII only, no line breaks, a
/// plain name without quotes, separators or control characters, and a `filename*` that decodes
/// to the file's name (or, for a very long one, a shortened form keeping its extension).
async fn assert_safe_disposition(server: &TestServer, file: &Value) {
    let name = text_of(&file["name"]);
    let response = server
        .get(
            ALICE,
            &format!("/v1/files/{}/content", text_of(&file["id"])),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(response.status().as_u16(), 200, "{name:?}");
    assert!(
        response.headers().get(header::SET_COOKIE).is_none(),
        "{name:?}"
    );
    let raw = response
        .headers()
        .get(header::CONTENT_DISPOSITION)
        .expect("Content-Disposition")
        .as_bytes();
    assert!(
        raw.iter().all(|b| (0x20..0x7f).contains(b)),
        "{name:?}: {raw:?}"
    );
    let disposition = std::str::from_utf8(raw).expect("ASCII");
    let (plain, decoded) = disposition_names(disposition);
    assert!(
        !plain.is_empty()
            && !plain
                .chars()
                .any(|c| matches!(c, '"' | '\\' | '/' | ';') || c.is_control()),
        "{name:?}: {disposition}"
    );
    if name.chars().count() <= 150 {
        assert_eq!(decoded, name, "{disposition}");
    } else {
        let extension = &name[name.rfind('.').expect("an extension")..];
        assert!(decoded.chars().count() <= 150, "{disposition}");
        assert!(decoded.ends_with(extension), "{disposition}");
        let stem = decoded.strip_suffix(extension).expect("extension");
        assert!(name.starts_with(stem), "{disposition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_keep_their_name_and_get_safe_headers() {
    let server = TestServer::new().await;
    let long = format!("{}.csv", "x".repeat(996));
    assert_eq!(long.chars().count(), 1000);
    let names = [
        "a\"b.csv",
        "отчёт.xlsx",
        long.as_str(),
        "../../etc/passwd.csv",
        "back\\slash;semi=colon%.csv",
    ];
    for name in names {
        // Quotes are escaped the way multipart parsers expect; every other byte is sent as is.
        let escaped = name.replace('"', "\\\"");
        let (content_type, body) = raw_multipart(escaped.as_bytes(), CSV);
        let response = server
            .request(ALICE, Method::POST, "/v1/files")
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("upload");
        let file = json_of(response, 201).await;
        assert_eq!(file["name"], name, "the File keeps the original name");
        let path = text_of(&file["path"]);
        let in_sandbox = path.strip_prefix("/mnt/data/").expect("a sandbox path");
        assert!(
            !in_sandbox.contains('/') && !matches!(in_sandbox, "" | "." | ".."),
            "{path}"
        );
        assert_safe_disposition(&server, &file).await;
    }

    // A line break cannot travel inside a multipart header, so a form that tries is either
    // refused or stored under another name; either way nothing of it reaches a response header.
    let (content_type, body) = raw_multipart(b"line\r\nSet-Cookie: x=1.csv", CSV);
    let response = server
        .request(ALICE, Method::POST, "/v1/files")
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    assert!(status == 201 || status == 422, "{status}");
    if status == 201 {
        let file = json_of(response, 201).await;
        assert_safe_disposition(&server, &file).await;
    }

    // The sandbox can name files anything Linux allows, line breaks included: those names are
    // kept as the code wrote them and still make safe headers.
    let run = server
        .run_ok(
            ALICE,
            "chat-1",
            "msg-1",
            r#"
for name in ['line\r\nSet-Cookie: x=1.csv', 'a"b.csv', 'отчёт.xlsx', 'tab\there.csv']:
    open('/mnt/data/' + name, 'w').write('1,2\n')
"#,
            &[],
        )
        .await;
    let files = run["files"].as_array().expect("files");
    let registered: BTreeSet<&str> = files.iter().map(|file| text_of(&file["name"])).collect();
    assert_eq!(
        registered,
        BTreeSet::from([
            "line\r\nSet-Cookie: x=1.csv",
            "a\"b.csv",
            "отчёт.xlsx",
            "tab\there.csv"
        ]),
        "{run:#}"
    );
    for file in files {
        assert_safe_disposition(&server, file).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Large files stream in constant memory.
// ---------------------------------------------------------------------------------------------

/// Bytes of the large upload.
const LARGE_BYTES: u64 = 1 << 30;
/// Size of each generated piece of it.
const PIECE_BYTES: usize = 1 << 20;

/// The sha256 of the large upload, worked out once outside the test so that the test spends
/// no second pass of sha256 over a GiB in a debug build (about half a minute) on it:
///
/// ```text
/// python3 -c "import hashlib, struct; h = hashlib.sha256()
/// for i in range(1024): b = bytearray([i % 251]) * (1 << 20); b[:8] = struct.pack('>Q', i); h.update(b)
/// print(h.hexdigest())"
/// ```
const LARGE_SHA256: &str = "8caeae7158dba8490a7a6263ca66dc94d776824bd1129893531323d5f0717f9b";

/// Piece `index` of the large upload: not all alike, so that a misplaced piece changes the
/// hash.
fn piece(index: u64) -> Vec<u8> {
    let mut bytes = vec![(index % 251) as u8; PIECE_BYTES];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_goes_up_and_down_in_flat_memory() {
    let server = TestServer::with_config(|config| {
        config.limits.max_upload_bytes = bytesize::ByteSize::gib(2);
    })
    .await;
    let _measuring = MEMORY_MEASURE.lock().await;
    let rss_before = reset_memory_peak();

    // The upload is generated piece by piece while it is sent.
    let pieces = futures::stream::iter(0..LARGE_BYTES / PIECE_BYTES as u64)
        .map(|index| Ok::<_, std::io::Error>(bytes::Bytes::from(piece(index))));
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(pieces),
        LARGE_BYTES,
    )
    .file_name("large.csv");
    let form = reqwest::multipart::Form::new().part("file", part);
    let response = server
        .request(ALICE, Method::POST, "/v1/files")
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let file = json_of(response, 201).await;
    assert_eq!(file["size"], LARGE_BYTES);
    assert_eq!(file["sha256"], LARGE_SHA256);

    let response = server
        .get(
            ALICE,
            &format!("/v1/files/{}/content", text_of(&file["id"])),
        )
        .send()
        .await
        .expect("download");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        header_of(&response, header::CONTENT_LENGTH),
        LARGE_BYTES.to_string()
    );
    assert_eq!(
        header_of(&response, header::ETAG),
        format!("\"{LARGE_SHA256}\"")
    );
    // The download is compared byte for byte with the generator, whose bytes hash to
    // `LARGE_SHA256`: the same check as hashing the download, at the cost of a memcmp.
    let mut count = 0u64;
    let mut current: Option<(u64, Vec<u8>)> = None;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let mut chunk = &chunk.expect("a chunk")[..];
        while !chunk.is_empty() {
            let index = count / PIECE_BYTES as u64;
            if current.as_ref().is_none_or(|(at, _)| *at != index) {
                current = Some((index, piece(index)));
            }
            let (_, generated) = current.as_ref().expect("the current piece");
            let offset = (count % PIECE_BYTES as u64) as usize;
            let take = chunk.len().min(PIECE_BYTES - offset);
            assert!(
                chunk[..take] == generated[offset..offset + take],
                "the download differs within bytes {count}..{}",
                count + take as u64
            );
            chunk = &chunk[take..];
            count += take as u64;
        }
        assert!(count <= LARGE_BYTES, "more bytes than uploaded");
    }
    assert_eq!(count, LARGE_BYTES);

    assert_memory_flat(rss_before, 200 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_form_fields_are_refused_in_flat_memory() {
    // The upload route has no body limit (its file is streamed and capped on its own), so its
    // text fields must be capped too: ids are at most 128 characters, and a form that sends a
    // chat id of hundreds of MiB must be refused without holding it in memory.
    let server = TestServer::new().await;
    let _measuring = MEMORY_MEASURE.lock().await;
    let rss_before = reset_memory_peak();
    let field_bytes: u64 = 256 << 20;
    let pieces = futures::stream::iter(0..field_bytes / PIECE_BYTES as u64)
        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'c'; PIECE_BYTES])));
    let chat_id = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(pieces),
        field_bytes,
    );
    let form = reqwest::multipart::Form::new()
        .part("chat_id", chat_id)
        .part(
            "file",
            reqwest::multipart::Part::bytes(CSV.to_vec()).file_name("sales.csv"),
        );
    let sent = server
        .request(ALICE, Method::POST, "/v1/files")
        .multipart(form)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().as_u16() == 413 => {
            assert_error(response, 413, "too_large").await;
        }
        Ok(response) => {
            assert_error(response, 422, "invalid").await;
        }
        // The server may answer and close the connection before the client has sent the
        // whole field; the client then sees the refusal as a broken connection.
        Err(error) => assert!(!error.is_timeout(), "{error}"),
    };
    assert_memory_flat(rss_before, 200 << 20);
    let stored = files_below(&server.data_dir().join("blobs"));
    assert!(stored.is_empty(), "{stored:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Server-sent events.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_run_sends_output_then_files_then_one_done() {
    let server = TestServer::new().await;
    let body = json!({
        "chat_id": "chat-1",
        "message_id": "msg-1",
        "code": r#"
import sys
print('first line', flush=True)
print('a warning', file=sys.stderr, flush=True)
open('/mnt/data/a.csv', 'w').write('x,y\n1,2\n')
open('/mnt/data/b.csv', 'w').write('x,y\n3,4\n')
print('last line', flush=True)
"#,
    });
    let response = server
        .request(ALICE, Method::POST, "/v1/runs")
        .header(header::ACCEPT, "text/event-stream")
        .json(&body)
        .send()
        .await
        .expect("run");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        header_of(&response, header::CONTENT_TYPE).starts_with("text/event-stream"),
        "{:?}",
        response.headers()
    );
    let text = response.text().await.expect("the stream ends after done");
    let events = parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
    assert!(
        names
            .iter()
            .all(|name| matches!(*name, "stdout" | "stderr" | "file" | "done")),
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert_eq!(names.iter().filter(|name| **name == "done").count(), 1);
    let last_output = names
        .iter()
        .rposition(|name| matches!(*name, "stdout" | "stderr"))
        .expect("output events");
    let first_file = names
        .iter()
        .position(|name| *name == "file")
        .expect("file events");
    assert!(last_output < first_file, "{names:?}");
    assert_eq!(names.iter().filter(|name| **name == "file").count(), 2);

    let output = |stream: &str| -> String {
        events
            .iter()
            .filter(|event| event.name == stream)
            .map(|event| text_of(&event.data["text"]))
            .collect()
    };
    let done = &events.last().expect("done").data;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(output("stdout"), "first line\nlast line\n");
    assert_eq!(output("stdout"), text_of(&done["stdout"]));
    assert_eq!(output("stderr"), text_of(&done["stderr"]));
    assert!(output("stderr").contains("a warning"));

    let streamed_files: Vec<Value> = events
        .iter()
        .filter(|event| event.name == "file")
        .map(|event| without_links(&event.data))
        .collect();
    assert_eq!(
        Value::Array(streamed_files),
        without_links(&done["files"]),
        "the file events are the Run's files"
    );
    let names: BTreeSet<&str> = done["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| text_of(&file["name"]))
        .collect();
    assert_eq!(names, BTreeSet::from(["a.csv", "b.csv"]));
    for event in events.iter().filter(|event| event.name == "file") {
        let link = text_of(&event.data["download_url"]);
        let response = server.client.get(link).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 200);
    }

    let run_id = text_of(&done["id"]);
    let stored = server
        .get(ALICE, &format!("/v1/runs/{run_id}"))
        .send()
        .await
        .expect("get run");
    assert_eq!(
        without_links(&json_of(stored, 200).await),
        without_links(done)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_run_that_cannot_start_answers_with_its_status() {
    // Streaming changes how a run's progress is delivered, not the contract of the request:
    // what is refused before anything runs gets the same status and error body as without
    // `Accept: text/event-stream`.
    let server = TestServer::new().await;
    let csv = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let csv_id = text_of(&csv["id"]);
    let refused = [
        (
            "unknown language",
            ALICE,
            json!({ "chat_id": "chat-1", "message_id": "msg-2", "code": "1", "language": "ruby" }),
            422,
            "invalid",
        ),
        (
            "timeout above the maximum",
            ALICE,
            json!({ "chat_id": "chat-1", "message_id": "msg-2", "code": "1", "timeout_secs": 100000 }),
            422,
            "invalid",
        ),
        (
            "code over its limit",
            ALICE,
            json!({ "chat_id": "chat-1", "message_id": "msg-2", "code": "#".repeat(600 * 1024) }),
            413,
            "too_large",
        ),
        (
            "someone else's message",
            BOB,
            json!({ "chat_id": "chat-1", "message_id": "msg-1", "code": "print(1)" }),
            404,
            "not_found",
        ),
        (
            "someone else's file",
            BOB,
            json!({ "chat_id": "chat-9", "message_id": "msg-9", "code": "1", "file_ids": [csv_id] }),
            404,
            "not_found",
        ),
    ];
    for (case, caller, body, status, code) in refused {
        let response = server
            .request(caller, Method::POST, "/v1/runs")
            .header(header::ACCEPT, "text/event-stream")
            .json(&body)
            .send()
            .await
            .expect("run");
        assert_eq!(response.status().as_u16(), status, "{case}");
        assert_error(response, status, code).await;
    }
    // The same requests without streaming, for comparison.
    let response = server
        .run(
            BOB,
            &json!({ "chat_id": "chat-1", "message_id": "msg-1", "code": "print(1)" }),
        )
        .await;
    assert_error(response, 404, "not_found").await;
}

// ---------------------------------------------------------------------------------------------
// 8. Message binding.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stays_bound_to_its_user_and_chat() {
    let server = TestServer::new().await;
    server
        .run_ok(
            ALICE,
            "chat-1",
            "msg-1",
            "open('/mnt/data/a.csv', 'w').write('1\\n')",
            &[],
        )
        .await;
    let blobs = server.data_dir().join("blobs");
    let blobs_before = files_below(&blobs).len();

    let server = &server;
    let run = |caller: Caller, chat: &str| {
        let body = json!({ "chat_id": chat, "message_id": "msg-1", "code": "print(1)" });
        async move { server.run(caller, &body).await }
    };
    assert_error(run(BOB, "chat-1").await, 404, "not_found").await;
    assert_error(run(ALICE, "chat-2").await, 404, "not_found").await;
    assert_error(run(BOB, "chat-2").await, 404, "not_found").await;
    let response = server
        .upload(BOB, "bob.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    assert_error(response, 404, "not_found").await;
    let response = server
        .upload(ALICE, "alice.csv", CSV, Some(("chat-2", "msg-1")))
        .await;
    assert_error(response, 404, "not_found").await;
    // A message named without its chat must be the uploader's own.
    let message_only = |caller: Caller| {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(CSV.to_vec()).file_name("only.csv"),
            )
            .text("message_id", "msg-1");
        server
            .request(caller, Method::POST, "/v1/files")
            .multipart(form)
            .send()
    };
    let response = message_only(BOB).await.expect("upload");
    assert_error(response, 404, "not_found").await;
    assert_eq!(
        files_below(&blobs).len(),
        blobs_before,
        "refused uploads leave no bytes behind"
    );
    let response = message_only(ALICE).await.expect("upload");
    let joined = json_of(response, 201).await;
    assert_eq!(joined["message_id"], "msg-1");
    assert_eq!(
        joined["chat_id"], "chat-1",
        "the chat comes from the message"
    );
    let response = server
        .get(BOB, "/v1/messages/msg-1/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 404, "not_found").await;
    let response = server
        .get(BOB, "/v1/chats/chat-1/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 404, "not_found").await;

    // The binding is unchanged, and Alice's chat-2 was not created by the refused calls.
    let message = server
        .state
        .supervisor
        .catalog()
        .messages()
        .get("tenant-a", "msg-1")
        .await
        .expect("catalog")
        .expect("bound");
    assert_eq!(
        (message.user_id.as_str(), message.chat_id.as_str()),
        ("alice", "chat-1")
    );
    let response = server
        .get(ALICE, "/v1/chats/chat-2/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 404, "not_found").await;
    let again = server
        .run_ok(
            ALICE,
            "chat-1",
            "msg-1",
            "print(open('/mnt/data/a.csv').read())",
            &[],
        )
        .await;
    assert_eq!(again["stdout"], "1\n\n");
}

// ---------------------------------------------------------------------------------------------
// 9. Backpressure.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_the_queue_are_refused_with_retry_after() {
    let server = TestServer::with_config(|config| {
        config.server.max_runs_in_flight = 1;
        config.server.max_queued_runs = 1;
    })
    .await;
    let responses = futures::future::join_all((0..6).map(|index| {
        let body = json!({
            "chat_id": "chat-1",
            "message_id": format!("msg-{index}"),
            "code": "import time; time.sleep(3)",
        });
        let server = &server;
        async move { server.run(ALICE, &body).await }
    }))
    .await;

    let mut busy = 0;
    let mut finished = 0;
    for response in responses {
        match response.status().as_u16() {
            503 => {
                let retry_after: u64 = header_of(&response, header::RETRY_AFTER)
                    .parse()
                    .expect("Retry-After in seconds");
                assert!(retry_after >= 1);
                assert_error(response, 503, "busy").await;
                busy += 1;
            }
            _ => {
                let run = json_of(response, 200).await;
                assert_eq!(run["status"], "succeeded", "{run:#}");
                finished += 1;
            }
        }
    }
    assert!(busy >= 1, "six runs for two places: some must be refused");
    assert!(finished >= 1, "the first run has a free slot");

    // Once the slots are free again, runs are admitted.
    server
        .run_ok(ALICE, "chat-1", "msg-after", "print(1)", &[])
        .await;
}

// ---------------------------------------------------------------------------------------------
// 10. Limits and malformed requests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_malformed_requests_are_refused() {
    let server = TestServer::with_config(|config| {
        config.server.max_body_bytes = bytesize::ByteSize::kib(64);
        config.limits.max_code_bytes = bytesize::ByteSize::kib(16);
        config.limits.max_upload_bytes = bytesize::ByteSize::mib(1);
        config.limits.max_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let blob_files = server.data_dir().join("blobs").join("files");

    // An upload over the limit is refused and leaves no bytes behind, staged or stored.
    let response = server
        .upload(
            ALICE,
            "big.csv",
            &vec![b'x'; 2 << 20],
            Some(("chat-1", "msg-big")),
        )
        .await;
    assert_error(response, 413, "too_large").await;
    assert_eq!(files_below(&blob_files), Vec::<std::path::PathBuf>::new());
    // Nothing was bound by it either.
    let response = server
        .get(ALICE, "/v1/messages/msg-big/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 404, "not_found").await;
    // Exactly at the limit is fine.
    let at_limit = server
        .upload_ok(ALICE, "limit.csv", &vec![b'y'; 1 << 20], None)
        .await;
    assert_eq!(at_limit["size"], 1 << 20);

    let run = |body: Value| {
        let server = &server;
        async move { server.run(ALICE, &body).await }
    };
    let base = json!({ "chat_id": "chat-1", "message_id": "msg-1", "code": "print(1)" });
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };

    // A JSON body over the server's limit, on the run route and on another JSON route.
    let response = run(with("code", json!("#".repeat(128 * 1024)))).await;
    assert_error(response, 413, "too_large").await;
    let response = server
        .request(ALICE, Method::POST, "/v1/messages/msg-1/render")
        .json(&json!({ "text": "x".repeat(128 * 1024) }))
        .send()
        .await
        .expect("render");
    assert_error(response, 413, "too_large").await;
    // Code over its own limit, in a body the server accepts.
    let response = run(with("code", json!("#".repeat(32 * 1024)))).await;
    assert_error(response, 413, "too_large").await;

    for (case, body) in [
        ("unknown language", with("language", json!("ruby"))),
        (
            "timeout above the maximum",
            with("timeout_secs", json!(3600)),
        ),
        ("zero timeout", with("timeout_secs", json!(0))),
        ("negative timeout", with("timeout_secs", json!(-1))),
        ("message id with a slash", with("message_id", json!("a/b"))),
        ("message id with a space", with("message_id", json!("a b"))),
        ("empty message id", with("message_id", json!(""))),
        (
            "message id too long",
            with("message_id", json!("m".repeat(129))),
        ),
        ("chat id not ASCII", with("chat_id", json!("чат"))),
        ("code not a string", with("code", json!(42))),
        ("unknown field", with("colour", json!("blue"))),
        (
            "no code",
            json!({ "chat_id": "chat-1", "message_id": "msg-1" }),
        ),
    ] {
        let response = run(body).await;
        assert_eq!(response.status().as_u16(), 422, "{case}");
        assert_error(response, 422, "invalid").await;
    }
    for (case, content_type, body) in [
        ("malformed JSON", "application/json", "{\"chat_id\": "),
        ("not JSON at all", "application/json", "chat_id=chat-1"),
        ("not declared as JSON", "text/plain", "{}"),
    ] {
        let response = server
            .request(ALICE, Method::POST, "/v1/runs")
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("run");
        assert_eq!(response.status().as_u16(), 422, "{case}");
        assert_error(response, 422, "invalid").await;
    }
    // Ids in paths are checked as in bodies.
    let response = server
        .get(ALICE, "/v1/messages/a%20b/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 422, "invalid").await;
    // An upload needs its file; its ids are checked like a run's; a message named without
    // its chat must already exist (it cannot be bound without one).
    let upload_form = |fields: &[(&'static str, &'static str)]| {
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in fields {
            form = if *name == "file" {
                form.part(
                    "file",
                    reqwest::multipart::Part::bytes(CSV.to_vec()).file_name(*value),
                )
            } else {
                form.text(*name, *value)
            };
        }
        server
            .request(ALICE, Method::POST, "/v1/files")
            .multipart(form)
            .send()
    };
    for (case, fields) in [
        ("no file", &[("chat_id", "chat-1")][..]),
        ("two files", &[("file", "a.csv"), ("file", "b.csv")][..]),
        (
            "message id with a slash",
            &[
                ("file", "a.csv"),
                ("chat_id", "chat-1"),
                ("message_id", "a/b"),
            ][..],
        ),
        (
            "chat id with a space",
            &[
                ("file", "a.csv"),
                ("chat_id", "a b"),
                ("message_id", "msg-1"),
            ][..],
        ),
        (
            "unknown field",
            &[("file", "a.csv"), ("colour", "blue")][..],
        ),
        ("blank name", &[("file", " ")][..]),
    ] {
        let response = upload_form(fields).await.expect("upload");
        assert_eq!(response.status().as_u16(), 422, "{case}");
        assert_error(response, 422, "invalid").await;
    }
    let response = upload_form(&[("file", "a.csv"), ("message_id", "msg-new")])
        .await
        .expect("upload");
    assert_error(response, 404, "not_found").await;

    // None of the refused requests bound a message or left bytes behind.
    let messages = server
        .state
        .supervisor
        .catalog()
        .messages()
        .all()
        .await
        .expect("catalog");
    assert!(messages.is_empty(), "{messages:?}");
    let stored: Vec<String> = files_below(&blob_files)
        .iter()
        .map(|path| {
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(stored, [text_of(&at_limit["id"])]);
}

/// Polls until the message `msg-1` of Alice has run the marker code (its workspace holds
/// `started`). The bound only turns a broken server into a failure instead of a hang.
async fn wait_for_marker(state: &codebox::api::AppState) {
    let mut polls = 0;
    loop {
        let message = state
            .supervisor
            .catalog()
            .messages()
            .get("tenant-a", "msg-1")
            .await
            .expect("catalog");
        let started = message.is_some_and(|message| {
            state
                .supervisor
                .workspaces()
                .get(&message.workspace_id)
                .expect("workspace")
                .data
                .join("started")
                .exists()
        });
        if started {
            return;
        }
        polls += 1;
        assert!(polls < 2400, "the run never started");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Code that marks that it started, sleeps 2 s, then writes a tracked file.
const MARKED_SLEEP: &str = "open('/mnt/data/started', 'w').close()\n\
    import time\n\
    time.sleep(2)\n\
    open('/mnt/data/late.csv', 'w').write('1\\n')\n\
    print('finished')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_client_went_away_still_ends_in_the_catalog() {
    // A chat backend may give up on a long run (its own timeout) and close the connection.
    // The run must not stay `running` in the catalog for good: it either finishes, as a
    // streamed run does when its client leaves, or is stopped and recorded as such.
    let server = TestServer::new().await;
    let request = server
        .request(ALICE, Method::POST, "/v1/runs")
        .json(&json!({ "chat_id": "chat-1", "message_id": "msg-1", "code": MARKED_SLEEP }))
        .send();
    let pending = tokio::spawn(request);
    wait_for_marker(&server.state).await;
    // Dropping the request closes its connection before any answer came.
    pending.abort();
    let _ = pending.await;

    let catalog = server.data_dir().join("catalog.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", catalog.display()))
        .await
        .expect("open the catalog");
    let (run_id,): (String,) = sqlx::query_as("SELECT id FROM runs WHERE message_id = 'msg-1'")
        .fetch_one(&pool)
        .await
        .expect("the run is recorded");
    pool.close().await;
    // The code needs about two more seconds; the bound is far above that.
    let mut polls = 0;
    let run = loop {
        let response = server
            .get(ALICE, &format!("/v1/runs/{run_id}"))
            .send()
            .await
            .expect("get run");
        let run = json_of(response, 200).await;
        if run["status"] != "running" {
            break run;
        }
        polls += 1;
        assert!(
            polls < 300,
            "the run is still `running` long after its code ended: {run:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let status = text_of(&run["status"]);
    assert!(
        ["succeeded", "failed", "killed"].contains(&status),
        "{run:#}"
    );
    if status == "succeeded" {
        // A run that went on registered what its code wrote.
        assert_eq!(run["files"][0]["name"], "late.csv", "{run:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Graceful shutdown.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_run_in_flight_finish() {
    let server = TestServer::new().await;
    let state = server.state.clone();
    let client = server.client.clone();
    let healthz = server.url("/healthz");
    let request = server
        .request(ALICE, Method::POST, "/v1/runs")
        .json(&json!({
            "chat_id": "chat-1",
            "message_id": "msg-1",
            "code": MARKED_SLEEP,
        }))
        .send();
    let pending = tokio::spawn(request);

    // The run is in flight once its code has written the marker into the workspace.
    wait_for_marker(&state).await;

    let (response, stopped) = tokio::join!(pending, server.shutdown());
    stopped.expect("the server stops cleanly");
    let response = response
        .expect("the request task")
        .expect("the answer arrives although the server is stopping");
    let run = json_of(response, 200).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["stdout"], "finished\n");

    // The catalog agrees: the run is recorded as finished, not left running or marked failed.
    let record = state
        .supervisor
        .catalog()
        .runs()
        .get(&Owner::new("tenant-a", "alice"), text_of(&run["id"]))
        .await
        .expect("catalog")
        .expect("the run is recorded");
    assert_eq!(record.status.as_str(), "succeeded", "{record:?}");
    assert_eq!(record.exit_code, Some(0));

    // The server no longer takes requests.
    assert!(
        client.get(&healthz).send().await.is_err(),
        "the stopped server still answers"
    );
}
