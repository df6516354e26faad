//! Step 6 of the pipeline: every created or modified output with a tracked extension, within
//! the caps, streamed into the blob store and recorded; everything left out is reported as a
//! truncation with a reason, never dropped silently.

use super::*;

/// The run whose files are being registered, and where: what every file registered in one
/// run shares (its owner, message, run record, workspace, and the stream its events go to).
pub(super) struct Registering<'a> {
    /// Who the files belong to.
    pub owner: &'a Owner,
    /// The message the run belongs to.
    pub message: &'a MessageRecord,
    /// The run that wrote them.
    pub run: &'a RunRecord,
    /// The workspace they are read from.
    pub workspace: &'a Workspace,
    /// Where a `file` event goes for each one registered, when the caller streams.
    pub events: Option<&'a mpsc::Sender<RunEvent>>,
}

impl Supervisor {
    /// Step 6: stores every created or modified file with a tracked extension, within the
    /// caps, and records it. Everything a cap or a check left out is returned as a
    /// truncation, never dropped silently.
    pub(super) async fn register(
        &self,
        registering: &Registering<'_>,
        inputs: &Inputs,
        before: &Snapshot,
        after: &Snapshot,
    ) -> Result<(Vec<FileRecord>, Vec<Truncation>)> {
        let Registering {
            owner,
            message,
            run,
            workspace,
            events,
        } = *registering;
        let limits = &self.config.limits;
        let changes = snapshot::diff(before, after);
        let mut truncated = omissions(before, after, &self.config, limits.max_depth);
        let mut candidates: Vec<&Path> = changes
            .created
            .iter()
            .chain(&changes.modified)
            .map(|path| path.as_path())
            .collect();
        candidates.sort();
        let mut files = Vec::new();
        // The stored quota's room, to leave out what cannot fit before its bytes are copied;
        // recording checks the quota again, and that check is the one that holds.
        let mut room = self.stored_room(owner).await?;
        for relative in candidates {
            // Only an untracked extension lets a file go unreported; the check reads bytes, so
            // a name that is not valid UTF-8 is reported below rather than skipped here.
            let Some(name) = relative.file_name() else {
                continue;
            };
            if !self.config.outputs.is_tracked(name) {
                continue;
            }
            let shown = format!("{SANDBOX_DATA}/{}", relative.to_string_lossy());
            let mut skip = |reason: String| {
                truncated.push(Truncation {
                    path: shown.clone(),
                    reason,
                })
            };
            let Some(name) = name.to_str() else {
                skip("the name is not valid UTF-8: not registered".to_owned());
                continue;
            };
            let Some(relative_text) = relative.to_str() else {
                skip("the path is not valid UTF-8: not registered".to_owned());
                continue;
            };
            let Some(entry) = after.entries.get(relative) else {
                continue;
            };
            match &entry.kind {
                EntryKind::File => {}
                EntryKind::Symlink(_) => {
                    skip("a symbolic link, not a file: not registered".to_owned());
                    continue;
                }
                EntryKind::Dir | EntryKind::Other => {
                    skip("not a regular file".to_owned());
                    continue;
                }
            }
            if relative_text.len() > limits.max_path_bytes {
                skip(format!("path longer than {} bytes", limits.max_path_bytes));
                continue;
            }
            if entry.size > limits.max_file_bytes.as_u64() {
                skip(too_big(limits.max_file_bytes));
                continue;
            }
            if room.is_some_and(|room| entry.size > room) {
                skip(format!(
                    "{QUOTA_EXCEEDED}: it would take your stored files past their quota; \
                     delete files to make room"
                ));
                continue;
            }
            if files.len() >= limits.max_files_per_run {
                skip(format!(
                    "over the limit of {} files per run",
                    limits.max_files_per_run
                ));
                continue;
            }
            let derived_from = match before.entries.get(relative).map(|entry| &entry.kind) {
                Some(EntryKind::Symlink(target)) => Workspace::input_name_of_link(target)
                    .and_then(|input| inputs.get(&input).cloned()),
                _ => None,
            };
            let stored = match self.store_output(workspace, relative).await {
                Ok(stored) => stored,
                Err(Stored::Skipped(reason)) => {
                    skip(reason);
                    continue;
                }
                Err(Stored::Failed(error)) => return Err(error),
            };
            let now = catalog::now();
            let stored_size = stored.1.size;
            let record = FileRecord {
                id: stored.0,
                tenant: owner.tenant.clone(),
                user_id: owner.user.clone(),
                chat_id: Some(message.chat_id.clone()),
                message_id: Some(message.message_id.clone()),
                run_id: Some(run.id.clone()),
                name: name.to_owned(),
                path: format!("{SANDBOX_DATA}/{relative_text}"),
                size: i64::try_from(stored.1.size).unwrap_or(i64::MAX),
                content_type: content_type_of(name),
                sha256: stored.1.sha256,
                source: FileSource::CodeExecution,
                derived_from,
                blob_key: stored.1.key,
                created_at: now.clone(),
                deleted_at: None,
                modified_at: now,
                unlinked_at: None,
            };
            if let Err(error) = self.record_file(&record).await {
                self.delete_orphan_blob(&record.blob_key).await;
                match error {
                    Error::QuotaExceeded(reason) => {
                        skip(format!("{QUOTA_EXCEEDED}: {reason}"));
                        continue;
                    }
                    error => return Err(error),
                }
            }
            room = room.map(|room| room.saturating_sub(stored_size));
            if let Some(events) = events {
                let event = RunEvent::File(Box::new(record.clone()));
                let _ = tokio::time::timeout(EVENT_WAIT, events.send(event)).await;
            }
            files.push(record);
        }
        Ok((files, truncated))
    }

    /// Streams one output into the blob store: opened without following any link, regular
    /// files only, capped while streaming (the file may still be growing).
    async fn store_output(
        &self,
        workspace: &Workspace,
        relative: &Path,
    ) -> Result<(FileId, crate::blobs::Stored), Stored> {
        let limit = self.config.limits.max_file_bytes;
        let data = workspace.data.clone();
        let owned = relative.to_path_buf();
        let opened =
            tokio::task::spawn_blocking(move || crate::safe_fs::open_beneath(&data, &owned))
                .await
                .map_err(|error| {
                    Stored::Failed(
                        IoError {
                            action: "open",
                            path: relative.to_path_buf(),
                            source: std::io::Error::other(error),
                        }
                        .into(),
                    )
                })?;
        let (file, size) = match opened {
            Ok(opened) => opened,
            // The sandbox controls this tree: whatever it did to the entry since the snapshot
            // (removed it, swapped in a link) means the file is not registered, with a reason.
            Err(error) => {
                return Err(Stored::Skipped(format!(
                    "could not be opened safely: {error}"
                )));
            }
        };
        if size > limit.as_u64() {
            return Err(Stored::Skipped(too_big(limit)));
        }
        let id = FileId::new();
        let key = BlobKey::for_file(&id);
        match self
            .blobs
            .put_stream(&key, tokio::fs::File::from_std(file), limit.as_u64())
            .await
        {
            Ok(stored) => Ok((id, stored)),
            Err(BlobError::TooLarge { .. }) => Err(Stored::Skipped(too_big(limit))),
            Err(error) => Err(Stored::Failed(error.into())),
        }
    }
}

/// Why an output was not stored.
enum Stored {
    /// A check or cap left it out; the reason is reported to the caller.
    Skipped(String),
    /// The stores failed.
    Failed(Error),
}

fn too_big(limit: ByteSize) -> String {
    format!("larger than the limit of {}", limit.display().iec())
}

/// Truncations for what the after-snapshot left out that could hide an output of this run:
/// - a folder below the depth cap, and one that could not be read, every time: what they hold
///   was not looked at, so a file the code wrote there cannot be ruled out;
/// - an entry below the depth cap with a tracked extension, when this run created or changed
///   it (the before-snapshot described it otherwise, or not at all);
/// - the entry cap, every time it is reached: files past it were not looked at, even when an
///   earlier run had already filled the workspace up to it.
fn omissions(
    before: &Snapshot,
    after: &Snapshot,
    config: &Config,
    max_depth: usize,
) -> Vec<Truncation> {
    let described: HashMap<&Path, &snapshot::Entry> = before
        .omissions
        .iter()
        .filter_map(|omission| match omission {
            Omission::TooDeep(path, entry) => Some((path.as_path(), entry)),
            _ => None,
        })
        .collect();
    let shown = |path: &Path| format!("{SANDBOX_DATA}/{}", path.to_string_lossy());
    let mut truncations = Vec::new();
    for omission in &after.omissions {
        match omission {
            Omission::TooDeep(path, entry) if entry.kind == EntryKind::Dir => {
                truncations.push(Truncation {
                    path: shown(path),
                    reason: format!(
                        "a folder deeper than {max_depth} folders: nothing in it was looked at"
                    ),
                });
            }
            Omission::TooDeep(path, entry) => {
                let tracked = path
                    .file_name()
                    .is_some_and(|name| config.outputs.is_tracked(name));
                if tracked && described.get(path.as_path()) != Some(&entry) {
                    truncations.push(Truncation {
                        path: shown(path),
                        reason: format!("deeper than {max_depth} folders: not looked at"),
                    });
                }
            }
            Omission::TooManyEntries => truncations.push(Truncation {
                path: SANDBOX_DATA.to_owned(),
                reason: format!(
                    "more than {} entries: the rest was not looked at",
                    config.limits.max_snapshot_entries
                ),
            }),
            Omission::Unreadable(path) => truncations.push(Truncation {
                path: shown(path),
                reason: "could not be read: not looked at".to_owned(),
            }),
        }
    }
    truncations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omissions_hide_nothing_an_earlier_run_also_missed() {
        let config = Config::default();
        let file = |size| snapshot::Entry {
            kind: EntryKind::File,
            size,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 7,
        };
        let folder = snapshot::Entry {
            kind: EntryKind::Dir,
            ..file(0)
        };
        let before = Snapshot {
            entries: Default::default(),
            omissions: vec![
                Omission::Unreadable("locked".into()),
                Omission::TooDeep("a/changed.csv".into(), file(1)),
                Omission::TooDeep("a/same.csv".into(), file(1)),
                Omission::TooDeep("a/c".into(), folder.clone()),
                Omission::TooManyEntries,
            ],
        };
        let after = Snapshot {
            entries: Default::default(),
            omissions: vec![
                Omission::Unreadable("locked".into()),
                Omission::TooDeep("a/changed.csv".into(), file(2)),
                Omission::TooDeep("a/same.csv".into(), file(1)),
                Omission::TooDeep("a/c".into(), folder),
                Omission::TooDeep("a/new.csv".into(), file(1)),
                Omission::TooDeep("a/notes.txt".into(), file(1)),
                Omission::TooManyEntries,
            ],
        };
        let lines: Vec<String> = omissions(&before, &after, &config, 1)
            .into_iter()
            .map(|t| format!("{}: {}", t.path, t.reason))
            .collect();
        assert_eq!(
            lines,
            [
                "/mnt/data/locked: could not be read: not looked at",
                "/mnt/data/a/changed.csv: deeper than 1 folders: not looked at",
                "/mnt/data/a/c: a folder deeper than 1 folders: nothing in it was looked at",
                "/mnt/data/a/new.csv: deeper than 1 folders: not looked at",
                "/mnt/data: more than 20000 entries: the rest was not looked at",
            ]
        );
    }
}
