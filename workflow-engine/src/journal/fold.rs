//! The fold: how one journal entry changes the state row ([`apply`]), and the helpers that
//! number and fold a batch of new events ([`append`], [`begin`]) or a whole journal ([`fold`]).

use serde_json::Map;

use super::{Event, JournalEntry, JournalError, transition};
use crate::state::{Cursor, Outcome, Phase, Position, SagaId, SagaState, SagaStatus, StepAt};

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
                position: Position::at(Cursor::Starting),
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
    transition::check(&s, &entry.event).map_err(|rule| JournalError::Illegal {
        saga_id: entry.saga_id,
        seq: entry.seq,
        event: entry.event.event_type(),
        status: s.status(),
        cursor: s.cursor().to_string(),
        rule,
    })?;
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
            if s.status() == SagaStatus::Running && s.phase() == Phase::Forward && s.attempt >= 1 {
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
            s.set_cursor(Cursor::Forward(StepAt {
                index: *index,
                name: step.clone(),
            }));
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
        Event::Canceled { fencing_token, .. } => {
            s.fencing_token = *fencing_token;
            release(&mut s);
        }
        Event::SagaCompensating { reason, plan, .. } => {
            s.set_cursor(Cursor::EnteringCompensation);
            s.failure_reason = Some(reason.clone());
            s.compensation_plan = plan.clone();
            s.attempt = 0;
            s.in_doubt = false;
            s.undelivered = 0;
        }
        Event::CompensationStarted {
            step,
            index,
            attempt,
        } => {
            s.set_cursor(Cursor::Compensating(StepAt {
                index: *index,
                name: step.clone(),
            }));
            s.attempt = *attempt;
        }
        Event::CompensationSucceeded { .. } | Event::FinalizerSucceeded { .. } => {}
        Event::FinalizerStarted { attempt } => {
            s.set_cursor(Cursor::Finalizing);
            s.attempt = *attempt;
        }
        Event::OperatorRetry { .. } => {
            s.position.resume();
            s.attempt = 1;
            s.undelivered = 0;
            s.generation = s.generation.saturating_add(1);
        }
        Event::OperatorResolved { .. } => s.position.resume(),
        Event::SagaCompleted {} => finish(&mut s, Outcome::Completed),
        Event::SagaCompensated {} => finish(&mut s, Outcome::Compensated),
        Event::SagaNeedsAttention { .. } => {
            s.position.park();
            release(&mut s);
        }
    }
    Ok(s)
}

fn release(s: &mut SagaState) {
    s.lease_owner = None;
    s.lease_expires_at = None;
}

fn finish(s: &mut SagaState, outcome: Outcome) {
    s.set_cursor(Cursor::Finished(outcome));
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
