//! One error type for the HTTP API, mapped once to `{"error": "<code>", "message": "…"}`.
//!
//! Codes are stable, snake_case and documented in `docs/API_ERRORS.md`; clients branch on them. Messages
//! are for people and may change. Internal causes are logged with the request's span, never sent.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_token`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// Structured details where they help (e.g. the rejected GeoJSON features).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    /// 405 (with `Allow`): a path of the API asked with a method it does not declare.
    MethodNotAllowed,
    Conflict,
    /// 410: it existed and is gone for good (an expired upload).
    Gone,
    /// 412: a precondition header is wrong (an unsupported tus version).
    PreconditionFailed,
    /// 460: tus's status for a body that does not match its `Upload-Checksum`.
    ChecksumMismatch,
    PayloadTooLarge,
    /// 408: the request body arrived too slowly.
    RequestTimeout,
    UnsupportedMediaType,
    Unprocessable,
    TooManyRequests {
        retry_after_secs: u64,
    },
    Unavailable,
    /// 503 with `Retry-After`: too busy for this request now; come back then.
    Busy {
        retry_after_secs: u64,
    },
    /// 507: the disk (the database's or the photo store's) is full.
    InsufficientStorage,
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            code,
            message: message.into(),
            details: None,
        }
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Unauthorized, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Unprocessable, code, message)
    }
    /// A failure that is ours, not the client's: the cause is logged, the client sees a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            Kind::Internal,
            "internal_error",
            "the server failed to handle this request; it has been logged",
        )
    }
    /// The disk is full: nothing was stored, and the client may try again later (a load
    /// balancer should have stopped sending: `/readyz` says not ready below the free-space floor).
    pub fn insufficient_storage() -> Self {
        tracing::error!("out of disk space: a request was refused with 507");
        Self::new(
            Kind::InsufficientStorage,
            "insufficient_storage",
            "the server's disk is full; nothing was stored: try again later",
        )
    }
    pub fn outside_subtree() -> Self {
        Self::forbidden(
            "outside_subtree",
            "that grid is outside the part of the grid tree you may see",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Gone => StatusCode::GONE,
            Kind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Kind::ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable | Kind::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Kind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Kind::TooManyRequests { retry_after_secs } | Kind::Busy { retry_after_secs } =
            self.kind
        {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if self.kind == Kind::Unauthorized {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gridpatrol\""),
            ));
        }
        response.json(ErrorBody {
            error: self.code.to_string(),
            message: self.message.clone(),
            details: self.details.clone(),
        })
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            Error::NotFound => ApiError::not_found("not_found", "no such record"),
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                tracing::debug!(detail = info.message(), "unique violation");
                ApiError::conflict("already_exists", "a record with that key already exists")
            }
            // The connection was lost (a database restart, a proxy closing it): the pool
            // replaces it, so asking again soon succeeds.
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => {
                tracing::warn!(detail = info.message(), "database connection lost");
                ApiError::new(
                    Kind::Unavailable,
                    "database_unavailable",
                    "the connection to the database was lost; try again shortly",
                )
            }
            other if out_of_space(&other.to_string()) => ApiError::insufficient_storage(),
            other => ApiError::internal(format!("database: {other}")),
        }
    }
}

/// Whether an error's text says the disk is full: SQLite's `SQLITE_FULL` ("database or disk is
/// full"), PostgreSQL's `disk_full` ("could not extend file …: No space left on device"), the
/// kernel's ENOSPC (os error 28) through any IO layer.
pub fn out_of_space(text: &str) -> bool {
    text.contains("database or disk is full")
        || text.contains("No space left on device")
        || text.contains("os error 28")
        || text.contains("StorageFull")
}

impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> Self {
        match error {
            crate::db::DbError::Pool(cause) => {
                tracing::warn!(error = %cause, "database pool exhausted");
                ApiError::new(
                    Kind::Unavailable,
                    "database_unavailable",
                    "the database is busy; try again shortly",
                )
            }
            crate::db::DbError::Canceled => ApiError::internal("blocking task canceled"),
        }
    }
}

/// Errors that stop the server or a command from starting: shown to the operator as they are.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(String),
    #[error("migrations: {0}")]
    Migration(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::db::DbError> for StartupError {
    fn from(error: crate::db::DbError) -> Self {
        StartupError::Database(error.to_string())
    }
}
