//! The in-memory store: the same conformance suite as SQLite and PostgreSQL, the engine on it,
//! and the engine on paused tokio time (retry backoff of seconds, run without waiting).

use std::{sync::Arc, time::Duration};

use sagaflow_workflow_engine::{
    Engine, MemorySagaStore, SagaStatus, SagaStore, clock::TokioClock, journal::Event,
    store::conformance,
};
use serde_json::json;

use crate::support::{Recorder, WAIT, event_types, fixed_retry, script, scripted, scripted_with};

fn engine_on(
    store: &Arc<MemorySagaStore>,
    definitions: Vec<sagaflow_workflow_engine::SagaDefinition>,
) -> Engine {
    let mut builder = Engine::builder(store.clone())
        .owner("memory-test")
        .lease_ms(5_000)
        .poll_interval_ms(50);
    for d in definitions {
        builder = builder.definition(d);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn the_memory_store_passes_the_conformance_suite() {
    let store = MemorySagaStore::new();
    conformance::run(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_complete_and_compensate_on_the_memory_store() {
    let store = Arc::new(MemorySagaStore::new());
    let rec = Arc::new(Recorder::default());
    let engine = engine_on(&store, vec![scripted("s", &rec)]);
    let (ok, _) = engine
        .start("s", "memory-ok", script(json!({}), json!({})), None, None)
        .await
        .unwrap();
    let (failing, _) = engine
        .start(
            "s",
            "memory-fail",
            script(json!({"c": ["business:OUT_OF_STOCK"]}), json!({})),
            None,
            None,
        )
        .await
        .unwrap();
    let done = engine.wait_finished(ok, WAIT).await.unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    assert_eq!(rec.actions(ok), ["a", "b", "c", "p", "r"]);
    let compensated = engine.wait_finished(failing, WAIT).await.unwrap();
    assert_eq!(compensated.status(), SagaStatus::Compensated);
    assert_eq!(compensated.failure_reason.as_deref(), Some("OUT_OF_STOCK"));
    assert_eq!(rec.compensations(failing), ["b", "a"]);
    assert_eq!(rec.finalizer_calls(failing).len(), 1);
    for id in [ok, failing] {
        conformance::assert_row_is_fold(store.as_ref(), id).await;
    }
    let journal = store.journal(ok).await.unwrap();
    assert_eq!(event_types(&journal).last(), Some(&"saga_completed"));
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Backoff of 1, 2, 4 and 8 s (15 s in all) on paused tokio time: the engine and the store share
/// a clock that moves only with tokio's, so the test takes no real time, and the journal shows
/// exactly the scheduled delays — also across the released lease of the longer waits.
#[tokio::test(start_paused = true)]
async fn retry_backoff_runs_on_paused_time() {
    let wall = std::time::Instant::now();
    let clock = TokioClock::new(1_700_000_000_000);
    let store = Arc::new(MemorySagaStore::with_clock(clock));
    let rec = Arc::new(Recorder::default());
    let engine = Engine::builder(store.clone())
        .owner("paused")
        .lease_ms(5_000)
        .poll_interval_ms(50)
        .clock(clock)
        .definition(scripted_with("backoff", &rec, fixed_retry(1_000), 2_000))
        .build()
        .unwrap();
    let (id, _) = engine
        .start(
            "backoff",
            "paused-1",
            script(json!({"b": vec!["transient"; 4]}), json!({})),
            None,
            None,
        )
        .await
        .unwrap();
    let done = engine
        .wait_finished(id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.status(), SagaStatus::Completed);
    let journal = conformance::assert_row_is_fold(store.as_ref(), id).await;
    assert_eq!(journal.status(), SagaStatus::Completed);
    let journal = store.journal(id).await.unwrap();
    let failures: Vec<(usize, i64, i64)> = journal
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.event {
            Event::StepFailed {
                next_attempt_at: Some(at),
                ..
            } => Some((i, e.at, *at)),
            _ => None,
        })
        .collect();
    let gaps: Vec<i64> = failures.iter().map(|(_, failed, at)| at - failed).collect();
    assert_eq!(gaps, [1_000, 2_000, 4_000, 8_000]);
    // Each next attempt of b was answered no earlier than its scheduled time.
    for (i, _, at) in &failures {
        let answered = journal[i + 1..]
            .iter()
            .find(|e| {
                matches!(&e.event, Event::StepFailed { step, .. } | Event::StepSucceeded { step, .. } if step == "b")
            })
            .unwrap();
        assert!(
            answered.at >= *at,
            "answered at {} before {at}",
            answered.at
        );
    }
    // The longer waits released the lease and the poller took the saga back.
    let types = event_types(&journal);
    assert!(types.contains(&"lease_released"), "{types:?}");
    assert!(
        journal.last().unwrap().at - journal[0].at >= 15_000,
        "15 s of backoff passed on the saga's clock"
    );
    assert!(
        wall.elapsed() < Duration::from_secs(10),
        "paused time: the waits took {:?} of real time",
        wall.elapsed()
    );
    assert_eq!(rec.calls_of(id).iter().filter(|c| c.step == "b").count(), 5);
    engine.shutdown(Duration::from_secs(5)).await;
}
