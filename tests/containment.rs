//! Containment that is enforced from outside the sandbox, on the real engine: no process
//! outlives its run, whatever the code does to the wrappers around it, and `/mnt/data` is
//! capped while the code runs, not after.

mod common;

use std::process::Command;
use std::time::Duration;

use codebox::catalog::{RunRecord, RunStatus};
use codebox::config::DiskLimit;
use common::{TestEnv, msg_id, request};

/// The processes of a message's container as the engine counts them (`docker top`).
fn container_processes(workspace_id: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args([
            "top",
            &format!("codebox-{workspace_id}"),
            "-o",
            "pid,user,args",
        ])
        .output()
        .expect("docker top");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

async fn workspace_id_of(env: &TestEnv, message_id: &str) -> String {
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

/// A daemon that double-forks, leaves the run's session, closes its output so the run's
/// stream ends, and tries to kill whatever wraps the interpreter: it must not survive the
/// run, and must write nothing into /mnt/data afterwards.
#[tokio::test]
async fn a_double_forked_daemon_dies_with_its_run() {
    let env = TestEnv::new().await;
    let report = env
        .run(
            "m-daemon",
            r#"
import os, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        while True:
            with open('/mnt/data/heartbeat.txt', 'a') as beat:
                beat.write('x')
            time.sleep(0.02)
    os._exit(0)
time.sleep(0.5)
# Kill whatever wraps the interpreter, so a cleanup that runs after it never comes.
parent = os.getppid()
if parent > 1:
    try:
        os.kill(parent, signal.SIGKILL)
    except OSError:
        pass
print('daemon started', flush=True)
"#,
            &[],
        )
        .await;
    assert_eq!(report.run.status, RunStatus::Succeeded, "{:?}", report.run);
    assert_eq!(report.run.stdout, "daemon started\n");
    let data = env.data_dir_of("m-daemon").await;
    let beat = data.join("heartbeat.txt");
    let size_at_end = std::fs::metadata(&beat).expect("the daemon ran").len();
    assert!(size_at_end > 0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let size_later = std::fs::metadata(&beat).expect("heartbeat").len();
    assert_eq!(
        size_at_end, size_later,
        "the daemon kept writing after its run ended"
    );
    // Only the container's init and the message's interpreter are left.
    let workspace_id = workspace_id_of(&env, "m-daemon").await;
    let processes = container_processes(&workspace_id);
    assert_eq!(processes.len(), 2, "{processes:#?}");
}

/// A fork loop racing the sweep after the run: every process is gone when the run returns,
/// and the sandbox still works for the next run.
#[tokio::test]
async fn a_fork_loop_left_behind_is_swept() {
    let env = TestEnv::new().await;
    let report = env
        .run(
            "m-forkloop",
            r#"
import os, time
if os.fork() == 0:
    os.setsid()
    for fd in (0, 1, 2):
        os.close(fd)
    while True:
        try:
            if os.fork() == 0:
                time.sleep(0.01)
                continue
            os._exit(0)
        except OSError:
            time.sleep(0.001)
time.sleep(0.2)
print('ok')
"#,
            &[],
        )
        .await;
    assert_eq!(report.run.status, RunStatus::Succeeded, "{:?}", report.run);
    let workspace_id = workspace_id_of(&env, "m-forkloop").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let processes = container_processes(&workspace_id);
    assert!(
        processes.len() <= 2,
        "processes survived the run: {processes:#?}"
    );
    let next = env.run("m-forkloop", "print('next')", &[]).await;
    assert_eq!(next.run.status, RunStatus::Succeeded, "{:?}", next.run);
    assert_eq!(next.run.stdout, "next\n");
}

/// A run that times out while its daemon holds the output open: the run ends at its
/// deadline and nothing of it is left.
#[tokio::test]
async fn a_timed_out_run_leaves_no_process() {
    let env = TestEnv::new().await;
    let mut slow = request(
        "m-timeout-daemon",
        r#"
import os, time
if os.fork() == 0:
    os.setsid()
    while True:
        time.sleep(0.05)
while True:
    time.sleep(0.05)
"#,
        &[],
    );
    slow.timeout = Some(Duration::from_secs(1));
    let report = env
        .supervisor
        .run(&env.owner, slow, None)
        .await
        .expect("run");
    assert_eq!(report.run.status, RunStatus::TimedOut, "{:?}", report.run);
    let workspace_id = workspace_id_of(&env, "m-timeout-daemon").await;
    let processes = container_processes(&workspace_id);
    assert_eq!(processes.len(), 2, "{processes:#?}");
}

/// Bytes a host file takes on disk (allocated blocks, not its apparent size).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |metadata| metadata.blocks() * 512)
}

/// Runs `code` as `message_id` with a timeout far beyond what it needs, and checks that the
/// disk cap, not the clock, stopped it.
async fn run_into_the_disk_cap(env: &TestEnv, message_id: &str, code: &str) -> RunRecord {
    let mut flood = request(message_id, code, &[]);
    flood.timeout = Some(Duration::from_secs(60));
    let report = env
        .supervisor
        .run(&env.owner, flood, None)
        .await
        .expect("run");
    let run = report.run;
    assert_eq!(run.status, RunStatus::Killed, "{run:?}");
    assert_eq!(run.reason.as_deref(), Some("disk_quota"), "{run:?}");
    run
}

/// Code that keeps writing (and ignores "No space left on device") is stopped at the cap
/// while it runs, reported as killed with reason `disk_quota`, and the host holds no more
/// than the cap.
#[tokio::test]
async fn writing_past_the_disk_cap_is_stopped_while_the_code_runs() {
    let env = TestEnv::with_config(|config| {
        config.sandbox.disk_limit = DiskLimit::Loop;
        config.sandbox.disk_size = bytesize::ByteSize::mib(64);
    })
    .await;
    let run = &run_into_the_disk_cap(
        &env,
        "m-disk",
        r#"
import os, time
chunk = os.urandom(4 * 1024 * 1024)
written = 0
with open('/mnt/data/flood.bin', 'wb') as out:
    while written < 2 * 1024 * 1024 * 1024:
        try:
            out.write(chunk)
            out.flush()
            written += len(chunk)
        except OSError:
            time.sleep(0.01)
print('wrote', written)
"#,
    )
    .await;
    assert!(
        run.stderr.contains("/mnt/data reached its limit of 64 MiB"),
        "{}",
        run.stderr
    );
    assert!(run.duration_ms < 30_000, "{}", run.duration_ms);
    let data = env.data_dir_of("m-disk").await;
    let image = data.parent().expect("workspace").join("data.img");
    let held = allocated(&image);
    // The cap, plus ext4's own tables of up to a few MiB.
    assert!(held <= 68 * 1024 * 1024, "the host holds {held} bytes");
    let policy = codebox::workspace::disk::DiskPolicy {
        mode: codebox::workspace::disk::DiskMode::Loop,
        size: bytesize::ByteSize::mib(64),
        files: 100_000,
    };
    let usage = codebox::workspace::disk::usage(&data, &policy).expect("usage");
    assert!(
        usage.full.is_some(),
        "the file system is not full: {usage:?}"
    );

    // The workspace stays usable: deleting the flood frees the space for the next run.
    let next = env
        .run(
            "m-disk",
            "import os\nos.remove('/mnt/data/flood.bin')\nopen('/mnt/data/ok.csv', 'w').write('a\\n1\\n')",
            &[],
        )
        .await;
    assert_eq!(next.run.status, RunStatus::Succeeded, "{:?}", next.run);
    assert_eq!(next.files.len(), 1);
}

/// The file count is capped the same way: a run that makes files past it is killed.
#[tokio::test]
async fn making_files_past_the_cap_is_stopped() {
    let env = TestEnv::with_config(|config| {
        config.sandbox.disk_limit = DiskLimit::Loop;
        config.sandbox.disk_size = bytesize::ByteSize::mib(32);
        config.sandbox.disk_files = 500;
    })
    .await;
    let report = env
        .run(
            "m-files",
            r#"
made = 0
for index in range(100000):
    try:
        open(f'/mnt/data/f{index}', 'w').close()
        made += 1
    except OSError:
        pass
print(made)
"#,
            &[],
        )
        .await;
    let run = &report.run;
    assert_eq!(run.status, RunStatus::Killed, "{run:?}");
    assert_eq!(run.reason.as_deref(), Some("disk_quota"), "{run:?}");
    assert!(run.stderr.contains("500 files"), "{}", run.stderr);
    let data = env.data_dir_of("m-files").await;
    // ext4 rounds its inode count up to whole inode-table blocks (16 inodes of 256 bytes in
    // a 4 KiB block): the cap holds to within those.
    let count = std::fs::read_dir(&data).expect("list").count();
    assert!((400..=516).contains(&count), "{count} files");
}

/// Without a file system of its own (codebox not root), a watchdog measures /mnt/data while
/// the code runs and stops it past the cap; the overshoot is bounded by what the code writes
/// between two measurements.
#[tokio::test]
async fn the_watchdog_stops_a_run_past_the_cap() {
    let env = TestEnv::with_config(|config| {
        config.sandbox.disk_limit = DiskLimit::Watchdog;
        config.sandbox.disk_size = bytesize::ByteSize::mib(32);
    })
    .await;
    let run = &run_into_the_disk_cap(
        &env,
        "m-watchdog",
        r#"
import os, time
chunk = os.urandom(1024 * 1024)
with open('/mnt/data/flood.bin', 'wb') as out:
    for _ in range(1024):
        out.write(chunk)
        out.flush()
        time.sleep(0.002)
print('wrote it all')
"#,
    )
    .await;
    assert!(!run.stdout.contains("wrote it all"));
    let data = env.data_dir_of("m-watchdog").await;
    let held = allocated(&data.join("flood.bin"));
    // 1 MiB every 2 ms at most is about 125 MiB per 250 ms interval; far below the 1 GiB the
    // code meant to write.
    assert!(held < 256 * 1024 * 1024, "overshoot: {held} bytes");
}

/// A workspace whose file system is no longer mounted (the host restarted) is mounted again
/// before the next run, and a sandbox that saw the bare folder is made again.
#[tokio::test]
async fn a_workspace_is_mounted_again_after_a_restart() {
    let env = TestEnv::with_config(|config| {
        config.sandbox.disk_limit = DiskLimit::Loop;
        config.sandbox.disk_size = bytesize::ByteSize::mib(16);
    })
    .await;
    let first = env
        .run(
            "m-remount",
            "open('/mnt/data/kept.txt', 'w').write('kept')",
            &[],
        )
        .await;
    assert_eq!(first.run.status, RunStatus::Succeeded, "{:?}", first.run);
    let data = env.data_dir_of("m-remount").await;
    assert!(codebox::workspace::disk::is_mount_point(&data).expect("inspect"));
    let unmounted = Command::new("umount").arg(&data).output().expect("umount");
    assert!(unmounted.status.success(), "{unmounted:?}");
    assert!(!codebox::workspace::disk::is_mount_point(&data).expect("inspect"));

    let second = env
        .run(
            "m-remount",
            "import os\nprint(open('/mnt/data/kept.txt').read())\nprint(os.statvfs('/mnt/data').f_blocks * os.statvfs('/mnt/data').f_frsize // 2**20)",
            &[],
        )
        .await;
    assert_eq!(second.run.status, RunStatus::Succeeded, "{:?}", second.run);
    let lines: Vec<&str> = second.run.stdout.lines().collect();
    assert_eq!(lines[0], "kept");
    let size_mib: u64 = lines[1].parse().expect("size");
    assert!(
        size_mib <= 16,
        "{size_mib} MiB: not the workspace's file system"
    );
    assert!(codebox::workspace::disk::is_mount_point(&data).expect("inspect"));

    // Removing the workspace unmounts it and removes everything.
    env.supervisor
        .delete_workspace(&env.owner, &msg_id("m-remount"))
        .await
        .expect("delete");
    assert!(!data.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(data.to_str().expect("utf-8")));
}
