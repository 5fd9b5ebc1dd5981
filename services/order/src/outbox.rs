//! The order service's transactional outbox (DESIGN §7).
//!
//! Every order change that publishes an event (OrderCreated, OrderCompleted, OrderFailed) appends
//! an outbox row **in the same transaction** as the change, so an event exists if and only if its
//! change committed. A relay (a later issue) delivers the rows at least once and marks them sent:
//!
//! ```text
//!  loop {
//!      let events = outbox::pending(&db, 100).await?;     // oldest first
//!      for event in &events { deliver(event.decode()?).await?; }
//!      outbox::mark_sent(&db, &ids_of(&events)).await?;
//!  }
//! ```
//!
//! Rows are returned in `position` order, a number the database assigns on insert. Events of one
//! order are written by transactions that each follow the previous one's commit (they change the
//! same order row), so per order `position` order is `sequence` order (1, 2, …): a relay that
//! delivers in the order given preserves the order of each aggregate's events.
//!
//! Each row also keeps the W3C `traceparent` of the span that wrote it (the command's handler),
//! so the relay delivers the event within the trace of the request that caused it (issue 7):
//! OrderCreated carries the PlaceOrder trace on to the order saga. [`backlog`] measures what is
//! still undelivered (the relay samples it for the metrics).

use prost::Message;
use sagaflow_proto::order::v1::{OrderCompletedEvent, OrderCreatedEvent, OrderFailedEvent};
use sagaflow_server::{Db, db::now_ms};
use sagaflow_telemetry::propagation;
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

    fn encode(&self) -> Vec<u8> {
        match self {
            Self::Created(e) => e.encode_to_vec(),
            Self::Completed(e) => e.encode_to_vec(),
            Self::Failed(e) => e.encode_to_vec(),
        }
    }
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Database-assigned delivery order (increasing).
    pub position: i64,
    /// UUID of the event: the consumer's inbox key.
    pub event_id: String,
    /// The order id.
    pub aggregate_id: String,
    /// 1, 2, … per aggregate.
    pub sequence: i64,
    /// What happened.
    pub event_type: EventType,
    /// The encoded `sagaflow.order.v1.<type>Event` message.
    pub payload: Vec<u8>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds; `None` until delivered.
    pub sent_at_ms: Option<i64>,
    /// W3C trace context of the span that wrote the event; `None` when tracing was off.
    pub traceparent: Option<String>,
}

impl OutboxEvent {
    /// Decodes the payload as the message its type names.
    ///
    /// # Errors
    /// The decode error when the payload is not that message.
    pub fn decode(&self) -> Result<OrderEvent, prost::DecodeError> {
        let bytes = self.payload.as_slice();
        Ok(match self.event_type {
            EventType::OrderCreated => OrderEvent::Created(OrderCreatedEvent::decode(bytes)?),
            EventType::OrderCompleted => OrderEvent::Completed(OrderCompletedEvent::decode(bytes)?),
            EventType::OrderFailed => OrderEvent::Failed(OrderFailedEvent::decode(bytes)?),
        })
    }
}

/// Errors of the outbox API.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed (see [`sagaflow_server::db::is_transient`] to decide on a retry).
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// A row's payload is not the message its type names.
    #[error("outbox event {event_id} does not decode: {reason}")]
    Undecodable {
        /// The row's event id.
        event_id: String,
        /// The decode error.
        reason: String,
    },
    /// A row holds an event type this version does not know (a newer writer).
    #[error("outbox event {event_id} has unknown type {event_type:?}")]
    UnknownType {
        /// The row's event id.
        event_id: String,
        /// The stored type.
        event_type: String,
    },
}

#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    position: i64,
    event_id: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    payload: Vec<u8>,
    created_at: i64,
    sent_at: Option<i64>,
    traceparent: Option<String>,
}

impl TryFrom<OutboxRow> for OutboxEvent {
    type Error = OutboxError;

    fn try_from(row: OutboxRow) -> Result<Self, OutboxError> {
        let event_type =
            EventType::parse(&row.event_type).ok_or_else(|| OutboxError::UnknownType {
                event_id: row.event_id.clone(),
                event_type: row.event_type.clone(),
            })?;
        Ok(Self {
            position: row.position,
            event_id: row.event_id,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            event_type,
            payload: row.payload,
            created_at_ms: row.created_at,
            sent_at_ms: row.sent_at,
            traceparent: row.traceparent,
        })
    }
}

/// Counter: outbox events set aside because they can never be delivered (label `event_type`).
pub const DEAD_LETTERED: &str = "sagaflow_outbox_dead_lettered_total";

/// Up to `limit` undelivered events, oldest first (`position` order; per aggregate, `sequence`
/// order). A `limit` below 1 returns nothing.
///
/// Rows are decoded one by one: a row whose type or payload does not decode is dead-lettered
/// (`dead_at` and `last_error` set, counted in [`DEAD_LETTERED`], an `ALERT` logged) and skipped,
/// so that it never stalls the events behind it; dead-lettered rows are never read again.
///
/// # Errors
/// [`OutboxError::Database`] when the database fails.
pub async fn pending(db: &Db, limit: i64) -> Result<Vec<OutboxEvent>, OutboxError> {
    if limit < 1 {
        return Ok(Vec::new());
    }
    // A round of rows that were all dead-lettered reads on, up to a bound, so that a run of bad
    // rows does not delay the good ones behind it by a poll interval each.
    for _ in 0..MAX_DEAD_LETTER_ROUNDS {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT position, event_id, aggregate_id, sequence, event_type, payload, created_at, \
             sent_at, traceparent FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL \
             ORDER BY position LIMIT $1",
        )
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
        let read = rows.len();
        let mut events = Vec::with_capacity(read);
        for row in rows {
            let (event_id, event_type) = (row.event_id.clone(), row.event_type.clone());
            let decoded = OutboxEvent::try_from(row).and_then(|event| match event.decode() {
                Ok(_) => Ok(event),
                Err(err) => Err(OutboxError::Undecodable {
                    event_id: event.event_id,
                    reason: err.to_string(),
                }),
            });
            match decoded {
                Ok(event) => events.push(event),
                Err(err) => dead_letter(db, &event_id, &event_type, &err.to_string()).await?,
            }
        }
        if !events.is_empty() || read == 0 {
            return Ok(events);
        }
    }
    Ok(Vec::new())
}

/// How many all-bad batches [`pending`] reads past in one call.
const MAX_DEAD_LETTER_ROUNDS: usize = 8;

async fn dead_letter(
    db: &Db,
    event_id: &str,
    event_type: &str,
    reason: &str,
) -> Result<(), OutboxError> {
    tracing::error!(
        event_id,
        event_type,
        reason,
        "ALERT: outbox event cannot be delivered; dead-lettered"
    );
    sqlx::query(
        "UPDATE outbox SET dead_at = $1, last_error = $2 WHERE event_id = $3 AND sent_at IS NULL",
    )
    .bind(now_ms())
    .bind(reason.to_owned())
    .bind(event_id.to_owned())
    .execute(db.pool())
    .await?;
    metrics::counter!(DEAD_LETTERED, "event_type" => event_type.to_owned()).increment(1);
    Ok(())
}

/// A dead-lettered event: its id, order, type and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event id.
    pub event_id: String,
    /// The order id.
    pub aggregate_id: String,
    /// The stored type.
    pub event_type: String,
    /// Unix ms it was set aside.
    pub dead_at_ms: i64,
    /// Why.
    pub reason: String,
}

/// Up to `limit` dead-lettered events, oldest first.
///
/// # Errors
/// [`OutboxError::Database`] when the database fails.
pub async fn dead_letters(db: &Db, limit: i64) -> Result<Vec<DeadLetter>, OutboxError> {
    let rows: Vec<(String, String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT event_id, aggregate_id, event_type, dead_at, last_error FROM outbox \
         WHERE dead_at IS NOT NULL ORDER BY position LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(event_id, aggregate_id, event_type, dead_at_ms, reason)| DeadLetter {
                event_id,
                aggregate_id,
                event_type,
                dead_at_ms,
                reason: reason.unwrap_or_default(),
            },
        )
        .collect())
}

/// Every event of one aggregate (order), delivered or not, in `sequence` order.
///
/// # Errors
/// As [`pending`].
pub async fn events_of(db: &Db, aggregate_id: &str) -> Result<Vec<OutboxEvent>, OutboxError> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT position, event_id, aggregate_id, sequence, event_type, payload, created_at, \
         sent_at, traceparent FROM outbox WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(aggregate_id)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(OutboxEvent::try_from).collect()
}

/// Marks the events with these ids as delivered, in one transaction. Ids that are unknown or
/// already marked are skipped; returns how many rows were marked now.
///
/// # Errors
/// [`OutboxError::Database`] when the database fails (nothing was marked).
pub async fn mark_sent(db: &Db, event_ids: &[String]) -> Result<u64, OutboxError> {
    if event_ids.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let mut tx = db.begin().await?;
    let mut marked = 0;
    for event_id in event_ids {
        marked +=
            sqlx::query("UPDATE outbox SET sent_at = $1 WHERE event_id = $2 AND sent_at IS NULL")
                .bind(now)
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
    }
    tx.commit().await?;
    Ok(marked)
}

/// Undelivered events: how many, and when the oldest was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events not yet marked sent.
    pub pending: i64,
    /// Unix ms of the oldest of them; `None` when there are none.
    pub oldest_created_at_ms: Option<i64>,
}

/// The undelivered events' count and oldest creation time (one query over the pending index).
///
/// # Errors
/// [`OutboxError::Database`] when the database fails.
pub async fn backlog(db: &Db) -> Result<Backlog, OutboxError> {
    let (pending, oldest_created_at_ms): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(Backlog {
        pending,
        oldest_created_at_ms,
    })
}

/// Appends `event` for `aggregate_id` with the aggregate's next sequence number, on the caller's
/// transaction (STYLE rule 24), with the current span's `traceparent` (the command's handler).
/// Returns the event id.
pub(crate) async fn append(
    conn: &mut AnyConnection,
    aggregate_id: &str,
    event: &OrderEvent,
) -> Result<String, sqlx::Error> {
    let event_id = Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, sequence, event_type, payload, created_at, \
         traceparent) \
         SELECT $1, $2, COALESCE(MAX(sequence), 0) + 1, $3, $4, $5, $6 \
         FROM outbox WHERE aggregate_id = $7",
    )
    .bind(&event_id)
    .bind(aggregate_id)
    .bind(event.event_type().as_str())
    .bind(event.encode())
    .bind(now_ms())
    .bind(propagation::current_traceparent())
    .bind(aggregate_id)
    .execute(&mut *conn)
    .await?;
    Ok(event_id)
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
        }
        assert_eq!(EventType::parse("OrderShipped"), None);
    }

    #[test]
    fn payload_decodes_as_its_type() {
        let event = OrderEvent::Failed(OrderFailedEvent { order: None });
        let row = OutboxEvent {
            position: 1,
            event_id: "e".into(),
            aggregate_id: "o".into(),
            sequence: 1,
            event_type: event.event_type(),
            payload: event.encode(),
            created_at_ms: 0,
            sent_at_ms: None,
            traceparent: None,
        };
        assert_eq!(row.decode().unwrap(), event);
    }
}
