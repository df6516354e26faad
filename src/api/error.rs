//! Domain errors to HTTP statuses, in one place, and the API's error body
//! `{"error": {"code", "message"}}`.
//!
//! A 5xx never shows internals: its message names an error id, and the log line with the real
//! cause carries the same id. That holds for 503 too: an operator asked about a refusal finds
//! its log line by the id the client was given.
//!
//! Errors that axum or the connection layer raise before a handler runs (a malformed path,
//! query, JSON or multipart body, a wrong method, an oversized or too slow body) are turned
//! into the same body here too: [`ApiError::from_status`] for the rejections axum answers on
//! its own, and [`ApiError::from_body_error`] for a request body that failed while it was read.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::InvalidId;
use crate::supervisor::Error;

/// The error body of every failed request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of `not_found`, `invalid`, `unauthorized`, `forbidden`, `too_large`,
    /// `name_taken` (409: a file of the user's own workspace already has the name),
    /// `confirmation_required` (409: deleting a file that messages of a live chat attach),
    /// `unsupported` (415), `method_not_allowed`, `timeout` (408: the request body arrived
    /// too slowly), `busy`,
    /// `internal`.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// With `confirmation_required`: the chat whose messages attach the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    /// With `confirmation_required`: the messages that attach the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_ids: Option<Vec<String>>,
    /// With `confirmation_required`: the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
}

/// What a `confirmation_required` refusal names, so that a dialog can ask the user.
#[derive(Debug, Clone)]
struct ConfirmationDetail {
    chat_id: String,
    message_ids: Vec<String>,
    file_id: String,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    close_connection: bool,
    /// Boxed: it is rare, and every handler's `Result` carries an `ApiError`.
    confirmation: Option<Box<ConfirmationDetail>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            close_connection: false,
            confirmation: None,
        }
    }

    /// 401: no token, or one the server does not know.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a signed link that expired or was altered, or a token whose role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 422: a request that is malformed.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 413 `quota_exceeded`: storing this would take the user or their tenant past a quota.
    pub fn quota_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded", message)
    }

    /// 409 `name_taken`: a live file of the user's own workspace already has the name.
    pub fn name_taken(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "name_taken", message)
    }

    /// 415: a file whose type this operation does not take.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported", message)
    }
    /// 405, for a route that exists with other methods; the caller adds `Allow`.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// 408: the request body did not arrive in time (see `server.body_read_timeout`).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout", message)
    }

    /// 503 with `Retry-After`: logs the refusal under a fresh error id, which the message
    /// names.
    pub fn busy(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::unavailable(message.into(), None, retry_after_secs)
    }

    /// 503 with `Retry-After` for an outage: logs `message` and its `cause` (if any) under a
    /// fresh error id; the client sees the message and the id only.
    fn unavailable(
        message: String,
        cause: Option<&dyn std::fmt::Display>,
        retry_after_secs: u64,
    ) -> Self {
        let error_id = crate::ids::mint("err");
        match cause {
            Some(cause) => tracing::error!(%error_id, error = %cause, "{message}"),
            None => tracing::warn!(%error_id, "{message}"),
        }
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("{message}; the server log has it under {error_id}"),
            )
        }
    }

    /// 500: logs `cause` under a fresh error id and shows only the id.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let error_id = crate::ids::mint("err");
        tracing::error!(%error_id, error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error; the server log has its details under {error_id}"),
        )
    }

    /// The API's error for a status that axum answered on its own, with its plain-text
    /// `detail`; `None` for statuses that are not errors or need no body (416).
    pub fn from_status(status: StatusCode, detail: String) -> Option<Self> {
        let detail = match detail.trim() {
            "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
            text => text.to_owned(),
        };
        Some(match status {
            StatusCode::BAD_REQUEST
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::invalid(detail),
            StatusCode::NOT_FOUND => Self::not_found("route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                Self::method_not_allowed("this route does not take this method; see Allow")
            }
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large(detail),
            StatusCode::REQUEST_TIMEOUT => Self::timeout(detail),
            status if status.is_server_error() => Self::internal(&detail),
            _ => return None,
        })
    }

    /// The API's error for a request body that failed while it was read (`what` names the
    /// body: "form", "JSON body"): too slow is 408, too large 413, and anything else the
    /// client sent (a truncated or malformed body, a connection that went away) 422. A
    /// client's broken body is never a server error. The connection is not reused.
    pub fn from_body_error(what: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut source = Some(error);
        let mut detail = error.to_string();
        while let Some(current) = source {
            if current.is::<super::connections::BodyTimeout>() {
                return Self::timeout(current.to_string()).closing_connection();
            }
            if current.is::<http_body_util::LengthLimitError>() {
                return Self::too_large(format!("the {what} is larger than the configured limit"))
                    .closing_connection();
            }
            // The innermost cause says most (axum's outer errors are generic).
            detail = current.to_string();
            source = current.source();
        }
        Self::invalid(format!("malformed {what}: {detail}")).closing_connection()
    }

    /// Asks the client not to reuse the connection: for refusals sent before the request
    /// body was read to its end, after which the server closes the connection anyway.
    pub fn closing_connection(mut self) -> Self {
        self.close_connection = true;
        self
    }

    /// The body it answers with.
    pub fn body(&self) -> ErrorBody {
        let confirmation = self.confirmation.as_deref().cloned();
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                chat_id: confirmation.as_ref().map(|detail| detail.chat_id.clone()),
                message_ids: confirmation
                    .as_ref()
                    .map(|detail| detail.message_ids.clone()),
                file_id: confirmation.map(|detail| detail.file_id),
            },
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// A caller-chosen id in the path or the request that is not a usable id: 422, worded as the
/// supervisor words the same refusal.
impl From<InvalidId> for ApiError {
    fn from(invalid: InvalidId) -> Self {
        Self::invalid(invalid.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound(what) => Self::not_found(what),
            Error::NoSuchTool(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            Error::Invalid { .. } => Self::invalid(error.to_string()),
            Error::TooLarge(_) => Self::too_large(error.to_string()),
            Error::NameTaken(_) => Self::name_taken(error.to_string()),
            Error::QuotaExceeded(_) => Self::quota_exceeded(error.to_string()),
            Error::ConfirmationRequired {
                ref file_id,
                ref chat_id,
                ref message_ids,
            } => {
                let mut refusal = Self::new(
                    StatusCode::CONFLICT,
                    "confirmation_required",
                    error.to_string(),
                );
                refusal.confirmation = Some(Box::new(ConfirmationDetail {
                    chat_id: chat_id.to_string(),
                    message_ids: message_ids.iter().map(ToString::to_string).collect(),
                    file_id: file_id.to_string(),
                }));
                refusal
            }
            Error::Unsupported(_) => Self::unsupported(error.to_string()),
            Error::Busy(_) => Self::busy(error.to_string(), 1),
            _ if error.is_outage() => {
                // The engine being down is an outage, not a bug: 503, and the log says why.
                Self::unavailable(
                    "the sandbox engine is unavailable; try again later".to_owned(),
                    Some(&error),
                    5,
                )
            }
            Error::Catalog(_) | Error::Blobs(_) | Error::Runtime(_) | Error::Io(_) => {
                Self::internal(&error)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_codes() {
        let cases = [
            (Error::NotFound("file"), 404, "not_found"),
            (Error::invalid("code", "empty"), 422, "invalid"),
            (Error::TooLarge("big".into()), 413, "too_large"),
            (Error::NameTaken("report.csv".into()), 409, "name_taken"),
            (Error::QuotaExceeded("full".into()), 413, "quota_exceeded"),
            (Error::Unsupported("exe".into()), 415, "unsupported"),
            (Error::Busy("full".into()), 503, "busy"),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.code, code);
        }
    }

    #[test]
    fn every_server_error_names_an_error_id() {
        let busy = ApiError::busy("too many runs", 2);
        let outage = ApiError::from(Error::Runtime(crate::runtime::RuntimeError::Unreachable(
            "connect /var/run/docker.sock".into(),
        )));
        let internal = ApiError::internal(&"disk on fire");
        for error in [busy, outage, internal] {
            assert!(error.status.is_server_error());
            let id = error
                .message
                .split_whitespace()
                .find(|word| word.starts_with("err_"))
                .unwrap_or_else(|| panic!("no error id in {:?}", error.message));
            assert_eq!(id.len(), "err_".len() + 32, "{id}");
            assert!(!error.message.contains("docker.sock"), "{}", error.message);
        }
    }

    #[test]
    fn rejections_get_the_code_of_their_status() {
        let cases = [
            (StatusCode::BAD_REQUEST, 422, "invalid"),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, 422, "invalid"),
            (StatusCode::NOT_FOUND, 404, "not_found"),
            (StatusCode::METHOD_NOT_ALLOWED, 405, "method_not_allowed"),
            (StatusCode::PAYLOAD_TOO_LARGE, 413, "too_large"),
            (StatusCode::REQUEST_TIMEOUT, 408, "timeout"),
            (StatusCode::INTERNAL_SERVER_ERROR, 500, "internal"),
        ];
        for (status, expected, code) in cases {
            let error = ApiError::from_status(status, "detail".to_owned()).expect("an error");
            assert_eq!(error.status.as_u16(), expected, "{status}");
            assert_eq!(error.code, code, "{status}");
        }
        assert!(ApiError::from_status(StatusCode::RANGE_NOT_SATISFIABLE, String::new()).is_none());
        assert!(ApiError::from_status(StatusCode::OK, String::new()).is_none());
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let cause = crate::error::IoError {
            action: "read",
            path: "/srv/secret/path".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let api = ApiError::from(Error::Io(cause));
        assert_eq!(api.status.as_u16(), 500);
        assert!(!api.message.contains("/srv/secret"), "{}", api.message);
        assert!(api.message.contains("err_"), "{}", api.message);
    }
}
