//! Every invalid input is INVALID_ARGUMENT naming the field, and nothing is written
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::{
    order::v1::{OrderLine, OrderStatus},
    ranking::v1::{
        GetProductViewRequest, ListProductViewsRequest, RecordInventoryEventRequest,
        RecordOrderCompletedRequest, TopProductsRequest, record_inventory_event_request::Event,
    },
};
use sagaflow_ranking::events::{self, InventoryEvent};
use sagaflow_server::ServiceError;
use sagaflow_testkit::{Kind, service::assert_invalid, with};

use crate::harness::{self, completed, deducted, restocked, restored, sales, view};

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

/// Sets a field of the delivery's event, whichever kind it is.
fn event_mut(req: &mut RecordInventoryEventRequest, change: impl FnOnce(&mut String, &mut i64)) {
    match req.event.as_mut().unwrap() {
        Event::Deducted(e) => change(&mut e.sku, &mut e.stock_after),
        Event::Restored(e) => change(&mut e.sku, &mut e.stock_after),
        Event::Restocked(e) => change(&mut e.sku, &mut e.stock_after),
    }
}

async fn invalid_inventory_events_and_view_queries_write_nothing(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_view_invalid").await;
    assert!(t.record(deducted("KB-001", 1, 2, 8)).await);
    let counts = t.view_counts().await;
    let long = "x".repeat(257);
    let mut cases = vec![
        (
            with(deducted("KB-001", 2, 1, 7), |r| r.event_id.clear()),
            "event_id".to_owned(),
            "empty event id",
        ),
        (
            with(deducted("KB-001", 2, 1, 7), |r| r.event_id = "evt-1".into()),
            "event_id".to_owned(),
            "malformed event id",
        ),
        (
            deducted("KB-001", 0, 1, 7),
            "sequence".to_owned(),
            "sequence 0",
        ),
        (
            restocked("KB-001", -4, 1, 7),
            "sequence".to_owned(),
            "negative sequence",
        ),
        (
            with(deducted("KB-001", 2, 1, 7), |r| r.event = None),
            "event".to_owned(),
            "missing event",
        ),
        (
            deducted("KB-001", 2, 0, 7),
            "deducted.quantity".to_owned(),
            "zero quantity",
        ),
        (
            restored("KB-001", 2, -1, 7),
            "restored.quantity".to_owned(),
            "negative quantity",
        ),
        (
            with(deducted("KB-001", 2, 1, 7), |r| {
                if let Some(Event::Deducted(e)) = r.event.as_mut() {
                    e.order_id = "o-1".into();
                }
            }),
            "deducted.order_id".to_owned(),
            "malformed order id",
        ),
        (
            with(restored("KB-001", 2, 1, 7), |r| {
                if let Some(Event::Restored(e)) = r.event.as_mut() {
                    e.order_id.clear();
                }
            }),
            "restored.order_id".to_owned(),
            "empty order id",
        ),
    ];
    for (name, event) in [
        ("deducted", deducted("KB-001", 2, 1, 7)),
        ("restored", restored("KB-001", 2, 1, 7)),
        ("restocked", restocked("KB-001", 2, 1, 7)),
    ] {
        let (sku, stock) = (format!("{name}.sku"), format!("{name}.stock_after"));
        cases.push((
            with(event.clone(), |r| event_mut(r, |s, _| s.clear())),
            sku.clone(),
            "empty sku",
        ));
        cases.push((
            with(event.clone(), |r| event_mut(r, |s, _| *s = long.clone())),
            sku,
            "sku over 256 bytes",
        ));
        cases.push((
            with(event, |r| event_mut(r, |_, n| *n = -1)),
            stock,
            "negative stock after",
        ));
    }
    for (req, field, case) in cases {
        assert_invalid(
            t.client.record_inventory_event(req.clone()).await,
            field.as_str(),
            case,
        );
        // The consumers' entry point names the same field (a missing event cannot be passed).
        if let Some(event) = req.event {
            let err = events::record_inventory_event(
                &t.db,
                &req.event_id,
                req.sequence,
                InventoryEvent::from(event),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&err, ServiceError::InvalidArgument(v) if v.len() == 1 && v[0].field == field),
                "{case}: {err:?}"
            );
        }
    }
    // Every problem at once, each named.
    let mut all_wrong = deducted("", 0, 0, -1);
    all_wrong.event_id.clear();
    if let Some(Event::Deducted(e)) = all_wrong.event.as_mut() {
        e.order_id.clear();
    }
    assert_invalid(
        t.client.record_inventory_event(all_wrong).await,
        &[
            "event_id",
            "sequence",
            "deducted.order_id",
            "deducted.quantity",
            "deducted.sku",
            "deducted.stock_after",
        ][..],
        "everything wrong",
    );
    assert_invalid(
        t.client
            .get_product_view(GetProductViewRequest { sku: String::new() })
            .await,
        "sku",
        "GetProductView without a sku",
    );
    assert_invalid(
        t.client
            .get_product_view(GetProductViewRequest { sku: long.clone() })
            .await,
        "sku",
        "GetProductView with a sku over 256 bytes",
    );
    for page_size in [-1, 1001, i32::MIN, i32::MAX] {
        assert_invalid(
            t.client
                .list_product_views(ListProductViewsRequest {
                    page_size,
                    page_token: String::new(),
                })
                .await,
            "page_size",
            &format!("page_size {page_size}"),
        );
    }
    for page_token in ["not-hex", "00", "zz"] {
        assert_invalid(
            t.client
                .list_product_views(ListProductViewsRequest {
                    page_size: 0,
                    page_token: page_token.into(),
                })
                .await,
            "page_token",
            &format!("page_token {page_token:?}"),
        );
    }
    assert_eq!(t.view_counts().await, counts, "no row written");
    assert_eq!(t.view("KB-001").await, Some(view("KB-001", 8, 2, 1, 1)));
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    invalid_inputs_write_nothing,
    invalid_inventory_events_and_view_queries_write_nothing,
);
