//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on every payment command: StartPayment with its compensation
//! CancelPayment (the late-action rule too), and CancelPayment, CompletePayment and
//! RefundPayment on their own (the idempotency part: none of them has a compensation).

use sagaflow_payment::AuthorizationState;
use sagaflow_proto::payment::v1::{
    CancelPaymentResponse, CompletePaymentResponse, RefundPaymentResponse, StartPaymentResponse,
};
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command, Compensatable},
};

use crate::harness::{
    self, TestPayment, cancel_req, complete_req, order_id, refund_req, start_req,
};

/// (the order's payment row (amount, status), its authorizations at the gateway).
type PaymentEffect = (Option<(Option<i64>, String)>, Vec<AuthorizationState>);

fn effect_of<'a>(payment: &'a TestPayment, order: &str) -> BoxFuture<'a, PaymentEffect> {
    let order = order.to_owned();
    Box::pin(async move {
        let row = payment
            .row(
                "SELECT amount, status FROM payments WHERE order_id = $1",
                &order,
            )
            .await;
        (row, payment.gateway.authorizations_of(&order))
    })
}

/// A new order whose payment of 1 000 KRW is STARTED (authorized).
async fn started(payment: &TestPayment) -> String {
    let order = order_id();
    payment
        .start(&format!("{order}:start"), &order, 1_000, "tok_ok")
        .await
        .unwrap();
    order
}

/// The order the request names: the subject's, or (`other`) a new one, so that the same key
/// carries another request.
fn target(order: &str, other: bool) -> String {
    if other { order_id() } else { order.to_owned() }
}

struct StartPayment(TestPayment);

impl Command for StartPayment {
    /// The order id.
    type Subject = String;
    type Reply = StartPaymentResponse;
    type Effect = PaymentEffect;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async { order_id() })
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = start_req(key, order, if other { 2_000 } else { 1_000 }, "tok_ok");
        let mut client = self.0.client.clone();
        Box::pin(async move { client.start_payment(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        effect_of(&self.0, order)
    }
}

impl Compensatable for StartPayment {
    fn compensate(&self, order: &Self::Subject, key: &str) -> Answer<'_, ()> {
        let req = cancel_req(key, order);
        let mut client = self.0.client.clone();
        Box::pin(async move { client.cancel_payment(req).await.map(drop) })
    }
}

/// CancelPayment of a STARTED payment (it voids the authorization).
struct CancelPayment(TestPayment);

impl Command for CancelPayment {
    /// The order id of a STARTED payment.
    type Subject = String;
    type Reply = CancelPaymentResponse;
    type Effect = PaymentEffect;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(started(&self.0))
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = cancel_req(key, &target(order, other));
        let mut client = self.0.client.clone();
        Box::pin(async move { client.cancel_payment(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        effect_of(&self.0, order)
    }
}

/// CompletePayment of a STARTED payment (it captures the authorization).
struct CompletePayment(TestPayment);

impl Command for CompletePayment {
    /// The order id of a STARTED payment.
    type Subject = String;
    type Reply = CompletePaymentResponse;
    type Effect = PaymentEffect;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(started(&self.0))
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = complete_req(key, &target(order, other));
        let mut client = self.0.client.clone();
        Box::pin(async move { client.complete_payment(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        effect_of(&self.0, order)
    }
}

/// RefundPayment of a COMPLETED payment (it refunds the capture).
struct RefundPayment(TestPayment);

impl Command for RefundPayment {
    /// The order id of a COMPLETED payment.
    type Subject = String;
    type Reply = RefundPaymentResponse;
    type Effect = PaymentEffect;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async {
            let order = started(&self.0).await;
            self.0
                .complete(&format!("{order}:complete"), &order)
                .await
                .unwrap();
            order
        })
    }

    fn send(&self, order: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply> {
        let req = refund_req(key, &target(order, other));
        let mut client = self.0.client.clone();
        Box::pin(async move { client.refund_payment(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, order: &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        effect_of(&self.0, order)
    }
}

async fn start_payment_keeps_the_command_contract(kind: Kind) {
    contract::run(StartPayment(harness::start(kind, "pay_contract").await)).await;
}

async fn cancel_payment_keeps_the_command_contract(kind: Kind) {
    contract::run_idempotent(CancelPayment(
        harness::start(kind, "pay_cancel_contract").await,
    ))
    .await;
}

async fn complete_payment_keeps_the_command_contract(kind: Kind) {
    let payment = harness::start(kind, "pay_complete_contract").await;
    contract::run_idempotent(CompletePayment(payment)).await;
}

async fn refund_payment_keeps_the_command_contract(kind: Kind) {
    contract::run_idempotent(RefundPayment(
        harness::start(kind, "pay_refund_contract").await,
    ))
    .await;
}

sagaflow_testkit::both_backends!(
    start_payment_keeps_the_command_contract,
    cancel_payment_keeps_the_command_contract,
    complete_payment_keeps_the_command_contract,
    refund_payment_keeps_the_command_contract,
);
