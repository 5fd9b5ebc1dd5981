//! One step of a definition: its kind, its action and compensation, its timeout and retry
//! policy, and its skip condition.

use std::{fmt, future::Future, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{RetryPolicy, StepContext};
use crate::failure::StepError;

/// Default per-attempt timeout of a step, milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// What kind of step it is (docs/architecture.md, "The engine"; Garcia-Molina's compensatable /
/// pivot / retriable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Can be compensated; a failure here (or before the pivot) compensates it.
    Compensatable,
    /// The go/no-go point: never compensated; once it succeeded the saga must complete.
    Pivot,
    /// After the pivot: retried until it succeeds, never compensated.
    Retriable,
}

impl StepKind {
    /// `compensatable`, `pivot` or `retriable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compensatable => "compensatable",
            Self::Pivot => "pivot",
            Self::Retriable => "retriable",
        }
    }
}

/// A step's action, a compensation or the failure finalizer. Any
/// `Fn(StepContext) -> impl Future<Output = Result<Value, StepError>>` is one.
///
/// It must be idempotent under [`StepContext::idempotency_key`]: after a crash it runs again with
/// the same key. A compensation must be safe when its action never happened
/// (docs/architecture.md, "The service contract").
#[async_trait::async_trait]
pub trait StepAction: Send + Sync + 'static {
    /// Runs one attempt. `Ok` carries the step's output (stored and passed to later steps).
    ///
    /// # Errors
    /// A [`StepError`]: business failures (`retryable: false`) are not retried; transient ones are.
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError>;
}

#[async_trait::async_trait]
impl<F, Fut> StepAction for F
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
{
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError> {
        (self)(ctx).await
    }
}

/// A shared action.
pub type ActionRef = Arc<dyn StepAction>;

/// A predicate over the saga input: when it returns true the step is skipped (neither executed
/// nor compensated).
pub type SkipCondition = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// One step of a definition. Build it with [`Step::compensatable`], [`Step::pivot`] or
/// [`Step::retriable`].
#[derive(Clone)]
pub struct Step {
    pub(super) name: &'static str,
    pub(super) kind: StepKind,
    pub(super) action: ActionRef,
    pub(super) compensation: Option<ActionRef>,
    pub(super) timeout_ms: u64,
    pub(super) retry: RetryPolicy,
    pub(super) skip_if: Option<SkipCondition>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("compensation", &self.compensation.is_some())
            .field("timeout_ms", &self.timeout_ms)
            .field("retry", &self.retry)
            .field("skip_if", &self.skip_if.is_some())
            .finish()
    }
}

impl Step {
    fn new(name: &'static str, kind: StepKind, action: impl StepAction) -> Self {
        Self {
            name,
            kind,
            action: Arc::new(action),
            compensation: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            retry: RetryPolicy::default(),
            skip_if: None,
        }
    }

    /// A compensatable step (give it a compensation with [`Step::compensation`]).
    pub fn compensatable(name: &'static str, action: impl StepAction) -> Self {
        Self::new(name, StepKind::Compensatable, action)
    }

    /// The pivot step.
    pub fn pivot(name: &'static str, action: impl StepAction) -> Self {
        Self::new(name, StepKind::Pivot, action)
    }

    /// A retriable step (after the pivot).
    pub fn retriable(name: &'static str, action: impl StepAction) -> Self {
        Self::new(name, StepKind::Retriable, action)
    }

    /// Sets the compensation (compensatable steps only; the builder rejects it elsewhere).
    pub fn compensation(mut self, compensation: impl StepAction) -> Self {
        self.compensation = Some(Arc::new(compensation));
        self
    }

    /// Sets the per-attempt timeout, milliseconds (default [`DEFAULT_TIMEOUT_MS`]).
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// Sets the retry policy (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Skips the step when `condition(input)` is true.
    pub fn skip_if(mut self, condition: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Self {
        self.skip_if = Some(Arc::new(condition));
        self
    }

    /// The step's name, used verbatim in journal rows and idempotency keys.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The step's kind.
    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// The action.
    pub fn action(&self) -> &ActionRef {
        &self.action
    }

    /// The compensation, if any.
    pub fn compensation_action(&self) -> Option<&ActionRef> {
        self.compensation.as_ref()
    }

    /// Per-attempt timeout, milliseconds.
    pub fn timeout(&self) -> u64 {
        self.timeout_ms
    }

    /// Retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Whether the step is skipped for `input`.
    pub fn skipped_for(&self, input: &Value) -> bool {
        self.skip_if.as_ref().is_some_and(|c| c(input))
    }
}

impl fmt::Debug for dyn StepAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StepAction")
    }
}
