//! Helpers the HTTP suites share (`tests/http*.rs`): the attachment and code most tests use,
//! readers of headers, links and server-sent events, and the process's own memory figures.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::path::Path;
use std::process::Command;

use reqwest::header;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The attachment most tests upload.
pub const CSV: &[u8] = b"region,units\nnorth,3\nsouth,5\n";

/// Writes `/mnt/data/report.xlsx` from the attached `/mnt/data/sales.csv` (the test image has
/// python3 and openpyxl only).
pub const XLSX_FROM_CSV: &str = r#"
import csv, openpyxl
book = openpyxl.Workbook()
for row in csv.reader(open('/mnt/data/sales.csv')):
    book.active.append(row)
book.save('/mnt/data/report.xlsx')
print('saved /mnt/data/report.xlsx')
"#;

/// The MIME type of an xlsx file.
pub const XLSX_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn text_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

/// `value` without the signed links, which carry an expiry computed at each answer and so may
/// differ between two answers about the same file.
pub fn without_links(value: &Value) -> Value {
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
pub fn ids_of(files: &Value) -> Vec<&str> {
    files
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {files}"))
        .iter()
        .map(|file| text_of(&file["id"]))
        .collect()
}

/// Checks that a time is RFC 3339 in UTC.
pub fn assert_utc_time(value: &Value) {
    let text = text_of(value);
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{text} is not RFC 3339: {error}"));
    assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{text}");
    assert!(text.ends_with('Z'), "{text}");
}

/// Whether the engine has the sandbox container of workspace `workspace_id`.
pub fn container_exists(workspace_id: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", &format!("codebox-{workspace_id}")])
        .output()
        .expect("run docker")
        .status
        .success()
}

/// Every regular file below `folder` (none if it does not exist).
pub fn files_below(folder: &Path) -> Vec<std::path::PathBuf> {
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
pub async fn bytes_of(response: reqwest::Response, status: u16) -> Vec<u8> {
    let url = response.url().clone();
    assert_eq!(response.status().as_u16(), status, "{url}");
    response.bytes().await.expect("read the body").to_vec()
}

/// A header of a response as text; it must be there and be visible ASCII.
pub fn header_of(response: &reqwest::Response, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap_or_else(|_| panic!("the {name} header is not visible ASCII"))
}

/// Decodes `%XX` escapes into bytes and those into UTF-8.
pub fn percent_decode(text: &str) -> String {
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
pub fn disposition_names(disposition: &str) -> (String, String) {
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
pub fn mask_links(text: &str, base_url: &str) -> (String, Vec<String>) {
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
pub fn raw_multipart(filename: &[u8], content: &[u8]) -> (String, Vec<u8>) {
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
pub fn proc_status_bytes(field: &str) -> u64 {
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
pub static MEMORY_MEASURE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Forgets the peak resident size so far (Linux 4.0+) and returns the resident size now. If
/// the reset is refused, the earlier peak stays in later readings, which only makes a check on
/// them stricter.
pub fn reset_memory_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    proc_status_bytes("VmRSS")
}

/// Checks that the peak resident size since [`reset_memory_peak`] stayed within `limit` bytes
/// of `before`.
pub fn assert_memory_flat(before: u64, limit: u64) {
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
pub struct SseEvent {
    pub name: String,
    pub data: Value,
}

/// Parses a `text/event-stream` body: blocks separated by blank lines, `event:` and `data:`
/// fields, comments (keep-alives) skipped.
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
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

/// A kernel's channels WebSocket, as a Jupyter client opens it.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends an `execute_request` over a kernel's channels and gathers every message about it
/// until its `status: idle` (a minute at most).
pub async fn execute(socket: &mut Socket, code: &str) -> Vec<Value> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let msg_id = uuid::Uuid::new_v4().to_string();
    let request = serde_json::json!({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": "s1", "date": "", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": false, "store_history": true,
                    "user_expressions": {}, "allow_stdin": false, "stop_on_error": true},
    });
    socket
        .send(Message::Text(request.to_string().into()))
        .await
        .expect("send");
    let mut messages = Vec::new();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), socket.next())
            .await
            .expect("a reply in time")
            .expect("the socket is open")
            .expect("a message");
        let Message::Text(text) = next else { continue };
        let message: Value = serde_json::from_str(&text).expect("JSON");
        if message["parent_header"]["msg_id"] != msg_id.as_str() {
            continue;
        }
        let is_status =
            message["msg_type"] == "status" || message["header"]["msg_type"] == "status";
        let idle = is_status && message["content"]["execution_state"] == "idle";
        messages.push(message);
        if idle {
            return messages;
        }
    }
}
