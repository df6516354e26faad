//! A chat as a whole over HTTP: what it holds (`GET /v1/chats/{id}`) and its deletion
//! (`DELETE /v1/chats/{id}`), which removes every sandbox and workspace of the chat at once,
//! deletes its generated files unless kept, and leaves its uploads to the user, unlinked,
//! unless they are listed to go.

mod common;

use common::web::*;
use common::{ALICE, BOB, TestServer, json_of};
use reqwest::Method;
use serde_json::{Value, json};

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[tokio::test]
async fn deleting_a_chat_ends_its_workspaces_and_keeps_its_uploads_unlinked() {
    let server = TestServer::new().await;
    let kept = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-d", "m-1")))
        .await;
    let dropped = server
        .upload_ok(ALICE, "scratch.csv", CSV, Some(("chat-d", "m-1")))
        .await;
    let run = server
        .run_ok(
            ALICE,
            ("chat-d", "m-1"),
            XLSX_FROM_CSV,
            &[text(&kept["id"])],
        )
        .await;
    let report = run["files"][0].clone();
    assert_eq!(report["name"], "report.xlsx", "{run:#}");
    server
        .run_ok(ALICE, ("chat-d", "m-2"), "print(2)", &[])
        .await;
    let other = server
        .upload_ok(ALICE, "other.csv", CSV, Some(("chat-other", "m-9")))
        .await;
    let workspace = server.workspace_id("tenant-a", "m-1").await;
    assert!(server.workspace_dir(&workspace).exists());

    // What a delete dialog offers: the messages and the linked uploads.
    let chat = json_of(
        server
            .get(ALICE, "/v1/chats/chat-d")
            .send()
            .await
            .expect("chat"),
        200,
    )
    .await;
    assert_eq!(chat["chat_id"], "chat-d");
    assert_eq!(chat["messages"], json!(["m-1", "m-2"]));
    let linked: Vec<&str> = chat["linked_files"]
        .as_array()
        .expect("linked files")
        .iter()
        .map(|file| text(&file["id"]))
        .collect();
    assert_eq!(linked, [text(&kept["id"]), text(&dropped["id"])]);
    // Another user has no such chat, and a bad id is refused.
    let theirs = server
        .get(BOB, "/v1/chats/chat-d")
        .send()
        .await
        .expect("chat");
    assert_eq!(theirs.status(), 404);

    // Only uploads linked to this chat may be listed: anything else changes nothing.
    let refused = server
        .request(ALICE, Method::DELETE, "/v1/chats/chat-d")
        .json(&json!({ "delete_file_ids": [text(&other["id"])] }))
        .send()
        .await
        .expect("delete");
    let refused = json_of(refused, 422).await;
    assert_eq!(refused["error"]["code"], "invalid", "{refused:#}");
    assert!(server.workspace_dir(&workspace).exists());

    let deleted = server
        .request(ALICE, Method::DELETE, "/v1/chats/chat-d")
        .json(&json!({ "delete_file_ids": [text(&dropped["id"])] }))
        .send()
        .await
        .expect("delete");
    let deleted = json_of(deleted, 200).await;
    assert_eq!(
        deleted,
        json!({ "workspaces_removed": 2, "files_deleted": 2, "files_kept": 1 })
    );
    assert!(
        !server.workspace_dir(&workspace).exists(),
        "the workspace is gone"
    );

    // The kept upload is the user's, unlinked; the generated file and the listed upload are
    // gone; the chat is gone; the other chat is untouched.
    let file = format!("/v1/files/{}", text(&kept["id"]));
    let kept_now = json_of(server.get(ALICE, &file).send().await.expect("file"), 200).await;
    assert_eq!(kept_now["link_state"], "unlinked", "{kept_now:#}");
    for gone in [&dropped, &report] {
        let path = format!("/v1/files/{}", text(&gone["id"]));
        let response = server.get(ALICE, &path).send().await.expect("file");
        assert_eq!(response.status(), 404, "{gone:#}");
    }
    let chat = server
        .get(ALICE, "/v1/chats/chat-d")
        .send()
        .await
        .expect("chat");
    assert_eq!(chat.status(), 404);
    let untouched = format!("/v1/files/{}", text(&other["id"]));
    let untouched = json_of(
        server.get(ALICE, &untouched).send().await.expect("file"),
        200,
    )
    .await;
    assert_eq!(untouched["link_state"], "linked");

    // The same message id again is a new message, with a new workspace and no attachments.
    let again = server
        .run_ok(
            ALICE,
            ("chat-d", "m-1"),
            "import os; print(sorted(os.listdir('/mnt/data')))",
            &[],
        )
        .await;
    assert_eq!(again["stdout"], "[]\n", "{again:#}");
}

#[tokio::test]
async fn a_chat_can_keep_its_generated_files_and_an_empty_body_is_all_defaults() {
    let server = TestServer::new().await;
    let run = server
        .run_ok(
            ALICE,
            ("chat-k", "m-1"),
            "open('/mnt/data/out.csv', 'w').write('a,b\\n')",
            &[],
        )
        .await;
    let out = run["files"][0].clone();
    let deleted = server
        .request(ALICE, Method::DELETE, "/v1/chats/chat-k")
        .json(&json!({ "keep_generated": true }))
        .send()
        .await
        .expect("delete");
    assert_eq!(
        json_of(deleted, 200).await,
        json!({ "workspaces_removed": 1, "files_deleted": 0, "files_kept": 1 })
    );
    let path = format!("/v1/files/{}", text(&out["id"]));
    assert_eq!(
        server
            .get(ALICE, &path)
            .send()
            .await
            .expect("file")
            .status(),
        200
    );

    server
        .run_ok(
            ALICE,
            ("chat-e", "m-1"),
            "open('/mnt/data/x.csv', 'w').write('1')",
            &[],
        )
        .await;
    let deleted = server
        .request(ALICE, Method::DELETE, "/v1/chats/chat-e")
        .send()
        .await
        .expect("delete");
    assert_eq!(
        json_of(deleted, 200).await,
        json!({ "workspaces_removed": 1, "files_deleted": 1, "files_kept": 0 })
    );
    let missing = server
        .request(ALICE, Method::DELETE, "/v1/chats/chat-e")
        .send()
        .await
        .expect("delete");
    assert_eq!(missing.status(), 404);
    let malformed = server
        .request(ALICE, Method::DELETE, "/v1/chats/chat-k")
        .body("{\"keep\": 1}")
        .send()
        .await
        .expect("delete");
    assert_eq!(malformed.status(), 422);
}
