//! Every invalid input gives INVALID_ARGUMENT naming the field, and no row changes
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::coupon::v1::{
    GetCouponRequest, IssueCouponRequest, RestoreCouponRequest, UseCouponRequest,
    coupon_service_client::CouponServiceClient,
};
use sagaflow_testkit::{Kind, service::assert_each_invalid};
use tonic::transport::Channel;

use crate::harness::{Harness, fixed, order_id, percent};

sagaflow_testkit::rpc_calls!(enum Call on CouponServiceClient<Channel> {
    Get(GetCouponRequest) => get_coupon, Issue(IssueCouponRequest) => issue_coupon,
    Use(UseCouponRequest) => use_coupon, Restore(RestoreCouponRequest) => restore_coupon,
});

fn cases() -> Vec<(Call, &'static [&'static str])> {
    let long = "x".repeat(257);
    let issue = fixed("NEW", "alice");
    let pct = percent("NEWP", "alice");
    let use_ok = UseCouponRequest {
        idempotency_key: "k".into(),
        code: "FLAT".into(),
        user_id: "alice".into(),
        order_id: order_id(),
        order_amount: 50_000,
    };
    let restore_ok = RestoreCouponRequest {
        idempotency_key: "k".into(),
        code: "FLAT".into(),
        order_id: order_id(),
    };
    let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    vec![
        (
            Call::Get(GetCouponRequest {
                code: String::new(),
            }),
            &["code"],
        ),
        (
            Call::Get(GetCouponRequest { code: long.clone() }),
            &["code"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                code: String::new(),
                ..issue.clone()
            }),
            &["code"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                code: long.clone(),
                ..issue.clone()
            }),
            &["code"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                user_id: String::new(),
                ..issue.clone()
            }),
            &["user_id"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                discount_amount: -1,
                ..issue.clone()
            }),
            &["discount_amount"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                discount_percent: 101,
                ..pct.clone()
            }),
            &["discount_percent"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                discount_percent: -10,
                ..pct.clone()
            }),
            &["discount_percent"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                discount_amount: 0,
                ..issue.clone()
            }),
            &["discount_amount", "discount_percent"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                discount_amount: 1_000,
                ..pct.clone()
            }),
            &["discount_amount", "discount_percent"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                min_order_amount: -1,
                ..issue.clone()
            }),
            &["min_order_amount"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                max_discount: -1,
                ..pct.clone()
            }),
            &["max_discount"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                max_discount: 1_000,
                ..issue.clone()
            }),
            &["max_discount"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                expires_at: None,
                ..issue.clone()
            }),
            &["expires_at"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                expires_at: ts(1_900_000_000, -1),
                ..issue.clone()
            }),
            &["expires_at"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                expires_at: ts(i64::MAX, 0),
                ..issue
            }),
            &["expires_at"],
        ),
        (
            Call::Issue(IssueCouponRequest {
                expires_at: ts(i64::MIN, 0),
                ..pct
            }),
            &["expires_at"],
        ),
        (
            Call::Use(UseCouponRequest {
                idempotency_key: String::new(),
                ..use_ok.clone()
            }),
            &["idempotency_key"],
        ),
        (
            Call::Use(UseCouponRequest {
                idempotency_key: long.clone(),
                ..use_ok.clone()
            }),
            &["idempotency_key"],
        ),
        (
            Call::Use(UseCouponRequest {
                code: String::new(),
                ..use_ok.clone()
            }),
            &["code"],
        ),
        (
            Call::Use(UseCouponRequest {
                user_id: long.clone(),
                ..use_ok.clone()
            }),
            &["user_id"],
        ),
        (
            Call::Use(UseCouponRequest {
                user_id: String::new(),
                ..use_ok.clone()
            }),
            &["user_id"],
        ),
        (
            Call::Use(UseCouponRequest {
                order_id: String::new(),
                ..use_ok.clone()
            }),
            &["order_id"],
        ),
        (
            Call::Use(UseCouponRequest {
                order_id: "order-1".into(),
                ..use_ok.clone()
            }),
            &["order_id"],
        ),
        (
            Call::Use(UseCouponRequest {
                order_amount: -1,
                ..use_ok
            }),
            &["order_amount"],
        ),
        (
            Call::Restore(RestoreCouponRequest {
                idempotency_key: String::new(),
                ..restore_ok.clone()
            }),
            &["idempotency_key"],
        ),
        (
            Call::Restore(RestoreCouponRequest {
                code: long,
                ..restore_ok.clone()
            }),
            &["code"],
        ),
        (
            Call::Restore(RestoreCouponRequest {
                order_id: "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz".into(),
                ..restore_ok
            }),
            &["order_id"],
        ),
    ]
}

async fn every_invalid_input_names_its_field_and_writes_nothing(kind: Kind) {
    let h = Harness::start(kind, "cpn_invalid").await;
    h.issue(fixed("FLAT", "alice")).await;
    assert_each_invalid(cases(), |call| call.send(&h.client), || h.snapshot()).await;
}

sagaflow_testkit::both_backends!(every_invalid_input_names_its_field_and_writes_nothing);
