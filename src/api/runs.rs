//! `/v1/runs`: execute code for a message, answered as one JSON `Run` or, with
//! `Accept: text/event-stream`, as server-sent events `stdout`, `stderr`, `output`, `file` and
//! `done`.
//!
//! Every run passes the [`super::RunLimiter`] first: past the queue it is refused with 503 and
//! `Retry-After` before anything is claimed or written. A streamed run keeps going when its
//! client goes away, so that its files are still registered and its record completed.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::auth::UserCaller;
use super::dto::{Output, OutputEvent, Run, RunCreate};
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::ids::{ChatId, MessageId, RunId};
use crate::supervisor::{AcceptedRun, RunEvent, RunReport, RunRequest};

/// Run code for a message.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    security(("bearer" = [])),
    params(("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$")),
    request_body = RunCreate,
    responses(
        (status = 200, description = "The run finished (a non-zero exit is still 200). With \
            `Accept: text/event-stream`: events `stdout`/`stderr` {text}, `output` {an entry of \
            `outputs`}, `file` {File}, `done` {Run}.",
            body = Run),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "The message or a file belongs to someone else", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, description = "Too many runs; see Retry-After", body = ErrorBody),
    )
)]
pub async fn create_run(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    headers: HeaderMap,
    body: Result<Json<RunCreate>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body.map_err(json_rejection)?;
    let timeout = match body.timeout_secs {
        Some(0) => return Err(ApiError::invalid("timeout_secs must be at least 1")),
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None => None,
    };
    let permit = state
        .limiter
        .admit()
        .await
        .map_err(|_| ApiError::busy("too many runs in flight and queued; retry later", 2))?;
    // The ids are checked once a slot is granted, where the supervisor checks the rest of the
    // request: a refusal for load comes first, as it always has.
    let request = RunRequest {
        chat_id: ChatId::parse(body.chat_id)?,
        message_id: MessageId::parse(body.message_id)?,
        code: body.code,
        language: body.language,
        file_ids: body.file_ids,
        timeout,
        restart: body.restart,
        init_code: body.init_code,
        tracebacks_on_stderr: true,
    };
    // Refusals (bad input, someone else's message or file) are answered with their status
    // before anything is streamed.
    let accepted = state.supervisor.accept(&owner, request).await?;
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if streaming {
        return Ok(stream_run(state, accepted, permit).into_response());
    }
    // The run goes on in a task of its own: a client that hangs up must not cancel it
    // halfway, leaving its record `running` and its files unregistered.
    let supervisor = state.supervisor.clone();
    let report = tokio::spawn(async move {
        let report = supervisor.carry_out(accepted, None).await;
        drop(permit);
        report
    })
    .await
    .map_err(|join_error| ApiError::internal(&join_error))??;
    record_metrics(&report);
    Ok(Json(Run::new(&report, |file| Some(state.download_url(file)))).into_response())
}

/// Turns a JSON body rejection into the API's error shape: a body that failed while it was
/// read (too large, too slow, cut short) by its cause, a body that is not the JSON asked for
/// as `invalid`.
pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::BytesRejection(failed) => ApiError::from_body_error("JSON body", &failed),
        other => ApiError::invalid(other.body_text()),
    }
}

/// Runs in a task of its own and streams its events; `done` carries the Run, or `error` the
/// reason it could not run.
fn stream_run(
    state: AppState,
    accepted: AcceptedRun,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (run_tx, mut run_rx) = mpsc::channel::<RunEvent>(64);
    let (sse_tx, sse_rx) = mpsc::channel::<Event>(64);
    let supervisor = state.supervisor.clone();
    let run = tokio::spawn(async move {
        let report = supervisor.carry_out(accepted, Some(run_tx)).await;
        drop(permit);
        report
    });
    tokio::spawn(async move {
        // Sends fail only when the client left; the run goes on regardless.
        while let Some(event) = run_rx.recv().await {
            let event = match event {
                RunEvent::Stdout(text) => json_event("stdout", &OutputEvent { text }),
                RunEvent::Stderr(text) => json_event("stderr", &OutputEvent { text }),
                RunEvent::File(file) => json_event("file", &state.file_dto(&file)),
                RunEvent::Output(output, file) => {
                    let files: Vec<_> = file.map(|file| *file).into_iter().collect();
                    match Output::new(&output, &files, &|file| Some(state.download_url(file))) {
                        Some(output) => json_event("output", &output),
                        None => continue,
                    }
                }
            };
            let _ = sse_tx.send(event).await;
        }
        let last = match run.await {
            Ok(Ok(report)) => {
                record_metrics(&report);
                json_event(
                    "done",
                    &Run::new(&report, |file| Some(state.download_url(file))),
                )
            }
            Ok(Err(error)) => json_event("error", &ApiError::from(error).body()),
            Err(join_error) => json_event("error", &ApiError::internal(&join_error).body()),
        };
        let _ = sse_tx.send(last).await;
    });
    let stream = ReceiverStream::new(sse_rx).map(Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

fn record_metrics(report: &RunReport) {
    let run = &report.run;
    metrics::counter!("codebox_runs_total", "status" => <&str>::from(run.status)).increment(1);
    metrics::histogram!("codebox_run_duration_seconds").record(run.duration_ms as f64 / 1000.0);
    metrics::counter!("codebox_files_registered_total").increment(report.files.len() as u64);
    if let Some(kernel) = run.kernel.as_ref().filter(|kernel| kernel.restarted) {
        let reason = kernel
            .reason
            .clone()
            .unwrap_or_else(|| "released".to_owned());
        metrics::counter!("codebox_kernel_restarts_total", "reason" => reason).increment(1);
    }
    let bytes: i64 = report.files.iter().map(|file| file.size).sum();
    metrics::counter!("codebox_files_registered_bytes_total")
        .increment(u64::try_from(bytes).unwrap_or(0));
}

/// A run's record.
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("run_id" = String, Path, description = "The run"),
        ("X-User-Id" = String, Header, description = "The end user", pattern = "^[!-~]{1,256}$"),
    ),
    responses(
        (status = 200, body = Run),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn get_run(
    State(state): State<AppState>,
    UserCaller(owner): UserCaller,
    Path(run_id): Path<RunId>,
) -> ApiResult<Json<Run>> {
    let report = state.supervisor.run_report(&owner, &run_id).await?;
    Ok(Json(Run::new(&report, |file| {
        Some(state.download_url(file))
    })))
}
