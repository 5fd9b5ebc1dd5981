//! Ranking's event consumers without gRPC (docs/architecture.md, "Events"): what a Kafka
//! consumer calls for each message, the same command as the gRPC delivery of the same event.
//!
//! ```text
//!  (event_type, payload) ──decode_inventory_event──▶ InventoryEvent ─┐
//!                                                                   ├─ record_inventory_event(db, event_id, sequence, event)
//!  RankingService/RecordInventoryEvent ─────────────────────────────┘    │ idempotency store, key = event_id (other event: ALREADY_EXISTS)
//!                                                                        │   inbox row                 (redelivery: applied = false)
//!                                                                        │   product_view upsert       (one transaction)
//!                                                                        ▼
//!                                                                   Ok(applied)
//!
//!  payload ──decode_order_completed──▶ OrderCompletedEvent ──▶ record_order_completed(db, event_id, event)
//! ```
//!
//! Both functions build the very request the gRPC delivery sends and run it through the same
//! validation and the same idempotency store under the same key, so an event delivered once over
//! gRPC and once over Kafka is recorded once, and a redelivery on either path answers
//! `Ok(false)`.
//!
//! A consumer commits its offset only after `Ok(_)`; an `Err` tells it what to do:
//!
//! | error                               | what it means                        | consumer      |
//! |-------------------------------------|--------------------------------------|---------------|
//! | [`DecodeError`]                     | not an event Ranking knows           | dead-letter   |
//! | `ServiceError::InvalidArgument`     | the event is malformed; nothing kept | dead-letter   |
//! | `ServiceError::AlreadyExists`       | the event id was used for another    | dead-letter   |
//! | `ServiceError::Unavailable`         | the database is unavailable          | retry         |
//! | `ServiceError::Internal`            | a bug or unexpected failure (logged) | retry / alert |

use prost::Message;
use sagaflow_events::{Envelope, EventHandler, Family, HandleError};
use sagaflow_proto::{
    order::v1::OrderCompletedEvent,
    ranking::v1::{self as pb},
};
use sagaflow_server::{Db, ServiceError, consume};
use tracing::Instrument as _;

use crate::grpc;

pub use sagaflow_proto::events::{
    DecodeError, INVENTORY_DEDUCTED, INVENTORY_RESTOCKED, INVENTORY_RESTORED, InventoryEvent,
};

/// The `event_type` of an OrderCompleted event.
pub const ORDER_COMPLETED: &str = "OrderCompleted";

/// Decodes one of Inventory's events from its type name (`"InventoryDeducted"`,
/// `"InventoryRestored"` or `"InventoryRestocked"`, exactly) and its protobuf payload (the
/// encoded `sagaflow.inventory.v1.Inventory*Event` message): [`InventoryEvent::decode`]. Checks
/// nothing beyond decoding: [`record_inventory_event`] validates the fields.
///
/// # Errors
/// [`DecodeError::UnknownType`] for any other type name, [`DecodeError::Undecodable`] when
/// the payload is not an encoded message of that type.
pub fn decode_inventory_event(
    event_type: &str,
    payload: &[u8],
) -> Result<InventoryEvent, DecodeError> {
    InventoryEvent::decode(event_type, payload)
}

/// Decodes an OrderCompleted event from its type name (`"OrderCompleted"`, exactly; Ranking
/// records no other event of the order topic) and its protobuf payload (an encoded
/// `sagaflow.order.v1.OrderCompletedEvent`).
///
/// # Errors
/// [`DecodeError::UnknownType`] for any other type name (a consumer of the whole order topic
/// skips OrderCreated before calling this), [`DecodeError::Undecodable`] when the payload does
/// not decode.
pub fn decode_order_completed(
    event_type: &str,
    payload: &[u8],
) -> Result<OrderCompletedEvent, DecodeError> {
    if event_type != ORDER_COMPLETED {
        return Err(DecodeError::UnknownType {
            event_type: event_type.to_owned(),
            expected: ORDER_COMPLETED,
        });
    }
    OrderCompletedEvent::decode(payload).map_err(|source| DecodeError::Undecodable {
        event_type: ORDER_COMPLETED,
        source,
    })
}

/// Records one of Inventory's events in the product view, exactly as
/// `RankingService/RecordInventoryEvent` with the same `event_id`, `sequence` and event would
/// (docs/architecture.md, "Events"): in one transaction, the idempotency record and inbox row
/// keyed by `event_id`, then the sku's view (`units_sold` + quantity for a deduction, −
/// quantity for a restore; `events` + 1; `stock` and `last_sequence` from the event only when
/// `sequence` is above the stored one).
///
/// - `event_id`: the outbox event id (a UUID), the inbox key;
/// - `sequence`: the event's outbox sequence for its sku (1, 2, …; the Kafka envelope's
///   `sequence`).
///
/// Returns `Ok(true)` when the event was applied, `Ok(false)` when `event_id` had already been
/// recorded with this very event (a redelivery: nothing changed).
///
/// # Errors
/// - `InvalidArgument` naming the field (`event_id` empty or not a UUID, `sequence` below 1,
///   `deducted.sku` empty, `deducted.quantity` below 1, `deducted.stock_after` negative, …, the
///   same paths as the RPC's); nothing was written, and every attempt fails the same way;
/// - `AlreadyExists` (reason `IDEMPOTENCY_KEY_REUSED`) when `event_id` was recorded with another
///   event or sequence; nothing changed;
/// - `Unavailable` / `Internal` when the database fails (retry: nothing was recorded, or a
///   retry answers `Ok(false)`).
pub async fn record_inventory_event(
    db: &Db,
    event_id: &str,
    sequence: i64,
    event: InventoryEvent,
) -> Result<bool, ServiceError> {
    let req = pb::RecordInventoryEventRequest {
        event_id: event_id.to_owned(),
        sequence,
        event: Some(event.into()),
    };
    let change = grpc::validate_inventory_event(&req)?;
    grpc::record_inventory_event(db, req, change)
        .await
        .map_err(service_error)
}

/// Counts one completed order in the product sales, exactly as
/// `RankingService/RecordOrderCompleted` with the same `event_id` and event would
/// (docs/architecture.md, "Events"): in one transaction, the idempotency record keyed by
/// `event_id`, the inbox row of the order, and each line's units and order added to its sku's
/// sales.
///
/// Returns `Ok(true)` when the order was counted, `Ok(false)` when `event_id` had already been
/// recorded with this very event, or the order had already been counted under another event id
/// (nothing changed).
///
/// # Errors
/// - `InvalidArgument` naming the field (`event_id`, `event.order`, `event.order.status` not
///   COMPLETED, `event.order.lines[i].sku`, …, the same paths as the RPC's); nothing was
///   written;
/// - `AlreadyExists` (reason `IDEMPOTENCY_KEY_REUSED`) when `event_id` was recorded with another
///   event; nothing changed;
/// - `Unavailable` / `Internal` when the database fails (retry).
pub async fn record_order_completed(
    db: &Db,
    event_id: &str,
    event: OrderCompletedEvent,
) -> Result<bool, ServiceError> {
    let req = pb::RecordOrderCompletedRequest {
        event_id: event_id.to_owned(),
        event: Some(event),
    };
    let order = grpc::validate_event(&req)?;
    grpc::record_order_completed(db, req, order)
        .await
        .map_err(service_error)
}

/// The `ServiceError` of a status answered by the idempotency store after validation passed:
/// ALREADY_EXISTS (the key reused), INVALID_ARGUMENT (a value the database refused: the request
/// as a whole), UNAVAILABLE, or INTERNAL (already logged where it arose). The effects store no
/// other business error.
fn service_error(status: tonic::Status) -> ServiceError {
    use tonic::Code;
    let message = status.message().to_owned();
    match status.code() {
        Code::AlreadyExists => ServiceError::AlreadyExists {
            reason: "IDEMPOTENCY_KEY_REUSED",
            message,
        },
        Code::InvalidArgument => ServiceError::refused_value(message),
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::ResourceExhausted => ServiceError::Unavailable(message),
        code => ServiceError::Internal(anyhow::anyhow!("{code:?}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_proto::inventory::v1::{
        InventoryDeductedEvent, InventoryRestockedEvent, InventoryRestoredEvent,
    };

    #[test]
    fn decodes_each_inventory_event_by_its_type() {
        let deducted = InventoryDeductedEvent {
            sku: "KB-001".into(),
            order_id: "o".into(),
            quantity: 2,
            stock_after: 8,
        };
        let restored = InventoryRestoredEvent {
            sku: "KB-001".into(),
            order_id: "o".into(),
            quantity: 2,
            stock_after: 10,
        };
        let restocked = InventoryRestockedEvent {
            sku: "KB-001".into(),
            delta: 5,
            stock_after: 15,
        };
        let cases = [
            (INVENTORY_DEDUCTED, InventoryEvent::Deducted(deducted)),
            (INVENTORY_RESTORED, InventoryEvent::Restored(restored)),
            (INVENTORY_RESTOCKED, InventoryEvent::Restocked(restocked)),
        ];
        for (event_type, event) in cases {
            let payload = match &event {
                InventoryEvent::Deducted(e) => e.encode_to_vec(),
                InventoryEvent::Restored(e) => e.encode_to_vec(),
                InventoryEvent::Restocked(e) => e.encode_to_vec(),
            };
            let decoded = decode_inventory_event(event_type, &payload).unwrap();
            assert_eq!(decoded.event_type(), event_type);
            assert_eq!(decoded.sku(), "KB-001");
            assert_eq!(decoded, event);
        }
    }

    #[test]
    fn unknown_types_and_undecodable_payloads_are_named() {
        let err = decode_inventory_event("InventoryExploded", &[]).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType { .. }));
        assert!(err.to_string().contains("\"InventoryExploded\""), "{err}");
        // Case matters: the type names are exact.
        assert!(decode_inventory_event("inventorydeducted", &[]).is_err());
        // Field 1 (sku) as a length-delimited string of 10 bytes with 1 byte present.
        let err = decode_inventory_event(INVENTORY_DEDUCTED, &[0x0a, 0x0a, b'K']).unwrap_err();
        assert!(matches!(err, DecodeError::Undecodable { .. }));
        assert!(err.to_string().contains("InventoryDeducted"), "{err}");

        let err = decode_order_completed("OrderCreated", &[]).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType { .. }));
        let err = decode_order_completed(ORDER_COMPLETED, &[0xff]).unwrap_err();
        assert!(matches!(err, DecodeError::Undecodable { .. }));
        assert_eq!(
            decode_order_completed(ORDER_COMPLETED, &[]).unwrap(),
            OrderCompletedEvent::default()
        );
    }

    #[test]
    fn statuses_of_the_store_map_back() {
        let reused = service_error(tonic::Status::already_exists("reused"));
        assert!(matches!(
            reused,
            ServiceError::AlreadyExists {
                reason: "IDEMPOTENCY_KEY_REUSED",
                ..
            }
        ));
        assert!(service_error(tonic::Status::invalid_argument("x")).is_refused_value());
        assert!(matches!(
            service_error(tonic::Status::unavailable("db")),
            ServiceError::Unavailable(_)
        ));
        assert!(matches!(
            service_error(tonic::Status::internal("bug")),
            ServiceError::Internal(_)
        ));
    }
}

/// Ranking's consumer of the order and inventory events (Kafka consumer group
/// `sagaflow-ranking`, docs/architecture.md, "Events"): OrderCompleted through
/// [`record_order_completed`], Inventory's events through [`record_inventory_event`] — the code
/// of the gRPC delivery RPCs, with their inbox; the order's other events pass.
#[derive(Debug, Clone)]
pub struct RankingConsumer {
    db: Db,
}

impl crate::RankingService {
    /// This service as the consumer of the order and inventory events.
    pub fn consumer(&self) -> RankingConsumer {
        RankingConsumer {
            db: self.db.clone(),
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for RankingConsumer {
    /// # Errors
    /// [`HandleError::Poison`] for an undecodable payload, an unknown inventory event type or an
    /// event the recording refuses; [`HandleError::Transient`] when the database is unavailable.
    async fn handle(&self, envelope: Envelope) -> Result<(), HandleError> {
        let span = consume::span(&envelope);
        let recorded = match envelope.family {
            Family::Order if envelope.event_type == ORDER_COMPLETED => {
                let event = decode_order_completed(&envelope.event_type, &envelope.payload)
                    .map_err(|e| HandleError::Poison(e.to_string()))?;
                record_order_completed(&self.db, &envelope.event_id, event)
                    .instrument(span)
                    .await
            }
            Family::Order => return Ok(()),
            Family::Inventory => {
                let event = decode_inventory_event(&envelope.event_type, &envelope.payload)
                    .map_err(|e| HandleError::Poison(e.to_string()))?;
                record_inventory_event(&self.db, &envelope.event_id, envelope.sequence, event)
                    .instrument(span)
                    .await
            }
        };
        recorded
            .map(drop)
            .map_err(|err| consume::handle_error(&tonic::Status::from(err)))
    }
}
