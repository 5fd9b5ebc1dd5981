//! The state row of a saga instance (docs/architecture.md, "The engine" (State row and journal))
//! and its small value types.
//!
//! A [`SagaState`] is never edited field by field: it is the fold of the saga's journal
//! ([`crate::journal::fold`]), and the store writes the folded value together with the journal
//! entries that produced it, in one transaction.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::failure::StepError;

mod position;

pub use position::{Cursor, InvalidState, Outcome, Position, StepAt};

/// The id of a saga instance (a UUIDv7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(pub Uuid);

impl SagaId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for SagaId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A value read from the database that does not parse (a bug or a foreign writer).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?} in the saga tables")]
pub struct UnknownValue {
    what: &'static str,
    value: String,
}

/// Where a saga is in its life (docs/architecture.md, "The engine"):
/// RUNNING → COMPLETED; RUNNING → COMPENSATING → COMPENSATED; any → NEEDS_ATTENTION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// Executing its steps forward.
    Running,
    /// Executing compensations (and then the failure finalizer).
    Compensating,
    /// Every step succeeded.
    Completed,
    /// The saga failed and every completed step was compensated.
    Compensated,
    /// Parked until an operator's RetrySaga: a compensation failed for good, the pivot's outcome
    /// stayed unknown, or a step after the pivot failed for good.
    NeedsAttention,
}

impl SagaStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::NeedsAttention,
    ];

    /// The stored name (`RUNNING`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Compensating => "COMPENSATING",
            Self::Completed => "COMPLETED",
            Self::Compensated => "COMPENSATED",
            Self::NeedsAttention => "NEEDS_ATTENTION",
        }
    }

    /// Whether workers still advance a saga in this status (RUNNING or COMPENSATING).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Compensating)
    }

    /// Whether the saga has reached COMPLETED or COMPENSATED.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SagaStatus {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "saga status",
                value: s.to_owned(),
            })
    }
}

/// Which part of the definition a saga executes. Kept while the saga is NEEDS_ATTENTION, so that
/// RetrySaga resumes where it parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Executing step actions in order.
    Forward,
    /// Executing compensations in reverse order of the completed steps.
    Compensating,
    /// Executing the failure finalizer after the compensations.
    Finalizing,
    /// Nothing left to do.
    Finished,
}

impl Phase {
    /// The stored name (`forward`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Compensating => "compensating",
            Self::Finalizing => "finalizing",
            Self::Finished => "finished",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Forward,
            Self::Compensating,
            Self::Finalizing,
            Self::Finished,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| UnknownValue {
            what: "saga phase",
            value: s.to_owned(),
        })
    }
}

/// One saga instance's state row (docs/architecture.md, "The engine" (State row and journal)).
/// Timestamps are unix milliseconds.
///
/// Where the saga is — its status, phase, step index and current step — is one [`Position`], so
/// that no invalid combination of those four can be held; read it with [`SagaState::status`],
/// [`SagaState::phase`], [`SagaState::step_index`], [`SagaState::current_step`] and
/// [`SagaState::cursor`].
#[derive(Debug, Clone, PartialEq)]
pub struct SagaState {
    /// The saga's id.
    pub id: SagaId,
    /// Name of the definition that started it.
    pub definition_name: String,
    /// Version of that definition; the saga finishes on this version.
    pub definition_version: u32,
    /// Caller's key that makes starting idempotent (unique; the order id for order sagas).
    pub business_key: String,
    /// Where the saga is in its definition, and whether it is parked there.
    pub position: Position,
    /// Attempt number (from 1) of the current step, compensation or finalizer.
    pub attempt: u32,
    /// The saga's input, as given to `Engine::start`.
    pub input: Value,
    /// Output of every succeeded step, by step name.
    pub outputs: Map<String, Value>,
    /// Steps to compensate, in execution order (reverse order of completion), fixed when the saga
    /// starts compensating.
    pub compensation_plan: Vec<String>,
    /// Unix ms before which no worker claims the saga (a scheduled retry).
    pub next_attempt_at: i64,
    /// Engine holding the lease; `None` when released.
    pub lease_owner: Option<String>,
    /// Unix ms at which the lease expires unless renewed. Renewals are not journaled, so this is the
    /// one field the journal fold does not reproduce.
    pub lease_expires_at: Option<i64>,
    /// Bumped by every claim and by CancelSaga; every write requires the value the writer read
    /// (docs/architecture.md, "The engine" (Durability rule)).
    pub fencing_token: i64,
    /// Saved W3C trace context of the request that started the saga.
    pub trace_context: Option<String>,
    /// Unix ms after which a saga still before its pivot is compensated (DEADLINE_EXCEEDED).
    pub deadline_at: Option<i64>,
    /// Unix ms of creation.
    pub created_at: i64,
    /// Unix ms of the last journaled change.
    pub updated_at: i64,
    /// Last step, compensation or finalizer error.
    pub last_error: Option<StepError>,
    /// Machine-readable reason the saga is compensating (`OUT_OF_STOCK`, `DEADLINE_EXCEEDED`,
    /// `CANCELED`, …); `None` while it has not failed.
    pub failure_reason: Option<String>,
    /// Whether an attempt of the current forward step may have had its effect although it
    /// failed (a timeout, a lost reply, a key-reuse answer, or a crash while it was current):
    /// from then on the step stays uncertain whatever later attempts say
    /// (docs/architecture.md, "Attempts in doubt"). Cleared when the next step starts.
    pub in_doubt: bool,
    /// How many operator retries (RetrySaga) the saga had: calls after the n-th carry
    /// generation n in their idempotency key, so that a rejection a service stored under the
    /// old key is not replayed forever (docs/architecture.md, "Operator commands").
    pub generation: u32,
    /// Failed attempts of the current step that provably never reached the service (a refused
    /// connection): they do not count against the step's attempts (docs/architecture.md,
    /// "Retries"). Cleared when the next step starts.
    pub undelivered: u32,
    /// Sequence number of the last journal entry.
    pub last_seq: i64,
}

impl SagaState {
    /// The state with the one field the journal does not determine (`lease_expires_at`, renewed
    /// without journaling) cleared, for comparing a state row with the fold of its journal.
    pub fn journaled_view(&self) -> Self {
        Self {
            lease_expires_at: None,
            ..self.clone()
        }
    }

    /// Where the saga is in its definition.
    pub fn cursor(&self) -> &Cursor {
        self.position.cursor()
    }

    /// Lifecycle status.
    pub fn status(&self) -> SagaStatus {
        self.position.status()
    }

    /// Which part of the definition is executing (kept while the saga is parked).
    pub fn phase(&self) -> Phase {
        self.position.cursor().phase()
    }

    /// Index in the definition of the step being executed or compensated; `None` when the saga
    /// is finalizing, finished, or between phases.
    pub fn step_index(&self) -> Option<u32> {
        self.cursor().step().map(|at| at.index)
    }

    /// Name of that step.
    pub fn current_step(&self) -> Option<&str> {
        self.cursor().step().map(|at| at.name.as_str())
    }

    /// Moves the saga to `cursor`, not parked (the status becomes the cursor's).
    pub fn set_cursor(&mut self, cursor: Cursor) {
        self.position = Position::at(cursor);
    }
}
