//! Tools for a model over HTTP: `GET /v1/tools` and `POST /v1/tools/{name}`, against the real
//! server and Docker engine; and the `tool_chat` example, run against a test server.

mod common;

use common::{ADMIN_TOKEN, ALICE, ALICE_OF_B, BOB, Caller, TestServer, assert_error, json_of};
use reqwest::Method;
use serde_json::{Value, json};

const CHAT: &str = "chat-tools";

/// `POST /v1/tools/{tool}` as `caller` with this body; the response whatever its status.
async fn call_raw(
    server: &TestServer,
    caller: Caller,
    tool: &str,
    body: &Value,
) -> reqwest::Response {
    server
        .request(caller, Method::POST, &format!("/v1/tools/{tool}"))
        .json(body)
        .send()
        .await
        .expect("call the tool")
}

/// Calls `tool` for message `message` of [`CHAT`] with these arguments; the 200 answer.
async fn call(
    server: &TestServer,
    caller: Caller,
    tool: &str,
    message: &str,
    arguments: Value,
) -> Value {
    let body = json!({"chat_id": CHAT, "message_id": message, "arguments": arguments});
    json_of(call_raw(server, caller, tool, &body).await, 200).await
}

fn content(answer: &Value) -> &str {
    answer["content"].as_str().expect("content is text")
}

#[tokio::test]
async fn the_definitions_list_five_tools_with_schemas() {
    let server = TestServer::new().await;
    let mut names = Vec::new();
    for token in [common::TENANT_A_TOKEN, ADMIN_TOKEN] {
        let response = server
            .client
            .get(server.url("/v1/tools"))
            .bearer_auth(token)
            .send()
            .await
            .expect("list the tools");
        let list = json_of(response, 200).await;
        let tools = list["tools"].as_array().expect("tools");
        names = tools
            .iter()
            .map(|tool| {
                tool["function"]["name"]
                    .as_str()
                    .expect("a name")
                    .to_owned()
            })
            .collect();
        for tool in tools {
            assert_eq!(tool["type"], "function", "{tool}");
            let function = &tool["function"];
            let description = function["description"].as_str().expect("a description");
            assert!(description.len() > 40, "{tool}");
            let parameters = &function["parameters"];
            assert_eq!(parameters["type"], "object", "{tool}");
            assert_eq!(parameters["additionalProperties"], false, "{tool}");
            let properties = parameters["properties"].as_object().expect("properties");
            for required in parameters["required"].as_array().expect("required") {
                let required = required.as_str().expect("a field name");
                assert!(properties.contains_key(required), "{required} in {tool}");
            }
            for (name, schema) in properties {
                let kind = schema["type"].as_str().unwrap_or_default();
                assert!(
                    ["string", "integer", "boolean"].contains(&kind),
                    "{name} of {tool}"
                );
                assert!(schema["description"].is_string(), "{name} of {tool}");
            }
        }
    }
    assert_eq!(
        names,
        [
            "run_code",
            "list_files",
            "read_file",
            "write_file",
            "delete_file"
        ]
    );
    let run_code = server
        .client
        .get(server.url("/v1/tools"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("list");
    let run_code = json_of(run_code, 200).await["tools"][0].clone();
    assert!(
        run_code["function"]["description"]
            .as_str()
            .is_some_and(|text| text.contains("/mnt/data")),
        "{run_code}"
    );
    let anonymous = server
        .client
        .get(server.url("/v1/tools"))
        .send()
        .await
        .expect("list");
    assert_error(anonymous, 401, "unauthorized").await;

    let document = json_of(
        server
            .client
            .get(server.url("/openapi.json"))
            .send()
            .await
            .expect("openapi"),
        200,
    )
    .await;
    assert!(document["paths"]["/v1/tools"]["get"].is_object());
    assert!(document["paths"]["/v1/tools/{name}"]["post"].is_object());
}

#[tokio::test]
async fn bad_calls_are_errors_and_bad_arguments_are_content() {
    let server = TestServer::new().await;
    // The backend's mistakes are errors.
    let unknown = call_raw(
        &server,
        ALICE,
        "rm_rf",
        &json!({"chat_id": CHAT, "message_id": "m1"}),
    )
    .await;
    let message = assert_error(unknown, 404, "not_found").await;
    assert!(
        message.contains("run_code") && message.contains("delete_file"),
        "{message}"
    );
    for body in [
        json!({"message_id": "m1", "arguments": {}}),
        json!({"chat_id": CHAT, "message_id": "bad id!", "arguments": {}}),
        json!({"chat_id": "", "message_id": "m1", "arguments": {}}),
        json!({"chat_id": CHAT, "message_id": "m1", "arguments": {}, "max_content_bytes": 10}),
        json!({"chat_id": CHAT, "message_id": "m1", "arguments": {}, "extra": 1}),
    ] {
        let response = call_raw(&server, ALICE, "list_files", &body).await;
        assert_error(response, 422, "invalid").await;
    }
    let anonymous = server
        .client
        .post(server.url("/v1/tools/list_files"))
        .json(&json!({"chat_id": CHAT, "message_id": "m1"}))
        .send()
        .await
        .expect("call");
    assert_error(anonymous, 401, "unauthorized").await;

    // The model's mistakes are content it can act on.
    let cases = [
        (json!("{\"code\": "), "not JSON"),
        (json!({}), "missing field `code`"),
        (json!({"code": 42}), "invalid type"),
        (
            json!({"code": "print(1)", "timeout_seconds": "ten"}),
            "invalid type",
        ),
        (
            json!({"code": "print(1)", "language": "r"}),
            "unknown field `language`",
        ),
        (json!([1, 2]), "not an object"),
    ];
    for (arguments, expected) in cases {
        let answer = call(&server, ALICE, "run_code", "m1", arguments.clone()).await;
        let text = content(&answer);
        assert!(text.contains(expected), "{arguments}: {text}");
        assert!(
            text.contains("\"code\": string (required)"),
            "{arguments}: {text}"
        );
        assert_eq!(answer["files"], json!([]), "{arguments}");
    }
    let answer = call(&server, ALICE, "read_file", "m1", json!({"name": "a.csv"})).await;
    assert!(
        content(&answer).contains("unknown field `name`"),
        "{answer}"
    );
    let answer = call(&server, ALICE, "read_file", "m1", json!({})).await;
    assert!(
        content(&answer).contains("missing field `path`"),
        "{answer}"
    );
    // Nothing ran: no interpreter was asked for any of it.
    let runs: i64 = server
        .state
        .supervisor
        .catalog()
        .runs()
        .count_of_message(&common::tenant_id("tenant-a"), &common::msg_id("m1"))
        .await
        .expect("count runs");
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn run_code_answers_output_and_files_within_the_limit() {
    let server = TestServer::new().await;
    let upload = server
        .upload_ok(
            ALICE,
            "sales.csv",
            b"region,units\nnorth,3\nsouth,5\n",
            Some((CHAT, "m1")),
        )
        .await;
    let code = r#"
import csv
from openpyxl import Workbook
rows = list(csv.DictReader(open("/mnt/data/sales.csv")))
total = sum(int(row["units"]) for row in rows)
book = Workbook()
book.active.append(["region", "units"])
for row in rows:
    book.active.append([row["region"], int(row["units"])])
book.save("/mnt/data/report.xlsx")
with open("/mnt/data/summary.csv", "w") as out:
    out.write(f"total\n{total}\n")
print("total units", total)
total
"#;
    let answer = call(&server, ALICE, "run_code", "m1", json!({"code": code})).await;
    let text = content(&answer);
    assert!(text.starts_with("status: succeeded"), "{text}");
    assert!(text.contains("total units 8"), "{text}");
    assert!(text.contains("result:\n8"), "{text}");
    assert!(text.contains("/mnt/data/report.xlsx"), "{text}");
    assert!(text.contains("/mnt/data/summary.csv"), "{text}");
    let files = answer["files"].as_array().expect("files");
    let mut names: Vec<&str> = files
        .iter()
        .filter_map(|file| file["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["report.xlsx", "summary.csv"], "{answer}");
    for file in files {
        assert_eq!(file["source"], "code_execution");
        let reference = file["ref"].as_str().expect("a ref");
        assert!(text.contains(reference), "{reference} in {text}");
    }

    // Arguments as a string, as OpenAI passes them; the interpreter remembers `total`.
    let answer = call(
        &server,
        ALICE,
        "run_code",
        "m1",
        json!("{\"code\": \"print('again', total * 2)\"}"),
    )
    .await;
    assert!(content(&answer).contains("again 16"), "{answer}");

    // An error is the error and a short traceback, not a failure of the call.
    let answer = call(
        &server,
        ALICE,
        "run_code",
        "m1",
        json!({"code": "def f():\n    return 1 / 0\nf()"}),
    )
    .await;
    let text = content(&answer);
    assert!(text.contains("error: ZeroDivisionError"), "{text}");
    assert!(text.contains("traceback"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");

    // 100 KB of output: the head and the tail, and never more than the limit.
    let loud = "print('BEGIN' + 'x' * 100000 + 'END')";
    let answer = call(&server, ALICE, "run_code", "m1", json!({"code": loud})).await;
    let text = content(&answer);
    assert!(text.len() <= 8 * 1024, "{}", text.len());
    assert!(text.contains("BEGIN") && text.contains("END"), "{text}");
    assert!(text.contains("bytes cut"), "{text}");
    for max in [300, 2000, 1 << 20] {
        let body = json!({"chat_id": CHAT, "message_id": "m1", "arguments": {"code": loud},
            "max_content_bytes": max});
        let answer = json_of(call_raw(&server, ALICE, "run_code", &body).await, 200).await;
        let limit = max.min(64 * 1024);
        assert!(
            content(&answer).len() <= limit,
            "{max}: {}",
            content(&answer).len()
        );
    }
    // A refused run is explained.
    let answer = call(
        &server,
        ALICE,
        "run_code",
        "m1",
        json!({"code": "1", "timeout_seconds": 100000}),
    )
    .await;
    assert!(content(&answer).contains("not run"), "{answer}");

    // Reading files: the upload by its name, the workbook by its path and its ref.
    let answer = call(
        &server,
        ALICE,
        "read_file",
        "m1",
        json!({"path": "sales.csv"}),
    )
    .await;
    assert!(content(&answer).contains("north,3"), "{answer}");
    assert_eq!(answer["files"][0]["id"], upload["id"]);
    let answer = call(
        &server,
        ALICE,
        "read_file",
        "m1",
        json!({"path": "sandbox:/mnt/data/report.xlsx"}),
    )
    .await;
    assert!(content(&answer).contains("south"), "{answer}");
    let summary = files
        .iter()
        .find(|file| file["name"] == "summary.csv")
        .expect("summary");
    let answer = call(
        &server,
        ALICE,
        "read_file",
        "m1",
        json!({"path": summary["ref"]}),
    )
    .await;
    assert!(content(&answer).contains("total\n8"), "{answer}");
    // An unknown path answers what there is.
    let answer = call(
        &server,
        ALICE,
        "read_file",
        "m1",
        json!({"path": "/mnt/data/nope.csv"}),
    )
    .await;
    let text = content(&answer);
    assert!(text.contains("no file"), "{text}");
    assert!(
        text.contains("/mnt/data/sales.csv") && text.contains("/mnt/data/report.xlsx"),
        "{text}"
    );
    let answer = call(
        &server,
        ALICE,
        "read_file",
        "m1",
        json!({"path": "/etc/passwd"}),
    )
    .await;
    assert!(content(&answer).contains("no file"), "{answer}");
    assert!(!content(&answer).contains("root:"), "{answer}");

    // Listing: the message's files; with `q`, only matching names.
    let answer = call(&server, ALICE, "list_files", "m1", json!({})).await;
    let text = content(&answer);
    for path in [
        "/mnt/data/sales.csv",
        "/mnt/data/report.xlsx",
        "/mnt/data/summary.csv",
    ] {
        assert!(text.contains(path), "{text}");
    }
    let answer = call(&server, ALICE, "list_files", "m1", json!({"q": "REPORT"})).await;
    assert_eq!(
        answer["files"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    // Another message of the chat sees them as the chat's files.
    let answer = call(&server, ALICE, "list_files", "m2", json!(null)).await;
    assert!(content(&answer).contains("other messages"), "{answer}");

    // A generated file is deleted without a question.
    let answer = call(
        &server,
        ALICE,
        "delete_file",
        "m1",
        json!({"path": "/mnt/data/summary.csv"}),
    )
    .await;
    assert!(content(&answer).starts_with("Deleted"), "{answer}");
    let gone = server
        .get(
            ALICE,
            &format!("/v1/files/{}", summary["id"].as_str().expect("id")),
        )
        .send()
        .await
        .expect("get");
    assert_error(gone, 404, "not_found").await;
}

#[tokio::test]
async fn write_file_is_an_upload_the_next_run_reads() {
    let server = TestServer::new().await;
    let answer = call(
        &server,
        ALICE,
        "write_file",
        "m1",
        json!({"path": "/mnt/data/notes.txt", "content": "hello from the model\n"}),
    )
    .await;
    let text = content(&answer);
    assert!(text.contains("/mnt/data/notes.txt"), "{text}");
    assert_eq!(answer["files"][0]["source"], "upload", "{answer}");
    assert_eq!(answer["files"][0]["message_id"], "m1", "{answer}");
    let answer = call(
        &server,
        ALICE,
        "run_code",
        "m1",
        json!({"code": "print(open('/mnt/data/notes.txt').read().upper())"}),
    )
    .await;
    assert!(
        content(&answer).contains("HELLO FROM THE MODEL"),
        "{answer}"
    );

    for (path, expected) in [
        ("/etc/cron.d/x.txt", "not under /mnt/data"),
        ("tool.exe", "Not written"),
    ] {
        let answer = call(
            &server,
            ALICE,
            "write_file",
            "m1",
            json!({"path": path, "content": "x"}),
        )
        .await;
        assert!(content(&answer).contains(expected), "{path}: {answer}");
        assert_eq!(answer["files"], json!([]));
    }

    // The user's attachment needs their consent: refused first, deleted with `confirm`.
    let answer = call(
        &server,
        ALICE,
        "delete_file",
        "m1",
        json!({"path": "notes.txt"}),
    )
    .await;
    let text = content(&answer);
    assert!(
        text.starts_with("Not deleted") && text.contains("\"confirm\": true"),
        "{text}"
    );
    let answer = call(
        &server,
        ALICE,
        "delete_file",
        "m1",
        json!({"path": "notes.txt", "confirm": true}),
    )
    .await;
    assert!(content(&answer).starts_with("Deleted"), "{answer}");
    let answer = call(
        &server,
        ALICE,
        "read_file",
        "m1",
        json!({"path": "notes.txt"}),
    )
    .await;
    assert!(content(&answer).contains("no file"), "{answer}");
}

#[tokio::test]
async fn tools_never_reach_another_users_files() {
    let server = TestServer::new().await;
    server
        .upload_ok(ALICE, "alice.csv", b"mine,only\n", Some((CHAT, "m1")))
        .await;
    // Another user's chat and message are not found, as on every route.
    let body = json!({"chat_id": CHAT, "message_id": "m1", "arguments": {"path": "alice.csv"}});
    let response = call_raw(&server, BOB, "read_file", &body).await;
    assert_error(response, 404, "not_found").await;
    // Another tenant's message of the same id is a message of its own, with none of the files.
    let answer = call(
        &server,
        ALICE_OF_B,
        "read_file",
        "m1",
        json!({"path": "alice.csv"}),
    )
    .await;
    assert!(content(&answer).contains("no file"), "{answer}");
    assert!(!content(&answer).contains("mine"), "{answer}");
    let body = json!({"chat_id": "other-chat", "message_id": "m1", "arguments": {}});
    assert_error(
        call_raw(&server, ALICE, "list_files", &body).await,
        404,
        "not_found",
    )
    .await;

    // Bob's own file, by its id or its name, is not there for Alice.
    let secret = server
        .upload_ok(BOB, "secret-plan.csv", b"launch,codes\n1,2\n", None)
        .await;
    let reference = secret["ref"].as_str().expect("a ref");
    for path in [reference, "secret-plan.csv", "/mnt/data/secret-plan.csv"] {
        for tool in ["read_file", "delete_file"] {
            let answer = call(&server, ALICE, tool, "m1", json!({"path": path})).await;
            let text = content(&answer);
            assert!(text.contains("no file"), "{tool} {path}: {text}");
            assert!(!text.contains("launch"), "{tool} {path}: {text}");
            assert_eq!(answer["files"], json!([]));
        }
    }
    let answer = call(&server, ALICE, "list_files", "m1", json!({})).await;
    assert!(!content(&answer).contains("secret"), "{answer}");
    // Bob still has it.
    let kept = server
        .get(
            BOB,
            &format!("/v1/files/{}", secret["id"].as_str().expect("id")),
        )
        .send()
        .await
        .expect("get");
    json_of(kept, 200).await;
}

#[tokio::test]
async fn a_run_refused_for_load_is_content_the_model_can_act_on() {
    let server = TestServer::with_config(|config| {
        config.server.max_runs_in_flight = 1;
        config.server.max_queued_runs = 0;
    })
    .await;
    // The test holds the only slot, so the tool's run is refused for load.
    let _slot = server.state.limiter.admit().await.expect("the only slot");
    let answer = call(
        &server,
        ALICE,
        "run_code",
        "m1",
        json!({"code": "print(1)"}),
    )
    .await;
    let text = content(&answer);
    assert!(
        text.contains("not run") && text.contains("call run_code again"),
        "{text}"
    );
    // Tools that run no code need no slot.
    let answer = call(&server, ALICE, "list_files", "m1", json!({})).await;
    assert!(content(&answer).contains("no files"), "{answer}");
}

#[tokio::test]
async fn the_tool_chat_example_runs_against_a_server() {
    let server = TestServer::new().await;
    // Test binaries live in <target>/debug/deps; cargo builds the examples beside them.
    let exe = std::env::current_exe().expect("the test binary");
    let debug = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target folder");
    let example = debug.join("examples").join("tool_chat");
    assert!(
        example.exists(),
        "{} is missing: build it with `cargo build --example tool_chat`",
        example.display()
    );
    let output = tokio::process::Command::new(&example)
        .env("CODEBOX_URL", &server.base_url)
        .env("CODEBOX_TOKEN", common::TENANT_A_TOKEN)
        .output()
        .await
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{stdout}");
    for step in [
        "list_files",
        "run_code",
        "report.xlsx",
        "/v1/files/",
        "downloaded",
    ] {
        assert!(stdout.contains(step), "{step} in:\n{stdout}");
    }
}
