//! The order saga as a workflow-engine definition: step kinds, per-attempt timeouts and retry
//! policies (docs/architecture.md, "The order saga" and "The engine"), built from the typed steps
//! of [`order_saga`](mod@crate::order_saga) with the checks that keep a mis-wired step out of a running saga.

use sagaflow_workflow_engine::{
    StepKind,
    definition::{DefinitionError, RetryPolicy, SagaDefinition, SagaDefinitionBuilder, Step},
};
use serde::Deserialize as _;
use serde_json::Value;

use crate::{
    order_saga::{
        ApplyCoupon, CompleteOrder, CompletePayment, DEFINITION_NAME, DEFINITION_VERSION,
        DeductInventory, DeductPoints, OrderSagaInput, ServiceClients, StartPayment, UseCoupon,
    },
    typed::{Action, Compensate, Compensation, Deps, Finalizer, OrderStep, Skip},
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

/// Why the order saga definition could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderSagaError {
    /// The engine refused the shape (docs/architecture.md, "The engine").
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// A step reads the output of a step that does not come before it.
    #[error("step {step:?} reads the output of {needs:?}, which is no earlier step")]
    NotEarlier {
        /// The reading step.
        step: &'static str,
        /// The step whose output it reads.
        needs: &'static str,
    },
    /// A step requires the output of a step that may be skipped when the reading step runs.
    #[error(
        "step {step:?} requires the output of {needs:?}, which may be skipped when {step:?} runs"
    )]
    MaySkip {
        /// The reading step.
        step: &'static str,
        /// The step whose output it requires.
        needs: &'static str,
    },
}

/// The steps added so far and the checks of the next one.
struct Plan {
    clients: ServiceClients,
    builder: SagaDefinitionBuilder,
    earlier: Vec<(&'static str, Skip)>,
}

impl Plan {
    /// Appends step `S` with its per-attempt timeout, retry policy and compensation.
    fn compensated<S: Compensate>(
        mut self,
        timeout_ms: u64,
        retry: RetryPolicy,
    ) -> Result<Self, OrderSagaError> {
        let step = self
            .check::<S>(timeout_ms, retry)?
            .compensation(Compensation::<S>::new(self.clients.clone()));
        self.builder = self.builder.step(step);
        Ok(self)
    }

    /// Appends step `S`, which has no compensation.
    fn uncompensated<S: OrderStep>(
        mut self,
        timeout_ms: u64,
        retry: RetryPolicy,
    ) -> Result<Self, OrderSagaError> {
        let step = self.check::<S>(timeout_ms, retry)?;
        self.builder = self.builder.step(step);
        Ok(self)
    }

    fn check<S: OrderStep>(
        &mut self,
        timeout_ms: u64,
        retry: RetryPolicy,
    ) -> Result<Step, OrderSagaError> {
        for need in <S::Deps as Deps>::needs() {
            let Some((_, skip)) = self.earlier.iter().find(|(name, _)| *name == need.step) else {
                return Err(OrderSagaError::NotEarlier {
                    step: S::NAME,
                    needs: need.step,
                });
            };
            // A required output must exist whenever the reader runs: its step is never skipped,
            // or skipped exactly when the reader is.
            if need.required && *skip != Skip::Never && *skip != S::SKIP {
                return Err(OrderSagaError::MaySkip {
                    step: S::NAME,
                    needs: need.step,
                });
            }
        }
        self.earlier.push((S::NAME, S::SKIP));
        let action = Action::<S>::new(self.clients.clone());
        let step = match S::KIND {
            StepKind::Compensatable => Step::compensatable(S::NAME, action),
            StepKind::Pivot => Step::pivot(S::NAME, action),
            StepKind::Retriable => Step::retriable(S::NAME, action),
        }
        .timeout_ms(timeout_ms)
        .retry(retry);
        Ok(match S::SKIP {
            Skip::Never => step,
            skip => step.skip_if(move |input: &Value| skipped(skip, input)),
        })
    }
}

/// Whether `skip` applies to the raw saga input, read as the typed [`OrderSagaInput`]. An input
/// that is not an order runs the step, whose action then fails as a business failure.
fn skipped(skip: Skip, input: &Value) -> bool {
    OrderSagaInput::deserialize(input).is_ok_and(|input| skip.applies(&input))
}

/// Builds the order saga definition over `clients`.
///
/// # Errors
/// [`OrderSagaError`] if the shape were invalid (it is not: one pivot, one retriable step after,
/// every output read produced by an earlier step).
pub fn order_saga(
    clients: ServiceClients,
    policies: StepPolicies,
) -> Result<SagaDefinition, OrderSagaError> {
    let retry = RetryPolicy::new(
        policies.max_attempts,
        policies.base_delay_ms,
        policies.max_delay_ms,
    );
    let pivot_retry = RetryPolicy::new(
        policies.pivot_attempts.max(policies.max_attempts),
        policies.base_delay_ms,
        policies.max_delay_ms,
    );
    let call = policies.call_timeout_ms;
    let payment = policies.payment_timeout_ms;
    let plan = Plan {
        clients: clients.clone(),
        builder: SagaDefinition::builder(DEFINITION_NAME, DEFINITION_VERSION),
        earlier: Vec::new(),
    };
    let plan = plan
        .compensated::<UseCoupon>(call, retry)?
        .uncompensated::<ApplyCoupon>(call, retry)?
        .compensated::<DeductInventory>(call, retry)?
        .compensated::<StartPayment>(payment, retry)?
        .compensated::<DeductPoints>(call, retry)?
        .uncompensated::<CompletePayment>(payment, pivot_retry)?
        .uncompensated::<CompleteOrder>(call, retry)?;
    Ok(plan
        .builder
        .failure_finalizer(Finalizer::new(clients))
        .finalizer_retry(retry)
        .finalizer_timeout_ms(call)
        .build()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sagaflow_proto::order::v1::FailureReason;
    use serde_json::json;
    use tonic::{Status, transport::Endpoint};

    use super::*;
    use crate::{
        order_saga::{ApplyCouponOutput, NoOutput, step, step_calls},
        typed::Required,
    };

    fn clients() -> ServiceClients {
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        ServiceClients::single(channel)
    }

    fn plan() -> Plan {
        Plan {
            clients: clients(),
            builder: SagaDefinition::builder("t", 1),
            earlier: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_definition_keeps_its_names_kinds_and_policies() {
        let policies = StepPolicies::default();
        let definition = order_saga(clients(), policies).unwrap();
        assert_eq!((definition.name(), definition.version()), ("order", 1));
        let shape: Vec<(&str, StepKind, bool, u64, u32)> = definition
            .steps()
            .iter()
            .map(|s| {
                (
                    s.name(),
                    s.kind(),
                    s.compensation_action().is_some(),
                    s.timeout(),
                    s.retry_policy().max_attempts,
                )
            })
            .collect();
        use StepKind::{Compensatable as C, Pivot as P, Retriable as R};
        assert_eq!(
            shape,
            [
                (step::USE_COUPON, C, true, 2_000, 4),
                (step::APPLY_COUPON, C, false, 2_000, 4),
                (step::DEDUCT_INVENTORY, C, true, 2_000, 4),
                (step::START_PAYMENT, C, true, 2_000, 4),
                (step::DEDUCT_POINTS, C, true, 2_000, 4),
                (step::COMPLETE_PAYMENT, P, false, 2_000, 30),
                (step::COMPLETE_ORDER, R, false, 2_000, 4),
            ]
        );
        assert!(definition.finalizer().is_some());
        assert_eq!(definition.finalizer_timeout_ms(), 2_000);
        // Every step is described, with its compensation exactly when it has one.
        for s in definition.steps() {
            let calls = step_calls(s.name()).unwrap();
            assert_eq!(
                calls.compensation_rpc.is_some(),
                s.compensation_action().is_some()
            );
        }
        let no_coupon = json!({
            "order_id": "o", "user_id": "u", "lines": [], "coupon_code": null,
            "subtotal": 1, "points": 0, "payment_method": "tok_ok"
        });
        let skipped: Vec<&str> = definition
            .steps()
            .iter()
            .filter(|s| s.skipped_for(&no_coupon))
            .map(|s| s.name())
            .collect();
        assert_eq!(
            skipped,
            [step::USE_COUPON, step::APPLY_COUPON, step::DEDUCT_POINTS]
        );
        let mut with_coupon = no_coupon.clone();
        with_coupon["coupon_code"] = json!("C1");
        with_coupon["points"] = json!(5);
        assert!(
            !definition
                .steps()
                .iter()
                .any(|s| s.skipped_for(&with_coupon))
        );
    }

    /// A test step that requires `apply_coupon`'s output although it always runs.
    struct ReadsApplyCoupon;

    impl OrderStep for ReadsApplyCoupon {
        const NAME: &'static str = "reads_apply_coupon";
        const SERVICE: &'static str = "order";
        const RPC: &'static str = "CompleteOrder";
        const KIND: StepKind = StepKind::Compensatable;
        const SKIP: Skip = Skip::Never;
        const FAILURE_REASON: FailureReason = FailureReason::Internal;
        type Deps = Required<ApplyCoupon>;
        type Output = NoOutput;

        async fn action(
            _: &ServiceClients,
            _: &OrderSagaInput,
            _: &ApplyCouponOutput,
            _: String,
            _: Duration,
        ) -> Result<NoOutput, Status> {
            Ok(NoOutput {})
        }
    }

    #[tokio::test]
    async fn mis_wired_steps_are_definition_errors() {
        let retry = RetryPolicy::default();
        // Reading an output that no earlier step produces.
        let err = plan().uncompensated::<ApplyCoupon>(1, retry).err().unwrap();
        assert_eq!(
            err,
            OrderSagaError::NotEarlier {
                step: step::APPLY_COUPON,
                needs: step::USE_COUPON
            }
        );
        // Requiring an output that is skipped when the reader runs.
        let err = plan()
            .uncompensated::<UseCoupon>(1, retry)
            .unwrap()
            .uncompensated::<ApplyCoupon>(1, retry)
            .unwrap()
            .uncompensated::<ReadsApplyCoupon>(1, retry)
            .err()
            .unwrap();
        assert_eq!(
            err,
            OrderSagaError::MaySkip {
                step: "reads_apply_coupon",
                needs: step::APPLY_COUPON
            }
        );
        // A compensation on the pivot: the engine's check.
        let err = plan()
            .uncompensated::<CompletePayment>(1, retry)
            .unwrap()
            .builder
            .step(
                Step::retriable(
                    step::COMPLETE_ORDER,
                    Action::<CompleteOrder>::new(clients()),
                )
                .compensation(Compensation::<UseCoupon>::new(clients())),
            )
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            DefinitionError::CompensationNotAllowed(step::COMPLETE_ORDER)
        );
    }
}
