//! The sagaflow inventory (product) service (step 3 of docs/architecture.md, "The order saga",
//! under "The service contract").
//!
//! It owns the product catalog (sku, name, unit price in KRW won, stock in units) and serves:
//!
//! - the saga's step 3, [`DeductInventory`](sagaflow_proto::inventory::v1::DeductInventoryRequest)
//!   (takes every line of an order or none), and its compensation `RestoreInventory` (gives back
//!   exactly what that order took);
//! - the queries `GetProduct`, `BatchGetProducts` (the Order service prices an order with one call)
//!   and `ListProducts`;
//! - the admin commands `UpsertProduct` and `Restock`.
//!
//! ```text
//!            DeductInventory                     RestoreInventory
//!  (none) ───────────────────▶ RESERVED ─────────────────────────▶ RELEASED
//!     │                                                               ▲
//!     └──────────────── RestoreInventory first (tombstone) ───────────┘
//!  DeductInventory on RELEASED: FAILED_PRECONDITION COMPENSATED_BEFORE_ACTION
//!  DeductInventory on RESERVED with another key: FAILED_PRECONDITION ORDER_ALREADY_DEDUCTED
//! ```
//!
//! Modules (the layout of every service, docs/architecture.md, "Layers"): [`domain`] holds the
//! pure rules, `store` the SQL (one implementation for PostgreSQL and SQLite), `grpc` the tonic
//! service, validation and proto mapping.
//!
//! Every mutating command with an idempotency key runs through
//! [`sagaflow_server::idempotency::execute`], so its effect and its stored response commit in one
//! transaction. Stock changes lock the product rows in sku order (PostgreSQL `FOR UPDATE`; SQLite
//! serializes writers with `BEGIN IMMEDIATE`), so concurrent orders never deadlock and stock never
//! goes negative (also enforced by `CHECK (stock >= 0)`).

pub mod domain;
pub mod events;
mod grpc;
mod store;

use sagaflow_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use sagaflow_server::{Db, relay::RelayWaker};

/// The fully-qualified gRPC service name (for health and reflection).
pub const SERVICE_NAME: &str = "sagaflow.inventory.v1.InventoryService";

sagaflow_server::service_migrations!(
    /// The inventory database's migrations (`migrations/inventory/{postgres,sqlite}`), for
    /// [`Db::connect`].
    postgres: "../../migrations/inventory/postgres",
    sqlite: "../../migrations/inventory/sqlite",
);

/// The inventory gRPC service (`sagaflow.inventory.v1.InventoryService`) over its own database.
///
/// Cloning is cheap (the pool is shared).
#[derive(Clone, Debug)]
pub struct InventoryService {
    db: Db,
    /// Wakes the outbox relay after a commit that wrote events.
    relay: Option<RelayWaker>,
}

impl InventoryService {
    /// A service over `db`, which must have been opened with [`migrations`].
    pub fn new(db: Db) -> Self {
        Self { db, relay: None }
    }

    /// The same service, waking `relay` after every command that wrote events to the outbox
    /// (DeductInventory, RestoreInventory, Restock), so they are published at once instead of
    /// at the relay's next poll.
    pub fn with_relay_waker(mut self, relay: RelayWaker) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Wakes the relay, if one is attached.
    fn wake_relay(&self) {
        if let Some(relay) = &self.relay {
            relay.wake();
        }
    }

    /// Adds the service to a tonic router (`InventoryServiceServer::new(self)`).
    pub fn register(self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(InventoryServiceServer::new(self).max_decoding_message_size(
            sagaflow_server::repeated::max_decoding_message_size(SERVICE_NAME),
        ));
    }
}
