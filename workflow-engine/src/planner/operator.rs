//! The operator commands' decisions (docs/architecture.md, "Operator commands"): CancelSaga,
//! RetrySaga and ResolveStep, each a pure function of the saga's state, run by the store inside
//! the transaction that holds the row.

use serde_json::Value;

use super::{REASON_CANCELED, advance, compensation_from, current_index, enter_compensation};
use crate::{
    definition::{FINALIZER, SagaDefinition},
    journal::{CompensationCause, Event, Resolution},
    state::{Cursor, SagaState, SagaStatus},
};

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
    operator: Option<&str>,
) -> Result<Vec<Event>, Refusal> {
    match state.cursor() {
        Cursor::EnteringCompensation | Cursor::Compensating(_) | Cursor::Finalizing => {
            return Ok(Vec::new());
        }
        Cursor::Finished(_) => return Err(Refusal::Finished),
        Cursor::Starting | Cursor::Forward(_) => {}
    }
    let index = current_index(def, state).map_err(|_| Refusal::PastPivot)?;
    if index >= def.point_of_no_return() {
        return Err(Refusal::PastPivot);
    }
    let uncertain = (state.attempt >= 1).then_some(index);
    let mut events = vec![Event::Canceled {
        fencing_token: new_token,
        operator: operator.map(str::to_owned),
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

/// The events of RetrySaga by `operator`: resume a NEEDS_ATTENTION saga where it parked.
///
/// # Errors
/// [`Refusal::NotNeedsAttention`].
pub(crate) fn retry_events(
    state: &SagaState,
    operator: Option<&str>,
) -> Result<Vec<Event>, Refusal> {
    if state.status() == SagaStatus::NeedsAttention {
        Ok(vec![Event::OperatorRetry {
            operator: operator.map(str::to_owned),
        }])
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
    if state.status() != SagaStatus::NeedsAttention {
        return Err(Refusal::NotNeedsAttention);
    }
    let resolved = |step: &str| Event::OperatorResolved {
        step: step.to_owned(),
        resolution,
        operator: operator.to_owned(),
        reason: reason.to_owned(),
    };
    match state.cursor() {
        Cursor::Starting | Cursor::Forward(_) => {
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
        Cursor::EnteringCompensation | Cursor::Compensating(_) => {
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
        Cursor::Finalizing => {
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
        Cursor::Finished(_) => Err(Refusal::NotNeedsAttention),
    }
}

/// The failure reason of a saga whose parked step an operator resolved as not applied.
pub const REASON_RESOLVED_NOT_APPLIED: &str = "RESOLVED_NOT_APPLIED";
