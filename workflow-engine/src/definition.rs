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

use std::{collections::HashSet, fmt, future::Future, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tonic::{Code, Status};

use crate::state::SagaId;

/// The journal's step name of the failure finalizer, reserved (no step may use it).
pub const FINALIZER: &str = "finalize";

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

/// Whether retry delays are randomized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Full jitter: the delay is uniform in `0..=cap` (the default; spreads retries of many
    /// sagas that failed together).
    #[default]
    Full,
    /// No jitter: the delay is the cap itself (deterministic; for tests and demos).
    None,
}

/// How a step is retried on transient failures (docs/architecture.md, "The engine" (Retries)).
///
/// The delay before attempt `n + 1`, after attempt `n` failed, is
///
/// ```text
/// cap(n)   = min(max_delay_ms, base_delay_ms * 2^(n-1))
/// delay(n) = uniform(0 ..= cap(n))        (full jitter; delay(n) = cap(n) with Jitter::None)
/// ```
///
/// (exponential backoff with full jitter, as in the AWS architecture blog's "Exponential Backoff
/// And Jitter"). Forward steps before the pivot and the pivot get `max_attempts` attempts;
/// compensations, the failure finalizer and steps after the pivot retry for as long as they fail
/// transiently, with the same capped delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of a forward step before its outcome is declared unknown (at least 1).
    pub max_attempts: u32,
    /// Cap of the first retry delay, milliseconds.
    pub base_delay_ms: u64,
    /// Largest retry delay, milliseconds.
    pub max_delay_ms: u64,
    /// Randomization of the delay.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    /// 5 attempts, delays capped at 100 ms, 200 ms, 400 ms, … up to 10 s, full jitter.
    fn default() -> Self {
        Self::new(5, 100, 10_000)
    }
}

impl RetryPolicy {
    /// A policy with full jitter.
    pub fn new(max_attempts: u32, base_delay_ms: u64, max_delay_ms: u64) -> Self {
        Self {
            max_attempts,
            base_delay_ms,
            max_delay_ms,
            jitter: Jitter::Full,
        }
    }

    /// The same policy with `jitter`.
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// `cap(n)` of the type docs: the largest delay after failed attempt `attempt` (from 1),
    /// milliseconds.
    pub fn cap_ms(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(62);
        self.base_delay_ms
            .saturating_mul(1_u64 << exponent)
            .min(self.max_delay_ms)
    }

    /// `delay(n)` of the type docs for a uniform random `unit` in `0.0..=1.0`, milliseconds.
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u64 {
        let cap = self.cap_ms(attempt);
        match self.jitter {
            Jitter::None => cap,
            // Truncation is intended: the result lies in 0..=cap.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            Jitter::Full => ((cap as f64) * unit.clamp(0.0, 1.0)).round() as u64,
        }
    }
}

/// How a failure is treated (docs/architecture.md, "The engine" (Retries)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// A definite business failure: not retried; the saga compensates.
    Business,
    /// A transient failure: retried with backoff; the effect may or may not have happened.
    Transient,
}

/// Classifies a gRPC code (docs/architecture.md, "The engine" (Retries)): INVALID_ARGUMENT,
/// NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS, PERMISSION_DENIED and OUT_OF_RANGE are business
/// failures; UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL and UNKNOWN are
/// transient; every other code (CANCELLED, UNIMPLEMENTED, DATA_LOSS, UNAUTHENTICATED, and OK, which
/// is no failure at all) is treated as a business failure, because retrying cannot help.
pub fn classify_code(code: Code) -> Classification {
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown => Classification::Transient,
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::OutOfRange
        | Code::Ok
        | Code::Cancelled
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Unauthenticated => Classification::Business,
    }
}

/// The ErrorInfo reason of `ALREADY_EXISTS` when an idempotency key was used with another
/// request: proof that an earlier request under the key was applied.
pub const REASON_IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// Whether a code proves that the request never reached the service's handler: UNIMPLEMENTED
/// (no such method behind this address, e.g. a proxy during a redeploy), UNAUTHENTICATED and
/// PERMISSION_DENIED (refused by an authentication layer before the handler). Our services
/// never answer these from a handler (docs/architecture.md, "Attempts in doubt").
pub fn proves_not_delivered(code: Code) -> bool {
    matches!(
        code,
        Code::Unimplemented | Code::Unauthenticated | Code::PermissionDenied
    )
}

/// Classifies a gRPC status by its code ([`classify_code`]).
pub fn classify(status: &Status) -> Classification {
    classify_code(status.code())
}

/// The gRPC code name in `SCREAMING_SNAKE_CASE` (`FAILED_PRECONDITION`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A failed attempt of a step's action, compensation or finalizer, as journaled: plain serde
/// data, read back with a fallible deserialization (a stored value never panics the reader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    /// gRPC code name (`FAILED_PRECONDITION`, `UNAVAILABLE`, …).
    pub code: String,
    /// For a person.
    pub message: String,
    /// Machine-readable reason (the `google.rpc.ErrorInfo` reason, for example `OUT_OF_STOCK`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Whether the failure is transient (retried) rather than a business failure.
    pub retryable: bool,
    /// The request provably never reached the service's handler (UNIMPLEMENTED,
    /// UNAUTHENTICATED, PERMISSION_DENIED from a proxy or an auth layer, a refused connection):
    /// this attempt had no effect, but it also says nothing about earlier attempts
    /// (docs/architecture.md, "Attempts in doubt").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_delivered: bool,
}

impl StepError {
    /// A definite business failure with gRPC code FAILED_PRECONDITION and a machine-readable
    /// reason.
    pub fn business(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code_name(Code::FailedPrecondition).to_owned(),
            message: message.into(),
            reason: Some(reason.into()),
            retryable: false,
            not_delivered: false,
        }
    }

    /// A transient failure with gRPC code UNAVAILABLE whose effect is in doubt.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            code: code_name(Code::Unavailable).to_owned(),
            message: message.into(),
            reason: None,
            retryable: true,
            not_delivered: false,
        }
    }

    /// A transient UNAVAILABLE that provably never reached the service (a refused connection):
    /// retried, but not in doubt.
    pub fn not_delivered(message: impl Into<String>) -> Self {
        Self {
            not_delivered: true,
            ..Self::transient(message)
        }
    }

    /// A panic or other internal fault of the caller's own code: transient INTERNAL, in doubt.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: code_name(Code::Internal).to_owned(),
            ..Self::transient(message)
        }
    }

    /// Whether this attempt may have had its effect although it failed: a transient failure
    /// that may have reached the handler (a timeout, a lost reply), or `ALREADY_EXISTS`
    /// [`REASON_IDEMPOTENCY_KEY_REUSED`], which proves an earlier request under the same key was
    /// applied (docs/architecture.md, "Attempts in doubt").
    pub fn in_doubt(&self) -> bool {
        (self.retryable && !self.not_delivered) || self.is_key_reuse()
    }

    /// `ALREADY_EXISTS` with reason [`REASON_IDEMPOTENCY_KEY_REUSED`].
    pub fn is_key_reuse(&self) -> bool {
        self.code == code_name(Code::AlreadyExists)
            && self.reason.as_deref() == Some(REASON_IDEMPOTENCY_KEY_REUSED)
    }

    /// The transient DEADLINE_EXCEEDED of an attempt that outlived its per-attempt timeout.
    pub fn timed_out(timeout_ms: u64) -> Self {
        Self {
            code: code_name(Code::DeadlineExceeded).to_owned(),
            message: format!("no reply within the attempt's timeout of {timeout_ms} ms"),
            reason: None,
            retryable: true,
            not_delivered: false,
        }
    }

    /// Classifies a gRPC status ([`classify`]), keeps its ErrorInfo reason and marks the codes
    /// that prove the request never reached a handler ([`proves_not_delivered`]).
    pub fn from_status(status: &Status) -> Self {
        Self {
            code: code_name(status.code()).to_owned(),
            message: status.message().to_owned(),
            reason: sagaflow_server::error::error_reason(status),
            retryable: classify(status) == Classification::Transient,
            not_delivered: proves_not_delivered(status.code()),
        }
    }

    /// The reason a business failure gives the saga: the ErrorInfo reason, else the code name.
    pub fn failure_reason(&self) -> String {
        self.reason.clone().unwrap_or_else(|| self.code.clone())
    }
}

impl From<&Status> for StepError {
    fn from(status: &Status) -> Self {
        Self::from_status(status)
    }
}

impl From<Status> for StepError {
    fn from(status: Status) -> Self {
        Self::from_status(&status)
    }
}

/// Which callable of a definition is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A step's action.
    Action,
    /// A step's compensation.
    Compensation,
    /// The failure finalizer.
    Finalizer,
}

/// Everything an action, compensation or finalizer gets for one attempt.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The saga.
    pub saga_id: SagaId,
    /// The step's name ([`FINALIZER`] for the failure finalizer).
    pub step: &'static str,
    /// What is running.
    pub kind: CallKind,
    /// Attempt number, from 1. A re-execution after a crash repeats the attempt number.
    pub attempt: u32,
    /// Send this with the command (docs/architecture.md, "The service contract"):
    /// `<saga id>:<step>` for actions, `<saga id>:<step>:compensate` for compensations,
    /// `<saga id>:finalize` for the finalizer. The same on every attempt and every re-execution.
    pub idempotency_key: String,
    /// The saga's input.
    pub input: Value,
    /// Outputs of the steps that succeeded so far, by step name.
    pub outputs: Map<String, Value>,
    /// Unix ms by which this attempt must be done; the engine abandons it then (a transient
    /// DEADLINE_EXCEEDED). Pass it on as the gRPC deadline ([`StepContext::remaining`]).
    pub deadline_ms: i64,
    /// The same deadline on the monotonic clock ([`StepContext::remaining`] measures from it, so
    /// a skewed wall clock does not shorten or stretch the call).
    pub deadline: tokio::time::Instant,
    /// Why the saga is failing, for compensations and the finalizer (`OUT_OF_STOCK`, …).
    pub failure_reason: Option<String>,
    /// Saved W3C trace context of the request that started the saga.
    pub trace_context: Option<String>,
}

impl StepContext {
    /// Time left until [`StepContext::deadline_ms`] (zero when past).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// The output of an earlier step, if it succeeded.
    pub fn output(&self, step: &str) -> Option<&Value> {
        self.outputs.get(step)
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
    name: &'static str,
    kind: StepKind,
    action: ActionRef,
    compensation: Option<ActionRef>,
    timeout_ms: u64,
    retry: RetryPolicy,
    skip_if: Option<SkipCondition>,
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

impl fmt::Debug for dyn StepAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StepAction")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn ok(_ctx: StepContext) -> Result<Value, StepError> {
        Ok(Value::Null)
    }

    #[test]
    fn shape_is_checked() {
        let two_pivots = SagaDefinition::builder("s", 1)
            .step(Step::pivot("a", ok))
            .step(Step::pivot("b", ok))
            .build();
        assert_eq!(
            two_pivots.unwrap_err(),
            DefinitionError::MoreThanOnePivot {
                first: "a",
                second: "b"
            }
        );
        let compensatable_after_pivot = SagaDefinition::builder("s", 1)
            .step(Step::pivot("a", ok))
            .step(Step::compensatable("b", ok))
            .build();
        assert_eq!(
            compensatable_after_pivot.unwrap_err(),
            DefinitionError::NotRetriableAfterPivot {
                step: "b",
                after: "a"
            }
        );
        let pivot_after_retriable = SagaDefinition::builder("s", 1)
            .step(Step::retriable("a", ok))
            .step(Step::pivot("b", ok))
            .build();
        assert!(matches!(
            pivot_after_retriable.unwrap_err(),
            DefinitionError::NotRetriableAfterPivot { step: "b", .. }
        ));
        let duplicate = SagaDefinition::builder("s", 1)
            .step(Step::compensatable("a", ok))
            .step(Step::compensatable("a", ok))
            .build();
        assert_eq!(duplicate.unwrap_err(), DefinitionError::DuplicateStep("a"));
        let reserved = SagaDefinition::builder("s", 1)
            .step(Step::compensatable(FINALIZER, ok))
            .build();
        assert_eq!(
            reserved.unwrap_err(),
            DefinitionError::InvalidStepName(FINALIZER)
        );
        let compensated_pivot = SagaDefinition::builder("s", 1)
            .step(Step::pivot("p", ok).compensation(ok))
            .build();
        assert_eq!(
            compensated_pivot.unwrap_err(),
            DefinitionError::CompensationNotAllowed("p")
        );
        let bad_policy = SagaDefinition::builder("s", 1)
            .step(Step::compensatable("a", ok).retry(RetryPolicy::new(0, 1, 2)))
            .build();
        assert_eq!(
            bad_policy.unwrap_err(),
            DefinitionError::InvalidRetryPolicy("a")
        );
        assert!(matches!(
            SagaDefinition::builder("s", 1).build().unwrap_err(),
            DefinitionError::NoSteps(_)
        ));
        let good = SagaDefinition::builder("s", 1)
            .step(Step::compensatable("a", ok).compensation(ok))
            .step(Step::compensatable("b", ok))
            .step(Step::pivot("p", ok))
            .step(Step::retriable("r1", ok))
            .step(Step::retriable("r2", ok))
            .build()
            .unwrap();
        assert_eq!(good.point_of_no_return(), 2);
        assert_eq!(good.step("r1").map(|(i, _)| i), Some(3));
    }

    #[test]
    fn backoff_caps_grow_and_full_jitter_stays_below_the_cap() {
        let policy = RetryPolicy::new(10, 100, 1_000);
        let caps: Vec<u64> = (1..=6).map(|n| policy.cap_ms(n)).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1_000, 1_000]);
        for n in 1..=6 {
            assert_eq!(policy.delay_ms(n, 0.0), 0);
            assert_eq!(policy.delay_ms(n, 1.0), policy.cap_ms(n));
            assert!(policy.delay_ms(n, 0.5) <= policy.cap_ms(n));
        }
        let fixed = policy.with_jitter(Jitter::None);
        assert_eq!(fixed.delay_ms(3, 0.1), 400);
        // Huge attempt numbers saturate instead of overflowing.
        assert_eq!(policy.cap_ms(u32::MAX), 1_000);
    }

    #[test]
    fn every_grpc_code_is_classified() {
        use Classification::{Business, Transient};
        let expected = [
            (Code::InvalidArgument, Business),
            (Code::NotFound, Business),
            (Code::FailedPrecondition, Business),
            (Code::AlreadyExists, Business),
            (Code::PermissionDenied, Business),
            (Code::OutOfRange, Business),
            (Code::Unavailable, Transient),
            (Code::DeadlineExceeded, Transient),
            (Code::ResourceExhausted, Transient),
            (Code::Aborted, Transient),
            (Code::Internal, Transient),
            (Code::Unknown, Transient),
            (Code::Ok, Business),
            (Code::Cancelled, Business),
            (Code::Unimplemented, Business),
            (Code::DataLoss, Business),
            (Code::Unauthenticated, Business),
        ];
        assert_eq!(expected.len(), 17, "every gRPC code is listed");
        for (code, class) in expected {
            let status = Status::new(code, "x");
            assert_eq!(classify(&status), class, "{code:?}");
            let err = StepError::from(&status);
            assert_eq!(err.retryable, class == Transient, "{code:?}");
            assert_eq!(err.code, code_name(code));
        }
    }

    #[test]
    fn step_error_keeps_the_error_info_reason() {
        let status: Status =
            sagaflow_server::ServiceError::precondition("OUT_OF_STOCK", "sku KB-1 is out").into();
        let err = StepError::from(&status);
        assert_eq!(err.reason.as_deref(), Some("OUT_OF_STOCK"));
        assert!(!err.retryable);
        assert_eq!(err.failure_reason(), "OUT_OF_STOCK");
        let plain = StepError::from(Status::not_found("x"));
        assert_eq!(plain.failure_reason(), "NOT_FOUND");
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(serde_json::from_str::<StepError>(&json).unwrap(), err);
    }
}
