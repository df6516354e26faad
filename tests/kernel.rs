//! The live interpreter of a message, on the real engine: state across runs, notebook results,
//! errors, figures, init code, restarts, interrupts and the interpreter lost to a timeout, a
//! crash or the memory limit; and the warm pool that hands new messages ready sandboxes.

mod common;

use std::time::Duration;

use codebox::catalog::{FileSource, RunOutput, RunStatus};
use codebox::ids::{FileId, WorkspaceId};
use codebox::{RunReport, RunRequest};
use common::{ALICE, TestEnv, TestServer, json_of, msg_id, request};

fn result_text(report: &RunReport) -> Vec<String> {
    report
        .run
        .outputs
        .iter()
        .filter_map(|output| match output {
            RunOutput::Result { data } => data.get("text/plain").cloned(),
            _ => None,
        })
        .collect()
}

fn errors(report: &RunReport) -> Vec<(String, String, Vec<String>)> {
    report
        .run
        .outputs
        .iter()
        .filter_map(|output| match output {
            RunOutput::Error {
                ename,
                evalue,
                traceback,
            } => Some((ename.clone(), evalue.clone(), traceback.clone())),
            _ => None,
        })
        .collect()
}

fn kernel(report: &RunReport) -> (u64, bool, Option<String>) {
    let kernel = report.run.kernel.clone().expect("the run has a kernel");
    (kernel.execution_count, kernel.restarted, kernel.reason)
}

async fn run_with(
    env: &TestEnv,
    message: &str,
    code: &str,
    adjust: impl FnOnce(&mut RunRequest),
) -> RunReport {
    let mut request = request(message, code, &[]);
    adjust(&mut request);
    env.supervisor
        .run(&env.owner, request, None)
        .await
        .expect("run")
}

#[tokio::test]
async fn state_survives_between_runs_of_a_message_and_never_crosses_messages() {
    let env = TestEnv::new().await;
    let first = env.run("m1", "x = 41", &[]).await;
    assert_eq!(first.run.status, RunStatus::Succeeded);
    assert_eq!(kernel(&first), (1, false, None));
    let second = env.run("m1", "print(x + 1)", &[]).await;
    assert_eq!(second.run.stdout, "42\n");
    assert_eq!(kernel(&second), (2, false, None));

    let other = env.run("m2", "print(x)", &[]).await;
    assert_eq!(other.run.status, RunStatus::Failed);
    assert_eq!(other.run.exit_code, Some(1));
    let raised = errors(&other);
    assert_eq!(raised.len(), 1, "{:?}", other.run.outputs);
    assert_eq!(raised[0].0, "NameError");
    assert_eq!(kernel(&other), (1, false, None));
}

#[tokio::test]
async fn the_last_expression_is_a_result_and_html_comes_with_it() {
    let env = TestEnv::new().await;
    let report = env.run("m1", "a = 20\na * 2 + 2", &[]).await;
    assert_eq!(result_text(&report), vec!["42"]);
    assert_eq!(report.run.stdout, "");

    let report = env
        .run(
            "m1",
            "class Table:\n    def __repr__(self): return 'Table()'\n    def _repr_html_(self): return '<table></table>'\nTable()",
            &[],
        )
        .await;
    let [RunOutput::Result { data }] = report.run.outputs.as_slice() else {
        panic!("one result expected: {:?}", report.run.outputs);
    };
    assert_eq!(data.get("text/plain").map(String::as_str), Some("Table()"));
    assert_eq!(
        data.get("text/html").map(String::as_str),
        Some("<table></table>")
    );

    // Nothing for an assignment, a None value or a statement.
    for code in ["y = 1", "None", "print('x')", "for i in range(2): i"] {
        let report = env.run("m1", code, &[]).await;
        assert!(
            result_text(&report).is_empty(),
            "{code}: {:?}",
            report.run.outputs
        );
    }
}

#[tokio::test]
async fn an_exception_is_an_error_output_with_sandbox_paths_and_the_interpreter_goes_on() {
    let env = TestEnv::new().await;
    let report = env
        .run("m1", "kept = 'yes'\nopen('/mnt/data/missing.csv')", &[])
        .await;
    assert_eq!(report.run.status, RunStatus::Failed);
    let raised = errors(&report);
    assert_eq!(raised.len(), 1);
    let (ename, evalue, traceback) = &raised[0];
    assert_eq!(ename, "FileNotFoundError");
    assert!(evalue.contains("/mnt/data/missing.csv"), "{evalue}");
    let traceback = traceback.join("");
    assert!(
        traceback.contains("open('/mnt/data/missing.csv')"),
        "{traceback}"
    );
    assert!(
        !traceback.contains("runner"),
        "the runner's own frames show: {traceback}"
    );
    assert!(
        !traceback.contains(env.config.data_dir.to_str().unwrap()),
        "{traceback}"
    );
    // Plain Python prints the traceback on stderr: so does a run.
    assert!(
        report.run.stderr.contains("FileNotFoundError"),
        "{}",
        report.run.stderr
    );

    let next = env.run("m1", "print(kept)", &[]).await;
    assert_eq!(next.run.stdout, "yes\n");
    assert_eq!(kernel(&next), (2, false, None));

    let syntax = env.run("m1", "def broken(:\n", &[]).await;
    assert_eq!(errors(&syntax)[0].0, "SyntaxError");
    let exit = env.run("m1", "import sys\nsys.exit(3)", &[]).await;
    assert_eq!(exit.run.exit_code, Some(3));
    assert_eq!(exit.run.status, RunStatus::Failed);
    let after_exit = env.run("m1", "print(kept)", &[]).await;
    assert_eq!(
        after_exit.run.stdout, "yes\n",
        "sys.exit keeps the interpreter"
    );
}

#[tokio::test]
async fn figures_come_back_as_registered_pngs_in_order() {
    let env = TestEnv::new().await;
    let code = "import matplotlib.pyplot as plt\n\
                plt.plot([1, 2, 3])\n\
                plt.show()\n\
                print('between')\n\
                plt.figure()\n\
                plt.bar(['a', 'b'], [3, 4])\n";
    let report = env.run("m1", code, &[]).await;
    assert_eq!(
        report.run.status,
        RunStatus::Succeeded,
        "{}",
        report.run.stderr
    );
    assert_eq!(report.run.stdout, "between\n");
    let images: Vec<&FileId> = report
        .run
        .outputs
        .iter()
        .filter_map(|output| match output {
            RunOutput::Image { file_id } => Some(file_id),
            _ => None,
        })
        .collect();
    assert_eq!(images.len(), 2, "{:?}", report.run.outputs);
    for file_id in images {
        let file = report
            .files
            .iter()
            .find(|file| &file.id == file_id)
            .expect("the figure is among the run's files");
        assert_eq!(file.source, FileSource::Figure);
        assert_eq!(file.content_type, "image/png");
        assert!(file.name.ends_with(".png"));
        let bytes = env.bytes_of(file).await;
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!(bytes.len() as i64, file.size);
    }
    // Shown figures are closed: the next run sends none again.
    let next = env.run("m1", "print(len(plt.get_fignums()))", &[]).await;
    assert_eq!(next.run.stdout, "0\n");
    assert!(next.run.outputs.is_empty(), "{:?}", next.run.outputs);
}

#[tokio::test]
async fn init_code_runs_first_in_every_fresh_interpreter() {
    let env = TestEnv::with_config(|config| {
        config.sandbox.init_code = Some("GREETING = 'hello'".to_owned());
    })
    .await;
    let report = run_with(&env, "m1", "print(GREETING, EXTRA)", |request| {
        request.init_code = Some("EXTRA = GREETING.upper()".to_owned());
    })
    .await;
    assert_eq!(report.run.stdout, "hello HELLO\n", "{}", report.run.stderr);
    // Only a fresh interpreter runs it: a live one keeps what the code changed.
    env.run("m1", "GREETING = 'changed'", &[]).await;
    let report = run_with(&env, "m1", "print(GREETING)", |request| {
        request.init_code = Some("GREETING = 'again'".to_owned());
    })
    .await;
    assert_eq!(report.run.stdout, "changed\n");
    // A failing init code is reported, and the run's own code still runs.
    let report = run_with(&env, "m2", "print('ran')", |request| {
        request.init_code = Some("1 / 0".to_owned());
    })
    .await;
    assert_eq!(report.run.stdout, "ran\n");
    assert_eq!(errors(&report)[0].0, "ZeroDivisionError");
}

#[tokio::test]
async fn restart_starts_a_fresh_interpreter_and_says_so() {
    let env = TestEnv::new().await;
    env.run("m1", "x = 1", &[]).await;
    let report = run_with(&env, "m1", "print('x' in globals())", |request| {
        request.restart = true;
    })
    .await;
    assert_eq!(report.run.stdout, "False\n");
    assert_eq!(kernel(&report), (1, true, Some("requested".to_owned())));
    let next = env.run("m1", "print('next')", &[]).await;
    assert_eq!(kernel(&next), (2, false, None));
    // The first run of a message is fresh, not restarted, even when it asks.
    let first = run_with(&env, "m2", "1", |request| request.restart = true).await;
    assert_eq!(kernel(&first), (1, false, None));
}

#[tokio::test]
async fn a_timed_out_cell_is_interrupted_and_its_interpreter_kept() {
    let env = TestEnv::new().await;
    env.run("m1", "x = 5", &[]).await;
    let report = run_with(
        &env,
        "m1",
        "import time\nprint('start', flush=True)\ntime.sleep(60)",
        |request| {
            request.timeout = Some(Duration::from_secs(1));
        },
    )
    .await;
    assert_eq!(report.run.status, RunStatus::TimedOut);
    assert_eq!(report.run.stdout, "start\n");
    assert_eq!(errors(&report)[0].0, "KeyboardInterrupt");
    assert!(report.run.duration_ms < 4000, "{}", report.run.duration_ms);
    let next = env.run("m1", "print(x)", &[]).await;
    assert_eq!(next.run.stdout, "5\n");
    assert_eq!(kernel(&next), (3, false, None));
}

#[tokio::test]
async fn a_cell_that_ignores_the_interrupt_costs_the_message_its_interpreter() {
    let env = TestEnv::new().await;
    env.run("m1", "x = 5", &[]).await;
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass";
    let report = run_with(&env, "m1", code, |request| {
        request.timeout = Some(Duration::from_secs(1));
    })
    .await;
    assert_eq!(report.run.status, RunStatus::TimedOut);
    let next = env.run("m1", "print('x' in globals())", &[]).await;
    assert_eq!(next.run.stdout, "False\n");
    assert_eq!(kernel(&next), (1, true, Some("timeout".to_owned())));
}

#[tokio::test]
async fn a_crash_and_the_memory_limit_cost_the_interpreter_with_their_reason() {
    let env = TestEnv::new().await;
    env.run("m1", "x = 1", &[]).await;
    let crashed = env.run("m1", "import os\nos._exit(7)", &[]).await;
    assert_eq!(crashed.run.status, RunStatus::Failed);
    assert_eq!(crashed.run.exit_code, Some(7));
    let next = env.run("m1", "print('x' in globals())", &[]).await;
    assert_eq!(next.run.stdout, "False\n");
    assert_eq!(kernel(&next), (1, true, Some("crashed".to_owned())));

    // The test sandboxes have 256 MiB.
    let killed = env
        .run(
            "m1",
            "hog = bytearray(1024 * 1024 * 1024)\nhog[::4096] = b'x' * len(hog[::4096])",
            &[],
        )
        .await;
    assert_eq!(killed.run.status, RunStatus::Killed, "{:?}", killed.run);
    assert!(
        killed
            .run
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("memory"),
        "{:?}",
        killed.run.reason
    );
    let after = env.run("m1", "print('alive')", &[]).await;
    assert_eq!(after.run.stdout, "alive\n");
    assert_eq!(kernel(&after), (1, true, Some("memory".to_owned())));
}

#[tokio::test]
async fn output_of_child_processes_is_captured_and_children_do_not_outlive_the_cell() {
    let env = TestEnv::new().await;
    let code = "import os, subprocess\n\
                os.system('echo from-shell')\n\
                subprocess.Popen(['sleep', '1000'])\n\
                print('done')";
    let report = env.run("m1", code, &[]).await;
    assert_eq!(
        report.run.stdout, "from-shell\ndone\n",
        "{}",
        report.run.stderr
    );
    let census = "import os\n\
                  print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))";
    let next = env.run("m1", census, &[]).await;
    let pids: Vec<i64> = next
        .run
        .stdout
        .trim()
        .trim_matches(['[', ']'])
        .split(", ")
        .map(|pid| pid.parse().expect("a pid"))
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "only the init and the interpreter remain: {pids:?}"
    );
}

#[tokio::test]
async fn the_api_shows_outputs_and_kernel_and_streams_output_events() {
    let server = TestServer::new().await;
    let body = serde_json::json!({"chat_id": "c1", "message_id": "m1", "code": "n = 6\nn * 7"});
    let run = json_of(server.run(ALICE, &body).await, 200).await;
    assert_eq!(
        run["outputs"],
        serde_json::json!([{"type": "result", "data": {"text/plain": "42"}}])
    );
    assert_eq!(
        run["kernel"],
        serde_json::json!({"execution_count": 1, "restarted": false, "reason": null})
    );

    let body = serde_json::json!({
        "chat_id": "c1", "message_id": "m1",
        "code": "import matplotlib.pyplot as plt\nprint(n)\nplt.plot([n])\nraise ValueError('bad')",
    });
    let response = server
        .request(ALICE, reqwest::Method::POST, "/v1/runs")
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .expect("stream a run");
    let text = response.text().await.expect("events");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"stdout"), "{text}");
    assert_eq!(names.last(), Some(&"done"), "{text}");
    assert_eq!(
        names.iter().filter(|name| **name == "output").count(),
        2,
        "{text}"
    );
    let done: serde_json::Value = serde_json::from_str(
        text.lines()
            .rev()
            .find_map(|line| line.strip_prefix("data: "))
            .expect("done data"),
    )
    .expect("done is JSON");
    let outputs = done["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 2, "{done}");
    assert_eq!(outputs[0]["type"], "error");
    assert_eq!(outputs[0]["ename"], "ValueError");
    assert_eq!(outputs[1]["type"], "image");
    assert_eq!(outputs[1]["file"]["source"], "figure");
    let url = outputs[1]["file"]["download_url"].as_str().expect("a link");
    let png = server.client.get(url).send().await.expect("download");
    assert_eq!(png.status(), 200);
    assert!(png.bytes().await.expect("bytes").starts_with(b"\x89PNG"));
    assert_eq!(done["kernel"]["execution_count"], 2);
}

#[tokio::test]
async fn new_messages_take_warm_sandboxes_and_the_pool_refills() {
    let server = TestServer::with_config(|config| {
        config.sandbox.warm_pool = 2;
        // The slots import matplotlib before they join the pool; a run's own sandbox would not.
        config.sandbox.preload = vec!["matplotlib.pyplot".to_owned()];
    })
    .await;
    let supervisor = server.state.supervisor.clone();
    let warming = tokio::spawn(supervisor.clone().keep_pool_warm());
    let wait_for = |count: usize| {
        let supervisor = supervisor.clone();
        async move {
            for _ in 0..600 {
                if supervisor.pool().len() == count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the pool never held {count}");
        }
    };
    wait_for(2).await;
    let body = serde_json::json!({
        "chat_id": "c1", "message_id": "warm-1",
        "code": "import sys\nprint('matplotlib.pyplot' in sys.modules)\nopen('/mnt/data/out.csv', 'w').write('a,b\\n1,2\\n')\nx = 3",
    });
    let run = json_of(server.run(ALICE, &body).await, 200).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "True\n", "the slot's interpreter preloaded");
    assert_eq!(
        run["files"][0]["name"], "out.csv",
        "the slot's folder is the message's"
    );
    let workspace = server.workspace_id("tenant-a", "warm-1").await;
    assert!(
        !supervisor
            .pool()
            .holds(&WorkspaceId::from_stored(workspace.as_str()))
    );
    // The next run is in the same interpreter.
    let body = serde_json::json!({"chat_id": "c1", "message_id": "warm-1", "code": "x"});
    let run = json_of(server.run(ALICE, &body).await, 200).await;
    assert_eq!(run["outputs"][0]["data"]["text/plain"], "3");
    wait_for(2).await;

    // A message whose sandbox is started while its run waits imports nothing ahead.
    warming.abort();
    let _ = warming.await;
    supervisor.clear_pool().await.expect("empty the pool");
    let body = serde_json::json!({
        "chat_id": "c1", "message_id": "cold-1",
        "code": "import sys\nprint('matplotlib.pyplot' in sys.modules)",
    });
    let run = json_of(server.run(ALICE, &body).await, 200).await;
    assert_eq!(run["stdout"], "False\n", "{run}");
    let warming = tokio::spawn(supervisor.clone().keep_pool_warm());
    wait_for(2).await;

    // Shutdown removes the slots; a later start removes what a crash left.
    warming.abort();
    let _ = warming.await;
    let removed = supervisor.clear_pool().await.expect("clear the pool");
    assert_eq!(removed, 2);
    assert!(
        supervisor
            .workspaces()
            .pool_slots()
            .expect("slots")
            .is_empty()
    );
    assert!(
        server.workspace_dir(&workspace).exists(),
        "a message's workspace stays"
    );
}

#[tokio::test]
async fn an_interpreter_codebox_let_go_is_replaced_and_the_run_says_so() {
    let env = TestEnv::new().await;
    env.run("m1", "x = 1", &[]).await;
    // The reaper releases an idle message's sandbox: the next run starts afresh.
    let workspace = env
        .supervisor
        .catalog()
        .messages()
        .get(&env.owner.tenant, &msg_id("m1"))
        .await
        .expect("catalog")
        .expect("message")
        .workspace_id;
    env.supervisor
        .runtime()
        .release(workspace.as_str())
        .await
        .expect("release");
    let report = env.run("m1", "print('x' in globals())", &[]).await;
    assert_eq!(report.run.stdout, "False\n");
    assert_eq!(kernel(&report), (1, true, None));

    // A restarted codebox has no channel to the interpreter it left running: it replaces it.
    env.run("m1", "y = 2", &[]).await;
    let reopened = env.reopen().await;
    let report = reopened
        .run(
            &env.owner,
            request("m1", "print('y' in globals())", &[]),
            None,
        )
        .await
        .expect("run after a restart of codebox");
    assert_eq!(report.run.stdout, "False\n");
    assert_eq!(kernel(&report), (1, true, None));
}

#[tokio::test]
async fn code_that_forges_frames_only_hurts_its_own_run() {
    let env = TestEnv::new().await;
    env.run("m1", "x = 1", &[]).await;
    // Frames for another cell, an image that is no PNG, a result of unknown kinds: ignored.
    let forge = r#"
import json, os, struct
def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack('>I', len(body)) + body
forged = frame({'t': 'done', 'id': 999, 'exit_code': 0}) \
    + frame({'t': 'image', 'id': 999, 'png': 'AAAA'}) \
    + frame({'t': 'result', 'id': 999, 'data': {'application/x-evil': 'x'}})
for fd in range(3, 64):
    try:
        os.write(fd, forged)
    except OSError:
        pass
print('still here')
"#;
    let report = env.run("m1", forge, &[]).await;
    assert_eq!(report.run.status, RunStatus::Succeeded, "{:?}", report.run);
    // What went to the code's own output pipes is output; what went to the channel is not.
    assert!(
        report.run.stdout.ends_with("still here\n"),
        "{}",
        report.run.stdout
    );
    assert!(report.run.outputs.is_empty(), "{:?}", report.run.outputs);
    let next = env.run("m1", "print(x)", &[]).await;
    assert_eq!(next.run.stdout, "1\n");

    // A length past the cap breaks the channel: the interpreter is lost, nothing else.
    let breaker = "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\xff\\xff\\xff\\xff')\n    except OSError:\n        pass\nimport time\ntime.sleep(5)";
    let report = env.run("m1", breaker, &[]).await;
    assert_eq!(report.run.status, RunStatus::Failed, "{:?}", report.run);
    assert!(report.run.duration_ms < 4000, "{}", report.run.duration_ms);
    let after = env.run("m1", "print('x' in globals())", &[]).await;
    assert_eq!(after.run.stdout, "False\n");
    assert_eq!(kernel(&after), (1, true, Some("crashed".to_owned())));
    // Other messages never noticed.
    let other = env.run("m2", "print('fine')", &[]).await;
    assert_eq!(other.run.stdout, "fine\n");
}
