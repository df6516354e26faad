//! The `codebox` command as a user runs it: `codebox run` with attachments, `--out`, `--json`,
//! exit codes and message reuse, and the one-line error when the engine is unreachable.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn codebox(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codebox"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--image")
        .arg(common::test_image())
        .args(args)
        .output()
        .expect("start codebox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Removes the containers of every workspace under `data_dir`.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        common::remove_containers_of(self.0);
    }
}

#[test]
fn run_registers_copies_out_and_reuses_the_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let _cleanup = Cleanup(&data_dir);
    let csv = dir.path().join("sales.csv");
    std::fs::write(&csv, "region,units\nnorth,3\nsouth,5\n").expect("csv");
    let script = dir.path().join("report.py");
    std::fs::write(
        &script,
        "import csv, openpyxl\n\
         book = openpyxl.Workbook()\n\
         for row in csv.reader(open('/mnt/data/sales.csv')):\n    book.active.append(row)\n\
         book.save('/mnt/data/report.xlsx')\n\
         print('saved /mnt/data/report.xlsx')\n",
    )
    .expect("script");
    let out = dir.path().join("out");

    let output = codebox(
        &data_dir,
        &[
            "run",
            script.to_str().expect("utf-8"),
            "--attach",
            csv.to_str().expect("utf-8"),
            "--message",
            "msg-cli",
            "--out",
            out.to_str().expect("utf-8"),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.starts_with("saved /mnt/data/report.xlsx\n\nrun run_"),
        "{stdout}"
    );
    assert!(stdout.contains(" status succeeded  exit 0 "), "{stdout}");
    // The table row names the registered file with the size and digest of what --out holds,
    // and the workspace keeps the same bytes.
    let copied = std::fs::read(out.join("report.xlsx")).expect("copied to --out");
    assert!(copied.starts_with(b"PK"), "an xlsx is a zip file");
    let digest = hex::encode(Sha256::digest(&copied));
    let row = stdout
        .lines()
        .find(|line| line.starts_with("/mnt/data/report.xlsx "))
        .unwrap_or_else(|| panic!("no table row for the report: {stdout}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns.len(), 4, "{row}");
    assert_eq!(columns[1], copied.len().to_string(), "{row}");
    assert_eq!(columns[2], &digest[..16], "{row}");
    assert!(columns[3].starts_with("file_"), "{row}");
    assert!(
        stdout.ends_with(&format!("copied to {}\n", out.display())),
        "{stdout}"
    );

    // The same message again: the first run's files are there; --json prints the Run object.
    let output = codebox(&data_dir, &["run", "-", "--message", "msg-cli", "--json"]);
    // stdin is empty here, so the script is empty: a no-op run in the same workspace.
    assert!(output.status.success(), "{}", text(&output.stderr));
    let run: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(run["message_id"], "msg-cli");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["files"].as_array().map(Vec::len), Some(0));
    for key in [
        "id",
        "chat_id",
        "exit_code",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "duration_ms",
        "truncated",
        "created_at",
    ] {
        assert!(run.get(key).is_some(), "Run has {key}");
    }

    let lister = dir.path().join("ls.py");
    std::fs::write(&lister, "import os\nprint(sorted(os.listdir('/mnt/data')))\nopen('/mnt/data/more.csv','w').write('x')\n")
        .expect("script");
    let output = codebox(
        &data_dir,
        &[
            "run",
            lister.to_str().expect("utf-8"),
            "--message",
            "msg-cli",
            "--json",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let run: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["stdout"], "['report.xlsx', 'sales.csv']\n");
    assert_eq!(run["files"].as_array().map(Vec::len), Some(1));
    let file = &run["files"][0];
    assert_eq!(file["name"], "more.csv");
    assert_eq!(file["path"], "/mnt/data/more.csv");
    assert_eq!(file["source"], "code_execution");
    assert_eq!(file["content_type"], "text/csv");
    assert_eq!(file["size"], 1);
}

#[test]
fn exit_code_is_the_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let _cleanup = Cleanup(&data_dir);
    let script = dir.path().join("fail.py");
    std::fs::write(
        &script,
        "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)\n",
    )
    .expect("script");
    let output = codebox(&data_dir, &["run", script.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(text(&output.stderr), "bye\n");
    let stdout = text(&output.stdout);
    assert!(stdout.contains(" status failed  exit 3 "), "{stdout}");
    assert!(stdout.ends_with("\nno files registered\n"), "{stdout}");
    // A message the user did not name keeps its workspace but not its container.
    let workspaces: Vec<String> = std::fs::read_dir(data_dir.join("workspaces"))
        .expect("workspaces")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(workspaces.len(), 1);
    let inspect = Command::new("docker")
        .args(["inspect", &format!("codebox-{}", workspaces[0])])
        .output()
        .expect("docker inspect");
    assert!(!inspect.status.success(), "the one-shot sandbox is removed");
    // Nor its mounted file system: the command leaves no loop device behind.
    let data = data_dir
        .join("workspaces")
        .join(&workspaces[0])
        .join("data");
    assert!(!codebox::workspace::disk::is_mount_point(&data).expect("inspect"));
}

#[test]
fn unreachable_engine_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["image", "build", "--test"][..], &["run", "-"][..]] {
        let output = Command::new(env!("CARGO_BIN_EXE_codebox"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .expect("start codebox");
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot reach the Docker engine"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn operators_see_files_workspaces_and_a_reaper_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let _cleanup = Cleanup(&data_dir);
    let csv = dir.path().join("sales.csv");
    let csv_bytes = b"region,units\nnorth,3\nsouth,5\n";
    std::fs::write(&csv, csv_bytes).expect("csv");
    let script = dir.path().join("copy.py");
    std::fs::write(
        &script,
        "open('/mnt/data/copy.csv', 'w').write(open('/mnt/data/sales.csv').read() * 2)\n",
    )
    .expect("script");
    let output = codebox(
        &data_dir,
        &[
            "run",
            script.to_str().expect("utf-8"),
            "--attach",
            csv.to_str().expect("utf-8"),
            "--message",
            "msg-ops",
            "--user",
            "olga",
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));

    // Files: the upload and the output, with their bytes, for the one user who has any.
    let output = codebox(&data_dir, &["files", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let files: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let bytes = csv_bytes.len() as u64 * 3;
    assert_eq!(
        files,
        serde_json::json!({
            "users": [{"tenant": "local", "user_id": "olga", "files": 2, "bytes": bytes}],
            "total_files": 2,
            "total_bytes": bytes,
        })
    );
    let output = codebox(&data_dir, &["files", "--tenant", "nobody", "--json"]);
    let none: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(none["users"], serde_json::json!([]));
    let table = text(&codebox(&data_dir, &["files"]).stdout);
    assert!(
        table.starts_with("TENANT\tUSER\tFILES\tBYTES\nlocal\tolga\t2\t"),
        "{table}"
    );

    // Workspaces: the message's, with its owner and its bytes.
    let output = codebox(&data_dir, &["workspaces", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let workspaces = list["workspaces"].as_array().expect("workspaces");
    assert_eq!(workspaces.len(), 1, "{list}");
    assert_eq!(workspaces[0]["message_id"], "msg-ops");
    assert_eq!(workspaces[0]["user_id"], "olga");
    assert!(workspaces[0]["bytes"].as_u64() > Some(0), "{list}");

    // A dry reaper pass changes nothing; the workspace is still listed afterwards.
    let output = codebox(&data_dir, &["gc", "--dry-run", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["dry_run"], true);
    let again: serde_json::Value =
        serde_json::from_slice(&codebox(&data_dir, &["workspaces", "--json"]).stdout)
            .expect("json");
    assert_eq!(again["workspaces"].as_array().map(Vec::len), Some(1));
    let line = text(&codebox(&data_dir, &["gc", "--dry-run"]).stdout);
    assert!(line.starts_with("would remove: "), "{line}");
}
