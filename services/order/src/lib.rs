//! The sagaflow order service (docs/architecture.md, "The order saga" and "Events"): the public
//! order API (PlaceOrder, GetOrder, ListOrders) and the saga's order commands (ApplyCoupon,
//! CompleteOrder, FailOrder), over the order database with its transactional outbox.
//!
//! - [`domain`]: statuses, pricing and the amount rules, the decision of each command;
//! - [`outbox`]: the outbox rows written with each change, and the API the relay uses
//!   ([`outbox::pending`], [`outbox::mark_sent`]);
//! - `store`: the orders, order lines and status history tables;
//! - `commands`: the effects of ApplyCoupon, CompleteOrder and FailOrder, with their decisions;
//! - `grpc`: the `sagaflow.order.v1.OrderService` implementation, validation and mapping;
//! - `admin`: `sagaflow.order.v1.OutboxAdminService`, the dead-lettered outbox events;
//! - [`relay`]: the outbox relay (retries, dead letters, retention of delivered rows).
//!
//! ```text
//!  PlaceOrder ─validate─▶ replay? ─no─▶ Inventory.BatchGetProducts (one call) ─▶ price
//!      └─▶ one transaction: order PENDING + lines + history + OutboxEvent(OrderCreated) + key
//!  CompleteOrder / FailOrder ─▶ one transaction: status + history + OutboxEvent + key
//!      └─▶ in-process notice for that order ─▶ wakes its GetOrder{wait} callers (and one
//!          shared poll a second, `OrderService::poll_waiters`, notices the changes made by
//!          another replica; docs/operations.md, "Request limits")
//! ```
//!
//! An order's saga id is its order id: the orchestrator starts the saga keyed by the order id.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use sagaflow_proto::{
    inventory::v1::inventory_service_client::InventoryServiceClient,
    order::v1::order_service_server::OrderServiceServer,
};
use sagaflow_server::{
    Db,
    card_token::CardTokenKey,
    transport::{TracedTransport, Transport, traced},
};

mod admin;
mod commands;
mod convert;
pub mod domain;
mod events;
mod grpc;
pub mod outbox;
pub mod relay;
mod store;
mod waiters;

pub use waiters::{WAIT_POLLS, WAITERS_GAUGE};

/// The fully-qualified gRPC service name (for health and reflection).
pub const SERVICE_NAME: &str = "sagaflow.order.v1.OrderService";

/// The fully-qualified name of the outbox admin service that [`OrderService::register`] adds
/// next to [`SERVICE_NAME`] (for health and reflection).
pub const OUTBOX_ADMIN_SERVICE_NAME: &str = "sagaflow.order.v1.OutboxAdminService";

/// How long PlaceOrder waits for Inventory to price an order before answering UNAVAILABLE.
pub const INVENTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the shared poll of GetOrder's waiters looks for orders that another replica (or
/// the outbox relay failing an undeliverable order) made terminal, as such changes do not reach
/// this process's notices; without the shared poll, how often each waiting caller re-reads its
/// order.
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_secs(1);

sagaflow_server::service_migrations!(
    /// The order database's migrations (`migrations/order/{postgres,sqlite}`).
    postgres: "../../migrations/order/postgres",
    sqlite: "../../migrations/order/sqlite",
);

/// The order service: implements `sagaflow.order.v1.OrderService` over its own database,
/// pricing orders through the Inventory service. Cloning is cheap; clones share the pool, the
/// Inventory channel and the change notices.
#[derive(Clone, Debug)]
pub struct OrderService {
    db: Db,
    inventory: InventoryServiceClient<TracedTransport>,
    /// Order ids that just reached a terminal status (CompleteOrder, FailOrder), for GetOrder
    /// callers that wait.
    waiters: waiters::Waiters,
    /// Wakes the outbox relay after a commit that wrote an event.
    relay: Option<relay::RelayWaker>,
    /// Cancelled when the process shuts down: GetOrder long-polls return the order as it is, so
    /// that a graceful shutdown does not wait up to a minute for them.
    shutdown: tokio_util::sync::CancellationToken,
    /// The payment methods PlaceOrder accepts; `None`: any (non-empty) one.
    payment_methods: Option<Arc<BTreeSet<String>>>,
    /// Seals PlaceOrder's card token for the payment service; `None`: PlaceOrder is
    /// FAILED_PRECONDITION (docs/architecture.md, "Card tokens").
    card_token_key: Option<Arc<CardTokenKey>>,
}

impl OrderService {
    /// A service over `db` (opened with [`migrations`]) that prices orders through the
    /// Inventory service at `inventory`: a channel (a lazily connected one is fine: an
    /// unreachable Inventory makes PlaceOrder answer UNAVAILABLE) or the embedded system's
    /// in-process transport. It is [`traced`]: the pricing call joins the PlaceOrder trace.
    pub fn new(db: Db, inventory: impl Into<Transport>) -> Self {
        Self {
            db,
            inventory: InventoryServiceClient::new(traced(inventory)),
            waiters: waiters::Waiters::default(),
            relay: None,
            shutdown: tokio_util::sync::CancellationToken::new(),
            payment_methods: None,
            card_token_key: None,
        }
    }

    /// The same service, sealing PlaceOrder's card token with `key` (the deployment's card-token
    /// key, the payment service's too) before it is stored or published: the order row keeps the
    /// masked token, the OrderCreated event the masked and the sealed one (docs/architecture.md,
    /// "Card tokens"). Without this call PlaceOrder answers FAILED_PRECONDITION; `sagaflow serve
    /// order` and the embedded system always make it.
    pub fn with_card_token_key(mut self, key: CardTokenKey) -> Self {
        self.card_token_key = Some(Arc::new(key));
        self
    }

    /// The same service, accepting in PlaceOrder only a `payment_method` equal to one of
    /// `methods` (for the simulated gateway, its card tokens:
    /// `sagaflow_payment::SIMULATED_CARD_TOKENS`). Any other is INVALID_ARGUMENT naming
    /// `payment_method`, before anything is priced or written, so an order that could only fail
    /// at payment is never created. Without this call every non-empty method is accepted (and
    /// an unknown one fails later, in the saga, as PAYMENT_DECLINED); `sagaflow serve order` and
    /// the embedded system always make it.
    pub fn with_payment_methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.payment_methods = Some(Arc::new(methods.into_iter().map(Into::into).collect()));
        self
    }

    /// The same service, waking `relay` right after every commit that writes an outbox event
    /// (docs/architecture.md, "Events": the relay tries right after the commit).
    pub fn with_relay_waker(mut self, relay: relay::RelayWaker) -> Self {
        self.relay = Some(relay);
        self
    }

    /// The same service, ending GetOrder long-polls (returning the order as it is) once
    /// `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The same service, keeping at most `max` GetOrder callers waiting at once (one more is
    /// RESOURCE_EXHAUSTED, reason `TOO_MANY_WAITERS`; docs/operations.md, "Request limits").
    /// Default: `sagaflow_server::limits::Limits::default().max_order_waiters`. Call before
    /// [`OrderService::poll_waiters`].
    pub fn with_max_waiters(mut self, max: usize) -> Self {
        self.waiters = waiters::Waiters::new(max);
        self
    }

    /// The shared poll of GetOrder's waiters, to run as a background task until `stop` is
    /// cancelled: while anyone waits, one query every [`WAIT_POLL_INTERVAL`] for the orders that
    /// reached a terminal status lately, whoever changed them, wakes their callers; the callers
    /// themselves read only when they start and when woken. From this call on, callers count on
    /// it (without it each re-reads its order every [`WAIT_POLL_INTERVAL`]).
    pub fn poll_waiters(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.waiters.poll(self.db.clone(), WAIT_POLL_INTERVAL, stop)
    }

    /// How many GetOrder callers of this process (this service and its clones) wait on
    /// `order_id` right now: a caller counts from when its wait starts on the server until it
    /// returns (tests wait on it instead of on time).
    pub fn waiting(&self, order_id: &str) -> usize {
        self.waiters.waiting(order_id)
    }

    /// Adds the gRPC services to `routes`: `sagaflow.order.v1.OrderService` ([`SERVICE_NAME`])
    /// and the operators' `sagaflow.order.v1.OutboxAdminService` over the same database
    /// ([`OUTBOX_ADMIN_SERVICE_NAME`]).
    pub fn register(self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(admin::OutboxAdmin::new(self.db.clone()).into_server());
        routes.add_service(OrderServiceServer::new(self).max_decoding_message_size(
            sagaflow_server::repeated::max_decoding_message_size(SERVICE_NAME),
        ));
    }
}
