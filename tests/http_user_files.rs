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
        .upload_ok(ALICE, "notes", b"hello", Some(("chat-1", "msg-1")))
        .await;
    assert_eq!(in_chat["format"], "");
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
