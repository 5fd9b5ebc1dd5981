//! The real grpcurl binary against a running server (reflection on): the public coupon API
//! (`proto/sagaflow/coupon/v1/coupon.proto`) answers with its lowerCamelCase JSON field names.

use sagaflow_proto::coupon::v1::UseCouponRequest;
use sagaflow_testkit::Kind;
use serde_json::json;

use crate::harness::{Harness, order_id};

async fn grpcurl_sees_the_documented_json(kind: Kind) {
    let h = Harness::start(kind, "cpn_grpcurl").await;

    let issued = h
        .grpcurl(
            "IssueCoupon",
            json!({
                "code": "WELCOME10",
                "userId": "alice",
                "discountPercent": 10,
                "minOrderAmount": 10000,
                "maxDiscount": 20000,
                "expiresAt": "2030-01-01T00:00:00Z"
            }),
        )
        .await;
    let available = json!({"coupon": {
        "code": "WELCOME10",
        "userId": "alice",
        "status": "COUPON_STATUS_AVAILABLE",
        "orderId": "",
        "discountAmount": "0",
        "discountPercent": 10,
        "minOrderAmount": "10000",
        "maxDiscount": "20000",
        "expiresAt": "2030-01-01T00:00:00Z"
    }});
    assert_eq!(issued, available);
    let fetched = h.grpcurl("GetCoupon", json!({"code": "WELCOME10"})).await;
    assert_eq!(fetched, available);

    let order = order_id();
    h.client
        .clone()
        .use_coupon(UseCouponRequest {
            idempotency_key: "saga:use_coupon".into(),
            code: "WELCOME10".into(),
            user_id: "alice".into(),
            order_id: order.clone(),
            order_amount: 50_000,
        })
        .await
        .unwrap();
    let used = h.grpcurl("GetCoupon", json!({"code": "WELCOME10"})).await;
    assert_eq!(used["coupon"]["status"], json!("COUPON_STATUS_USED"));
    assert_eq!(used["coupon"]["orderId"], json!(order));
    h.0.stop().await;
}

sagaflow_testkit::both_backends!(grpcurl_sees_the_documented_json);
