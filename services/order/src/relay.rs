//! The order service's outbox relay (docs/architecture.md, "Events"): the shared relay of
//! [`sagaflow_server::relay`] over the order's outbox ([`OrderOutbox`]), publishing through
//! Kafka or, in the embedded default, through [`OrderGrpcPublisher`]:
//!
//! - OrderCreated → `OrchestratorService/StartOrderSaga` (the orchestrator's business-key inbox
//!   makes a redelivery find the same saga);
//! - OrderCompleted → `RankingService/RecordOrderCompleted` (Ranking's inbox ignores
//!   redeliveries);
//! - OrderFailed → no gRPC consumer: published as soon as asked.

use std::{sync::Arc, time::Duration};

use sagaflow_events::{Envelope, PublishError, Publisher};
use sagaflow_proto::{
    orchestrator::v1::{
        StartOrderSagaRequest, orchestrator_service_client::OrchestratorServiceClient,
    },
    ranking::v1::{RecordOrderCompletedRequest, ranking_service_client::RankingServiceClient},
};
pub use sagaflow_server::relay::*;
use sagaflow_server::{
    Db,
    transport::{TracedTransport, Transport, traced},
};

use crate::outbox::{self, OrderEvent, OrderOutbox};

/// The order relay over `db` delivering over gRPC to the orchestrator and Ranking through their
/// transports (lazy channels, or the embedded system's in-process transport): the embedded
/// default. See [`OutboxRelay::new`] for the rest.
pub fn grpc_relay(
    db: Db,
    orchestrator: impl Into<Transport>,
    ranking: impl Into<Transport>,
    waker: RelayWaker,
    poll_interval: Duration,
) -> OutboxRelay {
    let publisher = OrderGrpcPublisher::new(orchestrator, ranking);
    relay_through(db, Arc::new(publisher), waker, poll_interval)
}

/// The order relay over `db` publishing through `publisher` (Kafka in the distributed mode).
pub fn relay_through(
    db: Db,
    publisher: Arc<dyn Publisher>,
    waker: RelayWaker,
    poll_interval: Duration,
) -> OutboxRelay {
    OutboxRelay::new(db, Arc::new(OrderOutbox), publisher, waker, poll_interval)
}

/// The gRPC delivery of the order's events (the embedded default's transport): each type to its
/// consumer's RPC, with [`DELIVERY_TIMEOUT`] and the event's trace context.
#[derive(Debug, Clone)]
pub struct OrderGrpcPublisher {
    orchestrator: OrchestratorServiceClient<TracedTransport>,
    ranking: RankingServiceClient<TracedTransport>,
}

impl OrderGrpcPublisher {
    /// Delivers to the orchestrator and Ranking through these transports (wrapped with
    /// [`traced`]).
    pub fn new(orchestrator: impl Into<Transport>, ranking: impl Into<Transport>) -> Self {
        Self {
            orchestrator: OrchestratorServiceClient::new(traced(orchestrator)),
            ranking: RankingServiceClient::new(traced(ranking)),
        }
    }
}

#[async_trait::async_trait]
impl Publisher for OrderGrpcPublisher {
    /// # Errors
    /// [`publish_error`] of the consumer's status; an undecodable payload is in doubt (the
    /// outbox checks every row before the relay reads it, so it does not happen).
    async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let decoded = outbox::decode(&envelope.event_type, &envelope.payload).map_err(|e| {
            publish_error(&tonic::Status::internal(format!(
                "undecodable outbox payload: {e}"
            )))
        })?;
        let traceparent = envelope.traceparent.as_deref();
        let sent = match decoded {
            OrderEvent::Created(created) => {
                let request = delivery_request(
                    StartOrderSagaRequest {
                        event_id: envelope.event_id.clone(),
                        event: Some(created),
                    },
                    traceparent,
                );
                self.orchestrator
                    .clone()
                    .start_order_saga(request)
                    .await
                    .map(drop)
            }
            OrderEvent::Completed(completed) => {
                let request = delivery_request(
                    RecordOrderCompletedRequest {
                        event_id: envelope.event_id.clone(),
                        event: Some(completed),
                    },
                    traceparent,
                );
                self.ranking
                    .clone()
                    .record_order_completed(request)
                    .await
                    .map(drop)
            }
            OrderEvent::Failed(_) => Ok(()),
        };
        sent.map_err(|status| publish_error(&status))
    }
}
