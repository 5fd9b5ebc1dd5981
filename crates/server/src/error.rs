//! The error type every service handler returns, and its one mapping to `tonic::Status`
//! (docs/architecture.md, "The service contract"): typed errors, mapped in this one place, with
//! machine-readable reasons, messages that name what failed, and no internals shown to a caller.
//!
//! | variant              | gRPC code             | details                        |
//! |----------------------|-----------------------|--------------------------------|
//! | `InvalidArgument`    | `INVALID_ARGUMENT`    | `google.rpc.BadRequest`        |
//! | `NotFound`           | `NOT_FOUND`           | —                              |
//! | `AlreadyExists`      | `ALREADY_EXISTS`      | `ErrorInfo` reason             |
//! | `FailedPrecondition` | `FAILED_PRECONDITION` | `google.rpc.ErrorInfo` reason  |
//! | `Unavailable`        | `UNAVAILABLE`         | `RequestInfo` error id; the cause is only logged |
//! | `Internal`           | `INTERNAL`            | `RequestInfo` error id; the cause is only logged |
//!
//! A transient or internal failure never reaches the caller in words (docs/operations.md, "Logs
//! and traces from untrusted input"): the caller reads `temporarily unavailable, retry; error id
//! <id>` or `internal error, error id <id>` (and the id in a `google.rpc.RequestInfo`), while the
//! cause — a sqlx, tonic, gateway or downstream message — goes to one log line with the same
//! `error_id`, so an operator finds it from what the caller reports.
//!
//! A database error caused by a value of the request (PostgreSQL SQLSTATE class 22, such as the
//! 22021 of a U+0000 in text) is `InvalidArgument`, not `Internal`: see `From<sqlx::Error>`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// One offending field of a request: the proto field path (`lines[2].quantity`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Proto field path, for example `lines[0].sku`; empty for the request as a whole (a value
    /// the database refused, when which field carried it is not known).
    pub field: String,
    /// What is wrong with it, for a person.
    pub description: String,
}

/// A service error. Handlers return `Result<T, ServiceError>`; `?` turns it into a `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input: one or more fields are invalid. Nothing was written.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<Violation>),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An idempotency key was reused with a different request, or a unique name is taken.
    #[error("{message}")]
    AlreadyExists {
        /// Machine-readable reason, for example `IDEMPOTENCY_KEY_REUSED`.
        reason: &'static str,
        /// For a person.
        message: String,
    },
    /// A business rule rejects the command (docs/architecture.md, "The service contract"): no
    /// retry will help.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason in `SCREAMING_SNAKE_CASE`, for example `OUT_OF_STOCK`.
        reason: &'static str,
        /// For a person.
        message: String,
        /// Extra machine-readable facts (for example `sku`).
        metadata: HashMap<String, String>,
    },
    /// A dependency (database, another service) is unavailable; retrying may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The client sees a generic message.
    #[error("internal error: {0:#}")]
    Internal(#[source] anyhow::Error),
}

/// Most violations an INVALID_ARGUMENT reports (message and `BadRequest`); the rest are
/// counted in a last entry, "and N more" (docs/operations.md, "Request limits").
pub const MAX_REPORTED_VIOLATIONS: usize = 20;

/// Longest field path or description reported, bytes (longer ones are cut, with `…`).
pub const MAX_VIOLATION_TEXT_BYTES: usize = 256;

/// `text` cut to at most [`MAX_VIOLATION_TEXT_BYTES`] bytes on a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_VIOLATION_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_VIOLATION_TEXT_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The violations a status reports: at most [`MAX_REPORTED_VIOLATIONS`], each text bounded,
/// then one entry for the request as a whole saying how many more there were.
fn reported(violations: &[Violation]) -> Vec<Violation> {
    let mut out: Vec<Violation> = violations
        .iter()
        .take(MAX_REPORTED_VIOLATIONS)
        .map(|v| Violation {
            field: bounded(&v.field),
            description: bounded(&v.description),
        })
        .collect();
    let more = violations.len().saturating_sub(MAX_REPORTED_VIOLATIONS);
    if more > 0 {
        out.push(Violation {
            field: String::new(),
            description: format!("and {more} more"),
        });
    }
    out
}

fn describe(violations: &[Violation]) -> String {
    reported(violations)
        .iter()
        .map(|v| {
            if v.field.is_empty() {
                format!("the request {}", v.description)
            } else {
                format!("{}: {}", v.field, v.description)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ServiceError {
    /// A single-field `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![Violation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// An `InvalidArgument` for the request as a whole (empty field path): the database refused
    /// one of its values, and which field carried it is not known.
    pub fn refused_value(description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![Violation {
            field: String::new(),
            description: description.into(),
        }])
    }

    /// Whether this is a [`ServiceError::refused_value`]. The idempotency store does not keep it
    /// as the key's outcome: the transaction is rolled back whole, key included, so nothing is
    /// written (the same request is refused the same way again).
    pub fn is_refused_value(&self) -> bool {
        matches!(self, Self::InvalidArgument(vs) if vs.iter().any(|v| v.field.is_empty()))
    }

    /// A `FailedPrecondition` with no metadata.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason,
            message: message.into(),
            metadata: HashMap::new(),
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

/// A new error id: 16 random hex digits, shown to the caller of a transient or internal failure
/// and logged with its cause (`error_id`).
pub fn error_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(16);
    id
}

/// The error id of a status made from [`ServiceError::Unavailable`] or
/// [`ServiceError::Internal`] (its `google.rpc.RequestInfo.request_id`), if any.
pub fn error_id_of(status: &Status) -> Option<String> {
    status
        .get_details_request_info()
        .map(|info| info.request_id)
}

/// The `ErrorInfo.domain` of sagaflow errors.
pub const ERROR_DOMAIN: &str = "sagaflow";

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        let code = err.code();
        match err {
            ServiceError::InvalidArgument(violations) => {
                let message = format!("invalid argument: {}", describe(&violations));
                let details = ErrorDetails::with_bad_request(
                    reported(&violations)
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(code, message, details)
            }
            ServiceError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ServiceError::AlreadyExists { reason, message } => Status::with_error_details(
                code,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
            ),
            ServiceError::FailedPrecondition {
                reason,
                message,
                metadata,
            } => Status::with_error_details(
                code,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
            ),
            ServiceError::Unavailable(cause) => {
                let id = error_id();
                // INFO: transient by definition (the caller retries); a persistent outage shows
                // as its cause's own warnings (pool, store, delivery).
                tracing::info!(error_id = %id, error = %cause, "answered UNAVAILABLE");
                Status::with_error_details(
                    code,
                    format!("temporarily unavailable, retry; error id {id}"),
                    ErrorDetails::with_request_info(id, ""),
                )
            }
            ServiceError::Internal(cause) => {
                let id = error_id();
                tracing::error!(error_id = %id, error = format!("{cause:#}"), "internal error");
                Status::with_error_details(
                    code,
                    format!("internal error, error id {id}"),
                    ErrorDetails::with_request_info(id, ""),
                )
            }
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    /// Pool timeouts, I/O and lock contention are `Unavailable` (the caller retries). A value
    /// the database refuses ([`crate::db::bad_data_description`]: PostgreSQL's data exceptions,
    /// SQLSTATE class 22, such as 22021 for a U+0000 in text; SQLite's `SQLITE_TOOBIG`) is
    /// `InvalidArgument` for the request as a whole (empty field path), with a description that
    /// names neither SQL nor the value: the same request fails the same way on every attempt,
    /// and a transaction that failed wrote nothing. Anything else is `Internal`. Call sites that
    /// expect `RowNotFound` or a unique violation map those themselves, naming what was missing
    /// or duplicated.
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_transient(&err) {
            Self::Unavailable(format!("database: {err}"))
        } else if let Some(description) = crate::db::bad_data_description(&err) {
            tracing::info!(error = %err, "the database refused a value of the request");
            Self::refused_value(description)
        } else {
            Self::Internal(anyhow::Error::new(err).context("database"))
        }
    }
}

/// The `ErrorInfo.reason` carried by a status, if any.
pub fn error_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The field paths named by a status's `BadRequest` details.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status: Status =
            ServiceError::invalid("lines[1].quantity", "must be at least 1").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            violated_fields(&status),
            vec!["lines[1].quantity".to_owned()]
        );
        assert!(status.message().contains("lines[1].quantity"));
    }

    #[test]
    fn failed_precondition_carries_reason() {
        let status: Status = ServiceError::precondition("OUT_OF_STOCK", "sku KB-1 is out").into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(error_reason(&status).as_deref(), Some("OUT_OF_STOCK"));
    }

    #[test]
    fn a_violation_of_the_whole_request_reads_well() {
        let status: Status = ServiceError::InvalidArgument(vec![Violation {
            field: String::new(),
            description: "contains a character the database cannot store".into(),
        }])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid argument: the request contains a character the database cannot store"
        );
    }

    #[test]
    fn at_most_twenty_violations_are_reported_each_bounded() {
        let violations: Vec<Violation> = (0..2_000)
            .map(|i| Violation {
                field: format!("lines[{i}].sku"),
                description: "x".repeat(10_000),
            })
            .collect();
        let status: Status = ServiceError::InvalidArgument(violations).into();
        let fields = violated_fields(&status);
        assert_eq!(fields.len(), MAX_REPORTED_VIOLATIONS + 1);
        assert_eq!(fields[19], "lines[19].sku");
        assert_eq!(fields[20], "");
        let details = status.get_details_bad_request().unwrap();
        assert_eq!(details.field_violations[20].description, "and 1980 more");
        assert!(details.field_violations[0].description.len() <= MAX_VIOLATION_TEXT_BYTES);
        assert!(status.message().ends_with("the request and 1980 more"));
        assert!(status.message().len() < 21 * 2 * MAX_VIOLATION_TEXT_BYTES);
        // A cut lands on a character boundary.
        assert!(bounded(&"한".repeat(200)).len() <= MAX_VIOLATION_TEXT_BYTES);
    }

    #[test]
    fn internal_hides_the_cause() {
        let status: Status = ServiceError::Internal(anyhow::anyhow!("secret path /x")).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
        let id = error_id_of(&status).unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(status.message(), format!("internal error, error id {id}"));
    }

    #[test]
    fn unavailable_hides_the_cause() {
        let status: Status =
            ServiceError::Unavailable("database: pool timed out on 10.0.0.7".into()).into();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.7"), "{status:?}");
        let id = error_id_of(&status).unwrap();
        assert_eq!(
            status.message(),
            format!("temporarily unavailable, retry; error id {id}")
        );
        assert_ne!(error_id(), error_id());
    }
}
