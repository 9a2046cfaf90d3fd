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
    /// The broker did not acknowledge a record in time (503).
    #[error("broker: {0}")]
    Broker(String),
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

    pub fn rate_limited() -> Self {
        Self::client(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attempts, try again later",
        )
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. } => *status,
            Self::Broker(_) | Self::DbUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
        if err.is_closed() {
            return Self::DbUnavailable(err.to_string());
        }
        Self::Internal(format!("postgres: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, message, cause) = match self {
            Self::Client { code, message, .. } => (code, message, None),
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
