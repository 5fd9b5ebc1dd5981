//! Saga definitions (docs/architecture.md, "The engine"): a name, a version and an ordered list of
//! steps, built with a typed builder that checks the shape; plus what a step's action sees
//! ([`StepContext`]) and returns ([`StepError`] on failure).
//!
//! ```
//! use sagaflow_workflow_engine::definition::{RetryPolicy, SagaDefinition, Step, StepContext, StepError};
//! use serde_json::{Value, json};
//!
//! async fn reserve(ctx: StepContext) -> Result<Value, StepError> {
//!     // call a service with ctx.idempotency_key and a timeout of ctx.remaining()
//!     Ok(json!({"reserved": ctx.input["sku"]}))
//! }
//! async fn release(_ctx: StepContext) -> Result<Value, StepError> { Ok(Value::Null) }
//! async fn capture(_ctx: StepContext) -> Result<Value, StepError> { Ok(Value::Null) }
//! async fn confirm(_ctx: StepContext) -> Result<Value, StepError> { Ok(Value::Null) }
//!
//! let definition = SagaDefinition::builder("checkout", 1)
//!     .step(Step::compensatable("reserve", reserve).compensation(release).timeout_ms(2_000))
//!     .step(Step::pivot("capture", capture).retry(RetryPolicy::new(5, 100, 2_000)))
//!     .step(Step::retriable("confirm", confirm))
//!     .build()
//!     .unwrap();
//! assert_eq!(definition.steps().len(), 3);
//! ```
//!
//! Shape rule: compensatable steps first, then at most one pivot, then only retriable steps
//! (`C* P? R*`). Only compensatable steps may have a compensation: the pivot is the go/no-go
//! point and steps after it are retried until they succeed.

use std::{collections::HashSet, fmt, sync::Arc};

mod context;
mod error;
mod retry;
mod step;
#[cfg(test)]
mod tests;

pub use context::{CallKind, StepContext};
pub use error::DefinitionError;
pub use retry::{Jitter, RetryPolicy};
pub use step::{ActionRef, DEFAULT_TIMEOUT_MS, SkipCondition, Step, StepAction, StepKind};

// The failure types live at the bottom of the crate (the state row and the journal name them
// too); they stay reachable under `definition::`, where callers of the engine look for them.
pub use crate::failure::{
    Classification, REASON_IDEMPOTENCY_KEY_REUSED, StepError, classify, classify_code, code_name,
    proves_not_delivered,
};

/// The journal's step name of the failure finalizer, reserved (no step may use it).
pub const FINALIZER: &str = "finalize";

/// A checked saga definition (docs/architecture.md, "The engine"). Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct SagaDefinition {
    name: String,
    version: u32,
    steps: Vec<Step>,
    finalizer: Option<ActionRef>,
    finalizer_retry: RetryPolicy,
    finalizer_timeout_ms: u64,
}

impl fmt::Debug for SagaDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .field("finalizer", &self.finalizer.is_some())
            .finish()
    }
}

impl SagaDefinition {
    /// Starts building definition `name`, version `version`.
    pub fn builder(name: impl Into<String>, version: u32) -> SagaDefinitionBuilder {
        SagaDefinitionBuilder {
            name: name.into(),
            version,
            steps: Vec::new(),
            finalizer: None,
            finalizer_retry: RetryPolicy::default(),
            finalizer_timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// The definition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The steps, in execution order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The step named `name` and its index.
    pub fn step(&self, name: &str) -> Option<(usize, &Step)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// The failure finalizer, run after the last compensation.
    pub fn finalizer(&self) -> Option<&ActionRef> {
        self.finalizer.as_ref()
    }

    /// Retry policy of the failure finalizer (retried like a compensation).
    pub fn finalizer_retry(&self) -> RetryPolicy {
        self.finalizer_retry
    }

    /// Per-attempt timeout of the failure finalizer, milliseconds.
    pub fn finalizer_timeout_ms(&self) -> u64 {
        self.finalizer_timeout_ms
    }

    /// Index of the first step that is not compensatable (the pivot, or the first retriable step),
    /// or the number of steps. Before it the saga may still be compensated; from it on, cancel and
    /// deadline are refused.
    pub fn point_of_no_return(&self) -> usize {
        self.steps
            .iter()
            .position(|s| s.kind != StepKind::Compensatable)
            .unwrap_or(self.steps.len())
    }
}

/// Builder of a [`SagaDefinition`].
#[derive(Debug)]
pub struct SagaDefinitionBuilder {
    name: String,
    version: u32,
    steps: Vec<Step>,
    finalizer: Option<ActionRef>,
    finalizer_retry: RetryPolicy,
    finalizer_timeout_ms: u64,
}

impl SagaDefinitionBuilder {
    /// Appends a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Sets the failure finalizer: run once every compensation finished, with the failure reason
    /// in [`StepContext::failure_reason`], retried like a compensation; then the saga is
    /// COMPENSATED.
    pub fn failure_finalizer(mut self, finalizer: impl StepAction) -> Self {
        self.finalizer = Some(Arc::new(finalizer));
        self
    }

    /// Sets the finalizer's retry policy (default [`RetryPolicy::default`]).
    pub fn finalizer_retry(mut self, retry: RetryPolicy) -> Self {
        self.finalizer_retry = retry;
        self
    }

    /// Sets the finalizer's per-attempt timeout, milliseconds (default [`DEFAULT_TIMEOUT_MS`]).
    pub fn finalizer_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.finalizer_timeout_ms = timeout_ms;
        self
    }

    /// Checks the shape and builds the definition.
    ///
    /// # Errors
    /// [`DefinitionError`] naming what is wrong: no steps, empty/duplicate/reserved step names,
    /// two pivots, a non-retriable step after the pivot, a compensation on a non-compensatable
    /// step, an invalid retry policy or timeout.
    pub fn build(self) -> Result<SagaDefinition, DefinitionError> {
        if self.name.trim().is_empty() {
            return Err(DefinitionError::EmptyName);
        }
        if self.steps.is_empty() {
            return Err(DefinitionError::NoSteps(self.name));
        }
        let mut names = HashSet::new();
        let mut pivot: Option<&'static str> = None;
        let mut past_compensatable: Option<&'static str> = None;
        for step in &self.steps {
            if step.name.trim().is_empty() || step.name == FINALIZER || step.name.contains(':') {
                return Err(DefinitionError::InvalidStepName(step.name));
            }
            if !names.insert(step.name) {
                return Err(DefinitionError::DuplicateStep(step.name));
            }
            check_policy(step.name, step.retry)?;
            if step.timeout_ms == 0 {
                return Err(DefinitionError::ZeroTimeout(step.name));
            }
            match step.kind {
                StepKind::Compensatable => {
                    if let Some(after) = past_compensatable {
                        return Err(DefinitionError::NotRetriableAfterPivot {
                            step: step.name,
                            after,
                        });
                    }
                }
                StepKind::Pivot => {
                    if let Some(first) = pivot {
                        return Err(DefinitionError::MoreThanOnePivot {
                            first,
                            second: step.name,
                        });
                    }
                    if let Some(after) = past_compensatable {
                        return Err(DefinitionError::NotRetriableAfterPivot {
                            step: step.name,
                            after,
                        });
                    }
                    pivot = Some(step.name);
                    past_compensatable = Some(step.name);
                }
                StepKind::Retriable => past_compensatable = Some(step.name),
            }
            if step.kind != StepKind::Compensatable && step.compensation.is_some() {
                return Err(DefinitionError::CompensationNotAllowed(step.name));
            }
        }
        check_policy(FINALIZER, self.finalizer_retry)?;
        if self.finalizer_timeout_ms == 0 {
            return Err(DefinitionError::ZeroTimeout(FINALIZER));
        }
        Ok(SagaDefinition {
            name: self.name,
            version: self.version,
            steps: self.steps,
            finalizer: self.finalizer,
            finalizer_retry: self.finalizer_retry,
            finalizer_timeout_ms: self.finalizer_timeout_ms,
        })
    }
}

fn check_policy(step: &'static str, policy: RetryPolicy) -> Result<(), DefinitionError> {
    if policy.max_attempts == 0 || policy.base_delay_ms > policy.max_delay_ms {
        return Err(DefinitionError::InvalidRetryPolicy(step));
    }
    Ok(())
}
