//! The query RPC (GetPayment) through the real grpcurl binary: JSON field names are the
//! lowerCamelCase ones of `proto/sagaflow/payment/v1/payment.proto`, with the right values.

use sagaflow_testkit::Kind;

use crate::harness::{self, order_id};

async fn get_payment_json(kind: Kind) {
    let t = harness::start(kind, "pay_grpcurl").await;
    let order = order_id();
    let payment = t.start("g:4", &order, 12_345, "tok_ok").await.unwrap();
    let json = t
        .grpcurl("GetPayment", serde_json::json!({ "order_id": order }))
        .await;
    assert_eq!(
        json,
        serde_json::json!({
            "payment": {
                "paymentId": payment.payment_id,
                "orderId": order,
                "amount": "12345",
                "status": "PAYMENT_STATUS_STARTED",
            }
        })
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(get_payment_json);
