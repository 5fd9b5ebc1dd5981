//! Shared service plumbing, written once and used by every sagaflow service and the orchestrator
//! (plumbing is written once, never per service; docs/architecture.md, "Layers"):
//!
//! - [`config`]: flags and `SAGAFLOW_*` environment variables (clap) shared by every process;
//! - [`db`]: sqlx pools and migrations for PostgreSQL and SQLite chosen by the URL, and each
//!   database's group commit of keyed commands (docs/architecture.md, "Group commit");
//! - [`error`]: [`ServiceError`] and its one mapping to `tonic::Status` with rich details;
//! - [`validate`]: request validation naming the offending field;
//! - [`idempotency`]: the idempotency store of docs/architecture.md, "The service contract", and
//!   its late-action rule ([`idempotency::late_action`]: tombstones, `COMPENSATED_BEFORE_ACTION`);
//! - [`faults`]: the fault-injection tower layer for chaos tests;
//! - [`retention`]: the background task that prunes expired records in bounded batches;
//! - [`string_guard`]: the tower layer that refuses control characters in any string field;
//! - [`grpc`]: the server with health, reflection (v1 and v1alpha) and graceful shutdown.

//!
//! # Where a service decides, and where it maps
//!
//! One rule for every service (docs/architecture.md, "The service contract"; "Layers"):
//!
//! - `domain` holds the pure business rules: statuses, arithmetic, and the `decide_*` functions
//!   that say what a command does with what is stored (unit-tested without I/O);
//! - `store` (and, where a command's flow spans more than one call, such as payment's gateway
//!   sequencing or order's status changes, a `commands` module) applies those decisions inside
//!   the transaction of [`idempotency::execute`], and is where a business rejection is **made**:
//!   it builds the [`ServiceError`] (FAILED_PRECONDITION with its reason, NOT_FOUND, …),
//!   including the late-action refusal of [`idempotency::late_action`];
//! - `grpc.rs` validates the request ([`validate::Validator`], INVALID_ARGUMENT naming the
//!   field), calls the effect through the executor, and maps proto ↔ domain; the rejection is
//!   **mapped** to a `tonic::Status` in one place, `From<ServiceError> for Status`
//!   ([`error`]). No status change, gateway call or business rejection is decided in `grpc.rs`.

pub mod config;
pub mod db;
pub mod error;
pub mod faults;
mod group_commit;
pub mod grpc;
pub mod idempotency;
pub mod retention;
pub mod string_guard;
pub mod validate;

pub use db::{Backend, Db, Migrations, PoolConfig, Tx};
pub use error::ServiceError;
