//! Shared service plumbing, written once and used by every sagaflow service and the orchestrator
//! (plumbing is written once, never per service; docs/architecture.md, "Layers"):
//!
//! - [`access`]: each RPC's class (public, internal, admin) from the protos, enforced by one tower
//!   layer: operators' bearer tokens, services' client certificates (docs/operations.md,
//!   "Security");
//! - [`end_users`]: end users' bearer JWTs on the public RPCs, and `sagaflow dev`'s signing key;
//! - [`tls`]: TLS of listeners and clients (rustls), `--tls-cert`, `--tls-key`, `--tls-ca`;
//! - [`limits`]: message size, concurrency, timeout and per-user rate limits of every server;
//! - [`repeated`]: repeated fields counted on the wire and refused over their limits before any
//!   decoding, and each service's message size limit;
//! - [`audit`]: the audit of admin actions, one table shape and its listing for every service;
//! - [`config`]: flags and `SAGAFLOW_*` environment variables (clap) shared by every process;
//! - [`db`]: sqlx pools and migrations for PostgreSQL and SQLite chosen by the URL, and each
//!   database's group commit of keyed commands (docs/architecture.md, "Group commit");
//! - [`error`]: [`ServiceError`] and its one mapping to `tonic::Status` with rich details;
//! - [`validate`]: request validation naming the offending field;
//! - [`idempotency`]: the idempotency store of docs/architecture.md, "The service contract", and
//!   its late-action rule ([`idempotency::late_action`]: tombstones, `COMPENSATED_BEFORE_ACTION`);
//! - [`faults`]: the fault-injection tower layer for chaos tests;
//! - [`consume`]: a consumed event through the handler of its gRPC delivery RPC;
//! - [`outbox`] and [`relay`]: the transactional outbox of every service that publishes events,
//!   and the relay that publishes it through a [`sagaflow_events::Publisher`];
//! - [`retention`]: the background task that prunes expired records in bounded batches;
//! - [`string_guard`]: the tower layer that refuses control characters in any string field;
//! - [`grpc`]: the server with health, reflection (v1 and v1alpha) and graceful shutdown;
//! - [`transport`]: how a process calls a service: TCP, or in-process through the server's own
//!   stack (the embedded system).

//!
//! # Where a service decides, and where it maps
//!
//! One rule for every service (docs/architecture.md, "The service contract"; "Layers"):
//!
//! - a business rejection is **made** in `domain`: its pure rules (statuses, arithmetic) and the
//!   decisions of each command (`decide_*`, and the checked arithmetic such as inventory's
//!   `take_line`) return a typed rejection (`Rejection`; coupon's `UseRejection` and
//!   `IssueRejection`) that says its `ErrorInfo` reason, its message and its metadata. Domain code
//!   does no I/O and is unit-tested without a database;
//! - `store` (and `commands`, where a command's flow spans more than one call: payment's gateway
//!   sequencing, order's status changes) reads the rows, asks `domain`, applies the decision
//!   inside the transaction of [`idempotency::execute`], and turns a rejection into a
//!   [`ServiceError`] right there (each service's `rejected` function: FAILED_PRECONDITION with
//!   the rejection's reason, message and metadata, or the code the domain names: NOT_FOUND for
//!   payment's `Rejection::NotFound`; coupon's `IssueRejection` is ALREADY_EXISTS). Two refusals
//!   are not a service's domain's: a row that is not there is NOT_FOUND where it is looked up,
//!   and the late-action refusal (`COMPENSATED_BEFORE_ACTION`) is made once for every service by
//!   [`idempotency::late_action`];
//! - `grpc.rs` validates the request ([`validate::Validator`], INVALID_ARGUMENT naming the
//!   field), runs the effect through the executor, and maps proto ↔ domain; every
//!   [`ServiceError`] is **mapped** to a gRPC status in one place, `From<ServiceError> for Status`
//!   ([`error`]). No status change, gateway call or business rejection is decided in `grpc.rs`.

pub mod access;
pub mod audit;
pub mod card_token;
pub mod config;
pub mod consume;
pub mod db;
pub mod end_users;
pub mod error;
pub mod faults;
pub mod files;
mod group_commit;
pub mod grpc;
pub mod idempotency;
pub mod limits;
pub mod outbox;
pub mod relay;
pub mod repeated;
pub mod retention;
pub mod stack;
pub mod string_guard;
pub mod tls;
pub mod transport;
pub mod validate;

pub use db::{Backend, Db, Migrations, PoolConfig, Tx};
pub use error::ServiceError;
/// Client-supplied strings in logs and spans, escaped and truncated (docs/operations.md, "Logs and
/// traces from untrusted input"): re-exported so that every service records them the same way.
pub use sagaflow_telemetry::untrusted;
