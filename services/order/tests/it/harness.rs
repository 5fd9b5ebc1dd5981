//! An order server and a real inventory server on loopback ports, each over its own fresh
//! database.

use sagaflow_inventory::InventoryService;
use sagaflow_order::OrderService;
use sagaflow_proto::{
    inventory::v1::{UpsertProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        ApplyCouponRequest, CompleteOrderRequest, DiscountRule, FailOrderRequest, FailureReason,
        GetOrderRequest, Order, OrderLineRequest, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use sagaflow_server::{Db, faults::FaultConfig, grpc::ServerHandle};
use sagaflow_testkit::{Kind, service::ServiceHarness};
use tonic::{
    Status,
    transport::{Channel, Endpoint},
};

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

/// A running order server with its database and a connected client (it dereferences to that
/// [`ServiceHarness`]), pricing through a real inventory server on its own database.
pub(crate) struct TestOrder {
    order: ServiceHarness<OrderServiceClient<Channel>>,
    /// The served order service (clones share its GetOrder waiters).
    service: OrderService,
    inventory: Option<ServiceHarness<InventoryServiceClient<Channel>>>,
    inventory_url: String,
}

impl std::ops::Deref for TestOrder {
    type Target = ServiceHarness<OrderServiceClient<Channel>>;
    fn deref(&self) -> &Self::Target {
        &self.order
    }
}

impl std::ops::DerefMut for TestOrder {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.order
    }
}

/// The order service over `db`, pricing through the inventory server at `inventory_url`.
fn order_service(db: Db, inventory_url: &str) -> OrderService {
    let inventory = Endpoint::from_shared(inventory_url.to_owned())
        .unwrap()
        .connect_lazy();
    OrderService::new(db, inventory)
        .with_payment_methods(PAYMENT_METHODS.iter().copied())
        .with_card_token_key(sagaflow_server::card_token::CardTokenKey::generate().unwrap())
}

pub(crate) async fn start(kind: Kind, name: &str) -> TestOrder {
    let inventory = ServiceHarness::start(
        kind,
        &format!("{name}_inv"),
        sagaflow_inventory::migrations(),
        sagaflow_inventory::SERVICE_NAME,
        |db, routes| InventoryService::new(db).register(routes),
        InventoryServiceClient::new,
    )
    .await;
    for (sku, unit_price) in CATALOG {
        inventory
            .client
            .clone()
            .upsert_product(UpsertProductRequest {
                sku: (*sku).into(),
                name: format!("product {sku}"),
                unit_price: *unit_price,
            })
            .await
            .unwrap();
    }

    let inventory_url = inventory.server.url();
    let mut served = None;
    let order = ServiceHarness::start(
        kind,
        name,
        sagaflow_order::migrations(),
        sagaflow_order::SERVICE_NAME,
        |db, routes| {
            let service = order_service(db, &inventory_url);
            served = Some(service.clone());
            service.register(routes);
        },
        OrderServiceClient::new,
    )
    .await;
    TestOrder {
        order,
        service: served.expect("the order service was registered"),
        inventory: Some(inventory),
        inventory_url,
    }
}

impl TestOrder {
    pub(crate) async fn stop(mut self) {
        self.stop_inventory().await;
        self.order.stop().await;
    }

    /// Stops the inventory server (the order server keeps running).
    pub(crate) async fn stop_inventory(&mut self) {
        if let Some(inventory) = self.inventory.take() {
            inventory.stop().await;
        }
    }

    /// Another order server over the same database (a second replica).
    pub(crate) async fn replica(&self) -> (ServerHandle, OrderServiceClient<Channel>) {
        self.replica_with(None).await
    }

    /// [`TestOrder::replica`], handing its events to the relay behind `waker` when given.
    pub(crate) async fn replica_with(
        &self,
        waker: Option<sagaflow_order::relay::RelayWaker>,
    ) -> (ServerHandle, OrderServiceClient<Channel>) {
        let mut routes = tonic::service::RoutesBuilder::default();
        let service = order_service(self.db.clone(), &self.inventory_url);
        match waker {
            Some(waker) => service.with_relay_waker(waker).register(&mut routes),
            None => service.register(&mut routes),
        }
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

    pub(crate) async fn inventory_client(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::connect(self.inventory_url.clone())
            .await
            .unwrap()
    }

    /// Waits until a GetOrder caller of this server waits on `order_id`.
    pub(crate) async fn until_waiting(&self, order_id: &str) {
        sagaflow_testkit::eventually(
            "a GetOrder caller to wait on the server",
            std::time::Duration::from_secs(10),
            || async { (self.service.waiting(order_id) > 0).then_some(()) },
        )
        .await;
    }

    /// Places an order that must succeed.
    pub(crate) async fn place(&self, req: PlaceOrderRequest) -> Order {
        let answer = self.client.clone().place_order(req).await.unwrap();
        answer.into_inner().order.unwrap()
    }

    /// GetOrder without waiting: the order, which must exist.
    pub(crate) async fn get(&self, order_id: &str) -> Order {
        let req = GetOrderRequest {
            order_id: order_id.to_owned(),
            wait: None,
        };
        let answer = self.client.clone().get_order(req).await.unwrap();
        answer.into_inner().order.unwrap()
    }

    /// ApplyCoupon with `rule` (the discount is the rule's fixed amount): the order it answers.
    pub(crate) async fn apply(
        &self,
        key: &str,
        order_id: &str,
        rule: DiscountRule,
    ) -> Result<Order, Status> {
        self.apply_coupon(apply_req(key, order_id, rule)).await
    }

    /// ApplyCoupon `req`: the order it answers.
    pub(crate) async fn apply_coupon(&self, req: ApplyCouponRequest) -> Result<Order, Status> {
        let answer = self.client.clone().apply_coupon(req).await?;
        Ok(answer
            .into_inner()
            .order
            .expect("ApplyCoupon answers the order"))
    }

    /// CompleteOrder: the order it answers.
    pub(crate) async fn complete(&self, key: &str, order_id: &str) -> Result<Order, Status> {
        let req = complete_req(key, order_id);
        let answer = self.client.clone().complete_order(req).await?;
        Ok(answer
            .into_inner()
            .order
            .expect("CompleteOrder answers the order"))
    }

    /// FailOrder for `reason`: the order it answers.
    pub(crate) async fn fail(
        &self,
        key: &str,
        order_id: &str,
        reason: FailureReason,
    ) -> Result<Order, Status> {
        let req = fail_req(key, order_id, reason);
        let answer = self.client.clone().fail_order(req).await?;
        Ok(answer
            .into_inner()
            .order
            .expect("FailOrder answers the order"))
    }

    /// Row counts of every order-database table:
    /// [orders, order_lines, order_status_history, outbox, idempotency_keys].
    pub(crate) async fn counts(&self) -> [i64; 5] {
        self.table_counts([
            "orders",
            "order_lines",
            "order_status_history",
            "outbox",
            "idempotency_keys",
        ])
        .await
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
