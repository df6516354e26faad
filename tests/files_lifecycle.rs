//! The lifecycle of attachments in the library, on the real engine: placing one never alters
//! the stored blob; deleting or expiring a file takes it out of every workspace without waiting
//! for a run, and spares what the code wrote; a file deleted after its run was accepted is not
//! placed; a workspace's size counts only what removing it frees; and a blob that cannot be
//! purged is neither counted nor forgotten.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{TestEnv, msg_id, request};

/// Bytes an entry takes on disk (links not followed).
fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .blocks()
        * 512
}

fn blob_path(env: &TestEnv, file: &codebox::catalog::FileRecord) -> std::path::PathBuf {
    env.supervisor
        .blobs()
        .local_path(&file.blob_key)
        .expect("local blob")
}

async fn workspace_of(env: &TestEnv, message_id: &str) -> codebox::workspace::Workspace {
    let message = env
        .supervisor
        .catalog()
        .messages()
        .get(&env.owner.tenant, &msg_id(message_id))
        .await
        .expect("catalog")
        .expect("message");
    env.supervisor
        .workspaces()
        .get(message.workspace_id.as_str())
        .expect("workspace")
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[tokio::test]
async fn placing_an_attachment_leaves_the_stored_blob_alone() {
    let env = TestEnv::new().await;
    let open = env.upload("open.csv", b"open\n").await;
    let private = env.upload("private.csv", b"private\n").await;
    // A blob store written under a strict umask keeps its files private.
    std::fs::set_permissions(
        blob_path(&env, &private),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let modes = || -> Vec<u32> {
        [&open, &private]
            .iter()
            .map(|file| {
                std::fs::metadata(blob_path(&env, file))
                    .expect("blob")
                    .mode()
            })
            .collect()
    };
    let before = modes();
    let report = env
        .run(
            "m-blob",
            "print(open('/mnt/data/open.csv').read() + open('/mnt/data/private.csv').read(), end='')",
            &[&open, &private],
        )
        .await;
    assert_eq!(
        report.run.stdout, "open\nprivate\n",
        "{}",
        report.run.stderr
    );
    assert_eq!(modes(), before, "the blobs' modes");
    assert_eq!(before[1] & 0o777, 0o600);
    // The world-readable blob is shared with the workspace; the private one is copied.
    let links = |file| {
        std::fs::metadata(blob_path(&env, file))
            .expect("blob")
            .nlink()
    };
    assert_eq!((links(&open), links(&private)), (2, 1));
}

#[tokio::test]
async fn deleting_a_file_does_not_wait_for_a_run_and_spares_what_the_code_wrote() {
    let env = TestEnv::new().await;
    let x = env.upload("x.csv", b"x\n").await;
    let y = env.upload("y.csv", b"y\n").await;
    // The code replaces y.csv's link with a file of its own, and leaves a link of its own
    // that points at x.csv's input under another name.
    let report = env
        .run(
            "m-del",
            "import os\nos.remove('/mnt/data/y.csv')\nopen('/mnt/data/y.csv', 'w').write('mine')\n\
             os.symlink('../inputs/x.csv', '/mnt/data/alias.csv')",
            &[&x, &y],
        )
        .await;
    assert_eq!(report.run.stderr, "");
    let workspace = workspace_of(&env, "m-del").await;

    // A run in progress holds the workspace's lock: the delete must not wait for it.
    let held = workspace.lock().expect("lock");
    for file in [&x, &y] {
        tokio::time::timeout(
            Duration::from_secs(5),
            env.supervisor.delete_file(&env.owner, &file.id),
        )
        .await
        .expect("the delete does not wait for the lock")
        .expect("delete");
    }
    assert!(!exists(&workspace.inputs.join("x.csv")));
    assert!(!exists(&workspace.data.join("x.csv")));
    assert!(!exists(&workspace.inputs.join("y.csv")));
    assert_eq!(
        std::fs::read(workspace.data.join("y.csv")).expect("the code's own file stays"),
        b"mine"
    );
    // A link the code made is its own; it now points at nothing.
    assert!(exists(&workspace.data.join("alias.csv")));
    assert!(std::fs::metadata(workspace.data.join("alias.csv")).is_err());
    drop(held);
    assert_eq!(
        std::fs::metadata(blob_path(&env, &x))
            .expect("blob")
            .nlink(),
        1
    );
}

#[tokio::test]
async fn a_file_deleted_after_its_run_was_accepted_is_not_placed() {
    let env = TestEnv::new().await;
    let file = env.upload("late.csv", b"late\n").await;
    let accepted = env
        .supervisor
        .accept(
            &env.owner,
            request(
                "m-late",
                "import os\nprint(os.listdir('/mnt/data'), os.listdir('/mnt/inputs'))",
                &[&file],
            ),
        )
        .await
        .expect("accept");
    env.supervisor
        .delete_file(&env.owner, &file.id)
        .await
        .expect("delete");
    let report = env
        .supervisor
        .carry_out(accepted, None)
        .await
        .expect("carry out");
    assert_eq!(report.run.stdout, "[] []\n", "{}", report.run.stderr);
    assert_eq!(
        std::fs::metadata(blob_path(&env, &file))
            .expect("blob")
            .nlink(),
        1
    );
}

#[tokio::test]
async fn an_expired_attachment_is_gone_from_its_workspaces() {
    let env = TestEnv::with_config(|config| {
        config.retention.file_ttl = Some(Duration::from_secs(3600));
    })
    .await;
    let file = env.upload("old.csv", b"old\n").await;
    env.run("m-exp", "print(1)", &[&file]).await;
    let workspace = workspace_of(&env, "m-exp").await;
    assert!(exists(&workspace.inputs.join("old.csv")));

    let mut config = env.config.clone();
    config.retention.file_ttl = Some(Duration::ZERO);
    let strict = codebox::Supervisor::open(config).await.expect("open");
    let report = strict.reap(false).await.expect("reap");
    assert_eq!(report.files_expired, vec![file.id.clone()]);
    assert!(!exists(&workspace.inputs.join("old.csv")));
    assert!(!exists(&workspace.data.join("old.csv")));
    let after = env
        .run(
            "m-exp",
            "import os\nprint(os.listdir('/mnt/data'), os.listdir('/mnt/inputs'))",
            &[],
        )
        .await;
    assert_eq!(after.run.stdout, "[] []\n");
}

#[tokio::test]
async fn workspace_bytes_count_only_what_removing_it_frees() {
    // A plain data/ folder, so that each file's blocks can be summed here; a loop-mounted one
    // is counted by its image file (see `containment.rs`).
    let env = TestEnv::with_config(|config| {
        config.sandbox.disk_limit = codebox::config::DiskLimit::Watchdog;
    })
    .await;
    let big = env.upload("big.bin", &vec![7u8; 1024 * 1024]).await;
    let private = env.upload("private.bin", &vec![8u8; 64 * 1024]).await;
    // A private blob cannot be shared with the sandbox: it is copied, and the copy counts.
    std::fs::set_permissions(
        blob_path(&env, &private),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    env.run(
        "m-bytes",
        "import os\nopen('/mnt/data/out.bin', 'wb').write(b'1' * 10000)\n\
         os.link('/mnt/data/out.bin', '/mnt/data/twin.bin')",
        &[&big, &private],
    )
    .await;
    let workspace = workspace_of(&env, "m-bytes").await;
    assert_eq!(
        std::fs::metadata(workspace.inputs.join("big.bin"))
            .expect("input")
            .nlink(),
        2,
        "the big attachment is shared with the blob store"
    );
    // The hard-linked attachment is not freed by removing the folder; the copy and the
    // code's file (counted once for its two names) and the links are.
    let expected = allocated(&workspace.data.join("out.bin"))
        + allocated(&workspace.inputs.join("private.bin"))
        + allocated(&workspace.data.join("big.bin"))
        + allocated(&workspace.data.join("private.bin"));
    assert_eq!(workspace.bytes(), expected);

    let mut config = env.config.clone();
    config.retention.workspace_idle = Duration::ZERO;
    let eager = codebox::Supervisor::open(config).await.expect("open");
    let report = eager.reap(false).await.expect("reap");
    assert_eq!(report.workspaces, vec![workspace.id.clone()]);
    assert_eq!(report.bytes_freed, expected);
    assert!(blob_path(&env, &big).exists());
}

#[tokio::test]
async fn a_blob_that_cannot_be_purged_is_neither_counted_nor_forgotten() {
    let env = TestEnv::with_config(|config| {
        config.retention.deleted_file_grace = Duration::ZERO;
    })
    .await;
    let file = env.upload("stuck.csv", b"stuck\n").await;
    let blob = blob_path(&env, &file);
    let blob_bytes = allocated(&blob);
    env.supervisor
        .delete_file(&env.owner, &file.id)
        .await
        .expect("delete");
    // A folder where the blob was cannot be deleted as a file.
    let aside = env.scratch().join("aside");
    std::fs::rename(&blob, &aside).expect("move the blob aside");
    std::fs::create_dir(&blob).expect("plant a folder");
    std::fs::write(blob.join("keep"), b"x").expect("fill it");
    tokio::time::sleep(Duration::from_millis(5)).await;

    let failed = env
        .supervisor
        .reap(false)
        .await
        .expect("a failed purge does not fail the pass");
    assert_eq!(failed.files_purged, Vec::<String>::new());
    assert_eq!(failed.bytes_freed, 0);

    std::fs::remove_dir_all(&blob).expect("remove the folder");
    std::fs::rename(&aside, &blob).expect("put the blob back");
    let retried = env.supervisor.reap(false).await.expect("reap");
    assert_eq!(retried.files_purged, vec![file.id.clone()]);
    assert_eq!(retried.bytes_freed, blob_bytes);
    assert!(!blob.exists());
}
