//! Shared service plumbing, written once and used by every sagaflow service and the orchestrator
//! (plumbing is written once, never per service; docs/architecture.md, "Layers"):
//!
//! - [`config`]: flags and `SAGAFLOW_*` environment variables (clap) shared by every process;
//! - [`db`]: sqlx pools and migrations for PostgreSQL and SQLite chosen by the URL;
//! - [`error`]: [`ServiceError`] and its one mapping to `tonic::Status` with rich details;
//! - [`validate`]: request validation naming the offending field;
//! - [`idempotency`]: the idempotency store of docs/architecture.md, "The service contract", and
//!   its late-action rule ([`idempotency::late_action`]: tombstones, `COMPENSATED_BEFORE_ACTION`);
//! - [`faults`]: the fault-injection tower layer for chaos tests;
//! - [`retention`]: the background task that prunes expired records in bounded batches;
//! - [`string_guard`]: the tower layer that refuses control characters in any string field;
//! - [`grpc`]: the server with health, reflection (v1 and v1alpha) and graceful shutdown.

pub mod config;
pub mod db;
pub mod error;
pub mod faults;
pub mod grpc;
pub mod idempotency;
pub mod retention;
pub mod string_guard;
pub mod validate;

pub use db::{Backend, Db, Migrations, PoolConfig, Tx};
pub use error::ServiceError;
