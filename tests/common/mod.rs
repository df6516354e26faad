//! The test environment every integration test runs in: a fresh data folder (SQLite catalog,
//! local blob folder, workspaces) and the real Docker engine. Dropping it removes the
//! containers it created, also when the test panicked.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::path::{Path, PathBuf};
use std::process::Command;

use codebox::catalog::{FileRecord, Owner};
use codebox::{Config, RunReport, RunRequest, Supervisor};

/// The image tests run: the small one unless `CODEBOX_TEST_IMAGE` says otherwise.
pub fn test_image() -> String {
    std::env::var("CODEBOX_TEST_IMAGE").unwrap_or_else(|_| "codebox-python:test".to_owned())
}

/// A supervisor on a throwaway data folder.
pub struct TestEnv {
    /// The supervisor under test.
    pub supervisor: Supervisor,
    /// The user most tests act as.
    pub owner: Owner,
    /// The configuration the supervisor was opened with.
    pub config: Config,
    dir: tempfile::TempDir,
}

impl TestEnv {
    /// An environment with the default configuration (and the test image).
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// An environment whose configuration `adjust` changed first.
    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.sandbox.image = test_image();
        config.sandbox.memory = bytesize::ByteSize::mib(256);
        adjust(&mut config);
        let supervisor = Supervisor::open(config.clone())
            .await
            .expect("open the supervisor (is the test image built? see .ci/run)");
        Self {
            supervisor,
            owner: Owner::new("tenant-a", "alice"),
            config,
            dir,
        }
    }

    /// Opens a second supervisor on the same data folder, as a restarted process would.
    pub async fn reopen(&self) -> Supervisor {
        Supervisor::open(self.config.clone())
            .await
            .expect("reopen the supervisor")
    }

    /// A folder outside the data folder that the test may use.
    pub fn scratch(&self) -> PathBuf {
        let path = self.dir.path().join("scratch");
        std::fs::create_dir_all(&path).expect("scratch");
        path
    }

    /// Uploads `bytes` as `name` for the default owner.
    pub async fn upload(&self, name: &str, bytes: &[u8]) -> FileRecord {
        self.supervisor
            .upload(&self.owner, name, None, None, bytes)
            .await
            .expect("upload")
    }

    /// Runs `code` as message `message_id` of chat `chat-1` with these attachments.
    pub async fn run(&self, message_id: &str, code: &str, files: &[&FileRecord]) -> RunReport {
        self.supervisor
            .run(&self.owner, request(message_id, code, files), None)
            .await
            .expect("run")
    }

    /// The stored bytes of a file.
    pub async fn bytes_of(&self, file: &FileRecord) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.supervisor
            .blobs()
            .copy_to(&file.blob_key, &mut bytes)
            .await
            .expect("read blob");
        bytes
    }

    /// The host folder mounted at /mnt/data for a message.
    pub async fn data_dir_of(&self, message_id: &str) -> PathBuf {
        let message = self
            .supervisor
            .catalog()
            .messages()
            .get(&self.owner.tenant, message_id)
            .await
            .expect("catalog")
            .expect("message exists");
        self.supervisor
            .workspaces()
            .get(&message.workspace_id)
            .expect("workspace")
            .data
    }
}

/// A run request in chat `chat-1`.
pub fn request(message_id: &str, code: &str, files: &[&FileRecord]) -> RunRequest {
    RunRequest {
        chat_id: "chat-1".to_owned(),
        message_id: message_id.to_owned(),
        code: code.to_owned(),
        language: "python".to_owned(),
        file_ids: files.iter().map(|file| file.id.clone()).collect(),
        timeout: None,
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        remove_containers_of(&self.config.data_dir);
    }
}

/// Removes the container of every workspace under `data_dir`, whatever state it is in. Used on
/// drop, so it also runs when a test panicked.
pub fn remove_containers_of(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("workspaces")) else {
        return;
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|id| !id.starts_with('.'))
        .map(|id| format!("codebox-{id}"))
        .collect();
    if !names.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&names)
            .output();
    }
}
