//! The typed adapter between the order saga's steps and the engine's [`StepAction`]
//! (docs/architecture.md, "The order saga" and "The engine").
//!
//! A step is a type implementing [`OrderStep`]: its name, the service it calls, its kind, its
//! skip rule, the earlier outputs it reads ([`Deps`]: [`Required`], [`Optional`], pairs of them)
//! and its action, an `async fn` over the typed clients, the typed saga input and the typed
//! earlier outputs that returns its typed output. [`Compensate`] adds the compensation.
//! [`Action`], [`Compensation`] and [`Finalizer`] wrap them as engine actions:
//!
//! ```text
//!  StepContext ─▶ decode OrderSagaInput, decode the Deps' outputs ─▶ turn at the downstream
//!  limits ─▶ S::action(clients, &input, &deps, key, timeout) ─(connect error: again, within the
//!  attempt)─▶ Status → StepError (CANCELLED → DEADLINE_EXCEEDED, not_delivered, the handler's
//!  business failure → the step's failure reason) ─▶ serialize S::Output
//! ```
//!
//! Mis-wiring cannot reach a running saga: the step's name, output type and calls are one type,
//! and [`crate::definition::order_saga`] refuses a definition in which a step reads an output
//! that no earlier step produces, or requires one that may be skipped when it is not
//! ([`crate::definition::OrderSagaError`]).

use std::{future::Future, marker::PhantomData, time::Duration};

use sagaflow_proto::order::v1::FailureReason;
use sagaflow_workflow_engine::{
    StepKind,
    definition::{CallKind, StepAction, StepContext, StepError},
};
use serde::{Deserialize as _, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};
use tonic::{Code, Status};

use crate::calls::{OrderSagaInput, ServiceClients, reason_from_saga, reason_name};

/// When a step is skipped, as a rule over the typed saga input (so that the definition can check
/// that a step never requires the output of a step that may be skipped without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The step always runs.
    Never,
    /// Skipped when the order has no coupon ([`OrderSagaInput::has_coupon`]).
    WithoutCoupon,
    /// Skipped when the order spends no points.
    WithoutPoints,
}

impl Skip {
    /// Whether the step is skipped for `input`.
    pub fn applies(self, input: &OrderSagaInput) -> bool {
        match self {
            Self::Never => false,
            Self::WithoutCoupon => !input.has_coupon(),
            Self::WithoutPoints => input.points == 0,
        }
    }
}

/// One step of the order saga, as a type.
pub trait OrderStep: Send + Sync + 'static {
    /// The step's name, used verbatim in the journal and in idempotency keys.
    const NAME: &'static str;
    /// The service its action and compensation call (a key of [`crate::limits::SERVICES`]).
    const SERVICE: &'static str;
    /// The RPC its action calls (the method name, for example `UseCoupon`).
    const RPC: &'static str;
    /// Compensatable, pivot or retriable.
    const KIND: StepKind;
    /// When the step is skipped.
    const SKIP: Skip;
    /// The order's failure reason when the service's handler refuses the action
    /// (docs/architecture.md, "The order saga").
    const FAILURE_REASON: FailureReason;
    /// The earlier outputs the action reads.
    type Deps: Deps;
    /// The step's output, stored as JSON in the saga row and journal (its field names are part of
    /// the stored format).
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Runs the action once: one call under `key` with the gRPC timeout `timeout`.
    ///
    /// # Errors
    /// The service's status.
    fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        deps: &<Self::Deps as Deps>::Value,
        key: String,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Output, Status>> + Send;
}

/// A compensatable step's compensation.
pub trait Compensate: OrderStep {
    /// The RPC the compensation calls (for example `RestoreCoupon`).
    const COMPENSATION_RPC: &'static str;

    /// Runs the compensation once: one call under `key` with the gRPC timeout `timeout`. It must
    /// be safe when the action never happened (docs/architecture.md, "The service contract").
    ///
    /// # Errors
    /// The service's status.
    fn compensate(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        key: String,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

/// An earlier step's output that a step reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The step whose output is read.
    pub step: &'static str,
    /// That step's skip rule.
    pub skip: Skip,
    /// Whether the reading step fails without it (else it reads `None`).
    pub required: bool,
}

/// Why the earlier outputs a step reads could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DepError {
    /// A required output is not in the saga row.
    #[error("the output of step {0:?} is missing")]
    Missing(&'static str),
    /// An output does not decode into its type.
    #[error("the output of step {step:?} does not decode: {error}")]
    Undecodable {
        /// The step.
        step: &'static str,
        /// The decoding error.
        error: serde_json::Error,
    },
}

/// The earlier outputs a step reads, decoded from [`StepContext::outputs`].
pub trait Deps: Send + Sync + 'static {
    /// The decoded outputs.
    type Value: Send + Sync;
    /// The outputs read, for the definition's checks.
    fn needs() -> Vec<Need>;
    /// Decodes them.
    ///
    /// # Errors
    /// [`DepError`] naming the step whose output is missing or does not decode.
    fn read(outputs: &Map<String, Value>) -> Result<Self::Value, DepError>;
}

/// The output of step `S`, which must have run.
#[derive(Debug)]
pub struct Required<S>(PhantomData<fn() -> S>);

/// The output of step `S` if it ran (`None` when it was skipped).
#[derive(Debug)]
pub struct Optional<S>(PhantomData<fn() -> S>);

fn decode<S: OrderStep>(outputs: &Map<String, Value>) -> Result<Option<S::Output>, DepError> {
    outputs
        .get(S::NAME)
        .map(|v| {
            S::Output::deserialize(v).map_err(|error| DepError::Undecodable {
                step: S::NAME,
                error,
            })
        })
        .transpose()
}

impl<S: OrderStep> Deps for Required<S> {
    type Value = S::Output;
    fn needs() -> Vec<Need> {
        vec![Need {
            step: S::NAME,
            skip: S::SKIP,
            required: true,
        }]
    }
    fn read(outputs: &Map<String, Value>) -> Result<S::Output, DepError> {
        decode::<S>(outputs)?.ok_or(DepError::Missing(S::NAME))
    }
}

impl<S: OrderStep> Deps for Optional<S> {
    type Value = Option<S::Output>;
    fn needs() -> Vec<Need> {
        vec![Need {
            step: S::NAME,
            skip: S::SKIP,
            required: false,
        }]
    }
    fn read(outputs: &Map<String, Value>) -> Result<Option<S::Output>, DepError> {
        decode::<S>(outputs)
    }
}

impl Deps for () {
    type Value = ();
    fn needs() -> Vec<Need> {
        Vec::new()
    }
    fn read(_: &Map<String, Value>) -> Result<(), DepError> {
        Ok(())
    }
}

impl<A: Deps, B: Deps> Deps for (A, B) {
    type Value = (A::Value, B::Value);
    fn needs() -> Vec<Need> {
        let mut needs = A::needs();
        needs.extend(B::needs());
        needs
    }
    fn read(outputs: &Map<String, Value>) -> Result<Self::Value, DepError> {
        Ok((A::read(outputs)?, B::read(outputs)?))
    }
}

/// The saga input, decoded once per attempt. An input that is not an order is a business failure
/// (retrying cannot change it).
fn decode_input(ctx: &StepContext) -> Result<OrderSagaInput, StepError> {
    OrderSagaInput::deserialize(&ctx.input)
        .map_err(|e| StepError::business("INTERNAL", format!("saga input is not an order: {e}")))
}

/// Pause before re-sending a call whose connection was refused, within one attempt.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

/// The part of an attempt's time kept back from waiting (for a turn at the downstream limits, or
/// between refused connections), so that a call that never left ends as such before the engine's
/// own timeout of the attempt, which would have to count it as in doubt.
const NOT_SENT_MARGIN: Duration = Duration::from_millis(150);

/// Whether the call failed before the request left this process (connection refused or reset
/// while connecting), so sending it again cannot apply an effect twice.
fn is_connect_error(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.message().contains("connect error")
}

/// Sends one call of an attempt: waits for the turn at `service`'s downstream limits (at most half
/// the attempt's time), calls `call(timeout)` with the time left, and calls again after a refused
/// connection while the attempt has time (docs/architecture.md, "The engine" (Retries)); maps the
/// final status to the journaled [`StepError`]. `failure_reason`: the order's failure reason that
/// replaces the reason of a business failure the service's handler decided (actions only).
async fn send<T, F, Fut>(
    clients: &ServiceClients,
    ctx: &StepContext,
    service: &'static str,
    failure_reason: Option<FailureReason>,
    mut call: F,
) -> Result<T, StepError>
where
    F: FnMut(Duration) -> Fut + Send,
    Fut: Future<Output = Result<T, Status>> + Send,
{
    let result = loop {
        // Every try waits for its turn at the service's limits; one that does not get it
        // before the attempt's deadline is never sent.
        // At most half the attempt's time goes to waiting: the call keeps the other half.
        let wait = (ctx.remaining() / 2).saturating_sub(NOT_SENT_MARGIN);
        let Some(_turn) = clients.limits.turn(service, wait).await else {
            return Err(StepError::not_delivered(format!(
                "no turn to call the {service} service within the attempt's deadline \
                 (its downstream limit is reached)"
            )));
        };
        let result = call(ctx.remaining()).await;
        // A refused connection means the request was never sent: retrying within this
        // attempt is safe and keeps a restarting service from using up the step's attempts.
        match &result {
            Err(status)
                if is_connect_error(status)
                    && ctx.remaining() > CONNECT_RETRY * 2 + NOT_SENT_MARGIN =>
            {
                // Jittered (0.5–1.5 ×), so that sagas waiting on one service do not retry
                // in lockstep when it comes back.
                let jitter = 0.5 + rand::random::<f64>();
                tokio::time::sleep(CONNECT_RETRY.mul_f64(jitter)).await;
            }
            _ => break result,
        }
    };
    result.map_err(|status| step_error(&status, failure_reason))
}

/// The journaled error of a failed call.
fn step_error(status: &Status, failure_reason: Option<FailureReason>) -> StepError {
    // tonic reports its own client-side timeout as CANCELLED ("Timeout expired"): for the
    // saga that is an attempt without a reply, an unknown outcome, not a business
    // failure (docs/architecture.md, "Attempts in doubt"). Nothing else cancels our calls.
    let status = if status.code() == Code::Cancelled {
        Status::deadline_exceeded(format!(
            "no reply within the attempt's deadline ({})",
            status.message()
        ))
    } else {
        status.clone()
    };
    let mut error = StepError::from_status(&status);
    // Still refused after the in-attempt retries: the request never left this process.
    error.not_delivered |= is_connect_error(&status);
    // A business failure of an action that the service's handler decided becomes the
    // order's failure reason; the service's own reason stays in the message (and in the
    // journal). A refusal that did not come from the handler — a bare code from a proxy,
    // an auth layer or an injected fault, or a key-reuse answer — keeps its own shape,
    // so the engine can tell that it decides nothing about an earlier attempt in doubt
    // (docs/architecture.md, "Attempts in doubt").
    if let Some(reason) = failure_reason
        && decided_by_handler(&status, &error)
    {
        let service_reason = error.failure_reason();
        error.message = format!("{service_reason}: {}", error.message);
        error.reason = Some(reason_name(reason).to_owned());
    }
    error
}

/// Whether a non-transient failure is the service handler's own answer: a rejection with an
/// ErrorInfo reason (other than a key reuse), or a validation error (INVALID_ARGUMENT,
/// NOT_FOUND, OUT_OF_RANGE: the same request is refused the same way on every attempt).
fn decided_by_handler(status: &Status, error: &StepError) -> bool {
    !error.retryable
        && !error.not_delivered
        && !error.is_key_reuse()
        && (error.reason.is_some()
            || matches!(
                status.code(),
                Code::InvalidArgument | Code::NotFound | Code::OutOfRange
            ))
}

/// The action of step `S` as an engine action.
pub struct Action<S> {
    clients: ServiceClients,
    step: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for Action<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Action")
            .field("step", &std::any::type_name::<S>())
            .finish()
    }
}

impl<S: OrderStep> Action<S> {
    /// The action of `S` over `clients`.
    pub fn new(clients: ServiceClients) -> Self {
        Self {
            clients,
            step: PhantomData,
        }
    }
}

#[async_trait::async_trait]
impl<S: OrderStep> StepAction for Action<S> {
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError> {
        debug_assert_eq!((ctx.step, ctx.kind), (S::NAME, CallKind::Action));
        let input = decode_input(&ctx)?;
        // An output that cannot be read is refused the same way on every attempt: a business
        // failure of this step, never a retried INTERNAL.
        let deps = S::Deps::read(&ctx.outputs)
            .map_err(|e| StepError::business("INTERNAL", format!("step {}: {e}", S::NAME)))?;
        let clients = &self.clients;
        let key = &ctx.idempotency_key;
        let output = send(
            clients,
            &ctx,
            S::SERVICE,
            Some(S::FAILURE_REASON),
            |timeout| S::action(clients, &input, &deps, key.clone(), timeout),
        )
        .await?;
        // The call took effect: an output that cannot be encoded leaves the step in doubt.
        serde_json::to_value(output)
            .map_err(|e| StepError::internal(format!("encoding the output of {}: {e}", S::NAME)))
    }
}

/// The compensation of step `S` as an engine action; its output is `{}`.
pub struct Compensation<S> {
    clients: ServiceClients,
    step: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for Compensation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compensation")
            .field("step", &std::any::type_name::<S>())
            .finish()
    }
}

impl<S: Compensate> Compensation<S> {
    /// The compensation of `S` over `clients`.
    pub fn new(clients: ServiceClients) -> Self {
        Self {
            clients,
            step: PhantomData,
        }
    }
}

#[async_trait::async_trait]
impl<S: Compensate> StepAction for Compensation<S> {
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError> {
        debug_assert_eq!((ctx.step, ctx.kind), (S::NAME, CallKind::Compensation));
        let input = decode_input(&ctx)?;
        let clients = &self.clients;
        let key = &ctx.idempotency_key;
        send(clients, &ctx, S::SERVICE, None, |timeout| {
            S::compensate(clients, &input, key.clone(), timeout)
        })
        .await?;
        Ok(json!({}))
    }
}

/// The failure finalizer: `Order.FailOrder` with the saga's failure reason
/// ([`reason_from_saga`]); its output is `{"reason": "FAILURE_REASON_…"}`.
#[derive(Debug)]
pub struct Finalizer {
    clients: ServiceClients,
}

impl Finalizer {
    /// The finalizer over `clients`.
    pub fn new(clients: ServiceClients) -> Self {
        Self { clients }
    }
}

#[async_trait::async_trait]
impl StepAction for Finalizer {
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError> {
        let input = decode_input(&ctx)?;
        let reason = reason_from_saga(ctx.failure_reason.as_deref());
        let clients = &self.clients;
        let key = &ctx.idempotency_key;
        send(clients, &ctx, "order", None, |timeout| {
            crate::calls::fail_order(clients, &input, reason, key.clone(), timeout)
        })
        .await?;
        Ok(json!({ "reason": reason.as_str_name() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_is_an_unknown_outcome_and_handler_refusals_take_the_step_reason() {
        let timeout = step_error(
            &Status::cancelled("Timeout expired"),
            Some(FailureReason::OutOfStock),
        );
        assert_eq!(timeout.code, "DEADLINE_EXCEEDED");
        assert!(timeout.retryable && timeout.in_doubt());

        let refused = step_error(
            &Status::unavailable("tcp connect error: Connection refused"),
            None,
        );
        assert!(refused.retryable && refused.not_delivered && !refused.in_doubt());

        let invalid = step_error(
            &Status::invalid_argument("bad"),
            Some(FailureReason::OutOfStock),
        );
        assert_eq!(invalid.reason.as_deref(), Some("OUT_OF_STOCK"));
        assert_eq!(invalid.message, "INVALID_ARGUMENT: bad");

        // A bare FAILED_PRECONDITION (a proxy, an injected fault) keeps its own shape.
        let bare = step_error(
            &Status::failed_precondition("injected"),
            Some(FailureReason::OutOfStock),
        );
        assert_eq!(bare.reason, None);
        assert_eq!(bare.failure_reason(), "FAILED_PRECONDITION");
    }
}
