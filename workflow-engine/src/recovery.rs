//! Planning: what happens next to a saga, decided purely from its definition, its state row, the
//! time and a random number (the plan/execute split: decisions are pure, I/O is elsewhere). The
//! executor carries the plans out; everything here is deterministic and unit-tested.
//!
//! The same planning serves a saga that just started and one recovered after a crash: a state row
//! names the current step (forward phase), the step being compensated (compensating phase) or the
//! finalizer, and the executor (re-)executes it with the same idempotency key.
//!
//! ```text
//!   Forward(i) ──ok──▶ Forward(next non-skipped) … ──▶ COMPLETED
//!       │ business (before pivot / pivot) or unknown outcome (before pivot), deadline, cancel
//!       ▼
//!   Compensate(plan[0]) ──ok──▶ Compensate(plan[1]) … ──▶ Finalize ──ok──▶ COMPENSATED
//!   (transient: retry with capped backoff forever; business: NEEDS_ATTENTION)
//!   pivot unknown outcome, business failure after the pivot ──▶ NEEDS_ATTENTION
//! ```

use serde_json::Value;

use crate::{
    definition::{CallKind, FINALIZER, RetryPolicy, SagaDefinition, StepError, StepKind},
    journal::{CompensationCause, Event, FailureOutcome, Resolution},
    state::{Phase, SagaId, SagaState, SagaStatus},
};

/// The failure reason of a saga whose step's outcome stayed unknown, or that passed its deadline.
pub const REASON_DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
/// The failure reason of a canceled saga.
pub const REASON_CANCELED: &str = "CANCELED";

/// What the executor does next with a saga it holds the lease of.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Execute the action of step `index`.
    Forward(usize),
    /// Execute the compensation of step `index`.
    Compensate(usize),
    /// Execute the failure finalizer.
    Finalize,
    /// Journal these events (without calling anything) and plan again.
    Record(Vec<Event>),
    /// Nothing is due before this unix ms.
    WaitUntil(i64),
    /// Finished or parked: release nothing, do nothing.
    Idle,
}

/// A state row that the definition cannot explain (an engine bug or a changed definition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga {saga_id} is inconsistent with definition {definition} v{version}: {reason}")]
pub struct PlanError {
    saga_id: SagaId,
    definition: String,
    version: u32,
    reason: String,
}

fn plan_error(def: &SagaDefinition, state: &SagaState, reason: impl Into<String>) -> PlanError {
    PlanError {
        saga_id: state.id,
        definition: def.name().to_owned(),
        version: def.version(),
        reason: reason.into(),
    }
}

/// The idempotency key of a call (docs/architecture.md, "Service contract"):
/// `<saga id>:<step>`, `<saga id>:<step>:compensate` or `<saga id>:finalize`, and after the
/// n-th operator retry (`generation` n ≥ 1) the suffix `:retry-<n>`, so that a rejection a
/// service stored under the old key is not replayed after the operator repaired its cause.
/// Step names contain no `:`, so the forms never collide.
pub fn idempotency_key(saga_id: SagaId, step: &str, kind: CallKind, generation: u32) -> String {
    let base = match kind {
        CallKind::Action => format!("{saga_id}:{step}"),
        CallKind::Compensation => format!("{saga_id}:{step}:compensate"),
        CallKind::Finalizer => format!("{saga_id}:{FINALIZER}"),
    };
    if generation == 0 {
        base
    } else {
        format!("{base}:retry-{generation}")
    }
}

/// Most bytes of a step output the engine stores (as JSON text).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Deepest nesting of a step output the engine stores (serde_json reads at most 128 levels).
pub const MAX_OUTPUT_DEPTH: usize = 32;

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks that a step's output can be stored and read back: at most [`MAX_OUTPUT_BYTES`] of
/// JSON and [`MAX_OUTPUT_DEPTH`] levels of nesting.
///
/// # Errors
/// What is wrong, for the journal.
pub fn check_output(output: &Value) -> Result<(), String> {
    let levels = depth(output);
    if levels > MAX_OUTPUT_DEPTH {
        return Err(format!(
            "the step output is nested {levels} levels deep; at most {MAX_OUTPUT_DEPTH} are stored"
        ));
    }
    let bytes = serde_json::to_string(output).map_or(usize::MAX, |text| text.len());
    if bytes > MAX_OUTPUT_BYTES {
        return Err(format!(
            "the step output has {bytes} bytes of JSON; at most {MAX_OUTPUT_BYTES} are stored"
        ));
    }
    Ok(())
}

/// A compensation's or finalizer's output as stored: itself, or a note in its place when it
/// cannot be stored ([`check_output`]); nothing reads those outputs back.
fn storable(output: Value) -> Value {
    match check_output(&output) {
        Ok(()) => output,
        Err(message) => serde_json::json!({ "output_not_stored": message }),
    }
}

/// The code of the error journaled for an output that cannot be stored.
pub const CODE_OUTPUT_NOT_STORABLE: &str = "OUTPUT_NOT_STORABLE";

fn index_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

fn current_index(def: &SagaDefinition, state: &SagaState) -> Result<usize, PlanError> {
    let index = state
        .step_index
        .ok_or_else(|| plan_error(def, state, "no current step"))?;
    let index = usize::try_from(index).map_err(|_| plan_error(def, state, "step index"))?;
    match def.steps().get(index) {
        Some(step) if state.current_step.as_deref() == Some(step.name()) => Ok(index),
        _ => Err(plan_error(
            def,
            state,
            format!(
                "current step {:?} at {index} is not in the definition",
                state.current_step
            ),
        )),
    }
}

/// Decides what to do with a leased saga at time `now`.
pub(crate) fn next(def: &SagaDefinition, state: &SagaState, now: i64) -> Result<Next, PlanError> {
    if !state.status.is_active() {
        return Ok(Next::Idle);
    }
    match state.phase {
        Phase::Forward => {
            let index = current_index(def, state)?;
            let before_pivot = index < def.point_of_no_return();
            if let (Some(deadline), true) = (state.deadline_at, before_pivot) {
                if now >= deadline {
                    let mut events = vec![Event::DeadlineExceeded {
                        deadline_at: deadline,
                    }];
                    events.extend(enter_compensation(
                        def,
                        state,
                        CompensationCause::Deadline,
                        REASON_DEADLINE_EXCEEDED,
                        Some(index),
                    ));
                    return Ok(Next::Record(events));
                }
                if now < state.next_attempt_at {
                    return Ok(Next::WaitUntil(state.next_attempt_at.min(deadline)));
                }
            }
            if now < state.next_attempt_at {
                return Ok(Next::WaitUntil(state.next_attempt_at));
            }
            Ok(Next::Forward(index))
        }
        Phase::Compensating => {
            if now < state.next_attempt_at {
                return Ok(Next::WaitUntil(state.next_attempt_at));
            }
            Ok(Next::Compensate(current_index(def, state)?))
        }
        Phase::Finalizing => {
            if now < state.next_attempt_at {
                return Ok(Next::WaitUntil(state.next_attempt_at));
            }
            Ok(Next::Finalize)
        }
        Phase::Finished => Ok(Next::Idle),
    }
}

/// Events that move past step `from - 1`: skips, then the next step's start, or completion.
pub(crate) fn advance(def: &SagaDefinition, input: &Value, from: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for (index, step) in def.steps().iter().enumerate().skip(from) {
        if step.skipped_for(input) {
            events.push(Event::StepSkipped {
                step: step.name().to_owned(),
                index: index_u32(index),
            });
        } else {
            events.push(Event::StepStarted {
                step: step.name().to_owned(),
                index: index_u32(index),
                attempt: 1,
            });
            return events;
        }
    }
    events.push(Event::SagaCompleted {});
    events
}

/// The events that create a saga: started, leased by `owner`, first step started.
pub(crate) fn start_events(
    def: &SagaDefinition,
    business_key: &str,
    input: &Value,
    trace_context: Option<String>,
    deadline_at: Option<i64>,
    owner: &str,
    lease_expires_at: i64,
) -> Vec<Event> {
    let mut events = vec![
        Event::SagaStarted {
            definition_name: def.name().to_owned(),
            definition_version: def.version(),
            business_key: business_key.to_owned(),
            input: input.clone(),
            deadline_at,
            trace_context,
        },
        Event::LeaseAcquired {
            owner: owner.to_owned(),
            fencing_token: 1,
            lease_expires_at,
        },
    ];
    events.extend(advance(def, input, 0));
    events
}

/// The events of a claim by `owner`: a new fencing token, and `recovered` when another holder's
/// lease had expired.
pub(crate) fn claim_events(state: &SagaState, owner: &str, lease_expires_at: i64) -> Vec<Event> {
    let mut events = vec![Event::LeaseAcquired {
        owner: owner.to_owned(),
        fencing_token: state.fencing_token + 1,
        lease_expires_at,
    }];
    if let Some(previous_owner) = &state.lease_owner {
        events.push(Event::Recovered {
            previous_owner: previous_owner.clone(),
            previous_fencing_token: state.fencing_token,
        });
    }
    events
}

/// Starts compensating: the plan is every compensatable step that succeeded (or whose outcome is
/// unknown: `uncertain`) and has a compensation, in reverse order.
pub(crate) fn enter_compensation(
    def: &SagaDefinition,
    state: &SagaState,
    cause: CompensationCause,
    reason: &str,
    uncertain: Option<usize>,
) -> Vec<Event> {
    let plan: Vec<String> = def
        .steps()
        .iter()
        .enumerate()
        .rev()
        .filter(|(index, step)| {
            step.compensation_action().is_some()
                && (state.outputs.contains_key(step.name()) || uncertain == Some(*index))
        })
        .map(|(_, step)| step.name().to_owned())
        .collect();
    let mut events = vec![Event::SagaCompensating {
        cause,
        reason: reason.to_owned(),
        plan: plan.clone(),
    }];
    events.extend(compensation_from(def, &plan, 0));
    events
}

/// Starts compensation `plan[position]`, or the finalizer, or finishes.
fn compensation_from(def: &SagaDefinition, plan: &[String], position: usize) -> Vec<Event> {
    for name in plan.iter().skip(position) {
        if let Some((index, _)) = def.step(name) {
            return vec![Event::CompensationStarted {
                step: name.clone(),
                index: index_u32(index),
                attempt: 1,
            }];
        }
    }
    if def.finalizer().is_some() {
        vec![Event::FinalizerStarted { attempt: 1 }]
    } else {
        vec![Event::SagaCompensated {}]
    }
}

fn retry_at(policy: RetryPolicy, attempt: u32, now: i64, unit: f64) -> (i64, u64) {
    let delay = policy.delay_ms(attempt, unit);
    let at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    (at, policy.cap_ms(attempt))
}

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

/// Why an operator's command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// RetrySaga of a saga that is not NEEDS_ATTENTION.
    #[error("the saga is not in NEEDS_ATTENTION")]
    NotNeedsAttention,
    /// CancelSaga of a saga at or past its pivot.
    #[error("the saga is at or past its pivot and can no longer be canceled")]
    PastPivot,
    /// CancelSaga of a COMPLETED or COMPENSATED saga.
    #[error("the saga has finished")]
    Finished,
    /// ResolveStep with `not_applied` where only `applied` makes sense (a compensation, the
    /// finalizer, or a step after the pivot).
    #[error(
        "only RESOLUTION_APPLIED can settle a parked compensation, finalizer or step after the pivot"
    )]
    NotApplicable,
}

/// The events of CancelSaga (docs/architecture.md, "Operator commands"): before the pivot, revoke
/// the lease with fencing token `new_token` and compensate with reason CANCELED, including the
/// current step (it may have been sent). A saga already compensating is left as it is (no events).
///
/// # Errors
/// [`Refusal::Finished`] or [`Refusal::PastPivot`].
pub(crate) fn cancel_events(
    def: &SagaDefinition,
    state: &SagaState,
    new_token: i64,
) -> Result<Vec<Event>, Refusal> {
    if state.status.is_finished() {
        return Err(Refusal::Finished);
    }
    match state.phase {
        Phase::Compensating | Phase::Finalizing => return Ok(Vec::new()),
        Phase::Finished => return Err(Refusal::Finished),
        Phase::Forward => {}
    }
    let index = current_index(def, state).map_err(|_| Refusal::PastPivot)?;
    if index >= def.point_of_no_return() {
        return Err(Refusal::PastPivot);
    }
    let uncertain = (state.attempt >= 1).then_some(index);
    let mut events = vec![Event::Canceled {
        fencing_token: new_token,
    }];
    events.extend(enter_compensation(
        def,
        state,
        CompensationCause::Canceled,
        REASON_CANCELED,
        uncertain,
    ));
    Ok(events)
}

/// The events of RetrySaga: resume a NEEDS_ATTENTION saga where it parked.
///
/// # Errors
/// [`Refusal::NotNeedsAttention`].
pub(crate) fn retry_events(state: &SagaState) -> Result<Vec<Event>, Refusal> {
    if state.status == SagaStatus::NeedsAttention {
        Ok(vec![Event::OperatorRetry {}])
    } else {
        Err(Refusal::NotNeedsAttention)
    }
}

/// The events of ResolveStep: an operator settles the parked call of a NEEDS_ATTENTION saga
/// by hand (docs/architecture.md, "Operator commands"), and the saga moves on as if the call
/// had answered so: `Applied` counts a forward step as succeeded (output `null`), a
/// compensation or the finalizer as done; `NotApplied` makes a parked step at or before the
/// pivot a failure, and the saga compensates the steps that completed (reason
/// `RESOLVED_NOT_APPLIED`).
///
/// # Errors
/// [`Refusal::NotNeedsAttention`]; [`Refusal::NotApplicable`] for `NotApplied` past the pivot or
/// outside the forward phase.
pub(crate) fn resolve_events(
    def: &SagaDefinition,
    state: &SagaState,
    resolution: Resolution,
    operator: &str,
    reason: &str,
) -> Result<Vec<Event>, Refusal> {
    if state.status != SagaStatus::NeedsAttention {
        return Err(Refusal::NotNeedsAttention);
    }
    let resolved = |step: &str| Event::OperatorResolved {
        step: step.to_owned(),
        resolution,
        operator: operator.to_owned(),
        reason: reason.to_owned(),
    };
    match state.phase {
        Phase::Forward => {
            let index = current_index(def, state).map_err(|_| Refusal::NotApplicable)?;
            let name = def.steps()[index].name();
            let mut events = vec![resolved(name)];
            match resolution {
                Resolution::Applied => {
                    events.push(Event::StepSucceeded {
                        step: name.to_owned(),
                        attempt: state.attempt,
                        output: Value::Null,
                    });
                    events.extend(advance(def, &state.input, index + 1));
                }
                Resolution::NotApplied => {
                    if index > def.point_of_no_return() {
                        return Err(Refusal::NotApplicable);
                    }
                    events.extend(enter_compensation(
                        def,
                        state,
                        CompensationCause::BusinessFailure,
                        REASON_RESOLVED_NOT_APPLIED,
                        None,
                    ));
                }
            }
            Ok(events)
        }
        Phase::Compensating => {
            if resolution != Resolution::Applied {
                return Err(Refusal::NotApplicable);
            }
            let index = current_index(def, state).map_err(|_| Refusal::NotApplicable)?;
            let name = def.steps()[index].name();
            let position = state
                .compensation_plan
                .iter()
                .position(|s| s == name)
                .ok_or(Refusal::NotApplicable)?;
            let mut events = vec![
                resolved(name),
                Event::CompensationSucceeded {
                    step: name.to_owned(),
                    attempt: state.attempt,
                    output: Value::Null,
                },
            ];
            events.extend(compensation_from(
                def,
                &state.compensation_plan,
                position + 1,
            ));
            Ok(events)
        }
        Phase::Finalizing => {
            if resolution != Resolution::Applied {
                return Err(Refusal::NotApplicable);
            }
            Ok(vec![
                resolved(FINALIZER),
                Event::FinalizerSucceeded {
                    attempt: state.attempt,
                    output: Value::Null,
                },
                Event::SagaCompensated {},
            ])
        }
        Phase::Finished => Err(Refusal::NotNeedsAttention),
    }
}

/// The failure reason of a saga whose parked step an operator resolved as not applied.
pub const REASON_RESOLVED_NOT_APPLIED: &str = "RESOLVED_NOT_APPLIED";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        definition::{Step, StepContext},
        journal::append,
    };

    async fn ok(_ctx: StepContext) -> Result<Value, StepError> {
        Ok(Value::Null)
    }

    fn def() -> SagaDefinition {
        SagaDefinition::builder("d", 1)
            .step(Step::compensatable("a", ok).compensation(ok))
            .step(Step::compensatable("b", ok).skip_if(|input| input["skip_b"] == json!(true)))
            .step(Step::compensatable("c", ok).compensation(ok))
            .step(Step::pivot("p", ok).retry(RetryPolicy::new(2, 10, 100)))
            .step(Step::retriable("r", ok))
            .failure_finalizer(ok)
            .build()
            .unwrap()
    }

    fn started(def: &SagaDefinition, input: Value) -> SagaState {
        let events = start_events(def, "k", &input, None, Some(10_000), "e1", 500);
        crate::journal::begin(SagaId::new(), 100, events).unwrap().0
    }

    fn run(_def: &SagaDefinition, state: &SagaState, events: Vec<Event>) -> SagaState {
        append(state, 200, events).unwrap().0
    }

    #[test]
    fn happy_path_skips_and_completes() {
        let d = def();
        let mut s = started(&d, json!({"skip_b": true}));
        assert_eq!(next(&d, &s, 100).unwrap(), Next::Forward(0));
        let events = after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap();
        assert!(matches!(events[1], Event::StepSkipped { ref step, .. } if step == "b"));
        s = run(&d, &s, events);
        assert_eq!(next(&d, &s, 200).unwrap(), Next::Forward(2));
        for index in [2, 3, 4] {
            s = run(
                &d,
                &s,
                after_forward(&d, &s, index, Ok(json!(index)), 200, 0.5).unwrap(),
            );
        }
        assert_eq!(s.status, SagaStatus::Completed);
        assert_eq!(next(&d, &s, 300).unwrap(), Next::Idle);
    }

    #[test]
    fn unknown_outcome_compensates_the_uncertain_step_too() {
        let d = def();
        let mut s = started(&d, json!({}));
        s = run(
            &d,
            &s,
            after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
        );
        s = run(
            &d,
            &s,
            after_forward(&d, &s, 1, Ok(json!(1)), 150, 0.5).unwrap(),
        );
        // Step c fails transiently on every one of its 5 attempts.
        for attempt in 1..=5 {
            assert_eq!(s.attempt, attempt);
            let events =
                after_forward(&d, &s, 2, Err(StepError::transient("down")), 150, 1.0).unwrap();
            s = run(&d, &s, events);
        }
        assert_eq!(s.status, SagaStatus::Compensating);
        assert_eq!(s.compensation_plan, vec!["c", "a"]);
        assert_eq!(s.failure_reason.as_deref(), Some(REASON_DEADLINE_EXCEEDED));
        assert_eq!(next(&d, &s, 10_000_000).unwrap(), Next::Compensate(2));
    }

    #[test]
    fn undelivered_calls_wait_until_the_deadline_then_fail_without_compensation() {
        let d = def();
        // Deadline at 10_000 (see `started`).
        let mut s = started(&d, json!({}));
        s = run(
            &d,
            &s,
            after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
        );
        // b is refused at the door 20 times, far past its 5 attempts: still retried.
        for _ in 0..20 {
            let events = after_forward(
                &d,
                &s,
                1,
                Err(StepError::not_delivered("connection refused")),
                5_000,
                0.5,
            )
            .unwrap();
            assert!(matches!(
                events[0],
                Event::StepFailed {
                    outcome: FailureOutcome::Retry,
                    ..
                }
            ));
            s = run(&d, &s, events);
        }
        assert!(!s.in_doubt, "a refused connection is not in doubt");
        assert_eq!(s.undelivered, 20, "none of them counted");
        // Past the deadline the saga is compensated before b is tried again; b never happened.
        let Next::Record(events) = next(&d, &s, 10_001).unwrap() else {
            panic!("the deadline is recorded");
        };
        s = run(&d, &s, events);
        assert_eq!(s.status, SagaStatus::Compensating);
        assert_eq!(s.compensation_plan, vec!["a"]);
        assert_eq!(s.failure_reason.as_deref(), Some(REASON_DEADLINE_EXCEEDED));
    }

    #[test]
    fn pivot_business_failure_compensates_but_not_the_pivot() {
        let d = def();
        let mut s = started(&d, json!({}));
        for index in 0..3 {
            s = run(
                &d,
                &s,
                after_forward(&d, &s, index, Ok(json!(1)), 150, 0.5).unwrap(),
            );
        }
        let err = StepError::business("PAYMENT_DECLINED", "no");
        s = run(
            &d,
            &s,
            after_forward(&d, &s, 3, Err(err), 150, 0.5).unwrap(),
        );
        assert_eq!(s.compensation_plan, vec!["c", "a"]);
        assert_eq!(s.failure_reason.as_deref(), Some("PAYMENT_DECLINED"));
    }

    #[test]
    fn pivot_unknown_outcome_parks_and_cancel_is_refused() {
        let d = def();
        let mut s = started(&d, json!({}));
        for index in 0..3 {
            s = run(
                &d,
                &s,
                after_forward(&d, &s, index, Ok(json!(1)), 150, 0.5).unwrap(),
            );
        }
        assert_eq!(cancel_events(&d, &s, 9), Err(Refusal::PastPivot));
        for _ in 0..2 {
            let events =
                after_forward(&d, &s, 3, Err(StepError::transient("slow")), 150, 0.5).unwrap();
            s = run(&d, &s, events);
        }
        assert_eq!(s.status, SagaStatus::NeedsAttention);
        assert_eq!(s.phase, Phase::Forward);
        s = run(&d, &s, retry_events(&s).unwrap());
        assert_eq!(s.status, SagaStatus::Running);
        assert_eq!(s.attempt, 1);
        assert_eq!(retry_events(&s), Err(Refusal::NotNeedsAttention));
    }

    #[test]
    fn deadline_before_the_pivot_compensates_with_the_current_step() {
        let d = def();
        let mut s = started(&d, json!({}));
        s = run(
            &d,
            &s,
            after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
        );
        let Next::Record(events) = next(&d, &s, 10_000).unwrap() else {
            panic!("expected the deadline to be recorded");
        };
        s = run(&d, &s, events);
        assert_eq!(s.failure_reason.as_deref(), Some(REASON_DEADLINE_EXCEEDED));
        // b has no compensation, so only a is compensated.
        assert_eq!(s.compensation_plan, vec!["a"]);
        s = run(
            &d,
            &s,
            after_compensation(&d, &s, 0, Ok(Value::Null), 150, 0.5).unwrap(),
        );
        assert_eq!(s.phase, Phase::Finalizing);
        s = run(&d, &s, after_finalizer(&d, &s, Ok(Value::Null), 150, 0.5));
        assert_eq!(s.status, SagaStatus::Compensated);
        assert_eq!(cancel_events(&d, &s, 9), Err(Refusal::Finished));
    }

    #[test]
    fn transient_compensation_failures_retry_with_capped_backoff() {
        let d = def();
        let mut s = started(&d, json!({}));
        s = run(
            &d,
            &s,
            after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
        );
        s = run(&d, &s, cancel_events(&d, &s, 7).unwrap());
        assert_eq!(s.fencing_token, 7);
        assert_eq!(s.lease_owner, None);
        assert_eq!(s.compensation_plan, vec!["a"]);
        for attempt in 1..=20 {
            let events =
                after_compensation(&d, &s, 0, Err(StepError::transient("x")), 1_000, 1.0).unwrap();
            let Event::CompensationFailed {
                next_attempt_at: Some(at),
                ..
            } = events[0]
            else {
                panic!("expected a retry");
            };
            assert!(at - 1_000 <= 10_000, "capped at max_delay_ms");
            s = run(&d, &s, events);
            assert_eq!(s.attempt, attempt + 1);
        }
        let events =
            after_compensation(&d, &s, 0, Err(StepError::business("NO", "no")), 1_000, 1.0)
                .unwrap();
        s = run(&d, &s, events);
        assert_eq!(s.status, SagaStatus::NeedsAttention);
        assert_eq!(s.phase, Phase::Compensating);
    }

    #[test]
    fn idempotency_keys_follow_design_section_6() {
        let id: SagaId = "01890000-0000-7000-8000-000000000000".parse().unwrap();
        assert_eq!(
            idempotency_key(id, "pay", CallKind::Action, 0),
            "01890000-0000-7000-8000-000000000000:pay"
        );
        assert_eq!(
            idempotency_key(id, "pay", CallKind::Compensation, 2),
            "01890000-0000-7000-8000-000000000000:pay:compensate:retry-2"
        );
        assert_eq!(
            idempotency_key(id, "pay", CallKind::Compensation, 0),
            "01890000-0000-7000-8000-000000000000:pay:compensate"
        );
        assert_eq!(
            idempotency_key(id, "pay", CallKind::Finalizer, 0),
            "01890000-0000-7000-8000-000000000000:finalize"
        );
    }
}
