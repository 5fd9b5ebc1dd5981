//! OrderCompleted events are counted once (the inbox of docs/architecture.md, "Events"), and
//! TopProducts ranks by units sold, then sku.

use sagaflow_ranking::domain::{self, CompletedOrder, SaleLine};
use sagaflow_server::error::error_reason;
use sagaflow_testkit::Kind;
use tonic::Code;

use crate::harness::{self, completed, sales};

async fn records_and_ranks(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_happy").await;
    assert!(t.top(0).await.is_empty());
    let events = [
        completed(&[("KB-001", 2), ("MS-002", 1)]),
        completed(&[("MS-002", 1), ("HD-003", 4)]),
        completed(&[("KB-001", 2)]),
        completed(&[("AA-000", 1)]),
    ];
    for event in &events {
        let resp = t
            .client
            .record_order_completed(event.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(resp.applied);
    }
    // Ties (KB-001 and HD-003 both 4 units) are broken by sku.
    assert_eq!(
        t.top(0).await,
        vec![
            sales("HD-003", 4, 1),
            sales("KB-001", 4, 2),
            sales("MS-002", 2, 2),
            sales("AA-000", 1, 1),
        ]
    );
    assert_eq!(
        t.top(2).await,
        vec![sales("HD-003", 4, 1), sales("KB-001", 4, 2)]
    );
    assert_eq!(t.counts().await, [4, 4, 4]);
    t.stop().await;
}

async fn limit_zero_means_ten_and_order_matches_the_rule(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_limit").await;
    let mut expected = Vec::new();
    // 12 skus with mixed case (byte order: upper case first) and repeated totals.
    for i in 0..12_i32 {
        let sku = if i % 2 == 0 {
            format!("sku-{i:02}")
        } else {
            format!("SKU-{i:02}")
        };
        let quantity = 1 + i % 3;
        let req = completed(&[(sku.as_str(), quantity)]);
        domain::add_order(
            &mut expected,
            &CompletedOrder {
                order_id: String::new(),
                lines: vec![SaleLine {
                    sku: sku.clone(),
                    units: i64::from(quantity),
                }],
            },
        );
        t.client.record_order_completed(req).await.unwrap();
    }
    expected.sort_by(domain::rank);
    let top = t.top(0).await;
    assert_eq!(top.len(), 10);
    let expected: Vec<_> = expected
        .iter()
        .map(|s| sales(&s.sku, s.units_sold, s.orders))
        .collect();
    assert_eq!(top, expected[..10]);
    assert_eq!(t.top(1000).await, expected);
    t.stop().await;
}

async fn redelivery_changes_nothing(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_redelivery").await;
    let event = completed(&[("KB-001", 3)]);
    let first = t
        .client
        .record_order_completed(event.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.applied);
    let counts = t.counts().await;
    for _ in 0..3 {
        let again = t
            .client
            .record_order_completed(event.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(!again.applied, "a redelivery applies nothing");
    }
    assert_eq!(t.top(0).await, vec![sales("KB-001", 3, 1)]);
    assert_eq!(t.counts().await, counts);

    // The same order under another event id is not counted twice either.
    let mut other_event = event.clone();
    other_event.event_id = harness::new_id();
    let resp = t
        .client
        .record_order_completed(other_event)
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.applied);
    assert_eq!(t.top(0).await, vec![sales("KB-001", 3, 1)]);
    t.stop().await;
}

async fn event_id_reused_for_another_event_is_already_exists(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_reuse").await;
    let event = completed(&[("KB-001", 3)]);
    t.client
        .record_order_completed(event.clone())
        .await
        .unwrap();
    let counts = t.counts().await;
    let mut other = completed(&[("KB-001", 5)]);
    other.event_id = event.event_id.clone();
    let err = t.client.record_order_completed(other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        error_reason(&err).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(t.counts().await, counts);
    assert_eq!(t.top(0).await, vec![sales("KB-001", 3, 1)]);
    t.stop().await;
}

async fn concurrent_redeliveries_apply_once(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_race").await;
    let event = completed(&[("KB-001", 2), ("MS-002", 1)]);
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut client = t.client.clone();
        let event = event.clone();
        calls.push(tokio::spawn(async move {
            client.record_order_completed(event).await
        }));
    }
    let mut applied = 0;
    for call in calls {
        if call.await.unwrap().unwrap().into_inner().applied {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(
        t.top(0).await,
        vec![sales("KB-001", 2, 1), sales("MS-002", 1, 1)]
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    records_and_ranks,
    limit_zero_means_ten_and_order_matches_the_rule,
    redelivery_changes_nothing,
    event_id_reused_for_another_event_is_already_exists,
    concurrent_redeliveries_apply_once,
);
