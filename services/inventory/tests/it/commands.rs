//! The inventory commands and queries: happy paths, business rejections with their ErrorInfo
//! reasons, idempotent repeats, and the late-action rule (docs/architecture.md, step 3 of "The
//! order saga" and "The service contract").

use sagaflow_inventory::events::{InventoryEvent, InventoryOutbox};
use sagaflow_proto::inventory::v1::{
    BatchGetProductsRequest, DeductInventoryRequest, DeductInventoryResponse, GetProductRequest,
    InventoryDeductedEvent, InventoryRestockedEvent, InventoryRestoredEvent, ListProductsRequest,
    Product, RestockRequest, RestoreInventoryRequest, StockLine, UpsertProductRequest,
};
use sagaflow_server::error::violated_fields;
use sagaflow_server::outbox;
use sagaflow_testkit::{Kind, service::assert_reason};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Harness, order_id};

fn line(sku: &str, quantity: i32) -> StockLine {
    StockLine {
        sku: sku.into(),
        quantity,
    }
}

fn deduct(key: &str, order_id: &str, lines: Vec<StockLine>) -> DeductInventoryRequest {
    DeductInventoryRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
        lines,
    }
}

fn restore(key: &str, order_id: &str) -> RestoreInventoryRequest {
    RestoreInventoryRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
    }
}

async fn deduct_then_restore_gives_back_exactly_what_was_taken(kind: Kind) {
    let h = Harness::start(kind, "inv_happy").await;
    h.product("KB-1", 10).await;
    h.product("MS-1", 3).await;
    h.product("UNTOUCHED", 7).await;
    let mut c = h.client.clone();
    let order = order_id();

    let taken = c
        .deduct_inventory(deduct(
            "saga:deduct",
            &order,
            vec![line("MS-1", 3), line("KB-1", 2)],
        ))
        .await
        .unwrap()
        .into_inner();
    // The lines taken, in request order.
    assert_eq!(taken.lines, vec![line("MS-1", 3), line("KB-1", 2)]);
    assert_eq!(h.stock("KB-1").await, 8);
    assert_eq!(h.stock("MS-1").await, 0);
    assert_eq!(h.stock("UNTOUCHED").await, 7);
    assert_eq!(h.reservation(&order).await.as_deref(), Some("RESERVED"));
    h.assert_stock_invariant().await;

    let given_back = c
        .restore_inventory(restore("saga:deduct:compensate", &order))
        .await
        .unwrap()
        .into_inner();
    let mut lines = given_back.lines;
    lines.sort_by(|a, b| a.sku.cmp(&b.sku));
    assert_eq!(lines, vec![line("KB-1", 2), line("MS-1", 3)]);
    assert_eq!(h.stock("KB-1").await, 10);
    assert_eq!(h.stock("MS-1").await, 3);
    assert_eq!(h.stock("UNTOUCHED").await, 7);
    assert_eq!(h.reservation(&order).await.as_deref(), Some("RELEASED"));
    h.assert_stock_invariant().await;
    h.0.stop().await;
}

async fn out_of_stock_takes_no_line(kind: Kind) {
    let h = Harness::start(kind, "inv_oos").await;
    h.product("A", 5).await;
    h.product("B", 1).await;
    let mut c = h.client.clone();
    let before = h.snapshot().await;
    let order = order_id();
    let err = c
        .deduct_inventory(deduct("k-oos", &order, vec![line("A", 2), line("B", 3)]))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "OUT_OF_STOCK");
    let info = err.get_details_error_info().unwrap();
    assert_eq!(info.metadata.get("sku").map(String::as_str), Some("B"));
    assert_eq!(
        info.metadata.get("requested").map(String::as_str),
        Some("3")
    );
    assert_eq!(
        info.metadata.get("available").map(String::as_str),
        Some("1")
    );
    // Nothing changed but the stored outcome of the key.
    let after = h.snapshot().await;
    assert_eq!(after.products, before.products);
    assert_eq!(after.reservations, before.reservations);
    assert_eq!(after.reservation_lines, before.reservation_lines);
    assert_eq!(h.reservation(&order).await, None);

    // The repeat replays the stored rejection even after a restock (docs/architecture.md, "The
    // service contract").
    c.restock(RestockRequest {
        sku: "B".into(),
        quantity: 10,
        idempotency_key: "more-b".into(),
    })
    .await
    .unwrap();
    let again = c
        .deduct_inventory(deduct("k-oos", &order, vec![line("A", 2), line("B", 3)]))
        .await
        .unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, "OUT_OF_STOCK");
    assert_eq!(h.stock("A").await, 5);
    assert_eq!(h.stock("B").await, 11);

    // The same order under a new key now succeeds: the rejection left no reservation behind.
    c.deduct_inventory(deduct("k-oos-2", &order, vec![line("A", 2), line("B", 3)]))
        .await
        .unwrap();
    assert_eq!(h.stock("A").await, 3);
    assert_eq!(h.stock("B").await, 8);
    h.assert_stock_invariant().await;
}

async fn unknown_sku_is_not_found_and_takes_nothing(kind: Kind) {
    let h = Harness::start(kind, "inv_unknown").await;
    h.product("A", 5).await;
    let mut c = h.client.clone();
    let before = h.snapshot().await;
    let err = c
        .deduct_inventory(deduct(
            "k-unknown",
            &order_id(),
            vec![line("A", 1), line("NOPE", 1)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let after = h.snapshot().await;
    assert_eq!(after.products, before.products);
    assert_eq!(after.reservations, before.reservations);

    let err = c
        .get_product(GetProductRequest { sku: "NOPE".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .restock(RestockRequest {
            sku: "NOPE".into(),
            quantity: 1,
            idempotency_key: "r-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(h.snapshot().await.restocks, before.restocks);
}

async fn deduct_repeated_with_the_same_key_applies_once(kind: Kind) {
    let h = Harness::start(kind, "inv_repeat").await;
    h.product("A", 10).await;
    let mut c = h.client.clone();
    let order = order_id();
    let req = deduct("saga-1:deduct_inventory", &order, vec![line("A", 4)]);
    let first = c.deduct_inventory(req.clone()).await.unwrap().into_inner();
    let second = c.deduct_inventory(req.clone()).await.unwrap().into_inner();
    assert_eq!(first, second);
    assert_eq!(
        first,
        DeductInventoryResponse {
            lines: vec![line("A", 4)]
        }
    );
    assert_eq!(h.stock("A").await, 6);

    // Same key, other request: ALREADY_EXISTS, nothing changes.
    let err = c
        .deduct_inventory(deduct(
            "saga-1:deduct_inventory",
            &order,
            vec![line("A", 5)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(h.stock("A").await, 6);

    // Same order, another key: the order never takes stock twice.
    let err = c
        .deduct_inventory(deduct("other-key", &order, vec![line("A", 4)]))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "ORDER_ALREADY_DEDUCTED");
    assert_eq!(h.stock("A").await, 6);
    h.assert_stock_invariant().await;
}

async fn restore_repeated_applies_once(kind: Kind) {
    let h = Harness::start(kind, "inv_restore_repeat").await;
    h.product("A", 10).await;
    let mut c = h.client.clone();
    let order = order_id();
    c.deduct_inventory(deduct("d", &order, vec![line("A", 4)]))
        .await
        .unwrap();
    let first = c
        .restore_inventory(restore("d:compensate", &order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.lines, vec![line("A", 4)]);
    assert_eq!(h.stock("A").await, 10);
    // Same key: the stored response, no second give-back.
    let again = c
        .restore_inventory(restore("d:compensate", &order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(h.stock("A").await, 10);
    // Another key: nothing more is given back.
    let other = c
        .restore_inventory(restore("operator-retry", &order))
        .await
        .unwrap()
        .into_inner();
    assert!(other.lines.is_empty());
    assert_eq!(h.stock("A").await, 10);
    // A late action under a new key after the compensation is rejected.
    let err = c
        .deduct_inventory(deduct("d-again", &order, vec![line("A", 4)]))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
    assert_eq!(h.stock("A").await, 10);
    h.assert_stock_invariant().await;
}

async fn restore_before_deduct_rejects_the_late_deduct(kind: Kind) {
    let h = Harness::start(kind, "inv_late").await;
    h.product("A", 10).await;
    let mut c = h.client.clone();
    let order = order_id();
    let restored = c
        .restore_inventory(restore("saga:deduct:compensate", &order))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.lines.is_empty());
    assert_eq!(h.reservation(&order).await.as_deref(), Some("RELEASED"));
    let before = h.snapshot().await;

    let err = c
        .deduct_inventory(deduct("saga:deduct", &order, vec![line("A", 3)]))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
    let after = h.snapshot().await;
    assert_eq!(after.products, before.products);
    assert_eq!(after.reservations, before.reservations);
    assert_eq!(after.reservation_lines, before.reservation_lines);
    assert_eq!(h.stock("A").await, 10);

    // The repeated compensation still gives nothing back.
    let again = c
        .restore_inventory(restore("saga:deduct:compensate", &order))
        .await
        .unwrap()
        .into_inner();
    assert!(again.lines.is_empty());
    assert_eq!(h.stock("A").await, 10);
    h.assert_stock_invariant().await;
}

async fn restock_is_idempotent_and_recorded(kind: Kind) {
    let h = Harness::start(kind, "inv_restock").await;
    h.product("A", 0).await;
    let mut c = h.client.clone();
    let req = RestockRequest {
        sku: "A".into(),
        quantity: 7,
        idempotency_key: "delivery-42".into(),
    };
    let first = c.restock(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.product.as_ref().map(|p| p.stock), Some(7));
    let again = c.restock(req.clone()).await.unwrap().into_inner();
    assert_eq!(again, first);
    assert_eq!(h.stock("A").await, 7);
    let err = c
        .restock(RestockRequest {
            quantity: 8,
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(h.stock("A").await, 7);
    c.restock(RestockRequest {
        quantity: 3,
        idempotency_key: "delivery-43".into(),
        ..req
    })
    .await
    .unwrap();
    assert_eq!(h.stock("A").await, 10);
    assert_eq!(
        h.snapshot().await.restocks,
        vec![
            ("delivery-42".to_owned(), "A".to_owned(), 7),
            ("delivery-43".to_owned(), "A".to_owned(), 3),
        ]
    );
    h.assert_stock_invariant().await;
}

async fn upsert_creates_then_updates_name_and_price_only(kind: Kind) {
    let h = Harness::start(kind, "inv_upsert").await;
    let mut c = h.client.clone();
    let req = UpsertProductRequest {
        sku: "KB-001".into(),
        name: "Keyboard".into(),
        unit_price: 49_000,
    };
    let created = c.upsert_product(req.clone()).await.unwrap().into_inner();
    let expected = Product {
        sku: "KB-001".into(),
        name: "Keyboard".into(),
        unit_price: 49_000,
        stock: 0,
    };
    assert_eq!(created.product.as_ref(), Some(&expected));
    // Naturally idempotent.
    let again = c.upsert_product(req).await.unwrap().into_inner();
    assert_eq!(again, created);
    c.restock(RestockRequest {
        sku: "KB-001".into(),
        quantity: 5,
        idempotency_key: "r1".into(),
    })
    .await
    .unwrap();
    let updated = c
        .upsert_product(UpsertProductRequest {
            sku: "KB-001".into(),
            name: "Mechanical keyboard".into(),
            unit_price: 59_000,
        })
        .await
        .unwrap()
        .into_inner();
    let fetched = c
        .get_product(GetProductRequest {
            sku: "KB-001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let expected = Product {
        sku: "KB-001".into(),
        name: "Mechanical keyboard".into(),
        unit_price: 59_000,
        stock: 5,
    };
    assert_eq!(updated.product.as_ref(), Some(&expected));
    assert_eq!(fetched.product.as_ref(), Some(&expected));
}

async fn batch_get_keeps_request_order_and_skips_unknown(kind: Kind) {
    let h = Harness::start(kind, "inv_batch").await;
    h.product("A", 1).await;
    h.product("B", 2).await;
    h.product("C", 3).await;
    let mut c = h.client.clone();
    let products = c
        .batch_get_products(BatchGetProductsRequest {
            skus: vec!["C".into(), "NOPE".into(), "A".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .products;
    let got: Vec<(&str, i64)> = products.iter().map(|p| (p.sku.as_str(), p.stock)).collect();
    assert_eq!(got, [("C", 3), ("A", 1)]);
    assert!(products.iter().all(|p| p.unit_price == 1000));
    // 100 distinct skus are accepted.
    let skus: Vec<String> = (0..100).map(|i| format!("S{i}")).collect();
    let none = c
        .batch_get_products(BatchGetProductsRequest { skus })
        .await
        .unwrap()
        .into_inner();
    assert!(none.products.is_empty());
}

async fn list_pages_through_every_product(kind: Kind) {
    let h = Harness::start(kind, "inv_list").await;
    for sku in ["E", "A", "D", "B", "C"] {
        h.product(sku, 0).await;
    }
    let mut c = h.client.clone();
    let mut token = String::new();
    let mut pages = Vec::new();
    for _ in 0..10 {
        let page = c
            .list_products(ListProductsRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.products
                .iter()
                .map(|p| p.sku.clone())
                .collect::<Vec<_>>(),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, vec![vec!["A", "B"], vec!["C", "D"], vec!["E"]]);
    // page_size 0 means the default (50): everything on one page.
    let all = c
        .list_products(ListProductsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.products.len(), 5);
    assert!(all.next_page_token.is_empty());

    let err = c
        .list_products(ListProductsRequest {
            page_size: 2,
            page_token: "not a token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["page_token"]);
}

/// Every stock change appends one event per sku it touched, in its own transaction
/// (docs/architecture.md, "Events"): per sku the sequence runs 1, 2, … and `stock_after` is the
/// stock the change left; a rejected or repeated command appends nothing.
async fn stock_changes_append_their_events_in_the_same_transaction(kind: Kind) {
    let h = Harness::start(kind, "inv_events").await;
    h.product("KB-1", 10).await;
    h.product("MS-1", 3).await;
    let mut c = h.client.clone();
    let order = order_id();
    let lines = vec![line("MS-1", 3), line("KB-1", 2)];
    c.deduct_inventory(deduct("saga:deduct", &order, lines.clone()))
        .await
        .unwrap();
    // Repeated: replayed from the idempotency store, no second event.
    c.deduct_inventory(deduct("saga:deduct", &order, lines))
        .await
        .unwrap();
    // Rejected (out of stock): no stock change, no event (the rejection itself is recorded under
    // its key, as the service contract asks).
    let before = h.snapshot().await;
    let err = c
        .deduct_inventory(deduct("saga:other", &order_id(), vec![line("MS-1", 1)]))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "OUT_OF_STOCK");
    let after = h.snapshot().await;
    assert_eq!(
        (after.products, after.outbox),
        (before.products, before.outbox)
    );
    c.restore_inventory(restore("saga:restore", &order))
        .await
        .unwrap();

    let kb: Vec<(i64, InventoryEvent)> = h.events("KB-1").await;
    assert_eq!(
        kb,
        vec![
            (
                1,
                InventoryEvent::Restocked(InventoryRestockedEvent {
                    sku: "KB-1".into(),
                    delta: 10,
                    stock_after: 10,
                })
            ),
            (
                2,
                InventoryEvent::Deducted(InventoryDeductedEvent {
                    sku: "KB-1".into(),
                    order_id: order.clone(),
                    quantity: 2,
                    stock_after: 8,
                })
            ),
            (
                3,
                InventoryEvent::Restored(InventoryRestoredEvent {
                    sku: "KB-1".into(),
                    order_id: order.clone(),
                    quantity: 2,
                    stock_after: 10,
                })
            ),
        ]
    );
    let ms: Vec<(i64, String)> = h
        .events("MS-1")
        .await
        .into_iter()
        .map(|(sequence, e)| (sequence, e.event_type().to_owned()))
        .collect();
    assert_eq!(
        ms,
        [
            (1, "InventoryRestocked".to_owned()),
            (2, "InventoryDeducted".to_owned()),
            (3, "InventoryRestored".to_owned())
        ]
    );

    // Pruning published rows keeps each sku's newest: its next event continues the sequence.
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(h.db.pool())
        .await
        .unwrap();
    outbox::mark_sent(&h.db, &ids).await.unwrap();
    let later = sagaflow_server::db::now_ms() + 60_000;
    assert_eq!(
        outbox::prune_sent(&h.db, &InventoryOutbox, later, 1_000)
            .await
            .unwrap(),
        4
    );
    c.restock(RestockRequest {
        sku: "KB-1".into(),
        quantity: 1,
        idempotency_key: "more".into(),
    })
    .await
    .unwrap();
    let sequences: Vec<i64> = h.events("KB-1").await.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, [3, 4]);
}

sagaflow_testkit::both_backends!(
    stock_changes_append_their_events_in_the_same_transaction,
    deduct_then_restore_gives_back_exactly_what_was_taken,
    out_of_stock_takes_no_line,
    unknown_sku_is_not_found_and_takes_nothing,
    deduct_repeated_with_the_same_key_applies_once,
    restore_repeated_applies_once,
    restore_before_deduct_rejects_the_late_deduct,
    restock_is_idempotent_and_recorded,
    upsert_creates_then_updates_name_and_price_only,
    batch_get_keeps_request_order_and_skips_unknown,
    list_pages_through_every_product,
);
