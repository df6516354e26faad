//! The checks of the `files` table's records: each one's fields, quotas, 64-bit sizes, the
//! unique names of a user's workspace, and the owner's listing with its filters and pages.

use super::*;
use codebox::catalog::{CatalogError, FileQuery, QuotaScope, StoredBytes};

pub async fn records(catalog: &Catalog) {
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

pub async fn quotas(catalog: &Catalog) {
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

/// Inserts that race for the room of one file: one gets it, whatever the database.
pub async fn concurrent_quotas(catalog: &Catalog) {
    let owner = Owner::new("race-tenant", "alice");
    // Connections opened beforehand, so that the inserts start together.
    let pings = (0..12).map(|_| {
        let catalog = catalog.clone();
        tokio::spawn(async move { catalog.ping().await })
    });
    for ping in futures::future::join_all(pings).await {
        ping.expect("the ping's task").expect("ping");
    }
    for (round, quota) in [
        StoredQuota {
            user: Some(10),
            tenant: None,
        },
        StoredQuota {
            user: None,
            tenant: Some(30),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let owner = Owner::new(owner.tenant.as_str(), format!("user-{round}"));
        let inserts = (0..12).map(|n| {
            let catalog = catalog.clone();
            let record = file(
                &owner,
                &format!("r{round}-{n}"),
                10 + 10 * round as i64,
                &at(2030, n),
            );
            tokio::spawn(async move { catalog.files().insert(&record, quota).await })
        });
        let mut kept = 0;
        for insert in futures::future::join_all(inserts).await {
            match insert.expect("the insert's task") {
                Ok(()) => kept += 1,
                Err(CatalogError::QuotaExceeded { .. }) => {}
                Err(other) => panic!("an insert failed: {other}"),
            }
        }
        assert_eq!(kept, 1, "round {round}: inserts racing for one file's room");
    }
    let files = catalog.files();
    let bytes = files
        .stored_bytes(&owner.tenant, &owner.user)
        .await
        .expect("stored_bytes");
    assert_eq!(bytes.tenant, 30);
}

pub async fn large_sizes(catalog: &Catalog) {
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

pub async fn workspace_names(catalog: &Catalog) {
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

pub async fn listing(catalog: &Catalog) {
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

pub async fn name_search(catalog: &Catalog) {
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
        "Été.csv",
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
        // Case is ignored for ASCII letters only, on both databases.
        ("Été.CSV", vec!["Été.csv"]),
        ("été", vec![]),
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
