//! Retention of finished sagas (docs/operations.md, "Retention") on both stores: sagas the
//! engine drove to every status, some finished long ago; one retention round deletes exactly
//! the COMPLETED and COMPENSATED sagas older than the window, with their journals, and leaves
//! every RUNNING, COMPENSATING and NEEDS_ATTENTION saga (however old) and every recent one as it
//! was.

use std::{sync::Arc, time::Duration};

use sagaflow_server::{
    db::now_ms,
    retention::{DEFAULT_SAGAS_MS, Retention},
};
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{
    RetryPolicy, SagaId, SagaState, SagaStatus, SagaStore, definition::Jitter,
    store::finished_sagas_job,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, Recorder, WAIT, open, script, scripted, scripted_with};

sagaflow_testkit::both_backends!(retention_deletes_exactly_the_old_finished_sagas);

/// Waits until saga `id` rests (no lease) in `status`, waiting for a retry.
async fn wait_resting(h: &Harness, id: SagaId, status: SagaStatus) -> SagaState {
    sagaflow_testkit::eventually(&format!("{id} to rest in {status}"), WAIT, || async {
        let state = h.store.get(id).await.unwrap().unwrap();
        (state.status() == status && state.lease_owner.is_none() && state.attempt >= 2)
            .then_some(state)
    })
    .await
}

async fn retention_deletes_exactly_the_old_finished_sagas(kind: Kind) {
    let h = open(kind, "retention").await;
    let rec = Arc::new(Recorder::default());
    // "slow": a transient failure waits 10 minutes for its retry (the saga stays active).
    let engine = h.engine(vec![
        scripted("s", &rec),
        scripted_with(
            "slow",
            &rec,
            RetryPolicy::new(10, 600_000, 600_000).with_jitter(Jitter::None),
            2_000,
        ),
    ]);
    let start = |definition: &'static str, key: &'static str, plan, compensation| {
        let engine = engine.clone();
        async move {
            engine
                .start(definition, key, script(plan, compensation), None, None)
                .await
                .unwrap()
                .0
        }
    };
    let completed_old = start("s", "completed-old", json!({}), json!({})).await;
    let compensated_old = start(
        "s",
        "compensated-old",
        json!({"c": ["business"]}),
        json!({}),
    )
    .await;
    let completed_recent = start("s", "completed-recent", json!({}), json!({})).await;
    let parked_old = start(
        "s",
        "parked-old",
        json!({"c": ["business"]}),
        json!({"b": ["business:CANNOT_RESTORE"]}),
    )
    .await;
    let running_old = start(
        "slow",
        "running-old",
        json!({"a": ["transient"]}),
        json!({}),
    )
    .await;
    let compensating_old = start(
        "slow",
        "compensating-old",
        json!({"b": ["business"]}),
        json!({"a": ["transient"]}),
    )
    .await;
    for (id, status) in [
        (completed_old, SagaStatus::Completed),
        (compensated_old, SagaStatus::Compensated),
        (completed_recent, SagaStatus::Completed),
        (parked_old, SagaStatus::NeedsAttention),
    ] {
        assert_eq!(
            engine.wait_finished(id, WAIT).await.unwrap().status(),
            status
        );
    }
    wait_resting(&h, running_old, SagaStatus::Running).await;
    wait_resting(&h, compensating_old, SagaStatus::Compensating).await;

    // Everything but `completed_recent` finished (or last moved) 31 days ago.
    let now = now_ms();
    let old = now - 31 * 86_400_000;
    for id in [
        completed_old,
        compensated_old,
        parked_old,
        running_old,
        compensating_old,
    ] {
        sqlx::query("UPDATE sagas SET created_at = $1, updated_at = $1 WHERE id = $2")
            .bind(old)
            .bind(id.to_string())
            .execute(h.db.pool())
            .await
            .unwrap();
    }
    let journal_len = |id| {
        let store = h.store.clone();
        async move { store.journal(id).await.unwrap().len() as u64 }
    };
    let expired_entries = journal_len(completed_old).await + journal_len(compensated_old).await;
    let kept = [completed_recent, parked_old, running_old, compensating_old];
    let mut before = Vec::new();
    for id in kept {
        before.push((
            h.store.get(id).await.unwrap().unwrap(),
            h.store.journal(id).await.unwrap(),
        ));
    }

    let store: Arc<dyn SagaStore> = h.store.clone();
    let retention = Retention::new(
        vec![finished_sagas_job(
            store,
            Duration::from_millis(DEFAULT_SAGAS_MS),
        )],
        1_000,
    );
    let report = retention.run_round(now, &CancellationToken::new()).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.rows("workflow", "sagas"), 2);
    assert_eq!(report.rows("workflow", "saga_journal"), expired_entries);
    for id in [completed_old, compensated_old] {
        assert!(h.store.get(id).await.unwrap().is_none(), "{id} pruned");
        assert!(h.store.journal(id).await.unwrap().is_empty());
    }
    for (id, (state, journal)) in kept.iter().zip(&before) {
        assert_eq!(&h.store.get(*id).await.unwrap().unwrap(), state);
        assert_eq!(&h.store.journal(*id).await.unwrap(), journal);
    }
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sagas")
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    assert_eq!(left, 4);
    // A second round finds nothing; the parked saga still resumes and finishes.
    let again = retention.run_round(now, &CancellationToken::new()).await;
    assert_eq!(again.rows("workflow", "sagas"), 0);
    engine.retry(parked_old).await.unwrap();
    assert_eq!(
        engine
            .wait_finished(parked_old, WAIT)
            .await
            .unwrap()
            .status(),
        SagaStatus::Compensated
    );
    engine.shutdown(Duration::from_secs(5)).await;
}
