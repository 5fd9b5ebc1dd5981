//! Planning: what happens next to a saga, decided purely from its definition, its state row, the
//! time and a random number (the plan/execute split: decisions are pure, I/O is elsewhere). The
//! driver carries the plans out; everything here is deterministic and unit-tested.
//!
//! The same planning serves a saga that just started and one recovered after a crash: a state row
//! names the current step (forward phase), the step being compensated (compensating phase) or the
//! finalizer, and the driver (re-)executes it with the same idempotency key.
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
    definition::{CallKind, FINALIZER, RetryPolicy, SagaDefinition},
    journal::{CompensationCause, Event},
    state::{Cursor, SagaId, SagaState, StepAt},
};

mod after;
mod operator;
#[cfg(test)]
mod tests;

pub(crate) use after::{after_compensation, after_finalizer, after_forward};
pub use operator::{REASON_RESOLVED_NOT_APPLIED, Refusal};
pub(crate) use operator::{cancel_events, resolve_events, retry_events};

/// The failure reason of a saga whose step's outcome stayed unknown, or that passed its deadline.
pub const REASON_DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
/// The failure reason of a canceled saga.
pub const REASON_CANCELED: &str = "CANCELED";

/// What the driver does next with a saga it holds the lease of.
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

/// The definition's index of the step the cursor names; an error when the definition has no
/// such step there.
fn index_of(def: &SagaDefinition, state: &SagaState, at: &StepAt) -> Result<usize, PlanError> {
    let index = usize::try_from(at.index).map_err(|_| plan_error(def, state, "step index"))?;
    match def.steps().get(index) {
        Some(step) if step.name() == at.name => Ok(index),
        _ => Err(plan_error(
            def,
            state,
            format!(
                "current step {:?} at {index} is not in the definition",
                at.name
            ),
        )),
    }
}

/// The index of the current step (forward or compensated).
fn current_index(def: &SagaDefinition, state: &SagaState) -> Result<usize, PlanError> {
    match state.cursor().step() {
        Some(at) => index_of(def, state, at),
        None => Err(plan_error(def, state, "no current step")),
    }
}

/// Decides what to do with a leased saga at time `now`.
pub(crate) fn next(def: &SagaDefinition, state: &SagaState, now: i64) -> Result<Next, PlanError> {
    if !state.status().is_active() {
        return Ok(Next::Idle);
    }
    match state.cursor() {
        Cursor::Forward(at) => {
            let index = index_of(def, state, at)?;
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
        Cursor::Compensating(at) => {
            if now < state.next_attempt_at {
                return Ok(Next::WaitUntil(state.next_attempt_at));
            }
            Ok(Next::Compensate(index_of(def, state, at)?))
        }
        Cursor::Finalizing => {
            if now < state.next_attempt_at {
                return Ok(Next::WaitUntil(state.next_attempt_at));
            }
            Ok(Next::Finalize)
        }
        Cursor::Finished(_) => Ok(Next::Idle),
        // Only ever between the entries of one batch: a stored row is never here.
        Cursor::Starting | Cursor::EnteringCompensation => {
            Err(plan_error(def, state, "no current step"))
        }
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
pub fn claim_events(state: &SagaState, owner: &str, lease_expires_at: i64) -> Vec<Event> {
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

/// The decision a store applies to each saga it claims for `owner` (its
/// [`crate::store::ClaimPlan`]): [`claim_events`] with a lease until `lease_expires_at` (unix
/// ms).
pub fn claim_plan(
    owner: &str,
    lease_expires_at: i64,
) -> impl Fn(&SagaState) -> Vec<Event> + Send + Sync + '_ {
    move |state| claim_events(state, owner, lease_expires_at)
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
