//! The run pipeline end to end on the real Docker engine, a real SQLite file and the local
//! blob folder: attachments, registration, isolation, limits and restarts.

mod common;

use std::time::Duration;

use codebox::Error;
use codebox::RunReport;
use codebox::catalog::{FileSource, Owner, RunStatus};
use codebox::ids::{ChatId, MessageId};
use codebox::supervisor::UploadMeta;
use common::{TestEnv, chat_id, msg_id, request};
use sha2::{Digest, Sha256};

const CSV: &[u8] = b"name,amount\napples,3\npears,5\n";

/// Asserts that a run ended with exactly `status`, showing the whole run when it did not.
fn assert_status(report: &RunReport, status: RunStatus) {
    assert_eq!(report.run.status, status, "{:?}", report.run);
}

#[tokio::test]
async fn attachment_is_readable_and_read_only() {
    let env = TestEnv::new().await;
    let data = env.upload("data.csv", CSV).await;
    let report = env
        .run(
            "m-read",
            r#"
import os
print(open('/mnt/data/data.csv').read(), end='')
print('link:', os.readlink('/mnt/data/data.csv'))
open('/mnt/data/data.csv', 'w').write('overwritten')
"#,
            &[&data],
        )
        .await;
    let run = &report.run;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert_eq!(run.exit_code, Some(1), "{run:?}");
    assert!(
        run.stdout.starts_with("name,amount\napples,3"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("link: ../inputs/data.csv"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("Read-only file system"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("codebox: attached files are read-only"),
        "{}",
        run.stderr
    );
    assert!(report.files.is_empty());
    assert_eq!(
        env.bytes_of(&data).await,
        CSV,
        "the stored original is unchanged"
    );
    let on_host = env.data_dir_of("m-read").await.join("data.csv");
    assert_eq!(std::fs::read(on_host).expect("read"), CSV);
}

#[tokio::test]
async fn xlsx_from_attached_csv_is_registered_with_metadata_and_bytes() {
    let env = TestEnv::new().await;
    let data = env.upload("data.csv", CSV).await;
    let report = env
        .run(
            "m-xlsx",
            r#"
import csv, openpyxl
workbook = openpyxl.Workbook()
for row in csv.reader(open('/mnt/data/data.csv')):
    workbook.active.append(row)
workbook.save('/mnt/data/report.xlsx')
print('saved /mnt/data/report.xlsx')
"#,
            &[&data],
        )
        .await;
    let run = &report.run;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.stderr);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(report.files.len(), 1, "{:?}", report.files);
    let file = &report.files[0];
    assert_eq!(file.name, "report.xlsx");
    assert_eq!(file.path, "/mnt/data/report.xlsx");
    assert_eq!(
        file.content_type,
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    assert_eq!(file.source, FileSource::CodeExecution);
    assert_eq!(file.tenant, "tenant-a");
    assert_eq!(file.user_id, "alice");
    assert_eq!(file.chat_id.as_ref().map(ChatId::as_str), Some("chat-1"));
    assert_eq!(
        file.message_id.as_ref().map(MessageId::as_str),
        Some("m-xlsx")
    );
    assert_eq!(file.run_id.as_ref(), Some(&run.id));
    assert_eq!(file.derived_from, None);
    assert!(file.deleted_at.is_none());

    let on_host = std::fs::read(env.data_dir_of("m-xlsx").await.join("report.xlsx"))
        .expect("the workspace keeps the file");
    let stored = env.bytes_of(file).await;
    assert_eq!(stored, on_host);
    assert!(stored.starts_with(b"PK"), "an xlsx is a zip file");
    assert_eq!(file.size as usize, stored.len());
    assert_eq!(file.sha256, hex::encode(Sha256::digest(&stored)));

    // The catalog answers for the file and the run.
    let again = env
        .supervisor
        .file(&env.owner, &file.id)
        .await
        .expect("file");
    assert_eq!(&again, file);
    let looked_up = env
        .supervisor
        .run_report(&env.owner, &run.id)
        .await
        .expect("run");
    assert_eq!(looked_up.run, report.run);
    assert_eq!(looked_up.files, report.files);
}

#[tokio::test]
async fn replacing_an_input_registers_a_derived_file() {
    let env = TestEnv::new().await;
    let data = env.upload("data.csv", CSV).await;
    let report = env
        .run(
            "m-derived",
            r#"
import os
rows = open('/mnt/data/data.csv').read() + 'plums,7\n'
os.remove('/mnt/data/data.csv')
open('/mnt/data/data.csv', 'w').write(rows)
"#,
            &[&data],
        )
        .await;
    assert_eq!(
        report.run.status,
        RunStatus::Succeeded,
        "{}",
        report.run.stderr
    );
    assert_eq!(report.files.len(), 1);
    let derived = &report.files[0];
    assert_eq!(derived.name, "data.csv");
    assert_eq!(derived.derived_from.as_ref(), Some(&data.id));
    assert!(env.bytes_of(derived).await.ends_with(b"plums,7\n"));
    assert_eq!(env.bytes_of(&data).await, CSV, "the original is kept");
}

#[tokio::test]
async fn only_tracked_extensions_are_registered() {
    let env = TestEnv::new().await;
    let report = env
        .run(
            "m-ext",
            r#"
import os
os.makedirs('/mnt/data/sub/deeper')
for name in ['notes.txt', 'plot.png', 'table.CSV', 'sub/deeper/summary.pdf', 'archive.csv.bak']:
    open('/mnt/data/' + name, 'w').write('x')
"#,
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    let mut paths: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/mnt/data/sub/deeper/summary.pdf", "/mnt/data/table.CSV"]
    );
    assert!(
        report.run.truncated.is_empty(),
        "{:?}",
        report.run.truncated
    );
}

#[tokio::test]
async fn planted_symlinks_are_neither_registered_nor_read() {
    let env = TestEnv::new().await;
    // A secret on the host, at a path the sandbox can name but not see.
    let secret = env.scratch().join("secret.csv");
    std::fs::write(&secret, "top,secret\n").expect("write secret");
    let code = format!(
        r#"
import os
os.symlink({secret:?}, '/mnt/data/host.csv')
os.symlink('/etc/passwd', '/mnt/data/passwd.csv')
os.symlink('/etc', '/mnt/data/etc')
os.symlink({scratch:?}, '/mnt/data/scratch')
"#,
        secret = secret.display().to_string(),
        scratch = env.scratch().display().to_string(),
    );
    let report = env.run("m-links", &code, &[]).await;
    assert_status(&report, RunStatus::Succeeded);
    assert!(report.files.is_empty(), "{:?}", report.files);
    assert_eq!(
        truncations(&report),
        [
            "/mnt/data/host.csv: a symbolic link, not a file: not registered",
            "/mnt/data/passwd.csv: a symbolic link, not a file: not registered",
        ]
    );
    // Nothing anywhere in the blob store holds the secret.
    for entry in walkdir::WalkDir::new(env.config.data_dir.join("blobs")) {
        let entry = entry.expect("walk");
        if entry.file_type().is_file() {
            let bytes = std::fs::read(entry.path()).expect("read");
            assert!(
                !bytes.windows(6).any(|w| w == b"secret"),
                "{:?}",
                entry.path()
            );
        }
    }
}

#[tokio::test]
async fn attachments_cannot_be_hard_linked_into_the_workspace() {
    let env = TestEnv::new().await;
    let data = env.upload("data.csv", CSV).await;
    // The attachment is a hard link of the stored blob: a hard link of it in /mnt/data would
    // share the stored bytes' inode with a folder the code may write to.
    let code = r#"
import errno, os, shutil
def link(source, target, **options):
    try:
        os.link(source, target, **options)
        print(target, 'linked')
    except OSError as error:
        print(target, errno.errorcode[error.errno])
link('/mnt/inputs/data.csv', '/mnt/data/direct.csv')
link(os.path.realpath('/mnt/data/data.csv'), '/mnt/data/resolved.csv')
# Through the data/ symlink, followed (linkat with AT_SYMLINK_FOLLOW, which Python uses only
# when given folder descriptors) and not followed (the link itself).
data = os.open('/mnt/data', os.O_RDONLY)
link('data.csv', 'through.csv', src_dir_fd=data, dst_dir_fd=data, follow_symlinks=True)
link('/mnt/data/data.csv', '/mnt/data/itself.csv', follow_symlinks=False)
shutil.copy('/mnt/data/data.csv', '/mnt/data/copy.csv')
print(sorted(os.listdir('/mnt/data')))
"#;
    let report = env.run("m-hard", code, &[&data]).await;
    assert_status(&report, RunStatus::Succeeded);
    // The inputs are another mount than /mnt/data, so the kernel refuses a link to the input
    // (EXDEV) whichever way it is named. The data/ symlink itself belongs to the supervisor:
    // with fs.protected_hardlinks (the usual setting) the code may not link it (EPERM); without
    // it, the new name is one more symlink, recorded as such and not registered.
    let protected = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
        .expect("fs.protected_hardlinks")
        .trim()
        == "1";
    let (itself, listed) = if protected {
        ("EPERM", "['copy.csv', 'data.csv']")
    } else {
        ("linked", "['copy.csv', 'data.csv', 'itself.csv']")
    };
    assert_eq!(
        report.run.stdout,
        format!(
            "/mnt/data/direct.csv EXDEV\n\
             /mnt/data/resolved.csv EXDEV\n\
             through.csv EXDEV\n\
             /mnt/data/itself.csv {itself}\n\
             {listed}\n"
        ),
        "{}",
        report.run.stderr
    );
    // Only the copy, a new file of the code's, is registered.
    let paths: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["/mnt/data/copy.csv"]);
    assert_eq!(report.files[0].derived_from, None);
    assert_eq!(env.bytes_of(&report.files[0]).await, CSV);
    let expected: &[&str] = if protected {
        &[]
    } else {
        &["/mnt/data/itself.csv: a symbolic link, not a file: not registered"]
    };
    assert_eq!(truncations(&report), expected);
    assert_eq!(
        env.bytes_of(&data).await,
        CSV,
        "the stored original is unchanged"
    );
}

/// The host folder mounted at /mnt/data for a message of another owner.
async fn data_dir_of(env: &TestEnv, owner: &Owner, message_id: &str) -> std::path::PathBuf {
    let message = env
        .supervisor
        .catalog()
        .messages()
        .get(&owner.tenant, &msg_id(message_id))
        .await
        .expect("catalog")
        .expect("message exists");
    env.supervisor
        .workspaces()
        .get(message.workspace_id.as_str())
        .expect("workspace")
        .data
}

#[tokio::test]
async fn folders_swapped_for_links_never_list_another_tenants_files() {
    let env = TestEnv::new().await;
    // Another tenant's workspace, holding files whose names must stay private.
    let victim = Owner::new("tenant-b", "carol");
    let report = env
        .supervisor
        .run(
            &victim,
            request(
                "m-victim",
                r#"
import os
os.makedirs('/mnt/data/victim-folder')
for i in range(20):
    open(f'/mnt/data/victim-secret-{i}.csv', 'w').write('private')
open('/mnt/data/victim-folder/victim-secret-deep.csv', 'w').write('private')
"#,
                &[],
            ),
            None,
        )
        .await
        .expect("the victim's run");
    assert_status(&report, RunStatus::Succeeded);
    let victim_data = data_dir_of(&env, &victim, "m-victim").await;

    // The code swaps folders with links to the victim's folder, atomically and without pause
    // (renameat2 with RENAME_EXCHANGE). First it does so from a process it leaves behind after
    // killing the wrapper, to race the snapshot that closes the run; where every process of a
    // run is swept before that snapshot, then in the run itself while the supervisor's walk is
    // taken beside it.
    let code = |leave_behind: &str| {
        format!(
            r#"
import ctypes, os, time
os.chdir('/mnt/data')
if not os.path.lexists('sub00'):
    for i in range(16):
        os.mkdir(f'sub{{i:02}}')
        for j in range(50):
            open(f'sub{{i:02}}/own{{j:02}}.txt', 'w').close()
        os.symlink({victim:?}, f'link{{i:02}}')
pairs = [(f'sub{{i:02}}'.encode(), f'link{{i:02}}'.encode()) for i in range(16)]
libc = ctypes.CDLL(None, use_errno=True)
def swap(seconds):
    end = time.monotonic() + seconds
    swaps = 0
    while time.monotonic() < end:
        for a, b in pairs:
            if libc.renameat2(-100, a, -100, b, 2) != 0:
                raise OSError(ctypes.get_errno(), 'renameat2')
            swaps += 1
    return swaps
if {leave_behind}:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open('/dev/null', os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            swap(8)
            os._exit(0)
        os._exit(0)
    os.wait()
    print('swapping', flush=True)
    os.kill(os.getppid(), 9)
else:
    open('swapping', 'w').close()
    print('swapped', swap(4) > 1000)
"#,
            victim = victim_data.display().to_string(),
        )
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        let report = env.run("m-swapper", &code("True"), &[]).await;
        // The code's parent is the container's init, which ignores the kill: the run ends
        // normally, and the swapper it left behind is swept.
        assert_status(&report, RunStatus::Succeeded);
        assert_eq!(report.run.stdout, "swapping\n", "{:?}", report.run);
        seen.extend(report.files.iter().map(|file| file.path.clone()));
        seen.extend(report.run.truncated.iter().map(|t| t.path.clone()));
    }

    // The run that swaps in the foreground, and the supervisor's walk of its folder beside it.
    let limits = codebox::snapshot::SnapshotLimits {
        max_depth: env.config.limits.max_depth,
        max_entries: env.config.limits.max_snapshot_entries,
    };
    let racing = async {
        let data = env.data_dir_of("m-swapper").await;
        while !data.join("swapping").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut taken = 0;
        let mut listed = Vec::new();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let folder = data.clone();
            let snapshot =
                tokio::task::spawn_blocking(move || codebox::snapshot::take(&folder, limits))
                    .await
                    .expect("join")
                    .expect("snapshot");
            taken += 1;
            listed.extend(
                snapshot
                    .entries
                    .keys()
                    .map(|path| path.to_string_lossy().into_owned()),
            );
        }
        (taken, listed)
    };
    let in_the_run = code("False");
    let (report, (taken, listed)) = tokio::join!(env.run("m-swapper", &in_the_run, &[]), racing);
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(report.run.stdout, "swapped True\n", "{:?}", report.run);
    assert!(taken > 10, "only {taken} snapshots raced the swaps");
    seen.extend(report.files.iter().map(|file| file.path.clone()));
    seen.extend(report.run.truncated.iter().map(|t| t.path.clone()));
    seen.extend(listed);
    seen.sort();
    seen.dedup();
    let leaked: Vec<&String> = seen.iter().filter(|path| path.contains("victim")).collect();
    assert!(
        leaked.is_empty(),
        "another tenant's names leaked: {leaked:?}"
    );
}

#[tokio::test]
async fn timeout_stops_the_code_and_what_it_started() {
    let env = TestEnv::new().await;
    let mut slow = request(
        "m-timeout",
        r#"
import subprocess, time
subprocess.Popen(['sleep', '600'])
print('started', flush=True)
while True:
    time.sleep(0.1)
"#,
        &[],
    );
    slow.timeout = Some(Duration::from_secs(2));
    let report = env
        .supervisor
        .run(&env.owner, slow, None)
        .await
        .expect("run");
    let run = &report.run;
    assert_eq!(run.status, RunStatus::TimedOut);
    assert_eq!(run.stdout, "started\n");
    assert!(
        run.reason.as_deref().unwrap_or_default().contains("2s"),
        "{run:?}"
    );
    assert!(
        run.duration_ms >= 2000 && run.duration_ms < 10_000,
        "{}",
        run.duration_ms
    );

    // The next run of the message finds no process left from the first.
    let report = env
        .run(
            "m-timeout",
            r#"
import os
names = [open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()]
print(sum(1 for n in names if n.startswith(b'sleep\x00600')))
"#,
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(report.run.stdout.trim(), "0", "{}", report.run.stderr);
}

#[tokio::test]
async fn memory_limit_kills_with_a_reason() {
    let env = TestEnv::with_config(|config| {
        config.sandbox.memory = bytesize::ByteSize::mib(64);
    })
    .await;
    let report = env
        .run(
            "m-oom",
            "hog = bytearray(512 * 1024 * 1024)\nprint('survived')",
            &[],
        )
        .await;
    let run = &report.run;
    assert_eq!(run.status, RunStatus::Killed, "{run:?}");
    assert!(
        run.reason
            .as_deref()
            .unwrap_or_default()
            .contains("memory limit"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("survived"));
    // The sandbox is still usable afterwards.
    let report = env.run("m-oom", "print('fine')", &[]).await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(report.run.stdout, "fine\n");
}

#[tokio::test]
async fn output_is_capped_with_flags() {
    let env = TestEnv::with_config(|config| {
        config.limits.max_output_bytes = bytesize::ByteSize::b(1000);
    })
    .await;
    let report = env
        .run(
            "m-output",
            "import sys\nsys.stdout.write('o' * 100000)\nsys.stderr.write('e' * 10)",
            &[],
        )
        .await;
    let run = &report.run;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.stdout, "o".repeat(1000));
    assert!(run.stdout_truncated);
    assert_eq!(run.stderr, "e".repeat(10));
    assert!(!run.stderr_truncated);
}

#[tokio::test]
async fn later_runs_of_a_message_share_its_workspace() {
    let env = TestEnv::new().await;
    let first = env
        .run(
            "m-shared",
            "open('/mnt/data/a.csv', 'w').write('1\\n')",
            &[],
        )
        .await;
    assert_status(&first, RunStatus::Succeeded);
    assert_eq!(first.files.len(), 1);
    let second = env
        .run(
            "m-shared",
            "n = open('/mnt/data/a.csv').read()\nopen('/mnt/data/b.csv', 'w').write(n + '2\\n')",
            &[],
        )
        .await;
    assert_eq!(
        second.run.status,
        RunStatus::Succeeded,
        "{}",
        second.run.stderr
    );
    let names: Vec<&str> = second.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["b.csv"],
        "an unchanged file is not registered again"
    );
    assert_eq!(env.bytes_of(&second.files[0]).await, b"1\n2\n");
}

#[tokio::test]
async fn messages_cannot_see_each_other() {
    let env = TestEnv::new().await;
    let mine = env.upload("private.csv", b"mine\n").await;
    let alpha = env
        .run(
            "m-alpha",
            "open('/mnt/data/alpha.csv', 'w').write('alpha')",
            &[&mine],
        )
        .await;
    assert_status(&alpha, RunStatus::Succeeded);
    let report = env
        .run(
            "m-beta",
            r#"
import os
print(sorted(os.listdir('/mnt/data')), sorted(os.listdir('/mnt/inputs')))
print(os.path.exists('/mnt/data/../alpha.csv'), len(os.listdir('/mnt')))
"#,
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(
        report.run.stdout, "[] []\nFalse 2\n",
        "{}",
        report.run.stderr
    );

    // The same message id from another user, or in another chat, is refused as unknown.
    let bob = Owner::new("tenant-a", "bob");
    let error = env
        .supervisor
        .run(&bob, request("m-alpha", "print(1)", &[]), None)
        .await
        .expect_err("another user's message");
    assert!(matches!(error, Error::NotFound("message")), "{error}");
    let mut other_chat = request("m-alpha", "print(1)", &[]);
    other_chat.chat_id = chat_id("chat-2");
    let error = env
        .supervisor
        .run(&env.owner, other_chat, None)
        .await
        .expect_err("another chat");
    assert!(matches!(error, Error::NotFound("message")), "{error}");

    // Another user cannot attach, look up or run with someone else's file.
    let error = env
        .supervisor
        .run(&bob, request("m-bob", "print(1)", &[&mine]), None)
        .await
        .expect_err("another user's file");
    assert!(matches!(error, Error::NotFound("file")), "{error}");
    assert!(env.supervisor.file(&bob, &mine.id).await.is_err());
    // A refused request claimed nothing: bob's message id is still free for him.
    let report = env
        .supervisor
        .run(&bob, request("m-bob", "print(1)", &[]), None)
        .await
        .expect("bob's own run");
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(report.run.stdout, "1\n");
}

#[tokio::test]
async fn attachments_are_linked_once_and_named_apart() {
    let env = TestEnv::new().await;
    let first = env.upload("report.csv", b"first\n").await;
    // A second `report.csv` in the user's own workspace would be refused (names are unique
    // there); uploaded into a chat, it keeps its name.
    let second = env
        .supervisor
        .upload(
            &env.owner,
            UploadMeta {
                name: "report.csv".to_owned(),
                chat_id: Some("chat-uploads".to_owned()),
                message_id: Some("m-upload".to_owned()),
                on_conflict: None,
            },
            &b"second\n"[..],
        )
        .await
        .expect("upload into a chat");
    assert_eq!(second.name, "report.csv");
    let hostile = env.upload("../../etc/evil\n.csv", b"evil\n").await;
    let code = r#"
import os
for name in sorted(os.listdir('/mnt/data')):
    print(name, '->', os.readlink('/mnt/data/' + name), open('/mnt/data/' + name).read(), end='')
"#;
    let report = env
        .run("m-names", code, &[&first, &second, &first, &hostile])
        .await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(
        report.run.stdout,
        "evil_.csv -> ../inputs/evil_.csv evil\n\
         report (1).csv -> ../inputs/report (1).csv second\n\
         report.csv -> ../inputs/report.csv first\n",
        "{}",
        report.run.stderr
    );
    // Attaching the same files again in a later run adds nothing.
    let again = env.run("m-names", code, &[&second, &first]).await;
    assert_status(&again, RunStatus::Succeeded);
    assert_eq!(again.run.stdout, report.run.stdout);
    // The catalog keeps the name as uploaded, without its folders (shared/API.md).
    assert_eq!(hostile.name, "evil\n.csv");
}

#[tokio::test]
async fn caps_are_reported_not_silent() {
    let env = TestEnv::with_config(|config| {
        config.limits.max_files_per_run = 2;
        config.limits.max_file_bytes = bytesize::ByteSize::kib(1);
        config.limits.max_depth = 2;
        config.limits.max_path_bytes = 40;
    })
    .await;
    let report = env
        .run(
            "m-caps",
            r#"
import os
for name in ['a.csv', 'b.csv', 'c.csv']:
    open('/mnt/data/' + name, 'w').write('x')
open('/mnt/data/big.pdf', 'wb').write(b'0' * 5000)
os.makedirs('/mnt/data/one/two')
open('/mnt/data/one/two/deep.csv', 'w').write('x')
open('/mnt/data/' + 'n' * 40 + '.csv', 'w').write('x')
"#,
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a.csv", "b.csv"]);
    let long = format!(
        "/mnt/data/{}.csv: path longer than 40 bytes",
        "n".repeat(40)
    );
    assert_eq!(
        truncations(&report),
        [
            "/mnt/data/big.pdf: larger than the limit of 1.0 KiB",
            "/mnt/data/c.csv: over the limit of 2 files per run",
            long.as_str(),
            "/mnt/data/one/two/deep.csv: deeper than 2 folders: not looked at",
        ]
    );
}

/// A run's truncations as sorted `path: reason` lines.
fn truncations(report: &RunReport) -> Vec<String> {
    let mut lines: Vec<String> = report
        .run
        .truncated
        .iter()
        .map(|t| format!("{}: {}", t.path, t.reason))
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn files_left_unregistered_are_reported_with_a_reason() {
    let env = TestEnv::with_config(|config| {
        config.limits.max_depth = 2;
    })
    .await;
    let report = env
        .run(
            "m-unseen",
            r#"
import os
open(b'/mnt/data/r\xff.csv', 'w').write('x')
open(b'/mnt/data/notes\xff.txt', 'w').write('x')
os.makedirs(b'/mnt/data/d\xff')
open(b'/mnt/data/d\xff/in.csv', 'w').write('x')
os.makedirs('/mnt/data/one/two/three')
open('/mnt/data/one/two/deep.csv', 'w').write('x')
open('/mnt/data/one/two/deep.txt', 'w').write('x')
open('/mnt/data/one/two/three/deeper.csv', 'w').write('x')
open('/mnt/data/ok.csv', 'w').write('x')
"#,
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    let paths: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["/mnt/data/ok.csv"]);
    // Only the untracked names (notes\xff.txt, deep.txt) go unreported; a folder below the cap
    // is reported whatever it holds, since nothing in it was looked at.
    assert_eq!(
        truncations(&report),
        [
            "/mnt/data/d\u{fffd}/in.csv: the path is not valid UTF-8: not registered",
            "/mnt/data/one/two/deep.csv: deeper than 2 folders: not looked at",
            "/mnt/data/one/two/three: a folder deeper than 2 folders: nothing in it was looked at",
            "/mnt/data/r\u{fffd}.csv: the name is not valid UTF-8: not registered",
        ]
    );

    // A later run that rewrites the deep file has it reported again; the folder below the cap
    // is reported on every run; files this run did not touch are not.
    let report = env
        .run(
            "m-unseen",
            "open('/mnt/data/one/two/deep.csv', 'w').write('changed')",
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    assert!(report.files.is_empty(), "{:?}", report.files);
    assert_eq!(
        truncations(&report),
        [
            "/mnt/data/one/two/deep.csv: deeper than 2 folders: not looked at",
            "/mnt/data/one/two/three: a folder deeper than 2 folders: nothing in it was looked at",
        ]
    );
    let report = env.run("m-unseen", "pass", &[]).await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(
        truncations(&report),
        ["/mnt/data/one/two/three: a folder deeper than 2 folders: nothing in it was looked at"]
    );
}

#[tokio::test]
async fn the_entry_cap_is_reported_on_every_run_it_cuts() {
    let env = TestEnv::with_config(|config| {
        config.limits.max_snapshot_entries = 5;
    })
    .await;
    let cut = "/mnt/data: more than 5 entries: the rest was not looked at";
    let report = env
        .run(
            "m-entries",
            "for i in range(10):\n    open(f'/mnt/data/a{i}.csv', 'w').write('x')",
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a0.csv", "a1.csv", "a2.csv", "a3.csv", "a4.csv"]);
    assert_eq!(truncations(&report), [cut]);
    // The workspace was already past the cap before this run: the file it writes beyond the
    // cap is still not silently dropped.
    let report = env
        .run("m-entries", "open('/mnt/data/b.csv', 'w').write('x')", &[])
        .await;
    assert_status(&report, RunStatus::Succeeded);
    assert!(report.files.is_empty(), "{:?}", report.files);
    assert_eq!(truncations(&report), [cut]);
}

#[tokio::test]
async fn catalog_and_files_survive_a_restart() {
    let env = TestEnv::new().await;
    let report = env
        .run(
            "m-restart",
            "open('/mnt/data/kept.csv', 'w').write('kept')",
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    let file = report.files[0].clone();
    let run_id = report.run.id.clone();
    env.supervisor.catalog().close().await;

    let reopened = env.reopen().await;
    let found = reopened.file(&env.owner, &file.id).await.expect("file");
    assert_eq!(found, file);
    let run = reopened.run_report(&env.owner, &run_id).await.expect("run");
    assert_eq!(run.files, vec![file.clone()]);
    // The reopened supervisor reuses the message's workspace and container.
    let again = reopened
        .run(
            &env.owner,
            request("m-restart", "print(open('/mnt/data/kept.csv').read())", &[]),
            None,
        )
        .await
        .expect("run after restart");
    assert_status(&again, RunStatus::Succeeded);
    assert_eq!(again.run.stdout, "kept\n");
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_written() {
    let env = TestEnv::new().await;
    let mut ruby = request("m-bad", "puts 1", &[]);
    ruby.language = "ruby".to_owned();
    let error = env
        .supervisor
        .run(&env.owner, ruby, None)
        .await
        .expect_err("unknown language");
    assert!(
        matches!(
            error,
            Error::Invalid {
                field: "language",
                ..
            }
        ),
        "{error}"
    );

    let mut endless = request("m-bad", "print(1)", &[]);
    endless.timeout = Some(Duration::from_secs(100_000));
    let error = env
        .supervisor
        .run(&env.owner, endless, None)
        .await
        .expect_err("timeout above the cap");
    assert!(
        matches!(
            error,
            Error::Invalid {
                field: "timeout_secs",
                ..
            }
        ),
        "{error}"
    );

    // A bad message id cannot even make a request: it is refused where it is parsed.
    let error = MessageId::parse("bad/id").expect_err("bad message id");
    assert!(
        matches!(
            Error::from(error),
            Error::Invalid {
                field: "message_id",
                ..
            }
        ),
        "a bad message id"
    );

    let message = env
        .supervisor
        .catalog()
        .messages()
        .get(&env.owner.tenant, &msg_id("m-bad"))
        .await
        .expect("catalog");
    assert!(message.is_none(), "a refused run must not bind the message");
}

#[tokio::test]
async fn large_code_goes_through_stdin() {
    let env = TestEnv::new().await;
    // Far above the 128 KiB a single command-line argument may hold.
    let mut code = String::from("total = 0\n");
    for i in 0..20_000 {
        code.push_str(&format!("total += {i}\n"));
    }
    code.push_str("print(total)\n");
    let report = env.run("m-large", &code, &[]).await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(
        report.run.stdout.trim(),
        (0..20_000u64).sum::<u64>().to_string()
    );
}

#[tokio::test]
async fn host_paths_never_reach_the_output() {
    let env = TestEnv::new().await;
    let report = env
        .run(
            "m-paths",
            "import os\nprint(os.path.realpath('/mnt/data/x.csv'))\nopen('/mnt/data/missing/x.csv')",
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Failed);
    assert_eq!(report.run.exit_code, Some(1));
    let host = env.config.data_dir.display().to_string();
    assert!(report.run.stdout.contains("/mnt/data/x.csv"));
    assert!(!report.run.stdout.contains(&host) && !report.run.stderr.contains(&host));
    assert!(
        report.run.stderr.contains("'/mnt/data/missing/x.csv'"),
        "{}",
        report.run.stderr
    );
}

#[tokio::test]
async fn reconcile_removes_only_this_instances_orphans() {
    let env = TestEnv::new().await;
    let other = TestEnv::new().await;
    assert_status(
        &env.run("m-owned", "print(1)", &[]).await,
        RunStatus::Succeeded,
    );
    assert_status(
        &other.run("m-other", "print(1)", &[]).await,
        RunStatus::Succeeded,
    );

    // A sandbox no catalog row owns, as a crash between the two could leave.
    let orphan = env
        .supervisor
        .workspaces()
        .prepare("ws_orphan")
        .expect("workspace");
    let instance = std::fs::read_to_string(env.config.data_dir.join("instance")).expect("id");
    env.supervisor
        .runtime()
        .ensure(&codebox::runtime::SandboxSpec {
            workspace_id: orphan.id.clone(),
            instance,
            host_data: orphan.data.clone(),
            host_inputs: orphan.inputs.clone(),
            labels: Vec::new(),
            preload: Vec::new(),
        })
        .await
        .expect("orphan sandbox");

    assert_eq!(env.supervisor.reconcile().await.expect("reconcile"), 1);
    let left: Vec<String> = env
        .supervisor
        .runtime()
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|sandbox| sandbox.workspace_id)
        .collect();
    assert!(!left.contains(&"ws_orphan".to_owned()), "{left:?}");
    let owned = env.data_dir_of("m-owned").await;
    let owned_id = owned.parent().and_then(|p| p.file_name()).expect("id");
    assert!(left.iter().any(|id| id.as_str() == owned_id), "{left:?}");
    let theirs = other.data_dir_of("m-other").await;
    let theirs_id = theirs.parent().and_then(|p| p.file_name()).expect("id");
    assert!(
        left.iter().any(|id| id.as_str() == theirs_id),
        "another instance's sandbox stays"
    );
    // Releasing is idempotent.
    env.supervisor
        .runtime()
        .release("ws_orphan")
        .await
        .expect("again");
}

#[tokio::test]
async fn a_restart_removes_the_sandboxes_the_last_process_left_unless_one_is_in_use() {
    let env = TestEnv::new().await;
    for message in ["m-left", "m-busy"] {
        assert_status(&env.run(message, "x = 1", &[]).await, RunStatus::Succeeded);
    }
    let workspace_of = |message: &'static str| {
        let env = &env;
        async move {
            let data = env.data_dir_of(message).await;
            let id = data.parent().and_then(|p| p.file_name()).expect("id");
            id.to_string_lossy().into_owned()
        }
    };
    let left = workspace_of("m-left").await;
    let busy = workspace_of("m-busy").await;
    let sandboxes = |supervisor: &codebox::Supervisor| {
        let runtime = supervisor.runtime().clone();
        async move {
            runtime
                .list()
                .await
                .expect("list")
                .into_iter()
                .map(|sandbox| sandbox.workspace_id)
                .collect::<Vec<_>>()
        }
    };

    // A new process on the same folder: the interpreters of the old one's sandboxes are out
    // of its reach, so they go; one whose workspace another process holds stays.
    let restarted = env.reopen().await;
    let held = restarted.workspaces().get(&busy).expect("workspace");
    let lock = held.lock().expect("lock");
    assert_eq!(
        restarted.release_stale_sandboxes().await.expect("release"),
        1
    );
    let now = sandboxes(&restarted).await;
    assert!(!now.contains(&left), "{now:?}");
    assert!(now.contains(&busy), "{now:?}");
    drop(lock);
    assert_eq!(
        restarted.release_stale_sandboxes().await.expect("release"),
        1
    );
    assert!(!sandboxes(&restarted).await.contains(&busy));

    // The workspaces stayed: the message runs again on its files, in a new sandbox.
    let again = restarted
        .run(&env.owner, request("m-left", "print(1)", &[]), None)
        .await
        .expect("run");
    assert_status(&again, RunStatus::Succeeded);
}

#[tokio::test]
async fn process_limit_holds_and_the_run_still_ends() {
    let env = TestEnv::with_config(|config| {
        config.sandbox.pids_limit = 32;
    })
    .await;
    let report = env
        .run(
            "m-pids",
            r#"
import subprocess
started, refused = 0, 0
for _ in range(100):
    try:
        subprocess.Popen(['sleep', '600'])
        started += 1
    except OSError:
        refused += 1
print(started < 32, refused > 0)
"#,
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(report.run.stdout, "True True\n", "{}", report.run.stderr);
    // Everything the run started is gone, so the next run has the whole budget again.
    let report = env
        .run(
            "m-pids",
            "import subprocess\nprocs = [subprocess.Popen(['true']) for _ in range(20)]\nprint('ok')",
            &[],
        )
        .await;
    assert_status(&report, RunStatus::Succeeded);
    assert_eq!(report.run.stdout, "ok\n", "{}", report.run.stderr);
}

#[tokio::test]
async fn the_engine_sees_the_workspaces_folder() {
    let env = TestEnv::new().await;
    let folder = env.supervisor.workspaces().root().to_path_buf();
    env.supervisor
        .runtime()
        .check_host_folder(&folder)
        .await
        .expect("a local engine shares this file system");
    // The probe leaves nothing behind: no file, no container.
    let leftovers: Vec<_> = std::fs::read_dir(&folder)
        .expect("read")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(".probe-"))
        .collect();
    assert!(leftovers.is_empty());
    let containers = std::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .expect("docker ps");
    assert!(!String::from_utf8_lossy(&containers.stdout).contains("codebox-.probe-"));
    // A folder that cannot even hold the probe file is refused in one line. (An engine on
    // another host cannot be staged here; that path is the same check failing later.)
    let error = env
        .supervisor
        .runtime()
        .check_host_folder(std::path::Path::new("/nonexistent/codebox"))
        .await
        .expect_err("no such folder");
    assert_eq!(error.to_string().lines().count(), 1, "{error}");
}

#[tokio::test]
async fn a_consumer_that_never_reads_cannot_hold_a_run() {
    let env = TestEnv::new().await;
    // A one-slot event channel that nobody reads, and code that prints without end.
    let (events, _unread) = tokio::sync::mpsc::channel(1);
    let mut endless = request(
        "m-unread",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)",
        &[],
    );
    endless.timeout = Some(Duration::from_secs(2));
    // The outer bound only keeps a regression from hanging the suite.
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        env.supervisor.run(&env.owner, endless, Some(events)),
    )
    .await
    .expect("the run ends although its events are never read")
    .expect("run");
    assert_eq!(report.run.status, RunStatus::TimedOut);
    assert!(report.run.stdout_truncated);
}

#[tokio::test]
async fn flooding_output_cannot_outrun_the_timeout() {
    let env = TestEnv::new().await;
    let mut flood = request(
        "m-flood",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)",
        &[],
    );
    flood.timeout = Some(Duration::from_secs(2));
    // The outer bound only keeps a regression from hanging the suite.
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        env.supervisor.run(&env.owner, flood, None),
    )
    .await
    .expect("a run that floods its output still ends")
    .expect("run");
    assert_eq!(report.run.status, RunStatus::TimedOut);
    assert!(report.run.stdout_truncated);
    // The sandbox is usable, and removable, afterwards.
    let again = env.run("m-flood", "print('after')", &[]).await;
    assert_status(&again, RunStatus::Succeeded);
    assert_eq!(again.run.stdout, "after\n");
    env.supervisor
        .release_sandbox(&env.owner, &msg_id("m-flood"))
        .await
        .expect("release");
}
