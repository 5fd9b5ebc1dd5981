//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on StartPayment and its compensation CancelPayment.

use sagaflow_payment::AuthorizationState;
use sagaflow_proto::payment::v1::StartPaymentResponse;
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command, Compensatable},
};

use crate::harness::{self, TestPayment, cancel_req, order_id, start_req};

struct StartPayment(TestPayment);

impl Command for StartPayment {
    /// The order id.
    type Subject = String;
    type Reply = StartPaymentResponse;
    /// (the order's payment row (amount, status), its authorizations at the gateway).
    type Effect = (Option<(Option<i64>, String)>, Vec<AuthorizationState>);

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async { order_id() })
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = start_req(key, order, if other { 2_000 } else { 1_000 }, "tok_ok");
        let mut client = self.0.client.clone();
        Box::pin(async move { client.start_payment(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let order = order.clone();
        Box::pin(async move {
            let row = sqlx::query_as("SELECT amount, status FROM payments WHERE order_id = $1")
                .bind(&order)
                .fetch_optional(self.0.db.pool())
                .await
                .unwrap();
            (row, self.0.gateway.authorizations_of(&order))
        })
    }
}

impl Compensatable for StartPayment {
    fn compensate(&self, order: &Self::Subject, key: &str) -> Answer<'_, ()> {
        let req = cancel_req(key, order);
        let mut client = self.0.client.clone();
        Box::pin(async move { client.cancel_payment(req).await.map(drop) })
    }
}

async fn start_payment_keeps_the_command_contract(kind: Kind) {
    contract::run(StartPayment(harness::start(kind, "pay_contract").await)).await;
}

sagaflow_testkit::both_backends!(start_payment_keeps_the_command_contract);
