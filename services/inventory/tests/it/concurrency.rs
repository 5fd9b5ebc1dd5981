//! 50 concurrent DeductInventory calls of 1 unit each on a stock of 10: exactly 10 succeed, the
//! others are OUT_OF_STOCK, and the stock ends at 0 (never negative).

use sagaflow_proto::inventory::v1::{DeductInventoryRequest, RestoreInventoryRequest, StockLine};
use sagaflow_server::error::error_reason;
use sagaflow_testkit::Kind;
use tonic::Code;

use crate::harness::{Harness, order_id};

const CALLS: usize = 50;
const STOCK: i32 = 10;

async fn fifty_concurrent_deducts_on_ten_units(kind: Kind) {
    let h = Harness::start(kind, "inv_race").await;
    h.product("HOT", STOCK).await;
    // A second sku in every order, locked in the same sku order, to exercise multi-row locking.
    h.product("ZZ-GIFT", 1000).await;
    let mut calls = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let mut client = h.client.clone();
        calls.push(tokio::spawn(async move {
            let order = order_id();
            let result = client
                .deduct_inventory(DeductInventoryRequest {
                    idempotency_key: format!("saga-{i}:deduct_inventory"),
                    order_id: order.clone(),
                    lines: vec![
                        StockLine {
                            sku: "ZZ-GIFT".into(),
                            quantity: 1,
                        },
                        StockLine {
                            sku: "HOT".into(),
                            quantity: 1,
                        },
                    ],
                })
                .await;
            (order, result)
        }));
    }
    let mut succeeded = Vec::new();
    for call in calls {
        let (order, result) = call.await.unwrap();
        match result {
            Ok(_) => succeeded.push(order),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(error_reason(&status).as_deref(), Some("OUT_OF_STOCK"));
            }
        }
    }
    assert_eq!(succeeded.len(), 10);
    assert_eq!(h.stock("HOT").await, 0);
    assert_eq!(h.stock("ZZ-GIFT").await, 990);
    let reserved: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM reservations WHERE status = 'RESERVED'")
            .fetch_one(h.db.pool())
            .await
            .unwrap();
    assert_eq!(reserved, 10);
    h.assert_stock_invariant().await;

    // Compensating every successful order concurrently gives all the stock back.
    let mut restores = Vec::new();
    for order in succeeded {
        let mut client = h.client.clone();
        restores.push(tokio::spawn(async move {
            client
                .restore_inventory(RestoreInventoryRequest {
                    idempotency_key: format!("{order}:compensate"),
                    order_id: order,
                })
                .await
        }));
    }
    for restore in restores {
        let lines = restore.await.unwrap().unwrap().into_inner().lines;
        assert_eq!(lines.len(), 2);
    }
    assert_eq!(h.stock("HOT").await, i64::from(STOCK));
    assert_eq!(h.stock("ZZ-GIFT").await, 1000);
    h.assert_stock_invariant().await;
}

sagaflow_testkit::both_backends!(fifty_concurrent_deducts_on_ten_units);
