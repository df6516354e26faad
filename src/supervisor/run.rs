//! The run pipeline, one message at a time: [`Supervisor::run`] and its steps, each one
//! function in the order `shared/DESIGN.md` gives them. Read it top to bottom.
//!
//! ```text
//! check -> claim -> hold -> restore -> attach -> prepare -> snapshot -> execute -> snapshot
//!       -> register -> answer
//! ```
//!
//! Steps that take more than a screen have files of their own: `placement.rs` (holding the
//! message when several instances share the catalog), `attach.rs` (placing attachments),
//! `restore.rs` (a workspace lost with its instance, rebuilt), `register.rs` (storing
//! outputs) and `figures.rs` (the interpreter's rich outputs).

use super::disk_watch::{disk_filled, disk_usage};
use super::register::Registering;
use super::*;

impl Supervisor {
    /// Runs code for one message of `owner`: the whole pipeline. A run that executes returns
    /// `Ok` whatever its exit status; `Err` means it could not be run (bad request, someone
    /// else's message or file, or an infrastructure failure). `events`, if given, receives
    /// output and registered files as they happen.
    pub async fn run(
        &self,
        owner: &Owner,
        request: RunRequest,
        events: Option<mpsc::Sender<RunEvent>>,
    ) -> Result<RunReport> {
        let accepted = self.accept(owner, request).await?;
        self.carry_out(accepted, events).await
    }

    /// The first half of [`Supervisor::run`], for callers that must answer a refusal before
    /// they start streaming: checks the request, looks up the attachments and binds the
    /// message. Nothing is executed yet.
    pub async fn accept(&self, owner: &Owner, request: RunRequest) -> Result<AcceptedRun> {
        let timeout = self.check(&request)?;
        let attachments = self.attachments_of(owner, &request.file_ids).await?;
        let message = self
            .claim(owner, &request.chat_id, &request.message_id)
            .await?;
        self.hold(&message).await?;
        self.make_workspace_room(&message).await?;
        Ok(AcceptedRun {
            owner: owner.clone(),
            request,
            timeout,
            attachments,
            message,
        })
    }

    /// The second half of [`Supervisor::run`]: everything from the workspace on.
    pub async fn carry_out(
        &self,
        accepted: AcceptedRun,
        events: Option<mpsc::Sender<RunEvent>>,
    ) -> Result<RunReport> {
        let AcceptedRun {
            owner,
            request,
            timeout,
            attachments,
            message,
        } = accepted;
        let owner = &owner;
        let _lock = lock(&self.workspaces.get(message.workspace_id.as_str())?).await?;
        // Prepared under the lock: the reaper may have removed the folder while we waited.
        // A message last run on another instance, with no folder here, lost its workspace
        // with that instance: it is rebuilt from the catalog.
        let rebuilding = !self.workspaces.get(message.workspace_id.as_str())?.exists()
            && self.ran_elsewhere(&message).await?;
        let workspace = self.workspaces.prepare(message.workspace_id.as_str())?;
        self.cap_workspace(&workspace).await?;
        if rebuilding {
            self.restore_outputs(&message, &workspace).await?;
        }
        let inputs = self.attach(&message, &workspace, &attachments).await?;
        let kernel = self
            .prepare_sandbox(&message, &workspace, request.restart)
            .await?;
        let before = self.snapshot(&workspace).await?;
        let mut run = self
            .record_start(owner, &message, &request, rebuilding)
            .await?;
        // From here on the run is in the catalog: whatever fails marks it failed there too.
        let finished = async {
            let outcome = self
                .execute(&workspace, &request, timeout, events.as_ref())
                .await?;
            let after = self.snapshot(&workspace).await?;
            let registering = Registering {
                owner,
                message: &message,
                run: &run,
                workspace: &workspace,
                events: events.as_ref(),
            };
            let (mut files, mut truncated) = self
                .register(&registering, &inputs, &before, &after)
                .await?;
            let room = self
                .config
                .limits
                .max_files_per_run
                .saturating_sub(files.len());
            let (outputs, figures, left_out) =
                self.register_outputs(&registering, &outcome, room).await?;
            files.extend(figures);
            truncated.extend(left_out);
            if outcome.outputs_truncated {
                truncated.push(Truncation {
                    path: "outputs".to_owned(),
                    reason: format!(
                        "more than {} results, figures and errors: the rest were dropped",
                        self.config.limits.max_outputs
                    ),
                });
            }
            let kernel = self
                .kernel_state(&message, &request, kernel, &outcome)
                .await?;
            let answer = Answer {
                outcome,
                truncated,
                outputs,
                kernel,
                timeout,
            };
            self.answer(&mut run, answer, &workspace, &inputs).await?;
            Ok(files)
        }
        .await;
        let files = match finished {
            Ok(files) => files,
            Err(error) => return Err(self.record_failure(run, error).await),
        };
        Ok(RunReport { run, files })
    }

    /// Step 0: refuses what cannot run, before anything is written (the chat and message ids
    /// were checked when the request was made). Returns the timeout.
    fn check(&self, request: &RunRequest) -> Result<Duration> {
        if !LANGUAGES.contains(&request.language.as_str()) {
            return Err(Error::invalid(
                "language",
                format!("{:?} is not one of {LANGUAGES:?}", request.language),
            ));
        }
        let limits = &self.config.limits;
        if request.code.len() as u64 > limits.max_code_bytes.as_u64() {
            return Err(Error::TooLarge(format!(
                "code is larger than {}",
                limits.max_code_bytes.display().iec()
            )));
        }
        let timeout = request.timeout.unwrap_or(limits.default_timeout);
        if let Some(init_code) = &request.init_code
            && init_code.len() as u64 > limits.max_code_bytes.as_u64()
        {
            return Err(Error::TooLarge(format!(
                "init_code is larger than {}",
                limits.max_code_bytes.display().iec()
            )));
        }
        if timeout.is_zero() || timeout > limits.max_timeout {
            return Err(Error::invalid(
                "timeout_secs",
                format!(
                    "must be above 0 and at most {}",
                    limits.max_timeout.as_secs()
                ),
            ));
        }
        Ok(timeout)
    }

    /// Looks up the files to attach: each must be a live file of `owner`. Duplicates collapse.
    async fn attachments_of(&self, owner: &Owner, file_ids: &[FileId]) -> Result<Vec<FileRecord>> {
        let mut seen = BTreeSet::new();
        let mut files = Vec::new();
        for id in file_ids {
            if seen.insert(id) {
                files.push(self.file(owner, id).await?);
            }
        }
        Ok(files)
    }

    /// Step 1: binds the message to (tenant, user, chat) on first use. A message bound to
    /// another user or chat is reported as not found, so message ids cannot be probed. A new
    /// message gets a warm sandbox from the pool, when there is one: its workspace becomes
    /// the message's.
    pub(super) async fn claim(
        &self,
        owner: &Owner,
        chat_id: &ChatId,
        message_id: &MessageId,
    ) -> Result<MessageRecord> {
        let slot = self.pool.take();
        let workspace_id = slot.clone().unwrap_or_else(WorkspaceId::new);
        let claimed = self
            .catalog
            .messages()
            .claim(&catalog::Claim {
                owner,
                chat_id,
                message_id,
                new_workspace_id: &workspace_id,
                now: &catalog::now(),
                node: &self.instance,
            })
            .await;
        if let Some(slot) = slot {
            match &claimed {
                Ok(message) if message.workspace_id == slot => self.slot_assigned(&slot),
                // The message existed already: the slot waits for the next new one.
                _ => self.pool.give_back(slot),
            }
        }
        let message = claimed?;
        if message.is_bound_to(owner, chat_id) {
            Ok(message)
        } else {
            Err(Error::NotFound("message"))
        }
    }

    /// Step 2a': gives the workspace's `data/` its own capped file system, where the disk
    /// policy is `loop`. A sandbox made before that saw the bare folder (the host restarted,
    /// say): it goes, and the next step makes a new one on the mounted file system.
    pub(super) async fn cap_workspace(&self, workspace: &Workspace) -> Result<()> {
        let workspaces = self.workspaces.clone();
        let mounting = workspace.clone();
        let mounted_now = tokio::task::spawn_blocking(move || workspaces.mount_data(&mounting))
            .await
            .map_err(|error| IoError {
                action: "mount",
                path: workspace.data.clone(),
                source: std::io::Error::other(error),
            })??;
        if mounted_now {
            self.runtime.release(&workspace.id).await?;
        }
        Ok(())
    }

    /// Step 2b: makes sure the message's sandbox runs, with the workspace mounted, and that
    /// its interpreter is live (a fresh one when `restart` asks).
    async fn prepare_sandbox(
        &self,
        message: &MessageRecord,
        workspace: &Workspace,
        restart: bool,
    ) -> Result<KernelStart> {
        let spec = SandboxSpec {
            workspace_id: workspace.id.clone(),
            instance: self.instance.clone(),
            host_data: workspace.data.clone(),
            host_inputs: workspace.inputs.clone(),
            labels: crate::runtime::message_labels(
                message.tenant.as_str(),
                message.message_id.as_str(),
            ),
            preload: Vec::new(),
        };
        if restart {
            self.runtime.restart(&workspace.id).await?;
        }
        Ok(self.runtime.ensure(&spec).await?)
    }

    /// Steps 3 and 5: what `data/` holds, by `lstat` alone.
    async fn snapshot(&self, workspace: &Workspace) -> Result<Snapshot> {
        let data = workspace.data.clone();
        let limits = SnapshotLimits {
            max_depth: self.config.limits.max_depth,
            max_entries: self.config.limits.max_snapshot_entries,
        };
        let taken = tokio::task::spawn_blocking(move || snapshot::take(&data, limits))
            .await
            .map_err(|error| IoError {
                action: "snapshot",
                path: workspace.data.clone(),
                source: std::io::Error::other(error),
            })?;
        Ok(taken.with_path("snapshot", &workspace.data)?)
    }

    /// Records the run as `running` before it starts, so that a crash leaves a trace.
    async fn record_start(
        &self,
        owner: &Owner,
        message: &MessageRecord,
        request: &RunRequest,
        workspace_restored: bool,
    ) -> Result<RunRecord> {
        let now = catalog::now();
        self.catalog
            .messages()
            .touch(&message.tenant, &message.message_id, &now)
            .await?;
        let run = RunRecord {
            id: RunId::new(),
            tenant: owner.tenant.clone(),
            user_id: owner.user.clone(),
            chat_id: message.chat_id.clone(),
            message_id: message.message_id.clone(),
            language: request.language.clone(),
            status: RunStatus::Running,
            exit_code: None,
            reason: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            truncated: Vec::new(),
            duration_ms: 0,
            created_at: now,
            finished_at: None,
            outputs: Vec::new(),
            kernel: None,
            workspace_restored,
        };
        self.catalog
            .runs()
            .insert_running(&run, &self.instance)
            .await?;
        Ok(run)
    }

    /// Step 4: runs the code in the sandbox, forwarding translated output to `events`.
    async fn execute(
        &self,
        workspace: &Workspace,
        request: &RunRequest,
        timeout: Duration,
        events: Option<&mpsc::Sender<RunEvent>>,
    ) -> Result<ExecOutcome> {
        let paths = path_map(workspace);
        let code = if self.runtime.mounts_workspace() {
            request.code.clone()
        } else {
            translate::to_host_paths(&request.code, &paths)
        };
        let limits = &self.config.limits;
        let init_code = [&self.config.sandbox.init_code, &request.init_code]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        let exec = ExecRequest {
            code,
            init_code: (!init_code.trim().is_empty()).then_some(init_code),
            timeout,
            max_output_bytes: usize::try_from(limits.max_output_bytes.as_u64())
                .unwrap_or(usize::MAX),
            max_outputs: limits.max_outputs,
            max_image_bytes: usize::try_from(limits.max_figure_bytes.as_u64())
                .unwrap_or(usize::MAX),
            tracebacks_on_stderr: request.tracebacks_on_stderr,
        };
        let Some(events) = events else {
            return self.exec_within_disk_cap(workspace, &exec, None).await;
        };
        // Output is translated on its way to the caller by a small relay task.
        let (chunks, mut received) = mpsc::channel::<OutputChunk>(64);
        let events = events.clone();
        let relay = tokio::spawn(async move {
            while let Some(chunk) = received.recv().await {
                let text = |bytes: &[u8]| {
                    translate::to_sandbox_paths(&String::from_utf8_lossy(bytes), &paths)
                };
                let event = match chunk {
                    OutputChunk::Stdout(bytes) => RunEvent::Stdout(text(&bytes)),
                    OutputChunk::Stderr(bytes) => RunEvent::Stderr(text(&bytes)),
                    // Figures go out once registered, with their file.
                    OutputChunk::Output(RichOutput::Image { .. }) => continue,
                    OutputChunk::Output(output) => {
                        match super::figures::stored_output(output, &paths) {
                            Some(output) => RunEvent::Output(Box::new(output), None),
                            None => continue,
                        }
                    }
                };
                let _ = events.send(event).await;
            }
        });
        let outcome = self
            .exec_within_disk_cap(workspace, &exec, Some(&chunks))
            .await;
        drop(chunks);
        // A consumer that does not read may not hold the run: what it has not taken by then
        // is dropped from the stream (the run's record carries all of it).
        let mut relay = relay;
        if tokio::time::timeout(EVENT_WAIT, &mut relay).await.is_err() {
            relay.abort();
        }
        outcome
    }

    /// Executes while watching the workspace's disk cap: a run that fills `/mnt/data` has all
    /// its processes killed from outside the sandbox at once, and is reported as killed with
    /// reason [`DISK_QUOTA`] (also when it filled the disk and ended by itself between two
    /// checks), with a line on stderr that says which cap it hit.
    async fn exec_within_disk_cap(
        &self,
        workspace: &Workspace,
        exec: &ExecRequest,
        live: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome> {
        let before = disk_usage(workspace).await;
        let running = self.runtime.exec(&workspace.id, exec, live);
        tokio::pin!(running);
        let watched = disk_filled(workspace.clone(), before.clone());
        tokio::pin!(watched);
        let (outcome, mut full) = tokio::select! {
            outcome = &mut running => (outcome?, None),
            reason = &mut watched => {
                self.runtime.kill_processes(&workspace.id).await?;
                (running.await?, Some(reason))
            }
        };
        if full.is_none()
            && !outcome.timed_out
            && let (Some(before), Some(after)) = (&before, disk_usage(workspace).await)
        {
            full = after.filled_since(before).map(str::to_owned);
        }
        let mut outcome = outcome;
        if let Some(reason) = full {
            outcome.killed_reason = Some(DISK_QUOTA.to_owned());
            if !outcome.stderr.is_empty() && !outcome.stderr.ends_with(b"\n") {
                outcome.stderr.push(b'\n');
            }
            outcome
                .stderr
                .extend_from_slice(format!("codebox: killed: {reason}\n").as_bytes());
        }
        Ok(outcome)
    }

    /// Marks a run that could not be carried through as failed, and returns the error to
    /// report.
    async fn record_failure(&self, mut run: RunRecord, error: Error) -> Error {
        run.status = RunStatus::Failed;
        run.reason = Some("codebox could not carry the run through".to_owned());
        run.finished_at = Some(catalog::now());
        if let Err(record_error) = self.catalog.runs().finish(&run).await {
            tracing::error!(run = %run.id, error = %record_error, "could not record a failed run");
        }
        error
    }

    /// The interpreter the run ran in, as the API reports it: restarted when it is fresh
    /// but the message ran before, with the reason the old one ended.
    async fn kernel_state(
        &self,
        message: &MessageRecord,
        request: &RunRequest,
        start: KernelStart,
        outcome: &ExecOutcome,
    ) -> Result<KernelState> {
        // The run itself is recorded already: earlier runs make the count above one.
        let restarted = start.fresh
            && self
                .catalog
                .runs()
                .count_of_message(&message.tenant, &message.message_id)
                .await?
                > 1;
        let reason = if !restarted {
            None
        } else if request.restart {
            Some(KernelEnd::Requested)
        } else {
            start.previous_end
        };
        Ok(KernelState {
            execution_count: outcome.execution_count,
            restarted,
            reason: reason.map(|reason| reason.to_string()),
        })
    }

    /// Steps 7 and 8: translates the output, turns the outcome into a status and records it.
    async fn answer(
        &self,
        run: &mut RunRecord,
        answer: Answer,
        workspace: &Workspace,
        inputs: &Inputs,
    ) -> Result<()> {
        let Answer {
            outcome,
            truncated,
            outputs,
            kernel,
            timeout,
        } = answer;
        let paths = path_map(workspace);
        let stdout = translate::to_sandbox_paths(&String::from_utf8_lossy(&outcome.stdout), &paths);
        let mut stderr =
            translate::to_sandbox_paths(&String::from_utf8_lossy(&outcome.stderr), &paths);
        if wrote_to_attachment(&stderr, inputs) {
            if !stderr.ends_with('\n') && !stderr.is_empty() {
                stderr.push('\n');
            }
            stderr.push_str(READ_ONLY_HINT);
            stderr.push('\n');
        }
        let (status, reason) = if outcome.timed_out {
            (
                RunStatus::TimedOut,
                Some(format!(
                    "wall-clock limit of {} reached",
                    humantime::format_duration(timeout)
                )),
            )
        } else if let Some(reason) = outcome.killed_reason {
            (RunStatus::Killed, Some(reason))
        } else if outcome.kernel_lost.is_some() {
            (
                RunStatus::Failed,
                Some(
                    "the interpreter exited during the run; the next run starts a fresh one"
                        .to_owned(),
                ),
            )
        } else if outcome.exit_code == Some(0) {
            (RunStatus::Succeeded, None)
        } else {
            (RunStatus::Failed, None)
        };
        run.status = status;
        run.reason = reason;
        run.exit_code = outcome.exit_code;
        run.stdout = stdout;
        run.stderr = stderr;
        run.stdout_truncated = outcome.stdout_truncated;
        run.stderr_truncated = outcome.stderr_truncated;
        run.truncated = truncated;
        run.duration_ms = i64::try_from(outcome.duration.as_millis()).unwrap_or(i64::MAX);
        run.outputs = outputs;
        run.kernel = Some(kernel);
        run.finished_at = Some(catalog::now());
        self.catalog.runs().finish(run).await?;
        Ok(())
    }
}

/// What [`Supervisor::answer`] records besides the run itself.
struct Answer {
    /// What the cell did.
    outcome: ExecOutcome,
    /// Everything a cap or a check left out.
    truncated: Vec<Truncation>,
    /// Results, errors and figures, in order.
    outputs: Vec<RunOutput>,
    /// The interpreter's state after the run.
    kernel: KernelState,
    /// The run's wall-clock limit, named in a timed-out run's reason.
    timeout: Duration,
}
