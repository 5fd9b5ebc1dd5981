//! The sagaflow ranking service (docs/architecture.md, "Events"): product sales aggregates built
//! from the Order service's OrderCompleted events, and the TopProducts query; the read-optimised
//! product view built from Inventory's events, and its GetProductView / ListProductViews queries.
//!
//! ```text
//!  Order outbox ──relay──▶ RecordOrderCompleted(event_id, event)
//!                              │ idempotency::execute(key = event_id)   (redelivery: replay)
//!                              │   inbox row per order                  (second event of an order: ignored)
//!                              │   product_sales += units, orders += 1  (same transaction)
//!                              ▼
//!                          TopProducts(limit) ── units_sold desc, then sku
//!
//!  Inventory outbox ──relay──▶ RecordInventoryEvent(event_id, sequence, event)
//!                              │ idempotency::execute(key = event_id)   (redelivery: replay)
//!                              │   inbox row per event                  (same transaction)
//!                              │   product_view: units_sold ± quantity, events += 1,
//!                              │     stock, last_sequence ← event when sequence > last_sequence
//!                              ▼
//!                          GetProductView(sku), ListProductViews ── by sku
//! ```
//!
//! A Kafka consumer records the same events without gRPC through [`events`]
//! ([`events::record_inventory_event`], [`events::record_order_completed`]): the same commands
//! under the same keys.
//!
//! - [`domain`]: the completed-order sales and the ranking rule; the product view's rule;
//! - [`events`]: the consumers' entry points and payload decoders;
//! - `store`: the inbox, aggregate and view tables;
//! - `grpc`: the `sagaflow.ranking.v1.RankingService` implementation and validation.

use std::time::Duration;

use sagaflow_proto::ranking::v1::ranking_service_server::RankingServiceServer;
use sagaflow_server::{
    Db,
    retention::{OldRows, PruneJob},
};

pub mod domain;
pub mod events;
mod grpc;
mod store;

/// The fully-qualified gRPC service name (for health and reflection).
pub const SERVICE_NAME: &str = "sagaflow.ranking.v1.RankingService";

sagaflow_server::service_migrations!(
    /// The ranking database's migrations (`migrations/ranking/{postgres,sqlite}`).
    postgres: "../../migrations/ranking/postgres",
    sqlite: "../../migrations/ranking/sqlite",
);

/// The ranking service: implements `sagaflow.ranking.v1.RankingService` over its own database.
/// Cloning is cheap (the pool is shared).
#[derive(Clone, Debug)]
pub struct RankingService {
    db: Db,
}

impl RankingService {
    /// A service over `db`, which must have been opened with [`migrations`].
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Adds the gRPC service to `routes`.
    pub fn register(self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(RankingServiceServer::new(self).max_decoding_message_size(
            sagaflow_server::repeated::max_decoding_message_size(SERVICE_NAME),
        ));
    }
}

/// The retention job of the ranking database's processed-event inbox (docs/operations.md,
/// "Retention"): rows recorded more than `window` ago are deleted, batch by batch, under the
/// `ranking` database, table `inbox`. The window must be longer than any redelivery of an
/// OrderCompleted or Inventory event: an event delivered again after its row (and its
/// idempotency record) is gone is counted again.
pub fn inbox_prune_job(db: Db, window: Duration) -> PruneJob {
    let inbox = OldRows {
        table: "inbox",
        key: "event_id",
        time: "recorded_at",
    };
    PruneJob::old_rows("ranking", db, window, inbox)
}
