//! The sagaflow point service (step 5 of docs/architecture.md, "The order saga", under "The
//! service contract").
//!
//! It owns the users' point balances (KRW won, never negative) and an append-only point ledger of
//! grants, deductions and restorations, and serves:
//!
//! - the saga's step 5, `DeductPoints` (takes points for an order), and its compensation
//!   `RestorePoints` (gives back exactly what that order took; docs/architecture.md, "The order
//!   saga");
//! - the query `GetBalance` and the admin command `GrantPoints`.
//!
//! ```text
//!            DeductPoints                     RestorePoints
//!  (none) ────────────────▶ DEDUCTED ──────────────────────▶ RESTORED
//!     │                                                         ▲
//!     └──────────── RestorePoints first (tombstone) ────────────┘
//!  DeductPoints on RESTORED: FAILED_PRECONDITION COMPENSATED_BEFORE_ACTION
//!  DeductPoints on DEDUCTED with another key: FAILED_PRECONDITION ORDER_ALREADY_DEDUCTED
//! ```
//!
//! Invariant: each balance equals its ledger's GRANT + RESTORE − DEDUCT rows (checked by the
//! integration tests; the system-wide point invariant is docs/architecture.md, "Invariants").
//!
//! Modules (the layout of every service, docs/architecture.md, "Layers"): [`domain`] holds the
//! pure rules, `store` the SQL (one implementation for PostgreSQL and SQLite), `grpc` the tonic
//! service, validation and proto mapping. Every mutating command runs through
//! [`sagaflow_server::idempotency::execute`], so each effect and its stored response commit in one
//! transaction.

pub mod domain;
mod grpc;
mod store;

use sagaflow_proto::point::v1::point_service_server::PointServiceServer;
use sagaflow_server::Db;

/// The fully-qualified gRPC service name (for health and reflection).
pub const SERVICE_NAME: &str = "sagaflow.point.v1.PointService";

sagaflow_server::service_migrations!(
    /// The point database's migrations (`migrations/point/{postgres,sqlite}`), for [`Db::connect`].
    postgres: "../../migrations/point/postgres",
    sqlite: "../../migrations/point/sqlite",
);

/// The point gRPC service (`sagaflow.point.v1.PointService`) over its own database.
///
/// Cloning is cheap (the pool is shared).
#[derive(Clone, Debug)]
pub struct PointService {
    db: Db,
}

impl PointService {
    /// A service over `db`, which must have been opened with [`migrations`].
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Adds the service to a tonic router (`PointServiceServer::new(self)`).
    pub fn register(self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(PointServiceServer::new(self).max_decoding_message_size(
            sagaflow_server::repeated::max_decoding_message_size(SERVICE_NAME),
        ));
    }
}
