//! The sagaflow payment service (steps 4 and 6 of docs/architecture.md, "The order saga"): one
//! payment per order, authorized, voided, captured and refunded through a [`PaymentGateway`].
//!
//! - [`domain`]: statuses and the pure decision of each command;
//! - [`gateway`]: the [`PaymentGateway`] trait and the [`SimulatedGateway`] (card tokens);
//! - `store`: the payments table;
//! - `commands`: the flow of each command (read, gateway call, record) and its rejections;
//! - `grpc`: the `sagaflow.payment.v1.PaymentService` implementation (validation and mapping).
//!
//! Every command that reaches the gateway runs in three parts, so that no database transaction
//! is held while the gateway answers (it may take seconds: `tok_slow`), which on SQLite would
//! block every other writer of the service:
//!
//! ```text
//!  1. read:   replay check of the idempotency key; read the order's payment; decide
//!  2. call:   the gateway (idempotent on a key derived from the order id)
//!  3. record: idempotency::execute { read again, decide again, write } ── one transaction
//! ```
//!
//! Step 3 decides again because the row may have changed during step 2: in particular a
//! CancelPayment may have left a tombstone while StartPayment's authorization was in flight
//! (docs/architecture.md, "The service contract"); StartPayment then answers
//! `COMPENSATED_BEFORE_ACTION`. The three parts run on
//! their own task, so a caller that gives up (its deadline passes) does not cut them in two: the
//! outcome is still recorded, and a retry with the same idempotency key gets it.
//!
//! An authorization must never stay open at the gateway without a payment to void it, even when
//! step 3 fails or the process dies between steps 2 and 3. So StartPayment first commits an
//! authorization intent (`payment_intents`: the gateway key, amount and card token; see
//! [`domain::IntentStatus`]) in a transaction of its own, then calls the gateway; step 3 marks
//! the intent RECORDED with the STARTED payment. CancelPayment, when it finds no payment but an
//! open intent, voids by key at the gateway ([`PaymentGateway::void_by_key`]: whatever was
//! authorized under the key, and nothing can be afterwards) before it records its tombstone, and
//! its tombstone transaction settles the intent (or claims the order with a VOIDED intent when no
//! StartPayment came yet, so a later one never calls the gateway). A StartPayment whose recording
//! finds the tombstone voids by key too.
//!
//! ```no_run
//! # async fn run(db: sagaflow_server::Db) {
//! use std::sync::Arc;
//! use sagaflow_payment::{PaymentService, SimulatedGateway, SimulatedGatewayConfig};
//!
//! let gateway = Arc::new(SimulatedGateway::new(SimulatedGatewayConfig::default()));
//! let mut routes = tonic::service::RoutesBuilder::default();
//! PaymentService::new(db, gateway).register(&mut routes);
//! # }
//! ```

use std::sync::Arc;

use sagaflow_proto::payment::v1::payment_service_server::PaymentServiceServer;
use sagaflow_server::Db;

mod commands;
mod convert;
pub mod domain;
pub mod gateway;
mod grpc;
pub mod sealed;
mod store;

pub use gateway::{
    AuthorizationState, AuthorizeRequest, CardToken, GatewayArgs, GatewayError, GatewayMemory,
    GatewayReference, OperationRequest, PaymentGateway, SIMULATED_CARD_TOKENS, SimulatedGateway,
    SimulatedGatewayConfig, VoidByKeyRequest,
};

/// The fully-qualified gRPC service name (for health and reflection).
pub const SERVICE_NAME: &str = "sagaflow.payment.v1.PaymentService";

sagaflow_server::service_migrations!(
    /// The payment database's migrations (`migrations/payment/{postgres,sqlite}`).
    postgres: "../../migrations/payment/postgres",
    sqlite: "../../migrations/payment/sqlite",
);

/// The payment service: implements `sagaflow.payment.v1.PaymentService` over its own database
/// and a payment gateway. Cloning is cheap (shared pool and gateway).
#[derive(Clone, Debug)]
pub struct PaymentService {
    db: Db,
    gateway: Arc<dyn PaymentGateway>,
}

impl PaymentService {
    /// A service over `db` (migrated with [`migrations`]) that charges through `gateway`.
    pub fn new(db: Db, gateway: Arc<dyn PaymentGateway>) -> Self {
        Self { db, gateway }
    }

    /// The same service, opening card tokens sealed by the order service with `key` (the
    /// deployment's card-token key) right before each gateway call ([`sealed::OpeningGateway`];
    /// docs/architecture.md, "Card tokens"). Without it a sealed token is an unknown card token.
    pub fn with_card_token_key(mut self, key: sagaflow_server::card_token::CardTokenKey) -> Self {
        self.gateway = Arc::new(sealed::OpeningGateway::new(key, self.gateway));
        self
    }

    /// Adds the gRPC service to `routes`.
    pub fn register(self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(PaymentServiceServer::new(self).max_decoding_message_size(
            sagaflow_server::repeated::max_decoding_message_size(SERVICE_NAME),
        ));
    }
}
