//! What an action, a compensation or the failure finalizer gets for one attempt.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::state::SagaId;

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
    /// The step's name ([`FINALIZER`](super::FINALIZER) for the failure finalizer).
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
