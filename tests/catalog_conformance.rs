//! One set of checks of the catalog's behaviour, run against every database it supports:
//! SQLite (a temporary file) and PostgreSQL (a fresh database on the test server, from
//! `CODEBOX_TEST_POSTGRES_URL` or `scripts/dev-services`). Each check covers the accessors of
//! one table with the behaviours their callers rely on; each uses tenants of its own, so that
//! the checks share one database without seeing each other's rows.

mod common;

use std::collections::BTreeMap;

use codebox::catalog::{
    self, AttachmentRecord, Catalog, CatalogError, Claim, FileQuery, FileRecord, FileSource,
    KernelState, Owner, QuotaScope, RunOutput, RunRecord, RunStatus, StoredBytes, StoredQuota,
    Truncation,
};
use codebox::ids::{BlobKey, ChatId, FileId, MessageId, RunId, TenantId, WorkspaceId};

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display());
    conformance(url).await;
}

#[tokio::test]
async fn postgres() {
    common::postgres::with_database(conformance).await;
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
    file_records(&catalog).await;
    quotas(&catalog).await;
    large_sizes(&catalog).await;
    workspace_names(&catalog).await;
    listing(&catalog).await;
    name_search(&catalog).await;
    file_groups(&catalog).await;
    retention(&catalog).await;
    attachments(&catalog).await;

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

async fn file_records(catalog: &Catalog) {
    let files = catalog.files();
    let owner = Owner::new("rec-tenant", "alice");
    let stranger = Owner::new("rec-tenant", "bob");
    let mut record = in_message(
        file(&owner, "out.csv", 12, &at(2030, 1)),
        "c1",
        "m1",
        FileSource::CodeExecution,
    );
    record.run_id = Some(RunId::new());
    record.derived_from = Some(FileId::new());
    record.content_type = "text/csv".to_owned();
    insert(catalog, &record).await;
    assert_eq!(
        files.get(&owner, &record.id).await.expect("get"),
        Some(record.clone())
    );
    assert_eq!(files.get(&stranger, &record.id).await.expect("get"), None);
    assert_eq!(
        files.get_live(&record.id).await.expect("get_live"),
        Some(record.clone())
    );
    assert_eq!(
        files.get_live(&FileId::new()).await.expect("get_live"),
        None
    );

    assert!(
        !files
            .soft_delete(&stranger, &record.id, &at(2030, 2))
            .await
            .expect("delete")
    );
    assert!(
        files
            .soft_delete(&owner, &record.id, &at(2030, 2))
            .await
            .expect("delete")
    );
    assert!(
        !files
            .soft_delete(&owner, &record.id, &at(2030, 3))
            .await
            .expect("delete"),
        "deleted twice"
    );
    assert_eq!(files.get(&owner, &record.id).await.expect("get"), None);
    assert_eq!(files.get_live(&record.id).await.expect("get_live"), None);
}

async fn quotas(catalog: &Catalog) {
    let files = catalog.files();
    let alice = Owner::new("quota-tenant", "alice");
    let bob = Owner::new("quota-tenant", "bob");
    let user_quota = StoredQuota {
        user: Some(100),
        tenant: None,
    };
    let tenant_quota = StoredQuota {
        user: None,
        tenant: Some(150),
    };
    let refused = |result: Result<(), CatalogError>| match result {
        Err(CatalogError::QuotaExceeded { scope, used, limit }) => (scope, used, limit),
        other => panic!("expected a quota refusal, got {other:?}"),
    };

    let a1 = file(&alice, "a1", 60, &at(2030, 1));
    files
        .insert(&a1, user_quota)
        .await
        .expect("within the quota");
    let a2 = file(&alice, "a2", 50, &at(2030, 2));
    assert_eq!(
        refused(files.insert(&a2, user_quota).await),
        (QuotaScope::User, 60, 100)
    );
    assert_eq!(
        files.get(&alice, &a2.id).await.expect("get"),
        None,
        "a refused file was recorded"
    );
    let a3 = file(&alice, "a3", 40, &at(2030, 3));
    files
        .insert(&a3, user_quota)
        .await
        .expect("exactly the quota");
    // Bob's room is his own; the tenant's is shared.
    let b1 = file(&bob, "b1", 45, &at(2030, 4));
    files
        .insert(&b1, user_quota)
        .await
        .expect("another user's quota");
    let b2 = file(&bob, "b2", 10, &at(2030, 5));
    assert_eq!(
        refused(files.insert(&b2, tenant_quota).await),
        (QuotaScope::Tenant, 145, 150)
    );
    assert_eq!(files.get(&bob, &b2.id).await.expect("get"), None);
    let both = StoredQuota {
        user: Some(100),
        tenant: Some(150),
    };
    assert_eq!(
        refused(
            files
                .insert(&file(&alice, "a4", 1, &at(2030, 6)), both)
                .await
        ),
        (QuotaScope::User, 100, 100)
    );
    files
        .insert(
            &file(&bob, "b3", 1000, &at(2030, 6)),
            StoredQuota::default(),
        )
        .await
        .expect("no quota");
    assert_eq!(
        files
            .stored_bytes(&alice.tenant, &alice.user)
            .await
            .expect("stored_bytes"),
        StoredBytes {
            user: 100,
            tenant: 1145
        }
    );
    // Deleted files free their room.
    assert!(
        files
            .soft_delete(&alice, &a1.id, &at(2030, 7))
            .await
            .expect("delete")
    );
    files
        .insert(&a2, user_quota)
        .await
        .expect("room after a delete");
    assert_eq!(
        files
            .stored_bytes(&alice.tenant, &alice.user)
            .await
            .expect("stored_bytes")
            .user,
        90
    );
}

async fn large_sizes(catalog: &Catalog) {
    let files = catalog.files();
    let owner = Owner::new("large-tenant", "alice");
    let size: i64 = 3_000_000_000;
    for n in 0..3 {
        insert(
            catalog,
            &file(&owner, &format!("big{n}"), size, &at(2030, n)),
        )
        .await;
    }
    let bytes = files
        .stored_bytes(&owner.tenant, &owner.user)
        .await
        .expect("stored_bytes");
    assert_eq!(
        bytes,
        StoredBytes {
            user: 9_000_000_000,
            tenant: 9_000_000_000
        }
    );
    let usage = files.usage(Some(&owner.tenant)).await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].files, usage[0].bytes), (3, 9_000_000_000));
    let quota = StoredQuota {
        user: Some(10_000_000_000),
        tenant: Some(u64::MAX),
    };
    match files
        .insert(&file(&owner, "big3", size, &at(2030, 9)), quota)
        .await
    {
        Err(CatalogError::QuotaExceeded {
            scope: QuotaScope::User,
            used: 9_000_000_000,
            limit: 10_000_000_000,
        }) => {}
        other => panic!("expected the user's quota to refuse, got {other:?}"),
    }
    let quota = StoredQuota {
        user: Some(12_000_000_000),
        tenant: Some(u64::MAX),
    };
    files
        .insert(&file(&owner, "big3", size, &at(2030, 9)), quota)
        .await
        .expect("exactly the quota");
    assert_eq!(
        files
            .stored_bytes(&owner.tenant, &owner.user)
            .await
            .expect("stored_bytes")
            .user,
        12_000_000_000
    );
}

async fn workspace_names(catalog: &Catalog) {
    let files = catalog.files();
    let alice = Owner::new("name-tenant", "alice");
    let bob = Owner::new("name-tenant", "bob");
    let taken = |result: Result<(), CatalogError>| match result {
        Err(CatalogError::NameTaken(name)) => name,
        other => panic!("expected the name to be taken, got {other:?}"),
    };
    let first = file(&alice, "notes.txt", 1, &at(2030, 1));
    insert(catalog, &first).await;
    let second = file(&alice, "notes.txt", 1, &at(2030, 2));
    assert_eq!(
        taken(files.insert(&second, StoredQuota::default()).await),
        "notes.txt"
    );
    assert_eq!(files.get(&alice, &second.id).await.expect("get"), None);
    assert_eq!(
        files
            .in_workspace_named(&alice, "notes.txt")
            .await
            .expect("named"),
        Some(first.clone())
    );
    assert_eq!(
        files
            .in_workspace_named(&alice, "NOTES.txt")
            .await
            .expect("named"),
        None
    );
    // Another user's workspace, other cases, and chats have names of their own.
    insert(catalog, &file(&bob, "notes.txt", 1, &at(2030, 3))).await;
    insert(catalog, &file(&alice, "Notes.txt", 1, &at(2030, 3))).await;
    let in_chat = in_message(
        file(&alice, "notes.txt", 1, &at(2030, 4)),
        "c1",
        "m1",
        FileSource::Upload,
    );
    insert(catalog, &in_chat).await;
    insert(
        catalog,
        &in_message(
            file(&alice, "notes.txt", 1, &at(2030, 5)),
            "c1",
            "m1",
            FileSource::Upload,
        ),
    )
    .await;
    // Deleted, the name is free again.
    assert!(
        files
            .soft_delete(&alice, &first.id, &at(2030, 6))
            .await
            .expect("delete")
    );
    insert(catalog, &second).await;

    // Renaming follows the same rule.
    let other = file(&alice, "draft.txt", 1, &at(2030, 7));
    insert(catalog, &other).await;
    let err = files
        .rename(
            &alice,
            &other.id,
            ("notes.txt", "/mnt/data/notes.txt"),
            &at(2030, 8),
        )
        .await;
    match err {
        Err(CatalogError::NameTaken(name)) => assert_eq!(name, "notes.txt"),
        other => panic!("expected the name to be taken, got {other:?}"),
    }
    assert_eq!(
        files.get(&alice, &other.id).await.expect("get"),
        Some(other.clone())
    );
    assert!(
        files
            .rename(
                &alice,
                &other.id,
                ("final.txt", "/mnt/data/final.txt"),
                &at(2030, 9)
            )
            .await
            .expect("rename")
    );
    let renamed = files
        .get(&alice, &other.id)
        .await
        .expect("get")
        .expect("the file");
    assert_eq!(
        (renamed.name.as_str(), renamed.path.as_str()),
        ("final.txt", "/mnt/data/final.txt")
    );
    assert_eq!(
        (renamed.created_at, renamed.modified_at),
        (at(2030, 7), at(2030, 9))
    );
    assert!(
        files
            .rename(
                &alice,
                &in_chat.id,
                ("final.txt", "/mnt/data/final.txt"),
                &at(2030, 9)
            )
            .await
            .expect("rename"),
        "a chat file's name is its own"
    );
    assert!(
        !files
            .rename(&bob, &other.id, ("x", "/mnt/data/x"), &at(2030, 9))
            .await
            .expect("rename"),
        "renamed another's file"
    );
    assert!(
        !files
            .rename(&alice, &first.id, ("x", "/mnt/data/x"), &at(2030, 9))
            .await
            .expect("rename"),
        "renamed a deleted file"
    );
    assert!(
        files
            .rename(
                &alice,
                &second.id,
                ("notes.txt", "/mnt/data/notes.txt"),
                &at(2030, 9)
            )
            .await
            .expect("rename"),
        "its own name"
    );
}

async fn listing(catalog: &Catalog) {
    let files = catalog.files();
    let owner = Owner::new("list-tenant", "alice");
    let stranger = Owner::new("list-tenant", "bob");
    // Seven files over four instants (several share one, so ties go by id), in two chats and
    // the workspace, from each source, one deleted and one of another user.
    let sources = [
        FileSource::Upload,
        FileSource::CodeExecution,
        FileSource::Figure,
    ];
    let mut all = Vec::new();
    for n in 0..7 {
        let base = file(&owner, &format!("f{n}"), 1, &at(2030, n / 2));
        let record = match n % 3 {
            0 => base,
            k => in_message(
                base,
                &format!("c{k}"),
                &format!("m{}", n % 2),
                sources[n as usize % 3],
            ),
        };
        insert(catalog, &record).await;
        all.push(record);
    }
    let deleted = file(&owner, "gone", 1, &at(2030, 1));
    insert(catalog, &deleted).await;
    assert!(
        files
            .soft_delete(&owner, &deleted.id, &at(2030, 9))
            .await
            .expect("delete")
    );
    insert(catalog, &file(&stranger, "theirs", 1, &at(2030, 1))).await;
    let mut newest_first = all.clone();
    newest_first
        .sort_by(|a, b| (&b.created_at, &b.id.as_str()).cmp(&(&a.created_at, &a.id.as_str())));

    let list = |query: FileQuery| {
        let (files, owner) = (&files, &owner);
        async move { files.list(owner, &query).await.expect("list") }
    };
    let everything = list(FileQuery {
        limit: 100,
        ..FileQuery::default()
    })
    .await;
    assert_eq!(ids(&everything), ids(&newest_first));

    // Keyset pages of 3: 3 + 3 + 1, then nothing.
    let mut paged = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = list(FileQuery {
            limit: 3,
            after: after.clone(),
            ..FileQuery::default()
        })
        .await;
        if page.is_empty() {
            break;
        }
        pages += 1;
        assert!(page.len() <= 3);
        let last = page.last().expect("a file");
        after = Some((last.created_at.clone(), last.id.clone()));
        paged.extend(page);
    }
    assert_eq!(pages, 3);
    assert_eq!(ids(&paged), ids(&newest_first));

    // Each filter, alone and with a page.
    let only = |keep: &dyn Fn(&FileRecord) -> bool| -> Vec<String> {
        newest_first
            .iter()
            .filter(|file| keep(file))
            .map(|file| file.id.to_string())
            .collect()
    };
    let c1 = list(FileQuery {
        chat_id: Some(chat("c1")),
        limit: 100,
        ..FileQuery::default()
    })
    .await;
    assert_eq!(ids(&c1), only(&|file| file.chat_id == Some(chat("c1"))));
    assert!(!c1.is_empty());
    let m1 = list(FileQuery {
        message_id: Some(message("m1")),
        limit: 100,
        ..FileQuery::default()
    })
    .await;
    assert_eq!(
        ids(&m1),
        only(&|file| file.message_id == Some(message("m1")))
    );
    for source in sources {
        let of_source = list(FileQuery {
            source: Some(source),
            limit: 100,
            ..FileQuery::default()
        })
        .await;
        assert_eq!(ids(&of_source), only(&|file| file.source == source));
        assert!(!of_source.is_empty());
    }
    let first_upload_page = list(FileQuery {
        source: Some(FileSource::Upload),
        limit: 1,
        ..FileQuery::default()
    })
    .await;
    let last = first_upload_page.last().expect("an upload");
    let rest = list(FileQuery {
        source: Some(FileSource::Upload),
        after: Some((last.created_at.clone(), last.id.clone())),
        limit: 100,
        ..FileQuery::default()
    })
    .await;
    assert_eq!(
        ids(&first_upload_page)
            .into_iter()
            .chain(ids(&rest))
            .collect::<Vec<_>>(),
        only(&|file| file.source == FileSource::Upload)
    );
    let named = list(FileQuery {
        name_contains: Some("F3".to_owned()),
        limit: 100,
        ..FileQuery::default()
    })
    .await;
    assert_eq!(names(&named), ["f3"], "names match whatever their case");
    assert!(
        files
            .list(
                &stranger,
                &FileQuery {
                    limit: 100,
                    ..FileQuery::default()
                }
            )
            .await
            .expect("list")
            .len()
            == 1
    );
}

async fn name_search(catalog: &Catalog) {
    let files = catalog.files();
    let owner = Owner::new("search-tenant", "alice");
    let all = [
        "100%.csv",
        "100x.csv",
        "a_b.txt",
        "axb.txt",
        "back\\slash",
        "backxslash",
        "Report.PDF",
        "it's",
    ];
    for (n, name) in all.iter().enumerate() {
        insert(catalog, &file(&owner, name, 1, &at(2030, n as i64))).await;
    }
    for (query, expected) in [
        ("%", vec!["100%.csv"]),
        ("0%", vec!["100%.csv"]),
        ("_", vec!["a_b.txt"]),
        ("a_b", vec!["a_b.txt"]),
        ("\\", vec!["back\\slash"]),
        ("k\\s", vec!["back\\slash"]),
        ("report.pdf", vec!["Report.PDF"]),
        ("'", vec!["it's"]),
        ("xs", vec!["backxslash"]),
        ("0x", vec!["100x.csv"]),
        ("nothing", vec![]),
    ] {
        let query_files = FileQuery {
            name_contains: Some(query.to_owned()),
            limit: 100,
            ..FileQuery::default()
        };
        let found = files.list(&owner, &query_files).await.expect("list");
        assert_eq!(names(&found), expected, "q = {query:?}");
    }
}

async fn file_groups(catalog: &Catalog) {
    let files = catalog.files();
    let owner = Owner::new("group-tenant", "alice");
    let stranger = Owner::new("group-tenant", "bob");
    let run_id = RunId::new();
    let generated = |name: &str, seconds, source| {
        let mut record = in_message(
            file(&owner, name, 1, &at(2030, seconds)),
            "c1",
            "m1",
            source,
        );
        record.run_id = Some(run_id.clone());
        record
    };
    let out2 = generated("out2", 3, FileSource::CodeExecution);
    let out1 = generated("out1", 2, FileSource::CodeExecution);
    let figure = generated("figure.png", 4, FileSource::Figure);
    let gone = generated("gone", 1, FileSource::CodeExecution);
    let upload = in_message(
        file(&owner, "in.csv", 1, &at(2030, 1)),
        "c1",
        "m1",
        FileSource::Upload,
    );
    let other_message = in_message(
        file(&owner, "in2.csv", 1, &at(2030, 5)),
        "c1",
        "m2",
        FileSource::Upload,
    );
    let other_chat = in_message(
        file(&owner, "in3.csv", 1, &at(2030, 5)),
        "c2",
        "m3",
        FileSource::Upload,
    );
    for record in [
        &out2,
        &out1,
        &figure,
        &gone,
        &upload,
        &other_message,
        &other_chat,
    ] {
        insert(catalog, record).await;
    }
    assert!(
        files
            .soft_delete(&owner, &gone.id, &at(2030, 6))
            .await
            .expect("delete")
    );

    assert_eq!(
        names(&files.of_run(&run_id).await.expect("of_run")),
        ["out1", "out2", "figure.png"]
    );
    assert!(
        files
            .of_run(&RunId::new())
            .await
            .expect("of_run")
            .is_empty()
    );
    let m1 = message("m1");
    assert_eq!(
        names(
            &files
                .of_message(&owner, &m1, false)
                .await
                .expect("of_message")
        ),
        ["out1", "out2", "figure.png"]
    );
    assert_eq!(
        names(
            &files
                .of_message(&owner, &m1, true)
                .await
                .expect("of_message")
        ),
        ["in.csv", "out1", "out2", "figure.png"]
    );
    assert!(
        files
            .of_message(&stranger, &m1, true)
            .await
            .expect("of_message")
            .is_empty()
    );
    let c1 = chat("c1");
    assert_eq!(
        names(&files.of_chat(&owner, &c1).await.expect("of_chat")),
        ["out1", "out2", "figure.png"]
    );
    assert!(
        files
            .of_chat(&stranger, &c1)
            .await
            .expect("of_chat")
            .is_empty()
    );
    assert_eq!(
        names(&files.linked_uploads(&owner, &c1).await.expect("linked")),
        ["in.csv", "in2.csv"]
    );

    // Unlinking keeps the uploads, marked, and only this chat's.
    let now = at(2030, 7);
    assert_eq!(
        files
            .unlink_chat_uploads(&owner, &c1, &now)
            .await
            .expect("unlink"),
        2
    );
    assert!(
        files
            .linked_uploads(&owner, &c1)
            .await
            .expect("linked")
            .is_empty()
    );
    let kept = files
        .get(&owner, &upload.id)
        .await
        .expect("get")
        .expect("the upload");
    assert_eq!(kept.unlinked_at.as_deref(), Some(now.as_str()));
    assert_eq!(
        files
            .unlink_chat_uploads(&owner, &c1, &at(2030, 8))
            .await
            .expect("unlink"),
        0
    );
    assert_eq!(
        files
            .linked_uploads(&owner, &chat("c2"))
            .await
            .expect("linked")
            .len(),
        1
    );
    assert_eq!(
        files
            .get(&owner, &out1.id)
            .await
            .expect("get")
            .expect("out1")
            .unlinked_at,
        None
    );

    // Usage: live files per user, by tenant then user.
    insert(catalog, &file(&stranger, "b", 5_000_000_000, &at(2030, 9))).await;
    let usage = files.usage(Some(&owner.tenant)).await.expect("usage");
    let rows: Vec<(&str, &str, i64, i64)> = usage
        .iter()
        .map(|row| {
            (
                row.tenant.as_str(),
                row.user_id.as_str(),
                row.files,
                row.bytes,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("group-tenant", "alice", 6, 6),
            ("group-tenant", "bob", 1, 5_000_000_000)
        ]
    );
    let everyone = files.usage(None).await.expect("usage");
    let ours: Vec<_> = everyone
        .iter()
        .filter(|row| row.tenant == owner.tenant)
        .cloned()
        .collect();
    assert_eq!(ours, usage);
    let tenants: Vec<(&str, &str)> = everyone
        .iter()
        .map(|row| (row.tenant.as_str(), row.user_id.as_str()))
        .collect();
    let mut sorted = tenants.clone();
    sorted.sort();
    assert_eq!(tenants, sorted, "usage is ordered by tenant and user");
    assert!(
        files
            .usage(Some(&TenantId::from_stored("nobody")))
            .await
            .expect("usage")
            .is_empty()
    );
}

async fn retention(catalog: &Catalog) {
    let files = catalog.files();
    let owner = Owner::new("keep-tenant", "alice");
    // Times long before every other check's, so that only these files are old enough.
    let old: Vec<FileRecord> = (0..3)
        .map(|n| file(&owner, &format!("old{n}"), 1, &at(1990, 10 - n)))
        .collect();
    let recent = file(&owner, "recent", 1, &at(1990, 100));
    for record in old.iter().chain([&recent]) {
        insert(catalog, record).await;
    }
    let mine = |records: Vec<FileRecord>| -> Vec<String> {
        records
            .into_iter()
            .filter(|record| record.tenant == owner.tenant)
            .map(|record| record.name)
            .collect()
    };
    assert_eq!(
        mine(
            files
                .created_before(&at(1990, 50))
                .await
                .expect("created_before")
        ),
        ["old2", "old1", "old0"]
    );
    assert!(
        mine(
            files
                .created_before(&at(1990, 8))
                .await
                .expect("created_before")
        )
        .is_empty()
    );
    assert_eq!(
        mine(
            files
                .created_before(&at(1990, 10))
                .await
                .expect("created_before")
        ),
        ["old2", "old1"]
    );

    assert!(
        files
            .expire(&old[0].id, &at(1991, 2))
            .await
            .expect("expire")
    );
    assert!(
        !files
            .expire(&old[0].id, &at(1991, 3))
            .await
            .expect("expire"),
        "expired twice"
    );
    assert!(
        files
            .soft_delete(&owner, &old[1].id, &at(1991, 1))
            .await
            .expect("delete")
    );
    assert_eq!(
        mine(
            files
                .created_before(&at(1990, 50))
                .await
                .expect("created_before")
        ),
        ["old2"]
    );
    assert_eq!(
        mine(
            files
                .deleted_before(&at(1991, 2))
                .await
                .expect("deleted_before")
        ),
        ["old1"]
    );
    let deleted = mine(
        files
            .deleted_before(&at(1991, 5))
            .await
            .expect("deleted_before"),
    );
    assert_eq!(deleted, ["old1", "old0"], "oldest deletion first");

    // Purging removes deleted rows only.
    files.purge(&old[0].id).await.expect("purge");
    files.purge(&old[2].id).await.expect("purge");
    assert_eq!(
        mine(
            files
                .deleted_before(&at(1991, 5))
                .await
                .expect("deleted_before")
        ),
        ["old1"]
    );
    assert!(
        files.get(&owner, &old[2].id).await.expect("get").is_some(),
        "a live file was purged"
    );
    assert!(
        files
            .expire(&old[2].id, &at(1991, 6))
            .await
            .expect("expire")
    );
    assert_eq!(files.get_live(&old[2].id).await.expect("get_live"), None);
}

async fn attachments(catalog: &Catalog) {
    let attachments = catalog.attachments();
    let owner = Owner::new("att-tenant", "alice");
    let tenant = owner.tenant.clone();
    let (m1, m2) = (message("m1"), message("m2"));
    let stored: Vec<FileRecord> = (0..3)
        .map(|n| {
            in_message(
                file(&owner, &format!("f{n}"), 1, &at(2030, n)),
                "c1",
                "m1",
                FileSource::Upload,
            )
        })
        .collect();
    for record in &stored {
        insert(catalog, record).await;
    }
    let attach =
        |message_id: &MessageId, file: &FileRecord, name: &str, seconds| AttachmentRecord {
            tenant: tenant.clone(),
            message_id: message_id.clone(),
            file_id: file.id.clone(),
            name: name.to_owned(),
            created_at: at(2030, seconds),
        };
    let a0 = attach(&m1, &stored[0], "data.csv", 10);
    assert!(attachments.reserve(&a0).await.expect("reserve"));
    assert!(
        !attachments
            .reserve(&attach(&m1, &stored[0], "other.csv", 11))
            .await
            .expect("reserve"),
        "attached twice"
    );
    assert!(
        !attachments
            .reserve(&attach(&m1, &stored[1], "data.csv", 11))
            .await
            .expect("reserve"),
        "a taken name"
    );
    let a1 = attach(&m1, &stored[1], "data (1).csv", 11);
    assert!(attachments.reserve(&a1).await.expect("reserve"));
    let elsewhere = attach(&m2, &stored[1], "data.csv", 12);
    assert!(
        attachments.reserve(&elsewhere).await.expect("reserve"),
        "names are per message"
    );
    assert_eq!(
        attachments
            .get(&tenant, &m1, &stored[0].id)
            .await
            .expect("get"),
        Some(a0.clone())
    );
    assert_eq!(
        attachments
            .get(&tenant, &m2, &stored[0].id)
            .await
            .expect("get"),
        None
    );

    // Renames refuse a name a live file's attachment holds.
    assert!(
        !attachments
            .rename(&tenant, &m1, &stored[1].id, "data.csv")
            .await
            .expect("rename")
    );
    assert!(
        attachments
            .rename(&tenant, &m1, &stored[1].id, "renamed.csv")
            .await
            .expect("rename")
    );
    let a1 = AttachmentRecord {
        name: "renamed.csv".to_owned(),
        ..a1
    };
    assert_eq!(
        attachments
            .get(&tenant, &m1, &stored[1].id)
            .await
            .expect("get"),
        Some(a1.clone())
    );

    // A deleted file's attachment stays, but its name is free.
    assert!(
        catalog
            .files()
            .soft_delete(&owner, &stored[0].id, &at(2030, 20))
            .await
            .expect("delete")
    );
    assert_eq!(
        attachments
            .of_message(&tenant, &m1)
            .await
            .expect("of_message"),
        [a0.clone(), a1.clone()]
    );
    assert_eq!(
        attachments
            .live_of_message(&tenant, &m1)
            .await
            .expect("live"),
        [a1.clone()]
    );
    let a2 = attach(&m1, &stored[2], "data.csv", 21);
    assert!(
        attachments.reserve(&a2).await.expect("reserve"),
        "a deleted file's name is free"
    );
    assert!(
        !attachments
            .rename(&tenant, &m1, &stored[1].id, "data.csv")
            .await
            .expect("rename")
    );
    assert_eq!(
        attachments
            .live_of_message(&tenant, &m1)
            .await
            .expect("live"),
        [a1.clone(), a2.clone()]
    );

    assert_eq!(
        attachments
            .of_file(&tenant, &stored[1].id)
            .await
            .expect("of_file"),
        [a1.clone(), elsewhere.clone()]
    );
    assert!(
        attachments
            .of_file(&TenantId::from_stored("nobody"), &stored[1].id)
            .await
            .expect("of_file")
            .is_empty()
    );

    attachments
        .forget_message(&tenant, &m1)
        .await
        .expect("forget");
    assert!(
        attachments
            .of_message(&tenant, &m1)
            .await
            .expect("of_message")
            .is_empty()
    );
    assert_eq!(
        attachments
            .of_message(&tenant, &m2)
            .await
            .expect("of_message"),
        [elsewhere]
    );
}
