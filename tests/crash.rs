//! Crash safety against the real engine and the real binary: `codebox serve` is killed with
//! SIGKILL at each step of a run (after the claim, during execute, halfway through
//! registering its files, during a purge) and started again on the same data folder. After
//! the restart and one reaper pass: no registered file is lost, every catalog row has its
//! bytes, every blob has its row (orphans are swept), no run is left `running`, no container
//! of the killed process is left, and the interrupted message runs again.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::process::{self, kill, start, stop};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tokio::process::Child;

const TOKEN: &str = "svc-crash-test-0123456789abcdef";
const ADMIN: &str = "adm-crash-test-0123456789abcdef";

/// How many files the run that is killed while registering writes.
const FILES: usize = 300;

/// Removes the containers and unmounts the file systems of the data folder, also when the
/// test panicked.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        common::remove_containers_of(&self.0);
    }
}

/// One data folder and the server currently running on it.
struct Site {
    config: PathBuf,
    data_dir: PathBuf,
    instance: String,
    catalog: SqlitePool,
    client: reqwest::Client,
    url: String,
}

impl Site {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .header("X-User-Id", "alice")
    }

    /// Runs `code` in message `message_id` and waits for its answer, which must be a success.
    async fn run_ok(&self, message_id: &str, code: &str) -> serde_json::Value {
        let run = common::json_of(self.run(message_id, code).send().await.expect("run"), 200).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        run
    }

    fn run(&self, message_id: &str, code: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, "/v1/runs")
            .json(&serde_json::json!({
                "chat_id": "c", "message_id": message_id, "code": code,
            }))
    }

    /// `POST /v1/admin/gc` over every tenant.
    fn gc_request(&self) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/admin/gc", self.url))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({}))
    }

    async fn gc(&self) -> serde_json::Value {
        common::json_of(self.gc_request().send().await.expect("gc"), 200).await
    }

    fn blobs(&self) -> PathBuf {
        self.data_dir.join("blobs").join("files")
    }

    /// The names in the blob folder.
    fn blob_names(&self) -> Vec<String> {
        std::fs::read_dir(self.blobs())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The ids of the file rows of message `message_id`.
    async fn file_ids_of(&self, message_id: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT id FROM files WHERE message_id = $1")
            .bind(message_id)
            .fetch_all(&self.catalog)
            .await
            .expect("read the catalog")
    }

    /// The runs of message `message_id`: `(status, reason)`.
    async fn runs_of(&self, message_id: &str) -> Vec<(String, Option<String>)> {
        sqlx::query_as("SELECT status, reason FROM runs WHERE message_id = $1")
            .bind(message_id)
            .fetch_all(&self.catalog)
            .await
            .expect("read the catalog")
    }

    /// The warm slots' markers (`workspaces/.pool/<id>`).
    fn slots(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.data_dir.join("workspaces").join(".pool"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills the server, as a crash would, and starts a new one on the same folder; returns
    /// the new server and what the killed one left.
    async fn crash_and_restart(&mut self, server: Child) -> (Child, Killed) {
        let killed = Killed {
            containers: process::containers_of(&self.instance)
                .into_iter()
                .map(|(id, _)| id)
                .collect(),
            slots: self.slots(),
        };
        kill(server).await;
        let (server, url, _) = start(&self.config, "text").await;
        self.url = url;
        (server, killed)
    }

    /// The invariants that must hold after a crash, once the restarted server has made one
    /// reaper pass: see the module's doc. Files in `registered` were recorded before the
    /// crash and must all be there.
    async fn check(&self, killed: &Killed, registered: &[String]) -> serde_json::Value {
        let report = self.gc().await;
        let rows: Vec<(String, i64, String, String, Option<String>)> =
            sqlx::query_as("SELECT id, size, sha256, blob_key, deleted_at FROM files")
                .fetch_all(&self.catalog)
                .await
                .expect("read the catalog");
        let ids: HashSet<&str> = rows.iter().map(|row| row.0.as_str()).collect();
        for id in registered {
            assert!(ids.contains(id.as_str()), "file {id} was lost: {report:#}");
        }
        // Every row's bytes are there, whole: a deleted file's row went with its bytes.
        for (id, size, sha256, _, deleted_at) in &rows {
            assert_eq!(
                deleted_at, &None,
                "{id} was deleted but not purged: {report:#}"
            );
            let response = self
                .request(reqwest::Method::GET, &format!("/v1/files/{id}/content"))
                .send()
                .await
                .expect("download");
            assert_eq!(response.status(), 200, "{id}: {report:#}");
            let mut hasher = Sha256::new();
            let mut length = 0usize;
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.expect("a chunk");
                length += chunk.len();
                hasher.update(&chunk);
            }
            assert_eq!(length as i64, *size, "{id}");
            assert_eq!(&hex::encode(hasher.finalize()), sha256, "{id}");
        }
        // Every blob (and no unfinished upload) has its row.
        let keys: HashSet<&str> = rows.iter().map(|row| row.3.as_str()).collect();
        let orphans: Vec<String> = self
            .blob_names()
            .into_iter()
            .filter(|name| !keys.contains(format!("files/{name}").as_str()))
            .collect();
        assert_eq!(orphans, Vec::<String>::new(), "{report:#}");
        // No run is left running.
        let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE status = 'running'")
            .fetch_one(&self.catalog)
            .await
            .expect("read the catalog");
        assert_eq!(running, 0);
        // None of the killed process's containers is left, and every container is a
        // message's or a live warm slot's.
        let owned: HashSet<String> = sqlx::query_scalar("SELECT workspace_id FROM messages")
            .fetch_all(&self.catalog)
            .await
            .expect("read the catalog")
            .into_iter()
            .collect();
        let live_slots = self.slots();
        for (container, workspace) in process::containers_of(&self.instance) {
            assert!(
                !killed.containers.contains(&container),
                "the container of {workspace} outlived the process that ran it"
            );
            assert!(
                owned.contains(&workspace) || live_slots.contains(&workspace),
                "the container of {workspace} belongs to no message"
            );
        }
        // The killed process's warm slots are gone, or became the message's that claimed one.
        let slots = self.slots();
        for slot in &killed.slots {
            assert!(
                !slots.contains(slot) || owned.contains(slot),
                "the warm slot {slot} outlived the process that made it"
            );
        }
        report
    }
}

/// What a killed server left: its containers and its warm slots.
struct Killed {
    containers: BTreeSet<String>,
    slots: BTreeSet<String>,
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "gave up waiting for {what}");
}

/// Code that writes `count` csv files of `rows` rows each.
fn many_files(count: usize, rows: usize) -> String {
    format!(
        "body = 'a,b\\n' + '1,2\\n' * {rows}\n\
         for n in range({count}):\n    open(f'/mnt/data/part-{{n:03}}.csv', 'w').write(body)\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_at_each_step_loses_nothing_and_leaks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let _cleanup = Cleanup(data_dir.clone());
    let config = dir.path().join("codebox.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data_dir:?}\n\
             [sandbox]\nimage = {image:?}\nmemory = \"256 MiB\"\nwarm_pool = 1\n\
             disk_limit = \"watchdog\"\n\
             [limits]\nmax_files_per_run = {max_files}\n\
             [retention]\ndeleted_file_grace = \"0s\"\norphan_blob_grace = \"0s\"\n\
             reap_interval = \"1h\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\nmax_runs_in_flight = 1\n\
             [[server.tokens]]\ntoken = {TOKEN:?}\ntenant = \"t\"\nrole = \"service\"\n\
             [[server.tokens]]\ntoken = {ADMIN:?}\ntenant = \"*\"\nrole = \"admin\"\n",
            image = common::test_image(),
            max_files = 2 * FILES,
        ),
    )
    .expect("config");
    let (server, url, _) = start(&config, "text").await;
    let instance = std::fs::read_to_string(data_dir.join("instance"))
        .expect("instance id")
        .trim()
        .to_owned();
    let catalog = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(data_dir.join("catalog.db"))
            .read_only(true)
            .busy_timeout(Duration::from_secs(10)),
    )
    .await
    .expect("open the catalog read-only");
    let mut site = Site {
        config,
        data_dir,
        instance,
        catalog,
        client: reqwest::Client::new(),
        url,
    };
    let first = site
        .run_ok(
            "m-first",
            "open('/mnt/data/first.csv', 'w').write('a\\n1\\n')",
        )
        .await;
    let mut registered: Vec<String> = first["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| file["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(registered.len(), 1, "{first:#}");

    // 1. After the claim: one run holds the only slot, another message's run waits for it.
    let sleeper = tokio::spawn(site.run("m-claim", "import time\ntime.sleep(600)").send());
    wait_for("the first run to start", async || {
        !site.runs_of("m-claim").await.is_empty()
    })
    .await;
    let waiting = tokio::spawn(site.run("m-waiting", "print(1)").send());
    wait_for("the second run to wait for the slot", async || {
        site.client
            .get(format!("{}/metrics", site.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
            .lines()
            .any(|line| line == "codebox_runs_queued 1")
    })
    .await;
    let (server, killed) = site.crash_and_restart(server).await;
    assert!(sleeper.await.expect("task").is_err(), "the server died");
    assert!(waiting.await.expect("task").is_err(), "the server died");
    site.check(&killed, &registered).await;
    let runs = site.runs_of("m-claim").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "failed", "{runs:?}");
    assert!(
        runs[0]
            .1
            .as_deref()
            .is_some_and(|reason| reason.contains("stopped")),
        "{runs:?}"
    );
    site.run_ok("m-claim", "print('again')").await;
    site.run_ok("m-waiting", "print('now')").await;

    // 2. During execute: the code has started (its output streamed) and sleeps.
    let response = site
        .run(
            "m-exec",
            "print('started', flush=True)\nimport time\ntime.sleep(600)",
        )
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("a streamed run");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("started") {
        let chunk = stream.next().await.expect("more events").expect("a chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (server, killed) = site.crash_and_restart(server).await;
    site.check(&killed, &registered).await;
    assert_eq!(site.runs_of("m-exec").await[0].0, "failed");
    site.run_ok("m-exec", "print('again')").await;

    // 3. Halfway through registering: some of the run's files are recorded, not all.
    let mut server = server;
    let mut caught = None;
    for (attempt, rows) in [(0, 2_000), (1, 10_000), (2, 30_000)] {
        let message = format!("m-register-{attempt}");
        let writer = tokio::spawn(site.run(&message, &many_files(FILES, rows)).send());
        let mut seen = Vec::new();
        while !writer.is_finished() {
            seen = site.file_ids_of(&message).await;
            // A third or more recorded, not all: well inside the registration.
            if (FILES / 3..FILES).contains(&seen.len()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if writer.is_finished() {
            // The whole run was registered before a poll caught it: bigger files next time.
            let run = common::json_of(writer.await.expect("task").expect("run"), 200).await;
            assert_eq!(run["status"], "succeeded", "{run:#}");
            continue;
        }
        eprintln!("killed while registering: {} of {FILES} rows", seen.len());
        let (restarted, killed) = site.crash_and_restart(server).await;
        server = restarted;
        registered.extend(seen.iter().cloned());
        let report = site.check(&killed, &registered).await;
        let kept = site.file_ids_of(&message).await;
        assert!(kept.len() < FILES, "{report:#}");
        assert_eq!(site.runs_of(&message).await[0].0, "failed");
        site.run_ok(&message, "print('again')").await;
        caught = Some(message);
        break;
    }
    let message = caught.expect("a poll caught the registration halfway");

    // 4. During a purge: many deleted files, and the reaper killed while it purges them.
    site.run_ok("m-purge", &many_files(FILES, 100)).await;
    let mut doomed = site.file_ids_of("m-purge").await;
    assert_eq!(doomed.len(), FILES);
    doomed.extend(site.file_ids_of(&message).await);
    for id in &doomed {
        let response = site
            .request(reqwest::Method::DELETE, &format!("/v1/files/{id}"))
            .send()
            .await
            .expect("delete");
        assert_eq!(response.status(), 204, "{id}");
    }
    registered.retain(|id| !doomed.contains(id));
    let before = site.blob_names().len();
    let purge = tokio::spawn(site.gc_request().send());
    let mut purging = false;
    while !purge.is_finished() {
        let left = site.blob_names().len();
        // A third or more purged, not all: well inside the purge.
        if left <= before - doomed.len() / 3 && left > before - doomed.len() {
            eprintln!("killed while purging: {left} of {before} blobs left");
            purging = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(purging, "the purge ended before a poll caught it halfway");
    let (server, killed) = site.crash_and_restart(server).await;
    let report = site.check(&killed, &registered).await;
    assert!(
        !report["files_purged"]
            .as_array()
            .expect("purged")
            .is_empty(),
        "the next pass completes the purge: {report:#}"
    );
    for id in &doomed {
        let response = site
            .request(reqwest::Method::GET, &format!("/v1/files/{id}"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 404, "{id}");
    }
    site.run_ok("m-first", "print(open('/mnt/data/first.csv').read())")
        .await;
    stop(server).await;
}
