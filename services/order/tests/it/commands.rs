//! PlaceOrder, ApplyCoupon, CompleteOrder and FailOrder: happy paths, business rejections with
//! their reasons, idempotency, and the outbox rows written with each change (docs/architecture.md,
//! "The order saga", "The service contract" and "Events").

use sagaflow_order::outbox::{self, EventType, OrderEvent};
use sagaflow_proto::order::v1::{
    ApplyCouponRequest, FailureReason, Order, OrderLine, OrderStatus, PlaceOrderRequest,
};
use sagaflow_testkit::{
    Kind,
    service::{assert_invalid, assert_reason},
};
use tonic::Code;

use crate::harness::{self, apply_req, fixed, new_key, percent, place_req};

async fn place_order_prices_and_writes_the_outbox(kind: Kind) {
    let t = harness::start(kind, "ord_place").await;
    let req = place_req(
        "req-1",
        "alice",
        &[("KB-001", 2), ("MS-002", 1)],
        Some("WELCOME10"),
        2_000,
    );
    let order = t.place(req.clone()).await;
    uuid::Uuid::parse_str(&order.order_id).unwrap();
    assert_eq!(order.saga_id, order.order_id);
    assert_eq!(order.user_id, "alice");
    assert_eq!(
        order.lines,
        vec![
            OrderLine {
                sku: "KB-001".into(),
                quantity: 2,
                unit_price: 45_000
            },
            OrderLine {
                sku: "MS-002".into(),
                quantity: 1,
                unit_price: 12_000
            },
        ]
    );
    assert_eq!(order.coupon_code, "WELCOME10");
    assert_eq!(
        (order.subtotal, order.discount, order.points, order.payable),
        (102_000, 0, 2_000, 100_000)
    );
    assert_eq!(order.status(), OrderStatus::Pending);
    assert_eq!(order.failure_reason(), FailureReason::Unspecified);
    assert!(order.created_at.is_some());
    assert_eq!(order.created_at, order.updated_at);

    // One transaction wrote the order, its lines, its history and its OrderCreated event.
    assert_eq!(t.counts().await, [1, 2, 1, 1, 1]);
    assert_eq!(
        t.history(&order.order_id).await,
        vec![("PENDING".into(), None)]
    );
    let events = outbox::events_of(&t.db, &order.order_id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, EventType::OrderCreated.as_str());
    assert_eq!(events[0].sequence, 1);
    assert_eq!(events[0].sent_at_ms, None);
    uuid::Uuid::parse_str(&events[0].event_id).unwrap();
    let OrderEvent::Created(created) =
        outbox::decode(&events[0].event_type, &events[0].payload).unwrap()
    else {
        panic!("not an OrderCreated event");
    };
    assert_eq!(created.order.as_ref(), Some(&order));
    // The card token is masked, and sealed for the payment service (docs/architecture.md,
    // "Card tokens").
    assert_eq!(created.payment_method, "tok_…");
    assert!(
        created.sealed_payment_method.starts_with("sealed:v1:"),
        "{}",
        created.sealed_payment_method
    );
    assert!(!created.sealed_payment_method.contains("tok_ok"));

    let got = t.get(&order.order_id).await;
    assert_eq!(got, order);

    // No coupon: empty code, and points may equal the subtotal (payable 0).
    let free = t
        .place(place_req(
            "req-2",
            "alice",
            &[("MS-002", 1)],
            Some(""),
            12_000,
        ))
        .await;
    assert_eq!(free.coupon_code, "");
    assert_eq!((free.subtotal, free.payable), (12_000, 0));
    t.stop().await;
}

async fn place_order_is_idempotent_on_request_id(kind: Kind) {
    let mut t = harness::start(kind, "ord_place_repeat").await;
    let req = place_req("same-request", "alice", &[("HD-003", 1)], None, 0);
    let first = t.place(req.clone()).await;
    let counts = t.counts().await;
    let again = t.place(req.clone()).await;
    assert_eq!(again, first);
    assert_eq!(t.counts().await, counts);

    // A repeat does not depend on Inventory.
    t.stop_inventory().await;
    let while_down = t.place(req.clone()).await;
    assert_eq!(while_down, first);

    // The same request_id for another request.
    let mut other: PlaceOrderRequest = req.clone();
    other.points = 1;
    let err = t.client.place_order(other).await.unwrap_err();
    assert_reason(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(t.counts().await, counts);
    t.stop().await;
}

async fn concurrent_place_orders_with_one_request_id_store_one_order(kind: Kind) {
    let t = harness::start(kind, "ord_place_race").await;
    let req = place_req("race", "alice", &[("KB-001", 1)], None, 0);
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut client = t.client.clone();
        let req = req.clone();
        calls.push(tokio::spawn(async move { client.place_order(req).await }));
    }
    let mut ids = Vec::new();
    for call in calls {
        let order = call.await.unwrap().unwrap().into_inner().order.unwrap();
        ids.push(order.order_id);
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(t.counts().await, [1, 1, 1, 1, 1]);
    t.stop().await;
}

async fn inventory_unreachable_is_unavailable_and_writes_nothing(kind: Kind) {
    let mut t = harness::start(kind, "ord_inv_down").await;
    t.stop_inventory().await;
    let err = t
        .client
        .place_order(place_req("down-1", "alice", &[("KB-001", 1)], None, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(t.counts().await, [0; 5]);
    t.stop().await;
}

async fn apply_coupon_discounts_and_caps(kind: Kind) {
    let t = harness::start(kind, "ord_coupon").await;
    // subtotal 90 000, points 85 000: room for a 5 000 discount at most.
    let order = t
        .place(place_req(
            "c-1",
            "alice",
            &[("KB-001", 2)],
            Some("BIG"),
            85_000,
        ))
        .await;
    let applied = t
        .apply("saga:2", &order.order_id, fixed(10_000))
        .await
        .unwrap();
    assert_eq!((applied.discount, applied.payable), (5_000, 0));
    assert_eq!(applied.status(), OrderStatus::Pending);
    // Repeat: same response, nothing changed; same key, other rule: ALREADY_EXISTS.
    let counts = t.counts().await;
    let again = t
        .apply("saga:2", &order.order_id, fixed(10_000))
        .await
        .unwrap();
    assert_eq!(again, applied);
    let err = t
        .apply("saga:2", &order.order_id, fixed(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(t.counts().await, counts);

    // A percentage rule: the discount is the one the Coupon service computed (10 % of 89 000,
    // capped at 5 000), taken as given.
    let order2 = t
        .place(place_req(
            "c-2",
            "alice",
            &[("HD-003", 1)],
            Some("TENPCT"),
            0,
        ))
        .await;
    let applied2 = t
        .apply_coupon(ApplyCouponRequest {
            discount: 5_000,
            ..apply_req("saga2:2", &order2.order_id, percent(10, 5_000))
        })
        .await
        .unwrap();
    assert_eq!((applied2.discount, applied2.payable), (5_000, 84_000));
    let applied2b = t
        .apply_coupon(ApplyCouponRequest {
            discount: 8_900,
            ..apply_req("saga2:2b", &order2.order_id, percent(10, 0))
        })
        .await
        .unwrap();
    assert_eq!((applied2b.discount, applied2b.payable), (8_900, 80_100));

    // A discount above the subtotal (89 000) is bad input, naming `discount`; the order does not
    // change (the answer is stored with its key, as every answer of an effect is).
    let before = t.counts().await;
    let above = ApplyCouponRequest {
        discount: 89_001,
        ..apply_req(&new_key(), &order2.order_id, percent(10, 0))
    };
    assert_invalid(
        t.apply_coupon(above).await,
        "discount",
        "above the subtotal",
    );
    assert_eq!(t.counts().await[..4], before[..4]);

    // No coupon on the order.
    let plain = t
        .place(place_req("c-3", "alice", &[("MS-002", 1)], None, 0))
        .await;
    let err = t
        .apply(&new_key(), &plain.order_id, fixed(1_000))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "ORDER_HAS_NO_COUPON");

    // Not PENDING any more.
    t.complete("saga2:7", &order2.order_id).await.unwrap();
    let err = t
        .apply("late:2", &order2.order_id, fixed(1))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "ORDER_NOT_PENDING");

    // Unknown order.
    let err = t
        .apply(&new_key(), &uuid::Uuid::new_v4().to_string(), fixed(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    t.stop().await;
}

async fn complete_order_writes_order_completed_once(kind: Kind) {
    let t = harness::start(kind, "ord_complete").await;
    let order = t
        .place(place_req("k-1", "alice", &[("KB-001", 1)], Some("C"), 0))
        .await;
    t.apply("s:2", &order.order_id, fixed(5_000)).await.unwrap();
    let completed = t.complete("s:7", &order.order_id).await.unwrap();
    assert_eq!(completed.status(), OrderStatus::Completed);
    assert_eq!((completed.discount, completed.payable), (5_000, 40_000));
    let counts = t.counts().await;

    let again = t.complete("s:7", &order.order_id).await.unwrap();
    assert_eq!(again, completed);
    let other_key = t.complete("s:7:operator", &order.order_id).await.unwrap();
    assert_eq!(other_key, completed);
    let mut counts_with_key = counts;
    counts_with_key[4] += 1;
    assert_eq!(
        t.counts().await,
        counts_with_key,
        "only the new key was stored"
    );

    let events = outbox::events_of(&t.db, &order.order_id).await.unwrap();
    let types: Vec<_> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.sequence))
        .collect();
    assert_eq!(types, [("OrderCreated", 1), ("OrderCompleted", 2)]);
    let OrderEvent::Completed(event) =
        outbox::decode(&events[1].event_type, &events[1].payload).unwrap()
    else {
        panic!("not an OrderCompleted event");
    };
    assert_eq!(event.order.as_ref(), Some(&completed));
    assert_eq!(
        t.history(&order.order_id).await,
        vec![("PENDING".into(), None), ("COMPLETED".into(), None)]
    );

    let err = t
        .fail("s:fail", &order.order_id, FailureReason::Internal)
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "ORDER_ALREADY_COMPLETED");

    let err = t
        .complete(&new_key(), &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    t.stop().await;
}

async fn fail_order_clears_the_discount_once(kind: Kind) {
    let t = harness::start(kind, "ord_fail").await;
    let order = t
        .place(place_req(
            "f-1",
            "alice",
            &[("KB-001", 2)],
            Some("C"),
            10_000,
        ))
        .await;
    t.apply("s:2", &order.order_id, fixed(5_000)).await.unwrap();
    let failed = t
        .fail("s:fail", &order.order_id, FailureReason::OutOfStock)
        .await
        .unwrap();
    let expected = Order {
        status: OrderStatus::Failed.into(),
        failure_reason: FailureReason::OutOfStock.into(),
        discount: 0,
        payable: 80_000,
        updated_at: failed.updated_at,
        ..order.clone()
    };
    assert_eq!(failed, expected);
    let counts = t.counts().await;

    // Repeat, and another key with another reason: unchanged (the first reason stays).
    let again = t
        .fail("s:fail", &order.order_id, FailureReason::OutOfStock)
        .await
        .unwrap();
    assert_eq!(again, failed);
    let other = t
        .fail("s:fail2", &order.order_id, FailureReason::Canceled)
        .await
        .unwrap();
    assert_eq!(other, failed);
    // Same key, other reason.
    let err = t
        .fail("s:fail", &order.order_id, FailureReason::Internal)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let mut counts_with_key = counts;
    counts_with_key[4] += 1;
    assert_eq!(t.counts().await, counts_with_key);

    let events = outbox::events_of(&t.db, &order.order_id).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].event_type, EventType::OrderFailed.as_str());
    let OrderEvent::Failed(event) =
        outbox::decode(&events[1].event_type, &events[1].payload).unwrap()
    else {
        panic!("not an OrderFailed event");
    };
    assert_eq!(event.order.as_ref(), Some(&failed));
    assert_eq!(
        t.history(&order.order_id).await,
        vec![
            ("PENDING".into(), None),
            ("FAILED".into(), Some("OUT_OF_STOCK".into()))
        ]
    );

    let err = t.complete("s:7", &order.order_id).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "ORDER_ALREADY_FAILED");
    let err = t
        .apply("s:2:late", &order.order_id, fixed(1))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "ORDER_NOT_PENDING");
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    place_order_prices_and_writes_the_outbox,
    place_order_is_idempotent_on_request_id,
    concurrent_place_orders_with_one_request_id_store_one_order,
    inventory_unreachable_is_unavailable_and_writes_nothing,
    apply_coupon_discounts_and_caps,
    complete_order_writes_order_completed_once,
    fail_order_clears_the_discount_once,
);
