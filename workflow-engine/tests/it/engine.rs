//! The engine semantics of docs/architecture.md, "The engine", on both stores: completion,
//! compensation in reverse order, unknown outcomes, the pivot rule, retries with growing delays,
//! NEEDS_ATTENTION and RetrySaga, deadline and cancel.

use std::{sync::Arc, time::Duration};

use sagaflow_server::db::now_ms;
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{
    EngineError, SagaStatus, SagaStore,
    definition::CallKind,
    journal::{Event, FailureOutcome},
    planner::Refusal,
};
use serde_json::json;

use crate::support::{
    Recorder, WAIT, check_fold, event_types, fixed_retry, open, script, scripted, scripted_with,
};

sagaflow_testkit::both_backends!(
    a_saga_completes,
    a_failure_at_each_step_compensates_the_completed_steps_in_reverse,
    an_unknown_outcome_compensates_the_uncertain_step_too,
    the_pivot_is_never_compensated,
    a_retriable_step_is_retried_until_it_succeeds,
    transient_failures_are_retried_with_growing_delays,
    a_compensation_failing_transiently_five_times_finishes_compensated,
    a_compensation_failing_for_good_parks_and_retry_saga_finishes_it,
    deadline_before_and_after_the_pivot,
    cancel_before_and_after_the_pivot,
    start_is_idempotent_on_the_business_key,
    the_starter_runs_at_once_and_shutdown_releases_leases,
    a_saga_finishes_on_the_definition_version_that_started_it,
);

async fn a_saga_completes(kind: Kind) {
    let h = open(kind, "complete").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    let commits_before = h.store.commits();
    let (id, created) = engine
        .start(
            "s",
            "order-1",
            script(json!({}), json!({})),
            Some("00-abc-01".into()),
            None,
        )
        .await
        .unwrap();
    assert!(created);
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    assert_eq!(rec.actions(id), ["a", "b", "c", "p", "r"]);
    assert!(rec.compensations(id).is_empty());
    for call in rec.calls_of(id) {
        assert_eq!(call.key, format!("{id}:{}", call.step));
        assert_eq!(call.attempt, 1);
    }
    let (row, journal) = check_fold(&h, id).await;
    assert_eq!(row.outputs.len(), 5);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.trace_context.as_deref(), Some("00-abc-01"));
    assert_eq!(
        event_types(&journal),
        [
            "saga_started",
            "lease_acquired",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "saga_completed",
        ]
    );
    // One commit to start and one per step: each records a step's result and the next start.
    assert_eq!(h.store.commits() - commits_before, 1 + 5);
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn a_failure_at_each_step_compensates_the_completed_steps_in_reverse(kind: Kind) {
    let h = open(kind, "fail_each").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    let cases = [
        ("a", vec![]),
        ("b", vec!["a"]),
        ("c", vec!["b", "a"]),
        ("p", vec!["c", "b", "a"]),
    ];
    let mut started = Vec::new();
    for (failing, expected) in cases {
        let input = script(
            json!({ failing: [format!("business:NO_{failing}")] }),
            json!({}),
        );
        let (id, _) = engine
            .start("s", &format!("fail-{failing}"), input, None, None)
            .await
            .unwrap();
        started.push((id, failing, expected));
    }
    for (id, failing, expected) in started {
        let done = engine.wait_finished(id, WAIT).await.unwrap();
        assert_eq!(
            done.status(),
            SagaStatus::Compensated,
            "failing at {failing}"
        );
        assert_eq!(done.failure_reason, Some(format!("NO_{failing}")));
        assert_eq!(rec.compensations(id), expected, "failing at {failing}");
        for c in rec
            .calls_of(id)
            .iter()
            .filter(|c| c.kind == CallKind::Compensation)
        {
            assert_eq!(c.key, format!("{id}:{}:compensate", c.step));
            assert_eq!(c.failure_reason, Some(format!("NO_{failing}")));
        }
        let finalizer = rec.finalizer_calls(id);
        assert_eq!(finalizer.len(), 1);
        assert_eq!(finalizer[0].key, format!("{id}:finalize"));
        assert_eq!(finalizer[0].failure_reason, Some(format!("NO_{failing}")));
        let (row, journal) = check_fold(&h, id).await;
        assert_eq!(row.compensation_plan, expected);
        assert!(event_types(&journal).contains(&"saga_compensated"));
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn an_unknown_outcome_compensates_the_uncertain_step_too(kind: Kind) {
    let h = open(kind, "unknown").await;
    let rec = Arc::new(Recorder::default());
    // Per-attempt timeout 150 ms: `hang` answers are abandoned as DEADLINE_EXCEEDED.
    let engine = h.engine(vec![scripted_with(
        "s",
        &rec,
        crate::support::fast_retry(),
        150,
    )]);
    let transient = script(
        json!({"c": ["transient", "transient", "transient"]}),
        json!({}),
    );
    let (by_error, _) = engine
        .start("s", "unknown-1", transient, None, None)
        .await
        .unwrap();
    let hanging = script(json!({"b": ["hang", "hang", "hang"]}), json!({}));
    let (by_timeout, _) = engine
        .start("s", "unknown-2", hanging, None, None)
        .await
        .unwrap();
    for (id, uncertain, expected) in [
        (by_error, "c", vec!["c", "b", "a"]),
        (by_timeout, "b", vec!["b", "a"]),
    ] {
        let done = engine.wait_finished(id, WAIT).await.unwrap();
        assert_eq!(done.status(), SagaStatus::Compensated);
        assert_eq!(done.failure_reason.as_deref(), Some("DEADLINE_EXCEEDED"));
        assert_eq!(rec.compensations(id), expected);
        let attempts: Vec<u32> = rec
            .calls_of(id)
            .iter()
            .filter(|c| c.step == uncertain && c.kind == CallKind::Action)
            .map(|c| c.attempt)
            .collect();
        assert_eq!(attempts, [1, 2, 3], "every attempt used the same key");
        let (_, journal) = check_fold(&h, id).await;
        let unknown = journal.iter().any(|e| {
            matches!(&e.event, Event::StepFailed { step, outcome: FailureOutcome::Unknown, .. } if step == uncertain)
        });
        assert!(unknown, "the unknown outcome is journaled");
    }
    let done = engine.get(by_timeout).await.unwrap();
    assert_eq!(
        done.last_error.as_ref().map(|e| e.code.as_str()),
        Some("DEADLINE_EXCEEDED")
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn the_pivot_is_never_compensated(kind: Kind) {
    let h = open(kind, "pivot").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    // A business failure of the pivot compensates the steps before it, not the pivot.
    let declined = script(json!({"p": ["business:PAYMENT_DECLINED"]}), json!({}));
    let (id, _) = engine
        .start("s", "pivot-1", declined, None, None)
        .await
        .unwrap();
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(rec.compensations(id), ["c", "b", "a"]);
    // An unknown outcome of the pivot parks the saga; nothing is compensated.
    let unknown = script(
        json!({"p": ["transient", "transient", "transient"]}),
        json!({}),
    );
    let (id, _) = engine
        .start("s", "pivot-2", unknown, None, None)
        .await
        .unwrap();
    let parked = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(parked.status(), SagaStatus::NeedsAttention);
    assert_eq!(parked.current_step(), Some("p"));
    assert!(rec.compensations(id).is_empty());
    check_fold(&h, id).await;
    // Cancel is refused at the pivot; RetrySaga retries the pivot with the same key.
    let refused = engine.cancel(id).await.unwrap_err();
    assert!(matches!(refused, EngineError::Refused(Refusal::PastPivot)));
    engine.retry(id).await.unwrap();
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    assert!(rec.compensations(id).is_empty());
    let pivot_keys: Vec<String> = rec
        .calls_of(id)
        .into_iter()
        .filter(|c| c.step == "p")
        .map(|c| c.key)
        .collect();
    assert_eq!(pivot_keys.len(), 4);
    assert!(pivot_keys.iter().all(|k| *k == format!("{id}:p")));
    let (_, journal) = check_fold(&h, id).await;
    assert!(event_types(&journal).contains(&"operator_retry"));
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn a_retriable_step_is_retried_until_it_succeeds(kind: Kind) {
    let h = open(kind, "retriable").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    // Seven transient failures: more than the policy's 3 attempts, yet it is never compensated.
    let flaky = script(json!({"r": vec!["transient"; 7]}), json!({}));
    let (id, _) = engine
        .start("s", "retriable-1", flaky, None, None)
        .await
        .unwrap();
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    let attempts = rec.calls_of(id).iter().filter(|c| c.step == "r").count();
    assert_eq!(attempts, 8);
    assert!(rec.compensations(id).is_empty());
    check_fold(&h, id).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn transient_failures_are_retried_with_growing_delays(kind: Kind) {
    let h = open(kind, "backoff").await;
    let rec = Arc::new(Recorder::default());
    // No jitter: delays must be exactly 20, 40, 80, 160 ms.
    let fixed = scripted_with("fixed", &rec, fixed_retry(20), 2_000);
    // Full jitter: delays are drawn under caps of 20, 40, 80, 160 ms.
    let jittered = scripted_with(
        "jittered",
        &rec,
        sagaflow_workflow_engine::RetryPolicy::new(10, 20, 10_000),
        2_000,
    );
    let engine = h.engine(vec![fixed, jittered]);
    let flaky = || script(json!({"b": vec!["transient"; 4]}), json!({}));
    let (fixed_id, _) = engine
        .start("fixed", "backoff-1", flaky(), None, None)
        .await
        .unwrap();
    let (jitter_id, _) = engine
        .start("jittered", "backoff-2", flaky(), None, None)
        .await
        .unwrap();
    for (id, jittered) in [(fixed_id, false), (jitter_id, true)] {
        let done = engine.wait_finished(id, WAIT).await.unwrap();
        assert_eq!(done.status(), SagaStatus::Completed);
        let (_, journal) = check_fold(&h, id).await;
        let failures: Vec<(i64, i64, u64)> = journal
            .iter()
            .filter_map(|e| match &e.event {
                Event::StepFailed {
                    next_attempt_at: Some(at),
                    backoff_cap_ms: Some(cap),
                    ..
                } => Some((e.at, *at, *cap)),
                _ => None,
            })
            .collect();
        assert_eq!(failures.len(), 4);
        let caps: Vec<u64> = failures.iter().map(|f| f.2).collect();
        assert_eq!(caps, [20, 40, 80, 160]);
        let gaps: Vec<i64> = failures.iter().map(|(failed, at, _)| at - failed).collect();
        for (gap, cap) in gaps.iter().zip(&caps) {
            assert!(
                *gap >= 0 && *gap <= i64::try_from(*cap).unwrap(),
                "{gaps:?}"
            );
        }
        if !jittered {
            assert_eq!(gaps, [20, 40, 80, 160]);
            assert!(gaps.windows(2).all(|w| w[1] > w[0]), "gaps grow: {gaps:?}");
            // The retries really waited: each attempt starts no earlier than its scheduled time.
            let starts: Vec<i64> = rec
                .calls_of(id)
                .iter()
                .filter(|c| c.step == "b")
                .map(|c| c.started_ms)
                .collect();
            for (start, (_, at, _)) in starts[1..].iter().zip(&failures) {
                assert!(start >= at, "attempt at {start} before its time {at}");
            }
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn a_compensation_failing_transiently_five_times_finishes_compensated(kind: Kind) {
    let h = open(kind, "comp_transient").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    let input = script(
        json!({"c": ["business:OUT_OF_STOCK"]}),
        json!({"a": vec!["transient"; 5]}),
    );
    let (id, _) = engine
        .start("s", "comp-1", input, None, None)
        .await
        .unwrap();
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(done.failure_reason.as_deref(), Some("OUT_OF_STOCK"));
    let attempts: Vec<u32> = rec
        .calls_of(id)
        .iter()
        .filter(|c| c.step == "a" && c.kind == CallKind::Compensation)
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5, 6]);
    assert_eq!(rec.compensations(id), ["b", "a"]);
    check_fold(&h, id).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn a_compensation_failing_for_good_parks_and_retry_saga_finishes_it(kind: Kind) {
    let h = open(kind, "comp_business").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    let input = script(
        json!({"c": ["business:OUT_OF_STOCK"]}),
        json!({"b": ["business:CANNOT_RESTORE"]}),
    );
    let (id, _) = engine
        .start("s", "comp-2", input, None, None)
        .await
        .unwrap();
    let parked = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(parked.status(), SagaStatus::NeedsAttention);
    assert_eq!(parked.current_step(), Some("b"));
    assert_eq!(parked.lease_owner, None);
    assert_eq!(
        rec.compensations(id),
        ["b"],
        "a is not compensated before b"
    );
    check_fold(&h, id).await;
    // A second RetrySaga-less wait does not move it.
    assert_eq!(
        engine.get(id).await.unwrap().status(),
        SagaStatus::NeedsAttention
    );
    let resumed = engine.retry(id).await.unwrap();
    assert_eq!(resumed.status(), SagaStatus::Compensating);
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(rec.compensations(id), ["b", "a"]);
    let (_, journal) = check_fold(&h, id).await;
    let types = event_types(&journal);
    let parked_at = types
        .iter()
        .position(|t| *t == "saga_needs_attention")
        .unwrap();
    let retried_at = types.iter().position(|t| *t == "operator_retry").unwrap();
    assert!(parked_at < retried_at);
    assert!(matches!(
        engine.retry(id).await.unwrap_err(),
        EngineError::Refused(Refusal::NotNeedsAttention)
    ));
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn deadline_before_and_after_the_pivot(kind: Kind) {
    let h = open(kind, "deadline").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    // Before the pivot: b is still running at the deadline; its attempt is cut at the deadline and
    // it is compensated too.
    let slow_b = script(json!({"b": ["slow:1500"]}), json!({}));
    let deadline = now_ms() + 400;
    let (before, _) = engine
        .start("s", "deadline-1", slow_b, None, Some(deadline))
        .await
        .unwrap();
    // After the pivot: the deadline passes while the pivot runs; the saga completes anyway.
    let slow_p = script(json!({"p": ["slow:600"]}), json!({}));
    let deadline = now_ms() + 300;
    let (after, _) = engine
        .start("s", "deadline-2", slow_p, None, Some(deadline))
        .await
        .unwrap();
    let done = engine.wait_finished(before, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(done.failure_reason.as_deref(), Some("DEADLINE_EXCEEDED"));
    assert_eq!(rec.compensations(before), ["b", "a"]);
    let (_, journal) = check_fold(&h, before).await;
    assert!(event_types(&journal).contains(&"deadline_exceeded"));
    let done = engine.wait_finished(after, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    assert!(rec.compensations(after).is_empty());
    assert!(done.updated_at > deadline);
    check_fold(&h, after).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn cancel_before_and_after_the_pivot(kind: Kind) {
    let h = open(kind, "cancel").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    // Before the pivot: cancel while b runs; b (maybe sent) and a are compensated.
    let slow_b = script(json!({"b": ["slow:800"]}), json!({}));
    let (id, _) = engine
        .start("s", "cancel-1", slow_b, None, None)
        .await
        .unwrap();
    rec.until_called(id, "b").await;
    let canceled = engine.cancel(id).await.unwrap();
    assert_eq!(canceled.status(), SagaStatus::Compensating);
    assert_eq!(canceled.failure_reason.as_deref(), Some("CANCELED"));
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(rec.compensations(id), ["b", "a"]);
    assert!(!rec.actions(id).contains(&"c"), "no step after the cancel");
    // Canceling a finished saga is refused.
    assert!(matches!(
        engine.cancel(id).await.unwrap_err(),
        EngineError::Refused(Refusal::Finished)
    ));
    // After the pivot: r keeps failing transiently; cancel is refused and it still completes.
    let flaky_r = script(
        json!({"r": ["transient", "transient", "slow:300"]}),
        json!({}),
    );
    let (id, _) = engine
        .start("s", "cancel-2", flaky_r, None, None)
        .await
        .unwrap();
    rec.until_called(id, "r").await;
    assert!(matches!(
        engine.cancel(id).await.unwrap_err(),
        EngineError::Refused(Refusal::PastPivot)
    ));
    let done = engine.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    assert!(rec.compensations(id).is_empty());
    check_fold(&h, id).await;
    engine.shutdown(Duration::from_secs(5)).await;
    // The slow b of the canceled saga finished after the cancel; its result was thrown away.
    assert!(rec.overlaps().is_empty());
}

async fn start_is_idempotent_on_the_business_key(kind: Kind) {
    let h = open(kind, "idempotent_start").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    let (id, created) = engine
        .start("s", "same-key", script(json!({}), json!({})), None, None)
        .await
        .unwrap();
    assert!(created);
    let (again, created) = engine
        .start(
            "s",
            "same-key",
            script(json!({"a": ["business"]}), json!({})),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again, id);
    assert_eq!(
        engine.wait_finished(id, WAIT).await.unwrap().status(),
        SagaStatus::Completed
    );
    assert!(matches!(
        engine
            .start("nope", "k", json!({}), None, None)
            .await
            .unwrap_err(),
        EngineError::UnknownDefinition { .. }
    ));
    engine.shutdown(Duration::from_secs(5)).await;
    assert!(matches!(
        engine
            .start("s", "late", json!({}), None, None)
            .await
            .unwrap_err(),
        EngineError::ShuttingDown
    ));
}

async fn the_starter_runs_at_once_and_shutdown_releases_leases(kind: Kind) {
    let h = open(kind, "shutdown").await;
    let rec = Arc::new(Recorder::default());
    // The poller looks once at startup and then only every minute: only the starter can run it.
    let engine = sagaflow_workflow_engine::Engine::builder(h.store.clone())
        .definition(scripted("s", &rec))
        .owner("first")
        .poll_interval_ms(60_000)
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let (fast, _) = engine
        .start("s", "at-once", script(json!({}), json!({})), None, None)
        .await
        .unwrap();
    assert_eq!(
        engine.wait_finished(fast, WAIT).await.unwrap().status(),
        SagaStatus::Completed
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "executed at once, not by the poller"
    );
    // Shut down while b is in flight: b finishes, is recorded, and the lease is released.
    let (slow, _) = engine
        .start(
            "s",
            "in-flight",
            script(json!({"b": ["slow:300"]}), json!({})),
            None,
            None,
        )
        .await
        .unwrap();
    rec.until_called(slow, "b").await;
    let report = engine.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.aborted, 0);
    let (row, journal) = check_fold(&h, slow).await;
    assert_eq!(row.status(), SagaStatus::Running);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.current_step(), Some("c"), "b's result was recorded");
    assert_eq!(
        journal.last().map(|e| e.event.event_type()),
        Some("lease_released")
    );
    // Another engine takes it over at once (no lease to wait for) and finishes it.
    let next = h.engine(vec![scripted("s", &rec)]);
    assert_eq!(
        next.wait_finished(slow, WAIT).await.unwrap().status(),
        SagaStatus::Completed
    );
    assert_eq!(rec.actions(slow), ["a", "b", "c", "p", "r"]);
    let (_, journal) = check_fold(&h, slow).await;
    assert!(
        !event_types(&journal).contains(&"recovered"),
        "a released lease is not a recovery"
    );
    next.shutdown(Duration::from_secs(5)).await;
}

async fn a_saga_finishes_on_the_definition_version_that_started_it(kind: Kind) {
    use std::sync::Mutex;

    use sagaflow_workflow_engine::{
        Engine, RetryPolicy, SagaDefinition, Step, StepContext, StepError, definition::Jitter,
    };

    let h = open(kind, "versions").await;
    let seen: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let version = |v: u32| {
        let seen = seen.clone();
        let action = move |ctx: StepContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((v, ctx.attempt));
                // Version 1 fails its first attempt; the retry waits 300 ms, longer than the
                // engine sleeps locally, so the lease is released and the poller resumes it.
                if v == 1 && ctx.attempt == 1 {
                    Err(StepError::transient("later"))
                } else {
                    Ok(json!(v))
                }
            }
        };
        SagaDefinition::builder("versioned", v)
            .step(
                Step::compensatable("x", action)
                    .retry(RetryPolicy::new(3, 300, 300).with_jitter(Jitter::None)),
            )
            .build()
            .unwrap()
    };
    let engine = |defs: Vec<SagaDefinition>| {
        let mut b = Engine::builder(h.store.clone())
            .poll_interval_ms(20)
            .max_local_wait_ms(100);
        for d in defs {
            b = b.definition(d);
        }
        b.build().unwrap()
    };
    let old = engine(vec![version(1)]);
    let (id, _) = old
        .start("versioned", "v-1", json!({}), None, None)
        .await
        .unwrap();
    sagaflow_testkit::eventually("the retry to release the lease", WAIT, || {
        engine_lease_released(&h, id)
    })
    .await;
    old.shutdown(Duration::from_secs(5)).await;
    // The new engine knows versions 1 and 2: new sagas start on 2, the old one finishes on 1.
    let new = engine(vec![version(1), version(2)]);
    let (fresh, _) = new
        .start("versioned", "v-2", json!({}), None, None)
        .await
        .unwrap();
    let done = new.wait_finished(id, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    assert_eq!(done.definition_version, 1);
    assert_eq!(done.outputs.get("x"), Some(&json!(1)));
    let fresh = new.wait_finished(fresh, WAIT).await.unwrap();
    assert_eq!(fresh.definition_version, 2);
    assert_eq!(fresh.outputs.get("x"), Some(&json!(2)));
    new.shutdown(Duration::from_secs(5)).await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [(1, 1), (1, 2), (2, 1)]);
}

async fn engine_lease_released(
    h: &crate::support::Harness,
    id: sagaflow_workflow_engine::SagaId,
) -> Option<()> {
    let state = h.store.get(id).await.unwrap()?;
    state.lease_owner.is_none().then_some(())
}
