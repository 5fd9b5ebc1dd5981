//! Failure paths of the engine found by review (docs/architecture.md, "Attempts in doubt",
//! "Operator commands", "Time"), each on both stores, asserting the fake service's business data
//! (which actions took effect and were not compensated), not only the saga's status:
//!
//! 1. an attempt in doubt followed by a refusal that never reached the handler;
//! 2. an unreadable row at the head of every poll;
//! 3. sagas of a definition version this engine does not know;
//! 4. RetrySaga past a rejection stored under the idempotency key, and ResolveStep;
//! 6. a replica with a skewed clock, and two deliveries racing to start one saga.

use std::{sync::Arc, time::Duration};

use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{
    Engine, RetryPolicy, SagaId, SagaStatus, SagaStore,
    clock::SkewedClock,
    definition::Jitter,
    journal::{Event, Resolution},
    planner::Refusal,
};
use serde_json::json;

use crate::support::{Harness, Recorder, WAIT, check_fold, open, script, scripted, scripted_with};

sagaflow_testkit::both_backends!(
    an_attempt_in_doubt_keeps_a_compensatable_step_uncertain,
    an_attempt_in_doubt_parks_the_pivot_unless_the_handler_decided,
    an_attempt_in_doubt_after_the_pivot_parks_and_retry_saga_finishes,
    an_output_that_cannot_be_stored_compensates_the_step,
    an_unreadable_row_is_parked_and_every_healthy_saga_finishes,
    sagas_of_an_unknown_definition_version_are_left_to_a_replica_that_knows_it,
    retry_saga_gets_past_a_rejection_stored_under_the_key,
    resolve_step_settles_a_parked_call_with_an_audit_record,
    a_replica_with_a_clock_ahead_takes_no_live_lease,
    racing_starts_of_one_saga_id_create_it_once,
    a_sole_owner_takes_over_left_leases_at_once_without_their_backoff,
);

#[test]
fn default_owner_ids_differ_per_process_start() {
    let a = sagaflow_workflow_engine::engine::default_owner("orchestrator");
    let b = sagaflow_workflow_engine::engine::default_owner("orchestrator");
    assert_ne!(a, b, "two replicas that both run as PID 1 still differ");
    assert!(a.starts_with("orchestrator-"), "{a}");
    assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
}

/// The refusals that say nothing about an earlier attempt: codes that prove the request never
/// reached a handler, a bare code (a proxy or an injected fault), and a key-reuse answer.
const REFUSALS: [&str; 5] = [
    "code:unimplemented",
    "code:unauthenticated",
    "code:permission_denied",
    "code:failed_precondition",
    "keyreuse",
];

async fn wait(engine: &Engine, id: SagaId) -> sagaflow_workflow_engine::SagaState {
    engine.wait_finished(id, WAIT).await.unwrap()
}

async fn an_attempt_in_doubt_keeps_a_compensatable_step_uncertain(kind: Kind) {
    let h = open(kind, "doubt_comp").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    for (i, refusal) in REFUSALS.iter().enumerate() {
        // c applies but its reply is lost; the retry is refused before the handler.
        let input = script(json!({"c": ["lost", refusal]}), json!({}));
        let (id, _) = engine
            .start("s", &format!("doubt-c-{i}"), input, None, None)
            .await
            .unwrap();
        let done = wait(&engine, id).await;
        assert_eq!(done.status(), SagaStatus::Compensated, "{refusal}");
        assert_eq!(rec.compensations(id), ["c", "b", "a"], "{refusal}");
        assert!(
            rec.net_effects(id).is_empty(),
            "{refusal}: every effect undone, got {:?}",
            rec.net_effects(id)
        );
        check_fold(&h, id).await;
    }
    // Without an earlier attempt in doubt the same refusal is a plain failure: c did not
    // happen and is not compensated.
    let input = script(json!({"c": ["code:unimplemented"]}), json!({}));
    let (id, _) = engine
        .start("s", "plain-c", input, None, None)
        .await
        .unwrap();
    assert_eq!(wait(&engine, id).await.status(), SagaStatus::Compensated);
    assert_eq!(rec.compensations(id), ["b", "a"]);
    assert!(rec.net_effects(id).is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn an_attempt_in_doubt_parks_the_pivot_unless_the_handler_decided(kind: Kind) {
    let h = open(kind, "doubt_pivot").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    for (i, refusal) in REFUSALS.iter().enumerate() {
        // The capture applies with its reply lost, then a refusal: the outcome is unknown, so
        // nothing before it may be compensated (the money is taken).
        let input = script(json!({"p": ["lost", refusal]}), json!({}));
        let (id, _) = engine
            .start("s", &format!("doubt-p-{i}"), input, None, None)
            .await
            .unwrap();
        let parked = wait(&engine, id).await;
        assert_eq!(parked.status(), SagaStatus::NeedsAttention, "{refusal}");
        assert_eq!(parked.current_step(), Some("p"));
        assert!(rec.compensations(id).is_empty(), "{refusal}");
        assert_eq!(rec.net_effects(id), ["a", "b", "c", "p"], "{refusal}");
        check_fold(&h, id).await;
    }
    // The handler's own rejection under the key is decisive even after a lost reply: the
    // idempotency store answers every attempt with the one execution's result.
    let input = script(
        json!({"p": ["transient", "business:PAYMENT_DECLINED"]}),
        json!({}),
    );
    let (id, _) = engine
        .start("s", "decided-p", input, None, None)
        .await
        .unwrap();
    let done = wait(&engine, id).await;
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(done.failure_reason.as_deref(), Some("PAYMENT_DECLINED"));
    assert_eq!(rec.compensations(id), ["c", "b", "a"]);
    assert!(rec.net_effects(id).is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn an_attempt_in_doubt_after_the_pivot_parks_and_retry_saga_finishes(kind: Kind) {
    let h = open(kind, "doubt_retriable").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    for (i, refusal) in REFUSALS.iter().enumerate() {
        let input = script(json!({"r": ["lost", refusal, "ok"]}), json!({}));
        let (id, _) = engine
            .start("s", &format!("doubt-r-{i}"), input, None, None)
            .await
            .unwrap();
        let parked = wait(&engine, id).await;
        assert_eq!(parked.status(), SagaStatus::NeedsAttention, "{refusal}");
        assert_eq!(parked.current_step(), Some("r"));
        assert!(rec.compensations(id).is_empty());
        assert_eq!(rec.net_effects(id), ["a", "b", "c", "p", "r"]);
        engine.retry(id).await.unwrap();
        let done = wait(&engine, id).await;
        assert_eq!(done.status(), SagaStatus::Completed, "{refusal}");
        let keys: Vec<String> = rec
            .calls_of(id)
            .into_iter()
            .filter(|c| c.step == "r")
            .map(|c| c.key)
            .collect();
        assert_eq!(
            keys,
            [
                format!("{id}:r"),
                format!("{id}:r"),
                format!("{id}:r:retry-1")
            ]
        );
        check_fold(&h, id).await;
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn an_output_that_cannot_be_stored_compensates_the_step(kind: Kind) {
    let h = open(kind, "deep_output").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    let input = script(json!({"b": ["deep"]}), json!({}));
    let (id, _) = engine
        .start("s", "deep-b", input, None, None)
        .await
        .unwrap();
    let done = wait(&engine, id).await;
    assert_eq!(done.status(), SagaStatus::Compensated);
    // b took effect, so it is compensated although it "succeeded".
    assert_eq!(rec.compensations(id), ["b", "a"]);
    assert!(rec.net_effects(id).is_empty());
    let (row, _) = check_fold(&h, id).await;
    assert_eq!(row.failure_reason.as_deref(), Some("OUTPUT_NOT_STORABLE"));
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A retry policy whose first retry waits a minute: a saga failing transiently once is released
/// by its driver and waits.
fn slow_retry() -> RetryPolicy {
    RetryPolicy::new(3, 60_000, 60_000).with_jitter(Jitter::None)
}

/// Waits until every saga of `ids` rests with its lease released (a scheduled retry), shuts
/// `engine` down (so that it cannot claim them), then makes them all due now.
async fn release_and_make_due(h: &Harness, engine: Engine, ids: &[SagaId]) {
    for id in ids {
        let state = sagaflow_testkit::eventually("the saga to rest", WAIT, || async {
            let state = h.store.get(*id).await.unwrap().unwrap();
            (state.lease_owner.is_none() && state.attempt == 2).then_some(state)
        })
        .await;
        assert_eq!(state.status(), SagaStatus::Running);
    }
    engine.shutdown(Duration::from_secs(5)).await;
    sqlx::query("UPDATE sagas SET next_attempt_at = 0")
        .execute(h.db.pool())
        .await
        .unwrap();
}

/// Starts `count` sagas whose step a fails transiently once: they are left due, released.
async fn leave_due(h: &Harness, rec: &Arc<Recorder>, prefix: &str, count: usize) -> Vec<SagaId> {
    let engine = h.engine(vec![scripted_with("s", rec, slow_retry(), 2_000)]);
    let mut ids = Vec::new();
    for i in 0..count {
        let input = script(json!({"a": ["transient"]}), json!({}));
        let (id, _) = engine
            .start("s", &format!("{prefix}-{i}"), input, None, None)
            .await
            .unwrap();
        ids.push(id);
    }
    release_and_make_due(h, engine, &ids).await;
    ids
}

async fn an_unreadable_row_is_parked_and_every_healthy_saga_finishes(kind: Kind) {
    let h = open(kind, "poisoned").await;
    let rec = Arc::new(Recorder::default());
    let ids = leave_due(&h, &rec, "healthy", 101).await;
    // Poison the first: an output nested deeper than serde_json reads (written fine, unreadable),
    // due before every other saga.
    let poisoned = ids[0];
    let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    sqlx::query("UPDATE sagas SET outputs = $1, next_attempt_at = 0 WHERE id = $2")
        .bind(deep)
        .bind(poisoned.to_string())
        .execute(h.db.pool())
        .await
        .unwrap();
    // Poison the second: status, phase, step index and current step that form no position (a
    // RUNNING saga finalizing at a step), refused when the row is decoded.
    let invalid = ids[1];
    sqlx::query("UPDATE sagas SET phase = 'finalizing', next_attempt_at = 0 WHERE id = $1")
        .bind(invalid.to_string())
        .execute(h.db.pool())
        .await
        .unwrap();
    // Two replicas share the store; batches of 8 so the poisoned rows are in many batches.
    let replicas: Vec<Engine> = (0..2)
        .map(|_| {
            Engine::builder(h.store.clone())
                .definition(scripted("s", &rec))
                .lease_ms(5_000)
                .poll_interval_ms(20)
                .batch_size(8)
                .build()
                .unwrap()
        })
        .collect();
    for id in &ids[2..] {
        let done = wait(&replicas[0], *id).await;
        assert_eq!(done.status(), SagaStatus::Completed);
        assert_eq!(rec.net_effects(*id), ["a", "b", "c", "p", "r"]);
    }
    for (id, why) in [(poisoned, "JSON"), (invalid, "no valid state")] {
        let journal = h.store.journal(id).await.unwrap();
        let last = journal.last().unwrap();
        let Event::SagaNeedsAttention { reason } = &last.event else {
            panic!("the poisoned saga {id} is parked, got {:?}", last.event);
        };
        assert!(reason.contains("cannot be read"), "{reason}");
        assert!(reason.contains(why), "{reason}");
        let status: String = sqlx::query_scalar("SELECT status FROM sagas WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(h.db.pool())
            .await
            .unwrap();
        assert_eq!(status, "NEEDS_ATTENTION");
    }
    for engine in replicas {
        engine.shutdown(Duration::from_secs(5)).await;
    }
}

async fn sagas_of_an_unknown_definition_version_are_left_to_a_replica_that_knows_it(kind: Kind) {
    let h = open(kind, "unknown_version").await;
    let rec = Arc::new(Recorder::default());
    // A new-version saga (v2), left due by a replica that knows v2.
    let v2 = |rec: &Arc<Recorder>| {
        let mut builder = sagaflow_workflow_engine::SagaDefinition::builder("s", 2);
        for step in scripted_with("s", rec, slow_retry(), 2_000).steps() {
            builder = builder.step(step.clone());
        }
        builder.build().unwrap()
    };
    let new_engine = h.engine(vec![v2(&rec)]);
    let input = script(json!({"a": ["transient"]}), json!({}));
    let (id, _) = new_engine
        .start("s", "v2-saga", input, None, None)
        .await
        .unwrap();
    release_and_make_due(&h, new_engine, &[id]).await;
    let before = h.store.journal(id).await.unwrap().len();
    // An old replica (v1 only) polls often; it neither claims nor loops on the v2 saga.
    let old_engine = Engine::builder(h.store.clone())
        .definition(scripted("s", &rec))
        .lease_ms(5_000)
        .poll_interval_ms(10)
        .build()
        .unwrap();
    assert_eq!(
        h.store
            .count_due_elsewhere(old_engine.now_ms(), &[("s".to_owned(), 1)])
            .await
            .unwrap(),
        1,
        "the v2 saga is due and no v1 engine will take it"
    );
    // While the old replica finishes work of its own (many polls), the v2 saga is untouched.
    for i in 0..5 {
        let (own, _) = old_engine
            .start(
                "s",
                &format!("v1-{i}"),
                script(json!({}), json!({})),
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(wait(&old_engine, own).await.status(), SagaStatus::Completed);
    }
    assert_eq!(h.store.journal(id).await.unwrap().len(), before);
    assert!(rec.net_effects(id).is_empty());
    // A replica that knows v2 takes it and finishes it on v2.
    let upgraded = h.engine(vec![v2(&rec)]);
    let done = wait(&upgraded, id).await;
    assert_eq!(done.status(), SagaStatus::Completed);
    assert_eq!(done.definition_version, 2);
    assert_eq!(rec.net_effects(id), ["a", "b", "c", "p", "r"]);
    old_engine.shutdown(Duration::from_secs(5)).await;
    upgraded.shutdown(Duration::from_secs(5)).await;
}

async fn retry_saga_gets_past_a_rejection_stored_under_the_key(kind: Kind) {
    let h = open(kind, "stored_rejection").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    // c fails; b's compensation is refused and the refusal stored under b's compensation key
    // (the operator then repairs its cause: the script's next answer is "ok").
    let input = script(
        json!({"c": ["business:OUT_OF_STOCK"]}),
        json!({"b": ["stored:RESTORE_REFUSED", "ok"]}),
    );
    let (id, _) = engine
        .start("s", "stored-b", input, None, None)
        .await
        .unwrap();
    let parked = wait(&engine, id).await;
    assert_eq!(parked.status(), SagaStatus::NeedsAttention);
    assert_eq!(rec.net_effects(id), ["a", "b"]);
    // The operator retries: the compensation is sent under a new key generation, so the stored
    // refusal is not replayed.
    let resumed = engine.retry(id).await.unwrap();
    assert_eq!(resumed.generation, 1);
    let done = wait(&engine, id).await;
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert!(rec.net_effects(id).is_empty());
    let keys: Vec<String> = rec
        .calls_of(id)
        .into_iter()
        .filter(|c| c.step == "b" && c.key.contains("compensate"))
        .map(|c| c.key)
        .collect();
    assert_eq!(
        keys,
        [
            format!("{id}:b:compensate"),
            format!("{id}:b:compensate:retry-1")
        ]
    );
    // a's compensation, run after the retry, carries the generation too.
    assert!(
        rec.calls_of(id)
            .iter()
            .any(|c| c.key == format!("{id}:a:compensate:retry-1"))
    );
    check_fold(&h, id).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn resolve_step_settles_a_parked_call_with_an_audit_record(kind: Kind) {
    let h = open(kind, "resolve").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    // A pivot whose outcome stays unknown: the operator confirms the capture at the gateway.
    let input = script(json!({"p": ["lost", "code:unimplemented"]}), json!({}));
    let (applied, _) = engine
        .start("s", "resolve-applied", input, None, None)
        .await
        .unwrap();
    assert_eq!(
        wait(&engine, applied).await.status(),
        SagaStatus::NeedsAttention
    );
    // The operator finds no capture at the gateway: the saga compensates the steps before it.
    engine
        .resolve(
            applied,
            Resolution::NotApplied,
            "ops-kim",
            "no capture at the gateway",
        )
        .await
        .unwrap();
    let done = wait(&engine, applied).await;
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(rec.compensations(applied), ["c", "b", "a"]);
    assert_eq!(done.failure_reason.as_deref(), Some("RESOLVED_NOT_APPLIED"));

    let input = script(json!({"p": ["lost", "code:unimplemented"]}), json!({}));
    let (id, _) = engine
        .start("s", "resolve-confirmed", input, None, None)
        .await
        .unwrap();
    assert_eq!(wait(&engine, id).await.status(), SagaStatus::NeedsAttention);
    engine
        .resolve(
            id,
            Resolution::Applied,
            "ops-kim",
            "capture confirmed in the gateway console",
        )
        .await
        .unwrap();
    let done = wait(&engine, id).await;
    assert_eq!(done.status(), SagaStatus::Completed);
    assert!(rec.compensations(id).is_empty());
    assert_eq!(rec.net_effects(id), ["a", "b", "c", "p", "r"]);
    let (_, journal) = check_fold(&h, id).await;
    let audit = journal
        .iter()
        .find_map(|e| match &e.event {
            Event::OperatorResolved {
                step,
                resolution,
                operator,
                reason,
            } => Some((step.clone(), *resolution, operator.clone(), reason.clone())),
            _ => None,
        })
        .expect("the resolution is journaled");
    assert_eq!(
        audit,
        (
            "p".to_owned(),
            Resolution::Applied,
            "ops-kim".to_owned(),
            "capture confirmed in the gateway console".to_owned()
        )
    );
    // A finished saga cannot be resolved; a parked compensation cannot be "not applied".
    let err = engine
        .resolve(id, Resolution::Applied, "ops", "again")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        sagaflow_workflow_engine::EngineError::Refused(Refusal::NotNeedsAttention)
    ));
    let input = script(
        json!({"c": ["business:OUT_OF_STOCK"]}),
        json!({"b": ["business:NO"]}),
    );
    let (comp, _) = engine
        .start("s", "resolve-compensation", input, None, None)
        .await
        .unwrap();
    assert_eq!(
        wait(&engine, comp).await.status(),
        SagaStatus::NeedsAttention
    );
    let err = engine
        .resolve(comp, Resolution::NotApplied, "ops", "no")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        sagaflow_workflow_engine::EngineError::Refused(Refusal::NotApplicable)
    ));
    engine
        .resolve(comp, Resolution::Applied, "ops", "stock restored by hand")
        .await
        .unwrap();
    let done = wait(&engine, comp).await;
    assert_eq!(done.status(), SagaStatus::Compensated);
    // a is compensated by the saga; b was settled by hand (its effect is the operator's).
    assert_eq!(rec.net_effects(comp), ["b"]);
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn a_replica_with_a_clock_ahead_takes_no_live_lease(kind: Kind) {
    let h = open(kind, "skewed_clock").await;
    let holder_rec = Arc::new(Recorder::default());
    let skewed_rec = Arc::new(Recorder::default());
    let holder = Engine::builder(h.store.clone())
        .definition(scripted_with(
            "s",
            &holder_rec,
            crate::support::fast_retry(),
            5_000,
        ))
        .lease_ms(1_500)
        .poll_interval_ms(50)
        .build()
        .unwrap();
    // One hour ahead.
    let skewed = Engine::builder(h.store.clone())
        .definition(scripted_with(
            "s",
            &skewed_rec,
            crate::support::fast_retry(),
            5_000,
        ))
        .clock(SkewedClock { skew_ms: 3_600_000 })
        .lease_ms(1_500)
        .poll_interval_ms(10)
        .build()
        .unwrap();
    let input = script(json!({"a": ["slow:2500"]}), json!({}));
    let (id, _) = holder
        .start("s", "skew-1", input, None, None)
        .await
        .unwrap();
    let done = wait(&holder, id).await;
    assert_eq!(done.status(), SagaStatus::Completed);
    assert!(
        skewed_rec.calls_of(id).is_empty(),
        "the skewed replica ran {:?}",
        skewed_rec.calls_of(id)
    );
    let journal = h.store.journal(id).await.unwrap();
    assert!(
        journal
            .iter()
            .all(|e| !matches!(e.event, Event::Recovered { .. })),
        "no lease was taken over"
    );
    // The skewed replica's own time was corrected to the database's.
    assert!((skewed.now_ms() - holder.now_ms()).abs() < 2_000);
    holder.shutdown(Duration::from_secs(5)).await;
    skewed.shutdown(Duration::from_secs(5)).await;
}

async fn racing_starts_of_one_saga_id_create_it_once(kind: Kind) {
    let h = open(kind, "racing_starts").await;
    let rec = Arc::new(Recorder::default());
    let engines: Vec<Engine> = (0..2)
        .map(|_| h.engine(vec![scripted("s", &rec)]))
        .collect();
    for i in 0..20 {
        let id = SagaId::new();
        let key = format!("race-{i}");
        let starts = engines.iter().map(|engine| {
            let key = key.clone();
            async move {
                engine
                    .start_with_id(id, "s", &key, script(json!({}), json!({})), None, None)
                    .await
            }
        });
        let results = futures::future::join_all(starts).await;
        let created: Vec<bool> = results
            .into_iter()
            .map(|r| r.expect("no start fails").1)
            .collect();
        assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
        assert_eq!(wait(&engines[0], id).await.status(), SagaStatus::Completed);
        assert_eq!(rec.net_effects(id), ["a", "b", "c", "p", "r"]);
    }
    for engine in engines {
        engine.shutdown(Duration::from_secs(5)).await;
    }
}

/// The embedded system's restart (docs/architecture.md, "Recovery"): an engine that is the only
/// one on its store expires every lease it finds at start-up and resumes those sagas at once,
/// without the retry backoff they had earned; the old holder's late writes are fenced.
async fn a_sole_owner_takes_over_left_leases_at_once_without_their_backoff(kind: Kind) {
    let h = open(kind, "sole_owner").await;
    let rec = Arc::new(Recorder::default());
    // The "crashed" holder: it waits out a minute of backoff holding a minute-long lease.
    let holder = Engine::builder(h.store.clone())
        .definition(scripted_with("s", &rec, slow_retry(), 2_000))
        .lease_ms(60_000)
        .max_local_wait_ms(120_000)
        .build()
        .unwrap();
    let input = script(json!({"a": ["transient", "ok"]}), json!({}));
    let (id, _) = holder
        .start("s", "sole-1", input, None, None)
        .await
        .unwrap();
    let state = sagaflow_testkit::eventually("the first attempt to fail", WAIT, || async {
        let state = h.store.get(id).await.unwrap().unwrap();
        (state.attempt == 2).then_some(state)
    })
    .await;
    assert_eq!(state.lease_owner.as_deref(), Some(holder.owner()));
    assert!(state.next_attempt_at > holder.now_ms() + 30_000);
    let started = tokio::time::Instant::now();
    let successor = Engine::builder(h.store.clone())
        .definition(scripted_with("s", &rec, slow_retry(), 2_000))
        .lease_ms(5_000)
        .poll_interval_ms(50)
        .sole_owner(true)
        .build()
        .unwrap();
    let done = wait(&successor, id).await;
    assert_eq!(done.status(), SagaStatus::Completed);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "resumed at once, not after the lease or the backoff: {:?}",
        started.elapsed()
    );
    assert_eq!(rec.net_effects(id), ["a", "b", "c", "p", "r"]);
    let (_, journal) = check_fold(&h, id).await;
    assert!(
        journal
            .iter()
            .any(|e| matches!(e.event, Event::Recovered { .. }))
    );
    holder.shutdown(Duration::from_secs(5)).await;
    successor.shutdown(Duration::from_secs(5)).await;
    assert_eq!(check_fold(&h, id).await.0.status(), SagaStatus::Completed);
}
