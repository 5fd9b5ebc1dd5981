//! Which events can happen in which state (docs/architecture.md, "The engine" (State row and
//! journal)): the guard [`super::apply`] runs before it folds an entry, so that no decision taken
//! on a stale or wrong state — an engine bug — reaches the journal. Illegal transitions are
//! refused with [`super::JournalError::Illegal`], naming the event, the state and the rule.

use super::Event;
use crate::state::{Cursor, SagaState, SagaStatus};

/// The rule an event breaks.
type Refused = &'static str;

fn require(holds: bool, rule: Refused) -> Result<(), Refused> {
    if holds { Ok(()) } else { Err(rule) }
}

/// Checks that `event` can follow state `s`; the error is the rule it breaks.
pub(super) fn check(s: &SagaState, event: &Event) -> Result<(), Refused> {
    let status = s.status();
    require(!status.is_finished(), "no event follows the end of a saga")?;
    let running = status == SagaStatus::Running;
    let compensating = status == SagaStatus::Compensating;
    match event {
        Event::SagaStarted { .. } => require(false, "a saga starts once"),
        // Lease changes and parking do not depend on the cursor.
        Event::LeaseAcquired { fencing_token, .. } => {
            require(
                status.is_active(),
                "only a RUNNING or COMPENSATING saga is leased",
            )?;
            require(
                *fencing_token > s.fencing_token,
                "a lease takes a newer fencing token",
            )
        }
        Event::Recovered { .. } => require(
            status.is_active(),
            "only a RUNNING or COMPENSATING saga is recovered",
        ),
        Event::LeaseReleased { owner } => require(
            s.lease_owner.as_deref() == Some(owner.as_str()),
            "only the lease holder releases the lease",
        ),
        Event::SagaNeedsAttention { .. } => require(
            status.is_active(),
            "only a RUNNING or COMPENSATING saga is parked",
        ),
        Event::OperatorRetry { .. } | Event::OperatorResolved { .. } => require(
            status == SagaStatus::NeedsAttention,
            "operators resume or resolve only a NEEDS_ATTENTION saga",
        ),
        Event::StepSkipped { index, .. } | Event::StepStarted { index, .. } => {
            require(
                running,
                "forward steps begin only while the saga is RUNNING",
            )?;
            let cursor = s.cursor();
            let after_current = match cursor {
                Cursor::Starting => true,
                Cursor::Forward(at) => s.outputs.contains_key(&at.name) && *index > at.index,
                _ => false,
            };
            require(
                after_current,
                "a later step begins only once the current one succeeded",
            )?;
            if let Event::StepStarted { attempt, .. } = event {
                require(*attempt == 1, "a step starts with attempt 1")?;
            }
            Ok(())
        }
        Event::StepSucceeded { step, attempt, .. } | Event::StepFailed { step, attempt, .. } => {
            require(
                running,
                "a forward step answers only while the saga is RUNNING",
            )?;
            let cursor = s.cursor();
            require(
                matches!(cursor, Cursor::Forward(at) if at.name == *step),
                "only the current forward step succeeds or fails",
            )?;
            require(
                !s.outputs.contains_key(step),
                "a step that succeeded answers no more",
            )?;
            require(*attempt == s.attempt, "only the current attempt answers")
        }
        Event::DeadlineExceeded { .. } => {
            require(
                running,
                "the deadline passes only while the saga is RUNNING",
            )?;
            require(
                matches!(s.cursor(), Cursor::Forward(_)),
                "the deadline passes only at a forward step",
            )
        }
        Event::Canceled { fencing_token, .. } => {
            require(
                running || status == SagaStatus::NeedsAttention,
                "only a saga not yet compensating is canceled",
            )?;
            require(
                matches!(s.cursor(), Cursor::Forward(_)),
                "only a saga at a forward step is canceled",
            )?;
            require(
                *fencing_token > s.fencing_token,
                "a cancel takes a newer fencing token",
            )
        }
        Event::SagaCompensating { .. } => {
            require(
                running || status == SagaStatus::NeedsAttention,
                "a saga starts compensating only from its forward steps",
            )?;
            require(
                matches!(s.cursor(), Cursor::Starting | Cursor::Forward(_)),
                "a saga starts compensating only from its forward steps",
            )
        }
        Event::CompensationStarted { step, attempt, .. } => {
            require(
                compensating,
                "compensations begin only while the saga is COMPENSATING",
            )?;
            let position = |name: &str| s.compensation_plan.iter().position(|p| p == name);
            let next = match (s.cursor(), position(step)) {
                (Cursor::EnteringCompensation, Some(_)) => true,
                (Cursor::Compensating(at), Some(p)) => position(&at.name).is_some_and(|c| p > c),
                _ => false,
            };
            require(
                next,
                "compensations begin in the order of the compensation plan",
            )?;
            require(*attempt == 1, "a compensation starts with attempt 1")
        }
        Event::CompensationSucceeded { step, attempt, .. }
        | Event::CompensationFailed { step, attempt, .. } => {
            require(
                compensating,
                "a compensation answers only while the saga is COMPENSATING",
            )?;
            require(
                matches!(s.cursor(), Cursor::Compensating(at) if at.name == *step),
                "only the current compensation succeeds or fails",
            )?;
            require(*attempt == s.attempt, "only the current attempt answers")
        }
        Event::FinalizerStarted { attempt } => {
            require(
                compensating,
                "the finalizer begins only while the saga is COMPENSATING",
            )?;
            require(
                matches!(
                    s.cursor(),
                    Cursor::EnteringCompensation | Cursor::Compensating(_)
                ),
                "the finalizer begins only after the compensations",
            )?;
            require(*attempt == 1, "the finalizer starts with attempt 1")
        }
        Event::FinalizerSucceeded { attempt, .. } | Event::FinalizerFailed { attempt, .. } => {
            require(
                compensating,
                "the finalizer answers only while the saga is COMPENSATING",
            )?;
            require(
                matches!(s.cursor(), Cursor::Finalizing),
                "only a current finalizer succeeds or fails",
            )?;
            require(*attempt == s.attempt, "only the current attempt answers")
        }
        Event::SagaCompleted {} => {
            require(running, "only a RUNNING saga completes")?;
            let done = match s.cursor() {
                Cursor::Starting => true,
                Cursor::Forward(at) => s.outputs.contains_key(&at.name),
                _ => false,
            };
            require(
                done,
                "a saga completes only once its current step succeeded",
            )
        }
        Event::SagaCompensated {} => {
            require(compensating, "only a COMPENSATING saga is compensated")?;
            require(
                !matches!(s.cursor(), Cursor::Starting | Cursor::Forward(_)),
                "only a compensating saga is compensated",
            )
        }
    }
}
