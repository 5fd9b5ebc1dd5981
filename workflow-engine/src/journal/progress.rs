//! The admin API's per-step view of a journal.

use super::{Event, FailureOutcome, JournalEntry};

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
