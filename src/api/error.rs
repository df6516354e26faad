//! Domain errors to HTTP statuses, in one place, and the API's error body
//! `{"error": {"code", "message"}}`.
//!
//! A 5xx never shows internals: its message names an error id, and the log line with the real
//! cause carries the same id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

/// The error body of every failed request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of `not_found`, `invalid`, `unauthorized`, `forbidden`, `too_large`, `busy`,
    /// `internal`.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    close_connection: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            close_connection: false,
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

    /// 503 with `Retry-After`.
    pub fn busy(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
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

    /// Asks the client not to reuse the connection: for refusals sent before the request
    /// body was read to its end, after which the server closes the connection anyway.
    pub fn closing_connection(mut self) -> Self {
        self.close_connection = true;
        self
    }

    /// The body it answers with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound(what) => Self::not_found(what),
            Error::Invalid { .. } => Self::invalid(error.to_string()),
            Error::TooLarge(_) => Self::too_large(error.to_string()),
            Error::Busy(_) => Self::busy(error.to_string(), 1),
            Error::Runtime(crate::runtime::RuntimeError::Unreachable(_)) => {
                // The engine being down is an outage, not a bug: 503, and the log says why.
                tracing::error!(error = %error, "the container engine is unreachable");
                Self::busy("the sandbox engine is unavailable; try again later", 5)
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
            (Error::Busy("full".into()), 503, "busy"),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.code, code);
        }
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
