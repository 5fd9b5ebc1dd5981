//! The order saga as a workflow-engine definition: step kinds, per-attempt timeouts and retry
//! policies (docs/architecture.md, "The order saga" and "The engine").

use std::{sync::Arc, time::Duration};

use sagaflow_workflow_engine::definition::{
    CallKind, DefinitionError, RetryPolicy, SagaDefinition, Step, StepAction, StepContext,
    StepError,
};
use serde_json::Value;
use tonic::{Code, Status};

use crate::order_saga::{
    self, DEFINITION_NAME, DEFINITION_VERSION, OrderSagaInput, ServiceClients,
    business_failure_reason, reason_from_saga, reason_name, step,
};

/// Per-attempt timeouts (milliseconds) and attempt counts of the order saga's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPolicies {
    /// Per-attempt timeout of the coupon, order, inventory and point calls, ms. Default 2000.
    pub call_timeout_ms: u64,
    /// Per-attempt timeout of the payment calls, ms. Default 2000: with 4 attempts the step gives
    /// up (unknown outcome) before the simulated gateway's `tok_slow` answer at 10 s.
    pub payment_timeout_ms: u64,
    /// Attempts of a forward step before its outcome counts as unknown. Default 4.
    pub max_attempts: u32,
    /// Attempts of the pivot (`complete_payment`) before it is parked in NEEDS_ATTENTION. Default
    /// 30 (about a minute with the default delays): the pivot is never compensated on an unknown
    /// outcome (docs/architecture.md, "Attempts in doubt"), so it must outlast a payment-service
    /// restart or deploy.
    pub pivot_attempts: u32,
    /// First retry delay cap, ms (doubles per attempt, full jitter). Default 50.
    pub base_delay_ms: u64,
    /// Largest retry delay, ms. Default 2000.
    pub max_delay_ms: u64,
}

impl Default for StepPolicies {
    fn default() -> Self {
        Self {
            call_timeout_ms: 2_000,
            payment_timeout_ms: 2_000,
            max_attempts: 4,
            pivot_attempts: 30,
            base_delay_ms: 50,
            max_delay_ms: 2_000,
        }
    }
}

/// One callable of the order saga: a step's action or compensation, or the finalizer.
struct OrderCall {
    clients: ServiceClients,
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

impl OrderCall {
    async fn call(
        &self,
        ctx: &StepContext,
        input: &OrderSagaInput,
        outputs: &Value,
        key: &str,
    ) -> Result<Value, Status> {
        let timeout = ctx.remaining();
        match ctx.kind {
            CallKind::Action => {
                order_saga::run_action(&self.clients, ctx.step, input, outputs, key, timeout).await
            }
            CallKind::Compensation => {
                order_saga::run_compensation(&self.clients, ctx.step, input, key, timeout).await
            }
            CallKind::Finalizer => {
                let reason = reason_from_saga(ctx.failure_reason.as_deref());
                order_saga::fail_order(&self.clients, input, reason, key, timeout).await
            }
        }
    }
}

#[async_trait::async_trait]
impl StepAction for OrderCall {
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError> {
        let input: OrderSagaInput = serde_json::from_value(ctx.input.clone()).map_err(|e| {
            StepError::business("INTERNAL", format!("saga input is not an order: {e}"))
        })?;
        let outputs = Value::Object(ctx.outputs.clone());
        let key = ctx.idempotency_key.clone();
        let service = order_saga::service_of(ctx.step);
        let result = loop {
            // Every try waits for its turn at the service's limits; one that does not get it
            // before the attempt's deadline is never sent.
            // At most half the attempt's time goes to waiting: the call keeps the other half.
            let wait = (ctx.remaining() / 2).saturating_sub(NOT_SENT_MARGIN);
            let Some(_turn) = self.clients.limits.turn(service, wait).await else {
                return Err(StepError::not_delivered(format!(
                    "no turn to call the {service} service within the attempt's deadline \
                     (its downstream limit is reached)"
                )));
            };
            let result = self.call(&ctx, &input, &outputs, &key).await;
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
        result.map_err(|status| {
            // tonic reports its own client-side timeout as CANCELLED ("Timeout expired"): for the
            // saga that is an attempt without a reply, an unknown outcome, not a business
            // failure (docs/architecture.md, "Attempts in doubt"). Nothing else cancels our calls.
            let status = if status.code() == Code::Cancelled {
                Status::deadline_exceeded(format!(
                    "no reply within the attempt's deadline ({})",
                    status.message()
                ))
            } else {
                status
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
            if ctx.kind == CallKind::Action && decided_by_handler(&status, &error) {
                let service_reason = error.failure_reason();
                error.message = format!("{service_reason}: {}", error.message);
                error.reason = Some(reason_name(business_failure_reason(ctx.step)).to_owned());
            }
            error
        })
    }
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

/// Builds the order saga definition over `clients`.
///
/// # Errors
/// [`DefinitionError`] if the shape were invalid (it is not: one pivot, one retriable step after).
pub fn order_saga(
    clients: ServiceClients,
    policies: StepPolicies,
) -> Result<SagaDefinition, DefinitionError> {
    let call = Arc::new(OrderCall { clients });
    let action = || SharedCall(call.clone());
    let retry = RetryPolicy::new(
        policies.max_attempts,
        policies.base_delay_ms,
        policies.max_delay_ms,
    );
    let no_coupon = |input: &Value| {
        input
            .get("coupon_code")
            .is_none_or(|c| c.as_str().is_none_or(str::is_empty))
    };
    let no_points = |input: &Value| input.get("points").and_then(Value::as_i64).unwrap_or(0) == 0;
    SagaDefinition::builder(DEFINITION_NAME, DEFINITION_VERSION)
        .step(
            Step::compensatable(step::USE_COUPON, action())
                .compensation(action())
                .timeout_ms(policies.call_timeout_ms)
                .retry(retry)
                .skip_if(no_coupon),
        )
        .step(
            Step::compensatable(step::APPLY_COUPON, action())
                .timeout_ms(policies.call_timeout_ms)
                .retry(retry)
                .skip_if(no_coupon),
        )
        .step(
            Step::compensatable(step::DEDUCT_INVENTORY, action())
                .compensation(action())
                .timeout_ms(policies.call_timeout_ms)
                .retry(retry),
        )
        .step(
            Step::compensatable(step::START_PAYMENT, action())
                .compensation(action())
                .timeout_ms(policies.payment_timeout_ms)
                .retry(retry),
        )
        .step(
            Step::compensatable(step::DEDUCT_POINTS, action())
                .compensation(action())
                .timeout_ms(policies.call_timeout_ms)
                .retry(retry)
                .skip_if(no_points),
        )
        .step(
            Step::pivot(step::COMPLETE_PAYMENT, action())
                .timeout_ms(policies.payment_timeout_ms)
                .retry(RetryPolicy::new(
                    policies.pivot_attempts.max(policies.max_attempts),
                    policies.base_delay_ms,
                    policies.max_delay_ms,
                )),
        )
        .step(
            Step::retriable(step::COMPLETE_ORDER, action())
                .timeout_ms(policies.call_timeout_ms)
                .retry(retry),
        )
        .failure_finalizer(action())
        .finalizer_retry(retry)
        .finalizer_timeout_ms(policies.call_timeout_ms)
        .build()
}

/// An [`OrderCall`] shared by every step of the definition.
struct SharedCall(Arc<OrderCall>);

#[async_trait::async_trait]
impl StepAction for SharedCall {
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError> {
        self.0.run(ctx).await
    }
}
