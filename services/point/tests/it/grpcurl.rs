//! The real grpcurl binary against a running server (reflection on): the public point API of
//! `proto/sagaflow/point/v1/point.proto` answers with its lowerCamelCase JSON field names.

use sagaflow_testkit::Kind;
use serde_json::json;

use crate::harness::Harness;

async fn grpcurl_sees_the_documented_json(kind: Kind) {
    let h = Harness::start(kind, "pt_grpcurl").await;

    let empty = h.grpcurl("GetBalance", json!({"userId": "alice"})).await;
    assert_eq!(empty, json!({"userId": "alice", "balance": "0"}));
    let granted = h
        .grpcurl(
            "GrantPoints",
            json!({"userId": "alice", "amount": 30000, "idempotencyKey": "welcome:alice"}),
        )
        .await;
    assert_eq!(granted, json!({"userId": "alice", "balance": "30000"}));
    // The same key again: the same answer, granted once.
    let again = h
        .grpcurl(
            "GrantPoints",
            json!({"userId": "alice", "amount": 30000, "idempotencyKey": "welcome:alice"}),
        )
        .await;
    assert_eq!(again, granted);
    let balance = h.grpcurl("GetBalance", json!({"userId": "alice"})).await;
    assert_eq!(balance, json!({"userId": "alice", "balance": "30000"}));
    h.0.stop().await;
}

sagaflow_testkit::both_backends!(grpcurl_sees_the_documented_json);
