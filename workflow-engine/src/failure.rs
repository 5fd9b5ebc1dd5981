//! A failed attempt of a step's action, compensation or finalizer ([`StepError`], as journaled)
//! and how gRPC answers are classified (docs/architecture.md, "The engine" (Retries) and
//! "Attempts in doubt"). The bottom of the crate: it depends on no other module, so the state
//! row, the journal and the definitions can all name a [`StepError`].

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

/// How a failure is treated (docs/architecture.md, "The engine" (Retries)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// A definite business failure: not retried; the saga compensates.
    Business,
    /// A transient failure: retried with backoff; the effect may or may not have happened.
    Transient,
}

/// Classifies a gRPC code (docs/architecture.md, "The engine" (Retries)): INVALID_ARGUMENT,
/// NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS, PERMISSION_DENIED and OUT_OF_RANGE are business
/// failures; UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL and UNKNOWN are
/// transient; every other code (CANCELLED, UNIMPLEMENTED, DATA_LOSS, UNAUTHENTICATED, and OK, which
/// is no failure at all) is treated as a business failure, because retrying cannot help.
pub fn classify_code(code: Code) -> Classification {
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown => Classification::Transient,
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::OutOfRange
        | Code::Ok
        | Code::Cancelled
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Unauthenticated => Classification::Business,
    }
}

/// The ErrorInfo reason of `ALREADY_EXISTS` when an idempotency key was used with another
/// request: proof that an earlier request under the key was applied.
pub const REASON_IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// Whether a code proves that the request never reached the service's handler: UNIMPLEMENTED
/// (no such method behind this address, e.g. a proxy during a redeploy), UNAUTHENTICATED and
/// PERMISSION_DENIED (refused by an authentication layer before the handler). Our services
/// never answer these from a handler (docs/architecture.md, "Attempts in doubt").
pub fn proves_not_delivered(code: Code) -> bool {
    matches!(
        code,
        Code::Unimplemented | Code::Unauthenticated | Code::PermissionDenied
    )
}

/// Classifies a gRPC status by its code ([`classify_code`]).
pub fn classify(status: &Status) -> Classification {
    classify_code(status.code())
}

/// The gRPC code name in `SCREAMING_SNAKE_CASE` (`FAILED_PRECONDITION`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A failed attempt of a step's action, compensation or finalizer, as journaled: plain serde
/// data, read back with a fallible deserialization (a stored value never panics the reader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    /// gRPC code name (`FAILED_PRECONDITION`, `UNAVAILABLE`, …).
    pub code: String,
    /// For a person.
    pub message: String,
    /// Machine-readable reason (the `google.rpc.ErrorInfo` reason, for example `OUT_OF_STOCK`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Whether the failure is transient (retried) rather than a business failure.
    pub retryable: bool,
    /// The request provably never reached the service's handler (UNIMPLEMENTED,
    /// UNAUTHENTICATED, PERMISSION_DENIED from a proxy or an auth layer, a refused connection):
    /// this attempt had no effect, but it also says nothing about earlier attempts
    /// (docs/architecture.md, "Attempts in doubt").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_delivered: bool,
}

impl StepError {
    /// A definite business failure with gRPC code FAILED_PRECONDITION and a machine-readable
    /// reason.
    pub fn business(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code_name(Code::FailedPrecondition).to_owned(),
            message: message.into(),
            reason: Some(reason.into()),
            retryable: false,
            not_delivered: false,
        }
    }

    /// A transient failure with gRPC code UNAVAILABLE whose effect is in doubt.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            code: code_name(Code::Unavailable).to_owned(),
            message: message.into(),
            reason: None,
            retryable: true,
            not_delivered: false,
        }
    }

    /// A transient UNAVAILABLE that provably never reached the service (a refused connection):
    /// retried, but not in doubt.
    pub fn not_delivered(message: impl Into<String>) -> Self {
        Self {
            not_delivered: true,
            ..Self::transient(message)
        }
    }

    /// A panic or other internal fault of the caller's own code: transient INTERNAL, in doubt.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: code_name(Code::Internal).to_owned(),
            ..Self::transient(message)
        }
    }

    /// Whether this attempt may have had its effect although it failed: a transient failure
    /// that may have reached the handler (a timeout, a lost reply), or `ALREADY_EXISTS`
    /// [`REASON_IDEMPOTENCY_KEY_REUSED`], which proves an earlier request under the same key was
    /// applied (docs/architecture.md, "Attempts in doubt").
    pub fn in_doubt(&self) -> bool {
        (self.retryable && !self.not_delivered) || self.is_key_reuse()
    }

    /// `ALREADY_EXISTS` with reason [`REASON_IDEMPOTENCY_KEY_REUSED`].
    pub fn is_key_reuse(&self) -> bool {
        self.code == code_name(Code::AlreadyExists)
            && self.reason.as_deref() == Some(REASON_IDEMPOTENCY_KEY_REUSED)
    }

    /// The transient DEADLINE_EXCEEDED of an attempt that outlived its per-attempt timeout.
    pub fn timed_out(timeout_ms: u64) -> Self {
        Self {
            code: code_name(Code::DeadlineExceeded).to_owned(),
            message: format!("no reply within the attempt's timeout of {timeout_ms} ms"),
            reason: None,
            retryable: true,
            not_delivered: false,
        }
    }

    /// Classifies a gRPC status ([`classify`]), keeps its ErrorInfo reason and marks the codes
    /// that prove the request never reached a handler ([`proves_not_delivered`]).
    pub fn from_status(status: &Status) -> Self {
        Self {
            code: code_name(status.code()).to_owned(),
            message: status.message().to_owned(),
            reason: sagaflow_server::error::error_reason(status),
            retryable: classify(status) == Classification::Transient,
            not_delivered: proves_not_delivered(status.code()),
        }
    }

    /// The reason a business failure gives the saga: the ErrorInfo reason, else the code name.
    pub fn failure_reason(&self) -> String {
        self.reason.clone().unwrap_or_else(|| self.code.clone())
    }
}

impl From<&Status> for StepError {
    fn from(status: &Status) -> Self {
        Self::from_status(status)
    }
}

impl From<Status> for StepError {
    fn from(status: Status) -> Self {
        Self::from_status(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_is_classified() {
        use Classification::{Business, Transient};
        let expected = [
            (Code::InvalidArgument, Business),
            (Code::NotFound, Business),
            (Code::FailedPrecondition, Business),
            (Code::AlreadyExists, Business),
            (Code::PermissionDenied, Business),
            (Code::OutOfRange, Business),
            (Code::Unavailable, Transient),
            (Code::DeadlineExceeded, Transient),
            (Code::ResourceExhausted, Transient),
            (Code::Aborted, Transient),
            (Code::Internal, Transient),
            (Code::Unknown, Transient),
            (Code::Ok, Business),
            (Code::Cancelled, Business),
            (Code::Unimplemented, Business),
            (Code::DataLoss, Business),
            (Code::Unauthenticated, Business),
        ];
        assert_eq!(expected.len(), 17, "every gRPC code is listed");
        for (code, class) in expected {
            let status = Status::new(code, "x");
            assert_eq!(classify(&status), class, "{code:?}");
            let err = StepError::from(&status);
            assert_eq!(err.retryable, class == Transient, "{code:?}");
            assert_eq!(err.code, code_name(code));
        }
    }

    #[test]
    fn step_error_keeps_the_error_info_reason() {
        let status: Status =
            sagaflow_server::ServiceError::precondition("OUT_OF_STOCK", "sku KB-1 is out").into();
        let err = StepError::from(&status);
        assert_eq!(err.reason.as_deref(), Some("OUT_OF_STOCK"));
        assert!(!err.retryable);
        assert_eq!(err.failure_reason(), "OUT_OF_STOCK");
        let plain = StepError::from(Status::not_found("x"));
        assert_eq!(plain.failure_reason(), "NOT_FOUND");
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(serde_json::from_str::<StepError>(&json).unwrap(), err);
    }
}
