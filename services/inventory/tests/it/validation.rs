//! Every invalid input gives INVALID_ARGUMENT naming the field, and no row changes
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::inventory::v1::{
    BatchGetProductsRequest, DeductInventoryRequest, GetProductRequest, ListProductsRequest,
    RestockRequest, RestoreInventoryRequest, StockLine, UpsertProductRequest,
};
use sagaflow_server::error::violated_fields;
use sagaflow_testkit::Kind;
use tonic::Code;

use crate::harness::{Harness, order_id};

#[derive(Debug, Clone)]
enum Call {
    Get(GetProductRequest),
    BatchGet(BatchGetProductsRequest),
    List(ListProductsRequest),
    Upsert(UpsertProductRequest),
    Restock(RestockRequest),
    Deduct(DeductInventoryRequest),
    Restore(RestoreInventoryRequest),
}

async fn call(h: &Harness, call: Call) -> Result<(), tonic::Status> {
    let mut c = h.client.clone();
    match call {
        Call::Get(r) => c.get_product(r).await.map(drop),
        Call::BatchGet(r) => c.batch_get_products(r).await.map(drop),
        Call::List(r) => c.list_products(r).await.map(drop),
        Call::Upsert(r) => c.upsert_product(r).await.map(drop),
        Call::Restock(r) => c.restock(r).await.map(drop),
        Call::Deduct(r) => c.deduct_inventory(r).await.map(drop),
        Call::Restore(r) => c.restore_inventory(r).await.map(drop),
    }
}

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
    let before = h.snapshot().await;
    for (request, field) in cases() {
        let err = call(&h, request.clone())
            .await
            .expect_err(&format!("{request:?} must be rejected"));
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert_eq!(violated_fields(&err), [field], "{request:?}: {err:?}");
        assert_eq!(h.snapshot().await, before, "{request:?} changed a row");
    }
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
    let err = h
        .client
        .clone()
        .restock(RestockRequest {
            sku: "A".into(),
            quantity: 2,
            idempotency_key: "overflow".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["quantity"]);
    let after = h.snapshot().await;
    assert_eq!(after.products, before.products);
    assert_eq!(after.restocks, before.restocks);
    assert_eq!(h.stock("A").await, i64::MAX - 1);
}

sagaflow_testkit::both_backends!(
    every_invalid_input_names_its_field_and_writes_nothing,
    restock_overflowing_i64_is_invalid_and_changes_nothing,
);
