//! Unit tests of the planner: every path of a saga, decided without I/O.

use serde_json::{Value, json};

use super::*;
use crate::{
    definition::{Step, StepContext, StepError},
    journal::{FailureOutcome, append},
    state::{Phase, SagaStatus},
};

async fn ok(_ctx: StepContext) -> Result<Value, StepError> {
    Ok(Value::Null)
}

fn def() -> SagaDefinition {
    SagaDefinition::builder("d", 1)
        .step(Step::compensatable("a", ok).compensation(ok))
        .step(Step::compensatable("b", ok).skip_if(|input| input["skip_b"] == json!(true)))
        .step(Step::compensatable("c", ok).compensation(ok))
        .step(Step::pivot("p", ok).retry(RetryPolicy::new(2, 10, 100)))
        .step(Step::retriable("r", ok))
        .failure_finalizer(ok)
        .build()
        .unwrap()
}

fn started(def: &SagaDefinition, input: Value) -> SagaState {
    let events = start_events(def, "k", &input, None, Some(10_000), "e1", 500);
    crate::journal::begin(SagaId::new(), 100, events).unwrap().0
}

fn run(_def: &SagaDefinition, state: &SagaState, events: Vec<Event>) -> SagaState {
    append(state, 200, events).unwrap().0
}

#[test]
fn happy_path_skips_and_completes() {
    let d = def();
    let mut s = started(&d, json!({"skip_b": true}));
    assert_eq!(next(&d, &s, 100).unwrap(), Next::Forward(0));
    let events = after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap();
    assert!(matches!(events[1], Event::StepSkipped { ref step, .. } if step == "b"));
    s = run(&d, &s, events);
    assert_eq!(next(&d, &s, 200).unwrap(), Next::Forward(2));
    for index in [2, 3, 4] {
        s = run(
            &d,
            &s,
            after_forward(&d, &s, index, Ok(json!(index)), 200, 0.5).unwrap(),
        );
    }
    assert_eq!(s.status(), SagaStatus::Completed);
    assert_eq!(next(&d, &s, 300).unwrap(), Next::Idle);
}

#[test]
fn unknown_outcome_compensates_the_uncertain_step_too() {
    let d = def();
    let mut s = started(&d, json!({}));
    s = run(
        &d,
        &s,
        after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
    );
    s = run(
        &d,
        &s,
        after_forward(&d, &s, 1, Ok(json!(1)), 150, 0.5).unwrap(),
    );
    // Step c fails transiently on every one of its 5 attempts.
    for attempt in 1..=5 {
        assert_eq!(s.attempt, attempt);
        let events = after_forward(&d, &s, 2, Err(StepError::transient("down")), 150, 1.0).unwrap();
        s = run(&d, &s, events);
    }
    assert_eq!(s.status(), SagaStatus::Compensating);
    assert_eq!(s.compensation_plan, vec!["c", "a"]);
    assert_eq!(s.failure_reason.as_deref(), Some(REASON_DEADLINE_EXCEEDED));
    assert_eq!(next(&d, &s, 10_000_000).unwrap(), Next::Compensate(2));
}

#[test]
fn undelivered_calls_wait_until_the_deadline_then_fail_without_compensation() {
    let d = def();
    // Deadline at 10_000 (see `started`).
    let mut s = started(&d, json!({}));
    s = run(
        &d,
        &s,
        after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
    );
    // b is refused at the door 20 times, far past its 5 attempts: still retried.
    for _ in 0..20 {
        let events = after_forward(
            &d,
            &s,
            1,
            Err(StepError::not_delivered("connection refused")),
            5_000,
            0.5,
        )
        .unwrap();
        assert!(matches!(
            events[0],
            Event::StepFailed {
                outcome: FailureOutcome::Retry,
                ..
            }
        ));
        s = run(&d, &s, events);
    }
    assert!(!s.in_doubt, "a refused connection is not in doubt");
    assert_eq!(s.undelivered, 20, "none of them counted");
    // Past the deadline the saga is compensated before b is tried again; b never happened.
    let Next::Record(events) = next(&d, &s, 10_001).unwrap() else {
        panic!("the deadline is recorded");
    };
    s = run(&d, &s, events);
    assert_eq!(s.status(), SagaStatus::Compensating);
    assert_eq!(s.compensation_plan, vec!["a"]);
    assert_eq!(s.failure_reason.as_deref(), Some(REASON_DEADLINE_EXCEEDED));
}

#[test]
fn pivot_business_failure_compensates_but_not_the_pivot() {
    let d = def();
    let mut s = started(&d, json!({}));
    for index in 0..3 {
        s = run(
            &d,
            &s,
            after_forward(&d, &s, index, Ok(json!(1)), 150, 0.5).unwrap(),
        );
    }
    let err = StepError::business("PAYMENT_DECLINED", "no");
    s = run(
        &d,
        &s,
        after_forward(&d, &s, 3, Err(err), 150, 0.5).unwrap(),
    );
    assert_eq!(s.compensation_plan, vec!["c", "a"]);
    assert_eq!(s.failure_reason.as_deref(), Some("PAYMENT_DECLINED"));
}

#[test]
fn pivot_unknown_outcome_parks_and_cancel_is_refused() {
    let d = def();
    let mut s = started(&d, json!({}));
    for index in 0..3 {
        s = run(
            &d,
            &s,
            after_forward(&d, &s, index, Ok(json!(1)), 150, 0.5).unwrap(),
        );
    }
    assert_eq!(cancel_events(&d, &s, 9, None), Err(Refusal::PastPivot));
    for _ in 0..2 {
        let events = after_forward(&d, &s, 3, Err(StepError::transient("slow")), 150, 0.5).unwrap();
        s = run(&d, &s, events);
    }
    assert_eq!(s.status(), SagaStatus::NeedsAttention);
    assert_eq!(s.phase(), Phase::Forward);
    s = run(&d, &s, retry_events(&s, None).unwrap());
    assert_eq!(s.status(), SagaStatus::Running);
    assert_eq!(s.attempt, 1);
    assert_eq!(retry_events(&s, None), Err(Refusal::NotNeedsAttention));
}

#[test]
fn deadline_before_the_pivot_compensates_with_the_current_step() {
    let d = def();
    let mut s = started(&d, json!({}));
    s = run(
        &d,
        &s,
        after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
    );
    let Next::Record(events) = next(&d, &s, 10_000).unwrap() else {
        panic!("expected the deadline to be recorded");
    };
    s = run(&d, &s, events);
    assert_eq!(s.failure_reason.as_deref(), Some(REASON_DEADLINE_EXCEEDED));
    // b has no compensation, so only a is compensated.
    assert_eq!(s.compensation_plan, vec!["a"]);
    s = run(
        &d,
        &s,
        after_compensation(&d, &s, 0, Ok(Value::Null), 150, 0.5).unwrap(),
    );
    assert_eq!(s.phase(), Phase::Finalizing);
    s = run(&d, &s, after_finalizer(&d, &s, Ok(Value::Null), 150, 0.5));
    assert_eq!(s.status(), SagaStatus::Compensated);
    assert_eq!(cancel_events(&d, &s, 9, None), Err(Refusal::Finished));
}

#[test]
fn transient_compensation_failures_retry_with_capped_backoff() {
    let d = def();
    let mut s = started(&d, json!({}));
    s = run(
        &d,
        &s,
        after_forward(&d, &s, 0, Ok(json!(1)), 150, 0.5).unwrap(),
    );
    s = run(&d, &s, cancel_events(&d, &s, 7, None).unwrap());
    assert_eq!(s.fencing_token, 7);
    assert_eq!(s.lease_owner, None);
    assert_eq!(s.compensation_plan, vec!["a"]);
    for attempt in 1..=20 {
        let events =
            after_compensation(&d, &s, 0, Err(StepError::transient("x")), 1_000, 1.0).unwrap();
        let Event::CompensationFailed {
            next_attempt_at: Some(at),
            ..
        } = events[0]
        else {
            panic!("expected a retry");
        };
        assert!(at - 1_000 <= 10_000, "capped at max_delay_ms");
        s = run(&d, &s, events);
        assert_eq!(s.attempt, attempt + 1);
    }
    let events =
        after_compensation(&d, &s, 0, Err(StepError::business("NO", "no")), 1_000, 1.0).unwrap();
    s = run(&d, &s, events);
    assert_eq!(s.status(), SagaStatus::NeedsAttention);
    assert_eq!(s.phase(), Phase::Compensating);
}

#[test]
fn idempotency_keys_follow_design_section_6() {
    let id: SagaId = "01890000-0000-7000-8000-000000000000".parse().unwrap();
    assert_eq!(
        idempotency_key(id, "pay", CallKind::Action, 0),
        "01890000-0000-7000-8000-000000000000:pay"
    );
    assert_eq!(
        idempotency_key(id, "pay", CallKind::Compensation, 2),
        "01890000-0000-7000-8000-000000000000:pay:compensate:retry-2"
    );
    assert_eq!(
        idempotency_key(id, "pay", CallKind::Compensation, 0),
        "01890000-0000-7000-8000-000000000000:pay:compensate"
    );
    assert_eq!(
        idempotency_key(id, "pay", CallKind::Finalizer, 0),
        "01890000-0000-7000-8000-000000000000:finalize"
    );
}
