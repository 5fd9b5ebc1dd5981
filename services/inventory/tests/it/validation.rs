//! Every invalid input gives INVALID_ARGUMENT naming the field, and no row changes
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::inventory::v1::{
    BatchGetProductsRequest, DeductInventoryRequest, GetProductRequest, ListProductsRequest,
    RestockRequest, RestoreInventoryRequest, StockLine, UpsertProductRequest,
    inventory_service_client::InventoryServiceClient,
};
use sagaflow_testkit::{Kind, service::assert_each_invalid, service::assert_invalid};
use tonic::transport::Channel;

use crate::harness::{Harness, order_id};

sagaflow_testkit::rpc_calls!(enum Call on InventoryServiceClient<Channel> {
    Get(GetProductRequest) => get_product, BatchGet(BatchGetProductsRequest) => batch_get_products,
    List(ListProductsRequest) => list_products, Upsert(UpsertProductRequest) => upsert_product,
    Restock(RestockRequest) => restock, Deduct(DeductInventoryRequest) => deduct_inventory,
    Restore(RestoreInventoryRequest) => restore_inventory,
});

fn line(sku: &str, quantity: i32) -> StockLine {
    StockLine {
        sku: sku.into(),
        quantity,
    }
}

fn cases() -> Vec<(Call, &'static str)> {
    let long = "x".repeat(257);
    let order = order_id();
    let deduct = DeductInventoryRequest {
        idempotency_key: "k".into(),
        order_id: order.clone(),
        lines: vec![line("A", 1)],
    };
    let restock = RestockRequest {
        sku: "A".into(),
        quantity: 1,
        idempotency_key: "k".into(),
    };
    let upsert = UpsertProductRequest {
        sku: "A".into(),
        name: "a".into(),
        unit_price: 1,
    };
    vec![
        (Call::Get(GetProductRequest { sku: String::new() }), "sku"),
        (Call::Get(GetProductRequest { sku: long.clone() }), "sku"),
        (
            Call::BatchGet(BatchGetProductsRequest { skus: vec![] }),
            "skus",
        ),
        (
            Call::BatchGet(BatchGetProductsRequest {
                skus: (0..101).map(|i| format!("S{i}")).collect(),
            }),
            "skus",
        ),
        (
            Call::BatchGet(BatchGetProductsRequest {
                skus: vec!["A".into(), String::new()],
            }),
            "skus[1]",
        ),
        (
            Call::BatchGet(BatchGetProductsRequest {
                skus: vec!["A".into(), "B".into(), "A".into()],
            }),
            "skus[2]",
        ),
        (
            Call::BatchGet(BatchGetProductsRequest {
                skus: vec![long.clone()],
            }),
            "skus[0]",
        ),
        (
            Call::List(ListProductsRequest {
                page_size: -1,
                page_token: String::new(),
            }),
            "page_size",
        ),
        (
            Call::List(ListProductsRequest {
                page_size: 1001,
                page_token: String::new(),
            }),
            "page_size",
        ),
        (
            Call::List(ListProductsRequest {
                page_size: 1,
                page_token: "%%".into(),
            }),
            "page_token",
        ),
        (
            Call::Upsert(UpsertProductRequest {
                sku: String::new(),
                ..upsert.clone()
            }),
            "sku",
        ),
        (
            Call::Upsert(UpsertProductRequest {
                name: "  ".into(),
                ..upsert.clone()
            }),
            "name",
        ),
        (
            Call::Upsert(UpsertProductRequest {
                name: long.clone(),
                ..upsert.clone()
            }),
            "name",
        ),
        (
            Call::Upsert(UpsertProductRequest {
                unit_price: -1,
                ..upsert
            }),
            "unit_price",
        ),
        (
            Call::Restock(RestockRequest {
                quantity: 0,
                ..restock.clone()
            }),
            "quantity",
        ),
        (
            Call::Restock(RestockRequest {
                quantity: -3,
                ..restock.clone()
            }),
            "quantity",
        ),
        (
            Call::Restock(RestockRequest {
                idempotency_key: String::new(),
                ..restock.clone()
            }),
            "idempotency_key",
        ),
        (
            Call::Restock(RestockRequest {
                idempotency_key: long.clone(),
                ..restock.clone()
            }),
            "idempotency_key",
        ),
        (
            Call::Restock(RestockRequest {
                sku: long.clone(),
                ..restock
            }),
            "sku",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                idempotency_key: String::new(),
                ..deduct.clone()
            }),
            "idempotency_key",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                order_id: String::new(),
                ..deduct.clone()
            }),
            "order_id",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                order_id: "not-a-uuid".into(),
                ..deduct.clone()
            }),
            "order_id",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                lines: vec![],
                ..deduct.clone()
            }),
            "lines",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                lines: (0..101).map(|i| line(&format!("S{i}"), 1)).collect(),
                ..deduct.clone()
            }),
            "lines",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                lines: vec![line("A", 0)],
                ..deduct.clone()
            }),
            "lines[0].quantity",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                lines: vec![line("B", 1), line("A", -5)],
                ..deduct.clone()
            }),
            "lines[1].quantity",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                lines: vec![line("A", 1), line("B", 1), line("A", 2)],
                ..deduct.clone()
            }),
            "lines[2].sku",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                lines: vec![line("", 1)],
                ..deduct.clone()
            }),
            "lines[0].sku",
        ),
        (
            Call::Deduct(DeductInventoryRequest {
                lines: vec![line(&long, 1)],
                ..deduct
            }),
            "lines[0].sku",
        ),
        (
            Call::Restore(RestoreInventoryRequest {
                idempotency_key: String::new(),
                order_id: order,
            }),
            "idempotency_key",
        ),
        (
            Call::Restore(RestoreInventoryRequest {
                idempotency_key: "k".into(),
                order_id: "1234".into(),
            }),
            "order_id",
        ),
        (
            Call::Restore(RestoreInventoryRequest {
                idempotency_key: "k".into(),
                order_id: String::new(),
            }),
            "order_id",
        ),
    ]
}

async fn every_invalid_input_names_its_field_and_writes_nothing(kind: Kind) {
    let h = Harness::start(kind, "inv_invalid").await;
    h.product("A", 5).await;
    h.product("B", 5).await;
    assert_each_invalid(cases(), |call| call.send(&h.client), || h.snapshot()).await;
}

async fn restock_overflowing_i64_is_invalid_and_changes_nothing(kind: Kind) {
    let h = Harness::start(kind, "inv_overflow").await;
    h.product("A", 0).await;
    sqlx::query("UPDATE products SET stock = $1 WHERE sku = 'A'")
        .bind(i64::MAX - 1)
        .execute(h.db.pool())
        .await
        .unwrap();
    let before = h.snapshot().await;
    let overflow = RestockRequest {
        sku: "A".into(),
        quantity: 2,
        idempotency_key: "overflow".into(),
    };
    assert_invalid(
        h.client.clone().restock(overflow).await,
        "quantity",
        "overflow",
    );
    let after = h.snapshot().await;
    assert_eq!(after.products, before.products);
    assert_eq!(after.restocks, before.restocks);
    assert_eq!(h.stock("A").await, i64::MAX - 1);
}

sagaflow_testkit::both_backends!(
    every_invalid_input_names_its_field_and_writes_nothing,
    restock_overflowing_i64_is_invalid_and_changes_nothing,
);
