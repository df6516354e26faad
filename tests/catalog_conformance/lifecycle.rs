//! The checks of the groups of files (by run, message and chat), usage, retention, and the
//! `attachments` and `leases` tables.

use super::*;
use codebox::catalog::AttachmentRecord;

pub async fn file_groups(catalog: &Catalog) {
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

pub async fn retention(catalog: &Catalog) {
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

pub async fn attachments(catalog: &Catalog) {
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
        std::slice::from_ref(&a1)
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

/// Leases: one holder at a time, renewed by it, taken over only once lapsed, and racing
/// instances never both win.
pub async fn leases(catalog: &Catalog) {
    let leases = catalog.leases();
    let at = |minutes: i64| {
        codebox::catalog::format_time(
            time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes),
        )
    };
    let (now, soon, later) = (at(0), at(5), at(10));
    assert!(
        leases
            .acquire("duty", "a", (&now, &soon))
            .await
            .expect("take")
    );
    assert!(
        !leases
            .acquire("duty", "b", (&now, &soon))
            .await
            .expect("refused")
    );
    assert!(
        leases
            .acquire("duty", "a", (&now, &later))
            .await
            .expect("renew")
    );
    assert_eq!(
        leases.holder("duty").await.expect("holder"),
        Some(("a".to_owned(), later.clone()))
    );
    // Lapsed (its time is before "now"): another takes it over.
    let after = at(11);
    assert!(
        leases
            .acquire("duty", "b", (&after, &at(15)))
            .await
            .expect("take over")
    );
    assert!(
        !leases
            .acquire("duty", "a", (&after, &at(15)))
            .await
            .expect("refused")
    );
    // Released by its holder alone.
    leases.release("duty", "a").await.expect("not a's");
    assert!(leases.holder("duty").await.expect("holder").is_some());
    leases.release("duty", "b").await.expect("release");
    assert_eq!(leases.holder("duty").await.expect("holder"), None);
    // Eight instances race for a new lease: exactly one wins.
    let racers = (0..8).map(|index| {
        let catalog = catalog.clone();
        let (now, soon) = (now.clone(), soon.clone());
        tokio::spawn(async move {
            catalog
                .leases()
                .acquire("raced", &format!("racer-{index}"), (&now, &soon))
                .await
                .expect("acquire")
        })
    });
    let won = futures::future::join_all(racers)
        .await
        .into_iter()
        .filter(|won| *won.as_ref().expect("join"))
        .count();
    assert_eq!(won, 1);
}
