//! Containment that is enforced from outside the sandbox, on the real engine: no process
//! outlives its run, whatever the code does to the wrappers around it, and `/mnt/data` is
//! capped while the code runs, not after.

mod common;

use std::process::Command;
use std::time::Duration;

use codebox::catalog::RunStatus;
use common::{TestEnv, request};

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
        .get(&env.owner.tenant, message_id)
        .await
        .expect("catalog")
        .expect("message")
        .workspace_id
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
    // Only the container's init and its keeper are left.
    let workspace_id = workspace_id_of(&env, "m-daemon").await;
    let processes = container_processes(&workspace_id);
    assert_eq!(processes.len(), 2, "{processes:#?}");
    assert!(
        processes.iter().all(|line| !line.contains("python3")),
        "{processes:#?}"
    );
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
