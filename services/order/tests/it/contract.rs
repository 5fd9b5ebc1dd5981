//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on ApplyCoupon (saga step 2; it has no compensation: FailOrder clears the
//! discount, so only the idempotency part applies).

use sagaflow_proto::order::v1::{ApplyCouponRequest, ApplyCouponResponse, GetOrderRequest};
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command},
};
use tokio::sync::Mutex;

use crate::harness::{self, TestOrder, apply_req, fixed, place_req};

struct ApplyCoupon(Mutex<TestOrder>);

fn apply(order: &str, key: &str, discount: i64) -> ApplyCouponRequest {
    ApplyCouponRequest {
        discount,
        ..apply_req(key, order, fixed(discount))
    }
}

impl Command for ApplyCoupon {
    /// A PENDING order placed with a coupon code (subtotal 90 000 KRW).
    type Subject = String;
    type Reply = ApplyCouponResponse;
    /// (discount, payable) of the order, KRW won.
    type Effect = (i64, i64);

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async move {
            let request_id = uuid::Uuid::new_v4().to_string();
            let req = place_req(&request_id, "alice", &[("KB-001", 2)], Some("WELCOME"), 0);
            self.0.lock().await.place(req).await.order_id
        })
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = apply(order, key, if other { 6_000 } else { 5_000 });
        Box::pin(async move {
            let mut client = self.0.lock().await.client.clone();
            client.apply_coupon(req).await.map(|r| r.into_inner())
        })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let req = GetOrderRequest {
            order_id: order.clone(),
            wait: None,
        };
        Box::pin(async move {
            let mut client = self.0.lock().await.client.clone();
            let order = client
                .get_order(req)
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap();
            (order.discount, order.payable)
        })
    }
}

async fn apply_coupon_keeps_the_command_contract(kind: Kind) {
    let t = harness::start(kind, "ord_contract").await;
    contract::run_idempotent(ApplyCoupon(Mutex::new(t))).await;
}

sagaflow_testkit::both_backends!(apply_coupon_keeps_the_command_contract);
