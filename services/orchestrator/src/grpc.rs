//! `StartOrderSaga`: the OrderCreated consumer, over gRPC (the relay calls it) and as the
//! orchestrator's [`EventHandler`] of the order events (Kafka).

use std::time::Duration;

use prost::Message as _;
use sagaflow_events::{Envelope, EventHandler, Family, HandleError};
use sagaflow_proto::{
    orchestrator::v1::{
        StartOrderSagaRequest, StartOrderSagaResponse,
        orchestrator_service_server::{OrchestratorService as Rpc, OrchestratorServiceServer},
    },
    order::v1::OrderCreatedEvent,
};
use sagaflow_server::{ServiceError, card_token, consume, validate::Validator};
use sagaflow_telemetry::propagation;
use sagaflow_workflow_engine::{Engine, EngineError, SagaId};
use tonic::{Request, Response, Status, service::RoutesBuilder};
use tracing::Instrument as _;

use crate::order_saga::{DEFINITION_NAME, OrderSagaInput};

/// The OrchestratorService: starts an order saga per OrderCreated event.
#[derive(Debug, Clone)]
pub struct OrchestratorService {
    engine: Engine,
    saga_deadline: Duration,
}

impl OrchestratorService {
    /// The service over `engine` (which must have the order saga registered). A saga still
    /// before its pivot `saga_deadline` after it started is compensated with reason
    /// DEADLINE_EXCEEDED (docs/architecture.md, "Deadline").
    pub fn new(engine: Engine, saga_deadline: Duration) -> Self {
        Self {
            engine,
            saga_deadline,
        }
    }

    /// Adds the tonic server of this service to `routes`.
    pub fn register(self, routes: &mut RoutesBuilder) {
        routes.add_service(
            OrchestratorServiceServer::new(self).max_decoding_message_size(
                sagaflow_server::repeated::max_decoding_message_size(crate::SERVICE_NAME),
            ),
        );
    }
}

fn engine_status(err: EngineError) -> Status {
    match err {
        EngineError::ShuttingDown => Status::unavailable("the orchestrator is shutting down"),
        // The cause goes to the log line with the error id the caller sees (crates/server's
        // `error` module).
        EngineError::Store(e) => ServiceError::Unavailable(format!("saga store: {e}")).into(),
        other => ServiceError::Internal(other.into()).into(),
    }
}

#[tonic::async_trait]
impl Rpc for OrchestratorService {
    /// Starts (or finds) the saga of the event's order. The saga stores the trace context of
    /// this handler's span (a child of the call's server span, whose parent is the relay's
    /// delivery in the PlaceOrder trace), so its steps join that trace; with tracing off, the
    /// caller's `traceparent` header is stored as given.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `event_id` / `event.order` / `event.order.order_id`; UNAVAILABLE
    /// when the saga store is unreachable or the orchestrator is shutting down.
    #[tracing::instrument(skip_all, fields(event_id = tracing::field::Empty), err(level = "debug"))]
    async fn start_order_saga(
        &self,
        request: Request<StartOrderSagaRequest>,
    ) -> Result<Response<StartOrderSagaResponse>, Status> {
        let traceparent = propagation::current_traceparent().or_else(|| {
            request
                .metadata()
                .get(propagation::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        let req = request.into_inner();
        let mut v = Validator::new();
        v.uuid("event_id", &req.event_id);
        let event = req.event.unwrap_or_default();
        let order = event.order.clone().unwrap_or_default();
        let order_id = v.uuid("event.order.order_id", &order.order_id);
        v.required("event.order.user_id", &order.user_id);
        v.check(
            !order.lines.is_empty(),
            "event.order.lines",
            "must not be empty",
        );
        v.required("event.payment_method", &event.payment_method);
        v.check(
            event.sealed_payment_method.is_empty()
                || (card_token::is_sealed(&event.sealed_payment_method)
                    && event.sealed_payment_method.len() <= card_token::SEALED_MAX_BYTES),
            "event.sealed_payment_method",
            format!(
                "must be empty or a sealed card token of at most {} bytes",
                card_token::SEALED_MAX_BYTES
            ),
        );
        v.finish()?;
        sagaflow_server::untrusted::record("event_id", &req.event_id);
        let Some(order_id) = order_id else {
            return Err(ServiceError::invalid("event.order.order_id", "must be a UUID").into());
        };
        let input = OrderSagaInput::from_event(&event)?;
        let input =
            serde_json::to_value(&input).map_err(|e| ServiceError::Internal(anyhow_like(e)))?;
        let deadline_ms = self
            .engine
            .now_ms()
            .saturating_add(i64::try_from(self.saga_deadline.as_millis()).unwrap_or(i64::MAX));
        let (saga_id, created) = self
            .engine
            .start_with_id(
                SagaId(order_id),
                DEFINITION_NAME,
                &order.order_id,
                input,
                traceparent,
                Some(deadline_ms),
            )
            .await
            .map_err(engine_status)?;
        Ok(Response::new(StartOrderSagaResponse {
            saga_id: saga_id.to_string(),
            created,
        }))
    }
}

fn anyhow_like(e: serde_json::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("encoding the saga input")
}

/// The orchestrator's consumer of the order events (Kafka consumer group `sagaflow-orchestrator`,
/// docs/architecture.md, "Events"): an OrderCreated starts its order's saga through the same
/// handler as `StartOrderSaga` (the saga keyed by the order id is the inbox: a redelivery finds it
/// and changes nothing); the order's other events are not the orchestrator's and pass.
#[derive(Debug, Clone)]
pub struct OrderCreatedConsumer(OrchestratorService);

impl OrchestratorService {
    /// This service as the consumer of the order events.
    pub fn consumer(&self) -> OrderCreatedConsumer {
        OrderCreatedConsumer(self.clone())
    }
}

#[async_trait::async_trait]
impl EventHandler for OrderCreatedConsumer {
    /// # Errors
    /// [`HandleError::Poison`] for an undecodable payload or an event StartOrderSaga refuses;
    /// [`HandleError::Transient`] when the saga store is unavailable.
    async fn handle(&self, envelope: Envelope) -> Result<(), HandleError> {
        if envelope.family != Family::Order {
            return Err(HandleError::Poison(format!(
                "the orchestrator consumes order events, not {:?}",
                envelope.family
            )));
        }
        if envelope.event_type != "OrderCreated" {
            return Ok(());
        }
        let event = OrderCreatedEvent::decode(envelope.payload.as_slice())
            .map_err(|e| consume::undecodable(&envelope, &e))?;
        let request = consume::request(
            StartOrderSagaRequest {
                event_id: envelope.event_id.clone(),
                event: Some(event),
            },
            &envelope,
        );
        Rpc::start_order_saga(&self.0, request)
            .instrument(consume::span(&envelope))
            .await
            .map(drop)
            .map_err(|status| consume::handle_error(&status))
    }
}
