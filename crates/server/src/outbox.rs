//! The transactional outbox of every service that publishes events (docs/architecture.md,
//! "Events"): the Order service (OrderCreated, OrderCompleted, OrderFailed) and Inventory
//! (InventoryDeducted, InventoryRestored).
//!
//! Every change that publishes an event appends an outbox row **in the same transaction** as the
//! change ([`append`]), so an event exists if and only if its change committed. The relay
//! ([`crate::relay`]) publishes the rows at least once and marks them sent:
//!
//! ```text
//!  loop {
//!      let events = outbox::pending(&db, 256).await?;     // due rows, oldest first
//!      for event in &events {
//!          deliver(event), else outbox::retry_later(…) or outbox::dead_letter_refused(…)
//!      }
//!      outbox::mark_sent(&db, &ids_of(delivered)).await?;
//!  }
//! ```
//!
//! Rows are returned in `position` order, a number the database assigns on insert. Events of one
//! aggregate are written by transactions that each follow the previous one's commit (they change
//! the same aggregate row: the order, the product), so per aggregate `position` order is
//! `sequence` order (1, 2, …): a relay that delivers in the order given preserves the order of
//! each aggregate's events.
//!
//! What differs per service is its [`OutboxSchema`]: the event family (topic), the types and how
//! a payload is checked, what dead-lettering a refused event does to its aggregate (the Order
//! service fails the order of an OrderCreated), and which delivered rows must be kept.
//!
//! A failed delivery counts an attempt and sets the row's next attempt time ([`retry_later`]);
//! [`pending`] returns only rows that are due, and none whose order has an earlier undelivered
//! event that is not due yet, so failing events never hold up other orders and an order's events
//! are still delivered in order. A row the relay gives up on is **dead-lettered** (`dead_at` and
//! `last_error` set, never read again; [`dead_letters`] lists them): one that does not decode, at
//! once; one its consumer refused definitely on every attempt ([`dead_letter_refused`]). What that
//! does to the aggregate is the schema's ([`OutboxSchema::on_dead_letter`]: an OrderCreated's
//! order is failed, reason INTERNAL, in the same transaction). [`prune_sent`] deletes delivered rows after the retention window.
//!
//! Each row also keeps the W3C `traceparent` of the span that wrote it (the command's handler),
//! so the relay delivers the event within the trace of the request that caused it
//! (docs/operations.md, "Watching"):
//! OrderCreated carries the PlaceOrder trace on to the order saga. [`backlog`] measures what is
//! still undelivered (the relay samples it for the metrics).

use std::fmt;

use sagaflow_events::{Envelope, Family, SCHEMA_VERSION};
use sagaflow_telemetry::propagation;
use sqlx::AnyConnection;

use crate::{Db, ServiceError, db::now_ms};

/// What one service's outbox knows of its events (docs/architecture.md, "Events"): everything
/// the shared outbox and relay do not.
#[async_trait::async_trait]
pub trait OutboxSchema: Send + Sync + fmt::Debug + 'static {
    /// The family (topic) of the service's events.
    fn family(&self) -> Family;

    /// Every event type the service writes (the `event_type` column values), for the metrics'
    /// labels.
    fn event_types(&self) -> &'static [&'static str];

    /// Checks a row before it is published: its type is one this version knows and its payload
    /// decodes as that type's message.
    ///
    /// # Errors
    /// Why not: the row is dead-lettered with this reason.
    fn check(&self, event_type: &str, payload: &[u8]) -> Result<(), String>;

    /// Runs in the transaction that dead-letters an event no delivery attempt of which was in
    /// doubt (refused on every attempt, or undecodable): what that means for its aggregate.
    /// Returns whether it changed the aggregate. The default changes nothing.
    ///
    /// # Errors
    /// A [`ServiceError`]: `Unavailable` rolls the dead-lettering back (tried again later); any
    /// other error dead-letters the event alone, its message added to the reason.
    async fn on_dead_letter(
        &self,
        _conn: &mut AnyConnection,
        _event_type: &str,
        _aggregate_id: &str,
    ) -> Result<bool, ServiceError> {
        Ok(false)
    }

    /// An SQL condition on the outbox row `o` under which a delivered row must be kept past its
    /// retention window, if any (the Order service keeps a PENDING order's rows: its next event
    /// takes its `sequence` from them).
    fn keep_delivered(&self) -> Option<&'static str> {
        None
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
    /// What happened: the type name, e.g. `OrderCreated` (one of the schema's
    /// [`OutboxSchema::event_types`] for every row [`pending`] returns).
    pub event_type: String,
    /// The encoded protobuf event message the type names (`sagaflow.order.v1.OrderCreatedEvent`).
    pub payload: Vec<u8>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds; `None` until delivered.
    pub sent_at_ms: Option<i64>,
    /// W3C trace context of the span that wrote the event; `None` when tracing was off.
    pub traceparent: Option<String>,
    /// Failed deliveries so far.
    pub attempts: i64,
    /// Unix milliseconds from which the next delivery may be tried (0 for a new row).
    pub next_attempt_at_ms: i64,
    /// Whether a failed delivery may have reached the consumer's handler (docs/architecture.md,
    /// "Events"): such an event is retried for as long as it fails, never dead-lettered.
    pub in_doubt: bool,
}

impl OutboxEvent {
    /// The first event of aggregate `aggregate_id` (sequence 1) as [`append`] stores it under
    /// `event_id` now, with the current span's `traceparent`: what the relay's hand-off lane
    /// delivers without reading the row back.
    pub fn first(event_id: &str, aggregate_id: &str, event_type: &str, payload: Vec<u8>) -> Self {
        let now = now_ms();
        Self {
            position: 0,
            event_id: event_id.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: 1,
            event_type: event_type.to_owned(),
            payload,
            created_at_ms: now,
            sent_at_ms: None,
            traceparent: propagation::current_traceparent(),
            attempts: 0,
            next_attempt_at_ms: 0,
            in_doubt: false,
        }
    }

    /// The event as a transport publishes it, in `family`.
    pub fn envelope(&self, family: Family) -> Envelope {
        Envelope {
            family,
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            schema_version: SCHEMA_VERSION,
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            payload: self.payload.clone(),
            traceparent: self.traceparent.clone(),
        }
    }
}

/// Appends an event of type `event_type` (`payload` its encoded message) for `aggregate_id`
/// under `event_id` (a fresh UUID), with the aggregate's next sequence number, on the caller's
/// transaction (it never begins its own: the event commits with the change or not at all), with
/// the current span's `traceparent` (the command's handler).
///
/// # Errors
/// The database error (the caller's transaction is then to be rolled back).
pub async fn append(
    conn: &mut AnyConnection,
    event_id: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: Vec<u8>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, sequence, event_type, payload, created_at, \
         traceparent) \
         SELECT $1, $2, COALESCE(MAX(sequence), 0) + 1, $3, $4, $5, $6 \
         FROM outbox WHERE aggregate_id = $7",
    )
    .bind(event_id)
    .bind(aggregate_id)
    .bind(event_type)
    .bind(payload)
    .bind(now_ms())
    .bind(propagation::current_traceparent())
    .bind(aggregate_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Errors of the outbox API.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed (see [`crate::db::is_transient`] to decide on a retry).
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema's [`OutboxSchema::on_dead_letter`] failed for a reason that may pass (its
    /// database was unavailable, e.g. failing the order of a dead-lettered OrderCreated);
    /// nothing was written.
    #[error("the aggregate of a dead-lettered event: {0}")]
    FailOrder(ServiceError),
    /// A row's payload is not the message its type names.
    #[error("outbox event {event_id} does not decode: {reason}")]
    Undecodable {
        /// The row's event id.
        event_id: String,
        /// The decode error.
        reason: String,
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
    attempts: i64,
    next_attempt_at: i64,
    in_doubt: i64,
}

/// The columns of [`OutboxRow`], qualified by the table alias `o`.
const ROW_COLUMNS: &str = "o.position, o.event_id, o.aggregate_id, o.sequence, o.event_type, \
     o.payload, o.created_at, o.sent_at, o.traceparent, o.attempts, o.next_attempt_at, o.in_doubt";

impl From<OutboxRow> for OutboxEvent {
    fn from(row: OutboxRow) -> Self {
        Self {
            position: row.position,
            event_id: row.event_id,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            event_type: row.event_type,
            payload: row.payload,
            created_at_ms: row.created_at,
            sent_at_ms: row.sent_at,
            traceparent: row.traceparent,
            attempts: row.attempts,
            next_attempt_at_ms: row.next_attempt_at,
            in_doubt: row.in_doubt != 0,
        }
    }
}

/// Counter: outbox events set aside because they can never be delivered (label `event_type`).
pub const DEAD_LETTERED: &str = "sagaflow_outbox_dead_lettered_total";

/// Up to `limit` undelivered events that are due now, oldest first (`position` order; per
/// aggregate, `sequence` order). A `limit` below 1 returns nothing.
///
/// Due: not sent, not dead-lettered, `next_attempt_at` reached, and no earlier undelivered,
/// not dead-lettered event of the same order is waiting for its next attempt. So rows in backoff
/// never take the places of other orders' events, and a later event of an order is returned only
/// together with (after) every earlier undelivered one, which keeps per-order order for a relay
/// that stops an order's deliveries at its first failure.
///
/// Rows are checked one by one ([`OutboxSchema::check`]): a row whose type or payload does not
/// decode is dead-lettered (`dead_at` and `last_error` set, counted in [`DEAD_LETTERED`], an
/// `ALERT` logged; [`OutboxSchema::on_dead_letter`] in the same transaction, as by
/// [`dead_letter_refused`]: an OrderCreated's order is failed) and skipped, so that it never
/// stalls the events behind it; dead-lettered rows are never read again.
///
/// # Errors
/// [`OutboxError::Database`] when the database fails; [`OutboxError::FailOrder`] when the
/// schema's dead-letter effect failed for a reason that may pass.
pub async fn pending(
    db: &Db,
    schema: &dyn OutboxSchema,
    limit: i64,
) -> Result<Vec<OutboxEvent>, OutboxError> {
    if limit < 1 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM outbox o \
         WHERE o.sent_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= $1 \
         AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.aggregate_id = o.aggregate_id \
             AND e.sequence < o.sequence AND e.sent_at IS NULL AND e.dead_at IS NULL \
             AND e.next_attempt_at > $2) \
         ORDER BY o.position LIMIT $3"
    );
    // A round of rows that were all dead-lettered reads on, up to a bound, so that a run of bad
    // rows does not delay the good ones behind it by a poll interval each.
    for _ in 0..MAX_DEAD_LETTER_ROUNDS {
        let now = now_ms();
        let rows: Vec<OutboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(now)
            .bind(now)
            .bind(limit)
            .fetch_all(db.pool())
            .await?;
        let read = rows.len();
        let mut events = Vec::with_capacity(read);
        for row in rows {
            let (event_id, event_type) = (row.event_id.clone(), row.event_type.clone());
            let (aggregate_id, attempts, in_doubt) =
                (row.aggregate_id.clone(), row.attempts, row.in_doubt != 0);
            let event = OutboxEvent::from(row);
            let checked = match schema.check(&event.event_type, &event.payload) {
                Ok(()) => Ok(event),
                Err(reason) => Err(OutboxError::Undecodable {
                    event_id: event.event_id,
                    reason,
                }),
            };
            match checked {
                Ok(event) => events.push(event),
                Err(err) => {
                    let target = DeadLetterTarget {
                        event_id: &event_id,
                        aggregate_id: &aggregate_id,
                        event_type: &event_type,
                        attempts,
                        in_doubt,
                    };
                    set_aside(db, schema, &target, attempts, &err.to_string()).await?;
                }
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

/// Records a failed delivery of `event` that will be tried again: one more attempt, the next
/// attempt not before `next_attempt_at_ms` (unix ms), `in_doubt` kept once set, `error` as
/// `last_error`. Returns false (nothing written) when the row was delivered, dead-lettered or
/// retried by someone else since it was read (its `attempts` moved).
///
/// # Errors
/// [`OutboxError::Database`] when the database fails.
pub async fn retry_later(
    db: &Db,
    event: &OutboxEvent,
    in_doubt: bool,
    next_attempt_at_ms: i64,
    error: &str,
) -> Result<bool, OutboxError> {
    let updated = sqlx::query(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, \
         in_doubt = CASE WHEN $2 = 1 THEN 1 ELSE in_doubt END, last_error = $3 \
         WHERE event_id = $4 AND sent_at IS NULL AND dead_at IS NULL AND attempts = $5",
    )
    .bind(next_attempt_at_ms)
    .bind(i64::from(in_doubt))
    .bind(error.to_owned())
    .bind(event.event_id.clone())
    .bind(event.attempts)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// What [`dead_letter_refused`] (and the dead-lettering of an undecodable row) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLettered {
    /// Nothing: the row was delivered, dead-lettered, retried by someone else or found in doubt
    /// since it was read.
    Unchanged,
    /// The row was dead-lettered.
    Event,
    /// The row was dead-lettered and the schema's [`OutboxSchema::on_dead_letter`] changed its
    /// aggregate in the same transaction (an OrderCreated's PENDING order failed with reason
    /// INTERNAL, with its OrderFailed event).
    EventAndOrder,
}

/// Dead-letters `event` after a failed delivery that made it `attempts + 1` failed attempts, all
/// of them definite: `last_error` = `reason`, counted in [`DEAD_LETTERED`], an `ALERT` logged.
/// The schema's [`OutboxSchema::on_dead_letter`] runs in the same transaction: for an
/// OrderCreated, the order is failed (reason INTERNAL, status history row and OrderFailed event)
/// if it is still PENDING — no saga can exist for it, since no delivery ever reached the
/// orchestrator's handler except to be refused (docs/architecture.md, "Events"). Guarded: nothing changes unless the row is still undelivered, not dead-lettered,
/// not in doubt and at the `attempts` it was read with.
///
/// # Errors
/// [`OutboxError::Database`] when the database fails; [`OutboxError::FailOrder`] when failing the
/// order failed for a reason that may pass (nothing was written).
pub async fn dead_letter_refused(
    db: &Db,
    schema: &dyn OutboxSchema,
    event: &OutboxEvent,
    reason: &str,
) -> Result<DeadLettered, OutboxError> {
    let target = DeadLetterTarget {
        event_id: &event.event_id,
        aggregate_id: &event.aggregate_id,
        event_type: event.event_type.as_str(),
        attempts: event.attempts,
        in_doubt: false,
    };
    set_aside(
        db,
        schema,
        &target,
        event.attempts.saturating_add(1),
        reason,
    )
    .await
}

/// The row [`set_aside`] dead-letters, as read.
struct DeadLetterTarget<'a> {
    event_id: &'a str,
    aggregate_id: &'a str,
    /// The stored type text (perhaps one this version does not know).
    event_type: &'a str,
    /// `attempts` as read: the guard.
    attempts: i64,
    /// `in_doubt` as read: also the guard. An event in doubt is dead-lettered only when it does
    /// not decode, and its order is never failed.
    in_doubt: bool,
}

/// Dead-letters `target` with `attempts` and `reason`, running the schema's dead-letter effect
/// (failing an OrderCreated's order) in the same transaction unless the event is in doubt (see
/// [`dead_letter_refused`]). An effect that fails for a reason that will not pass (a row this
/// version cannot read) does not keep the event alive: the event is dead-lettered alone, with that
/// reason added.
async fn set_aside(
    db: &Db,
    schema: &dyn OutboxSchema,
    target: &DeadLetterTarget<'_>,
    attempts: i64,
    reason: &str,
) -> Result<DeadLettered, OutboxError> {
    let mut reason = reason.to_owned();
    let mut tx = db.begin().await?;
    let mut outcome = mark_dead(&mut tx, target, attempts, &reason).await?;
    if outcome == DeadLettered::Event && !target.in_doubt {
        match schema
            .on_dead_letter(&mut tx, target.event_type, target.aggregate_id)
            .await
        {
            Ok(true) => outcome = DeadLettered::EventAndOrder,
            Ok(false) => {}
            Err(err @ ServiceError::Unavailable(_)) => {
                tx.rollback().await?;
                return Err(OutboxError::FailOrder(err));
            }
            Err(err) => {
                // Start over without the effect: the transaction holds its partial writes.
                tx.rollback().await?;
                reason = format!("{reason}; its aggregate could not be changed: {err}");
                tx = db.begin().await?;
                outcome = mark_dead(&mut tx, target, attempts, &reason).await?;
            }
        }
    }
    tx.commit().await?;
    if outcome != DeadLettered::Unchanged {
        tracing::error!(
            event_id = target.event_id,
            order_id = target.aggregate_id,
            event_type = target.event_type,
            attempts,
            reason,
            aggregate_changed = outcome == DeadLettered::EventAndOrder,
            "ALERT: outbox event cannot be delivered; dead-lettered"
        );
        metrics::counter!(DEAD_LETTERED, "event_type" => target.event_type.to_owned()).increment(1);
    }
    Ok(outcome)
}

/// The guarded `UPDATE` of [`set_aside`]: [`DeadLettered::Event`] when the row was marked.
async fn mark_dead(
    conn: &mut AnyConnection,
    target: &DeadLetterTarget<'_>,
    attempts: i64,
    reason: &str,
) -> Result<DeadLettered, OutboxError> {
    let updated = sqlx::query(
        "UPDATE outbox SET dead_at = $1, last_error = $2, attempts = $3 \
         WHERE event_id = $4 AND sent_at IS NULL AND dead_at IS NULL AND attempts = $5 \
         AND in_doubt = $6",
    )
    .bind(now_ms())
    .bind(reason.to_owned())
    .bind(attempts)
    .bind(target.event_id.to_owned())
    .bind(target.attempts)
    .bind(i64::from(target.in_doubt))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(if updated == 1 {
        DeadLettered::Event
    } else {
        DeadLettered::Unchanged
    })
}

/// A dead-lettered event: its id, order, type and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Database-assigned delivery order: the listing's page key.
    pub position: i64,
    /// The event id.
    pub event_id: String,
    /// The order id.
    pub aggregate_id: String,
    /// 1, 2, … per aggregate.
    pub sequence: i64,
    /// The stored type.
    pub event_type: String,
    /// Failed delivery attempts (0 when the payload never decoded).
    pub attempts: i64,
    /// Unix ms the event was written.
    pub created_at_ms: i64,
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
    dead_letters_after(db, 0, limit).await
}

/// Up to `limit` dead-lettered events with a `position` above `after`, oldest first (a page of
/// the listing; `after` 0 for the first).
///
/// # Errors
/// [`OutboxError::Database`] when the database fails.
pub async fn dead_letters_after(
    db: &Db,
    after: i64,
    limit: i64,
) -> Result<Vec<DeadLetter>, OutboxError> {
    type Row = (
        i64,
        String,
        String,
        i64,
        String,
        i64,
        i64,
        i64,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT position, event_id, aggregate_id, sequence, event_type, attempts, created_at, \
         dead_at, last_error FROM outbox \
         WHERE dead_at IS NOT NULL AND position > $1 ORDER BY position LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                position,
                event_id,
                aggregate_id,
                sequence,
                event_type,
                attempts,
                created_at_ms,
                dead_at_ms,
                reason,
            )| DeadLetter {
                position,
                event_id,
                aggregate_id,
                sequence,
                event_type,
                attempts,
                created_at_ms,
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
    let sql =
        format!("SELECT {ROW_COLUMNS} FROM outbox o WHERE o.aggregate_id = $1 ORDER BY o.sequence");
    let rows: Vec<OutboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(aggregate_id)
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(OutboxEvent::from).collect())
}

/// Marks the events with these ids as delivered, one statement per 256 ids. Ids that are
/// unknown, already marked or dead-lettered are skipped; returns how many rows were marked now.
///
/// # Errors
/// [`OutboxError::Database`] when the database fails (the chunks before it stay marked: their
/// events were delivered; the rest are delivered again, which every consumer ignores).
pub async fn mark_sent(db: &Db, event_ids: &[String]) -> Result<u64, OutboxError> {
    if event_ids.is_empty() {
        return Ok(0);
    }
    // One statement (and one commit) per chunk instead of one per event: each statement is a
    // round trip to the database (on SQLite, a hop to its worker thread).
    let now = now_ms();
    let mut marked = 0;
    for chunk in event_ids.chunks(MARK_SENT_CHUNK) {
        let placeholders = (2..chunk.len() + 2)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE outbox SET sent_at = $1 \
             WHERE event_id IN ({placeholders}) AND sent_at IS NULL AND dead_at IS NULL"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for event_id in chunk {
            query = query.bind(event_id);
        }
        marked += query.execute(db.pool()).await?.rows_affected();
    }
    Ok(marked)
}

/// Event ids per `UPDATE` of [`mark_sent`] (well below SQLite's 32,766 bound parameters).
const MARK_SENT_CHUNK: usize = 256;

/// Deletes up to `limit` delivered rows sent before `sent_before_ms` (unix ms), oldest first,
/// and returns how many it deleted. Rows the schema keeps ([`OutboxSchema::keep_delivered`]: a
/// PENDING order's, whose next event takes its `sequence` from them) stay. Undelivered and
/// dead-lettered rows are never deleted.
///
/// # Errors
/// [`OutboxError::Database`] when the database fails (nothing was deleted).
pub async fn prune_sent(
    db: &Db,
    schema: &dyn OutboxSchema,
    sent_before_ms: i64,
    limit: i64,
) -> Result<u64, OutboxError> {
    if limit < 1 {
        return Ok(0);
    }
    let keep = schema
        .keep_delivered()
        .map_or_else(String::new, |keep| format!("AND NOT ({keep}) "));
    let sql = format!(
        "DELETE FROM outbox WHERE position IN (\
             SELECT o.position FROM outbox o \
             WHERE o.sent_at IS NOT NULL AND o.sent_at < $1 {keep}\
             ORDER BY o.sent_at LIMIT $2)"
    );
    let deleted = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(sent_before_ms)
        .bind(limit)
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(deleted)
}

/// Undelivered events: how many, and when the oldest was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events not yet marked sent (and not dead-lettered), in backoff or not.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_carries_the_row_and_the_schema_version() {
        let row = OutboxEvent::first("e", "o", "OrderFailed", vec![1, 2]);
        let envelope = row.envelope(Family::Order);
        assert_eq!(
            (
                envelope.event_id.as_str(),
                envelope.aggregate_id.as_str(),
                envelope.event_type.as_str(),
                envelope.sequence,
                envelope.schema_version,
                envelope.payload.as_slice()
            ),
            (
                "e",
                "o",
                "OrderFailed",
                1,
                SCHEMA_VERSION,
                [1_u8, 2].as_slice()
            )
        );
    }
}
