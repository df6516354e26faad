//! The reaper on the real engine: idle containers and workspaces go, files expire and are
//! purged after their grace period, the disk quota evicts the least recently used workspace,
//! a dry run changes nothing, a workspace in use is never touched, and bytes no file names
//! are swept by a pass over every tenant.

mod common;

use std::time::Duration;

use common::{TestEnv, msg_id};

async fn container_exists(workspace_id: &str) -> bool {
    tokio::process::Command::new("docker")
        .args(["inspect", &format!("codebox-{workspace_id}")])
        .output()
        .await
        .map(|output| output.status.success())
        .unwrap_or(false)
}

async fn workspace_id(env: &TestEnv, message_id: &str) -> String {
    env.supervisor
        .catalog()
        .messages()
        .get(&env.owner.tenant, &msg_id(message_id))
        .await
        .expect("catalog")
        .expect("message")
        .workspace_id
        .into()
}

#[tokio::test]
async fn idle_containers_and_workspaces_go_files_stay() {
    let env = TestEnv::with_config(|config| {
        // A plain data/ folder, so that the bytes freed are the files' own blocks; a
        // loop-mounted one is counted by its image file (see `containment.rs`).
        config.sandbox.disk_limit = codebox::config::DiskLimit::Watchdog;
        config.retention.container_idle = Duration::ZERO;
        config.retention.workspace_idle = Duration::ZERO;
    })
    .await;
    let input = env.upload("in.csv", b"a\n1\n").await;
    let report = env
        .run(
            "m-idle",
            "open('/mnt/data/out.csv', 'w').write('x')",
            &[&input],
        )
        .await;
    let output = report.files[0].clone();
    let workspace = workspace_id(&env, "m-idle").await;
    let data = env.data_dir_of("m-idle").await;
    assert!(container_exists(&workspace).await);

    // Removing the folder frees the code's file and the attachment's link; the attachment
    // itself is a hard link of the stored blob, which stays.
    let allocated = |path: std::path::PathBuf| {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::symlink_metadata(&path).expect("lstat"))
            * 512
    };
    let freed = allocated(data.join("out.csv")) + allocated(data.join("in.csv"));

    let dry = env.supervisor.reap(true).await.expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(dry.containers, vec![workspace.clone()]);
    assert_eq!(dry.workspaces, vec![workspace.clone()]);
    assert_eq!(dry.bytes_freed, freed);
    assert!(
        container_exists(&workspace).await,
        "a dry run removes nothing"
    );
    assert!(data.exists());

    let done = env.supervisor.reap(false).await.expect("reap");
    assert_eq!(done.containers, dry.containers);
    assert_eq!(done.workspaces, dry.workspaces);
    assert_eq!(done.bytes_freed, freed);
    assert!(!container_exists(&workspace).await);
    assert!(!data.exists());
    // Registered files outlive their workspace.
    assert_eq!(env.bytes_of(&output).await, b"x");

    // The message still works: a new workspace, and its attachment placed again.
    let again = env
        .run(
            "m-idle",
            "import os\nprint(sorted(os.listdir('/mnt/data')))",
            &[&input],
        )
        .await;
    assert_eq!(again.run.stdout, "['in.csv']\n", "{}", again.run.stderr);
}

#[tokio::test]
async fn files_expire_then_their_bytes_are_purged() {
    let env = TestEnv::with_config(|config| {
        config.retention.file_ttl = Some(Duration::ZERO);
        config.retention.deleted_file_grace = Duration::from_secs(3600);
    })
    .await;
    let file = env.upload("old.csv", b"old").await;
    let blob = env
        .supervisor
        .blobs()
        .local_path(&file.blob_key)
        .expect("local");
    let blob_bytes =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&blob).expect("blob")) * 512;

    let first = env.supervisor.reap(false).await.expect("reap");
    assert_eq!(first.files_expired, vec![file.id.clone()]);
    assert!(
        first.files_purged.is_empty(),
        "the grace period has not passed"
    );
    assert!(env.supervisor.file(&env.owner, &file.id).await.is_err());
    assert!(blob.exists(), "bytes are kept during the grace period");

    // A supervisor with no grace purges at once.
    let mut config = env.config.clone();
    config.retention.file_ttl = None;
    config.retention.deleted_file_grace = Duration::ZERO;
    let impatient = codebox::Supervisor::open(config).await.expect("open");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = impatient.reap(false).await.expect("reap");
    assert_eq!(second.files_purged, vec![file.id.clone()]);
    // What the disk gets back: the blocks of the blob, the last name of its bytes.
    assert_eq!(second.bytes_freed, blob_bytes);
    assert!(!blob.exists());
    assert!(
        impatient
            .reap(false)
            .await
            .expect("reap")
            .files_purged
            .is_empty()
    );
}

#[tokio::test]
async fn quota_evicts_least_recently_used_and_skips_busy_workspaces() {
    let env = TestEnv::with_config(|config| {
        // A plain data/ folder, so that the bytes freed are the files' own blocks; a
        // loop-mounted one is counted by its image file (see `containment.rs`).
        config.sandbox.disk_limit = codebox::config::DiskLimit::Watchdog;
        config.retention.max_workspace_bytes = Some(bytesize::ByteSize::kib(150));
    })
    .await;
    let write = "open('/mnt/data/blob.bin', 'wb').write(b'0' * 100 * 1024)";
    env.run("m-old", write, &[]).await;
    env.run("m-new", write, &[]).await;
    let old = workspace_id(&env, "m-old").await;
    let new = workspace_id(&env, "m-new").await;

    // Without contention the least recently used workspace goes, and that is enough.
    let report = env.supervisor.reap(false).await.expect("reap");
    assert_eq!(report.workspaces, vec![old.clone()], "{report:?}");
    assert!(!env.supervisor.workspaces().get(&old).expect("ws").exists());
    assert!(env.supervisor.workspaces().get(&new).expect("ws").exists());

    // A workspace a run holds is never touched, even over the quota.
    env.run("m-old", write, &[]).await;
    env.run("m-third", write, &[]).await;
    let third = workspace_id(&env, "m-third").await;
    let held = env.supervisor.workspaces().get(&new).expect("workspace");
    let lock = held.lock().expect("lock");
    let report = env.supervisor.reap(false).await.expect("reap");
    drop(lock);
    assert!(!report.workspaces.contains(&new), "{report:?}");
    assert!(held.exists());
    // The next least recently used idle ones went instead, until the rest fit.
    assert_eq!(
        report.workspaces,
        vec![old.clone(), third.clone()],
        "{report:?}"
    );
}

#[tokio::test]
async fn orphan_blobs_are_swept_by_a_pass_over_every_tenant_only() {
    let env = TestEnv::with_config(|config| {
        config.retention.orphan_blob_grace = Duration::ZERO;
    })
    .await;
    let kept = env.upload("kept.csv", b"kept").await;
    let deleted = env.upload("deleted.csv", b"deleted").await;
    env.supervisor
        .delete_file(&env.owner, &deleted.id)
        .await
        .expect("delete");
    // Bytes stored without a row, as a crash between the two steps leaves them; an
    // interrupted upload's staging file; and things codebox never names.
    let orphan = codebox::ids::BlobKey::for_file(&codebox::ids::FileId::new());
    env.supervisor
        .blobs()
        .put_stream(&orphan, &b"orphan"[..], 1024)
        .await
        .expect("orphan");
    let orphan_path = env.supervisor.blobs().local_path(&orphan).expect("local");
    let files = orphan_path.parent().expect("files folder").to_path_buf();
    let staging_key = codebox::ids::BlobKey::for_file(&codebox::ids::FileId::new());
    let staging = files.join(format!(
        "{}#3",
        staging_key.file_id().expect("file id").as_str()
    ));
    std::fs::write(&staging, b"half").expect("staging");
    let foreign = [files.join("notes.txt"), files.join("file_x")];
    for path in &foreign {
        std::fs::write(path, b"not ours").expect("foreign");
    }
    let shown = |path: &std::path::Path| {
        format!(
            "files/{}",
            path.file_name().expect("name").to_string_lossy()
        )
    };
    let mut expected = vec![orphan.to_string(), shown(&staging)];
    expected.sort();

    // A tenant's operator cannot know whose bytes they were: nothing is swept.
    let scoped = env
        .supervisor
        .reap_within(false, Some(&env.owner.tenant))
        .await
        .expect("scoped pass");
    assert!(scoped.blobs_swept.is_empty(), "{scoped:?}");
    assert!(orphan_path.exists() && staging.exists());

    let dry = env.supervisor.reap(true).await.expect("dry pass");
    let mut swept = dry.blobs_swept.clone();
    swept.sort();
    assert_eq!(swept, expected, "{dry:?}");
    assert!(
        orphan_path.exists() && staging.exists(),
        "a dry pass deletes nothing"
    );

    let done = env.supervisor.reap(false).await.expect("pass");
    let mut swept = done.blobs_swept.clone();
    swept.sort();
    assert_eq!(swept, expected, "{done:?}");
    assert!(done.bytes_freed > 0, "{done:?}");
    assert!(!orphan_path.exists() && !staging.exists());
    for path in &foreign {
        assert!(path.exists(), "{} is not codebox's", path.display());
    }
    // The files with rows keep their bytes, a deleted one's until its purge.
    assert_eq!(env.bytes_of(&kept).await, b"kept");
    let deleted_blob = env
        .supervisor
        .blobs()
        .local_path(&deleted.blob_key)
        .expect("local");
    assert!(
        deleted_blob.exists(),
        "a deleted file's bytes are the purge's"
    );

    // With the default grace, fresh orphans are left for later: they may be in flight.
    let patient = {
        let mut config = env.config.clone();
        config.retention.orphan_blob_grace = Duration::from_secs(3600);
        codebox::Supervisor::open(config).await.expect("open")
    };
    patient
        .blobs()
        .put_stream(&orphan, &b"again"[..], 1024)
        .await
        .expect("orphan again");
    let report = patient.reap(false).await.expect("patient pass");
    assert!(report.blobs_swept.is_empty(), "{report:?}");
    assert!(orphan_path.exists());
}

#[tokio::test]
async fn instances_sharing_a_catalog_reap_its_files_one_at_a_time() {
    // Two instances (two data folders) on one catalog file: the first pass takes the
    // reaper's lease, and while it holds it the other leaves expiry and purges to it.
    let first = TestEnv::with_config(|config| {
        config.retention.deleted_file_grace = std::time::Duration::ZERO;
    })
    .await;
    let catalog_url = first.config.catalog_url();
    let second = TestEnv::with_config(|config| {
        config.catalog.url = Some(catalog_url.clone());
        config.retention.deleted_file_grace = std::time::Duration::ZERO;
    })
    .await;
    assert_ne!(first.supervisor.instance(), second.supervisor.instance());
    let taken = first.supervisor.reap(false).await.expect("reap");
    assert_eq!(taken.files_left_to, None);

    let file = first.upload("gone.csv", b"a,b\n1,2\n").await;
    first
        .supervisor
        .delete_file(&first.owner, &file.id)
        .await
        .expect("delete");
    let left = second.supervisor.reap(false).await.expect("reap");
    assert_eq!(
        left.files_left_to.as_deref(),
        Some(first.supervisor.instance())
    );
    assert!(left.files_purged.is_empty(), "{left:?}");
    // A dry pass needs no lease: it reports what would go.
    let dry = second.supervisor.reap(true).await.expect("dry reap");
    assert_eq!(dry.files_purged, vec![file.id.clone()]);
    // The holder purges.
    let done = first.supervisor.reap(false).await.expect("reap");
    assert_eq!(done.files_purged, vec![file.id]);

    // Once the holder's lease lapses, the other instance takes it over.
    let catalog = second.supervisor.catalog();
    let lapsed =
        codebox::catalog::format_time(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
    assert!(
        catalog
            .leases()
            .acquire("reaper", first.supervisor.instance(), (&lapsed, &lapsed))
            .await
            .expect("set the lease to lapse")
    );
    let taken_over = second.supervisor.reap(false).await.expect("reap");
    assert_eq!(taken_over.files_left_to, None);
    let held = catalog.leases().holder("reaper").await.expect("holder");
    assert_eq!(
        held.map(|(holder, _)| holder).as_deref(),
        Some(second.supervisor.instance())
    );
}
