//! The domain events as they travel (docs/architecture.md, "Events"): the type names stored in an
//! outbox's `event_type` column and sent as the Kafka `event-type` header, and Inventory's events
//! decoded from their type name and payload — one definition for the producer (Inventory) and
//! the consumer (Ranking).

use std::fmt;

use prost::Message;

use crate::{
    inventory::v1::{InventoryDeductedEvent, InventoryRestockedEvent, InventoryRestoredEvent},
    ranking::v1::record_inventory_event_request::Event as RankingEvent,
};

/// The type name of an InventoryDeducted event.
pub const INVENTORY_DEDUCTED: &str = "InventoryDeducted";
/// The type name of an InventoryRestored event.
pub const INVENTORY_RESTORED: &str = "InventoryRestored";
/// The type name of an InventoryRestocked event.
pub const INVENTORY_RESTOCKED: &str = "InventoryRestocked";
/// Inventory's event type names.
pub const INVENTORY_EVENT_TYPES: [&str; 3] =
    [INVENTORY_DEDUCTED, INVENTORY_RESTORED, INVENTORY_RESTOCKED];

/// One of Inventory's domain events (`sagaflow.inventory.v1.Inventory*Event`), decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum InventoryEvent {
    /// DeductInventory took units of the sku for an order; they count as sold.
    Deducted(InventoryDeductedEvent),
    /// RestoreInventory gave an order's units back; they no longer count.
    Restored(InventoryRestoredEvent),
    /// Restock added units; units sold are unchanged.
    Restocked(InventoryRestockedEvent),
}

impl InventoryEvent {
    /// The type name ([`INVENTORY_DEDUCTED`], [`INVENTORY_RESTORED`] or [`INVENTORY_RESTOCKED`]).
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Deducted(_) => INVENTORY_DEDUCTED,
            Self::Restored(_) => INVENTORY_RESTORED,
            Self::Restocked(_) => INVENTORY_RESTOCKED,
        }
    }

    /// The sku: the aggregate id, and the Kafka message key.
    pub fn sku(&self) -> &str {
        match self {
            Self::Deducted(e) => &e.sku,
            Self::Restored(e) => &e.sku,
            Self::Restocked(e) => &e.sku,
        }
    }

    /// The encoded message (the outbox payload).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Deducted(e) => e.encode_to_vec(),
            Self::Restored(e) => e.encode_to_vec(),
            Self::Restocked(e) => e.encode_to_vec(),
        }
    }

    /// Decodes the event of type name `event_type` from `payload`; checks nothing beyond
    /// decoding.
    ///
    /// # Errors
    /// [`DecodeError::UnknownType`] for any other type name, [`DecodeError::Undecodable`] when
    /// the payload is not an encoded message of that type.
    pub fn decode(event_type: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        fn decode<M: Message + Default>(
            event_type: &'static str,
            payload: &[u8],
        ) -> Result<M, DecodeError> {
            M::decode(payload).map_err(|source| DecodeError::Undecodable { event_type, source })
        }
        match event_type {
            INVENTORY_DEDUCTED => decode(INVENTORY_DEDUCTED, payload).map(Self::Deducted),
            INVENTORY_RESTORED => decode(INVENTORY_RESTORED, payload).map(Self::Restored),
            INVENTORY_RESTOCKED => decode(INVENTORY_RESTOCKED, payload).map(Self::Restocked),
            other => Err(DecodeError::UnknownType {
                event_type: other.to_owned(),
                expected: "InventoryDeducted, InventoryRestored, InventoryRestocked",
            }),
        }
    }
}

impl From<InventoryEvent> for RankingEvent {
    fn from(event: InventoryEvent) -> Self {
        match event {
            InventoryEvent::Deducted(e) => Self::Deducted(e),
            InventoryEvent::Restored(e) => Self::Restored(e),
            InventoryEvent::Restocked(e) => Self::Restocked(e),
        }
    }
}

impl From<RankingEvent> for InventoryEvent {
    fn from(event: RankingEvent) -> Self {
        match event {
            RankingEvent::Deducted(e) => Self::Deducted(e),
            RankingEvent::Restored(e) => Self::Restored(e),
            RankingEvent::Restocked(e) => Self::Restocked(e),
        }
    }
}

/// A payload that is not the event its type name claims: poison for a consumer (every attempt
/// fails the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The type name is none of the expected ones.
    UnknownType {
        /// The type name as received.
        event_type: String,
        /// The type names accepted, for the message.
        expected: &'static str,
    },
    /// The payload is not an encoded message of the type it claims.
    Undecodable {
        /// The type name.
        event_type: &'static str,
        /// The protobuf decoder's error.
        source: prost::DecodeError,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownType {
                event_type,
                expected,
            } => write!(
                f,
                "unknown event type {event_type:?} (expected one of {expected})"
            ),
            Self::Undecodable { event_type, source } => {
                write!(f, "the {event_type} payload does not decode: {source}")
            }
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::UnknownType { .. } => None,
            Self::Undecodable { source, .. } => Some(source),
        }
    }
}
