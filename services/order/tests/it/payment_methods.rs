//! PlaceOrder accepts only the payment methods the service is configured with: an unknown card
//! token is INVALID_ARGUMENT naming `payment_method` and writes nothing (no order, no outbox
//! event, no idempotency key), so no saga ever takes stock for an order that could only fail at
//! payment; every configured token is still accepted.

use sagaflow_server::error::violated_fields;
use sagaflow_testkit::Kind;
use tonic::Code;

use crate::harness::{self, PAYMENT_METHODS, place_req};

async fn unknown_payment_methods_are_invalid_and_write_nothing(kind: Kind) {
    let mut t = harness::start(kind, "ord_methods").await;
    // Existing rows, so that "no row changed" is checked against real data.
    t.place(place_req("pm-0", "alice", &[("KB-001", 1)], None, 0))
        .await;
    let counts = t.counts().await;

    for (i, method) in ["tok_bogus", "TOK_OK", "tok_ok ", "tok_okay", "ok"]
        .into_iter()
        .enumerate()
    {
        let mut req = place_req(&format!("pm-bad-{i}"), "alice", &[("KB-001", 1)], None, 0);
        req.payment_method = method.into();
        let status = t.client.place_order(req).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{method:?}: {status:?}"
        );
        assert_eq!(
            violated_fields(&status),
            vec!["payment_method".to_owned()],
            "{method:?}"
        );
        assert!(
            status.message().contains("tok_ok"),
            "the message lists the accepted methods: {status:?}"
        );
        assert_eq!(t.counts().await, counts, "{method:?}: no row written");
    }

    // The same request id with an accepted method is a fresh order: the refusal kept no key.
    let mut req = place_req("pm-bad-0", "alice", &[("KB-001", 1)], None, 0);
    req.payment_method = "tok_ok".into();
    t.place(req).await;

    for (i, method) in PAYMENT_METHODS.iter().enumerate() {
        let mut req = place_req(&format!("pm-ok-{i}"), "bob", &[("MS-002", 1)], None, 0);
        req.payment_method = (*method).into();
        let order = t.place(req).await;
        assert_eq!(order.user_id, "bob", "{method}");
    }
    let after = t.counts().await;
    assert_eq!(after[0], counts[0] + 1 + PAYMENT_METHODS.len() as i64);
    t.stop().await;
}

sagaflow_testkit::both_backends!(unknown_payment_methods_are_invalid_and_write_nothing);
