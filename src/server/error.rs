//! The error type of HTTP handlers: a status and a message for the caller, never internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What went wrong, in words fit for the caller.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Signed in, but the role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// The request does not fit the resource's state (an engine already connected, ...).
    #[error("{0}")]
    Conflict(String),
    /// It existed and has expired or been used up.
    #[error("{0}")]
    Gone(String),
    /// Logged in full; the caller only learns that it was our fault.
    #[error("internal error")]
    Internal(String),
}

impl From<crate::service::ServiceError> for AppError {
    fn from(error: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError;
        match error {
            ServiceError::NotFound(message) => AppError::NotFound(message),
            ServiceError::Invalid(message) => AppError::BadRequest(message),
            ServiceError::Forbidden(message) => AppError::Forbidden(message),
            ServiceError::Refused(message) => AppError::Conflict(message),
            ServiceError::Gone(message) => AppError::Gone(message),
            ServiceError::Internal(detail) => AppError::Internal(detail),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Gone(_) => StatusCode::GONE,
            AppError::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}
