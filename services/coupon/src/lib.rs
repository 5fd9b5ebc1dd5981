//! The sagaflow coupon service (step 1 of docs/architecture.md, "The order saga").
//!
//! It owns the coupons: each belongs to one user, grants a fixed amount or a percentage (with an
//! optional cap) of an order's subtotal, requires a minimum order amount, expires at a time, and
//! is AVAILABLE or USED by exactly one order. It serves:
//!
//! - the saga's step 1, `UseCoupon` (checks owner, expiry, availability and minimum order, then
//!   marks the coupon USED by the order and returns it with its discount rule), and its
//!   compensation `RestoreCoupon` (makes it AVAILABLE again if that order holds it);
//! - the query `GetCoupon` and the admin command `IssueCoupon`.
//!
//! ```text
//!              UseCoupon(order)                RestoreCoupon(order)
//!  AVAILABLE ────────────────────▶ USED(order) ─────────────────────▶ AVAILABLE
//!  RestoreCoupon(order) first: records (order, code); a later UseCoupon(order) is rejected with
//!  FAILED_PRECONDITION COMPENSATED_BEFORE_ACTION (the late-action rule of docs/architecture.md,
//!  "The service contract").
//! ```
//!
//! [`domain::discount`] is the discount rule, shared with the Order service (step 2).
//!
//! Modules (the layout of every service, docs/architecture.md, "Layers"): [`domain`] holds the
//! pure rules, `store` the SQL (one implementation for PostgreSQL and SQLite), `grpc` the tonic
//! service, validation and proto mapping. UseCoupon and RestoreCoupon run through
//! [`sagaflow_server::idempotency::execute`], so each effect and its stored response commit in one
//! transaction.

pub mod domain;
mod grpc;
mod store;

use sagaflow_proto::coupon::v1::coupon_service_server::CouponServiceServer;
use sagaflow_server::Db;

/// The fully-qualified gRPC service name (for health and reflection).
pub const SERVICE_NAME: &str = "sagaflow.coupon.v1.CouponService";

sagaflow_server::service_migrations!(
    /// The coupon database's migrations (`migrations/coupon/{postgres,sqlite}`), for
    /// [`Db::connect`].
    postgres: "../../migrations/coupon/postgres",
    sqlite: "../../migrations/coupon/sqlite",
);

/// The coupon gRPC service (`sagaflow.coupon.v1.CouponService`) over its own database.
///
/// Cloning is cheap (the pool is shared).
#[derive(Clone, Debug)]
pub struct CouponService {
    db: Db,
}

impl CouponService {
    /// A service over `db`, which must have been opened with [`migrations`].
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Adds the service to a tonic router (`CouponServiceServer::new(self)`).
    pub fn register(self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(CouponServiceServer::new(self).max_decoding_message_size(
            sagaflow_server::repeated::max_decoding_message_size(SERVICE_NAME),
        ));
    }
}
