//! The `runs` table: one row per execution, written when it starts (status `running`) and
//! completed when it ends, so that a crash leaves a visible trace instead of nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;

use super::{CatalogError, Owner};
use crate::ids::{ChatId, FileId, MessageId, RunId, TenantId, UserId};

/// How a run ended. Its name (`timed_out`) is the text stored in the catalog and shown in the
/// API.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RunStatus {
    /// Still executing (or its supervisor died while it was).
    Running,
    /// The code exited with status 0.
    Succeeded,
    /// The code exited with another status.
    Failed,
    /// The wall-clock limit stopped it.
    TimedOut,
    /// The runtime killed it: the memory limit, or a signal; `reason` says which.
    Killed,
}

/// Something a cap left out of a run's results, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// The path concerned (`/mnt/data/...`), or the folder when the cap concerns a whole tree.
    pub path: String,
    /// The reason, in words.
    pub reason: String,
}

/// A rich output of a run, as stored: a notebook's result, figure or error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunOutput {
    /// The value of the last expression, or something displayed, by MIME type.
    Result {
        /// `text/plain`, and `text/html` or `text/markdown` where the value has them.
        data: BTreeMap<String, String>,
    },
    /// A figure, registered as a file.
    Image {
        /// The registered PNG.
        file_id: FileId,
    },
    /// An exception.
    Error {
        /// Its type's name.
        ename: String,
        /// Its message.
        evalue: String,
        /// The traceback's lines.
        traceback: Vec<String>,
    },
}

/// The interpreter a run ran in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelState {
    /// The run's number in its interpreter (1 for the first).
    pub execution_count: u64,
    /// Whether the interpreter is not the one the message's earlier runs used.
    pub restarted: bool,
    /// Why, when restarted: `timeout`, `crashed`, `memory`, `requested`, or none when codebox
    /// released it (idle, or a restart of codebox).
    pub reason: Option<String>,
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Opaque id (`run_...`).
    pub id: RunId,
    /// The owner's tenant.
    pub tenant: TenantId,
    /// The owner.
    pub user_id: UserId,
    /// The chat.
    pub chat_id: ChatId,
    /// The message.
    pub message_id: MessageId,
    /// The language of the code.
    pub language: String,
    /// How it ended.
    pub status: RunStatus,
    /// The code's exit status, if it exited.
    pub exit_code: Option<i64>,
    /// Why the runtime stopped it, for `killed` and `timed_out`.
    pub reason: Option<String>,
    /// Captured standard output (up to the cap). A NUL in it is stored as U+FFFD.
    pub stdout: String,
    /// Captured standard error (up to the cap). A NUL in it is stored as U+FFFD.
    pub stderr: String,
    /// Whether stdout was cut at the cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    pub stderr_truncated: bool,
    /// What the caps on outputs left out.
    pub truncated: Vec<Truncation>,
    /// Wall-clock time of the execution.
    pub duration_ms: i64,
    /// When the run started.
    pub created_at: String,
    /// When the run ended.
    pub finished_at: Option<String>,
    /// Rich outputs, in order.
    pub outputs: Vec<RunOutput>,
    /// The interpreter it ran in; `None` until it ran (and for runs recorded before codebox
    /// kept interpreters).
    pub kernel: Option<KernelState>,
    /// Whether the run found the message's workspace lost with the instance that held it,
    /// and rebuilt it from the catalog before it ran.
    pub workspace_restored: bool,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: RunId,
    tenant: TenantId,
    user_id: UserId,
    chat_id: ChatId,
    message_id: MessageId,
    language: String,
    status: String,
    exit_code: Option<i64>,
    reason: Option<String>,
    stdout: String,
    stderr: String,
    stdout_truncated: i64,
    stderr_truncated: i64,
    truncated: String,
    duration_ms: i64,
    created_at: String,
    finished_at: Option<String>,
    outputs: Option<String>,
    kernel: Option<String>,
    workspace_restored: i64,
}

impl TryFrom<RunRow> for RunRecord {
    type Error = CatalogError;

    fn try_from(row: RunRow) -> Result<Self, Self::Error> {
        let corrupt = |reason: String| CatalogError::Corrupt {
            table: "runs",
            id: row.id.to_string(),
            reason,
        };
        let status = row
            .status
            .parse::<RunStatus>()
            .map_err(|_| corrupt(format!("unknown status {:?}", row.status)))?;
        let truncated = serde_json::from_str(&row.truncated)
            .map_err(|error| corrupt(format!("truncated: {error}")))?;
        let outputs = match &row.outputs {
            Some(text) => {
                serde_json::from_str(text).map_err(|error| corrupt(format!("outputs: {error}")))?
            }
            None => Vec::new(),
        };
        let kernel = match &row.kernel {
            Some(text) => Some(
                serde_json::from_str(text).map_err(|error| corrupt(format!("kernel: {error}")))?,
            ),
            None => None,
        };
        Ok(Self {
            outputs,
            kernel,
            status,
            truncated,
            workspace_restored: row.workspace_restored != 0,
            stdout_truncated: row.stdout_truncated != 0,
            stderr_truncated: row.stderr_truncated != 0,
            id: row.id,
            tenant: row.tenant,
            user_id: row.user_id,
            chat_id: row.chat_id,
            message_id: row.message_id,
            language: row.language,
            exit_code: row.exit_code,
            reason: row.reason,
            stdout: row.stdout,
            stderr: row.stderr,
            duration_ms: row.duration_ms,
            created_at: row.created_at,
            finished_at: row.finished_at,
        })
    }
}

/// Accessor for the `runs` table.
pub struct Runs<'a> {
    pool: &'a AnyPool,
}

const COLUMNS: &str = "id, tenant, user_id, chat_id, message_id, language, status, exit_code, \
    reason, stdout, stderr, stdout_truncated, stderr_truncated, truncated, duration_ms, \
    created_at, finished_at, outputs, kernel, workspace_restored";

impl<'a> Runs<'a> {
    pub(super) fn new(pool: &'a AnyPool) -> Self {
        Self { pool }
    }

    /// Records a run as it starts, executed by `instance`: `running`, with no output yet.
    /// [`Runs::finish`] writes its outcome. One statement, so that no run is ever recorded
    /// without the instance that must mark it failed if it stops.
    pub async fn insert_running(
        &self,
        run: &RunRecord,
        instance: &str,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO runs (id, tenant, user_id, chat_id, message_id, language, status, \
             stdout, stderr, stdout_truncated, stderr_truncated, truncated, duration_ms, \
             created_at, instance, workspace_restored) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', '', '', 0, 0, '[]', 0, $7, $8, $9)",
        )
        .bind(&run.id)
        .bind(&run.tenant)
        .bind(&run.user_id)
        .bind(&run.chat_id)
        .bind(&run.message_id)
        .bind(&run.language)
        .bind(&run.created_at)
        .bind(instance)
        .bind(i64::from(run.workspace_restored))
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Marks the runs `instance` left `running` (it stopped while they ran) as failed, with a
    /// reason. Returns how many there were.
    pub async fn fail_interrupted(
        &self,
        instance: &str,
        reason: &str,
        now: &str,
    ) -> Result<u64, CatalogError> {
        let result = sqlx::query(
            "UPDATE runs SET status = 'failed', reason = $2, finished_at = $3 \
             WHERE instance = $1 AND status = 'running'",
        )
        .bind(instance)
        .bind(storable(reason))
        .bind(now)
        .execute(self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Writes the outcome of a run that was inserted as `running`.
    pub async fn finish(&self, run: &RunRecord) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE runs SET status = $2, exit_code = $3, reason = $4, stdout = $5, stderr = $6, \
             stdout_truncated = $7, stderr_truncated = $8, truncated = $9, duration_ms = $10, \
             finished_at = $11, outputs = $12, kernel = $13 WHERE id = $1",
        )
        .bind(&run.id)
        .bind(<&str>::from(run.status))
        .bind(run.exit_code)
        .bind(run.reason.as_deref().map(storable))
        .bind(storable(&run.stdout))
        .bind(storable(&run.stderr))
        .bind(i64::from(run.stdout_truncated))
        .bind(i64::from(run.stderr_truncated))
        .bind(truncated_json(&run.truncated))
        .bind(run.duration_ms)
        .bind(&run.finished_at)
        .bind(to_json(&run.outputs))
        .bind(run.kernel.as_ref().map(to_json))
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// How many runs of the message `message_id` of `tenant` were recorded.
    pub async fn count_of_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<i64, CatalogError> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM runs WHERE tenant = $1 AND message_id = $2")
                .bind(tenant)
                .bind(message_id)
                .fetch_one(self.pool)
                .await?;
        Ok(count)
    }

    /// The instance that ran the latest run of the message `message_id` of `tenant` since
    /// `since` (when the message was named: an id used again after its chat was deleted is
    /// a new message, whose runs start then): `None` when it has not run since (or its latest
    /// run predates instances being recorded).
    pub async fn last_instance_of_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
        since: &str,
    ) -> Result<Option<String>, CatalogError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT instance FROM runs WHERE tenant = $1 AND message_id = $2 AND created_at >= $3 \
             ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(message_id)
        .bind(since)
        .fetch_optional(self.pool)
        .await?;
        Ok(row.and_then(|(instance,)| instance))
    }

    /// The run `id` if `owner` owns it.
    pub async fn get(&self, owner: &Owner, id: &RunId) -> Result<Option<RunRecord>, CatalogError> {
        let sql =
            format!("SELECT {COLUMNS} FROM runs WHERE id = $1 AND tenant = $2 AND user_id = $3");
        let row: Option<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&owner.tenant)
            .bind(&owner.user)
            .fetch_optional(self.pool)
            .await?;
        row.map(RunRecord::try_from).transpose()
    }
}

/// `text` as every database can keep it: PostgreSQL's text cannot hold NUL, which what code
/// prints may contain, so NUL is kept as U+FFFD (as a terminal shows it) on every database
/// alike.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

fn truncated_json(truncated: &[Truncation]) -> String {
    // Serializing a list of plain string pairs cannot fail.
    serde_json::to_string(truncated).unwrap_or_else(|_| "[]".to_owned())
}

/// JSON text of plain data (strings, numbers, maps with string keys), which cannot fail.
fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_stored_and_shown_by_the_same_name() {
        use RunStatus::*;
        let names = ["running", "succeeded", "failed", "timed_out", "killed"];
        for (status, name) in [Running, Succeeded, Failed, TimedOut, Killed]
            .into_iter()
            .zip(names)
        {
            assert_eq!(<&str>::from(status), name);
            assert_eq!(status.to_string(), name);
            assert_eq!(name.parse::<RunStatus>().expect("a status"), status);
            assert_eq!(serde_json::to_value(status).expect("JSON"), name);
        }
        assert!("Running".parse::<RunStatus>().is_err());
    }
}
