//! One set of checks of the catalog's behaviour, run against every database it supports:
//! SQLite (a temporary file) and PostgreSQL (a fresh database on the test server, from
//! `CODEBOX_TEST_POSTGRES_URL` or `scripts/dev-services`). Each check covers the accessors of
//! one table with the behaviours their callers rely on; each uses tenants of its own, so that
//! the checks share one database without seeing each other's rows.

#[path = "catalog_conformance/cluster.rs"]
mod cluster;
mod common;
#[path = "catalog_conformance/files.rs"]
mod files;
#[path = "catalog_conformance/lifecycle.rs"]
mod lifecycle;

use std::collections::BTreeMap;

use codebox::catalog::{
    self, Catalog, Claim, FileRecord, FileSource, KernelState, Owner, RunOutput, RunRecord,
    RunStatus, StoredQuota, Truncation,
};
use codebox::ids::{BlobKey, ChatId, FileId, MessageId, RunId, TenantId, WorkspaceId};

#[tokio::test(flavor = "multi_thread")]
async fn sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display());
    conformance(url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres() {
    common::services::with_database(conformance).await;
}

/// Every check, on the database at `url`.
async fn conformance(url: String) {
    // Two processes starting at once both apply the migrations; neither may fail.
    let (first, second) = tokio::join!(Catalog::connect(&url), Catalog::connect(&url));
    let catalog = first.expect("connect and migrate");
    second
        .expect("connect and migrate alongside another process")
        .close()
        .await;
    // And a process started later finds them applied.
    Catalog::connect(&url)
        .await
        .expect("connect again")
        .close()
        .await;
    catalog.ping().await.expect("ping");

    messages(&catalog).await;
    runs(&catalog).await;
    files::records(&catalog).await;
    files::quotas(&catalog).await;
    files::concurrent_quotas(&catalog).await;
    files::large_sizes(&catalog).await;
    files::workspace_names(&catalog).await;
    files::listing(&catalog).await;
    files::name_search(&catalog).await;
    lifecycle::file_groups(&catalog).await;
    lifecycle::retention(&catalog).await;
    lifecycle::attachments(&catalog).await;
    lifecycle::leases(&catalog).await;
    cluster::nodes(&catalog).await;
    cluster::message_takeover(&catalog).await;

    catalog.close().await;
    assert!(catalog.ping().await.is_err(), "a closed catalog answers");
}

/// The time `seconds` after a fixed instant of `year`, as the catalog stores times.
fn at(year: i32, seconds: i64) -> String {
    let start = time::Date::from_calendar_date(year, time::Month::March, 1)
        .expect("a date")
        .midnight()
        .assume_utc();
    catalog::format_time(start + time::Duration::seconds(seconds))
}

fn message(id: &str) -> MessageId {
    MessageId::parse(id).expect("a message id")
}

fn chat(id: &str) -> ChatId {
    ChatId::parse(id).expect("a chat id")
}

/// A live file of `owner` named `name`, of `size` bytes, stored at `created_at`, in no chat.
fn file(owner: &Owner, name: &str, size: i64, created_at: &str) -> FileRecord {
    let id = FileId::new();
    FileRecord {
        blob_key: BlobKey::for_file(&id),
        id,
        tenant: owner.tenant.clone(),
        user_id: owner.user.clone(),
        chat_id: None,
        message_id: None,
        run_id: None,
        name: name.to_owned(),
        path: format!("/mnt/data/{name}"),
        size,
        content_type: "text/plain".to_owned(),
        sha256: "0".repeat(64),
        source: FileSource::Upload,
        derived_from: None,
        created_at: created_at.to_owned(),
        deleted_at: None,
        modified_at: created_at.to_owned(),
        unlinked_at: None,
    }
}

/// `file` in chat `chat_id` and message `message_id`, from `source`.
fn in_message(
    mut file: FileRecord,
    chat_id: &str,
    message_id: &str,
    source: FileSource,
) -> FileRecord {
    file.chat_id = Some(chat(chat_id));
    file.message_id = Some(message(message_id));
    file.source = source;
    file
}

async fn insert(catalog: &Catalog, file: &FileRecord) {
    catalog
        .files()
        .insert(file, StoredQuota::default())
        .await
        .unwrap_or_else(|error| panic!("insert {}: {error}", file.name));
}

fn ids(files: &[FileRecord]) -> Vec<&str> {
    files.iter().map(|file| file.id.as_str()).collect()
}

fn names(files: &[FileRecord]) -> Vec<&str> {
    files.iter().map(|file| file.name.as_str()).collect()
}

fn claim<'a>(
    owner: &'a Owner,
    chat_id: &'a ChatId,
    message_id: &'a MessageId,
    new_workspace_id: &'a WorkspaceId,
    now: &'a str,
) -> Claim<'a> {
    Claim {
        owner,
        chat_id,
        message_id,
        new_workspace_id,
        now,
        node: "node-a",
    }
}

async fn messages(catalog: &Catalog) {
    let messages = catalog.messages();
    let alice = Owner::new("msg-tenant", "alice");
    let bob = Owner::new("msg-tenant", "bob");
    let other_tenant = Owner::new("msg-tenant-2", "alice");
    let (c1, c2) = (chat("chat-1"), chat("chat-2"));

    // The first claim binds; a second claim by someone else gets the first binding.
    let (m1, w1, w2) = (message("m1"), WorkspaceId::new(), WorkspaceId::new());
    let t1 = at(2030, 1);
    let first = messages
        .claim(&claim(&alice, &c1, &m1, &w1, &t1))
        .await
        .expect("claim");
    assert!(first.is_bound_to(&alice, &c1));
    assert_eq!(first.workspace_id, w1);
    assert_eq!(
        (first.created_at.as_str(), first.last_used_at.as_str()),
        (t1.as_str(), t1.as_str())
    );
    let t2 = at(2030, 2);
    let again = messages
        .claim(&claim(&bob, &c2, &m1, &w2, &t2))
        .await
        .expect("claim");
    assert_eq!(again, first, "a second claim rebinds");
    assert!(!again.is_bound_to(&bob, &c2));
    let own = messages
        .claim(&claim(&alice, &c1, &m1, &w2, &t2))
        .await
        .expect("claim");
    assert_eq!(own, first, "claiming one's own message again changes it");
    // Message ids are per tenant.
    let elsewhere = messages
        .claim(&claim(&other_tenant, &c1, &m1, &w2, &t2))
        .await
        .expect("claim");
    assert!(elsewhere.is_bound_to(&other_tenant, &c1));
    assert_eq!(elsewhere.workspace_id, w2);

    // More messages: m2 and m3 at the same time (ties go by id), m4 of bob.
    for (id, owner, chat_id) in [("m3", &alice, &c1), ("m2", &alice, &c1), ("m4", &bob, &c1)] {
        let workspace = WorkspaceId::new();
        messages
            .claim(&claim(
                owner,
                chat_id,
                &message(id),
                &workspace,
                &at(2030, 5),
            ))
            .await
            .expect("claim");
    }
    let order = |records: Vec<catalog::MessageRecord>| -> Vec<String> {
        records
            .into_iter()
            .map(|record| record.message_id.to_string())
            .collect()
    };
    let tenant = alice.tenant.clone();
    assert_eq!(
        order(messages.of_tenant(&tenant).await.expect("of_tenant")),
        ["m1", "m2", "m3", "m4"]
    );
    messages
        .touch(&tenant, &m1, &at(2030, 9))
        .await
        .expect("touch");
    messages
        .touch(&tenant, &message("m3"), &at(2030, 7))
        .await
        .expect("touch");
    assert_eq!(
        order(messages.of_tenant(&tenant).await.expect("of_tenant")),
        ["m2", "m4", "m3", "m1"]
    );
    let all: Vec<_> = messages
        .all()
        .await
        .expect("all")
        .into_iter()
        .filter(|record| record.tenant == tenant)
        .collect();
    assert_eq!(order(all), ["m2", "m4", "m3", "m1"]);
    let touched = messages.get(&tenant, &m1).await.expect("get").expect("m1");
    assert_eq!(
        (touched.created_at.clone(), touched.last_used_at.clone()),
        (t1.clone(), at(2030, 9))
    );
    assert_eq!(
        messages.get(&tenant, &message("nope")).await.expect("get"),
        None
    );

    // A chat is its user's: oldest first, ties by id.
    assert_eq!(
        order(messages.of_chat(&alice, &c1).await.expect("of_chat")),
        ["m1", "m2", "m3"]
    );
    assert_eq!(
        order(messages.of_chat(&bob, &c1).await.expect("of_chat")),
        ["m4"]
    );
    assert!(
        messages
            .of_chat(&alice, &c2)
            .await
            .expect("of_chat")
            .is_empty()
    );
    assert!(
        messages
            .chat_exists(&alice, &c1)
            .await
            .expect("chat_exists")
    );
    assert!(
        !messages
            .chat_exists(&alice, &c2)
            .await
            .expect("chat_exists")
    );
    assert!(!messages.chat_exists(&bob, &c2).await.expect("chat_exists"));

    // By workspace.
    assert_eq!(
        messages.by_workspace(&w1).await.expect("by_workspace"),
        Some(touched)
    );
    assert_eq!(
        messages
            .by_workspace(&WorkspaceId::new())
            .await
            .expect("by_workspace"),
        None
    );

    // Forgotten, the id is new again: the next claim binds it afresh.
    messages.forget(&tenant, &m1).await.expect("forget");
    assert_eq!(messages.get(&tenant, &m1).await.expect("get"), None);
    assert_eq!(
        messages.by_workspace(&w1).await.expect("by_workspace"),
        None
    );
    assert!(
        messages
            .get(&other_tenant.tenant, &m1)
            .await
            .expect("get")
            .is_some(),
        "forget crossed tenants"
    );
    let w3 = WorkspaceId::new();
    let reborn = messages
        .claim(&claim(&bob, &c2, &m1, &w3, &t2))
        .await
        .expect("claim");
    assert!(reborn.is_bound_to(&bob, &c2));
    assert_eq!(reborn.workspace_id, w3);
}

/// A run of `owner` in message `message_id`, as it starts.
fn run(owner: &Owner, message_id: &str, created_at: &str) -> RunRecord {
    RunRecord {
        id: RunId::new(),
        tenant: owner.tenant.clone(),
        user_id: owner.user.clone(),
        chat_id: chat("chat-1"),
        message_id: message(message_id),
        language: "python".to_owned(),
        status: RunStatus::Running,
        exit_code: None,
        reason: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        truncated: Vec::new(),
        duration_ms: 0,
        created_at: created_at.to_owned(),
        finished_at: None,
        outputs: Vec::new(),
        kernel: None,
        workspace_restored: false,
    }
}

async fn runs(catalog: &Catalog) {
    let runs = catalog.runs();
    let owner = Owner::new("run-tenant", "alice");
    let stranger = Owner::new("run-tenant", "bob");

    let started = run(&owner, "m1", &at(2030, 1));
    runs.insert_running(&started, "instance-a")
        .await
        .expect("insert_running");
    assert_eq!(
        runs.get(&owner, &started.id).await.expect("get"),
        Some(started.clone())
    );
    assert_eq!(runs.get(&stranger, &started.id).await.expect("get"), None);
    assert_eq!(runs.get(&owner, &RunId::new()).await.expect("get"), None);

    // Every field of a finished run comes back as it was written.
    let mut finished = started.clone();
    finished.status = RunStatus::Failed;
    finished.exit_code = Some(-9);
    finished.stdout = "héllo ✓\n'quoted' \"double\" \\ %_".to_owned();
    finished.stderr = "Traceback\n".to_owned();
    // What code prints may hold NUL, which PostgreSQL's text cannot: both databases keep it as
    // U+FFFD, as a terminal shows it.
    let mut with_nul = finished.clone();
    with_nul.stdout.push_str("a\0b");
    with_nul.stderr.push('\0');
    with_nul.reason = Some("\0".to_owned());
    runs.finish(&with_nul).await.expect("finish with NUL");
    let stored = runs
        .get(&owner, &finished.id)
        .await
        .expect("get")
        .expect("the run");
    assert_eq!(stored.stdout, format!("{}a\u{FFFD}b", finished.stdout));
    assert_eq!(stored.stderr, "Traceback\n\u{FFFD}");
    assert_eq!(stored.reason.as_deref(), Some("\u{FFFD}"));
    finished.stdout_truncated = true;
    finished.truncated = vec![Truncation {
        path: "/mnt/data/big".to_owned(),
        reason: "over 1 MB".to_owned(),
    }];
    finished.duration_ms = 5_000_000_000;
    finished.finished_at = Some(at(2030, 2));
    finished.outputs = vec![
        RunOutput::Result {
            data: BTreeMap::from([
                ("text/plain".to_owned(), "42".to_owned()),
                ("text/html".to_owned(), "<b>42</b>".to_owned()),
            ]),
        },
        RunOutput::Image {
            file_id: FileId::new(),
        },
        RunOutput::Error {
            ename: "ValueError".to_owned(),
            evalue: "bad ✗".to_owned(),
            traceback: vec!["line 1".to_owned(), "line 2".to_owned()],
        },
    ];
    finished.kernel = Some(KernelState {
        execution_count: 3,
        restarted: true,
        reason: Some("timeout".to_owned()),
    });
    runs.finish(&finished).await.expect("finish");
    assert_eq!(
        runs.get(&owner, &finished.id).await.expect("get"),
        Some(finished.clone())
    );

    // The other flag, another status, no exit code, a kernel without a reason.
    let mut killed = run(&owner, "m1", &at(2030, 3));
    runs.insert_running(&killed, "instance-a")
        .await
        .expect("insert_running");
    killed.status = RunStatus::Killed;
    killed.reason = Some("memory".to_owned());
    killed.stderr_truncated = true;
    killed.duration_ms = 17;
    killed.finished_at = Some(at(2030, 4));
    killed.kernel = Some(KernelState {
        execution_count: 1,
        restarted: false,
        reason: None,
    });
    runs.finish(&killed).await.expect("finish");
    assert_eq!(
        runs.get(&owner, &killed.id).await.expect("get"),
        Some(killed.clone())
    );
    let mut succeeded = run(&owner, "m2", &at(2030, 5));
    runs.insert_running(&succeeded, "instance-b")
        .await
        .expect("insert_running");
    succeeded.status = RunStatus::Succeeded;
    succeeded.exit_code = Some(0);
    succeeded.finished_at = Some(at(2030, 6));
    runs.finish(&succeeded).await.expect("finish");
    assert_eq!(
        runs.get(&owner, &succeeded.id).await.expect("get"),
        Some(succeeded.clone())
    );

    // A restarted instance fails its own interrupted runs only.
    let mine: Vec<RunRecord> = (0..2)
        .map(|n| run(&owner, "m3", &at(2030, 10 + n)))
        .collect();
    let theirs = run(&owner, "m3", &at(2030, 20));
    for record in &mine {
        runs.insert_running(record, "instance-a")
            .await
            .expect("insert_running");
    }
    runs.insert_running(&theirs, "instance-b")
        .await
        .expect("insert_running");
    let now = at(2030, 30);
    assert_eq!(
        runs.fail_interrupted("instance-a", "codebox restarted", &now)
            .await
            .expect("fail"),
        2
    );
    for record in &mine {
        let failed = runs
            .get(&owner, &record.id)
            .await
            .expect("get")
            .expect("the run");
        assert_eq!(failed.status, RunStatus::Failed);
        assert_eq!(failed.reason.as_deref(), Some("codebox restarted"));
        assert_eq!(failed.finished_at.as_deref(), Some(now.as_str()));
    }
    let still = runs
        .get(&owner, &theirs.id)
        .await
        .expect("get")
        .expect("the run");
    assert_eq!(
        still.status,
        RunStatus::Running,
        "another instance's run was failed"
    );
    assert_eq!(
        runs.get(&owner, &finished.id).await.expect("get"),
        Some(finished),
        "a finished run was failed"
    );
    assert_eq!(
        runs.fail_interrupted("instance-a", "again", &now)
            .await
            .expect("fail"),
        0
    );

    // Counting per message, per tenant.
    let tenant = owner.tenant.clone();
    assert_eq!(
        runs.count_of_message(&tenant, &message("m1"))
            .await
            .expect("count"),
        2
    );
    assert_eq!(
        runs.count_of_message(&tenant, &message("m3"))
            .await
            .expect("count"),
        3
    );
    assert_eq!(
        runs.count_of_message(&tenant, &message("none"))
            .await
            .expect("count"),
        0
    );
    let elsewhere = TenantId::from_stored("run-tenant-2");
    assert_eq!(
        runs.count_of_message(&elsewhere, &message("m1"))
            .await
            .expect("count"),
        0
    );
}
