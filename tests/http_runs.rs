//! The HTTP API end to end (server-sent events, backpressure, limits and malformed requests,
//! graceful shutdown), as a chat backend sees it: a server in this process on a free local
//! port, the real Docker engine, a real SQLite file and the local blob folder, `reqwest` as the
//! client. Nothing is mocked; no test asserts how long anything took. Shared helpers are in
//! `common/web.rs`.

mod common;

use std::collections::BTreeSet;

use codebox::catalog::Owner;
use codebox::ids::RunId;
use common::web::*;
use common::{ALICE, BOB, TestServer, assert_error, json_of, msg_id, tenant_id};
use reqwest::{Method, header};
use serde_json::{Value, json};

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
    // Each streamed link serves exactly the bytes the code wrote.
    for event in events.iter().filter(|event| event.name == "file") {
        let link = text_of(&event.data["download_url"]);
        let response = server.client.get(link).send().await.expect("get");
        let expected: &[u8] = match text_of(&event.data["name"]) {
            "a.csv" => b"x,y\n1,2\n",
            "b.csv" => b"x,y\n3,4\n",
            other => panic!("unexpected file {other}"),
        };
        assert_eq!(bytes_of(response, 200).await, expected);
        assert_eq!(event.data["sha256"], sha256_hex(expected));
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
                assert_eq!(retry_after, 2);
                let message = assert_error(response, 503, "busy").await;
                assert!(
                    message.contains("err_"),
                    "a 503 names its error id: {message}"
                );
                busy += 1;
            }
            _ => {
                let run = json_of(response, 200).await;
                assert_eq!(run["status"], "succeeded", "{run:#}");
                finished += 1;
            }
        }
    }
    // All six arrive within the first run's three seconds: one runs, one waits for its slot,
    // and the other four are refused at once.
    assert_eq!(
        (finished, busy),
        (2, 4),
        "six runs for one slot and one queue place"
    );

    // Once the slots are free again, runs are admitted.
    server
        .run_ok(ALICE, ("chat-1", "msg-after"), "print(1)", &[])
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

    // An upload over the limit is refused and leaves no bytes behind, staged or stored. The
    // server refuses on the announced length, before it reads the body, and closes the
    // connection: a client still writing the body may then see the connection go rather than
    // the 413 (tests/http_hostile.rs reads that 413 with a client that waits for it).
    let part = reqwest::multipart::Part::bytes(vec![b'x'; 2 << 20]).file_name("big.csv");
    let form = reqwest::multipart::Form::new()
        .part("file", part)
        .text("chat_id", "chat-1")
        .text("message_id", "msg-big");
    let sent = server
        .request(ALICE, Method::POST, "/v1/files")
        .multipart(form)
        .send()
        .await;
    match sent {
        Ok(response) => {
            assert_error(response, 413, "too_large").await;
        }
        Err(error) => assert!(error.is_request(), "{error}"),
    }
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
            .get(&tenant_id("tenant-a"), &msg_id("msg-1"))
            .await
            .expect("catalog");
        let started = message.is_some_and(|message| {
            state
                .supervisor
                .workspaces()
                .get(message.workspace_id.as_str())
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
        .get(
            &Owner::new("tenant-a", "alice"),
            &RunId::from_stored(text_of(&run["id"])),
        )
        .await
        .expect("catalog")
        .expect("the run is recorded");
    assert_eq!(record.status.to_string(), "succeeded", "{record:?}");
    assert_eq!(record.exit_code, Some(0));

    // The server no longer takes requests.
    assert!(
        client.get(&healthz).send().await.is_err(),
        "the stopped server still answers"
    );
}
