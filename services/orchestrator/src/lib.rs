//! The orchestrator (docs/architecture.md, "The order saga"): it hosts the order saga definition
//! on the workflow engine and serves `sagaflow.orchestrator.v1.OrchestratorService/StartOrderSaga`,
//! to which the Order service's outbox relay delivers OrderCreated events.
//!
//! ```text
//!  Order outbox ──relay──▶ StartOrderSaga ──▶ Engine::start(order, key = order id)
//!                                                 │ (the replica that starts it runs it at once)
//!                                                 ▼
//!        use_coupon → apply_coupon → deduct_inventory → start_payment → deduct_points
//!                   → complete_payment (pivot) → complete_order
//!        on failure: compensations in reverse order, then FailOrder(reason)
//! ```
//!
//! The saga's id is the order's id, so `Order.saga_id` names it before the saga exists, and the
//! engine's unique business key makes a second delivery of the same event find the same saga.

mod calls;
pub mod definition;
mod grpc;
pub mod limits;
pub mod order_saga;
pub mod typed;

pub use definition::{OrderSagaError, StepPolicies, order_saga};
pub use grpc::{OrchestratorService, OrderCreatedConsumer};
pub use order_saga::ServiceClients;

/// The fully-qualified gRPC service name (for health and reflection).
pub const SERVICE_NAME: &str = "sagaflow.orchestrator.v1.OrchestratorService";
