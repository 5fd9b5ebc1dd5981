//! The real grpcurl binary against a running server (reflection on): the public point API of
//! `proto/sagaflow/point/v1/point.proto` answers with its lowerCamelCase JSON field names.

use sagaflow_testkit::Kind;
use serde_json::{Value, json};

use crate::harness::Harness;

const SERVICE: &str = "sagaflow.point.v1.PointService";

async fn call(addr: String, method: &'static str, body: Value) -> Value {
    sagaflow_testkit::service::grpcurl_call(&addr, &format!("{SERVICE}/{method}"), &body).await
}

async fn grpcurl_sees_the_documented_json(kind: Kind) {
    let h = Harness::start(kind, "pt_grpcurl").await;
    let addr = h.server.addr().to_string();

    let empty = call(addr.clone(), "GetBalance", json!({"userId": "alice"})).await;
    assert_eq!(empty, json!({"userId": "alice", "balance": "0"}));
    let granted = call(
        addr.clone(),
        "GrantPoints",
        json!({"userId": "alice", "amount": 30000, "idempotencyKey": "welcome:alice"}),
    )
    .await;
    assert_eq!(granted, json!({"userId": "alice", "balance": "30000"}));
    // The same key again: the same answer, granted once.
    let again = call(
        addr.clone(),
        "GrantPoints",
        json!({"userId": "alice", "amount": 30000, "idempotencyKey": "welcome:alice"}),
    )
    .await;
    assert_eq!(again, granted);
    let balance = call(addr.clone(), "GetBalance", json!({"userId": "alice"})).await;
    assert_eq!(balance, json!({"userId": "alice", "balance": "30000"}));
    h.0.stop().await;
}

sagaflow_testkit::both_backends!(grpcurl_sees_the_documented_json);
