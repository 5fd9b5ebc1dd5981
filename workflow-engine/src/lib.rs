//! The durable saga engine of sagaflow (docs/architecture.md, "The engine"): saga definitions,
//! state rows and an append-only journal in PostgreSQL or SQLite, leases with fencing tokens,
//! retries with backoff, compensation in reverse order, and recovery after a crash. It knows
//! nothing about orders.
//!
//! Main types, in order of use:
//! - [`definition::SagaDefinition`] (built with [`definition::SagaDefinition::builder`] from
//!   [`definition::Step`]s whose actions are [`definition::StepAction`]s);
//! - [`store::SqlSagaStore`] over a `sagaflow_server::Db` connected with [`store::MIGRATIONS`];
//! - [`Engine`] (from [`Engine::builder`]): `start`, `cancel`, `retry`, `wait_finished`,
//!   `shutdown`;
//! - [`admin::SagaAdmin`]: the `SagaAdminService` gRPC API;
//! - [`metrics`]: the Prometheus metrics the engine records (tracing: see [`executor`]).
//!
//! ```text
//!        start ─▶ RUNNING ──every step ok──▶ COMPLETED
//!                   │ business failure / unknown outcome / deadline / cancel (before the pivot)
//!                   ▼
//!              COMPENSATING ──compensations (reverse order), finalizer──▶ COMPENSATED
//!   any ──▶ NEEDS_ATTENTION (compensation failed for good, pivot outcome unknown) ──RetrySaga──▶ …
//! ```
//!
//! Failpoints (cargo feature `failpoints`, the `fail` crate): `after_claim`, `before_step_call`,
//! `after_step_reply_before_record`, `after_step_recorded`, `in_compensation`.

pub mod admin;
pub mod clock;
pub mod definition;
pub mod executor;
pub mod journal;
pub mod metrics;
pub mod recovery;
pub mod state;
pub mod store;

pub use definition::{
    RetryPolicy, SagaDefinition, Step, StepContext, StepError, StepKind, classify,
};
pub use executor::{Engine, EngineBuilder, EngineError};
pub use state::{Phase, SagaId, SagaState, SagaStatus};
pub use store::{MIGRATIONS, SagaStore, SqlSagaStore};
