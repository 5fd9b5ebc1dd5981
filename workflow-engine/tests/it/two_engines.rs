//! Two engines on one PostgreSQL database finish 1,000 sagas: no step runs twice at once, no step
//! starts after its saga ended, every state row equals the fold of its journal.

use std::{sync::Arc, time::Duration};

use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{
    Engine, SagaId, SagaStatus, SagaStore,
    definition::CallKind,
    store::{ListFilter, conformance},
};
use serde_json::json;

use crate::support::{Recorder, ended_at, fixed_retry, open, script, scripted_with};

const SAGAS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_postgres_database_finish_1000_sagas() {
    let h = open(Kind::Postgres, "two_engines").await;
    let rec = Arc::new(Recorder::default());
    let engine = |owner: &str| {
        Engine::builder(h.store.clone())
            .definition(scripted_with("s", &rec, fixed_retry(30), 2_000))
            .owner(owner)
            .lease_ms(5_000)
            .poll_interval_ms(20)
            // Every retry wait releases the lease, so the poller of either engine takes it.
            .max_local_wait_ms(0)
            .build()
            .unwrap()
    };
    let engines = [engine("engine-a"), engine("engine-b")];
    let started = tokio::time::Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..SAGAS {
        let engine = engines[i % 2].clone();
        let input = match i % 10 {
            0 => script(json!({"b": ["transient"]}), json!({})),
            3 => script(
                json!({"c": ["business:OUT_OF_STOCK"]}),
                json!({"a": ["transient"]}),
            ),
            7 => script(json!({"r": ["transient", "transient"]}), json!({})),
            _ => script(json!({}), json!({})),
        };
        starts.spawn(async move {
            engine
                .start("s", &format!("two-{i}"), input, None, None)
                .await
        });
        if starts.len() >= 64 {
            starts.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(res) = starts.join_next().await {
        res.unwrap().unwrap();
    }
    // Wait (bounded) until no saga is active (one row of a listing says whether any is).
    sagaflow_testkit::eventually("no saga to be active", Duration::from_secs(50), || async {
        for status in [SagaStatus::Running, SagaStatus::Compensating] {
            let active = h
                .store
                .list(&ListFilter {
                    status: Some(status),
                    limit: 1,
                    ..ListFilter::default()
                })
                .await
                .unwrap();
            if !active.is_empty() {
                return None;
            }
        }
        Some(())
    })
    .await;
    let elapsed = started.elapsed();
    for e in &engines {
        e.shutdown(Duration::from_secs(5)).await;
    }
    assert!(
        rec.overlaps().is_empty(),
        "a step ran twice at once: {:?}",
        rec.overlaps()
    );
    let all = h
        .store
        .list(&ListFilter {
            limit: 10_000,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), SAGAS);
    let calls = rec.calls();
    let mut by_saga: std::collections::HashMap<SagaId, Vec<i64>> = std::collections::HashMap::new();
    for c in &calls {
        by_saga.entry(c.saga_id).or_default().push(c.started_ms);
    }
    let mut recovered_by_other = 0;
    for saga in &all {
        let i: usize = saga
            .business_key
            .trim_start_matches("two-")
            .parse()
            .unwrap();
        let expected = if i % 10 == 3 {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        assert_eq!(saga.status(), expected, "saga {i}");
        let row = conformance::assert_row_is_fold(h.store.as_ref(), saga.id).await;
        let journal = h.store.journal(saga.id).await.unwrap();
        let ended = ended_at(&journal).expect("saga ended");
        for started in &by_saga[&saga.id] {
            assert!(
                *started <= ended,
                "a step of saga {i} started after it ended"
            );
        }
        let owners: std::collections::HashSet<String> = journal
            .iter()
            .filter_map(|e| match &e.event {
                sagaflow_workflow_engine::journal::Event::LeaseAcquired { owner, .. } => {
                    Some(owner.clone())
                }
                _ => None,
            })
            .collect();
        if owners.len() > 1 {
            recovered_by_other += 1;
        }
        assert_eq!(row.lease_owner, None);
    }
    // Each action of a completed saga succeeded exactly once.
    let succeeded_actions = calls.iter().filter(|c| c.kind == CallKind::Action).count();
    assert!(succeeded_actions >= SAGAS * 3);
    assert!(
        recovered_by_other > 0,
        "some retried sagas were claimed by the other engine"
    );
    assert!(elapsed < Duration::from_secs(50));
    eprintln!(
        "two engines: {SAGAS} sagas in {elapsed:?}; {recovered_by_other} moved between engines; {} commits",
        h.store.commits()
    );
}
