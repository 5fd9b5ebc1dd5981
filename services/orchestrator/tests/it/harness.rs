//! The real services, the saga engine and the order saga in one process, on one loopback port
//! (as `sagaflow dev` runs them), each service on its own database of the test's backend; an
//! order fixture, snapshots of the services' state, the saga's journal, and the model of each
//! step's effect that the generated tests compare against.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sagaflow_orchestrator::{
    ServiceClients, StepPolicies,
    order_saga::{DEFINITION_NAME, OrderSagaInput},
};
use sagaflow_proto::{
    coupon::v1::{
        CouponStatus, GetCouponRequest, IssueCouponRequest,
        coupon_service_client::CouponServiceClient,
    },
    inventory::v1::{
        GetProductRequest, RestockRequest, UpsertProductRequest,
        inventory_service_client::InventoryServiceClient,
    },
    order::v1::{
        FailureReason, GetOrderRequest, Order, OrderCreatedEvent, OrderLineRequest, OrderStatus,
        PlaceOrderRequest, order_service_client::OrderServiceClient,
    },
    payment::v1::{GetPaymentRequest, PaymentStatus, payment_service_client::PaymentServiceClient},
    point::v1::{GetBalanceRequest, GrantPointsRequest, point_service_client::PointServiceClient},
};
use sagaflow_server::{
    Db, PoolConfig,
    db::timestamp_from_ms,
    faults::FaultConfig,
    grpc::{self, ServerHandle},
};
use sagaflow_testkit::{Kind, TestDatabase};
use sagaflow_workflow_engine::{
    Engine, SagaDefinition, SagaId, SagaState, SqlSagaStore, journal::Event,
};
use tonic::{
    Code,
    service::RoutesBuilder,
    transport::{Channel, Endpoint},
};
use uuid::Uuid;

/// Policies that keep the tests short: few attempts, millisecond backoff.
pub(crate) fn policies() -> StepPolicies {
    StepPolicies {
        call_timeout_ms: 2_000,
        payment_timeout_ms: 2_000,
        max_attempts: 3,
        pivot_attempts: 3,
        base_delay_ms: 1,
        max_delay_ms: 5,
    }
}

/// Every service and the engine, in this process.
pub(crate) struct System {
    pub(crate) engine: Engine,
    channel: Channel,
    server: ServerHandle,
    dbs: Vec<Db>,
    _files: Vec<TestDatabase>,
}

impl System {
    /// Starts every service on databases of `kind` with `faults` injected (the shared
    /// fault-injection syntax of docs/operations.md, "Fault injection"), and an engine running
    /// the definition `definition` builds over the system's clients.
    pub(crate) async fn start(
        kind: Kind,
        faults: &str,
        definition: impl FnOnce(ServiceClients) -> SagaDefinition,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut files = Vec::new();
        let mut open = async |name: &str, migrations| {
            let file = TestDatabase::new(kind, &format!("orch_{name}"));
            let db = Db::connect(&file.url, migrations, &PoolConfig::default())
                .await
                .unwrap_or_else(|e| panic!("opening the {name} database: {e:#}"));
            files.push(file);
            db
        };
        let order = open("order", sagaflow_order::migrations()).await;
        let coupon = open("coupon", sagaflow_coupon::migrations()).await;
        let inventory = open("inventory", sagaflow_inventory::migrations()).await;
        let payment = open("payment", sagaflow_payment::migrations()).await;
        let point = open("point", sagaflow_point::migrations()).await;
        let workflow = open("workflow", sagaflow_workflow_engine::MIGRATIONS).await;

        let engine = Engine::builder(Arc::new(SqlSagaStore::new(workflow.clone())))
            .definition(definition(ServiceClients::single(channel.clone())))
            .owner("orchestrator-it")
            .lease_ms(5_000)
            .poll_interval_ms(100)
            .build()
            .unwrap();

        let mut routes = RoutesBuilder::default();
        sagaflow_order::OrderService::new(order.clone(), channel.clone())
            .with_card_token_key(sagaflow_server::card_token::CardTokenKey::generate().unwrap())
            .register(&mut routes);
        sagaflow_coupon::CouponService::new(coupon.clone()).register(&mut routes);
        sagaflow_inventory::InventoryService::new(inventory.clone()).register(&mut routes);
        sagaflow_payment::PaymentService::new(
            payment.clone(),
            Arc::new(sagaflow_payment::SimulatedGateway::new(
                sagaflow_payment::SimulatedGatewayConfig::default(),
            )),
        )
        .register(&mut routes);
        sagaflow_point::PointService::new(point.clone()).register(&mut routes);
        let faults: FaultConfig = faults.parse().unwrap();
        let server = grpc::spawn_on(
            listener,
            routes,
            &[
                sagaflow_order::SERVICE_NAME,
                sagaflow_coupon::SERVICE_NAME,
                sagaflow_inventory::SERVICE_NAME,
                sagaflow_payment::SERVICE_NAME,
                sagaflow_point::SERVICE_NAME,
            ],
            faults,
        )
        .unwrap();
        Self {
            engine,
            channel,
            server,
            dbs: vec![order, coupon, inventory, payment, point, workflow],
            _files: files,
        }
    }

    /// Stops the engine (releasing its leases), the server and the databases.
    pub(crate) async fn stop(self) {
        self.engine.shutdown(Duration::from_secs(5)).await;
        self.server.shutdown().await.unwrap();
        for db in &self.dbs {
            db.close().await;
        }
    }

    fn order(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.channel.clone())
    }
    fn coupon(&self) -> CouponServiceClient<Channel> {
        CouponServiceClient::new(self.channel.clone())
    }
    fn inventory(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::new(self.channel.clone())
    }
    fn payment(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.channel.clone())
    }
    fn point(&self) -> PointServiceClient<Channel> {
        PointServiceClient::new(self.channel.clone())
    }

    /// Seeds the fixture's product, stock, points and coupon through the services' admin RPCs,
    /// places its order and starts its saga (as StartOrderSaga does, from the OrderCreated
    /// event's content). Returns the placed order's id.
    pub(crate) async fn place(&self, f: &Fixture) -> String {
        let order = self.place_order(f).await;
        let order_id = order.order_id.clone();
        // The token in clear, as events from before sealed card tokens carry it (the payment
        // service accepts both).
        let input = OrderSagaInput::from_event(&OrderCreatedEvent {
            order: Some(order),
            payment_method: f.payment_method.to_owned(),
            sealed_payment_method: String::new(),
        })
        .unwrap();
        let deadline = self.engine.now_ms() + 60_000;
        let (_, created) = self
            .engine
            .start_with_id(
                saga_id(&order_id),
                DEFINITION_NAME,
                &order_id,
                serde_json::to_value(input).unwrap(),
                None,
                Some(deadline),
            )
            .await
            .unwrap();
        assert!(created);
        order_id
    }

    /// Seeds the fixture's product, stock, points and coupon and places its order, without
    /// starting its saga. Returns the placed order.
    pub(crate) async fn place_order(&self, f: &Fixture) -> Order {
        self.inventory()
            .upsert_product(UpsertProductRequest {
                sku: f.sku.clone(),
                name: f.sku.clone(),
                unit_price: UNIT_PRICE,
            })
            .await
            .unwrap();
        self.inventory()
            .restock(RestockRequest {
                sku: f.sku.clone(),
                quantity: f.stock,
                idempotency_key: format!("it:restock:{}", f.sku),
            })
            .await
            .unwrap();
        self.point()
            .grant_points(GrantPointsRequest {
                user_id: f.user.clone(),
                amount: f.points_granted,
                idempotency_key: format!("it:points:{}", f.user),
            })
            .await
            .unwrap();
        self.coupon()
            .issue_coupon(IssueCouponRequest {
                code: f.coupon.clone(),
                user_id: f.user.clone(),
                discount_amount: COUPON_DISCOUNT,
                discount_percent: 0,
                min_order_amount: f.coupon_min_order,
                max_discount: 0,
                expires_at: Some(timestamp_from_ms(
                    sagaflow_server::db::now_ms() + 86_400_000,
                )),
            })
            .await
            .unwrap();
        self.order()
            .place_order(PlaceOrderRequest {
                request_id: Uuid::new_v4().to_string(),
                user_id: f.user.clone(),
                lines: vec![OrderLineRequest {
                    sku: f.sku.clone(),
                    quantity: QUANTITY,
                }],
                coupon_code: Some(f.coupon.clone()),
                points: POINTS_SPENT,
                payment_method: f.payment_method.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    }

    /// Waits until the saga of `order_id` comes to rest.
    pub(crate) async fn rested(&self, order_id: &str) -> SagaState {
        self.engine
            .wait_finished(saga_id(order_id), Duration::from_secs(30))
            .await
            .unwrap()
    }

    /// The saga's journal, read through the engine.
    pub(crate) async fn trace(&self, order_id: &str) -> Trace {
        let mut trace = Trace::default();
        for entry in self.engine.journal(saga_id(order_id)).await.unwrap() {
            match entry.event {
                Event::StepSucceeded { step, output, .. } => {
                    trace.outputs.push((step.clone(), output));
                    trace.succeeded.push(step);
                }
                Event::StepSkipped { step, .. } => trace.skipped.push(step),
                Event::StepFailed { step, .. } => trace.failed_attempts.push(step),
                Event::CompensationSucceeded { step, .. } => trace.compensated.push(step),
                Event::SagaCompensating { reason, .. } => trace.reason = Some(reason),
                Event::FinalizerSucceeded { .. } => trace.finalized = true,
                _ => {}
            }
        }
        trace
    }

    /// The state the fixture's order left in every service.
    pub(crate) async fn snapshot(&self, f: &Fixture, order_id: &str) -> Snapshot {
        let order = self
            .order()
            .get_order(GetOrderRequest {
                order_id: order_id.to_owned(),
                wait: None,
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        let stock = self
            .inventory()
            .get_product(GetProductRequest { sku: f.sku.clone() })
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .stock;
        let balance = self
            .point()
            .get_balance(GetBalanceRequest {
                user_id: f.user.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .balance;
        let coupon = self
            .coupon()
            .get_coupon(GetCouponRequest {
                code: f.coupon.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .coupon
            .unwrap();
        let payment = match self
            .payment()
            .get_payment(GetPaymentRequest {
                order_id: order_id.to_owned(),
            })
            .await
        {
            Ok(reply) => {
                let payment = reply.into_inner().payment.unwrap();
                Some((payment.status(), payment.amount))
            }
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => panic!("GetPayment: {status}"),
        };
        Snapshot {
            order: order.status(),
            failure_reason: order.failure_reason(),
            discount: order.discount,
            payable: order.payable,
            stock,
            balance,
            coupon: coupon.status(),
            coupon_held_by_order: coupon.order_id == order_id,
            payment,
        }
    }
}

/// The saga id of an order (the orchestrator uses the order id).
pub(crate) fn saga_id(order_id: &str) -> SagaId {
    SagaId(Uuid::parse_str(order_id).unwrap())
}

/// KRW won per unit of the fixture's product.
pub(crate) const UNIT_PRICE: i64 = 10_000;
/// Units ordered.
pub(crate) const QUANTITY: i32 = 2;
/// The coupon's fixed discount, KRW won.
pub(crate) const COUPON_DISCOUNT: i64 = 3_000;
/// Points the order spends, KRW won.
pub(crate) const POINTS_SPENT: i64 = 1_000;
/// subtotal = 20 000 KRW.
pub(crate) const SUBTOTAL: i64 = UNIT_PRICE * QUANTITY as i64;

/// One order's world: its own user, product and coupon, so that cases never share state.
#[derive(Debug, Clone)]
pub(crate) struct Fixture {
    pub(crate) user: String,
    pub(crate) sku: String,
    pub(crate) coupon: String,
    /// Units in stock before the order.
    pub(crate) stock: i32,
    /// The user's points before the order, KRW won.
    pub(crate) points_granted: i64,
    /// The coupon's minimum order amount, KRW won.
    pub(crate) coupon_min_order: i64,
    /// Card token of the simulated gateway.
    pub(crate) payment_method: &'static str,
}

impl Fixture {
    /// An order that succeeds: every step runs (it has a coupon and spends points).
    pub(crate) fn new(case: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let id = &id[..8];
        Self {
            user: format!("user-{case}-{id}"),
            sku: format!("SKU-{case}-{id}"),
            coupon: format!("C-{case}-{id}"),
            stock: 10,
            points_granted: 5_000,
            coupon_min_order: 0,
            payment_method: "tok_ok",
        }
    }

    /// The services' state after the order was placed and before any step ran.
    pub(crate) fn placed(&self) -> Snapshot {
        Snapshot {
            order: OrderStatus::Pending,
            failure_reason: FailureReason::Unspecified,
            discount: 0,
            payable: SUBTOTAL - POINTS_SPENT,
            stock: i64::from(self.stock),
            balance: self.points_granted,
            coupon: CouponStatus::Available,
            coupon_held_by_order: false,
            payment: None,
        }
    }
}

/// What the services hold for one order (ids left out, so two systems compare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) order: OrderStatus,
    pub(crate) failure_reason: FailureReason,
    pub(crate) discount: i64,
    pub(crate) payable: i64,
    pub(crate) stock: i64,
    pub(crate) balance: i64,
    pub(crate) coupon: CouponStatus,
    pub(crate) coupon_held_by_order: bool,
    pub(crate) payment: Option<(PaymentStatus, i64)>,
}

impl Snapshot {
    /// The effect of a step's action RPC that the service applied (the tests' model of the
    /// services, docs/architecture.md, "The order saga").
    pub(crate) fn apply(&mut self, rpc: &str) {
        match rpc {
            "UseCoupon" => {
                self.coupon = CouponStatus::Used;
                self.coupon_held_by_order = true;
            }
            "ApplyCoupon" => {
                self.discount = COUPON_DISCOUNT;
                self.payable = SUBTOTAL - COUPON_DISCOUNT - POINTS_SPENT;
            }
            "DeductInventory" => self.stock -= i64::from(QUANTITY),
            "StartPayment" => self.payment = Some((PaymentStatus::Started, self.payable)),
            "DeductPoints" => self.balance -= POINTS_SPENT,
            "CompletePayment" => {
                let (_, amount) = self.payment.unwrap();
                self.payment = Some((PaymentStatus::Completed, amount));
            }
            "CompleteOrder" => self.order = OrderStatus::Completed,
            other => panic!("no model of the effect of {other}: describe it in the harness"),
        }
    }

    /// The effect of a compensation RPC.
    pub(crate) fn undo(&mut self, rpc: &str) {
        match rpc {
            "RestoreCoupon" => {
                self.coupon = CouponStatus::Available;
                self.coupon_held_by_order = false;
            }
            "RestoreInventory" => self.stock += i64::from(QUANTITY),
            "CancelPayment" => {
                let amount = self.payment.map_or(0, |(_, amount)| amount);
                self.payment = Some((PaymentStatus::Canceled, amount));
            }
            "RestorePoints" => self.balance += POINTS_SPENT,
            other => panic!("no model of the effect of {other}: describe it in the harness"),
        }
    }

    /// FailOrder with `reason`: the order FAILED, its discount cleared.
    pub(crate) fn fail(&mut self, reason: FailureReason) {
        self.order = OrderStatus::Failed;
        self.failure_reason = reason;
        self.discount = 0;
        self.payable = SUBTOTAL - POINTS_SPENT;
    }
}

/// What the journal says happened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Trace {
    /// Steps that succeeded, in order.
    pub(crate) succeeded: Vec<String>,
    /// The outputs of the steps that succeeded, as journaled.
    pub(crate) outputs: Vec<(String, serde_json::Value)>,
    /// Steps skipped.
    pub(crate) skipped: Vec<String>,
    /// One entry per failed attempt.
    pub(crate) failed_attempts: Vec<String>,
    /// Steps compensated, in the order compensated.
    pub(crate) compensated: Vec<String>,
    /// The failure reason the saga compensates with.
    pub(crate) reason: Option<String>,
    /// Whether the failure finalizer (FailOrder) succeeded.
    pub(crate) finalized: bool,
}

/// Re-reads `check` until it holds, for at most 30 s.
pub(crate) async fn until<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    sagaflow_testkit::eventually(what, Duration::from_secs(30), check).await
}

/// Elapsed time, for the progress lines of long generated tests.
pub(crate) fn since(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}
