//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on UseCoupon and its compensation RestoreCoupon.

use sagaflow_proto::coupon::v1::{RestoreCouponRequest, UseCouponRequest, UseCouponResponse};
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command, Compensatable},
};

use crate::harness::{Harness, fixed, order_id};

struct UseCoupon(Harness);

fn use_req(code: &str, order: &str, key: &str, amount: i64) -> UseCouponRequest {
    UseCouponRequest {
        idempotency_key: key.into(),
        code: code.into(),
        user_id: "alice".into(),
        order_id: order.into(),
        order_amount: amount,
    }
}

impl Command for UseCoupon {
    /// (an AVAILABLE fixed coupon of alice, order id).
    type Subject = (String, String);
    type Reply = UseCouponResponse;
    /// (coupon status, whether the order holds it, compensation records of the order).
    type Effect = (String, bool, i64);

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async move {
            let code = format!("C-{}", uuid::Uuid::new_v4());
            self.0.issue(fixed(&code, "alice")).await;
            (code, order_id())
        })
    }

    fn send(
        &self,
        (code, order): &Self::Subject,
        key: &str,
        other: bool,
    ) -> Answer<'_, Self::Reply> {
        let req = use_req(code, order, key, if other { 30_000 } else { 20_000 });
        let mut client = self.0.client.clone();
        Box::pin(async move { client.use_coupon(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, (code, order): &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let (code, order) = (code.clone(), order.clone());
        Box::pin(async move {
            let (status, holder) = self.0.holder(&code).await;
            let compensations: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM coupon_compensations WHERE order_id = $1")
                    .bind(&order)
                    .fetch_one(self.0.db.pool())
                    .await
                    .unwrap();
            (
                status,
                holder.as_deref() == Some(order.as_str()),
                compensations,
            )
        })
    }
}

impl Compensatable for UseCoupon {
    fn compensate(&self, (code, order): &Self::Subject, key: &str) -> Answer<'_, ()> {
        let req = RestoreCouponRequest {
            idempotency_key: key.into(),
            code: code.clone(),
            order_id: order.clone(),
        };
        let mut client = self.0.client.clone();
        Box::pin(async move { client.restore_coupon(req).await.map(drop) })
    }
}

async fn use_coupon_keeps_the_command_contract(kind: Kind) {
    contract::run(UseCoupon(Harness::start(kind, "cpn_contract").await)).await;
}

sagaflow_testkit::both_backends!(use_coupon_keeps_the_command_contract);
