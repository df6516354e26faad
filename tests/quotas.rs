//! Quotas, the disk watermark and per-tenant retention, over HTTP against the real engine:
//! uploads and outputs past a stored quota are refused with `quota_exceeded` and leave no
//! bytes behind; workspace quotas make room by removing idle workspaces and refuse a run only
//! when busy ones fill them; a tenant's overrides apply to it alone.

mod common;

use std::time::Duration;

use bytesize::ByteSize;
use codebox::config::TenantConfig;
use common::web::files_below;
use common::*;
use serde_json::{Value, json};

/// Bytes of a csv of `size` bytes (a header and filler rows).
fn csv_of(size: usize) -> Vec<u8> {
    let mut bytes = b"n\n".to_vec();
    bytes.resize(size, b'7');
    bytes
}

/// The number of blobs in the server's local blob store.
fn blob_count(server: &TestServer) -> usize {
    files_below(&server.data_dir().join("blobs")).len()
}

async fn usage(server: &TestServer, caller: Caller) -> Value {
    json_of(
        server.get(caller, "/v1/usage").send().await.expect("usage"),
        200,
    )
    .await
}

#[tokio::test]
async fn uploads_past_the_user_quota_are_refused_whole_and_deleting_makes_room() {
    let server = TestServer::with_config(|config| {
        config.quotas.user_stored_bytes = Some(ByteSize::kib(10));
    })
    .await;
    server
        .upload_ok(ALICE, "a.csv", &csv_of(6 * 1024), None)
        .await;
    let blobs = blob_count(&server);
    // Past the room left, by a little and by far more than the room (cut off as it arrives).
    for size in [5 * 1024, 4 * 1024 * 1024] {
        let response = server.upload(ALICE, "b.csv", &csv_of(size), None).await;
        let message = assert_error(response, 413, "quota_exceeded").await;
        assert!(message.contains("quota"), "{message}");
    }
    // Into a chat too: the quota is the user's, wherever the file goes.
    let response = server
        .upload(ALICE, "b.csv", &csv_of(5 * 1024), Some(("chat-q", "msg-q")))
        .await;
    assert_error(response, 413, "quota_exceeded").await;
    assert_eq!(
        blob_count(&server),
        blobs,
        "a refused upload leaves no bytes"
    );
    let listed = json_of(
        server.get(ALICE, "/v1/files").send().await.expect("list"),
        200,
    )
    .await;
    assert_eq!(listed["files"].as_array().expect("files").len(), 1);

    // Another user has a quota of their own.
    server
        .upload_ok(BOB, "b.csv", &csv_of(9 * 1024), None)
        .await;
    // What fits, fits; and the usage says where the user stands.
    let small = server
        .upload_ok(ALICE, "c.csv", &csv_of(3 * 1024), None)
        .await;
    let used = usage(&server, ALICE).await;
    assert_eq!(used["stored_bytes"], 9 * 1024, "{used}");
    assert_eq!(used["stored_limit"], 10 * 1024, "{used}");
    assert_eq!(used["tenant_stored_bytes"], 18 * 1024, "{used}");
    assert!(used["tenant_stored_limit"].is_null(), "{used}");

    // Deleting a file gives its room back at once.
    let id = small["id"].as_str().expect("id");
    let deleted = server
        .request(ALICE, reqwest::Method::DELETE, &format!("/v1/files/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    server
        .upload_ok(ALICE, "d.csv", &csv_of(4 * 1024), None)
        .await;
}

#[tokio::test]
async fn the_tenant_quota_is_shared_and_concurrent_uploads_never_pass_it() {
    let server = TestServer::with_config(|config| {
        config.quotas.tenant_stored_bytes = Some(ByteSize::kib(100));
    })
    .await;
    // Eight uploads of 30 KiB at once, from two users of one tenant: three fit, whatever
    // the order, and the rest are refused with nothing stored.
    let uploads = (0..8).map(|index| {
        let caller = if index % 2 == 0 { ALICE } else { BOB };
        let server = &server;
        async move {
            let name = format!("part-{index}.csv");
            server
                .upload(caller, &name, &csv_of(30 * 1024), None)
                .await
                .status()
                .as_u16()
        }
    });
    let mut statuses = futures::future::join_all(uploads).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 201, 201, 413, 413, 413, 413, 413]);
    assert_eq!(blob_count(&server), 3, "the refused uploads left no bytes");
    let used = usage(&server, ALICE).await;
    assert_eq!(used["tenant_stored_bytes"], 90 * 1024, "{used}");
    // The other tenant has a quota of its own, untouched by this one's files.
    server
        .upload_ok(ALICE_OF_B, "big.csv", &csv_of(90 * 1024), None)
        .await;
}

#[tokio::test]
async fn outputs_past_the_quota_are_left_out_with_the_reason_and_no_bytes() {
    let server = TestServer::with_config(|config| {
        config.quotas.user_stored_bytes = Some(ByteSize::kib(50));
    })
    .await;
    let code = "open('/mnt/data/a_small.csv','w').write('n\\n' + '7' * 20000)\n\
                open('/mnt/data/b_large.csv','w').write('n\\n' + '7' * 40000)\n\
                open('/mnt/data/c_small.csv','w').write('n\\n' + '7' * 20000)\n\
                print('written')";
    let run = server.run_ok(ALICE, ("chat-o", "msg-o"), code, &[]).await;
    let names: Vec<&str> = run["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| file["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a_small.csv", "c_small.csv"], "{run:#}");
    let left_out = run["truncated"]
        .as_array()
        .expect("truncated")
        .iter()
        .find(|entry| entry["path"] == "/mnt/data/b_large.csv")
        .unwrap_or_else(|| panic!("b_large.csv is reported: {run:#}"));
    let reason = left_out["reason"].as_str().expect("reason");
    assert!(reason.starts_with("quota_exceeded"), "{reason}");
    assert_eq!(
        blob_count(&server),
        2,
        "only the registered outputs have bytes"
    );
    // Now full: the next run's output is left out too, and the run itself still succeeds.
    let run = server
        .run_ok(
            ALICE,
            ("chat-o", "msg-o"),
            "open('/mnt/data/d.csv','w').write('n\\n' + '7' * 20000)",
            &[],
        )
        .await;
    assert_eq!(run["files"].as_array().expect("files").len(), 0, "{run:#}");
    assert!(
        run["truncated"].to_string().contains("quota_exceeded"),
        "{run:#}"
    );
}

#[tokio::test]
async fn a_workspace_quota_removes_idle_workspaces_and_refuses_only_when_busy_ones_fill_it() {
    // One byte: any other workspace of the user on disk fills it.
    let server = TestServer::with_config(|config| {
        config.quotas.user_workspace_bytes = Some(ByteSize::b(1));
    })
    .await;
    server
        .run_ok(ALICE, ("chat-w", "msg-1"), "print(1)", &[])
        .await;
    let first = server.workspace_dir(&server.workspace_id("tenant-a", "msg-1").await);
    assert!(first.exists());
    // The message's own workspace never stops its next run.
    server
        .run_ok(ALICE, ("chat-w", "msg-1"), "print(2)", &[])
        .await;
    // Another user's workspaces are not this user's.
    server
        .run_ok(BOB, ("chat-b", "msg-b"), "print(1)", &[])
        .await;
    // A new message makes room: the idle first workspace goes.
    server
        .run_ok(ALICE, ("chat-w", "msg-2"), "print(3)", &[])
        .await;
    assert!(!first.exists(), "the idle workspace made room");
    let bob = server.workspace_dir(&server.workspace_id("tenant-a", "msg-b").await);
    assert!(bob.exists(), "another user's workspace stays");

    // While msg-2 runs, its workspace is busy: a third message is refused, nothing removed.
    let busy = {
        let request = server
            .request(ALICE, reqwest::Method::POST, "/v1/runs")
            .json(
                &json!({"chat_id": "chat-w", "message_id": "msg-2", "language": "python",
                          "code": "import time; time.sleep(8)"}),
            );
        tokio::spawn(async move { request.send().await.expect("the busy run") })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = server
        .run(
            ALICE,
            &json!({"chat_id": "chat-w", "message_id": "msg-3", "language": "python",
                    "code": "print(4)"}),
        )
        .await;
    let message = assert_error(refused, 413, "quota_exceeded").await;
    assert!(message.contains("workspaces"), "{message}");
    let second = server.workspace_dir(&server.workspace_id("tenant-a", "msg-2").await);
    assert!(second.exists(), "a busy workspace is never removed");
    assert_eq!(busy.await.expect("join").status(), 200);
    // Once the run ended, the same request goes through.
    server
        .run_ok(ALICE, ("chat-w", "msg-3"), "print(5)", &[])
        .await;
    assert!(!second.exists());
    let used = usage(&server, ALICE).await;
    assert!(
        used["workspace_bytes"].as_u64().expect("bytes") > 0,
        "{used}"
    );
    assert_eq!(used["workspace_limit"], 1, "{used}");
}

#[tokio::test]
async fn below_the_disk_watermark_idle_workspaces_go_least_recently_used_first() {
    // A watermark no disk can meet: every idle workspace is removed, oldest use first.
    let server = TestServer::with_config(|config| {
        config.retention.min_free_disk = Some(ByteSize::pib(1000));
    })
    .await;
    for message in ["msg-old", "msg-mid", "msg-new"] {
        server
            .run_ok(ALICE, ("chat-d", message), "print(1)", &[])
            .await;
    }
    // msg-old used again last: now the most recently used.
    server
        .run_ok(ALICE, ("chat-d", "msg-old"), "print(2)", &[])
        .await;
    let mut ids = Vec::new();
    for message in ["msg-mid", "msg-new", "msg-old"] {
        ids.push(server.workspace_id("tenant-a", message).await);
    }
    let gc = |dry_run: bool| {
        server
            .client
            .post(server.url("/v1/admin/gc"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "dry_run": dry_run }))
            .send()
    };
    let dry = json_of(gc(true).await.expect("gc"), 200).await;
    assert_eq!(dry["workspaces"], json!(ids), "{dry:#}");
    assert!(ids.iter().all(|id| server.workspace_dir(id).exists()));
    // A tenant's operator does not apply the watermark (it weighs every tenant's workspaces).
    let scoped = server
        .client
        .post(server.url("/v1/admin/gc"))
        .bearer_auth(ADMIN_A_TOKEN)
        .json(&json!({ "dry_run": true }))
        .send()
        .await
        .expect("gc");
    let scoped = json_of(scoped, 200).await;
    assert_eq!(scoped["workspaces"], json!([]), "{scoped:#}");
    let done = json_of(gc(false).await.expect("gc"), 200).await;
    assert_eq!(done["workspaces"], json!(ids), "{done:#}");
    assert!(ids.iter().all(|id| !server.workspace_dir(id).exists()));
}

#[tokio::test]
async fn a_tenants_retention_overrides_apply_to_it_alone() {
    let server = TestServer::with_config(|config| {
        config.tenants.insert(
            "tenant-b".to_owned(),
            TenantConfig {
                file_ttl: Some(Duration::from_secs(1)),
                workspace_idle: Some(Duration::from_secs(1)),
                user_stored_bytes: Some(ByteSize::mib(5)),
                ..TenantConfig::default()
            },
        );
    })
    .await;
    let kept = server.upload_ok(ALICE, "kept.csv", b"n\n1\n", None).await;
    let expiring = server
        .upload_ok(ALICE_OF_B, "gone.csv", b"n\n1\n", None)
        .await;
    server
        .run_ok(ALICE, ("chat-t", "msg-a"), "print(1)", &[])
        .await;
    server
        .run_ok(ALICE_OF_B, ("chat-t", "msg-b"), "print(1)", &[])
        .await;
    let workspace_a = server.workspace_dir(&server.workspace_id("tenant-a", "msg-a").await);
    let workspace_b = server.workspace_dir(&server.workspace_id("tenant-b", "msg-b").await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gc = server
        .client
        .post(server.url("/v1/admin/gc"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "dry_run": false }))
        .send()
        .await
        .expect("gc");
    let report = json_of(gc, 200).await;
    assert_eq!(
        report["files_expired"],
        json!([expiring["id"]]),
        "{report:#}"
    );
    assert!(workspace_a.exists(), "the default idle time is a day");
    assert!(!workspace_b.exists(), "tenant-b's idle time is a second");
    let kept_id = kept["id"].as_str().expect("id");
    let still = server
        .get(ALICE, &format!("/v1/files/{kept_id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(still.status(), 200);

    // Each operator sees the policy in force for them.
    let policy = |token: &'static str| {
        server
            .client
            .get(server.url("/v1/admin/retention"))
            .bearer_auth(token)
            .send()
    };
    let of_b = json_of(policy(ADMIN_B_TOKEN).await.expect("policy"), 200).await;
    assert_eq!(of_b["file_ttl_secs"], 1, "{of_b:#}");
    assert_eq!(of_b["workspace_idle_secs"], 1, "{of_b:#}");
    assert_eq!(
        of_b["quotas"]["user_stored_bytes"],
        5 * 1024 * 1024,
        "{of_b:#}"
    );
    assert!(
        of_b.get("tenants").is_none(),
        "a tenant's operator sees no other tenant"
    );
    let of_a = json_of(policy(ADMIN_A_TOKEN).await.expect("policy"), 200).await;
    assert!(of_a["file_ttl_secs"].is_null(), "{of_a:#}");
    assert_eq!(of_a["workspace_idle_secs"], 24 * 3600, "{of_a:#}");
    let global = json_of(policy(ADMIN_TOKEN).await.expect("policy"), 200).await;
    assert_eq!(
        global["tenants"]["tenant-b"]["file_ttl_secs"], 1,
        "{global:#}"
    );
}

#[tokio::test]
async fn a_models_write_past_the_quota_is_explained_to_it_and_nothing_is_kept() {
    let server = TestServer::with_config(|config| {
        config.quotas.user_stored_bytes = Some(ByteSize::kib(1));
    })
    .await;
    let body = json!({"chat_id": "chat-m", "message_id": "msg-m",
                      "arguments": {"path": "notes.txt", "content": "x".repeat(4096)}});
    let answer = server
        .request(ALICE, reqwest::Method::POST, "/v1/tools/write_file")
        .json(&body)
        .send()
        .await
        .expect("call the tool");
    let answer = json_of(answer, 200).await;
    let content = answer["content"].as_str().expect("content");
    assert!(content.contains("quota"), "{content}");
    assert_eq!(answer["files"], json!([]), "{answer:#}");
    assert_eq!(blob_count(&server), 0);
}
