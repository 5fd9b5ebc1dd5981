//! An order server and a real inventory server on loopback ports, each over its own fresh
//! database.

use sagaflow_inventory::InventoryService;
use sagaflow_order::OrderService;
use sagaflow_proto::{
    inventory::v1::{UpsertProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        ApplyCouponRequest, CompleteOrderRequest, DiscountRule, FailOrderRequest, FailureReason,
        Order, OrderLineRequest, PlaceOrderRequest, order_service_client::OrderServiceClient,
    },
};
use sagaflow_server::{Db, PoolConfig, faults::FaultConfig, grpc::ServerHandle};
use sagaflow_testkit::{Kind, TestDatabase};
use tonic::transport::{Channel, Endpoint};

/// The catalog every test starts with: (sku, unit price in KRW won).
pub(crate) const CATALOG: &[(&str, i64)] = &[
    ("KB-001", 45_000),
    ("MS-002", 12_000),
    ("HD-003", 89_000),
    ("FREE-1", 0),
];

/// The payment methods the test servers accept: the simulated gateway's card tokens
/// (`sagaflow_payment::SIMULATED_CARD_TOKENS`, repeated here because the order crate does not
/// depend on the payment crate), as `sagaflow serve order` accepts by default.
pub(crate) const PAYMENT_METHODS: &[&str] =
    &["tok_ok", "tok_decline", "tok_capture_decline", "tok_slow"];

pub(crate) struct TestOrder {
    _order_tdb: TestDatabase,
    _inventory_tdb: TestDatabase,
    pub(crate) db: Db,
    pub(crate) inventory_db: Db,
    pub(crate) server: ServerHandle,
    pub(crate) inventory_server: Option<ServerHandle>,
    pub(crate) client: OrderServiceClient<Channel>,
    pub(crate) inventory_url: String,
}

async fn spawn_order(db: &Db, inventory_url: &str) -> (ServerHandle, OrderServiceClient<Channel>) {
    let inventory = Endpoint::from_shared(inventory_url.to_owned())
        .unwrap()
        .connect_lazy();
    let mut routes = tonic::service::RoutesBuilder::default();
    OrderService::new(db.clone(), inventory)
        .with_payment_methods(PAYMENT_METHODS.iter().copied())
        .register(&mut routes);
    let server = sagaflow_server::grpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        routes,
        &[sagaflow_order::SERVICE_NAME],
        FaultConfig::default(),
    )
    .await
    .unwrap();
    let client = OrderServiceClient::connect(server.url()).await.unwrap();
    (server, client)
}

pub(crate) async fn start(kind: Kind, name: &str) -> TestOrder {
    let inventory_tdb = TestDatabase::new(kind, &format!("{name}_inv"));
    let (inventory_db, inventory_server) = sagaflow_server::grpc::spawn_service(
        &inventory_tdb.url,
        sagaflow_inventory::migrations(),
        sagaflow_inventory::SERVICE_NAME,
        |db, routes| InventoryService::new(db).register(routes),
    )
    .await
    .expect("start inventory on its test database");
    let inventory_url = inventory_server.url();
    let mut inventory = InventoryServiceClient::connect(inventory_url.clone())
        .await
        .unwrap();
    for (sku, unit_price) in CATALOG {
        inventory
            .upsert_product(UpsertProductRequest {
                sku: (*sku).into(),
                name: format!("product {sku}"),
                unit_price: *unit_price,
            })
            .await
            .unwrap();
    }

    let order_tdb = TestDatabase::new(kind, name);
    let db = Db::connect(
        &order_tdb.url,
        sagaflow_order::migrations(),
        &PoolConfig::default(),
    )
    .await
    .expect("connect to the order test database");
    let (server, client) = spawn_order(&db, &inventory_url).await;
    TestOrder {
        _order_tdb: order_tdb,
        _inventory_tdb: inventory_tdb,
        db,
        inventory_db,
        server,
        inventory_server: Some(inventory_server),
        client,
        inventory_url,
    }
}

impl TestOrder {
    pub(crate) async fn stop(mut self) {
        self.server.shutdown().await.unwrap();
        if let Some(inventory) = self.inventory_server.take() {
            inventory.shutdown().await.unwrap();
        }
        self.db.close().await;
        self.inventory_db.close().await;
    }

    /// Stops the inventory server (the order server keeps running).
    pub(crate) async fn stop_inventory(&mut self) {
        if let Some(inventory) = self.inventory_server.take() {
            inventory.shutdown().await.unwrap();
        }
    }

    /// Another order server over the same database (a second replica).
    pub(crate) async fn replica(&self) -> (ServerHandle, OrderServiceClient<Channel>) {
        spawn_order(&self.db, &self.inventory_url).await
    }

    pub(crate) async fn inventory_client(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::connect(self.inventory_url.clone())
            .await
            .unwrap()
    }

    /// Places an order that must succeed.
    pub(crate) async fn place(&mut self, req: PlaceOrderRequest) -> Order {
        self.client
            .place_order(req)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    }

    /// Row counts of every order-database table:
    /// (orders, order_lines, order_status_history, outbox, idempotency_keys).
    pub(crate) async fn counts(&self) -> [i64; 5] {
        let mut out = [0; 5];
        for (i, table) in [
            "orders",
            "order_lines",
            "order_status_history",
            "outbox",
            "idempotency_keys",
        ]
        .into_iter()
        .enumerate()
        {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            out[i] = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(self.db.pool())
                .await
                .unwrap();
        }
        out
    }

    /// The status history of an order: (status, failure_reason) in order.
    pub(crate) async fn history(&self, order_id: &str) -> Vec<(String, Option<String>)> {
        sqlx::query_as(
            "SELECT status, failure_reason FROM order_status_history \
             WHERE order_id = $1 ORDER BY seq",
        )
        .bind(order_id)
        .fetch_all(self.db.pool())
        .await
        .unwrap()
    }
}

pub(crate) fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A PlaceOrder request for `user` with `lines` of (sku, quantity).
pub(crate) fn place_req(
    request_id: &str,
    user: &str,
    lines: &[(&str, i32)],
    coupon: Option<&str>,
    points: i64,
) -> PlaceOrderRequest {
    PlaceOrderRequest {
        request_id: request_id.into(),
        user_id: user.into(),
        lines: lines
            .iter()
            .map(|(sku, quantity)| OrderLineRequest {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        coupon_code: coupon.map(str::to_owned),
        points,
        payment_method: "tok_ok".into(),
    }
}

pub(crate) fn fixed(amount: i64) -> DiscountRule {
    DiscountRule {
        discount_amount: amount,
        discount_percent: 0,
        max_discount: 0,
    }
}

pub(crate) fn percent(percent: i32, max: i64) -> DiscountRule {
    DiscountRule {
        discount_amount: 0,
        discount_percent: percent,
        max_discount: max,
    }
}

/// ApplyCoupon with `rule`; the discount is the rule's fixed amount (0 for a percentage rule:
/// set `discount` to what the Coupon service computed, the order service does not compute it).
pub(crate) fn apply_req(key: &str, order_id: &str, rule: DiscountRule) -> ApplyCouponRequest {
    ApplyCouponRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
        discount: rule.discount_amount,
        rule: Some(rule),
    }
}

pub(crate) fn complete_req(key: &str, order_id: &str) -> CompleteOrderRequest {
    CompleteOrderRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
    }
}

pub(crate) fn fail_req(key: &str, order_id: &str, reason: FailureReason) -> FailOrderRequest {
    FailOrderRequest {
        idempotency_key: key.into(),
        order_id: order_id.into(),
        reason: reason.into(),
    }
}
