//! The HTTP API against a hostile or careless client: ids that are path segments, file names
//! with folders in them, wrong methods, broken forms, bodies announced larger than allowed,
//! uploads abandoned halfway, and refusals that must name an error id the log carries. A real
//! server on a free port, the real engine, requests written by hand where no client library
//! would send them.

mod common;
mod raw;

use std::time::Duration;

use common::{ALICE, TENANT_A_TOKEN, TestServer, assert_error, json_of, msg_id, tenant_id};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// The attachment these tests upload.
const CSV: &[u8] = b"region,units\nnorth,3\nsouth,5\n";

fn text_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

/// Uploads `CSV` under a file name sent byte for byte; the response whatever its status.
async fn upload_named(
    server: &TestServer,
    filename: &str,
    fields: &[(&str, &str)],
) -> raw::RawResponse {
    let mut body = raw::form_start(fields, filename.as_bytes());
    body.extend_from_slice(CSV);
    body.extend_from_slice(&raw::form_end());
    let head = format!(
        "{}\r\nContent-Type: {}\r\nContent-Length: {}",
        raw::head("POST", "/v1/files", TENANT_A_TOKEN, ALICE.user),
        raw::form_type(),
        body.len()
    );
    raw::exchange(&server.base_url, &head, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_ids_are_refused_wherever_an_id_is_taken() {
    let server = TestServer::new().await;
    // In a run's body.
    for (chat_id, message_id) in [
        ("chat-1", "."),
        ("chat-1", ".."),
        ("..", "msg-1"),
        (".", "msg-1"),
    ] {
        let response = server
            .run(
                ALICE,
                &json!({ "chat_id": chat_id, "message_id": message_id, "code": "print(1)" }),
            )
            .await;
        let message = assert_error(response, 422, "invalid").await;
        assert!(message.contains("cannot travel in a URL path"), "{message}");
    }
    // In an upload's form fields.
    for fields in [
        [("chat_id", ".."), ("message_id", "msg-1")],
        [("chat_id", "chat-1"), ("message_id", ".")],
    ] {
        upload_named(&server, "a.csv", &fields)
            .await
            .assert_error(422, "invalid");
    }
    // In paths, literally and percent-encoded (a client library would resolve them away).
    for (method, path) in [
        ("GET", "/v1/messages/../files"),
        ("GET", "/v1/messages/%2E%2E/files"),
        ("GET", "/v1/messages/./files"),
        ("GET", "/v1/chats/%2e/files"),
        ("GET", "/v1/chats/../files"),
        ("DELETE", "/v1/messages/%2E%2E/workspace"),
    ] {
        let head = raw::head(method, path, TENANT_A_TOKEN, ALICE.user);
        raw::exchange(&server.base_url, &head, b"")
            .await
            .assert_error(422, "invalid");
    }
    let text = br#"{"text": "sandbox:/mnt/data/a.csv"}"#;
    let head = format!(
        "{}\r\nContent-Type: application/json\r\nContent-Length: {}",
        raw::head(
            "POST",
            "/v1/messages/%2E/render",
            TENANT_A_TOKEN,
            ALICE.user
        ),
        text.len()
    );
    raw::exchange(&server.base_url, &head, text)
        .await
        .assert_error(422, "invalid");

    // Nothing was bound or stored by any of them.
    let catalog = server.state.supervisor.catalog();
    let messages = catalog.messages().all().await.expect("catalog");
    assert!(messages.is_empty(), "{messages:?}");
    let stored = raw::files_below(&server.data_dir().join("blobs"));
    assert!(stored.is_empty(), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_names_keep_only_their_last_part() {
    let server = TestServer::new().await;
    // (name sent, name kept): `/` and `\` both separate folders; `.`, `..` and empty parts
    // never survive.
    let cases = [
        ("C:\\Users\\a\\report.csv", "report.csv"),
        ("../../etc/passwd.csv", "passwd.csv"),
        ("reports/2024/q1.csv", "q1.csv"),
        ("..\\..\\windows.csv", "windows.csv"),
        ("tables\\ .. \\./", "tables"),
        ("..", "file"),
        ("./", "file"),
        ("\\/", "file"),
    ];
    let mut attach = Vec::new();
    for (index, (sent, kept)) in cases.iter().enumerate() {
        // Each in a message of its own, so that no name collides with another.
        let message_id = format!("msg-{index}");
        let response = upload_named(
            &server,
            sent,
            &[("chat_id", "chat-1"), ("message_id", &message_id)],
        )
        .await;
        if !kept.contains('.') {
            // A kept name without an extension is no type the upload allowlist admits.
            assert_eq!(response.status, 415, "{sent}");
            assert_eq!(response.json()["error"]["code"], "unsupported", "{sent}");
            continue;
        }
        assert_eq!(
            response.status,
            201,
            "{sent}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let file = response.json();
        assert_eq!(file["name"], *kept, "{sent}");
        assert_eq!(file["path"], format!("/mnt/data/{kept}"), "{sent}");
        if index < 4 {
            attach.push(text_of(&file["id"]).to_owned());
        }
    }
    // The code sees the same names, and nothing else, in /mnt/data.
    let ids: Vec<&str> = attach.iter().map(String::as_str).collect();
    let run = server
        .run_ok(
            ALICE,
            ("chat-1", "msg-listing"),
            "import os; print(sorted(os.listdir('/mnt/data')))",
            &ids,
        )
        .await;
    assert_eq!(
        run["stdout"], "['passwd.csv', 'q1.csv', 'report.csv', 'windows.csv']\n",
        "{run:#}"
    );
    // The listing of a message shows its attachment under the kept name.
    let listing = server
        .get(ALICE, "/v1/messages/msg-0/files?source=all")
        .send()
        .await
        .expect("list");
    let listing = json_of(listing, 200).await;
    assert_eq!(listing["files"][0]["name"], "report.csv", "{listing:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_gets_a_json_405_with_allow() {
    let server = TestServer::new().await;
    for (method, path, allowed) in [
        (Method::DELETE, "/v1/runs", "POST"),
        (Method::PUT, "/v1/files/file_x", "GET,DELETE"),
        (Method::POST, "/healthz", "GET"),
        (Method::GET, "/v1/messages/msg-1/render", "POST"),
    ] {
        let response = server
            .request(ALICE, method.clone(), path)
            .send()
            .await
            .expect("send");
        let allow = response
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow"))
            .to_str()
            .expect("ASCII")
            .replace(' ', "");
        for expected in allowed.split(',') {
            assert!(allow.contains(expected), "{method} {path}: Allow {allow}");
        }
        let message = assert_error(response, 405, "method_not_allowed").await;
        assert!(message.contains("Allow"), "{message}");
    }
    // An unknown route keeps its JSON 404.
    let response = server.get(ALICE, "/v1/nothing").send().await.expect("send");
    assert_error(response, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_forms_are_client_errors_that_leave_nothing_behind() {
    raw::capture_log();
    let server = TestServer::new().await;
    let upload = |content_type: String, body: Vec<u8>| {
        let head = format!(
            "{}\r\nContent-Type: {content_type}\r\nContent-Length: {}",
            raw::head("POST", "/v1/files", TENANT_A_TOKEN, ALICE.user),
            body.len()
        );
        let base_url = server.base_url.clone();
        async move { raw::exchange(&base_url, &head, &body).await }
    };

    // A form cut off inside its file, after the file's bytes had started to be stored.
    let mut truncated = raw::form_start(&[("chat_id", "chat-1")], b"cut.csv");
    truncated.extend_from_slice(&vec![b'x'; 600 * 1024]);
    let response = upload(raw::form_type(), truncated).await;
    let message = response.assert_error(422, "invalid");
    assert!(message.starts_with("malformed form"), "{message}");
    // A form cut off inside a part's headers.
    let mut truncated = raw::form_start(&[], b"cut.csv");
    truncated.truncate(truncated.len() - 30);
    upload(raw::form_type(), truncated)
        .await
        .assert_error(422, "invalid");
    // Not a form at all, no boundary, an unknown content type.
    upload(raw::form_type(), b"hello, not a form".to_vec())
        .await
        .assert_error(422, "invalid");
    upload(
        "multipart/form-data".to_owned(),
        raw::form_start(&[], b"a.csv"),
    )
    .await
    .assert_error(422, "invalid");
    upload("text/csv".to_owned(), CSV.to_vec())
        .await
        .assert_error(422, "invalid");

    // None of them was taken for a server error, and none left bytes, staged or stored.
    assert!(
        !raw::captured_log().contains("internal error"),
        "{}",
        raw::captured_log()
    );
    let blobs = server.data_dir().join("blobs");
    assert!(
        raw::eventually(Duration::from_secs(5), || raw::files_below(&blobs)
            .is_empty())
        .await,
        "{:?}",
        raw::files_below(&blobs)
    );
    let files = server
        .state
        .supervisor
        .catalog()
        .files()
        .created_before("9999-12-31T23:59:59Z")
        .await
        .expect("catalog");
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_refused_before_it_is_sent() {
    let server = TestServer::new().await;
    // Only the head is sent: the answer must come without waiting for a body.
    for (path, content_type, length) in [
        ("/v1/files", raw::form_type(), 1u64 << 40),
        ("/v1/runs", "application/json".to_owned(), 3 << 20),
        (
            "/v1/messages/msg-1/render",
            "application/json".to_owned(),
            3 << 20,
        ),
    ] {
        let mut stream = raw::connect(&server.base_url).await;
        let head = format!(
            "{}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n",
            raw::head("POST", path, TENANT_A_TOKEN, ALICE.user)
        );
        stream
            .write_all(head.as_bytes())
            .await
            .expect("send the head");
        let response = raw::read_response(&mut stream, Duration::from_secs(5)).await;
        let message = response.assert_error(413, "too_large");
        assert!(message.contains(&length.to_string()), "{message}");
        assert_eq!(response.header("connection"), Some("close"), "{path}");
    }
    // Within the limit the same route answers as usual.
    let body = json!({ "text": "no links" }).to_string();
    let head = format!(
        "{}\r\nContent-Type: application/json\r\nContent-Length: {}",
        raw::head(
            "POST",
            "/v1/messages/msg-1/render",
            TENANT_A_TOKEN,
            ALICE.user
        ),
        body.len()
    );
    raw::exchange(&server.base_url, &head, body.as_bytes())
        .await
        .assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_abandoned_halfway_leaves_no_staging_file_or_blob() {
    let server = TestServer::new().await;
    let blobs = server.data_dir().join("blobs");
    let mut stream = raw::connect(&server.base_url).await;
    let mut start = raw::form_start(
        &[("chat_id", "chat-1"), ("message_id", "msg-1")],
        b"half.csv",
    );
    // The store makes its staging file as soon as the file begins.
    start.extend_from_slice(&vec![b'x'; 1 << 20]);
    let head = format!(
        "{}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        raw::head("POST", "/v1/files", TENANT_A_TOKEN, ALICE.user),
        raw::form_type(),
        start.len() + (10 << 20)
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    stream.write_all(&start).await.expect("send half the form");
    assert!(
        raw::eventually(Duration::from_secs(10), || !raw::files_below(&blobs)
            .is_empty())
        .await,
        "the upload never reached the store"
    );
    // The client goes away for good.
    drop(stream);
    assert!(
        raw::eventually(Duration::from_secs(10), || raw::files_below(&blobs)
            .is_empty())
        .await,
        "left behind: {:?}",
        raw::files_below(&blobs)
    );
    let files = server
        .state
        .supervisor
        .catalog()
        .files()
        .created_before("9999-12-31T23:59:59Z")
        .await
        .expect("catalog");
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_refusal_names_an_error_id_that_the_log_carries() {
    raw::capture_log();
    let server = TestServer::with_config(|config| {
        config.server.max_runs_in_flight = 1;
        config.server.max_queued_runs = 0;
    })
    .await;
    let long = {
        let body = json!({
            "chat_id": "chat-1",
            "message_id": "msg-long",
            "code": "import time; time.sleep(4)",
        });
        let request = server
            .request(ALICE, Method::POST, "/v1/runs")
            .json(&body)
            .send();
        tokio::spawn(request)
    };
    // The long run holds the only slot once it has bound its message (admission comes first).
    let catalog = server.state.supervisor.catalog();
    let mut bound = false;
    for _ in 0..200 {
        if catalog
            .messages()
            .get(&tenant_id("tenant-a"), &msg_id("msg-long"))
            .await
            .expect("catalog")
            .is_some()
        {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bound, "the long run never started");
    // Meanwhile a run is refused at once.
    let response = server
        .run(
            ALICE,
            &json!({ "chat_id": "chat-1", "message_id": "msg-refused", "code": "print(1)" }),
        )
        .await;
    let message = assert_error(response, 503, "busy").await;
    let error_id = message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|word| word.starts_with("err_"))
        .unwrap_or_else(|| panic!("no error id in {message:?}"));
    let log = raw::captured_log();
    let line = log
        .lines()
        .find(|line| line.contains(error_id))
        .unwrap_or_else(|| panic!("{error_id} is not in the log:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    let response = long.await.expect("the task").expect("the long run");
    let run = json_of(response, 200).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
}
