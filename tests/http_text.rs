//! What a model may be handed, over HTTP on a server on port 0 and the real engine: the
//! upload type allowlist (a refused type leaves no row and no bytes).

mod common;

use common::web::{CSV, files_below};
use common::{ALICE, TestServer, assert_error, json_of};

/// Whether the catalog has any file row at all, live or deleted.
async fn any_file_row(server: &TestServer) -> bool {
    let files = server.state.supervisor.catalog().files();
    let live = files.created_before("9999").await.expect("catalog");
    let deleted = files.deleted_before("9999").await.expect("catalog");
    !live.is_empty() || !deleted.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_types_outside_the_allowlist_are_refused_and_leave_nothing() {
    let server = TestServer::with_config(|config| {
        config.uploads.allowed_extensions = vec!["csv".into(), "pdf".into()];
    })
    .await;
    for (name, chat_message) in [
        ("tool.exe", None),
        ("notes.txt", Some(("chat-1", "msg-1"))),
        ("no-extension", None),
        ("report.csv.sh", None),
    ] {
        let response = server.upload(ALICE, name, CSV, chat_message).await;
        let message = assert_error(response, 415, "unsupported").await;
        assert!(message.contains("csv, pdf"), "{name}: {message}");
    }
    assert!(!any_file_row(&server).await, "a refused upload left a row");
    let blobs = files_below(&server.data_dir().join("blobs"));
    assert!(blobs.is_empty(), "a refused upload left bytes: {blobs:?}");
    // Allowed types pass, whatever the case of their extension.
    server.upload_ok(ALICE, "SALES.CSV", CSV, None).await;
    assert!(any_file_row(&server).await);
    // The OpenAPI document names the refusal.
    let openapi = json_of(
        server
            .get(ALICE, "/openapi.json")
            .send()
            .await
            .expect("send"),
        200,
    )
    .await;
    assert!(
        openapi["paths"]["/v1/files"]["post"]["responses"]["415"].is_object(),
        "{:#}",
        openapi["paths"]["/v1/files"]["post"]["responses"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_allowlist_admits_what_an_interpreter_reads() {
    let server = TestServer::new().await;
    for name in [
        "sales.csv",
        "report.xlsx",
        "paper.pdf",
        "chart.png",
        "big.bin",
        "notes.md",
    ] {
        server.upload_ok(ALICE, name, CSV, None).await;
    }
    let response = server.upload(ALICE, "setup.exe", CSV, None).await;
    assert_error(response, 415, "unsupported").await;
}
