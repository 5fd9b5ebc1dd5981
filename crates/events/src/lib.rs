//! The event-transport seam (docs/architecture.md, "Events"): what a transactional outbox's relay
//! publishes through and what a consumer's handler is called with, whatever carries the events.
//!
//! - [`Envelope`]: one event as it leaves an outbox — its id (the consumer's inbox key), type,
//!   schema version, aggregate id (the partition key: per-aggregate order holds), sequence,
//!   protobuf payload and W3C `traceparent`;
//! - [`Publisher`]: what the relay delivers an envelope through; a row is marked sent only after
//!   `publish` returned `Ok` (the consumer's reply, or the broker's acknowledgement);
//! - [`EventHandler`]: what a consumer runs for an envelope; it applies the effect and its inbox
//!   row in one local transaction, so a redelivery changes nothing;
//! - [`EventBus`]: which transport a process uses (`--event-bus`): the gRPC delivery of the
//!   embedded default, or Apache Kafka.
//!
//! The Kafka transport is [`kafka`]: [`kafka::KafkaPublisher`], [`kafka::KafkaConsumer`],
//! [`kafka::ensure_topics`].
//!
//! Topics ([`Family::topic`]) are one per event family, versioned: `sagaflow.order.events.v1`,
//! `sagaflow.inventory.events.v1`.

use std::fmt;

pub mod kafka;

/// The schema version every event written by this version carries (the `v1` of the topics and
/// protobuf packages).
pub const SCHEMA_VERSION: u32 = 1;

/// A family of events: one producing service's aggregate, one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// The Order service's events (aggregate: the order id): OrderCreated, OrderCompleted,
    /// OrderFailed.
    Order,
    /// The Inventory service's events (aggregate: the sku): InventoryDeducted,
    /// InventoryRestored.
    Inventory,
}

impl Family {
    /// Every family, in declaration order.
    pub const ALL: [Self; 2] = [Self::Order, Self::Inventory];

    /// The Kafka topic of the family's schema-version-1 events.
    pub fn topic(self) -> &'static str {
        match self {
            Self::Order => "sagaflow.order.events.v1",
            Self::Inventory => "sagaflow.inventory.events.v1",
        }
    }

    /// The family's short name, `order` or `inventory` (the `family` label of the relay's
    /// backlog gauges).
    pub fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Inventory => "inventory",
        }
    }

    /// The family whose topic is `topic`, if any.
    pub fn of_topic(topic: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.topic() == topic)
    }
}

/// One event as it leaves an outbox, transport-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The family (topic) it belongs to.
    pub family: Family,
    /// UUID of the event: the consumer's inbox key.
    pub event_id: String,
    /// The event's type name, e.g. `OrderCreated` (the outbox's `event_type` column).
    pub event_type: String,
    /// The payload's schema version ([`SCHEMA_VERSION`] for everything written today).
    pub schema_version: u32,
    /// The aggregate id (order id, sku): the partition key.
    pub aggregate_id: String,
    /// 1, 2, … per aggregate.
    pub sequence: i64,
    /// The encoded protobuf event message the type names.
    pub payload: Vec<u8>,
    /// W3C trace context of the span that wrote the event; `None` when tracing was off.
    pub traceparent: Option<String>,
}

/// How a failed publication bears on its event (docs/architecture.md, "Events").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Refused definitely by the consumer (gRPC: INVALID_ARGUMENT, or FAILED_PRECONDITION with an
    /// ErrorInfo reason) or the broker (a record it will never take): nothing was written, and
    /// every attempt is refused the same way.
    Refused,
    /// Provably never reached a handler or a broker (a refused connection, an auth layer).
    NotDelivered,
    /// May have had its effect (a timeout, a lost reply or acknowledgement): retried for as long
    /// as it fails, never given up.
    InDoubt,
}

/// A failed publication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// What the failure proves.
    pub kind: FailureKind,
    /// For the outbox row's `last_error` and the logs.
    pub message: String,
}

/// What the outbox relay publishes through: the gRPC delivery to each consumer, or a Kafka
/// producer.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + fmt::Debug + 'static {
    /// Publishes `envelope`; `Ok` only once its consumer replied (gRPC) or the broker
    /// acknowledged it to every in-sync replica (Kafka, `acks=all`). Bounded in time.
    ///
    /// # Errors
    /// [`PublishError`] classified by what it proves.
    async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError>;
}

/// A failed handling of a consumed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The event can never be handled (undecodable, unknown type or schema version, refused
    /// definitely by the domain): it goes to the dead-letter topic with this reason.
    #[error("poison: {0}")]
    Poison(String),
    /// Handling failed for a reason that may pass (a database outage): the event is tried again.
    #[error("transient: {0}")]
    Transient(String),
}

/// What a consumer runs for each event: applies its effect and its inbox row in one local
/// transaction (a redelivery finds the inbox row and changes nothing).
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + fmt::Debug + 'static {
    /// Handles `envelope`. `Ok` also for a redelivery that changed nothing.
    ///
    /// # Errors
    /// [`HandleError`]: poison (dead-lettered) or transient (retried).
    async fn handle(&self, envelope: Envelope) -> Result<(), HandleError>;
}

/// Which transport carries events (`--event-bus`, `SAGAFLOW_EVENT_BUS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EventBus {
    /// The relay calls each consumer's delivery RPC (the embedded default; no broker).
    #[default]
    Grpc,
    /// Apache Kafka (or a Kafka-protocol broker) at these bootstrap servers (`host:port`, …).
    Kafka {
        /// Comma-separated `host:port` list, as librdkafka's `bootstrap.servers` takes it.
        brokers: String,
    },
}

impl std::str::FromStr for EventBus {
    type Err = String;

    /// `grpc`, or `kafka://host:port[,host:port…]`.
    fn from_str(value: &str) -> Result<Self, String> {
        if value == "grpc" {
            return Ok(Self::Grpc);
        }
        let Some(rest) = value.strip_prefix("kafka://") else {
            return Err(format!(
                "event bus {value:?}: expected `grpc` or `kafka://host:port[,host:port]`"
            ));
        };
        let hosts: Vec<&str> = rest.split(',').map(str::trim).collect();
        for host in &hosts {
            let valid = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err(format!("event bus {value:?}: {host:?} is not `host:port`"));
            }
        }
        Ok(Self::Kafka {
            brokers: hosts.join(","),
        })
    }
}

impl fmt::Display for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Grpc => f.write_str("grpc"),
            Self::Kafka { brokers } => write!(f, "kafka://{brokers}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bus_parses_grpc_and_kafka_lists() {
        assert_eq!("grpc".parse::<EventBus>(), Ok(EventBus::Grpc));
        assert_eq!(
            "kafka://127.0.0.1:9092, b2:9093".parse::<EventBus>(),
            Ok(EventBus::Kafka {
                brokers: "127.0.0.1:9092,b2:9093".into()
            })
        );
        for bad in ["kafka://", "kafka://host", "kafka://h:0", "nats://h:1", ""] {
            assert!(bad.parse::<EventBus>().is_err(), "{bad}");
        }
        let bus: EventBus = "kafka://h:1".parse().unwrap_or_default();
        assert_eq!(bus.to_string(), "kafka://h:1");
    }

    #[test]
    fn topics_are_versioned_per_family() {
        assert_eq!(Family::Order.topic(), "sagaflow.order.events.v1");
        assert_eq!(
            Family::of_topic("sagaflow.inventory.events.v1"),
            Some(Family::Inventory)
        );
        assert_eq!(Family::of_topic("sagaflow.order.events.v2"), None);
    }
}
