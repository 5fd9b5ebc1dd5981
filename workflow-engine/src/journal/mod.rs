//! The journal (docs/architecture.md, "The engine" (State row and journal)): append-only entries
//! per saga, and the pure fold that turns them into the saga's state row.
//!
//! The engine never edits a state row directly: it decides which [`Event`]s happen, folds them onto
//! the current state with [`apply`], and the store commits the new row and the entries in one
//! transaction. So the row equals [`fold`] of its journal by construction; the store conformance
//! suite and the property test check that it also holds for what is read back from the database.
//! The one exception is `lease_expires_at`, which lease renewals move without journaling
//! ([`SagaState::journaled_view`](crate::state::SagaState::journaled_view)).
//!
//! Stored columns: `event_type` is the variant's snake_case name, `step` and `attempt` are lifted
//! out of the variant when it has them, and `detail` is the rest as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    failure::StepError,
    state::{SagaId, SagaStatus},
};

/// Why a forward step's attempt failed and what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureOutcome {
    /// A transient failure: the next attempt is scheduled at `next_attempt_at`.
    Retry,
    /// A definite business failure: the step did not happen.
    Business,
    /// The outcome is unknown: still transient after the last attempt, or a failure after an
    /// attempt in doubt (docs/architecture.md, "Attempts in doubt").
    Unknown,
    /// Still failing after the last attempt, but no attempt ever reached the service.
    NotApplied,
}

/// Why a saga began compensating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationCause {
    /// A step failed with a business failure.
    BusinessFailure,
    /// A step's outcome stayed unknown after its last attempt.
    UnknownOutcome,
    /// The saga passed its deadline before the pivot.
    Deadline,
    /// An operator canceled it before the pivot.
    Canceled,
}

/// How an operator settled a parked call (ResolveStep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The parked call's effect happened (or is settled by hand): the step counts as
    /// succeeded, the compensation or finalizer as done.
    Applied,
    /// The parked forward call had no effect: the saga compensates (only at or before the pivot).
    NotApplied,
}

impl Resolution {
    /// `applied` or `not_applied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::NotApplied => "not_applied",
        }
    }
}

/// One journaled event. Detail fields are documented per variant; times are unix ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum Event {
    /// The saga instance was created.
    SagaStarted {
        /// Definition name.
        definition_name: String,
        /// Definition version the saga runs (and finishes) on.
        definition_version: u32,
        /// Caller's unique key.
        business_key: String,
        /// The saga input.
        input: Value,
        /// Saga deadline.
        deadline_at: Option<i64>,
        /// Saved W3C trace context.
        trace_context: Option<String>,
    },
    /// An engine took the lease.
    LeaseAcquired {
        /// The engine's owner id.
        owner: String,
        /// The new fencing token.
        fencing_token: i64,
        /// When the lease expires unless renewed.
        lease_expires_at: i64,
    },
    /// The lease was taken over after the previous holder's lease expired (a crash or a stall).
    Recovered {
        /// Who held it.
        previous_owner: String,
        /// With which token.
        previous_fencing_token: i64,
    },
    /// The holder gave the lease up (graceful shutdown, a long retry wait, a parked saga).
    LeaseReleased {
        /// The engine's owner id.
        owner: String,
    },
    /// A step was skipped by its skip condition.
    StepSkipped {
        /// The step.
        step: String,
        /// Its index in the definition.
        index: u32,
    },
    /// A step became the current step (its first attempt is about to be sent).
    StepStarted {
        /// The step.
        step: String,
        /// Its index in the definition.
        index: u32,
        /// Always 1.
        attempt: u32,
    },
    /// A step's action succeeded.
    StepSucceeded {
        /// The step.
        step: String,
        /// The attempt that succeeded.
        attempt: u32,
        /// The action's output.
        output: Value,
    },
    /// A step's attempt failed.
    StepFailed {
        /// The step.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// The error.
        error: StepError,
        /// What happens next.
        outcome: FailureOutcome,
        /// When the next attempt runs (`outcome` = retry).
        next_attempt_at: Option<i64>,
        /// The backoff cap the delay was drawn under, milliseconds (`outcome` = retry).
        backoff_cap_ms: Option<u64>,
    },
    /// The saga passed its deadline before the pivot.
    DeadlineExceeded {
        /// The deadline.
        deadline_at: i64,
    },
    /// An operator canceled the saga (CancelSaga); the lease is revoked.
    Canceled {
        /// The new fencing token: a worker still running a step throws its result away.
        fencing_token: i64,
        /// Who canceled it, as the server's access layer established it (`token:<id>`,
        /// `in-process`, …; docs/operations.md, "Security"): the audit record. Absent in
        /// entries written before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operator: Option<String>,
    },
    /// The saga starts compensating.
    SagaCompensating {
        /// Why.
        cause: CompensationCause,
        /// The failure reason (`OUT_OF_STOCK`, `DEADLINE_EXCEEDED`, `CANCELED`, …).
        reason: String,
        /// Steps to compensate, in order.
        plan: Vec<String>,
    },
    /// A compensation became current (its first attempt is about to be sent).
    CompensationStarted {
        /// The step being compensated.
        step: String,
        /// Its index in the definition.
        index: u32,
        /// Always 1.
        attempt: u32,
    },
    /// A compensation succeeded.
    CompensationSucceeded {
        /// The step compensated.
        step: String,
        /// The attempt that succeeded.
        attempt: u32,
        /// The compensation's output.
        output: Value,
    },
    /// A compensation's attempt failed.
    CompensationFailed {
        /// The step being compensated.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// The error.
        error: StepError,
        /// When it is retried (transient); `None` for a business failure (the saga parks).
        next_attempt_at: Option<i64>,
        /// Backoff cap of the delay, milliseconds (transient).
        backoff_cap_ms: Option<u64>,
    },
    /// The failure finalizer became current.
    FinalizerStarted {
        /// Always 1.
        attempt: u32,
    },
    /// The failure finalizer succeeded.
    FinalizerSucceeded {
        /// The attempt that succeeded.
        attempt: u32,
        /// Its output.
        output: Value,
    },
    /// A failure finalizer attempt failed.
    FinalizerFailed {
        /// The attempt that failed.
        attempt: u32,
        /// The error.
        error: StepError,
        /// When it is retried (transient); `None` for a business failure (the saga parks).
        next_attempt_at: Option<i64>,
        /// Backoff cap of the delay, milliseconds (transient).
        backoff_cap_ms: Option<u64>,
    },
    /// An operator resumed a NEEDS_ATTENTION saga (RetrySaga); later calls carry the next key
    /// generation.
    OperatorRetry {
        /// Who resumed it (as in [`Event::Canceled`]): the audit record. Absent in entries
        /// written before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operator: Option<String>,
    },
    /// An operator settled the parked call of a NEEDS_ATTENTION saga by hand (ResolveStep);
    /// the events that follow carry the saga on (an audit record: who, why).
    OperatorResolved {
        /// The parked step (`finalize` for the failure finalizer).
        step: String,
        /// What the operator says happened.
        resolution: Resolution,
        /// Who settled it.
        operator: String,
        /// Why, for the audit trail.
        reason: String,
    },
    /// Every step succeeded.
    SagaCompleted {},
    /// Every compensation (and the finalizer) succeeded.
    SagaCompensated {},
    /// The saga is parked for an operator; an alert was logged.
    SagaNeedsAttention {
        /// Why (for a person).
        reason: String,
    },
}

impl Event {
    /// The stored `event_type` (`step_started`, …).
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::SagaStarted { .. } => "saga_started",
            Self::LeaseAcquired { .. } => "lease_acquired",
            Self::Recovered { .. } => "recovered",
            Self::LeaseReleased { .. } => "lease_released",
            Self::StepSkipped { .. } => "step_skipped",
            Self::StepStarted { .. } => "step_started",
            Self::StepSucceeded { .. } => "step_succeeded",
            Self::StepFailed { .. } => "step_failed",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::Canceled { .. } => "canceled",
            Self::SagaCompensating { .. } => "saga_compensating",
            Self::CompensationStarted { .. } => "compensation_started",
            Self::CompensationSucceeded { .. } => "compensation_succeeded",
            Self::CompensationFailed { .. } => "compensation_failed",
            Self::FinalizerStarted { .. } => "finalizer_started",
            Self::FinalizerSucceeded { .. } => "finalizer_succeeded",
            Self::FinalizerFailed { .. } => "finalizer_failed",
            Self::OperatorRetry { .. } => "operator_retry",
            Self::OperatorResolved { .. } => "operator_resolved",
            Self::SagaCompleted {} => "saga_completed",
            Self::SagaCompensated {} => "saga_compensated",
            Self::SagaNeedsAttention { .. } => "saga_needs_attention",
        }
    }
}

/// A journal entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The saga.
    pub saga_id: SagaId,
    /// Sequence number within the saga, from 1, without gaps.
    pub seq: i64,
    /// Unix ms.
    pub at: i64,
    /// What happened.
    pub event: Event,
}

/// The stored columns of an entry: `(event_type, step, attempt, detail JSON)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    /// `event_type` column.
    pub event_type: String,
    /// `step` column.
    pub step: Option<String>,
    /// `attempt` column.
    pub attempt: Option<i64>,
    /// `detail` column (JSON object).
    pub detail: String,
}

/// An entry that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The columns do not form a known event.
    #[error("journal entry {seq} of saga {saga_id} does not decode: {source}")]
    Decode {
        /// The saga.
        saga_id: SagaId,
        /// The entry.
        seq: i64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The event cannot happen in the saga's current state (docs/architecture.md, "The
    /// engine" (State row and journal)): a decision taken on a stale or wrong state.
    #[error(
        "journal entry {seq} of saga {saga_id}: {event} cannot happen while the saga is \
         {status}, {cursor}: {rule}"
    )]
    Illegal {
        /// The saga.
        saga_id: SagaId,
        /// The entry.
        seq: i64,
        /// The refused event's `event_type`.
        event: &'static str,
        /// The saga's status.
        status: SagaStatus,
        /// Where the saga is ([`crate::state::Cursor`], displayed).
        cursor: String,
        /// The rule the event breaks.
        rule: &'static str,
    },
    /// The entries do not form a valid history (first entry not `saga_started`, a gap).
    #[error("journal of saga {saga_id} is not a valid history: {reason}")]
    Invalid {
        /// The saga.
        saga_id: SagaId,
        /// Why.
        reason: String,
    },
}

/// Encodes an event into its stored columns.
pub fn encode(event: &Event) -> EncodedEvent {
    let mut map = match serde_json::to_value(event) {
        Ok(Value::Object(map)) => map,
        // Every variant is a struct variant with string keys: it serializes to an object.
        _ => Map::new(),
    };
    map.remove("event_type");
    let step = match map.remove("step") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let attempt = map.remove("attempt").and_then(|a| a.as_i64());
    EncodedEvent {
        event_type: event.event_type().to_owned(),
        step,
        attempt,
        detail: Value::Object(map).to_string(),
    }
}

/// Decodes stored columns into an event.
///
/// # Errors
/// The serde error when the columns do not form a known event.
pub fn decode(encoded: &EncodedEvent) -> Result<Event, serde_json::Error> {
    let mut map = match serde_json::from_str::<Value>(&encoded.detail)? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    map.insert(
        "event_type".to_owned(),
        Value::String(encoded.event_type.clone()),
    );
    if let Some(step) = &encoded.step {
        map.insert("step".to_owned(), Value::String(step.clone()));
    }
    if let Some(attempt) = encoded.attempt {
        map.insert("attempt".to_owned(), Value::from(attempt));
    }
    serde_json::from_value(Value::Object(map))
}
mod fold;
mod progress;
#[cfg(test)]
mod tests;
mod transition;

pub use fold::{append, apply, begin, fold};
pub use progress::{StepProgress, step_progress};
