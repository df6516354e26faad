//! One contract, two runtimes: every case here runs against Docker and against a real Jupyter
//! Enterprise Gateway with local kernels (`scripts/enterprise-gateway`), through the
//! supervisor, so that attachments, registration, downloads, state across runs, limits and
//! path translation behave the same whichever runtime runs the code.

mod common;

use std::time::Duration;

use codebox::RunReport;
use codebox::catalog::{RunOutput, RunStatus};
use codebox::supervisor::RunEvent;
use common::{TestEnv, msg_id, request};
use tokio::sync::mpsc;

/// The runtimes under test.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Docker,
    Gateway,
}

async fn env_of(kind: Kind) -> TestEnv {
    match kind {
        Kind::Docker => TestEnv::new().await,
        Kind::Gateway => TestEnv::gateway().await,
    }
}

/// Releases every sandbox the environment made: gateway kernels outlive the test's folder.
async fn finish(env: TestEnv) {
    let runtime = env.supervisor.runtime().clone();
    for sandbox in runtime.list().await.unwrap_or_default() {
        if sandbox.instance.as_deref() == Some(env.supervisor.instance()) {
            let _ = runtime.release(&sandbox.workspace_id).await;
        }
    }
}

fn errors(report: &RunReport) -> Vec<(String, String)> {
    report
        .run
        .outputs
        .iter()
        .filter_map(|output| match output {
            RunOutput::Error { ename, evalue, .. } => Some((ename.clone(), evalue.clone())),
            _ => None,
        })
        .collect()
}

async fn workspace_of(env: &TestEnv, message_id: &str) -> String {
    env.supervisor
        .message(&env.owner, &msg_id(message_id))
        .await
        .expect("the message")
        .workspace_id
        .into()
}

/// Runs `code` as message `m1` with a timeout.
async fn run_for(env: &TestEnv, code: &str, timeout: Duration) -> RunReport {
    let mut request = request("m1", code, &[]);
    request.timeout = Some(timeout);
    env.supervisor
        .run(&env.owner, request, None)
        .await
        .expect("run")
}

async fn attachments_are_readable_and_read_only(kind: Kind) {
    let env = env_of(kind).await;
    let file = env.upload("in.csv", b"a,b\n1,2\n").await;
    let read = env
        .run(
            "m1",
            "print(open('/mnt/data/in.csv').read(), end='')",
            &[&file],
        )
        .await;
    assert_eq!(read.run.status, RunStatus::Succeeded, "{:?}", read.run);
    assert_eq!(read.run.stdout, "a,b\n1,2\n");
    let write = env
        .run("m1", "open('/mnt/data/in.csv', 'w').write('x')", &[])
        .await;
    assert_eq!(write.run.status, RunStatus::Failed, "{:?}", write.run);
    let raised = errors(&write);
    assert!(
        matches!(
            raised.first().map(|(ename, _)| ename.as_str()),
            Some("PermissionError" | "OSError")
        ),
        "{raised:?}"
    );
    assert_eq!(env.bytes_of(&file).await, b"a,b\n1,2\n");
    finish(env).await;
}

async fn written_files_are_registered_and_downloadable(kind: Kind) {
    let env = env_of(kind).await;
    let report = env
        .run(
            "m1",
            "with open('/mnt/data/out.csv', 'w') as f:\n    f.write('x,y\\n3,4\\n')",
            &[],
        )
        .await;
    assert_eq!(report.run.status, RunStatus::Succeeded, "{:?}", report.run);
    let file = report
        .files
        .iter()
        .find(|file| file.name == "out.csv")
        .unwrap_or_else(|| panic!("out.csv is registered: {:?}", report.files));
    assert_eq!(env.bytes_of(file).await, b"x,y\n3,4\n");
    finish(env).await;
}

async fn state_survives_across_runs(kind: Kind) {
    let env = env_of(kind).await;
    let first = env.run("m1", "x = 41", &[]).await;
    assert_eq!(first.run.status, RunStatus::Succeeded, "{:?}", first.run);
    let second = env.run("m1", "print(x + 1)", &[]).await;
    assert_eq!(second.run.stdout, "42\n", "{:?}", second.run);
    let kernel = second.run.kernel.clone().expect("a kernel");
    assert_eq!(kernel.execution_count, 2);
    finish(env).await;
}

async fn host_paths_never_reach_the_output(kind: Kind) {
    let env = env_of(kind).await;
    let cwd = env.run("m1", "import os\nprint(os.getcwd())", &[]).await;
    assert_eq!(cwd.run.stdout, "/mnt/data\n", "{:?}", cwd.run);
    let missing = env
        .run("m1", "open('/mnt/data/missing.txt').read()", &[])
        .await;
    assert_eq!(missing.run.status, RunStatus::Failed);
    let raised = errors(&missing);
    assert_eq!(raised[0].0, "FileNotFoundError", "{raised:?}");
    assert!(raised[0].1.contains("/mnt/data/missing.txt"), "{raised:?}");
    let host = env.config.data_dir.to_string_lossy().into_owned();
    for report in [&cwd, &missing] {
        let shown = format!(
            "{}{}{:?}",
            report.run.stdout, report.run.stderr, report.run.outputs
        );
        assert!(!shown.contains(&host), "a host path leaked: {shown}");
    }
    finish(env).await;
}

async fn a_timed_out_cell_is_stopped_and_the_next_run_works(kind: Kind) {
    let env = env_of(kind).await;
    env.run("m1", "x = 5", &[]).await;
    let report = run_for(&env, "import time\ntime.sleep(60)", Duration::from_secs(1)).await;
    assert_eq!(report.run.status, RunStatus::TimedOut, "{:?}", report.run);
    assert!(
        report.run.duration_ms < 10_000,
        "{}",
        report.run.duration_ms
    );
    let next = env.run("m1", "print(x)", &[]).await;
    assert_eq!(next.run.status, RunStatus::Succeeded, "{:?}", next.run);
    assert_eq!(next.run.stdout, "5\n");
    finish(env).await;
}

async fn an_interrupt_stops_the_running_cell(kind: Kind) {
    let env = env_of(kind).await;
    env.run("m1", "x = 5", &[]).await;
    let (events, mut received) = mpsc::channel(16);
    let mut sleeping = request(
        "m1",
        "import time\nprint('start', flush=True)\ntime.sleep(60)",
        &[],
    );
    sleeping.timeout = Some(Duration::from_secs(30));
    let run = env.supervisor.run(&env.owner, sleeping, Some(events));
    let interrupt = async {
        while let Some(event) = received.recv().await {
            if matches!(&event, RunEvent::Stdout(text) if text.contains("start")) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        env.supervisor
            .interrupt(&env.owner, &msg_id("m1"))
            .await
            .expect("interrupt");
        // The rest of the events are the run's business.
        while received.recv().await.is_some() {}
    };
    let (report, ()) = tokio::join!(run, interrupt);
    let report = report.expect("run");
    assert_ne!(report.run.status, RunStatus::TimedOut, "{:?}", report.run);
    assert_eq!(
        errors(&report)[0].0,
        "KeyboardInterrupt",
        "{:?}",
        report.run
    );
    assert!(
        report.run.duration_ms < 20_000,
        "{}",
        report.run.duration_ms
    );
    let next = env.run("m1", "print(x)", &[]).await;
    assert_eq!(next.run.stdout, "5\n", "{:?}", next.run);
    finish(env).await;
}

async fn a_released_sandbox_starts_fresh(kind: Kind) {
    let env = env_of(kind).await;
    env.run("m1", "x = 5", &[]).await;
    let workspace = workspace_of(&env, "m1").await;
    let runtime = env.supervisor.runtime().clone();
    assert!(
        runtime
            .list()
            .await
            .expect("list")
            .iter()
            .any(|sandbox| sandbox.workspace_id == workspace),
        "the sandbox is listed"
    );
    runtime.release(&workspace).await.expect("release");
    runtime.release(&workspace).await.expect("release again");
    let next = env.run("m1", "print('x' in globals())", &[]).await;
    assert_eq!(next.run.stdout, "False\n", "{:?}", next.run);
    finish(env).await;
}

async fn a_crash_costs_the_interpreter(kind: Kind) {
    let env = env_of(kind).await;
    env.run("m1", "x = 5", &[]).await;
    let crashed = run_for(&env, "import os\nos._exit(7)", Duration::from_secs(20)).await;
    assert_ne!(
        crashed.run.status,
        RunStatus::Succeeded,
        "{:?}",
        crashed.run
    );
    assert!(
        crashed.run.duration_ms < 15_000,
        "{}",
        crashed.run.duration_ms
    );
    let next = env.run("m1", "print('x' in globals())", &[]).await;
    assert_eq!(next.run.stdout, "False\n", "{:?}", next.run);
    let kernel = next.run.kernel.clone().expect("a kernel");
    assert_eq!(kernel.reason.as_deref(), Some("crashed"), "{kernel:?}");
    finish(env).await;
}

async fn a_cell_that_ignores_the_interrupt_costs_the_interpreter(kind: Kind) {
    let env = env_of(kind).await;
    env.run("m1", "x = 5", &[]).await;
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass";
    let report = run_for(&env, code, Duration::from_secs(1)).await;
    assert_eq!(report.run.status, RunStatus::TimedOut, "{:?}", report.run);
    let next = env.run("m1", "print('x' in globals())", &[]).await;
    assert_eq!(next.run.stdout, "False\n", "{:?}", next.run);
    let kernel = next.run.kernel.clone().expect("a kernel");
    assert_eq!(kernel.reason.as_deref(), Some("timeout"), "{kernel:?}");
    finish(env).await;
}

async fn init_code_runs_first_and_tracebacks_reach_stderr(kind: Kind) {
    let env = env_of(kind).await;
    let mut first = request("m1", "print(y)", &[]);
    first.init_code = Some("y = 7".to_owned());
    let report = env
        .supervisor
        .run(&env.owner, first, None)
        .await
        .expect("run");
    assert_eq!(report.run.stdout, "7\n", "{:?}", report.run);
    let failed = env.run("m1", "1 / 0", &[]).await;
    assert_eq!(failed.run.status, RunStatus::Failed, "{:?}", failed.run);
    assert_eq!(failed.run.exit_code, Some(1));
    assert!(
        failed.run.stderr.contains("ZeroDivisionError"),
        "{:?}",
        failed.run.stderr
    );
    assert!(
        !failed.run.stderr.contains('\u{1b}'),
        "{:?}",
        failed.run.stderr
    );
    finish(env).await;
}

/// Each case once per runtime.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod docker {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Kind::Docker).await;
                }
            )*
        }
        mod gateway {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Kind::Gateway).await;
                }
            )*
        }
    };
}

conformance!(
    attachments_are_readable_and_read_only,
    written_files_are_registered_and_downloadable,
    state_survives_across_runs,
    host_paths_never_reach_the_output,
    a_timed_out_cell_is_stopped_and_the_next_run_works,
    an_interrupt_stops_the_running_cell,
    a_released_sandbox_starts_fresh,
    a_crash_costs_the_interpreter,
    a_cell_that_ignores_the_interrupt_costs_the_interpreter,
    init_code_runs_first_and_tracebacks_reach_stderr,
);
