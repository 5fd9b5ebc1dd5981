//! Every invalid input is INVALID_ARGUMENT naming the field, and nothing is written
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::{
    order::v1::{OrderLine, OrderStatus},
    ranking::v1::{RecordOrderCompletedRequest, TopProductsRequest},
};
use sagaflow_testkit::{Kind, service::assert_invalid, with};

use crate::harness::{self, completed, sales};

fn order_mut(req: &mut RecordOrderCompletedRequest) -> &mut sagaflow_proto::order::v1::Order {
    req.event.as_mut().unwrap().order.as_mut().unwrap()
}

async fn invalid_inputs_write_nothing(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_invalid").await;
    t.client
        .record_order_completed(completed(&[("KB-001", 1)]))
        .await
        .unwrap();
    let counts = t.counts().await;
    let base = completed(&[("KB-001", 2), ("MS-002", 1)]);
    let long = "x".repeat(257);
    let many: Vec<(String, i32)> = (0..101).map(|i| (format!("S-{i}"), 1)).collect();
    let many: Vec<(&str, i32)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let cases = [
        (
            with(base.clone(), |r| r.event_id.clear()),
            "event_id",
            "empty event id",
        ),
        (
            with(base.clone(), |r| r.event_id = "evt-1".into()),
            "event_id",
            "malformed event id",
        ),
        (
            with(base.clone(), |r| r.event = None),
            "event",
            "missing event",
        ),
        (
            with(base.clone(), |r| r.event.as_mut().unwrap().order = None),
            "event.order",
            "missing order",
        ),
        (
            with(base.clone(), |r| order_mut(r).order_id = "o-1".into()),
            "event.order.order_id",
            "malformed order id",
        ),
        (
            with(base.clone(), |r| {
                order_mut(r).status = OrderStatus::Pending.into()
            }),
            "event.order.status",
            "order not completed",
        ),
        (
            with(base.clone(), |r| order_mut(r).lines.clear()),
            "event.order.lines",
            "no lines",
        ),
        (completed(&many), "event.order.lines", "101 lines"),
        (
            with(base.clone(), |r| order_mut(r).lines[1].sku.clear()),
            "event.order.lines[1].sku",
            "empty sku",
        ),
        (
            with(base.clone(), |r| order_mut(r).lines[0].sku = long.clone()),
            "event.order.lines[0].sku",
            "sku over 256 bytes",
        ),
        (
            with(base.clone(), |r| {
                order_mut(r).lines[1].sku = "KB-001".into()
            }),
            "event.order.lines[1].sku",
            "duplicate sku",
        ),
        (
            with(base.clone(), |r| order_mut(r).lines[0].quantity = 0),
            "event.order.lines[0].quantity",
            "zero quantity",
        ),
        (
            with(base.clone(), |r| {
                order_mut(r).lines.push(OrderLine {
                    sku: "NEG".into(),
                    quantity: -3,
                    unit_price: 1,
                })
            }),
            "event.order.lines[2].quantity",
            "negative quantity",
        ),
    ];
    for (req, field, case) in cases {
        assert_invalid(t.client.record_order_completed(req).await, field, case);
    }
    for limit in [-1, 1001, i32::MIN, i32::MAX] {
        assert_invalid(
            t.client.top_products(TopProductsRequest { limit }).await,
            "limit",
            &format!("limit {limit}"),
        );
    }
    assert_eq!(t.counts().await, counts, "no row written");
    assert_eq!(t.top(0).await, vec![sales("KB-001", 1, 1)]);
    t.stop().await;
}

sagaflow_testkit::both_backends!(invalid_inputs_write_nothing);
