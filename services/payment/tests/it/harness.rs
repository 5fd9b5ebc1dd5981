//! A payment server on a loopback port over a fresh database, with a simulated gateway the test
//! can inspect.

use std::sync::Arc;

use sagaflow_payment::{PaymentGateway, PaymentService, SimulatedGateway, SimulatedGatewayConfig};
use sagaflow_proto::payment::v1::{
    CancelPaymentRequest, CompletePaymentRequest, GetPaymentRequest, Payment, RefundPaymentRequest,
    StartPaymentRequest, payment_service_client::PaymentServiceClient,
};
use sagaflow_server::Db;
use sagaflow_testkit::{Kind, TestDatabase, service::ServiceHarness};
use tonic::{Status, transport::Channel};

/// A running payment server with its database, a connected client and the simulated gateway
/// behind it; dereferences to the [`ServiceHarness`].
pub(crate) struct TestPayment {
    harness: ServiceHarness<PaymentServiceClient<Channel>>,
    pub(crate) gateway: Arc<SimulatedGateway>,
}

impl std::ops::Deref for TestPayment {
    type Target = ServiceHarness<PaymentServiceClient<Channel>>;
    fn deref(&self) -> &Self::Target {
        &self.harness
    }
}

impl std::ops::DerefMut for TestPayment {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.harness
    }
}

pub(crate) async fn start(kind: Kind, name: &str) -> TestPayment {
    start_with(kind, name, SimulatedGatewayConfig::default()).await
}

pub(crate) async fn start_with(
    kind: Kind,
    name: &str,
    config: SimulatedGatewayConfig,
) -> TestPayment {
    let gateway = Arc::new(SimulatedGateway::new(config));
    serve(TestDatabase::new(kind, name), gateway, |_, g| g).await
}

/// A service whose gateway is `wrap(db, simulated)`: a test gateway in front of the simulated
/// one (which the test still inspects through [`TestPayment::gateway`]). `db` is the service's
/// own pool.
pub(crate) async fn start_wrapped(
    kind: Kind,
    name: &str,
    wrap: impl FnOnce(Db, Arc<SimulatedGateway>) -> Arc<dyn PaymentGateway>,
) -> TestPayment {
    let gateway = Arc::new(SimulatedGateway::new(SimulatedGatewayConfig::default()));
    serve(TestDatabase::new(kind, name), gateway, wrap).await
}

async fn serve(
    tdb: TestDatabase,
    gateway: Arc<SimulatedGateway>,
    wrap: impl FnOnce(Db, Arc<SimulatedGateway>) -> Arc<dyn PaymentGateway>,
) -> TestPayment {
    let simulated = Arc::clone(&gateway);
    let harness = ServiceHarness::start_on(
        tdb,
        sagaflow_payment::migrations(),
        sagaflow_payment::SERVICE_NAME,
        |db, routes| PaymentService::new(db.clone(), wrap(db, simulated)).register(routes),
        PaymentServiceClient::new,
    )
    .await;
    TestPayment { harness, gateway }
}

impl TestPayment {
    pub(crate) async fn stop(self) {
        self.harness.stop().await;
    }

    /// Stops the server and its pool and starts a new one over the same database, with the same
    /// simulated gateway (an outside party: it remembers) unwrapped: the service's restart.
    pub(crate) async fn restart(self) -> TestPayment {
        let tdb = self.harness.into_database().await;
        serve(tdb, self.gateway, |_, g| g).await
    }

    /// StartPayment of `amount` KRW won with card token `token`: the payment it answers.
    pub(crate) async fn start(
        &self,
        key: &str,
        order_id: &str,
        amount: i64,
        token: &str,
    ) -> Result<Payment, Status> {
        let req = start_req(key, order_id, amount, token);
        let answer = self.client.clone().start_payment(req).await?;
        Ok(answer
            .into_inner()
            .payment
            .expect("StartPayment answers the payment"))
    }

    /// CancelPayment: the payment it answers (`None`: there was none, a tombstone was left).
    pub(crate) async fn cancel(
        &self,
        key: &str,
        order_id: &str,
    ) -> Result<Option<Payment>, Status> {
        let answer = self
            .client
            .clone()
            .cancel_payment(cancel_req(key, order_id))
            .await?;
        Ok(answer.into_inner().payment)
    }

    /// CompletePayment: the payment it answers.
    pub(crate) async fn complete(&self, key: &str, order_id: &str) -> Result<Payment, Status> {
        let req = complete_req(key, order_id);
        let answer = self.client.clone().complete_payment(req).await?;
        Ok(answer
            .into_inner()
            .payment
            .expect("CompletePayment answers the payment"))
    }

    /// RefundPayment: the payment it answers.
    pub(crate) async fn refund(&self, key: &str, order_id: &str) -> Result<Payment, Status> {
        let req = refund_req(key, order_id);
        let answer = self.client.clone().refund_payment(req).await?;
        Ok(answer
            .into_inner()
            .payment
            .expect("RefundPayment answers the payment"))
    }

    /// GetPayment: the order's payment.
    pub(crate) async fn get(&self, order_id: &str) -> Result<Payment, Status> {
        let answer = self.client.clone().get_payment(get_req(order_id)).await?;
        Ok(answer
            .into_inner()
            .payment
            .expect("GetPayment answers the payment"))
    }

    /// The authorization intent of `order_id` as (order_id, gateway_key, amount, method, status,
    /// void_ref), if any.
    pub(crate) async fn intent(&self, order_id: &str) -> Option<IntentRow> {
        let sql = "SELECT order_id, gateway_key, amount, payment_method, status, void_ref \
                   FROM payment_intents WHERE order_id = $1";
        self.row(sql, order_id).await
    }

    /// Every payments row as (order_id, amount, method, status, authorization_ref), ordered.
    pub(crate) async fn rows(&self) -> Vec<PaymentRow> {
        self.harness
            .rows(
                "SELECT order_id, amount, payment_method, status, authorization_ref \
                 FROM payments ORDER BY order_id",
            )
            .await
    }

    /// The number of stored idempotency keys.
    pub(crate) async fn key_rows(&self) -> i64 {
        let [keys] = self.table_counts(["idempotency_keys"]).await;
        keys
    }

    /// The stored gRPC code of an idempotency key (0 = OK), if it was recorded.
    pub(crate) async fn stored_code(&self, key: &str) -> Option<i64> {
        let sql = "SELECT status_code FROM idempotency_keys WHERE idempotency_key = $1";
        self.value::<Option<i64>>(sql, key).await.flatten()
    }
}

pub(crate) type PaymentRow = (String, Option<i64>, Option<String>, String, Option<String>);

pub(crate) type IntentRow = (
    String,
    String,
    Option<i64>,
    Option<String>,
    String,
    Option<String>,
);

pub(crate) fn order_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) fn start_req(
    key: &str,
    order_id: &str,
    amount: i64,
    token: &str,
) -> StartPaymentRequest {
    StartPaymentRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
        amount,
        payment_method: token.into(),
        user_id: "alice".into(),
    }
}

pub(crate) fn cancel_req(key: &str, order_id: &str) -> CancelPaymentRequest {
    CancelPaymentRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
    }
}

pub(crate) fn complete_req(key: &str, order_id: &str) -> CompletePaymentRequest {
    CompletePaymentRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
    }
}

pub(crate) fn refund_req(key: &str, order_id: &str) -> RefundPaymentRequest {
    RefundPaymentRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
    }
}

pub(crate) fn get_req(order_id: &str) -> GetPaymentRequest {
    GetPaymentRequest {
        order_id: order_id.into(),
    }
}
