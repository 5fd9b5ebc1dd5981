//! Attempts in doubt on the real services (docs/architecture.md, "Attempts in doubt"), on SQLite
//! and on PostgreSQL: every call of a step either is refused before the handler or applies with
//! its reply lost (`error:failed_precondition:0.5,lost_reply:1.0`). The business data must stay
//! whole: no stock lost, no points refunded while the money is captured.

use std::time::Duration;

use sagaflow_cli::dev::{Embedded, EmbeddedConfig, Storage};
use sagaflow_orchestrator::StepPolicies;
use sagaflow_proto::{
    inventory::v1::{GetProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        GetOrderRequest, OrderLineRequest, OrderStatus, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
    payment::v1::{GetPaymentRequest, PaymentStatus, payment_service_client::PaymentServiceClient},
    point::v1::{GetBalanceRequest, point_service_client::PointServiceClient},
    workflow::v1::{
        GetSagaRequest, Resolution, ResolveStepRequest, SagaStatus,
        saga_admin_service_client::SagaAdminServiceClient,
    },
};
use sagaflow_testkit::Kind;
use tonic::transport::Channel;

const ORDERS: usize = 30;
const SKU: &str = "KB-001";

sagaflow_testkit::both_backends!(
    lost_replies_then_refusals_at_deduct_inventory_lose_no_stock,
    lost_replies_then_refusals_at_the_pivot_refund_nothing_while_captured,
);

struct System {
    _dir: tempfile::TempDir,
    system: Embedded,
    channel: Channel,
}

async fn start(kind: Kind, name: &str, faults: &str) -> System {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::demo(dir.path().to_path_buf());
    config.storage = match kind {
        Kind::Sqlite => Storage::Sqlite,
        Kind::Postgres => Storage::Postgres {
            url: sagaflow_testkit::TestDatabase::postgres(name).url.clone(),
            prefix: sagaflow_testkit::unique_name(name),
        },
    };
    config.faults = faults.parse().unwrap();
    config.policies = StepPolicies {
        base_delay_ms: 5,
        max_delay_ms: 20,
        pivot_attempts: 8,
        ..StepPolicies::default()
    };
    let system = Embedded::start(config).await.unwrap();
    let channel = Channel::from_shared(system.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    System {
        _dir: dir,
        system,
        channel,
    }
}

impl System {
    async fn stock(&self) -> i64 {
        InventoryServiceClient::new(self.channel.clone())
            .get_product(GetProductRequest { sku: SKU.into() })
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .stock
    }

    async fn balance(&self, user: &str) -> i64 {
        PointServiceClient::new(self.channel.clone())
            .get_balance(GetBalanceRequest {
                user_id: user.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .balance
    }

    async fn payment(&self, order_id: &str) -> Option<PaymentStatus> {
        PaymentServiceClient::new(self.channel.clone())
            .get_payment(GetPaymentRequest {
                order_id: order_id.into(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().payment)
            .map(|p| p.status())
    }

    async fn place(&self, request_id: String, points: i64) -> String {
        OrderServiceClient::new(self.channel.clone())
            .place_order(PlaceOrderRequest {
                request_id,
                user_id: "alice".into(),
                lines: vec![OrderLineRequest {
                    sku: SKU.into(),
                    quantity: 1,
                }],
                coupon_code: None,
                points,
                payment_method: "tok_ok".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
            .order_id
    }

    async fn order_status(&self, order_id: &str) -> OrderStatus {
        OrderServiceClient::new(self.channel.clone())
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
                wait: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
            .status()
    }

    /// Waits for saga `id` (= the order id) to come to rest; its status.
    async fn saga_at_rest(&self, id: &str) -> SagaStatus {
        let saga_id = id.parse().unwrap();
        let state = self
            .system
            .engine()
            .wait_finished(saga_id, Duration::from_secs(30))
            .await
            .unwrap();
        let mut admin = SagaAdminServiceClient::new(self.channel.clone());
        let saga = admin
            .get_saga(GetSagaRequest { saga_id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .saga
            .unwrap();
        assert_eq!(
            saga.status().as_str_name(),
            format!("SAGA_STATUS_{}", state.status())
        );
        saga.status()
    }
}

async fn lost_replies_then_refusals_at_deduct_inventory_lose_no_stock(kind: Kind) {
    let s = start(
        kind,
        "doubt_inventory",
        "DeductInventory=error:failed_precondition:0.5,lost_reply:1.0",
    )
    .await;
    let stock_before = s.stock().await;
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        ids.push(s.place(format!("doubt-inv-{i}"), 0).await);
    }
    for id in &ids {
        // Every DeductInventory reply is lost: no order can complete, every one fails.
        assert_eq!(s.saga_at_rest(id).await, SagaStatus::Compensated);
        assert_eq!(s.order_status(id).await, OrderStatus::Failed);
        assert_eq!(s.payment(id).await, None, "no payment was started");
    }
    assert_eq!(
        s.stock().await,
        stock_before,
        "every unit a lost reply took was restored"
    );
    s.system.shutdown().await;
}

async fn lost_replies_then_refusals_at_the_pivot_refund_nothing_while_captured(kind: Kind) {
    let s = start(
        kind,
        "doubt_pivot",
        "CompletePayment=error:failed_precondition:0.5,lost_reply:1.0",
    )
    .await;
    let stock_before = s.stock().await;
    let balance_before = s.balance("alice").await;
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        ids.push(s.place(format!("doubt-pivot-{i}"), 100).await);
    }
    let mut admin = SagaAdminServiceClient::new(s.channel.clone());
    let (mut failed, mut parked) = (0, 0);
    for id in &ids {
        match s.saga_at_rest(id).await {
            // The first capture was refused before the handler and none applied: nothing was
            // captured, everything is given back.
            SagaStatus::Compensated => {
                failed += 1;
                assert_eq!(s.order_status(id).await, OrderStatus::Failed);
                assert_eq!(s.payment(id).await, Some(PaymentStatus::Canceled));
            }
            // A capture applied (its reply lost), then a refusal: the outcome is unknown to the
            // saga, so nothing before the pivot was compensated and the money stays captured.
            SagaStatus::NeedsAttention => {
                parked += 1;
                assert_eq!(s.payment(id).await, Some(PaymentStatus::Completed));
                // The operator confirms the capture at the gateway; the order completes.
                admin
                    .resolve_step(ResolveStepRequest {
                        saga_id: id.clone(),
                        resolution: Resolution::Applied as i32,
                        operator: "ops-test".into(),
                        reason: "capture confirmed at the gateway".into(),
                    })
                    .await
                    .unwrap();
                assert_eq!(s.saga_at_rest(id).await, SagaStatus::Completed);
                assert_eq!(s.order_status(id).await, OrderStatus::Completed);
            }
            other => panic!("saga {id} rested in {other:?}"),
        }
    }
    assert_eq!(failed + parked, ORDERS);
    assert!(
        parked > 0,
        "with replies lost half of the time some capture applied"
    );
    let completed = i64::try_from(parked).unwrap();
    assert_eq!(s.stock().await, stock_before - completed);
    assert_eq!(s.balance("alice").await, balance_before - 100 * completed);
    s.system.shutdown().await;
}
