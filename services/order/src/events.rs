//! The order's domain events as the outbox stores them (docs/architecture.md, "Events"): their
//! types, payloads and the append that writes one on the command's own transaction. Below both
//! the commands that emit events and the outbox that delivers them.

use prost::Message;
use sagaflow_proto::order::v1::{OrderCompletedEvent, OrderCreatedEvent, OrderFailedEvent};
use sagaflow_server::outbox;
use sqlx::AnyConnection;
use uuid::Uuid;

/// The kind of an outbox event (the `event_type` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An order was placed (payload `OrderCreatedEvent`); starts the order saga.
    OrderCreated,
    /// An order completed (payload `OrderCompletedEvent`); Ranking consumes it.
    OrderCompleted,
    /// An order failed (payload `OrderFailedEvent`).
    OrderFailed,
}

impl EventType {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "OrderCreated",
            Self::OrderCompleted => "OrderCompleted",
            Self::OrderFailed => "OrderFailed",
        }
    }

    /// Parses a column value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "OrderCreated" => Some(Self::OrderCreated),
            "OrderCompleted" => Some(Self::OrderCompleted),
            "OrderFailed" => Some(Self::OrderFailed),
            _ => None,
        }
    }
}

/// A decoded outbox payload.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderEvent {
    /// An order was placed.
    Created(OrderCreatedEvent),
    /// An order completed.
    Completed(OrderCompletedEvent),
    /// An order failed.
    Failed(OrderFailedEvent),
}

impl OrderEvent {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Created(_) => EventType::OrderCreated,
            Self::Completed(_) => EventType::OrderCompleted,
            Self::Failed(_) => EventType::OrderFailed,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Self::Created(e) => e.encode_to_vec(),
            Self::Completed(e) => e.encode_to_vec(),
            Self::Failed(e) => e.encode_to_vec(),
        }
    }
}

/// Appends `event` for `aggregate_id` with the aggregate's next sequence number, on the caller's
/// transaction (it never begins its own), with the current span's `traceparent` (the command's
/// handler).
/// Returns the event id.
pub(crate) async fn append(
    conn: &mut AnyConnection,
    aggregate_id: &str,
    event: &OrderEvent,
) -> Result<String, sqlx::Error> {
    let event_id = Uuid::new_v4().to_string();
    append_as(conn, &event_id, aggregate_id, event).await?;
    Ok(event_id)
}

/// [`append`] under an event id of the caller's (a fresh UUID), for a handler that hands the
/// event to the relay after the commit.
pub(crate) async fn append_as(
    conn: &mut AnyConnection,
    event_id: &str,
    aggregate_id: &str,
    event: &OrderEvent,
) -> Result<(), sqlx::Error> {
    outbox::append(
        conn,
        event_id,
        aggregate_id,
        event.event_type().as_str(),
        event.encode(),
    )
    .await
}
