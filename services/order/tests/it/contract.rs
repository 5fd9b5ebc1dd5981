//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on every order command. None has a compensation (FailOrder clears the
//! discount of ApplyCoupon; CompleteOrder comes after the pivot), so only the idempotency part
//! applies: PlaceOrder (keyed by its `request_id`), ApplyCoupon (saga step 2), CompleteOrder
//! (step 7) and FailOrder (the failure finalizer).

use sagaflow_proto::order::v1::{
    ApplyCouponRequest, ApplyCouponResponse, CompleteOrderResponse, FailOrderResponse,
    FailureReason, ListOrdersRequest, PlaceOrderResponse,
};
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command},
};
use tokio::sync::Mutex;

use crate::harness::{
    self, TestOrder, apply_req, complete_req, fail_req, fixed, new_key, place_req,
};

/// An order's state as a command leaves it, in values that do not name the order: (status,
/// failure reason, discount, payable, its status history).
type OrderEffect = (i32, i32, i64, i64, Vec<(String, Option<String>)>);

fn order_effect<'a>(order: &'a Mutex<TestOrder>, order_id: &str) -> BoxFuture<'a, OrderEffect> {
    let order_id = order_id.to_owned();
    Box::pin(async move {
        let t = order.lock().await;
        let o = t.get(&order_id).await;
        let history = t.history(&order_id).await;
        (o.status, o.failure_reason, o.discount, o.payable, history)
    })
}

/// A new PENDING order of 2 × KB-001 (subtotal 90 000 KRW) with a coupon code.
async fn pending(order: &Mutex<TestOrder>) -> String {
    let req = place_req(&new_key(), "alice", &[("KB-001", 2)], Some("WELCOME"), 0);
    order.lock().await.place(req).await.order_id
}

/// The order the request names: the subject's, or (`other`) a new one, so that the same key
/// carries another request.
fn target(order_id: &str, other: bool) -> String {
    if other {
        new_key()
    } else {
        order_id.to_owned()
    }
}

struct PlaceOrder(Mutex<TestOrder>);

impl Command for PlaceOrder {
    /// A user with no orders yet.
    type Subject = String;
    type Reply = PlaceOrderResponse;
    /// The user's orders as (status, subtotal, lines), newest first.
    type Effect = Vec<(i32, i64, usize)>;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async { format!("user-{}", new_key()) })
    }

    fn send(&self, user: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let quantity = if other { 3 } else { 1 };
        let req = place_req(key, user, &[("MS-002", quantity)], None, 0);
        Box::pin(async move {
            let mut client = self.0.lock().await.client.clone();
            client.place_order(req).await.map(|r| r.into_inner())
        })
    }

    fn effect(&self, user: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let req = ListOrdersRequest {
            user_id: user.clone(),
            page_size: 100,
            ..ListOrdersRequest::default()
        };
        Box::pin(async move {
            let mut client = self.0.lock().await.client.clone();
            let orders = client.list_orders(req).await.unwrap().into_inner().orders;
            orders
                .iter()
                .map(|o| (o.status, o.subtotal, o.lines.len()))
                .collect()
        })
    }
}

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
    type Effect = OrderEffect;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(pending(&self.0))
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = apply(order, key, if other { 6_000 } else { 5_000 });
        Box::pin(async move {
            let mut client = self.0.lock().await.client.clone();
            client.apply_coupon(req).await.map(|r| r.into_inner())
        })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        order_effect(&self.0, order)
    }
}

struct CompleteOrder(Mutex<TestOrder>);

impl Command for CompleteOrder {
    /// A PENDING order.
    type Subject = String;
    type Reply = CompleteOrderResponse;
    type Effect = OrderEffect;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(pending(&self.0))
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = complete_req(key, &target(order, other));
        Box::pin(async move {
            let mut client = self.0.lock().await.client.clone();
            client.complete_order(req).await.map(|r| r.into_inner())
        })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        order_effect(&self.0, order)
    }
}

struct FailOrder(Mutex<TestOrder>);

impl Command for FailOrder {
    /// A PENDING order.
    type Subject = String;
    type Reply = FailOrderResponse;
    type Effect = OrderEffect;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(pending(&self.0))
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let reason = if other {
            FailureReason::PaymentDeclined
        } else {
            FailureReason::OutOfStock
        };
        let req = fail_req(key, order, reason);
        Box::pin(async move {
            let mut client = self.0.lock().await.client.clone();
            client.fail_order(req).await.map(|r| r.into_inner())
        })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        order_effect(&self.0, order)
    }
}

async fn place_order_keeps_the_command_contract(kind: Kind) {
    let t = harness::start(kind, "ord_place_contract").await;
    contract::run_idempotent(PlaceOrder(Mutex::new(t))).await;
}

async fn apply_coupon_keeps_the_command_contract(kind: Kind) {
    let t = harness::start(kind, "ord_contract").await;
    contract::run_idempotent(ApplyCoupon(Mutex::new(t))).await;
}

async fn complete_order_keeps_the_command_contract(kind: Kind) {
    let t = harness::start(kind, "ord_complete_contract").await;
    contract::run_idempotent(CompleteOrder(Mutex::new(t))).await;
}

async fn fail_order_keeps_the_command_contract(kind: Kind) {
    let t = harness::start(kind, "ord_fail_contract").await;
    contract::run_idempotent(FailOrder(Mutex::new(t))).await;
}

sagaflow_testkit::both_backends!(
    place_order_keeps_the_command_contract,
    apply_coupon_keeps_the_command_contract,
    complete_order_keeps_the_command_contract,
    fail_order_keeps_the_command_contract,
);
