//! Every invalid input gives INVALID_ARGUMENT naming the field, and no row changes
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::point::v1::{
    DeductPointsRequest, GetBalanceRequest, GrantPointsRequest, RestorePointsRequest,
    point_service_client::PointServiceClient,
};
use sagaflow_testkit::{Kind, service::assert_each_invalid};
use tonic::transport::Channel;

use crate::harness::{Harness, order_id};

sagaflow_testkit::rpc_calls!(enum Call on PointServiceClient<Channel> {
    Get(GetBalanceRequest) => get_balance, Grant(GrantPointsRequest) => grant_points,
    Deduct(DeductPointsRequest) => deduct_points, Restore(RestorePointsRequest) => restore_points,
});

fn cases() -> Vec<(Call, &'static str)> {
    let long = "x".repeat(257);
    let grant = GrantPointsRequest {
        user_id: "alice".into(),
        amount: 1,
        idempotency_key: "k".into(),
    };
    let deduct = DeductPointsRequest {
        idempotency_key: "k".into(),
        user_id: "alice".into(),
        order_id: order_id(),
        amount: 1,
    };
    let restore = RestorePointsRequest {
        idempotency_key: "k".into(),
        user_id: "alice".into(),
        order_id: order_id(),
    };
    vec![
        (
            Call::Get(GetBalanceRequest {
                user_id: String::new(),
            }),
            "user_id",
        ),
        (
            Call::Get(GetBalanceRequest {
                user_id: long.clone(),
            }),
            "user_id",
        ),
        (
            Call::Grant(GrantPointsRequest {
                user_id: String::new(),
                ..grant.clone()
            }),
            "user_id",
        ),
        (
            Call::Grant(GrantPointsRequest {
                amount: 0,
                ..grant.clone()
            }),
            "amount",
        ),
        (
            Call::Grant(GrantPointsRequest {
                amount: -100,
                ..grant.clone()
            }),
            "amount",
        ),
        (
            Call::Grant(GrantPointsRequest {
                amount: i64::MIN,
                ..grant.clone()
            }),
            "amount",
        ),
        (
            Call::Grant(GrantPointsRequest {
                idempotency_key: String::new(),
                ..grant.clone()
            }),
            "idempotency_key",
        ),
        (
            Call::Grant(GrantPointsRequest {
                idempotency_key: long.clone(),
                ..grant
            }),
            "idempotency_key",
        ),
        (
            Call::Deduct(DeductPointsRequest {
                idempotency_key: String::new(),
                ..deduct.clone()
            }),
            "idempotency_key",
        ),
        (
            Call::Deduct(DeductPointsRequest {
                user_id: long,
                ..deduct.clone()
            }),
            "user_id",
        ),
        (
            Call::Deduct(DeductPointsRequest {
                order_id: String::new(),
                ..deduct.clone()
            }),
            "order_id",
        ),
        (
            Call::Deduct(DeductPointsRequest {
                order_id: "12345678-1234-1234-1234-1234567890".into(),
                ..deduct.clone()
            }),
            "order_id",
        ),
        (
            Call::Deduct(DeductPointsRequest {
                amount: 0,
                ..deduct.clone()
            }),
            "amount",
        ),
        (
            Call::Deduct(DeductPointsRequest {
                amount: -5,
                ..deduct
            }),
            "amount",
        ),
        (
            Call::Restore(RestorePointsRequest {
                idempotency_key: String::new(),
                ..restore.clone()
            }),
            "idempotency_key",
        ),
        (
            Call::Restore(RestorePointsRequest {
                user_id: String::new(),
                ..restore.clone()
            }),
            "user_id",
        ),
        (
            Call::Restore(RestorePointsRequest {
                order_id: "not-a-uuid".into(),
                ..restore
            }),
            "order_id",
        ),
    ]
}

async fn every_invalid_input_names_its_field_and_writes_nothing(kind: Kind) {
    let h = Harness::start(kind, "pt_invalid").await;
    h.grant("alice", 1_000).await;
    assert_each_invalid(cases(), |call| call.send(&h.client), || h.snapshot()).await;
}

sagaflow_testkit::both_backends!(every_invalid_input_names_its_field_and_writes_nothing);
