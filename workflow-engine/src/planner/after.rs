//! What happens after an attempt answered: the events that record a forward step's, a
//! compensation's or the failure finalizer's result and move the saga on.

use serde_json::Value;

use super::{
    CODE_OUTPUT_NOT_STORABLE, PlanError, REASON_DEADLINE_EXCEEDED, advance, check_output,
    compensation_from, enter_compensation, plan_error, retry_at, storable,
};
use crate::{
    definition::{SagaDefinition, StepError, StepKind},
    journal::{CompensationCause, Event, FailureOutcome},
    state::SagaState,
};

/// The events after an attempt of forward step `index` returned `result` at `now`; `unit` is a
/// uniform random number in `0..=1` for the jitter.
pub(crate) fn after_forward(
    def: &SagaDefinition,
    state: &SagaState,
    index: usize,
    result: Result<Value, StepError>,
    now: i64,
    unit: f64,
) -> Result<Vec<Event>, PlanError> {
    let step = def
        .steps()
        .get(index)
        .ok_or_else(|| plan_error(def, state, format!("no step {index}")))?;
    let name = step.name().to_owned();
    let attempt = state.attempt;
    let error = match result {
        Ok(output) => match check_output(&output) {
            Ok(()) => {
                let mut events = vec![Event::StepSucceeded {
                    step: name,
                    attempt,
                    output,
                }];
                events.extend(advance(def, &state.input, index + 1));
                return Ok(events);
            }
            // The step's effect happened but its output cannot be stored: a definition bug.
            // Not retryable, and in doubt (it applied), so the step is compensated or parked.
            Err(message) => StepError {
                code: CODE_OUTPUT_NOT_STORABLE.to_owned(),
                message,
                reason: Some(CODE_OUTPUT_NOT_STORABLE.to_owned()),
                retryable: false,
                not_delivered: false,
            },
        },
        Err(error) => error,
    };
    let policy = step.retry_policy();
    let retry_forever = step.kind() == StepKind::Retriable;
    // A call that provably never reached the service (a refused connection: the service is
    // down or restarting) does not use up the step's attempts while the saga's deadline has
    // not passed: the deadline is the business's one knob for how long an order may wait
    // (docs/architecture.md, "Retries").
    let awaiting_delivery =
        error.retryable && error.not_delivered && state.deadline_at.is_some_and(|d| now < d);
    // Attempts that never reached the service do not count against the step's attempts.
    let counted = attempt.saturating_sub(state.undelivered);
    if error.retryable && (retry_forever || counted < policy.max_attempts || awaiting_delivery) {
        let (at, cap) = retry_at(policy, attempt, now, unit);
        return Ok(vec![Event::StepFailed {
            step: name,
            attempt,
            error,
            outcome: FailureOutcome::Retry,
            next_attempt_at: Some(at),
            backoff_cap_ms: Some(cap),
        }]);
    }
    // Attempts in doubt (docs/architecture.md): once any attempt of this step may have had its
    // effect, the step stays uncertain whatever this last attempt says.
    let output_lost = error.code == CODE_OUTPUT_NOT_STORABLE;
    let doubted = state.in_doubt || error.in_doubt() || output_lost;
    let outcome = if !error.retryable && !doubted {
        FailureOutcome::Business
    } else if error.retryable && !doubted {
        // Every attempt provably never reached the service: nothing happened.
        FailureOutcome::NotApplied
    } else {
        FailureOutcome::Unknown
    };
    let reason = if error.retryable {
        REASON_DEADLINE_EXCEEDED.to_owned()
    } else {
        error.failure_reason()
    };
    // The handler's own answer under the step's idempotency key: the idempotency store answers
    // every attempt under one key with the one execution's result, so it is decisive for the
    // pivot even after an attempt in doubt. A bare code (a proxy, an auth layer, an injected
    // fault) or a key-reuse answer is not.
    let decisive = !error.retryable
        && !error.not_delivered
        && error.reason.is_some()
        && !error.is_key_reuse()
        && !output_lost;
    let summary = error.to_string();
    let mut events = vec![Event::StepFailed {
        step: name.clone(),
        attempt,
        error,
        outcome,
        next_attempt_at: None,
        backoff_cap_ms: None,
    }];
    match (step.kind(), outcome) {
        (StepKind::Compensatable, FailureOutcome::Business | FailureOutcome::NotApplied) => {
            events.extend(enter_compensation(
                def,
                state,
                CompensationCause::BusinessFailure,
                &reason,
                None,
            ));
        }
        (StepKind::Compensatable, FailureOutcome::Unknown | FailureOutcome::Retry) => {
            events.extend(enter_compensation(
                def,
                state,
                CompensationCause::UnknownOutcome,
                &reason,
                Some(index),
            ));
        }
        (StepKind::Pivot, FailureOutcome::Business | FailureOutcome::NotApplied) => {
            events.extend(enter_compensation(
                def,
                state,
                CompensationCause::BusinessFailure,
                &reason,
                None,
            ));
        }
        (StepKind::Pivot, _) if decisive => {
            events.extend(enter_compensation(
                def,
                state,
                CompensationCause::BusinessFailure,
                &reason,
                None,
            ));
        }
        (StepKind::Pivot, _) => events.push(Event::SagaNeedsAttention {
            reason: format!(
                "the outcome of pivot step {name:?} is unknown: an attempt was in doubt and \
                 attempt {attempt} ended with {summary}"
            ),
        }),
        (StepKind::Retriable, _) => events.push(Event::SagaNeedsAttention {
            reason: format!("step {name:?} after the pivot failed for good: {summary}"),
        }),
    }
    Ok(events)
}

/// The events after an attempt of the compensation of step `index` returned `result`.
pub(crate) fn after_compensation(
    def: &SagaDefinition,
    state: &SagaState,
    index: usize,
    result: Result<Value, StepError>,
    now: i64,
    unit: f64,
) -> Result<Vec<Event>, PlanError> {
    let step = def
        .steps()
        .get(index)
        .ok_or_else(|| plan_error(def, state, format!("no step {index}")))?;
    let name = step.name().to_owned();
    let attempt = state.attempt;
    match result {
        Ok(output) => {
            let position = state
                .compensation_plan
                .iter()
                .position(|s| *s == name)
                .ok_or_else(|| plan_error(def, state, format!("{name} is not in the plan")))?;
            let mut events = vec![Event::CompensationSucceeded {
                step: name,
                attempt,
                output: storable(output),
            }];
            events.extend(compensation_from(
                def,
                &state.compensation_plan,
                position + 1,
            ));
            Ok(events)
        }
        Err(error) if error.retryable => {
            let (at, cap) = retry_at(step.retry_policy(), attempt, now, unit);
            Ok(vec![Event::CompensationFailed {
                step: name,
                attempt,
                error,
                next_attempt_at: Some(at),
                backoff_cap_ms: Some(cap),
            }])
        }
        Err(error) => {
            let reason = format!("compensation of step {name:?} failed for good: {error}");
            Ok(vec![
                Event::CompensationFailed {
                    step: name,
                    attempt,
                    error,
                    next_attempt_at: None,
                    backoff_cap_ms: None,
                },
                Event::SagaNeedsAttention { reason },
            ])
        }
    }
}

/// The events after an attempt of the failure finalizer returned `result`.
pub(crate) fn after_finalizer(
    def: &SagaDefinition,
    state: &SagaState,
    result: Result<Value, StepError>,
    now: i64,
    unit: f64,
) -> Vec<Event> {
    let attempt = state.attempt;
    match result {
        Ok(output) => vec![
            Event::FinalizerSucceeded {
                attempt,
                output: storable(output),
            },
            Event::SagaCompensated {},
        ],
        Err(error) if error.retryable => {
            let (at, cap) = retry_at(def.finalizer_retry(), attempt, now, unit);
            vec![Event::FinalizerFailed {
                attempt,
                error,
                next_attempt_at: Some(at),
                backoff_cap_ms: Some(cap),
            }]
        }
        Err(error) => {
            let reason = format!("the failure finalizer failed for good: {error}");
            vec![
                Event::FinalizerFailed {
                    attempt,
                    error,
                    next_attempt_at: None,
                    backoff_cap_ms: None,
                },
                Event::SagaNeedsAttention { reason },
            ]
        }
    }
}
