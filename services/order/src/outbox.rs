//! The order service's transactional outbox (docs/architecture.md, "Events"): the shared outbox
//! of [`sagaflow_server::outbox`] with the order's [`OrderOutbox`] schema. Every order change that
//! publishes an event (OrderCreated, OrderCompleted, OrderFailed) appends its row in the same
//! transaction as the change; the relay ([`crate::relay`]) publishes the rows.
//!
//! The functions here are the shared ones bound to [`OrderOutbox`]; the rest are re-exported.

use prost::Message;
use sagaflow_events::Family;
use sagaflow_proto::order::v1::{OrderCompletedEvent, OrderCreatedEvent, OrderFailedEvent};
pub use sagaflow_server::outbox::{
    Backlog, DEAD_LETTERED, DeadLetter, DeadLettered, OutboxError, OutboxEvent, backlog,
    dead_letters, dead_letters_after, events_of, mark_sent, retry_later,
};
use sagaflow_server::{Db, ServiceError, outbox as shared};
use sqlx::AnyConnection;

use crate::domain::OrderStatus;
pub use crate::events::{EventType, OrderEvent};

/// The order's outbox schema: family [`Family::Order`], the three order event types, an
/// OrderCreated's order failed when the event is dead-lettered, and a PENDING order's delivered
/// rows kept (its next event takes its `sequence` from them).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderOutbox;

/// The event types the order writes, as stored.
const EVENT_TYPES: [&str; 3] = ["OrderCreated", "OrderCompleted", "OrderFailed"];

#[async_trait::async_trait]
impl shared::OutboxSchema for OrderOutbox {
    fn family(&self) -> Family {
        Family::Order
    }

    fn event_types(&self) -> &'static [&'static str] {
        &EVENT_TYPES
    }

    fn check(&self, event_type: &str, payload: &[u8]) -> Result<(), String> {
        decode(event_type, payload).map(|_| ())
    }

    /// Fails the PENDING order of a dead-lettered OrderCreated (reason INTERNAL): no saga can
    /// exist for it, since no delivery ever reached the orchestrator's handler except to be
    /// refused (docs/architecture.md, "Events"). Other types change nothing.
    async fn on_dead_letter(
        &self,
        conn: &mut AnyConnection,
        event_type: &str,
        order_id: &str,
    ) -> Result<bool, ServiceError> {
        if event_type != EventType::OrderCreated.as_str() {
            return Ok(false);
        }
        match crate::commands::fail_undeliverable(conn, order_id).await? {
            Some(OrderStatus::Pending) => Ok(true),
            Some(OrderStatus::Failed) | None => Ok(false),
            Some(OrderStatus::Completed) => {
                tracing::error!(
                    order_id,
                    "ALERT: the OrderCreated of a COMPLETED order was refused on every delivery"
                );
                Ok(false)
            }
        }
    }

    fn keep_delivered(&self) -> Option<&'static str> {
        Some(
            "EXISTS (SELECT 1 FROM orders r \
             WHERE r.order_id = o.aggregate_id AND r.status = 'PENDING')",
        )
    }
}

/// Decodes an order event of the stored type `event_type` from `payload`.
///
/// # Errors
/// Why not: an unknown type, or a payload that is not that type's message.
pub fn decode(event_type: &str, payload: &[u8]) -> Result<OrderEvent, String> {
    let decoded = match EventType::parse(event_type) {
        Some(EventType::OrderCreated) => {
            OrderCreatedEvent::decode(payload).map(OrderEvent::Created)
        }
        Some(EventType::OrderCompleted) => {
            OrderCompletedEvent::decode(payload).map(OrderEvent::Completed)
        }
        Some(EventType::OrderFailed) => OrderFailedEvent::decode(payload).map(OrderEvent::Failed),
        None => return Err(format!("unknown order event type {event_type:?}")),
    };
    decoded.map_err(|err| format!("{event_type} payload does not decode: {err}"))
}

/// [`shared::pending`] of the order's outbox.
///
/// # Errors
/// As [`shared::pending`].
pub async fn pending(db: &Db, limit: i64) -> Result<Vec<OutboxEvent>, OutboxError> {
    shared::pending(db, &OrderOutbox, limit).await
}

/// [`shared::dead_letter_refused`] of the order's outbox.
///
/// # Errors
/// As [`shared::dead_letter_refused`].
pub async fn dead_letter_refused(
    db: &Db,
    event: &OutboxEvent,
    reason: &str,
) -> Result<DeadLettered, OutboxError> {
    shared::dead_letter_refused(db, &OrderOutbox, event, reason).await
}

/// [`shared::prune_sent`] of the order's outbox.
///
/// # Errors
/// As [`shared::prune_sent`].
pub async fn prune_sent(db: &Db, sent_before_ms: i64, limit: i64) -> Result<u64, OutboxError> {
    shared::prune_sent(db, &OrderOutbox, sent_before_ms, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip() {
        for t in [
            EventType::OrderCreated,
            EventType::OrderCompleted,
            EventType::OrderFailed,
        ] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert!(EVENT_TYPES.contains(&t.as_str()));
        }
        assert_eq!(EventType::parse("OrderShipped"), None);
    }

    #[test]
    fn payload_decodes_as_its_type() {
        let event = OrderEvent::Failed(OrderFailedEvent { order: None });
        let row = OutboxEvent::first("e", "o", event.event_type().as_str(), event.encode());
        assert_eq!(decode(&row.event_type, &row.payload), Ok(event));
        assert!(decode("OrderShipped", &row.payload).is_err());
        assert!(decode("OrderCreated", &[0xff, 0xff]).is_err());
    }
}
