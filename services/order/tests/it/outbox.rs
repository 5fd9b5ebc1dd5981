//! The outbox API the relay uses (docs/architecture.md, "Events"): pending events in order, per
//! aggregate in sequence order, marked sent once; the backlog the relay samples for the metrics.

use sagaflow_order::outbox::{self, Backlog, EventType};
use sagaflow_proto::order::v1::{
    FailureReason, ListDeadLettersRequest, OrderStatus,
    outbox_admin_service_client::OutboxAdminServiceClient,
};
use sagaflow_server::error::violated_fields;
use sagaflow_testkit::Kind;
use tonic::Code;

use crate::harness::{self, place_req};

async fn pending_in_order_and_marked_once(kind: Kind) {
    let t = harness::start(kind, "ord_outbox").await;
    assert!(outbox::pending(&t.db, 100).await.unwrap().is_empty());
    assert_eq!(outbox::backlog(&t.db).await.unwrap(), Backlog::default());
    let a = t
        .place(place_req("o-a", "alice", &[("KB-001", 1)], None, 0))
        .await;
    let b = t
        .place(place_req("o-b", "alice", &[("MS-002", 1)], None, 0))
        .await;
    t.complete("a:7", &a.order_id).await.unwrap();
    t.fail("b:fail", &b.order_id, FailureReason::OutOfStock)
        .await
        .unwrap();

    let pending = outbox::pending(&t.db, 100).await.unwrap();
    let seen: Vec<_> = pending
        .iter()
        .map(|e| {
            (
                e.aggregate_id.clone(),
                EventType::parse(&e.event_type),
                e.sequence,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (a.order_id.clone(), Some(EventType::OrderCreated), 1),
            (b.order_id.clone(), Some(EventType::OrderCreated), 1),
            (a.order_id.clone(), Some(EventType::OrderCompleted), 2),
            (b.order_id.clone(), Some(EventType::OrderFailed), 2),
        ]
    );
    assert!(pending.windows(2).all(|w| w[0].position < w[1].position));
    for event in &pending {
        outbox::decode(&event.event_type, &event.payload).unwrap();
        // No OpenTelemetry in this test: no trace context to store.
        assert_eq!(event.traceparent, None);
    }
    assert_eq!(
        outbox::backlog(&t.db).await.unwrap(),
        Backlog {
            pending: 4,
            oldest_created_at_ms: pending.iter().map(|e| e.created_at_ms).min(),
        }
    );

    // A limit, then marking the first two sent.
    let first_two = outbox::pending(&t.db, 2).await.unwrap();
    assert_eq!(first_two, pending[..2]);
    assert!(outbox::pending(&t.db, 0).await.unwrap().is_empty());
    let ids: Vec<String> = first_two.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(outbox::mark_sent(&t.db, &ids).await.unwrap(), 2);
    assert_eq!(
        outbox::mark_sent(&t.db, &ids).await.unwrap(),
        0,
        "marked once"
    );
    assert_eq!(
        outbox::mark_sent(&t.db, &["not-an-event".to_owned()])
            .await
            .unwrap(),
        0
    );
    let rest = outbox::pending(&t.db, 100).await.unwrap();
    assert_eq!(rest, pending[2..]);
    assert_eq!(
        outbox::backlog(&t.db).await.unwrap(),
        Backlog {
            pending: 2,
            oldest_created_at_ms: rest.iter().map(|e| e.created_at_ms).min(),
        }
    );
    let a_events = outbox::events_of(&t.db, &a.order_id).await.unwrap();
    assert!(a_events[0].sent_at_ms.is_some());
    assert!(a_events[1].sent_at_ms.is_none());
    t.stop().await;
}

/// 300 events that can never be delivered (payloads that do not decode) at the head of the
/// outbox: the good events behind them are still read, the bad ones are dead-lettered once and
/// never read again, and the backlog no longer counts them.
async fn undecodable_events_are_dead_lettered_not_read_forever(kind: Kind) {
    let t = harness::start(kind, "ord_outbox_dead").await;
    for i in 0..300 {
        sqlx::query(
            "INSERT INTO outbox (event_id, aggregate_id, sequence, event_type, payload, created_at) \
             VALUES ($1, $2, 1, 'OrderCreated', $3, 0)",
        )
        .bind(format!("00000000-0000-4000-8000-{i:012}"))
        .bind(format!("bad-order-{i}"))
        .bind(vec![0xff_u8, 0xff, 0xff])
        .execute(t.db.pool())
        .await
        .unwrap();
    }
    let good = t
        .place(place_req("o-good", "alice", &[("KB-001", 1)], None, 0))
        .await;
    let pending = outbox::pending(&t.db, 256).await.unwrap();
    assert_eq!(pending.len(), 1, "only the good event is delivered");
    assert_eq!(pending[0].aggregate_id, good.order_id);
    assert_eq!(pending[0].event_type, EventType::OrderCreated.as_str());
    let dead = outbox::dead_letters(&t.db, 1_000).await.unwrap();
    assert_eq!(dead.len(), 300);
    assert!(dead.iter().all(|d| d.reason.contains("does not decode")));
    assert_eq!(outbox::backlog(&t.db).await.unwrap().pending, 1);
    // Read again: the dead-lettered rows are not even looked at.
    assert_eq!(outbox::pending(&t.db, 256).await.unwrap(), pending);
    assert_eq!(outbox::dead_letters(&t.db, 1_000).await.unwrap(), dead);

    // OutboxAdminService/ListDeadLetters pages through them, oldest first.
    let mut admin = OutboxAdminServiceClient::connect(t.server.url())
        .await
        .unwrap();
    let (mut listed, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = admin
            .list_dead_letters(ListDeadLettersRequest {
                page_size: 128,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        listed.extend(page.dead_letters);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let ids: Vec<&str> = listed.iter().map(|d| d.event_id.as_str()).collect();
    let expected: Vec<&str> = dead.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, expected);
    assert!(listed.iter().all(|d| d.attempts == 0
        && d.event_type == "OrderCreated"
        && d.last_error.contains("does not decode")));
    for (page_size, page_token, field) in [
        (1_001, String::new(), "page_size"),
        (-1, String::new(), "page_size"),
        (10, "zz".to_owned(), "page_token"),
        (
            10,
            sagaflow_server::validate::encode_page_token("x"),
            "page_token",
        ),
    ] {
        let err = admin
            .list_dead_letters(ListDeadLettersRequest {
                page_size,
                page_token,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err), vec![field.to_owned()]);
    }
    t.stop().await;
}

/// An OrderCreated whose payload does not decode was never delivered, so no saga can exist for
/// its order: the order is failed (reason INTERNAL) with the dead letter, in one transaction.
async fn an_undecodable_order_created_fails_its_order(kind: Kind) {
    let t = harness::start(kind, "ord_outbox_dead_order").await;
    let order = t
        .place(place_req("o-corrupt", "alice", &[("KB-001", 1)], None, 0))
        .await;
    sqlx::query("UPDATE outbox SET payload = $1 WHERE aggregate_id = $2")
        .bind(vec![0xff_u8, 0xff])
        .bind(&order.order_id)
        .execute(t.db.pool())
        .await
        .unwrap();
    let pending = outbox::pending(&t.db, 256).await.unwrap();
    // Only the order's new OrderFailed event (its OrderCreated is dead-lettered).
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event_type, EventType::OrderFailed.as_str());
    assert_eq!(pending[0].sequence, 2);
    let got = t.get(&order.order_id).await;
    assert_eq!(got.status(), OrderStatus::Failed);
    assert_eq!(got.failure_reason(), FailureReason::Internal);
    let dead = outbox::dead_letters(&t.db, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].aggregate_id, order.order_id);
    assert_eq!(
        t.history(&order.order_id).await,
        vec![
            ("PENDING".to_owned(), None),
            ("FAILED".to_owned(), Some("INTERNAL".to_owned()))
        ]
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    pending_in_order_and_marked_once,
    undecodable_events_are_dead_lettered_not_read_forever,
    an_undecodable_order_created_fails_its_order
);
