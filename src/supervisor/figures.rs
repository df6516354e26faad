//! Step 6b of the pipeline: the interpreter's rich outputs. Results and errors are kept as
//! they came (host paths translated); every figure is stored as a PNG file of the run
//! (`source: figure`), downloadable like any output, and the output names that file.
//!
//! A figure's bytes come from the sandbox and are stored as they are, checked only to be a
//! PNG within the cap (by the runtime): the name and everything else about the file are the
//! supervisor's. Figures are not in `/mnt/data`, so their `path` is empty.

use super::register::Registering;
use super::*;

impl Supervisor {
    /// Stores the run's figures and returns its outputs in order, with the figures' files.
    /// Figures count towards the files a run may register: `room` is what the files of
    /// `/mnt/data` left, and a figure past it is reported as a truncation.
    pub(super) async fn register_outputs(
        &self,
        registering: &Registering<'_>,
        outcome: &ExecOutcome,
        room: usize,
    ) -> Result<(Vec<RunOutput>, Vec<FileRecord>, Vec<Truncation>)> {
        let paths = path_map(registering.workspace);
        let mut outputs = Vec::new();
        let mut figures = Vec::new();
        let mut truncated = Vec::new();
        let mut drawn = 0;
        for output in &outcome.outputs {
            let RichOutput::Image { png } = output else {
                outputs.extend(stored_output(output.clone(), &paths));
                continue;
            };
            drawn += 1;
            let name = format!("figure-{}-{drawn}.png", outcome.execution_count);
            if figures.len() >= room {
                truncated.push(Truncation {
                    path: name,
                    reason: format!(
                        "over the limit of {} files per run",
                        self.config.limits.max_files_per_run
                    ),
                });
                continue;
            }
            let record = match self.store_figure(registering, &name, png).await {
                Ok(record) => record,
                // Past the stored quota the figure is left out, and the run says why.
                Err(Error::QuotaExceeded(reason)) => {
                    truncated.push(Truncation {
                        path: name,
                        reason: format!("{QUOTA_EXCEEDED}: {reason}"),
                    });
                    continue;
                }
                Err(error) => return Err(error),
            };
            let output = RunOutput::Image {
                file_id: record.id.clone(),
            };
            if let Some(events) = registering.events {
                let event =
                    RunEvent::Output(Box::new(output.clone()), Some(Box::new(record.clone())));
                let _ = tokio::time::timeout(EVENT_WAIT, events.send(event)).await;
            }
            outputs.push(output);
            figures.push(record);
        }
        Ok((outputs, figures, truncated))
    }

    /// Stores one figure and records it as a file of the run.
    async fn store_figure(
        &self,
        registering: &Registering<'_>,
        name: &str,
        png: &bytes::Bytes,
    ) -> Result<FileRecord> {
        let Registering {
            owner,
            message,
            run,
            ..
        } = *registering;
        let id = FileId::new();
        let key = BlobKey::for_file(&id);
        let stored = self
            .blobs
            .put_stream(&key, std::io::Cursor::new(png.clone()), png.len() as u64)
            .await?;
        let now = catalog::now();
        let record = FileRecord {
            id,
            tenant: owner.tenant.clone(),
            user_id: owner.user.clone(),
            chat_id: Some(message.chat_id.clone()),
            message_id: Some(message.message_id.clone()),
            run_id: Some(run.id.clone()),
            content_type: content_type_of(name),
            name: name.to_owned(),
            path: String::new(),
            size: i64::try_from(stored.size).unwrap_or(i64::MAX),
            sha256: stored.sha256,
            source: FileSource::Figure,
            derived_from: None,
            blob_key: stored.key,
            created_at: now.clone(),
            deleted_at: None,
            modified_at: now,
            unlinked_at: None,
        };
        if let Err(error) = self.record_file(&record).await {
            self.delete_orphan_blob(&record.blob_key).await;
            return Err(error);
        }
        Ok(record)
    }
}

/// A result or error as stored, its text with host paths translated; `None` for a figure,
/// which is stored once registered.
pub(super) fn stored_output(output: RichOutput, paths: &PathMap) -> Option<RunOutput> {
    let text = |text: String| translate::to_sandbox_paths(&text, paths);
    match output {
        RichOutput::Result { data } => Some(RunOutput::Result {
            data: data
                .into_iter()
                .map(|(kind, value)| (kind, text(value)))
                .collect(),
        }),
        RichOutput::Error {
            ename,
            evalue,
            traceback,
        } => Some(RunOutput::Error {
            ename,
            evalue: text(evalue),
            traceback: traceback.into_iter().map(text).collect(),
        }),
        RichOutput::Image { .. } => None,
    }
}
