//! Why a definition was rejected.

/// Why a definition was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The name is empty.
    #[error("a saga definition needs a name")]
    EmptyName,
    /// No step was added.
    #[error("saga definition {0:?} has no steps")]
    NoSteps(String),
    /// A step name is empty or reserved.
    #[error("step name {0:?} is empty or reserved")]
    InvalidStepName(&'static str),
    /// Two steps share a name.
    #[error("step name {0:?} is used twice")]
    DuplicateStep(&'static str),
    /// More than one pivot.
    #[error("steps {first:?} and {second:?} are both pivots: at most one is allowed")]
    MoreThanOnePivot {
        /// The first pivot.
        first: &'static str,
        /// The second pivot.
        second: &'static str,
    },
    /// A step that is not retriable follows the pivot or a retriable step.
    #[error("step {step:?} follows {after:?}: only retriable steps may come after the pivot")]
    NotRetriableAfterPivot {
        /// The offending step.
        step: &'static str,
        /// The pivot or retriable step before it.
        after: &'static str,
    },
    /// A pivot or retriable step was given a compensation.
    #[error("step {0:?} is not compensatable and cannot have a compensation")]
    CompensationNotAllowed(&'static str),
    /// A retry policy with zero attempts or a base delay above the maximum.
    #[error("step {0:?} has an invalid retry policy (attempts must be >= 1, base <= max delay)")]
    InvalidRetryPolicy(&'static str),
    /// A zero per-attempt timeout.
    #[error("step {0:?} has a zero timeout")]
    ZeroTimeout(&'static str),
}
