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
//! - [`metrics`]: the Prometheus metrics the engine records (tracing: see [`engine`]).
//!
//! ```text
//!        start ─▶ RUNNING ──every step ok──▶ COMPLETED
//!                   │ business failure / unknown outcome / deadline / cancel (before the pivot)
//!                   ▼
//!              COMPENSATING ──compensations (reverse order), finalizer──▶ COMPENSATED
//!   any ──▶ NEEDS_ATTENTION (compensation failed for good, pivot outcome unknown) ──RetrySaga──▶ …
//! ```
//!
//! Modules, from the bottom up (each depends only on those before it): [`failure`] (a failed
//! attempt, gRPC classification), [`state`] (the state row), [`journal`] (events and their
//! fold), [`definition`], [`planner`] (every decision, without I/O), [`metrics`], [`store`],
//! then the engine's tasks — the committer, the per-saga driver, the poller — and [`engine`]
//! on top, with [`admin`] over it.
//!
//! Failpoints (cargo feature `failpoints`, the `fail` crate): `after_claim`, `before_step_call`,
//! `after_step_reply_before_record`, `after_step_recorded`, `in_compensation`.

pub mod admin;
pub mod clock;
mod committer;
pub mod definition;
mod driver;
pub mod engine;
mod errors;
pub mod failure;
pub mod journal;
pub mod metrics;
pub mod planner;
mod poller;
mod shared;
pub mod state;
pub mod store;

pub use definition::{
    RetryPolicy, SagaDefinition, Step, StepContext, StepError, StepKind, classify,
};
pub use engine::{Engine, EngineBuilder, EngineError, ShutdownReport};
pub use state::{Phase, SagaId, SagaState, SagaStatus};
pub use store::{MIGRATIONS, MemorySagaStore, SagaStore, SqlSagaStore};
