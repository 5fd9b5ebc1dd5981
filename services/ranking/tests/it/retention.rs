//! Retention of the ranking database (docs/operations.md, "Retention"): one round deletes exactly
//! the inbox rows and idempotency records older than their windows; the sales they counted stay,
//! and a redelivery of a live event still changes nothing.

use std::time::Duration;

use sagaflow_server::{
    db::now_ms,
    retention::{DEFAULT_IDEMPOTENCY_MS, DEFAULT_INBOX_MS, PruneJob, Retention},
};
use sagaflow_testkit::Kind;
use tokio_util::sync::CancellationToken;

use crate::harness::{self, completed};

async fn inbox_ids(t: &harness::TestRanking) -> Vec<String> {
    sqlx::query_scalar("SELECT event_id FROM inbox ORDER BY event_id")
        .fetch_all(t.db.pool())
        .await
        .unwrap()
}

async fn retention_prunes_exactly_the_expired_inbox_rows(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_retention").await;
    let day = 86_400_000_i64;
    let now = now_ms();
    let events: Vec<_> = (0..6).map(|_| completed(&[("KB-001", 1)])).collect();
    for event in &events {
        t.client
            .record_order_completed(event.clone())
            .await
            .unwrap();
    }
    // The first four were counted 8 days ago, the last two an hour ago.
    let (expired, live) = events.split_at(4);
    for (event, age) in expired
        .iter()
        .map(|e| (e, 8 * day))
        .chain(live.iter().map(|e| (e, day / 24)))
    {
        sqlx::query("UPDATE inbox SET recorded_at = $1 WHERE event_id = $2")
            .bind(now - age)
            .bind(&event.event_id)
            .execute(t.db.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE idempotency_keys SET created_at = $1 WHERE idempotency_key = $2")
            .bind(now - age)
            .bind(&event.event_id)
            .execute(t.db.pool())
            .await
            .unwrap();
    }
    let top_before = t.top(0).await;
    let retention = Retention::new(
        vec![
            PruneJob::idempotency_keys(
                "ranking",
                t.db.clone(),
                Duration::from_millis(DEFAULT_IDEMPOTENCY_MS),
            ),
            sagaflow_ranking::inbox_prune_job(
                t.db.clone(),
                Duration::from_millis(DEFAULT_INBOX_MS),
            ),
        ],
        3,
    );
    let report = retention.run_round(now, &CancellationToken::new()).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.rows("ranking", "inbox"), 4);
    assert_eq!(report.rows("ranking", "idempotency_keys"), 4);
    let mut live_ids: Vec<String> = live.iter().map(|e| e.event_id.clone()).collect();
    live_ids.sort();
    assert_eq!(inbox_ids(&t).await, live_ids);
    assert_eq!(t.counts().await, [2, 1, 2]);
    // The sales stay; a redelivery of a live event applies nothing.
    assert_eq!(t.top(0).await, top_before);
    for event in live {
        let again = t
            .client
            .record_order_completed(event.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(!again.applied);
    }
    assert_eq!(t.top(0).await, top_before);
    let again = retention.run_round(now, &CancellationToken::new()).await;
    assert_eq!(again.rows("ranking", "inbox"), 0);
    t.stop().await;
}

sagaflow_testkit::both_backends!(retention_prunes_exactly_the_expired_inbox_rows);
