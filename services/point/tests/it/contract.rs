//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on DeductPoints and its compensation RestorePoints.

use sagaflow_proto::point::v1::{DeductPointsRequest, DeductPointsResponse, RestorePointsRequest};
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command, Compensatable},
};

use crate::harness::Harness;

struct DeductPoints(Harness);

fn deduct(user: &str, order: &str, key: &str, amount: i64) -> DeductPointsRequest {
    DeductPointsRequest {
        idempotency_key: key.into(),
        user_id: user.into(),
        order_id: order.into(),
        amount,
    }
}

impl Command for DeductPoints {
    /// (user, order id): a user with 10 000 points.
    type Subject = (String, String);
    type Reply = DeductPointsResponse;
    /// (balance, the order's deduction (amount, status)).
    type Effect = (Option<i64>, Option<(i64, String)>);

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async move {
            let user = format!("u-{}", uuid::Uuid::new_v4());
            self.0.grant(&user, 10_000).await;
            (user, uuid::Uuid::new_v4().to_string())
        })
    }

    fn send(
        &self,
        (user, order): &Self::Subject,
        key: &str,
        other: bool,
    ) -> Answer<'_, Self::Reply> {
        let req = deduct(user, order, key, if other { 2_000 } else { 1_000 });
        let mut client = self.0.client.clone();
        Box::pin(async move { client.deduct_points(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, (user, order): &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let (user, order) = (user.clone(), order.clone());
        Box::pin(async move {
            let deduction =
                sqlx::query_as("SELECT amount, status FROM deductions WHERE order_id = $1")
                    .bind(&order)
                    .fetch_optional(self.0.db.pool())
                    .await
                    .unwrap();
            (self.0.balance(&user).await, deduction)
        })
    }
}

impl Compensatable for DeductPoints {
    fn compensate(&self, (user, order): &Self::Subject, key: &str) -> Answer<'_, ()> {
        let req = RestorePointsRequest {
            idempotency_key: key.into(),
            user_id: user.clone(),
            order_id: order.clone(),
        };
        let mut client = self.0.client.clone();
        Box::pin(async move { client.restore_points(req).await.map(drop) })
    }
}

async fn deduct_points_keeps_the_command_contract(kind: Kind) {
    let h = Harness::start(kind, "pt_contract").await;
    contract::run(DeductPoints(h)).await;
}

sagaflow_testkit::both_backends!(deduct_points_keeps_the_command_contract);
