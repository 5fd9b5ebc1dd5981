//! Inventory's domain events and its transactional outbox (docs/architecture.md, "Events"): one
//! event per sku a stock change touched — InventoryDeducted (DeductInventory), InventoryRestored
//! (RestoreInventory), InventoryRestocked (Restock) — appended to the `outbox` table in the same
//! transaction as the stock change, right after the product row's update (which holds the row,
//! so per sku the events' `sequence` follows the commits), and published by the shared relay
//! ([`sagaflow_server::relay`]) with the [`InventoryOutbox`] schema: Kafka topic
//! `sagaflow.inventory.events.v1`, key = sku, or Ranking's `RecordInventoryEvent` over gRPC.

use sagaflow_events::{Envelope, Family, PublishError, Publisher};
use sagaflow_proto::ranking::v1::{
    RecordInventoryEventRequest, ranking_service_client::RankingServiceClient,
};
use sagaflow_server::{
    outbox::{self, OutboxSchema},
    relay,
    transport::{TracedTransport, Transport, traced},
};
use sqlx::AnyConnection;
use uuid::Uuid;

pub use sagaflow_proto::events::{
    INVENTORY_DEDUCTED as DEDUCTED, INVENTORY_EVENT_TYPES as EVENT_TYPES,
    INVENTORY_RESTOCKED as RESTOCKED, INVENTORY_RESTORED as RESTORED, InventoryEvent,
};

/// Appends `event` to the outbox on the caller's transaction (see the module docs for where).
pub(crate) async fn append(
    conn: &mut AnyConnection,
    event: &InventoryEvent,
) -> Result<(), sqlx::Error> {
    let event_id = Uuid::new_v4().to_string();
    outbox::append(
        conn,
        &event_id,
        event.sku(),
        event.event_type(),
        event.encode(),
    )
    .await
}

/// The gRPC delivery of Inventory's events (the embedded default's transport): each to
/// `RankingService/RecordInventoryEvent`, with the relay's delivery timeout and the event's trace
/// context.
#[derive(Debug, Clone)]
pub struct InventoryGrpcPublisher {
    ranking: RankingServiceClient<TracedTransport>,
}

impl InventoryGrpcPublisher {
    /// Delivers to Ranking through `ranking` (wrapped with [`traced`]).
    pub fn new(ranking: impl Into<Transport>) -> Self {
        Self {
            ranking: RankingServiceClient::new(traced(ranking)),
        }
    }
}

#[async_trait::async_trait]
impl Publisher for InventoryGrpcPublisher {
    /// # Errors
    /// [`relay::publish_error`] of Ranking's status; an undecodable payload is in doubt (the
    /// outbox checks every row before the relay reads it).
    async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let event =
            InventoryEvent::decode(&envelope.event_type, &envelope.payload).map_err(|e| {
                relay::publish_error(&tonic::Status::internal(format!(
                    "undecodable outbox payload: {e}"
                )))
            })?;
        let request = relay::delivery_request(
            RecordInventoryEventRequest {
                event_id: envelope.event_id.clone(),
                sequence: envelope.sequence,
                event: Some(event.into()),
            },
            envelope.traceparent.as_deref(),
        );
        self.ranking
            .clone()
            .record_inventory_event(request)
            .await
            .map(drop)
            .map_err(|status| relay::publish_error(&status))
    }
}

/// Inventory's outbox schema: family [`Family::Inventory`], the three event types, nothing done
/// to a product when an event is dead-lettered, and each sku's newest delivered row kept past
/// the retention window (the sku's next event takes its `sequence` from it, so a sku's sequence
/// never starts again at 1: Ranking's view orders a sku's events by it).
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryOutbox;

#[async_trait::async_trait]
impl OutboxSchema for InventoryOutbox {
    fn family(&self) -> Family {
        Family::Inventory
    }

    fn event_types(&self) -> &'static [&'static str] {
        &EVENT_TYPES
    }

    fn check(&self, event_type: &str, payload: &[u8]) -> Result<(), String> {
        InventoryEvent::decode(event_type, payload)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn keep_delivered(&self) -> Option<&'static str> {
        Some(
            "o.sequence = (SELECT MAX(n.sequence) FROM outbox n \
             WHERE n.aggregate_id = o.aggregate_id)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_proto::inventory::v1::{
        InventoryDeductedEvent, InventoryRestockedEvent, InventoryRestoredEvent,
    };

    #[test]
    fn events_round_trip_by_their_stored_type() {
        let events = [
            InventoryEvent::Deducted(InventoryDeductedEvent {
                sku: "A".into(),
                order_id: "o".into(),
                quantity: 2,
                stock_after: 8,
            }),
            InventoryEvent::Restored(InventoryRestoredEvent {
                sku: "B".into(),
                order_id: "o".into(),
                quantity: 2,
                stock_after: 10,
            }),
            InventoryEvent::Restocked(InventoryRestockedEvent {
                sku: "C".into(),
                delta: 5,
                stock_after: 5,
            }),
        ];
        for event in events {
            assert!(EVENT_TYPES.contains(&event.event_type()));
            assert_eq!(
                InventoryEvent::decode(event.event_type(), &event.encode()),
                Ok(event.clone())
            );
        }
        assert!(InventoryEvent::decode("InventoryLost", &[]).is_err());
        assert!(InventoryEvent::decode(DEDUCTED, &[0xff, 0xff]).is_err());
    }
}
