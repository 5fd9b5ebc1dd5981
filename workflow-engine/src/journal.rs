//! The journal (docs/architecture.md, "The engine" (State row and journal)): append-only entries
//! per saga, and the pure fold that turns them into the saga's state row.
//!
//! The engine never edits a state row directly: it decides which [`Event`]s happen, folds them onto
//! the current state with [`apply`], and the store commits the new row and the entries in one
//! transaction. So the row equals [`fold`] of its journal by construction; the store conformance
//! suite and the property test check that it also holds for what is read back from the database.
//! The one exception is `lease_expires_at`, which lease renewals move without journaling
//! ([`SagaState::journaled_view`]).
//!
//! Stored columns: `event_type` is the variant's snake_case name, `step` and `attempt` are lifted
//! out of the variant when it has them, and `detail` is the rest as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    definition::StepError,
    state::{Phase, SagaId, SagaState, SagaStatus},
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
    OperatorRetry {},
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
            Self::OperatorRetry {} => "operator_retry",
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

/// Applies one entry to the state (the fold's step function). `state` is `None` only before
/// `saga_started`.
///
/// # Errors
/// [`JournalError::Invalid`] when the entry cannot follow the state (no `saga_started` first, a
/// second `saga_started`, a sequence gap).
pub fn apply(state: Option<SagaState>, entry: &JournalEntry) -> Result<SagaState, JournalError> {
    let invalid = |reason: String| JournalError::Invalid {
        saga_id: entry.saga_id,
        reason,
    };
    let mut s = match (state, &entry.event) {
        (
            None,
            Event::SagaStarted {
                definition_name,
                definition_version,
                business_key,
                input,
                deadline_at,
                trace_context,
            },
        ) => {
            if entry.seq != 1 {
                return Err(invalid(format!("saga_started has seq {}", entry.seq)));
            }
            return Ok(SagaState {
                id: entry.saga_id,
                definition_name: definition_name.clone(),
                definition_version: *definition_version,
                business_key: business_key.clone(),
                status: SagaStatus::Running,
                phase: Phase::Forward,
                step_index: None,
                current_step: None,
                attempt: 0,
                input: input.clone(),
                outputs: Map::new(),
                compensation_plan: Vec::new(),
                next_attempt_at: entry.at,
                lease_owner: None,
                lease_expires_at: None,
                fencing_token: 0,
                trace_context: trace_context.clone(),
                deadline_at: *deadline_at,
                created_at: entry.at,
                updated_at: entry.at,
                last_error: None,
                failure_reason: None,
                in_doubt: false,
                generation: 0,
                undelivered: 0,
                last_seq: 1,
            });
        }
        (None, event) => {
            return Err(invalid(format!(
                "first entry is {}, not saga_started",
                event.event_type()
            )));
        }
        (Some(_), Event::SagaStarted { .. }) => {
            return Err(invalid("saga_started twice".to_owned()));
        }
        (Some(s), _) => s,
    };
    if entry.seq != s.last_seq + 1 {
        return Err(invalid(format!(
            "entry {} follows entry {}",
            entry.seq, s.last_seq
        )));
    }
    s.last_seq = entry.seq;
    s.updated_at = entry.at;
    match &entry.event {
        Event::SagaStarted { .. } => {}
        Event::LeaseAcquired {
            owner,
            fencing_token,
            lease_expires_at,
        } => {
            s.lease_owner = Some(owner.clone());
            s.fencing_token = *fencing_token;
            s.lease_expires_at = Some(*lease_expires_at);
        }
        Event::Recovered { .. } => {
            // The previous holder may have sent the current attempt before it died.
            if s.status == SagaStatus::Running && s.phase == Phase::Forward && s.attempt >= 1 {
                s.in_doubt = true;
            }
            // Backoff earned before the crash does not delay the recovery.
            s.next_attempt_at = s.next_attempt_at.min(entry.at);
        }
        Event::StepSkipped { .. } | Event::DeadlineExceeded { .. } => {}
        Event::LeaseReleased { .. } => release(&mut s),
        Event::StepStarted {
            step,
            index,
            attempt,
        } => {
            s.phase = Phase::Forward;
            s.step_index = Some(*index);
            s.current_step = Some(step.clone());
            s.attempt = *attempt;
            s.in_doubt = false;
            s.undelivered = 0;
        }
        Event::StepSucceeded { step, output, .. } => {
            s.outputs.insert(step.clone(), output.clone());
        }
        Event::StepFailed {
            attempt,
            error,
            next_attempt_at,
            ..
        } => {
            s.last_error = Some(error.clone());
            s.in_doubt |= error.in_doubt();
            if error.retryable && error.not_delivered {
                s.undelivered = s.undelivered.saturating_add(1);
            }
            if let Some(at) = next_attempt_at {
                s.attempt = attempt.saturating_add(1);
                s.next_attempt_at = *at;
            }
        }
        Event::CompensationFailed {
            attempt,
            error,
            next_attempt_at,
            ..
        }
        | Event::FinalizerFailed {
            attempt,
            error,
            next_attempt_at,
            ..
        } => {
            s.last_error = Some(error.clone());
            if let Some(at) = next_attempt_at {
                s.attempt = attempt.saturating_add(1);
                s.next_attempt_at = *at;
            }
        }
        Event::Canceled { fencing_token } => {
            s.fencing_token = *fencing_token;
            release(&mut s);
        }
        Event::SagaCompensating { reason, plan, .. } => {
            s.status = SagaStatus::Compensating;
            s.phase = Phase::Compensating;
            s.failure_reason = Some(reason.clone());
            s.compensation_plan = plan.clone();
            s.step_index = None;
            s.current_step = None;
            s.attempt = 0;
            s.in_doubt = false;
            s.undelivered = 0;
        }
        Event::CompensationStarted {
            step,
            index,
            attempt,
        } => {
            s.phase = Phase::Compensating;
            s.step_index = Some(*index);
            s.current_step = Some(step.clone());
            s.attempt = *attempt;
        }
        Event::CompensationSucceeded { .. } | Event::FinalizerSucceeded { .. } => {}
        Event::FinalizerStarted { attempt } => {
            s.phase = Phase::Finalizing;
            s.step_index = None;
            s.current_step = None;
            s.attempt = *attempt;
        }
        Event::OperatorRetry {} => {
            s.status = resumed_status(&s);
            s.attempt = 1;
            s.undelivered = 0;
            s.generation = s.generation.saturating_add(1);
        }
        Event::OperatorResolved { .. } => s.status = resumed_status(&s),
        Event::SagaCompleted {} => finish(&mut s, SagaStatus::Completed),
        Event::SagaCompensated {} => finish(&mut s, SagaStatus::Compensated),
        Event::SagaNeedsAttention { .. } => {
            s.status = SagaStatus::NeedsAttention;
            release(&mut s);
        }
    }
    Ok(s)
}

/// The status a parked saga resumes in: RUNNING forward, COMPENSATING otherwise.
fn resumed_status(s: &SagaState) -> SagaStatus {
    match s.phase {
        Phase::Forward => SagaStatus::Running,
        Phase::Compensating | Phase::Finalizing => SagaStatus::Compensating,
        Phase::Finished => s.status,
    }
}

fn release(s: &mut SagaState) {
    s.lease_owner = None;
    s.lease_expires_at = None;
}

fn finish(s: &mut SagaState, status: SagaStatus) {
    s.status = status;
    s.phase = Phase::Finished;
    s.step_index = None;
    s.current_step = None;
    s.attempt = 0;
    s.in_doubt = false;
    s.undelivered = 0;
    release(s);
}

/// Folds a saga's whole journal (in sequence order) into its state.
///
/// # Errors
/// [`JournalError::Invalid`] for an empty or invalid history.
pub fn fold<'a>(
    entries: impl IntoIterator<Item = &'a JournalEntry>,
) -> Result<SagaState, JournalError> {
    let mut state: Option<SagaState> = None;
    let mut saga_id = None;
    for entry in entries {
        saga_id = Some(entry.saga_id);
        state = Some(apply(state, entry)?);
    }
    state.ok_or_else(|| JournalError::Invalid {
        saga_id: saga_id.unwrap_or(SagaId(uuid::Uuid::nil())),
        reason: "empty journal".to_owned(),
    })
}

/// Applies `events` (stamped `at`, numbered after `state.last_seq`) and returns the new state and
/// the entries to append.
///
/// # Errors
/// [`JournalError::Invalid`] when an event cannot follow the state (an engine bug).
pub fn append(
    state: &SagaState,
    at: i64,
    events: Vec<Event>,
) -> Result<(SagaState, Vec<JournalEntry>), JournalError> {
    let mut next = state.clone();
    let mut entries = Vec::with_capacity(events.len());
    for event in events {
        let entry = JournalEntry {
            saga_id: state.id,
            seq: next.last_seq + 1,
            at,
            event,
        };
        next = apply(Some(next), &entry)?;
        entries.push(entry);
    }
    Ok((next, entries))
}

/// Folds the first events of a new saga (`events[0]` must be `saga_started`), stamped `at`.
///
/// # Errors
/// [`JournalError::Invalid`] when `events` does not begin with `saga_started`.
pub fn begin(
    saga_id: SagaId,
    at: i64,
    events: Vec<Event>,
) -> Result<(SagaState, Vec<JournalEntry>), JournalError> {
    let mut events = events.into_iter();
    let first = JournalEntry {
        saga_id,
        seq: 1,
        at,
        event: events.next().ok_or_else(|| JournalError::Invalid {
            saga_id,
            reason: "no events".to_owned(),
        })?,
    };
    let state = apply(None, &first)?;
    let (state, mut rest) = append(&state, at, events.collect())?;
    rest.insert(0, first);
    Ok((state, rest))
}

/// What an entry did to one step, for the admin API's per-step view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepProgress {
    /// Not reached.
    Pending,
    /// Skipped by its condition.
    Skipped,
    /// Current, being attempted.
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed (business failure or unknown outcome).
    Failed,
    /// Its compensation is current.
    Compensating,
    /// Compensated.
    Compensated,
}

impl StepProgress {
    /// The admin API's name (`pending`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Skipped => "skipped",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
        }
    }
}

/// Per-step progress and attempt counts (actions and compensations) from a journal, for the step
/// names given in definition order. Names the journal never mentions stay pending.
pub fn step_progress<'a>(
    steps: &[&str],
    entries: impl IntoIterator<Item = &'a JournalEntry>,
) -> Vec<(StepProgress, u32)> {
    let mut out = vec![(StepProgress::Pending, 0_u32); steps.len()];
    let pos = |name: &str| steps.iter().position(|s| *s == name);
    for entry in entries {
        let (name, progress, attempt) = match &entry.event {
            Event::StepSkipped { step, .. } => (step, StepProgress::Skipped, None),
            Event::StepStarted { step, attempt, .. } => {
                (step, StepProgress::Running, Some(*attempt))
            }
            Event::StepSucceeded { step, attempt, .. } => {
                (step, StepProgress::Succeeded, Some(*attempt))
            }
            Event::StepFailed {
                step,
                attempt,
                outcome,
                ..
            } => {
                let progress = if *outcome == FailureOutcome::Retry {
                    StepProgress::Running
                } else {
                    StepProgress::Failed
                };
                (step, progress, Some(*attempt))
            }
            Event::CompensationStarted { step, .. } | Event::CompensationFailed { step, .. } => {
                (step, StepProgress::Compensating, None)
            }
            Event::CompensationSucceeded { step, .. } => (step, StepProgress::Compensated, None),
            _ => continue,
        };
        if let Some(i) = pos(name) {
            out[i].0 = progress;
            if let Some(a) = attempt {
                out[i].1 = out[i].1.max(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, event: Event) -> JournalEntry {
        JournalEntry {
            saga_id: SagaId(uuid::Uuid::nil()),
            seq,
            at: 1_000 + seq,
            event,
        }
    }

    fn started() -> Event {
        Event::SagaStarted {
            definition_name: "d".into(),
            definition_version: 1,
            business_key: "k".into(),
            input: serde_json::json!({"a": 1}),
            deadline_at: None,
            trace_context: None,
        }
    }

    #[test]
    fn events_round_trip_through_their_columns() {
        let events = vec![
            started(),
            Event::StepStarted {
                step: "a".into(),
                index: 0,
                attempt: 1,
            },
            Event::StepFailed {
                step: "a".into(),
                attempt: 1,
                error: StepError::transient("down"),
                outcome: FailureOutcome::Retry,
                next_attempt_at: Some(5),
                backoff_cap_ms: Some(100),
            },
            Event::OperatorRetry {},
            Event::FinalizerStarted { attempt: 1 },
        ];
        for event in events {
            let encoded = encode(&event);
            assert_eq!(encoded.event_type, event.event_type());
            assert_eq!(decode(&encoded).unwrap(), event);
        }
        let encoded = encode(&Event::StepSucceeded {
            step: "a".into(),
            attempt: 2,
            output: Value::Null,
        });
        assert_eq!(encoded.step.as_deref(), Some("a"));
        assert_eq!(encoded.attempt, Some(2));
    }

    #[test]
    fn fold_rejects_invalid_histories() {
        assert!(fold(&[entry(1, Event::SagaCompleted {})]).is_err());
        assert!(fold(&[entry(1, started()), entry(3, Event::SagaCompleted {})]).is_err());
        assert!(fold(&[entry(1, started()), entry(2, started())]).is_err());
        assert!(fold(&[]).is_err());
    }

    #[test]
    fn fold_tracks_a_failure_and_its_compensation() {
        let journal = vec![
            entry(1, started()),
            entry(
                2,
                Event::LeaseAcquired {
                    owner: "e1".into(),
                    fencing_token: 1,
                    lease_expires_at: 99,
                },
            ),
            entry(
                3,
                Event::StepStarted {
                    step: "a".into(),
                    index: 0,
                    attempt: 1,
                },
            ),
            entry(
                4,
                Event::StepSucceeded {
                    step: "a".into(),
                    attempt: 1,
                    output: serde_json::json!(7),
                },
            ),
            entry(
                5,
                Event::StepStarted {
                    step: "b".into(),
                    index: 1,
                    attempt: 1,
                },
            ),
            entry(
                6,
                Event::StepFailed {
                    step: "b".into(),
                    attempt: 1,
                    error: StepError::business("OUT_OF_STOCK", "none left"),
                    outcome: FailureOutcome::Business,
                    next_attempt_at: None,
                    backoff_cap_ms: None,
                },
            ),
            entry(
                7,
                Event::SagaCompensating {
                    cause: CompensationCause::BusinessFailure,
                    reason: "OUT_OF_STOCK".into(),
                    plan: vec!["a".into()],
                },
            ),
            entry(
                8,
                Event::CompensationStarted {
                    step: "a".into(),
                    index: 0,
                    attempt: 1,
                },
            ),
        ];
        let s = fold(&journal).unwrap();
        assert_eq!(s.status, SagaStatus::Compensating);
        assert_eq!(s.current_step.as_deref(), Some("a"));
        assert_eq!(s.failure_reason.as_deref(), Some("OUT_OF_STOCK"));
        assert_eq!(s.outputs.get("a"), Some(&serde_json::json!(7)));
        assert_eq!(s.fencing_token, 1);
        assert_eq!(s.last_seq, 8);
        let progress = step_progress(&["a", "b", "c"], &journal);
        assert_eq!(
            progress,
            vec![
                (StepProgress::Compensating, 1),
                (StepProgress::Failed, 1),
                (StepProgress::Pending, 0)
            ]
        );
        let (done, entries) = append(
            &s,
            2_000,
            vec![
                Event::CompensationSucceeded {
                    step: "a".into(),
                    attempt: 1,
                    output: Value::Null,
                },
                Event::SagaCompensated {},
            ],
        )
        .unwrap();
        assert_eq!(done.status, SagaStatus::Compensated);
        assert_eq!(done.lease_owner, None);
        assert_eq!(entries.last().map(|e| e.seq), Some(10));
        let mut all = journal;
        all.extend(entries);
        assert_eq!(fold(&all).unwrap(), done);
    }
}
