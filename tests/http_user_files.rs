//! A user's own files over HTTP, on servers on port 0 and the real engine: the File fields
//! that describe them (`format`, `modified_at`, `ref`, `link_state`), the listing of all of a
//! user's files, names unique in the user's own workspace, renaming, and `workspace://`
//! references rendered as download links.

mod common;

use common::web::*;
use common::{ALICE, BOB, TestServer, json_of};
use serde_json::Value;

/// Uploads `bytes` as `name` into the caller's own workspace (no chat) with these extra form
/// fields; the response whatever its status.
async fn upload_with(
    server: &TestServer,
    caller: common::Caller,
    (name, bytes): (&str, &[u8]),
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned());
    let mut form = reqwest::multipart::Form::new().part("file", part);
    for (field, value) in fields {
        form = form.text(field.to_string(), value.to_string());
    }
    server
        .request(caller, reqwest::Method::POST, "/v1/files")
        .multipart(form)
        .send()
        .await
        .expect("send the upload")
}

#[tokio::test]
async fn files_carry_their_format_ref_link_state_and_modification_time() {
    let server = TestServer::new().await;
    let own = server.upload_ok(ALICE, "Report.CSV", CSV, None).await;
    assert_eq!(own["format"], "csv");
    assert_eq!(own["ref"], format!("workspace://{}", text_of(&own["id"])));
    assert_eq!(own["link_state"], Value::Null);
    assert_utc_time(&own["modified_at"]);
    assert_eq!(own["modified_at"], own["created_at"]);

    let in_chat = server
        .upload_ok(ALICE, "Notes.TXT", b"hello", Some(("chat-1", "msg-1")))
        .await;
    assert_eq!(in_chat["format"], "txt", "the extension, in lower case");
    assert_eq!(in_chat["link_state"], "linked");

    let run = server
        .run_ok(
            ALICE,
            ("chat-1", "msg-1"),
            "open('/mnt/data/out.Csv', 'w').write('x')",
            &[],
        )
        .await;
    let generated = &run["files"][0];
    assert_eq!(generated["format"], "csv");
    assert_eq!(generated["link_state"], Value::Null);
    assert_eq!(generated["modified_at"], generated["created_at"]);

    // The same fields on a lookup, and in the OpenAPI document schemathesis checks against.
    let looked_up = json_of(
        server
            .get(ALICE, &format!("/v1/files/{}", text_of(&in_chat["id"])))
            .send()
            .await
            .expect("get"),
        200,
    )
    .await;
    assert_eq!(without_links(&looked_up), without_links(&in_chat));
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
    let properties = &document["components"]["schemas"]["File"]["properties"];
    for field in ["format", "modified_at", "ref", "link_state"] {
        assert!(properties.get(field).is_some(), "{field}: {properties:#}");
    }
}

/// `GET /v1/files` with this query as `caller`; the answer, which must be a 200.
async fn list(server: &TestServer, caller: common::Caller, query: &str) -> Value {
    let response = server
        .get(caller, &format!("/v1/files?{query}"))
        .send()
        .await
        .expect("list");
    json_of(response, 200).await
}

#[tokio::test]
async fn a_user_lists_their_files_newest_first_filtered_and_page_by_page() {
    let server = TestServer::new().await;
    let mut uploaded = Vec::new();
    for name in [
        "a.csv",
        "50%_off.csv",
        "500 off.csv",
        "Quarterly REPORT.xlsx",
    ] {
        let file = server.upload_ok(ALICE, name, CSV, None).await;
        uploaded.push(text_of(&file["id"]).to_owned());
    }
    let in_chat = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let run = server
        .run_ok(
            ALICE,
            ("chat-1", "msg-1"),
            "open('/mnt/data/out.csv', 'w').write('x')",
            &[],
        )
        .await;
    let generated = text_of(&run["files"][0]["id"]).to_owned();
    let deleted = server.upload_ok(ALICE, "gone.csv", CSV, None).await;
    let response = server
        .request(
            ALICE,
            reqwest::Method::DELETE,
            &format!("/v1/files/{}", text_of(&deleted["id"])),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    server.upload_ok(BOB, "bob.csv", CSV, None).await;

    // Everything live of Alice's, newest first; nobody else's, nothing deleted.
    let all = list(&server, ALICE, "").await;
    let mut newest_first = vec![generated.as_str(), text_of(&in_chat["id"])];
    newest_first.extend(uploaded.iter().rev().map(String::as_str));
    assert_eq!(ids_of(&all["files"]), newest_first, "{all:#}");
    assert_eq!(all["next_cursor"], Value::Null);

    let chat = list(&server, ALICE, "chat_id=chat-1").await;
    assert_eq!(ids_of(&chat["files"]), &newest_first[..2]);
    let message = list(&server, ALICE, "message_id=msg-1&source=upload").await;
    assert_eq!(ids_of(&message["files"]), [text_of(&in_chat["id"])]);
    let outputs = list(&server, ALICE, "source=code_execution").await;
    assert_eq!(ids_of(&outputs["files"]), [generated.as_str()]);
    // `q` matches part of the name whatever its case, and its `%` and `_` are plain text.
    let report = list(&server, ALICE, "q=report").await;
    assert_eq!(ids_of(&report["files"]), [uploaded[3].as_str()]);
    let percent = list(&server, ALICE, "q=0%25_").await;
    assert_eq!(ids_of(&percent["files"]), [uploaded[1].as_str()]);
    let underscore = list(&server, ALICE, "q=_").await;
    assert_eq!(ids_of(&underscore["files"]), [uploaded[1].as_str()]);

    // Page by page, with a file stored between two pages: nothing repeats, nothing older is
    // skipped, and the new file is on no page (it is newer than the first).
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("limit=2&cursor={cursor}"),
            None => "limit=2".to_owned(),
        };
        let page = list(&server, ALICE, &query).await;
        assert!(page["files"].as_array().expect("files").len() <= 2);
        paged.extend(ids_of(&page["files"]).into_iter().map(str::to_owned));
        if paged.len() == 2 {
            server.upload_ok(ALICE, "later.csv", CSV, None).await;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, newest_first);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=nonsense",
        "source=uploads",
        "chat_id=..",
    ] {
        let response = server
            .get(ALICE, &format!("/v1/files?{bad}"))
            .send()
            .await
            .expect("list");
        common::assert_error(response, 422, "invalid").await;
    }
    let full = list(&server, ALICE, "limit=1000").await;
    assert_eq!(full["files"].as_array().expect("files").len(), 7);
}

/// How many stored blobs the server holds.
fn blob_count(server: &TestServer) -> usize {
    files_below(&server.data_dir().join("blobs")).len()
}

#[tokio::test]
async fn a_name_is_unique_in_a_users_own_workspace() {
    let server = TestServer::new().await;
    let first = server.upload_ok(ALICE, "report.csv", CSV, None).await;
    let blobs = blob_count(&server);

    // A second `report.csv` is refused, and leaves neither a row nor bytes behind.
    let again = upload_with(&server, ALICE, ("report.csv", b"other"), &[]).await;
    common::assert_error(again, 409, "name_taken").await;
    let bogus = upload_with(
        &server,
        ALICE,
        ("report.csv", b"x"),
        &[("on_conflict", "skip")],
    )
    .await;
    common::assert_error(bogus, 422, "invalid").await;
    assert_eq!(blob_count(&server), blobs);
    assert_eq!(
        ids_of(&list(&server, ALICE, "").await["files"]),
        [text_of(&first["id"])]
    );

    // `rename` numbers the name; the code would see it under the numbered name too.
    for number in 1..=2 {
        let response = upload_with(
            &server,
            ALICE,
            ("report.csv", b"x"),
            &[("on_conflict", "rename")],
        )
        .await;
        let renamed = json_of(response, 201).await;
        assert_eq!(renamed["name"], format!("report ({number}).csv"));
        assert_eq!(renamed["path"], format!("/mnt/data/report ({number}).csv"));
    }

    // `replace` deletes the old file as DELETE does; the new one takes the name.
    let response = upload_with(
        &server,
        ALICE,
        ("C:\\Users\\a\\report.csv", b"new"),
        &[("on_conflict", "replace")],
    )
    .await;
    let replacement = json_of(response, 201).await;
    assert_eq!(replacement["name"], "report.csv");
    let old = server
        .get(ALICE, &format!("/v1/files/{}", text_of(&first["id"])))
        .send()
        .await
        .expect("get");
    common::assert_error(old, 404, "not_found").await;
    let named = list(&server, ALICE, "q=report.csv").await;
    assert_eq!(ids_of(&named["files"]), [text_of(&replacement["id"])]);

    // Other users, and uploads into a chat, are not concerned.
    server.upload_ok(BOB, "report.csv", CSV, None).await;
    for _ in 0..2 {
        let file = server
            .upload_ok(ALICE, "report.csv", CSV, Some(("chat-1", "msg-1")))
            .await;
        assert_eq!(file["name"], "report.csv");
    }

    // Concurrent uploads of one new name: exactly one wins, however they interleave.
    let blobs = blob_count(&server);
    let attempts = (0..8).map(|_| upload_with(&server, ALICE, ("race.csv", CSV), &[]));
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|status| **status == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|status| matches!(status, 201 | 409)),
        "{statuses:?}"
    );
    assert_eq!(blob_count(&server), blobs + 1);
}

/// `PATCH /v1/files/{file_id}` with this JSON body as `caller`; the response.
async fn rename(
    server: &TestServer,
    caller: common::Caller,
    file: &Value,
    body: Value,
) -> reqwest::Response {
    server
        .request(
            caller,
            reqwest::Method::PATCH,
            &format!("/v1/files/{}", text_of(&file["id"])),
        )
        .json(&body)
        .send()
        .await
        .expect("patch")
}

#[tokio::test]
async fn a_user_renames_their_files() {
    let server = TestServer::new().await;
    let file = server.upload_ok(ALICE, "a.csv", CSV, None).await;
    let taken = server.upload_ok(ALICE, "taken.csv", CSV, None).await;

    let renamed = json_of(
        rename(
            &server,
            ALICE,
            &file,
            serde_json::json!({"name": "x/y\\B.CSV"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(renamed["id"], file["id"]);
    assert_eq!(renamed["name"], "B.CSV");
    assert_eq!(renamed["path"], "/mnt/data/B.CSV");
    assert_eq!(renamed["format"], "csv");
    assert_eq!(renamed["created_at"], file["created_at"]);
    assert_utc_time(&renamed["modified_at"]);
    assert!(text_of(&renamed["modified_at"]) > text_of(&file["modified_at"]));
    let looked_up = json_of(
        server
            .get(ALICE, &format!("/v1/files/{}", text_of(&file["id"])))
            .send()
            .await
            .expect("get"),
        200,
    )
    .await;
    assert_eq!(without_links(&looked_up), without_links(&renamed));
    // The old name is free again; the new one is taken; a file may keep its own name.
    server.upload_ok(ALICE, "a.csv", CSV, None).await;
    let clash = rename(
        &server,
        ALICE,
        &file,
        serde_json::json!({"name": "taken.csv"}),
    )
    .await;
    common::assert_error(clash, 409, "name_taken").await;
    let same = rename(
        &server,
        ALICE,
        &taken,
        serde_json::json!({"name": "taken.csv"}),
    )
    .await;
    json_of(same, 200).await;

    // Uploads into a chat are not held to unique names.
    let in_chat = server
        .upload_ok(ALICE, "notes.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let response = rename(
        &server,
        ALICE,
        &in_chat,
        serde_json::json!({"name": "taken.csv"}),
    )
    .await;
    assert_eq!(json_of(response, 200).await["name"], "taken.csv");

    let foreign = rename(&server, BOB, &file, serde_json::json!({"name": "mine.csv"})).await;
    common::assert_error(foreign, 404, "not_found").await;
    for body in [
        serde_json::json!({}),
        serde_json::json!({"name": 5}),
        serde_json::json!({"name": "ok.csv", "extra": 1}),
        serde_json::json!({"name": ".."}),
        serde_json::json!({"name": "   "}),
        // No file system names a file so, and PostgreSQL cannot keep it in text.
        serde_json::json!({"name": "a\u{0}b.csv"}),
    ] {
        let response = rename(&server, ALICE, &file, body.clone()).await;
        common::assert_error(response, 422, "invalid").await;
    }
    let not_json = server
        .request(
            ALICE,
            reqwest::Method::PATCH,
            &format!("/v1/files/{}", text_of(&file["id"])),
        )
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("patch");
    common::assert_error(not_json, 422, "invalid").await;
}

#[tokio::test]
async fn workspace_refs_render_as_links_to_the_callers_live_files() {
    let server = TestServer::new().await;
    let own = server.upload_ok(ALICE, "own.csv", CSV, None).await;
    let elsewhere = server
        .upload_ok(ALICE, "other.csv", CSV, Some(("chat-2", "msg-2")))
        .await;
    let in_message = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let deleted = server.upload_ok(ALICE, "gone.csv", CSV, None).await;
    let response = server
        .request(
            ALICE,
            reqwest::Method::DELETE,
            &format!("/v1/files/{}", text_of(&deleted["id"])),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let bobs = server.upload_ok(BOB, "bob.csv", CSV, None).await;

    let text = format!(
        "[own]({}) and {}, see sandbox:/mnt/data/sales.csv; not {} nor {} nor \
         workspace://file_unknown.",
        text_of(&own["ref"]),
        text_of(&elsewhere["ref"]),
        text_of(&deleted["ref"]),
        text_of(&bobs["ref"]),
    );
    let response = server
        .request(ALICE, reqwest::Method::POST, "/v1/messages/msg-1/render")
        .json(&serde_json::json!({ "text": text }))
        .send()
        .await
        .expect("render");
    let rendered = json_of(response, 200).await;
    let (masked, links) = mask_links(text_of(&rendered["text"]), &server.base_url);
    assert_eq!(
        masked,
        format!(
            "[own](<link:{}>) and <link:{}>, see <link:{}>; not {} nor {} nor \
             workspace://file_unknown.",
            text_of(&own["id"]),
            text_of(&elsewhere["id"]),
            text_of(&in_message["id"]),
            text_of(&deleted["ref"]),
            text_of(&bobs["ref"]),
        )
    );
    // Each link downloads its file.
    for link in links {
        let bytes = bytes_of(
            server.client.get(&link).send().await.expect("download"),
            200,
        )
        .await;
        assert_eq!(bytes, CSV);
    }
}
