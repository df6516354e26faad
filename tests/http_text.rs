//! What a model reads, over HTTP on a server on port 0 and the real engine: the upload type
//! allowlist (a refused type leaves no row and no bytes), a file's bounded text view (text,
//! xlsx, PDF; other types and broken files 415), and a message's files as context.

mod common;

use common::web::{CSV, XLSX_FROM_CSV, files_below, text_of};
use common::{ALICE, BOB, TestServer, assert_error, json_of};
use reqwest::Method;
use serde_json::Value;

/// A one-page PDF that says `text` (ASCII, no parentheses), with a correct cross-reference
/// table.
fn minimal_pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 24 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (index, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", index + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

/// `GET /v1/files/{id}/text` (with `query`, which starts with `?` or is empty) as `ALICE`.
async fn text_view(server: &TestServer, file_id: &str, query: &str) -> reqwest::Response {
    server
        .get(ALICE, &format!("/v1/files/{file_id}/text{query}"))
        .send()
        .await
        .expect("send")
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_views_are_bounded_decoded_and_the_owners() {
    let server = TestServer::new().await;
    let csv = server.upload_ok(ALICE, "sales.csv", CSV, None).await;
    let csv_id = text_of(&csv["id"]);
    let view = json_of(text_view(&server, csv_id, "").await, 200).await;
    assert_eq!(
        view["text"],
        std::str::from_utf8(CSV).expect("UTF-8"),
        "{view}"
    );
    assert_eq!(view["truncated"], false);
    assert_eq!(view["encoding"], "utf-8");

    // Invalid bytes are replaced; a cut never splits a character or passes the bytes asked.
    let mixed = server
        .upload_ok(ALICE, "mixed.txt", b"a\xffb\xc3\xa9\xc3\xa9", None)
        .await;
    let mixed_id = text_of(&mixed["id"]);
    let whole = json_of(text_view(&server, mixed_id, "").await, 200).await;
    assert_eq!(whole["text"], "a\u{fffd}béé");
    for (max_bytes, text) in [
        (1, "a"),
        (4, "a\u{fffd}"),
        (6, "a\u{fffd}b"),
        (7, "a\u{fffd}bé"),
    ] {
        let view = json_of(
            text_view(&server, mixed_id, &format!("?max_bytes={max_bytes}")).await,
            200,
        )
        .await;
        assert_eq!(view["text"], text, "{max_bytes}");
        assert_eq!(view["truncated"], true, "{max_bytes}");
        assert!(text.len() <= max_bytes);
    }
    // A large file is read only as far as asked, and the default is 16 KiB.
    let big = server
        .upload_ok(ALICE, "big.log", &vec![b'x'; 300 * 1024], None)
        .await;
    let big_id = text_of(&big["id"]);
    let view = json_of(text_view(&server, big_id, "").await, 200).await;
    assert_eq!(text_of(&view["text"]).len(), 16 * 1024);
    assert_eq!(view["truncated"], true);
    let view = json_of(text_view(&server, big_id, "?max_bytes=262144").await, 200).await;
    assert_eq!(text_of(&view["text"]).len(), 262_144);

    for bad in ["0", "262145", "many", "-1"] {
        let response = text_view(&server, csv_id, &format!("?max_bytes={bad}")).await;
        assert_error(response, 422, "invalid").await;
    }

    // A PDF gives its text; one that cannot be parsed, and binaries, are 415.
    let pdf = server
        .upload_ok(
            ALICE,
            "paper.pdf",
            &minimal_pdf("Quarterly revenue grew"),
            None,
        )
        .await;
    let view = json_of(text_view(&server, text_of(&pdf["id"]), "").await, 200).await;
    assert!(
        text_of(&view["text"]).contains("Quarterly revenue grew"),
        "{view}"
    );
    let broken = server
        .upload_ok(ALICE, "broken.pdf", b"%PDF-1.4 not really", None)
        .await;
    let message = assert_error(
        text_view(&server, text_of(&broken["id"]), "").await,
        415,
        "unsupported",
    )
    .await;
    assert!(message.contains("not a PDF that can be read"), "{message}");
    let fake = server.upload_ok(ALICE, "fake.xlsx", CSV, None).await;
    let message = assert_error(
        text_view(&server, text_of(&fake["id"]), "").await,
        415,
        "unsupported",
    )
    .await;
    assert!(message.contains("not an xlsx workbook"), "{message}");
    let image = server
        .upload_ok(ALICE, "chart.png", b"\x89PNG\r\n", None)
        .await;
    let message = assert_error(
        text_view(&server, text_of(&image["id"]), "").await,
        415,
        "unsupported",
    )
    .await;
    assert!(message.contains("no text view"), "{message}");

    // Another user's file and a deleted one are not found.
    let response = server
        .get(BOB, &format!("/v1/files/{csv_id}/text"))
        .send()
        .await
        .expect("send");
    assert_error(response, 404, "not_found").await;
    let response = server
        .request(ALICE, Method::DELETE, &format!("/v1/files/{csv_id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 204);
    assert_error(text_view(&server, csv_id, "").await, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xlsx_sheets_read_as_csv_and_a_message_context_lists_its_files() {
    let server = TestServer::new().await;
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
    let xlsx = run["files"]
        .as_array()
        .and_then(|files| files.iter().find(|file| file["name"] == "report.xlsx"))
        .unwrap_or_else(|| panic!("no report.xlsx: {run:#}"));
    let view = json_of(text_view(&server, text_of(&xlsx["id"]), "").await, 200).await;
    assert_eq!(
        view["text"], "# sheet: Sheet\nregion,units\nnorth,3\nsouth,5\n",
        "{view}"
    );
    assert_eq!(view["truncated"], false);
    let cut = json_of(
        text_view(&server, text_of(&xlsx["id"]), "?max_bytes=20").await,
        200,
    )
    .await;
    assert_eq!(cut["text"], "# sheet: Sheet\nregio");
    assert_eq!(cut["truncated"], true);

    let context = json_of(
        server
            .get(ALICE, "/v1/messages/msg-1/context")
            .send()
            .await
            .expect("send"),
        200,
    )
    .await;
    let files = context["files"].as_array().expect("files");
    let by_name = |name: &str| -> &Value {
        files
            .iter()
            .find(|file| file["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {context:#}"))
    };
    let sales = by_name("sales.csv");
    assert_eq!(sales["path"], "/mnt/data/sales.csv");
    assert_eq!(sales["size"], CSV.len());
    assert_eq!(sales["preview"], "region,units\nnorth,3\nsouth,5\n");
    let report = by_name("report.xlsx");
    assert_eq!(report["path"], "/mnt/data/report.xlsx");
    assert_eq!(report["preview"], "region,units\nnorth,3\nsouth,5\n");
    let text = text_of(&context["text"]);
    let line = format!("/mnt/data/sales.csv (text/csv, {} B)", CSV.len());
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("/mnt/data/report.xlsx"), "{text}");
    assert!(text.contains("    north,3\n"), "{text}");

    // Another user's message, and one that does not exist, are not found.
    let response = server
        .get(BOB, "/v1/messages/msg-1/context")
        .send()
        .await
        .expect("send");
    assert_error(response, 404, "not_found").await;
    let response = server
        .get(ALICE, "/v1/messages/msg-none/context")
        .send()
        .await
        .expect("send");
    assert_error(response, 404, "not_found").await;
}
