//! GetOrder and ListOrders through the real grpcurl binary: the JSON field names are the
//! lowerCamelCase ones of `proto/sagaflow/order/v1/order.proto`, with the right values.

use sagaflow_proto::order::v1::{FailureReason, Order};
use sagaflow_testkit::{Kind, grpcurl_json};
use serde_json::{Value, json};

use crate::harness::{self, fixed, place_req};

async fn grpcurl(addr: String, body: Value, method: &'static str) -> Value {
    tokio::task::spawn_blocking(move || grpcurl_json(&addr, &["-d", &body.to_string()], method))
        .await
        .unwrap()
}

/// grpcurl prints a Timestamp as RFC 3339 in UTC.
fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_default();
    assert!(
        text.len() >= 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
        "not an RFC 3339 timestamp: {value}"
    );
}

fn without_timestamps(mut order: Value) -> Value {
    for field in ["createdAt", "updatedAt"] {
        assert_timestamp(&order[field]);
        order.as_object_mut().unwrap().remove(field);
    }
    order
}

async fn get_and_list_orders_json(kind: Kind) {
    let t = harness::start(kind, "ord_grpcurl").await;
    let order: Order = t
        .place(place_req(
            "g-1",
            "alice",
            &[("KB-001", 2), ("MS-002", 1)],
            Some("WELCOME"),
            2_000,
        ))
        .await;
    t.apply("g:2", &order.order_id, fixed(5_000)).await.unwrap();
    t.complete("g:7", &order.order_id).await.unwrap();
    let failed = t
        .place(place_req("g-2", "alice", &[("HD-003", 1)], None, 0))
        .await;
    t.fail("g2:fail", &failed.order_id, FailureReason::PaymentDeclined)
        .await
        .unwrap();
    let addr = t.server.addr().to_string();

    let got = grpcurl(
        addr.clone(),
        json!({ "order_id": order.order_id, "wait": "2s" }),
        "sagaflow.order.v1.OrderService/GetOrder",
    )
    .await;
    assert_eq!(
        without_timestamps(got["order"].clone()),
        json!({
            "orderId": order.order_id,
            "userId": "alice",
            "lines": [
                { "sku": "KB-001", "quantity": 2, "unitPrice": "45000" },
                { "sku": "MS-002", "quantity": 1, "unitPrice": "12000" },
            ],
            "couponCode": "WELCOME",
            "subtotal": "102000",
            "discount": "5000",
            "points": "2000",
            "payable": "95000",
            "status": "ORDER_STATUS_COMPLETED",
            "sagaId": order.order_id,
        })
    );

    let listed = grpcurl(
        addr,
        json!({ "user_id": "alice", "status": "ORDER_STATUS_FAILED", "page_size": 10 }),
        "sagaflow.order.v1.OrderService/ListOrders",
    )
    .await;
    let orders = listed["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(
        without_timestamps(orders[0].clone()),
        json!({
            "orderId": failed.order_id,
            "userId": "alice",
            "lines": [{ "sku": "HD-003", "quantity": 1, "unitPrice": "89000" }],
            "subtotal": "89000",
            "payable": "89000",
            "status": "ORDER_STATUS_FAILED",
            "failureReason": "FAILURE_REASON_PAYMENT_DECLINED",
            "sagaId": failed.order_id,
        })
    );
    assert!(listed.get("nextPageToken").is_none(), "{listed}");
    t.stop().await;
}

sagaflow_testkit::both_backends!(get_and_list_orders_json);
