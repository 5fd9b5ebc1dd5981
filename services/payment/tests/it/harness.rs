//! A payment server on a loopback port over a fresh database, with a simulated gateway the test
//! can inspect.

use std::{sync::Arc, time::Duration};

use sagaflow_payment::{PaymentGateway, PaymentService, SimulatedGateway, SimulatedGatewayConfig};
use sagaflow_proto::payment::v1::{
    CancelPaymentRequest, CompletePaymentRequest, GetPaymentRequest, RefundPaymentRequest,
    StartPaymentRequest, payment_service_client::PaymentServiceClient,
};
use sagaflow_server::{Db, grpc::ServerHandle};
use sagaflow_testkit::{Kind, TestDatabase};
use tonic::transport::Channel;

pub(crate) struct TestPayment {
    pub(crate) _tdb: TestDatabase,
    pub(crate) db: Db,
    pub(crate) gateway: Arc<SimulatedGateway>,
    pub(crate) server: ServerHandle,
    pub(crate) client: PaymentServiceClient<Channel>,
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
    let (db, server) = sagaflow_server::grpc::spawn_service(
        &tdb.url,
        sagaflow_payment::migrations(),
        sagaflow_payment::SERVICE_NAME,
        |db, routes| PaymentService::new(db.clone(), wrap(db, simulated)).register(routes),
    )
    .await
    .expect("start the service on its test database");
    let client = PaymentServiceClient::connect(server.url()).await.unwrap();
    TestPayment {
        _tdb: tdb,
        db,
        gateway,
        server,
        client,
    }
}

impl TestPayment {
    pub(crate) async fn stop(self) {
        self.server.shutdown().await.unwrap();
        self.db.close().await;
    }

    /// Stops the server and its pool and starts a new one over the same database, with the same
    /// simulated gateway (an outside party: it remembers) unwrapped: the service's restart.
    pub(crate) async fn restart(self) -> TestPayment {
        let TestPayment {
            _tdb,
            db,
            gateway,
            server,
            ..
        } = self;
        server.shutdown().await.unwrap();
        db.close().await;
        serve(_tdb, gateway, |_, g| g).await
    }

    /// The authorization intent of `order_id` as (order_id, gateway_key, amount, method, status,
    /// void_ref), if any.
    pub(crate) async fn intent(&self, order_id: &str) -> Option<IntentRow> {
        sqlx::query_as(
            "SELECT order_id, gateway_key, amount, payment_method, status, void_ref \
             FROM payment_intents WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(self.db.pool())
        .await
        .unwrap()
    }

    /// Every payments row as (order_id, amount, method, status, authorization_ref), ordered.
    pub(crate) async fn rows(&self) -> Vec<PaymentRow> {
        sqlx::query_as(
            "SELECT order_id, amount, payment_method, status, authorization_ref \
             FROM payments ORDER BY order_id",
        )
        .fetch_all(self.db.pool())
        .await
        .unwrap()
    }

    pub(crate) async fn key_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    /// The stored gRPC code of an idempotency key (0 = OK), if it was recorded.
    pub(crate) async fn stored_code(&self, key: &str) -> Option<i64> {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT status_code FROM idempotency_keys WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(self.db.pool())
        .await
        .unwrap()
        .flatten()
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

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub(crate) async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
