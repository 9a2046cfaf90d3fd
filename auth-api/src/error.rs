//! The one error type of the REST API and its JSON rendering.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The code and human-readable message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, such as `wrong_password`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}

/// Every way a request can fail.
///
/// Client errors carry their status, code and message. Server-side problems
/// keep their cause for the log, and the client sees only a generic body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A problem with the request itself (4xx).
    #[error("{status} {code}: {message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// Too many attempts from this client (429, `rate_limited`).
    #[error("rate limited, retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The broker did not acknowledge a record in time, or is known to be
    /// down (503).
    #[error("broker: {0}")]
    Broker(String),
    /// Password hashing is at its bound (503, `overloaded`).
    #[error("password hashing is at capacity")]
    Overloaded,
    /// The request took longer than the request timeout (503, `timeout`).
    #[error("request timed out")]
    Timeout,
    /// The database could not be reached (503).
    #[error("database unavailable: {0}")]
    DbUnavailable(String),
    /// Anything else (500).
    #[error("internal: {0}")]
    Internal(String),
}

/// The internal cause of a 5xx response, left in the response extensions so
/// the request middleware logs it with the route.
#[derive(Debug, Clone)]
pub(crate) struct LoggedCause(pub(crate) Arc<String>);

impl ApiError {
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, message)
    }

    pub fn room_not_found() -> Self {
        Self::not_found("room_not_found", "no such room")
    }

    pub fn not_a_member() -> Self {
        Self::forbidden("not_a_member", "only members of the room may do this")
    }

    /// 429 with a `Retry-After` of `retry_after_secs` (at least 1).
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::RateLimited {
            retry_after_secs: retry_after_secs.max(1),
        }
    }

    pub fn overloaded() -> Self {
        Self::Overloaded
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    /// The HTTP status of this error.
    /// The `Retry-After` seconds this error suggests, if any.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Broker(_) => Some(5),
            Self::DbUnavailable(_) | Self::Overloaded | Self::Timeout => Some(1),
            Self::Client { .. } | Self::Internal(_) => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. } => *status,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Broker(_) | Self::DbUnavailable(_) | Self::Overloaded | Self::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<confab_common::db::DbError> for ApiError {
    fn from(err: confab_common::db::DbError) -> Self {
        match err {
            confab_common::db::DbError::Pool(msg) => Self::DbUnavailable(msg),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        // A closed connection, or a statement cancelled by
        // `statement_timeout`: the database is slow or gone, not the request
        // wrong.
        if err.is_closed() || err.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
            return Self::DbUnavailable(err.to_string());
        }
        Self::Internal(format!("postgres: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after();
        let (code, message, cause) = match self {
            Self::Client { code, message, .. } => (code, message, None),
            Self::RateLimited { .. } => (
                "rate_limited",
                "too many attempts, try again later".to_owned(),
                None,
            ),
            Self::Overloaded => (
                "overloaded",
                "the server is busy, try again later".to_owned(),
                // Counted by `confab_api_hash_rejected_total`; a flood is not logged line by line.
                None,
            ),
            Self::Timeout => (
                "timeout",
                "the request took too long, try again later".to_owned(),
                Some("request timeout".to_owned()),
            ),
            Self::Broker(cause) => (
                "broker_unavailable",
                "the message broker is unavailable, try again later".to_owned(),
                Some(format!("broker: {cause}")),
            ),
            Self::DbUnavailable(cause) => (
                "unavailable",
                "the service is temporarily unavailable, try again later".to_owned(),
                Some(format!("database: {cause}")),
            ),
            Self::Internal(cause) => ("internal", "internal server error".to_owned(), Some(cause)),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if let Some(cause) = cause {
            response
                .extensions_mut()
                .insert(LoggedCause(Arc::new(cause)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let response = ApiError::internal("secret detail").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.extensions().get::<LoggedCause>().is_some());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "internal");
        assert!(!body.windows(6).any(|w| w == b"secret"));
    }

    #[tokio::test]
    async fn client_errors_render_the_contract_shape() {
        let response = ApiError::forbidden("wrong_password", "nope").into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "wrong_password", "message": "nope"}})
        );
    }
}
