//! The HTTP API of `shared/API.md` end to end, as a chat backend sees it: a server in this
//! process on a free local port (built by `codebox::server::prepare`, served by
//! `codebox::api::serve`), the real Docker engine, a real SQLite file and the local blob
//! folder, and `reqwest` as the client. Nothing is mocked.
//!
//! This suite walks every route's happy path; `http_auth.rs` holds authorization, signed
//! links and message binding, `http_downloads.rs` ranges, hostile names and large files,
//! `http_runs.rs` streaming, backpressure, limits and shutdown (their shared helpers are in
//! `common/web.rs`).
//!
//! Every test starts its own `TestServer` on its own data folder, so tests run in parallel;
//! dropping the server removes the containers it created, also when a test panicked. No test
//! asserts how long anything took.

mod common;

use common::web::*;
use common::{ADMIN_TOKEN, ALICE, TestServer, assert_error, json_of};
use reqwest::{Method, header};
use serde_json::{Value, json};

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

    // Message msg-1 of chat-1, which still exists, attaches the file: deleting it needs the
    // user's confirmation, and the refusal names what would lose it. Nothing is deleted yet.
    let unconfirmed = server
        .request(ALICE, Method::DELETE, &path)
        .send()
        .await
        .expect("delete");
    let refusal = json_of(unconfirmed, 409).await;
    assert_eq!(
        refusal["error"]["code"], "confirmation_required",
        "{refusal:#}"
    );
    assert_eq!(refusal["error"]["chat_id"], "chat-1", "{refusal:#}");
    assert_eq!(
        refusal["error"]["message_ids"],
        json!(["msg-1"]),
        "{refusal:#}"
    );
    assert_eq!(refusal["error"]["file_id"], id.as_str(), "{refusal:#}");
    let still = server.get(ALICE, &path).send().await.expect("get");
    assert_eq!(still.status(), 200);
    let deleted = server
        .request(ALICE, Method::DELETE, &format!("{path}?confirm=true"))
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
        .request(ALICE, Method::DELETE, &format!("{path}?confirm=true"))
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
        .run_ok(ALICE, ("chat-1", "msg-1"), XLSX_FROM_CSV, &[csv_id])
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
            ("chat-1", "msg-2"),
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
            ("chat-1", "msg-1"),
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
            ("chat-1", "msg-1"),
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

    // Stored files per user of the admin's tenant: the upload and the run's output.
    let usage = json_of(
        admin(Method::GET, "/v1/admin/files")
            .send()
            .await
            .expect("files"),
        200,
    )
    .await;
    let users = usage["users"].as_array().expect("users");
    assert_eq!(users.len(), 1, "{usage:#}");
    assert_eq!(users[0]["tenant"], "tenant-a");
    assert_eq!(users[0]["user_id"], "alice");
    assert_eq!(users[0]["files"], 2, "{usage:#}");
    assert_eq!(usage["total_files"], 2);
    assert_eq!(usage["total_bytes"], users[0]["bytes"]);
    assert!(
        users[0]["bytes"].as_u64() > Some(CSV.len() as u64),
        "{usage:#}"
    );

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
        .run_ok(ALICE, ("chat-1", "msg-1"), "print('counted')", &[])
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
        ("/v1/admin/nodes", &["get"]),
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
