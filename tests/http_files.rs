//! The lifecycle of files over HTTP, on servers on port 0 and the real engine: a deleted
//! attachment is gone from every workspace and its purge counts what it frees; admin tokens act
//! within their tenant; an attachment renamed on a collision is shown, listed and rendered
//! under the name the code sees; and uploads tied to a message are attached to its runs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use codebox::config::Role;
use common::{
    ADMIN_A_TOKEN, ADMIN_B_TOKEN, ADMIN_TOKEN, ALICE, ALICE_OF_B, BOB, TestServer, json_of, token,
};
use reqwest::Method;
use serde_json::{Value, json};

const CSV: &[u8] = b"region,units\nnorth,3\nsouth,5\n";

/// Code that tries both paths of `report.csv` and lists both folders.
const PROBE_REPORT: &str = r#"
import os
for path in ['/mnt/data/report.csv', '/mnt/inputs/report.csv']:
    try:
        print(path, 'read', len(open(path).read()))
    except OSError as error:
        print(path, type(error).__name__)
print(sorted(os.listdir('/mnt/data')), sorted(os.listdir('/mnt/inputs')))
"#;

fn text_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

fn blob_of(server: &TestServer, file_id: &str) -> PathBuf {
    server.data_dir().join("blobs/files").join(file_id)
}

/// Bytes a file takes on disk.
fn allocated(path: &std::path::Path) -> u64 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .blocks()
        * 512
}

fn container_exists(workspace_id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["container", "inspect", &format!("codebox-{workspace_id}")])
        .output()
        .expect("run docker")
        .status
        .success()
}

/// A run as `caller` whatever its status, which must be a 200 Run.
async fn run_any(
    server: &TestServer,
    caller: common::Caller,
    message_id: &str,
    code: &str,
    file_ids: &[&str],
) -> Value {
    let body = json!({
        "chat_id": "chat-1", "message_id": message_id, "code": code,
        "language": "python", "file_ids": file_ids,
    });
    json_of(server.run(caller, &body).await, 200).await
}

/// `GET path` with an admin token; the JSON answer, which must be a 200.
async fn admin_get(server: &TestServer, bearer: &str, path: &str) -> Value {
    let response = server
        .client
        .get(server.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("admin call");
    json_of(response, 200).await
}

async fn gc(server: &TestServer, bearer: &str, dry_run: bool) -> Value {
    let response = server
        .client
        .post(server.url("/v1/admin/gc"))
        .bearer_auth(bearer)
        .json(&json!({ "dry_run": dry_run }))
        .send()
        .await
        .expect("gc");
    json_of(response, 200).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_attachment_is_gone_from_every_workspace_and_its_purge_counts_what_it_frees() {
    let server = TestServer::with_config(|config| {
        config.retention.deleted_file_grace = Duration::ZERO;
    })
    .await;
    let file = server
        .upload_ok(ALICE, "report.csv", CSV, Some(("chat-1", "m-1")))
        .await;
    let id = text_of(&file["id"]).to_owned();
    let readable = format!(
        "/mnt/data/report.csv read {len}\n/mnt/inputs/report.csv read {len}\n\
         ['report.csv'] ['report.csv']\n",
        len = CSV.len()
    );
    for message in ["m-1", "m-2"] {
        let run = server
            .run_ok(ALICE, ("chat-1", message), PROBE_REPORT, &[&id])
            .await;
        assert_eq!(run["stdout"], readable.as_str(), "{run:#}");
    }
    let blob = blob_of(&server, &id);
    let blob_bytes = allocated(&blob);
    assert_eq!(
        std::fs::metadata(&blob).expect("blob").nlink(),
        3,
        "the blob is hard-linked into both workspaces"
    );

    // Two messages of a live chat attach it: the user confirms.
    let response = server
        .request(
            ALICE,
            Method::DELETE,
            &format!("/v1/files/{id}?confirm=true"),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status().as_u16(), 204);
    // At once, before any run: no workspace holds a link to the bytes any more.
    assert_eq!(std::fs::metadata(&blob).expect("blob").nlink(), 1);
    for message in ["m-1", "m-2"] {
        let workspace = server.workspace_dir(&server.workspace_id("tenant-a", message).await);
        for entry in ["data/report.csv", "inputs/report.csv"] {
            assert!(
                std::fs::symlink_metadata(workspace.join(entry)).is_err(),
                "{message}: {entry} is still there"
            );
        }
    }

    // A later run of either message cannot read it, by either path; even when it names the
    // file again.
    let gone = "/mnt/data/report.csv FileNotFoundError\n\
                /mnt/inputs/report.csv FileNotFoundError\n[] []\n";
    for message in ["m-1", "m-2"] {
        let run = run_any(&server, ALICE, message, PROBE_REPORT, &[]).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(run["stdout"], gone, "{run:#}");
    }
    let body = json!({
        "chat_id": "chat-1", "message_id": "m-1", "code": PROBE_REPORT,
        "language": "python", "file_ids": [id],
    });
    common::assert_error(server.run(ALICE, &body).await, 404, "not_found").await;

    // The messages show the attachment as deleted.
    for message in ["m-1", "m-2"] {
        let listing = json_of(
            server
                .get(ALICE, &format!("/v1/messages/{message}/attachments"))
                .send()
                .await
                .expect("attachments"),
            200,
        )
        .await;
        assert_eq!(
            listing,
            json!({ "attachments": [{
                "file_id": id, "name": "report.csv", "path": "/mnt/data/report.csv",
                "state": "file_deleted", "file": null,
            }] }),
            "{message}"
        );
    }

    // The purge frees exactly the blob's bytes, now that nothing else links them.
    let dry = gc(&server, ADMIN_TOKEN, true).await;
    let done = gc(&server, ADMIN_TOKEN, false).await;
    for report in [&dry, &done] {
        assert_eq!(report["files_purged"], json!([id]), "{report:#}");
        assert_eq!(report["workspaces"], json!([]), "{report:#}");
        assert_eq!(report["bytes_freed"], blob_bytes, "{report:#}");
    }
    assert!(!blob.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_act_within_their_tenant() {
    let server = TestServer::with_config(|config| {
        // A plain data/ folder, so that the bytes freed are the files' own blocks; a
        // loop-mounted one is counted by its image file (see `containment.rs`).
        config.sandbox.disk_limit = codebox::config::DiskLimit::Watchdog;
        config.retention.container_idle = Duration::ZERO;
        config.retention.workspace_idle = Duration::ZERO;
        config.retention.deleted_file_grace = Duration::ZERO;
    })
    .await;
    let mut deleted = Vec::new();
    for caller in [ALICE, ALICE_OF_B] {
        server
            .run_ok(caller, ("chat-1", "m-1"), "print(1)", &[])
            .await;
        let file = server.upload_ok(caller, "old.csv", CSV, None).await;
        let id = text_of(&file["id"]).to_owned();
        let response = server
            .request(caller, Method::DELETE, &format!("/v1/files/{id}"))
            .send()
            .await
            .expect("delete");
        assert_eq!(response.status().as_u16(), 204);
        deleted.push(id);
    }
    let (file_a, file_b) = (deleted[0].clone(), deleted[1].clone());
    let ws_a = server.workspace_id("tenant-a", "m-1").await;
    let ws_b = server.workspace_id("tenant-b", "m-1").await;
    let blob_bytes = allocated(&blob_of(&server, &file_a));

    let tenants_of = |list: &Value| -> Vec<(String, String)> {
        list["workspaces"]
            .as_array()
            .expect("workspaces")
            .iter()
            .map(|w| {
                (
                    text_of(&w["tenant"]).into(),
                    text_of(&w["workspace_id"]).into(),
                )
            })
            .collect()
    };
    let seen_a = admin_get(&server, ADMIN_A_TOKEN, "/v1/admin/workspaces").await;
    assert_eq!(tenants_of(&seen_a), vec![("tenant-a".into(), ws_a.clone())]);
    let seen_b = admin_get(&server, ADMIN_B_TOKEN, "/v1/admin/workspaces").await;
    assert_eq!(tenants_of(&seen_b), vec![("tenant-b".into(), ws_b.clone())]);
    let mut seen_all = tenants_of(&admin_get(&server, ADMIN_TOKEN, "/v1/admin/workspaces").await);
    seen_all.sort();
    assert_eq!(
        seen_all,
        vec![
            ("tenant-a".into(), ws_a.clone()),
            ("tenant-b".into(), ws_b.clone())
        ]
    );
    for bearer in [ADMIN_A_TOKEN, ADMIN_B_TOKEN] {
        let policy = admin_get(&server, bearer, "/v1/admin/retention").await;
        assert_eq!(policy["workspace_idle_secs"], 0);
    }

    // Tenant A's operator reaps tenant A alone, dry or not.
    let expected_a = json!({
        "dry_run": true, "containers": [ws_a], "workspaces": [ws_a],
        "files_expired": [], "files_purged": [file_a], "blobs_swept": [],
        "bytes_freed": blob_bytes,
    });
    assert_eq!(gc(&server, ADMIN_A_TOKEN, true).await, expected_a);
    let mut expected = expected_a.clone();
    expected["dry_run"] = json!(false);
    assert_eq!(gc(&server, ADMIN_A_TOKEN, false).await, expected);
    assert!(!container_exists(&ws_a));
    assert!(!server.workspace_dir(&ws_a).exists());
    assert!(container_exists(&ws_b), "tenant B's container stays");
    assert!(
        server.workspace_dir(&ws_b).exists(),
        "tenant B's folder stays"
    );
    assert!(blob_of(&server, &file_b).exists(), "tenant B's bytes stay");

    // Then tenant B's, and the global operator finds nothing left.
    let expected_b = json!({
        "dry_run": false, "containers": [ws_b], "workspaces": [ws_b],
        "files_expired": [], "files_purged": [file_b], "blobs_swept": [],
        "bytes_freed": blob_bytes,
    });
    assert_eq!(gc(&server, ADMIN_B_TOKEN, false).await, expected_b);
    let rest = gc(&server, ADMIN_TOKEN, false).await;
    assert_eq!(
        rest,
        json!({
            "dry_run": false, "containers": [], "workspaces": [],
            "files_expired": [], "files_purged": [], "blobs_swept": [],
            "bytes_freed": 0,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_token_for_every_tenant_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = codebox::Config {
        data_dir: dir.path().join("data"),
        ..codebox::Config::default()
    };
    config.sandbox.image = common::test_image();
    config.server.tokens = vec![token("svc-every-tenant-0123456789", "*", Role::Service)];
    let error = codebox::server::prepare(config.clone())
        .await
        .err()
        .expect("a service token of tenant * is refused");
    assert!(error.to_string().contains('*'), "{error:#}");
    // The same rule holds for a configuration checked on its own.
    assert!(config.validate().is_err());
    config.server.tokens = vec![token("admin-every-tenant-0123456789", "*", Role::Admin)];
    assert!(config.validate().is_ok());
}

/// The (id, path) pairs of a listing of Files, sorted.
fn paths_of(files: &Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = files
        .as_array()
        .expect("files")
        .iter()
        .map(|f| (text_of(&f["id"]).into(), text_of(&f["path"]).into()))
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_attachment_is_shown_listed_and_rendered_under_the_name_the_code_sees() {
    let server = TestServer::new().await;
    let first = server
        .upload_ok(ALICE, "report.csv", b"first\n", Some(("chat-1", "m-r")))
        .await;
    let second = server
        .upload_ok(ALICE, "report.csv", b"second\n", None)
        .await;
    let (first_id, second_id) = (text_of(&first["id"]), text_of(&second["id"]));
    let code = r#"
import os
for name in sorted(os.listdir('/mnt/data')):
    print(name, open('/mnt/data/' + name).read(), end='')
"#;
    let run = server
        .run_ok(ALICE, ("chat-1", "m-r"), code, &[first_id, second_id])
        .await;
    assert_eq!(run["stdout"], "report (1).csv second\nreport.csv first\n");
    // The second file is attached to another message first there, under its own name.
    let other = server
        .run_ok(ALICE, ("chat-1", "m-other"), code, &[second_id])
        .await;
    assert_eq!(other["stdout"], "report.csv second\n");

    // Listed with every attachment, however it was attached, at the path the code sees.
    let listing = json_of(
        server
            .get(ALICE, "/v1/messages/m-r/files?source=all")
            .send()
            .await
            .expect("list"),
        200,
    )
    .await;
    assert_eq!(
        paths_of(&listing["files"]),
        {
            let mut expected = vec![
                (first_id.to_owned(), "/mnt/data/report.csv".to_owned()),
                (second_id.to_owned(), "/mnt/data/report (1).csv".to_owned()),
            ];
            expected.sort();
            expected
        },
        "{listing:#}"
    );
    let other_listing = json_of(
        server
            .get(ALICE, "/v1/messages/m-other/files?source=all")
            .send()
            .await
            .expect("list"),
        200,
    )
    .await;
    assert_eq!(
        paths_of(&other_listing["files"]),
        vec![(second_id.to_owned(), "/mnt/data/report.csv".to_owned())]
    );
    let attachments = json_of(
        server
            .get(ALICE, "/v1/messages/m-r/attachments")
            .send()
            .await
            .expect("attachments"),
        200,
    )
    .await;
    // Another user or tenant cannot see a message's attachments.
    for stranger in [BOB, ALICE_OF_B] {
        let response = server
            .get(stranger, "/v1/messages/m-r/attachments")
            .send()
            .await
            .expect("attachments");
        common::assert_error(response, 404, "not_found").await;
    }
    let shown: Vec<(&str, &str, &str, &str)> = attachments["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| {
            (
                text_of(&a["file_id"]),
                text_of(&a["path"]),
                text_of(&a["state"]),
                text_of(&a["file"]["path"]),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (
                first_id,
                "/mnt/data/report.csv",
                "attached",
                "/mnt/data/report.csv"
            ),
            (
                second_id,
                "/mnt/data/report (1).csv",
                "attached",
                "/mnt/data/report (1).csv"
            ),
        ]
    );
    // A file's own view gives the path in the message it was uploaded with; one uploaded
    // with no message, the path its name gives.
    let shown_first = json_of(
        server
            .get(ALICE, &format!("/v1/files/{first_id}"))
            .send()
            .await
            .expect("get"),
        200,
    )
    .await;
    assert_eq!(shown_first["path"], "/mnt/data/report.csv");

    // Rendering links to the renamed file, in every spelling, downloads the second file.
    let text = "a <sandbox:/mnt/data/report (1).csv> b [x](sandbox:/mnt/data/report%20(1).csv) \
                c /mnt/data/report.csv";
    let rendered = json_of(
        server
            .request(ALICE, Method::POST, "/v1/messages/m-r/render")
            .json(&json!({ "text": text }))
            .send()
            .await
            .expect("render"),
        200,
    )
    .await;
    let rendered = text_of(&rendered["text"]);
    assert!(!rendered.contains("/mnt/data"), "{rendered}");
    let links: Vec<&str> = rendered
        .split(|c: char| c.is_whitespace() || "<>()[]".contains(c))
        .filter(|word| word.starts_with("http"))
        .collect();
    assert_eq!(links.len(), 3, "{rendered}");
    let expected: [&[u8]; 3] = [b"second\n", b"second\n", b"first\n"];
    for (link, bytes) in links.iter().zip(expected) {
        let response = server.client.get(*link).send().await.expect("download");
        assert_eq!(response.status().as_u16(), 200, "{link}");
        assert_eq!(
            response.bytes().await.expect("body").as_ref(),
            bytes,
            "{link}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_with_a_message_id_are_attached_to_every_run_of_the_message() {
    let server = TestServer::new().await;
    let code = r#"
import os
for name in sorted(os.listdir('/mnt/data')):
    print(name, open('/mnt/data/' + name).read(), end='')
"#;
    let a = server
        .upload_ok(ALICE, "a.csv", b"a\n", Some(("chat-1", "m-u")))
        .await;
    assert_eq!(a["path"], "/mnt/data/a.csv");
    let run = server.run_ok(ALICE, ("chat-1", "m-u"), code, &[]).await;
    assert_eq!(run["stdout"], "a.csv a\n", "{run:#}");

    // Uploaded once the workspace exists, naming the message alone: the next run has it,
    // and a name already taken there is numbered, as its File says.
    let b = server.upload_ok(ALICE, "b.csv", b"b\n", None).await;
    let response = server
        .request(ALICE, Method::POST, "/v1/files")
        .multipart(
            reqwest::multipart::Form::new()
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(b"a again\n".to_vec()).file_name("a.csv"),
                )
                .text("message_id", "m-u"),
        )
        .send()
        .await
        .expect("upload");
    let a_again = json_of(response, 201).await;
    assert_eq!(a_again["path"], "/mnt/data/a (1).csv", "{a_again:#}");
    assert_eq!(a_again["message_id"], "m-u");
    let run = server
        .run_ok(ALICE, ("chat-1", "m-u"), code, &[text_of(&b["id"])])
        .await;
    assert_eq!(
        run["stdout"], "a (1).csv a again\na.csv a\nb.csv b\n",
        "{run:#}"
    );
    let again = server.run_ok(ALICE, ("chat-1", "m-u"), code, &[]).await;
    assert_eq!(again["stdout"], run["stdout"]);
    let shown = json_of(
        server
            .get(ALICE, &format!("/v1/files/{}", text_of(&a_again["id"])))
            .send()
            .await
            .expect("get"),
        200,
    )
    .await;
    assert_eq!(shown["path"], "/mnt/data/a (1).csv");

    // After its workspace is removed, a run of the message places them all again, under the
    // same names.
    let response = server
        .request(ALICE, Method::DELETE, "/v1/messages/m-u/workspace")
        .send()
        .await
        .expect("delete workspace");
    assert_eq!(response.status().as_u16(), 204);
    let fresh = server.run_ok(ALICE, ("chat-1", "m-u"), code, &[]).await;
    assert_eq!(fresh["stdout"], run["stdout"]);
}
