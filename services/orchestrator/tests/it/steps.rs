//! Generated tests over every step of the order saga definition (docs/architecture.md, "The order
//! saga", "Attempts in doubt"): the cases come from `definition.steps()`, not from a hand-written
//! list, so a new step is covered (or the harness names what it lacks).
//!
//! For every step: (a) its action fails as a business failure; (b) its outcome stays unknown (the
//! service applies the request and the reply is lost on every attempt). The journal must show
//! exactly the completed steps compensated in reverse order — none after the pivot, the pivot
//! never — and the services' state must be the model's. (c) Every action, compensation and the
//! finalizer run twice under the same idempotency key leave the same state as one run.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use sagaflow_orchestrator::{
    order_saga,
    order_saga::{StepCalls, step_calls},
};
use sagaflow_proto::order::v1::FailureReason;
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{
    SagaDefinition, SagaStatus, Step, StepContext, StepError, StepKind,
    definition::{ActionRef, CallKind, StepAction},
};
use serde_json::Value;

use crate::harness::{Fixture, Snapshot, System, Trace, policies, since, until};

/// The real definition (its clients are not used: only its shape is read).
fn definition() -> SagaDefinition {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    order_saga(
        sagaflow_orchestrator::ServiceClients::single(channel),
        policies(),
    )
    .unwrap()
}

fn calls(step: &Step) -> StepCalls {
    step_calls(step.name())
        .unwrap_or_else(|| panic!("step {:?} is not described by step_calls", step.name()))
}

/// How to make a step's action fail as a business failure.
enum Recipe {
    /// From data the real service refuses.
    Data(fn(&mut Fixture)),
    /// An injected refusal of the RPC (for steps that no data makes the service refuse).
    Fault(String),
}

fn business_failure(calls: &StepCalls) -> Recipe {
    match calls.rpc {
        // Below the coupon's minimum order amount.
        "UseCoupon" => Recipe::Data(|f| f.coupon_min_order = 1_000_000),
        "DeductInventory" => Recipe::Data(|f| f.stock = 1),
        "StartPayment" => Recipe::Data(|f| f.payment_method = "tok_decline"),
        "DeductPoints" => Recipe::Data(|f| f.points_granted = 500),
        "CompletePayment" => Recipe::Data(|f| f.payment_method = "tok_capture_decline"),
        rpc => Recipe::Fault(format!("{rpc}=error:failed_precondition:1")),
    }
}

fn names(steps: &[Step]) -> Vec<String> {
    steps.iter().map(|s| s.name().to_owned()).collect()
}

/// The steps among `steps` that have a compensation, last first: what a failure compensates.
fn compensations(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .rev()
        .filter(|s| s.compensation_action().is_some())
        .map(|s| s.name().to_owned())
        .collect()
}

/// The model's state after `applied` steps took effect and `compensated` were compensated, and
/// FailOrder ran with `failed` (if the saga was compensated).
fn model(
    f: &Fixture,
    applied: &[Step],
    compensated: &[String],
    failed: Option<FailureReason>,
) -> Snapshot {
    let mut expected = f.placed();
    for step in applied {
        expected.apply(calls(step).rpc);
    }
    for name in compensated {
        let rpc = step_calls(name).and_then(|c| c.compensation_rpc).unwrap();
        expected.undo(rpc);
    }
    if let Some(reason) = failed {
        expected.fail(reason);
    }
    expected
}

async fn every_step_fails_as_a_business_failure(kind: Kind) {
    let definition = definition();
    let steps = definition.steps();
    let started = Instant::now();
    // One system for every data-made refusal; one per injected fault.
    let plain = System::start(kind, "", |c| order_saga(c, policies()).unwrap()).await;
    for (i, step) in steps.iter().enumerate() {
        let calls = calls(step);
        let mut f = Fixture::new(&format!("biz{i}"));
        let recipe = business_failure(&calls);
        let (faulted, reason) = match &recipe {
            Recipe::Data(tweak) => {
                tweak(&mut f);
                (None, calls.failure_reason)
            }
            Recipe::Fault(faults) => {
                let faulted =
                    System::start(kind, faults, |c| order_saga(c, policies()).unwrap()).await;
                // A bare code is no decision of the handler: the saga's reason stays the code's,
                // which the order records as INTERNAL.
                (Some(faulted), FailureReason::Internal)
            }
        };
        let system = faulted.as_ref().unwrap_or(&plain);
        let order_id = system.place(&f).await;
        let state = system.rested(&order_id).await;
        let trace = system.trace(&order_id).await;
        let before = &steps[..i];
        assert_eq!(trace.succeeded, names(before), "{}: succeeded", step.name());
        assert!(trace.skipped.is_empty(), "{}: {trace:?}", step.name());
        let snapshot = system.snapshot(&f, &order_id).await;
        match step.kind() {
            StepKind::Compensatable | StepKind::Pivot => {
                assert_eq!(state.status(), SagaStatus::Compensated, "{}", step.name());
                let compensated = compensations(before);
                assert_eq!(
                    trace.compensated,
                    compensated,
                    "{}: compensated",
                    step.name()
                );
                assert!(trace.finalized, "{}: FailOrder ran", step.name());
                // A refused action leaves nothing behind (a declined authorization records no
                // payment).
                let expected = model(&f, before, &compensated, Some(reason));
                assert_eq!(snapshot, expected, "{}: services' state", step.name());
            }
            StepKind::Retriable => {
                // After the pivot nothing is compensated: the saga parks for an operator.
                assert_eq!(
                    state.status(),
                    SagaStatus::NeedsAttention,
                    "{}",
                    step.name()
                );
                assert_eq!(trace.compensated, Vec::<String>::new(), "{}", step.name());
                assert!(!trace.finalized);
                assert_eq!(
                    snapshot,
                    model(&f, before, &[], None),
                    "{}: services' state",
                    step.name()
                );
            }
        }
        eprintln!(
            "business failure of {} checked ({})",
            step.name(),
            since(started)
        );
        if let Some(faulted) = faulted {
            faulted.stop().await;
        }
    }
    plain.stop().await;
}

async fn every_step_with_an_unknown_outcome(kind: Kind) {
    let definition = definition();
    let steps = definition.steps();
    let started = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        let calls = calls(step);
        // The service applies every attempt; every reply is lost.
        let faults = format!("{}=lost_reply:1", calls.rpc);
        let system = System::start(kind, &faults, |c| order_saga(c, policies()).unwrap()).await;
        let f = Fixture::new(&format!("unk{i}"));
        let order_id = system.place(&f).await;
        let before = &steps[..i];
        let through = &steps[..=i];
        match step.kind() {
            StepKind::Compensatable => {
                let state = system.rested(&order_id).await;
                let trace = system.trace(&order_id).await;
                assert_eq!(state.status(), SagaStatus::Compensated, "{}", step.name());
                assert_eq!(trace.succeeded, names(before), "{}", step.name());
                assert_eq!(
                    trace.failed_attempts.len(),
                    policies().max_attempts as usize,
                    "{}: its attempts were used up",
                    step.name()
                );
                // The step in doubt is compensated too (its compensation is safe either way).
                let compensated = compensations(through);
                assert_eq!(
                    trace.compensated,
                    compensated,
                    "{}: compensated",
                    step.name()
                );
                assert_eq!(trace.reason.as_deref(), Some("DEADLINE_EXCEEDED"));
                assert_eq!(
                    system.snapshot(&f, &order_id).await,
                    model(
                        &f,
                        through,
                        &compensated,
                        Some(FailureReason::DeadlineExceeded)
                    ),
                    "{}: services' state",
                    step.name()
                );
            }
            StepKind::Pivot => {
                // The money may have been captured: parked, nothing compensated.
                let state = system.rested(&order_id).await;
                let trace = system.trace(&order_id).await;
                assert_eq!(
                    state.status(),
                    SagaStatus::NeedsAttention,
                    "{}",
                    step.name()
                );
                assert_eq!(trace.succeeded, names(before));
                assert_eq!(
                    trace.failed_attempts.len(),
                    policies().pivot_attempts as usize
                );
                assert_eq!(trace.compensated, Vec::<String>::new());
                assert!(!trace.finalized);
                assert_eq!(
                    system.snapshot(&f, &order_id).await,
                    model(&f, through, &[], None),
                    "{}: services' state",
                    step.name()
                );
            }
            StepKind::Retriable => {
                // Retried for as long as it fails transiently: more attempts than a forward step
                // gets, never compensated, the saga still running.
                let attempts = policies().max_attempts as usize + 2;
                let trace: Trace = until("the step after the pivot to keep retrying", || async {
                    let trace = system.trace(&order_id).await;
                    (trace.failed_attempts.len() >= attempts).then_some(trace)
                })
                .await;
                let state = system
                    .engine
                    .get(crate::harness::saga_id(&order_id))
                    .await
                    .unwrap();
                assert_eq!(state.status(), SagaStatus::Running, "{}", step.name());
                assert_eq!(trace.succeeded, names(before));
                assert_eq!(trace.compensated, Vec::<String>::new());
                assert_eq!(
                    system.snapshot(&f, &order_id).await,
                    model(&f, through, &[], None),
                    "{}: services' state",
                    step.name()
                );
            }
        }
        eprintln!(
            "unknown outcome of {} checked ({})",
            step.name(),
            since(started)
        );
        system.stop().await;
    }
}

/// Runs every call twice under the same context (so the same idempotency key) and records
/// the calls and any difference between the two answers.
struct Twice {
    inner: ActionRef,
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    calls: Vec<(String, &'static str)>,
    differences: Vec<String>,
}

fn kind_name(kind: CallKind) -> &'static str {
    match kind {
        CallKind::Action => "action",
        CallKind::Compensation => "compensation",
        CallKind::Finalizer => "finalizer",
    }
}

#[async_trait::async_trait]
impl StepAction for Twice {
    async fn run(&self, ctx: StepContext) -> Result<Value, StepError> {
        let first = self.inner.run(ctx.clone()).await;
        let second = self.inner.run(ctx.clone()).await;
        let mut log = self.log.lock().unwrap();
        log.calls.push((ctx.step.to_owned(), kind_name(ctx.kind)));
        if first != second {
            log.differences.push(format!(
                "{} {}: {first:?} then {second:?}",
                ctx.step,
                kind_name(ctx.kind)
            ));
        }
        second
    }
}

/// `definition` with every action, compensation and the finalizer wrapped in [`Twice`].
fn doubled(definition: &SagaDefinition, log: &Arc<Mutex<Log>>) -> SagaDefinition {
    let twice = |inner: &ActionRef| Twice {
        inner: inner.clone(),
        log: log.clone(),
    };
    let mut builder = SagaDefinition::builder(definition.name(), definition.version());
    for step in definition.steps() {
        let action = twice(step.action());
        let mut copy = match step.kind() {
            StepKind::Compensatable => Step::compensatable(step.name(), action),
            StepKind::Pivot => Step::pivot(step.name(), action),
            StepKind::Retriable => Step::retriable(step.name(), action),
        }
        .timeout_ms(step.timeout())
        .retry(step.retry_policy());
        if let Some(compensation) = step.compensation_action() {
            copy = copy.compensation(twice(compensation));
        }
        let original = step.clone();
        copy = copy.skip_if(move |input| original.skipped_for(input));
        builder = builder.step(copy);
    }
    if let Some(finalizer) = definition.finalizer() {
        builder = builder.failure_finalizer(twice(finalizer));
    }
    builder
        .finalizer_retry(definition.finalizer_retry())
        .finalizer_timeout_ms(definition.finalizer_timeout_ms())
        .build()
        .unwrap()
}

async fn every_call_twice_leaves_the_same_state(kind: Kind) {
    let log = Arc::new(Mutex::new(Log::default()));
    let once = System::start(kind, "", |c| order_saga(c, policies()).unwrap()).await;
    let twice = System::start(kind, "", |c| {
        doubled(&order_saga(c, policies()).unwrap(), &log)
    })
    .await;
    let steps = definition().steps().to_vec();
    // Every action runs on the way to COMPLETED; every compensation and the finalizer run when
    // the pivot is refused.
    for (case, method) in [("ok", "tok_ok"), ("capture_decline", "tok_capture_decline")] {
        let mut results = Vec::new();
        for system in [&once, &twice] {
            let f = Fixture {
                payment_method: method,
                ..Fixture::new(case)
            };
            let order_id = system.place(&f).await;
            let state = system.rested(&order_id).await;
            let trace = system.trace(&order_id).await;
            // UseCoupon's discount is journaled with the rule, and ApplyCoupon's amounts.
            let output = |name: &str| {
                trace
                    .outputs
                    .iter()
                    .find(|(step, _)| step == name)
                    .map(|(_, output)| output.clone())
            };
            assert_eq!(
                output("use_coupon"),
                Some(serde_json::json!({
                    "discount_amount": crate::harness::COUPON_DISCOUNT,
                    "discount_percent": 0,
                    "max_discount": 0,
                    "discount": crate::harness::COUPON_DISCOUNT,
                }))
            );
            assert_eq!(
                output("apply_coupon"),
                Some(serde_json::json!({
                    "discount": crate::harness::COUPON_DISCOUNT,
                    "payable": crate::harness::SUBTOTAL
                        - crate::harness::COUPON_DISCOUNT
                        - crate::harness::POINTS_SPENT,
                }))
            );
            results.push((state.status(), trace.succeeded, trace.compensated, {
                system.snapshot(&f, &order_id).await
            }));
        }
        assert_eq!(
            results[0], results[1],
            "{case}: one run vs every call twice"
        );
        let (status, _, compensated, snapshot) = &results[0];
        let f = Fixture::new(case);
        let expected = if *status == SagaStatus::Completed {
            model(&f, &steps, &[], None)
        } else {
            let pivot = steps
                .iter()
                .position(|s| s.kind() == StepKind::Pivot)
                .unwrap();
            assert_eq!(compensated, &compensations(&steps[..pivot]));
            model(
                &f,
                &steps[..pivot],
                compensated,
                Some(FailureReason::PaymentDeclined),
            )
        };
        assert_eq!(snapshot, &expected, "{case}: services' state");
    }
    {
        let log = log.lock().unwrap();
        assert_eq!(
            log.differences,
            Vec::<String>::new(),
            "second answers differ"
        );
        for step in &steps {
            assert!(
                log.calls.contains(&(step.name().to_owned(), "action")),
                "{} action ran twice",
                step.name()
            );
            if step.compensation_action().is_some() {
                assert!(
                    log.calls
                        .contains(&(step.name().to_owned(), "compensation")),
                    "{} compensation ran twice",
                    step.name()
                );
            }
        }
        assert!(log.calls.iter().any(|(_, kind)| *kind == "finalizer"));
    }
    once.stop().await;
    twice.stop().await;
}

sagaflow_testkit::both_backends!(
    every_step_fails_as_a_business_failure,
    every_step_with_an_unknown_outcome,
    every_call_twice_leaves_the_same_state,
);
