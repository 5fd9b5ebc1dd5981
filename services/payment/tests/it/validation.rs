//! Every invalid input is INVALID_ARGUMENT naming the field, and nothing is written
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::payment::v1::{
    CancelPaymentRequest, CompletePaymentRequest, GetPaymentRequest, RefundPaymentRequest,
    StartPaymentRequest, payment_service_client::PaymentServiceClient,
};
use sagaflow_testkit::{Kind, service::assert_each_invalid};
use tonic::transport::Channel;

use crate::harness::{self, cancel_req, complete_req, get_req, order_id, refund_req, start_req};

sagaflow_testkit::rpc_calls!(enum Call on PaymentServiceClient<Channel> {
    Start(StartPaymentRequest) => start_payment, Cancel(CancelPaymentRequest) => cancel_payment,
    Complete(CompletePaymentRequest) => complete_payment,
    Refund(RefundPaymentRequest) => refund_payment, Get(GetPaymentRequest) => get_payment,
});

fn cases(order: &str) -> Vec<(Call, &'static str)> {
    let long = "x".repeat(257);
    vec![
        (
            Call::Start(start_req("", order, 1, "tok_ok")),
            "idempotency_key",
        ),
        (
            Call::Start(start_req(&long, order, 1, "tok_ok")),
            "idempotency_key",
        ),
        (Call::Start(start_req("k", "", 1, "tok_ok")), "order_id"),
        (
            Call::Start(start_req("k", "not-a-uuid", 1, "tok_ok")),
            "order_id",
        ),
        (Call::Start(start_req("k", order, -1, "tok_ok")), "amount"),
        (
            Call::Start(start_req("k", order, i64::MIN, "tok_ok")),
            "amount",
        ),
        (Call::Start(start_req("k", order, 1, "")), "payment_method"),
        (
            Call::Start(start_req("k", order, 1, &long)),
            "payment_method",
        ),
        // An unknown card token.
        (
            Call::Start(start_req("k", order, 1, "tok_unknown")),
            "payment_method",
        ),
        (Call::Cancel(cancel_req("", order)), "idempotency_key"),
        (Call::Cancel(cancel_req("k", "x")), "order_id"),
        (
            Call::Complete(complete_req(&long, order)),
            "idempotency_key",
        ),
        (Call::Complete(complete_req("k", "")), "order_id"),
        (Call::Refund(refund_req("", order)), "idempotency_key"),
        (Call::Refund(refund_req("k", "1234")), "order_id"),
        (Call::Get(get_req("nope")), "order_id"),
        (Call::Get(get_req("")), "order_id"),
    ]
}

async fn invalid_inputs_write_nothing(kind: Kind) {
    let t = harness::start(kind, "pay_invalid").await;
    // An existing payment, so that "no row changed" is checked against real data.
    t.start("v:4", &order_id(), 100, "tok_ok").await.unwrap();

    let order = order_id();
    let snapshot = || async { (t.rows().await, t.key_rows().await) };
    assert_each_invalid(cases(&order), |call| call.send(&t.client), snapshot).await;
    assert!(t.gateway.authorizations_of(&order).is_empty());
    assert_eq!(
        t.intent(&order).await,
        None,
        "no authorization intent is left (the unknown card token's is deleted)"
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(invalid_inputs_write_nothing);
