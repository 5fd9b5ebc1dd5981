//! Every invalid input is INVALID_ARGUMENT naming the field, and nothing is written
//! (docs/architecture.md, "The service contract").

use sagaflow_testkit::{Kind, service::assert_invalid};

use crate::harness::{self, cancel_req, complete_req, get_req, order_id, refund_req, start_req};

async fn invalid_inputs_write_nothing(kind: Kind) {
    let mut t = harness::start(kind, "pay_invalid").await;
    // An existing payment, so that "no row changed" is checked against real data.
    let existing = order_id();
    t.client
        .start_payment(start_req("v:4", &existing, 100, "tok_ok"))
        .await
        .unwrap();
    let rows = t.rows().await;
    let keys = t.key_rows().await;

    let order = order_id();
    let long = "x".repeat(257);
    let c = &mut t.client;
    let starts = [
        (
            start_req("", &order, 1, "tok_ok"),
            "idempotency_key",
            "empty key",
        ),
        (
            start_req(&long, &order, 1, "tok_ok"),
            "idempotency_key",
            "key over 256 bytes",
        ),
        (
            start_req("k", "", 1, "tok_ok"),
            "order_id",
            "empty order id",
        ),
        (
            start_req("k", "not-a-uuid", 1, "tok_ok"),
            "order_id",
            "malformed order id",
        ),
        (
            start_req("k", &order, -1, "tok_ok"),
            "amount",
            "negative amount",
        ),
        (
            start_req("k", &order, i64::MIN, "tok_ok"),
            "amount",
            "i64::MIN amount",
        ),
        (
            start_req("k", &order, 1, ""),
            "payment_method",
            "empty method",
        ),
        (
            start_req("k", &order, 1, &long),
            "payment_method",
            "method over 256 bytes",
        ),
        (
            start_req("k", &order, 1, "tok_unknown"),
            "payment_method",
            "unknown card token",
        ),
    ];
    for (req, field, case) in starts {
        assert_invalid(c.start_payment(req).await, field, case);
    }
    assert_invalid(
        c.cancel_payment(cancel_req("", &order)).await,
        "idempotency_key",
        "cancel key",
    );
    assert_invalid(
        c.cancel_payment(cancel_req("k", "x")).await,
        "order_id",
        "cancel order",
    );
    assert_invalid(
        c.complete_payment(complete_req(&long, &order)).await,
        "idempotency_key",
        "complete key",
    );
    assert_invalid(
        c.complete_payment(complete_req("k", "")).await,
        "order_id",
        "complete order",
    );
    assert_invalid(
        c.refund_payment(refund_req("", &order)).await,
        "idempotency_key",
        "refund key",
    );
    assert_invalid(
        c.refund_payment(refund_req("k", "1234")).await,
        "order_id",
        "refund order",
    );
    assert_invalid(
        c.get_payment(get_req("nope")).await,
        "order_id",
        "get order",
    );
    assert_invalid(
        c.get_payment(get_req("")).await,
        "order_id",
        "get empty order",
    );

    assert_eq!(t.rows().await, rows, "no payment row changed");
    assert_eq!(t.key_rows().await, keys, "no idempotency key stored");
    assert!(t.gateway.authorizations_of(&order).is_empty());
    assert_eq!(
        t.intent(&order).await,
        None,
        "no authorization intent is left (the unknown card token's is deleted)"
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(invalid_inputs_write_nothing);
