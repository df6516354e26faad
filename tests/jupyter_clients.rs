//! Jupyter clients codebox did not write, installed from PyPI, run against `/jupyter`
//! unchanged: Datalayer's `jupyter_kernel_client` pointed straight at codebox, and a real
//! Jupyter Server in gateway mode (`--gateway-url`) relaying its kernels to codebox, driven by
//! the same client. `scripts/jupyter-clients` builds their venv when it is missing (pip from
//! PyPI) and runs `scripts/jupyter_clients.py`, which prints what each client saw as JSON.

mod common;

use std::path::Path;

use common::{TENANT_A_TOKEN, TestServer};
use serde_json::Value;

/// Checks one client's record from the summary.
fn check(name: &str, client: &Value) {
    let context = || {
        format!(
            "{name}: {}\n{}",
            serde_json::to_string_pretty(&client["steps"]).unwrap_or_default(),
            client["error"].as_str().unwrap_or("")
        )
    };
    assert!(client["error"].is_null(), "{}", context());
    let steps = &client["steps"];
    assert_eq!(steps["kernel_on_codebox"], 200, "{}", context());
    assert_eq!(steps["kernel_info"]["language"], "python", "{}", context());

    let hello = &steps["hello"];
    assert_eq!(hello["status"], "ok", "{}", context());
    assert_eq!(hello["stdout"], "hi\n", "{}", context());
    assert_eq!(hello["results"], serde_json::json!(["42"]), "{}", context());

    let figure = &steps["figure"];
    assert_eq!(figure["status"], "ok", "{}", context());
    assert_eq!(figure["pngs"], 1, "{}", context());
    assert_eq!(figure["png_magic"], true, "{}", context());

    let file = &steps["file"];
    assert_eq!(file["status"], "ok", "{}", context());
    assert_eq!(file["links"], 1, "{}", context());
    assert_eq!(file["content"], "a\n1\n", "{}", context());

    let error = &steps["error"];
    assert_eq!(error["status"], "error", "{}", context());
    assert_eq!(
        error["enames"],
        serde_json::json!(["ZeroDivisionError"]),
        "{}",
        context()
    );

    // The kernel kept `x` across executions, the failed one included.
    let state = &steps["state"];
    assert_eq!(state["status"], "ok", "{}", context());
    assert_eq!(state["results"], serde_json::json!(["6"]), "{}", context());

    // Listing, interrupting and restarting go through the client's REST calls; after the
    // restart the interpreter is fresh.
    assert_eq!(steps["listed"], true, "{}", context());
    let restarted = &steps["restarted"];
    assert_eq!(restarted["status"], "ok", "{}", context());
    assert_eq!(restarted["execution_count"], 1, "{}", context());
    assert_eq!(
        restarted["results"],
        serde_json::json!(["False"]),
        "{}",
        context()
    );

    assert_eq!(steps["kernel_after_shutdown"], 404, "{}", context());
}

#[tokio::test(flavor = "multi_thread")]
async fn third_party_jupyter_clients_run_unchanged_against_codebox() {
    let server = TestServer::new().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/jupyter-clients");
    // The server runs in this process: the clients run in a child, awaited without blocking it.
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("run")
        .arg(server.url("/jupyter"))
        .arg(TENANT_A_TOKEN)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run scripts/jupyter-clients");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "scripts/jupyter-clients failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON summary on stdout:\n{stdout}"));
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    let clients = summary["clients"].as_object().expect("clients");
    assert_eq!(clients.len(), 2, "{summary:#}");
    for (name, client) in clients {
        check(name, client);
    }
    // The Jupyter Server in gateway mode relayed codebox's kernel specs.
    let specs = &clients["jupyter_server_gateway"]["steps"]["kernelspecs"];
    assert_eq!(specs["default"], "python3", "{summary:#}");
    assert_eq!(
        specs["display_name"], "Python 3 (codebox sandbox)",
        "{summary:#}"
    );
}
