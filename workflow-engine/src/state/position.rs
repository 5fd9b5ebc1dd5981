//! Where a saga is: the [`Cursor`] in its definition and the [`Position`] the state row holds
//! (the cursor, parked or not), in which only the valid combinations of status, phase, step
//! index and current step can be written down (docs/architecture.md, "The engine" (State row and
//! journal)).

use std::fmt;

use super::{Phase, SagaId, SagaStatus};

/// A step being executed or compensated: its index in the definition and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepAt {
    /// Index in the definition.
    pub index: u32,
    /// The step's name.
    pub name: String,
}

/// How a finished saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded (COMPLETED).
    Completed,
    /// The saga failed and was compensated (COMPENSATED).
    Compensated,
}

/// Where a saga is in its definition: what the state row's `phase`, `step_index` and
/// `current_step` columns say (and the status they allow), as one value in which only the valid
/// combinations can be written down (docs/architecture.md, "The engine" (State row and
/// journal)). A NEEDS_ATTENTION saga keeps the cursor it parked at ([`Position`]). Read it with
/// [`SagaState::cursor`](super::SagaState::cursor); the journal's fold moves it with
/// [`SagaState::set_cursor`](super::SagaState::set_cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Started, no step begun yet: only between the entries of the batch that starts the saga.
    Starting,
    /// Forward step `0` is current (RUNNING, or NEEDS_ATTENTION when parked there).
    Forward(StepAt),
    /// Compensation entered, no compensation begun yet: only between the entries of one batch.
    EnteringCompensation,
    /// The compensation of step `0` is current (COMPENSATING, or parked).
    Compensating(StepAt),
    /// The failure finalizer is current (COMPENSATING, or parked).
    Finalizing,
    /// Nothing left to do.
    Finished(Outcome),
}

impl Cursor {
    /// The stored phase of this cursor.
    pub fn phase(&self) -> Phase {
        match self {
            Self::Starting | Self::Forward(_) => Phase::Forward,
            Self::EnteringCompensation | Self::Compensating(_) => Phase::Compensating,
            Self::Finalizing => Phase::Finalizing,
            Self::Finished(_) => Phase::Finished,
        }
    }

    /// The status of a saga at this cursor that is not parked.
    pub fn status(&self) -> SagaStatus {
        match self {
            Self::Starting | Self::Forward(_) => SagaStatus::Running,
            Self::EnteringCompensation | Self::Compensating(_) | Self::Finalizing => {
                SagaStatus::Compensating
            }
            Self::Finished(Outcome::Completed) => SagaStatus::Completed,
            Self::Finished(Outcome::Compensated) => SagaStatus::Compensated,
        }
    }

    /// The current step (forward or compensated), if any.
    pub fn step(&self) -> Option<&StepAt> {
        match self {
            Self::Forward(at) | Self::Compensating(at) => Some(at),
            _ => None,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Starting => f.write_str("starting"),
            Self::Forward(at) => write!(f, "forward at step {:?} ({})", at.name, at.index),
            Self::EnteringCompensation => f.write_str("entering compensation"),
            Self::Compensating(at) => {
                write!(f, "compensating step {:?} ({})", at.name, at.index)
            }
            Self::Finalizing => f.write_str("finalizing"),
            Self::Finished(Outcome::Completed) => f.write_str("finished (completed)"),
            Self::Finished(Outcome::Compensated) => f.write_str("finished (compensated)"),
        }
    }
}

/// A state row whose status, phase, step index and current step form no [`Position`] (a bug or
/// a foreign writer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "saga {id} has status {status}, phase {phase}, step index {step_index:?} and current step \
     {current_step:?}: no valid state"
)]
pub struct InvalidState {
    /// The saga.
    pub id: SagaId,
    /// Its status column.
    pub status: SagaStatus,
    /// Its phase column.
    pub phase: Phase,
    /// Its step index column.
    pub step_index: Option<u32>,
    /// Its current step column.
    pub current_step: Option<String>,
}

/// Where a saga is: its [`Cursor`], and whether it is parked there (NEEDS_ATTENTION, kept at the
/// cursor it parked at so that RetrySaga resumes there). This is what the state row holds for
/// its status, phase, step index and current step columns, and only the valid combinations can
/// be built: a saga is never parked once finished, and a row's columns become a position only
/// through [`Position::from_columns`], which refuses every other combination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    cursor: Cursor,
    parked: bool,
}

impl Position {
    /// At `cursor`, not parked: the status is the cursor's ([`Cursor::status`]).
    pub fn at(cursor: Cursor) -> Self {
        Self {
            cursor,
            parked: false,
        }
    }

    /// The cursor.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Whether the saga is parked (NEEDS_ATTENTION) at its cursor.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// NEEDS_ATTENTION when parked, otherwise the cursor's status.
    pub fn status(&self) -> SagaStatus {
        if self.parked {
            SagaStatus::NeedsAttention
        } else {
            self.cursor.status()
        }
    }

    /// Parks the saga where it is. A finished saga stays finished (the journal's guard refuses
    /// to park one, so this does not happen).
    pub fn park(&mut self) {
        self.parked = !matches!(self.cursor, Cursor::Finished(_));
    }

    /// Resumes a parked saga where it parked: RUNNING forward, COMPENSATING otherwise.
    pub fn resume(&mut self) {
        self.parked = false;
    }

    /// The position a state row's columns describe (saga `id`, for the error).
    ///
    /// # Errors
    /// [`InvalidState`] when the columns form no valid combination: a step index without a
    /// step name or the other way round, a step while finalizing or finished, a finished phase
    /// whose status is not COMPLETED or COMPENSATED, or a status another than the cursor's (or
    /// NEEDS_ATTENTION before the end).
    pub fn from_columns(
        id: SagaId,
        status: SagaStatus,
        phase: Phase,
        step_index: Option<u32>,
        current_step: Option<String>,
    ) -> Result<Self, InvalidState> {
        let invalid = |step_index: Option<u32>, current_step: Option<String>| InvalidState {
            id,
            status,
            phase,
            step_index,
            current_step,
        };
        let step = match (step_index, current_step) {
            (Some(index), Some(name)) => Some(StepAt { index, name }),
            (None, None) => None,
            (index, name) => return Err(invalid(index, name)),
        };
        let cursor = match (phase, step) {
            (Phase::Forward, None) => Cursor::Starting,
            (Phase::Forward, Some(at)) => Cursor::Forward(at),
            (Phase::Compensating, None) => Cursor::EnteringCompensation,
            (Phase::Compensating, Some(at)) => Cursor::Compensating(at),
            (Phase::Finalizing, None) => Cursor::Finalizing,
            (Phase::Finished, None) => match status {
                SagaStatus::Completed => Cursor::Finished(Outcome::Completed),
                SagaStatus::Compensated => Cursor::Finished(Outcome::Compensated),
                _ => return Err(invalid(None, None)),
            },
            (Phase::Finalizing | Phase::Finished, Some(at)) => {
                return Err(invalid(Some(at.index), Some(at.name)));
            }
        };
        let parked = status == SagaStatus::NeedsAttention;
        if cursor.status() == status || (parked && !cursor.status().is_finished()) {
            Ok(Self { cursor, parked })
        } else {
            let at = cursor.step().cloned();
            Err(invalid(
                at.as_ref().map(|at| at.index),
                at.map(|at| at.name),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: u32, name: &str) -> StepAt {
        StepAt {
            index,
            name: name.into(),
        }
    }

    fn columns(p: &Position) -> (SagaStatus, Phase, Option<u32>, Option<String>) {
        let step = p.cursor().step();
        (
            p.status(),
            p.cursor().phase(),
            step.map(|at| at.index),
            step.map(|at| at.name.clone()),
        )
    }

    /// Every position a saga can be in, parked or not, reads back from its own columns.
    #[test]
    fn every_position_round_trips_through_its_columns() {
        let cursors = [
            Cursor::Starting,
            Cursor::Forward(at(1, "b")),
            Cursor::EnteringCompensation,
            Cursor::Compensating(at(0, "a")),
            Cursor::Finalizing,
            Cursor::Finished(Outcome::Completed),
            Cursor::Finished(Outcome::Compensated),
        ];
        let mut parked_count = 0;
        for cursor in cursors {
            let mut position = Position::at(cursor.clone());
            for _ in 0..2 {
                let (status, phase, index, name) = columns(&position);
                let id = SagaId::new();
                assert_eq!(
                    Position::from_columns(id, status, phase, index, name),
                    Ok(position.clone()),
                    "{cursor}"
                );
                parked_count += usize::from(position.is_parked());
                position.park();
            }
            position.resume();
            assert_eq!(position, Position::at(cursor));
        }
        // Parked at every cursor but the two finished ones.
        assert_eq!(parked_count, 5);
    }

    /// The columns of no valid state are refused, naming what the row holds.
    #[test]
    fn invalid_column_combinations_are_refused() {
        use Phase::{Compensating, Finalizing, Finished, Forward};
        use SagaStatus::{Compensated, Completed, NeedsAttention, Running};
        let step = || Some("a".to_owned());
        let refused = [
            (Running, Forward, Some(0), None),
            (Running, Forward, None, step()),
            (Running, Compensating, Some(0), step()),
            (Completed, Forward, Some(0), step()),
            (SagaStatus::Compensating, Finalizing, Some(0), step()),
            (Completed, Finished, Some(0), step()),
            (Running, Finished, None, None),
            (NeedsAttention, Finished, None, None),
            (Compensated, Forward, None, None),
        ];
        for (status, phase, step_index, current_step) in refused {
            let id = SagaId::new();
            let err = Position::from_columns(id, status, phase, step_index, current_step.clone())
                .unwrap_err();
            assert_eq!(
                err,
                InvalidState {
                    id,
                    status,
                    phase,
                    step_index,
                    current_step,
                }
            );
            assert!(err.to_string().ends_with("no valid state"), "{err}");
        }
    }
}
