//! The Apache Kafka transport (docs/architecture.md, "Events" → "Kafka transport"): any
//! Kafka-protocol broker, through rdkafka (bundled librdkafka).
//!
//! In order of use:
//! - [`ensure_topics`]: creates the topics (one per [`Family`], plus [`DEAD_LETTER_TOPIC`]);
//! - [`KafkaPublisher`]: the outbox relay's [`crate::Publisher`]: an idempotent producer,
//!   `acks=all`, key = aggregate id, value = payload, the envelope's fields as headers
//!   ([`HEADER_EVENT_ID`] …); `publish` returns once the broker acknowledged, or a classified
//!   [`crate::PublishError`] ([`classify`]) within a bounded time;
//! - [`KafkaConsumer`]: a consumer-group member that turns each record back into an
//!   [`Envelope`] ([`envelope_from_record`]), runs the [`crate::EventHandler`] (different keys
//!   concurrently, one key in order) and commits a partition's offset only past records whose
//!   handler returned `Ok` or that were dead-lettered.
//!
//! ```text
//!  relay ─▶ KafkaPublisher ─▶ topic sagaflow.<family>.events.v1 (key = aggregate id)
//!                                   │
//!         KafkaConsumer (group) ◀───┘ ─▶ lane per key ─▶ EventHandler ─▶ Ok: offset committable
//!                                                                    ├▶ Poison: sagaflow.dead-letter.v1
//!                                                                    └▶ Transient: retried (backoff)
//! ```
//!
//! Every header value is UTF-8 text: the schema version and the sequence in decimal.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use crate::{Envelope, Family, SCHEMA_VERSION};

mod consumer;
mod publisher;

pub use consumer::{ConsumerError, KafkaConsumer, KafkaConsumerConfig};
pub use publisher::{KafkaPublisher, KafkaPublisherConfig, classify};

/// Where poison records go: value = the original bytes, key = the original key, the original
/// headers plus [`HEADER_DEAD_LETTER_REASON`], [`HEADER_ORIGINAL_TOPIC`],
/// [`HEADER_ORIGINAL_PARTITION`] and [`HEADER_ORIGINAL_OFFSET`].
pub const DEAD_LETTER_TOPIC: &str = "sagaflow.dead-letter.v1";

/// Header: the event's id (UUID text), the consumer's inbox key.
pub const HEADER_EVENT_ID: &str = "event-id";
/// Header: the event's type name (`OrderCreated` …).
pub const HEADER_EVENT_TYPE: &str = "event-type";
/// Header: the payload's schema version, decimal (`1`).
pub const HEADER_SCHEMA_VERSION: &str = "schema-version";
/// Header: the W3C `traceparent` of the span that wrote the event; absent when tracing was off.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Header: the event's sequence within its aggregate, decimal (1, 2, …).
pub const HEADER_SEQUENCE: &str = "sequence";
/// Dead-letter header: why the record could not be handled.
pub const HEADER_DEAD_LETTER_REASON: &str = "dead-letter-reason";
/// Dead-letter header: the topic the record was consumed from.
pub const HEADER_ORIGINAL_TOPIC: &str = "original-topic";
/// Dead-letter header: its partition, decimal.
pub const HEADER_ORIGINAL_PARTITION: &str = "original-partition";
/// Dead-letter header: its offset, decimal.
pub const HEADER_ORIGINAL_OFFSET: &str = "original-offset";

/// Records published and acknowledged (counter; label `topic`).
pub const PUBLISHED: &str = "sagaflow_kafka_published_total";
/// Publications that failed (counter; labels `topic`, `kind`: refused, not_delivered, in_doubt).
pub const PUBLISH_FAILURES: &str = "sagaflow_kafka_publish_failures_total";
/// Producers replaced after a fatal idempotence error (counter; see [`KafkaPublisher`]).
pub const PRODUCER_RENEWALS: &str = "sagaflow_kafka_producer_renewals_total";
/// Records received by a consumer (counter; label `topic`), redeliveries included.
pub const CONSUMED: &str = "sagaflow_kafka_consumed_total";
/// Records whose handler returned `Ok` (counter; label `topic`).
pub const HANDLED: &str = "sagaflow_kafka_handled_total";
/// Records written to [`DEAD_LETTER_TOPIC`] (counter; label `topic`, the original topic).
pub const DEAD_LETTERED: &str = "sagaflow_kafka_dead_lettered_total";
/// Handler failures (counter; labels `topic`, `kind`: transient or poison; an undecodable record
/// counts as poison).
pub const HANDLER_FAILURES: &str = "sagaflow_kafka_handler_failures_total";
/// Records between a partition's committed offset and its end, from librdkafka's statistics
/// (gauge; labels `topic`, `partition`; sampled every `statistics_interval_ms`).
pub const CONSUMER_LAG: &str = "sagaflow_kafka_consumer_lag";

/// Label: the topic.
pub const LABEL_TOPIC: &str = "topic";
/// Label: what kind of failure.
pub const LABEL_KIND: &str = "kind";
/// Label: the partition.
pub const LABEL_PARTITION: &str = "partition";

/// Registers the help text of the Kafka transport's metrics with the installed recorder (call
/// once after installing it).
pub fn describe_metrics() {
    describe_counter!(
        PUBLISHED,
        Unit::Count,
        "Records published to Kafka and acknowledged."
    );
    describe_counter!(
        PUBLISH_FAILURES,
        Unit::Count,
        "Kafka publications that failed, by kind."
    );
    describe_counter!(
        CONSUMED,
        Unit::Count,
        "Kafka records received by consumers."
    );
    describe_counter!(HANDLED, Unit::Count, "Kafka records handled (handler Ok).");
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Kafka records written to the dead-letter topic."
    );
    describe_counter!(
        HANDLER_FAILURES,
        Unit::Count,
        "Kafka event handler failures, by kind (transient, poison)."
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Records between a partition's committed offset and its end."
    );
}

/// The headers a published record carries for `envelope`, in order: `event-id`, `event-type`,
/// `schema-version`, `sequence`, and `traceparent` when present.
pub fn headers_of(envelope: &Envelope) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (HEADER_EVENT_ID, envelope.event_id.clone()),
        (HEADER_EVENT_TYPE, envelope.event_type.clone()),
        (HEADER_SCHEMA_VERSION, envelope.schema_version.to_string()),
        (HEADER_SEQUENCE, envelope.sequence.to_string()),
    ];
    if let Some(traceparent) = &envelope.traceparent {
        headers.push((HEADER_TRACEPARENT, traceparent.clone()));
    }
    headers
}

/// The schema versions a consumer of this build can read.
pub const KNOWN_SCHEMA_VERSIONS: &[u32] = &[SCHEMA_VERSION];

/// Rebuilds the [`Envelope`] of a consumed record from its topic, key, headers and value.
///
/// # Errors
/// The poison reason (the record goes to the dead-letter topic): a topic of no [`Family`], a
/// missing or non-UTF-8 key, a missing, repeated-and-different or non-UTF-8 `event-id`,
/// `event-type`, `schema-version` or `sequence` header, an empty event id or type, a schema
/// version not in [`KNOWN_SCHEMA_VERSIONS`], a sequence that is not a positive integer, a
/// non-UTF-8 `traceparent`.
pub fn envelope_from_record<'a>(
    topic: &str,
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    payload: Option<&[u8]>,
) -> Result<Envelope, String> {
    let family = Family::of_topic(topic).ok_or_else(|| format!("unknown topic {topic:?}"))?;
    let aggregate_id = match key {
        None => return Err("no key (aggregate id)".to_owned()),
        Some(key) => std::str::from_utf8(key)
            .map_err(|_| "key (aggregate id) is not UTF-8".to_owned())?
            .to_owned(),
    };
    let mut event_id = None;
    let mut event_type = None;
    let mut schema_version = None;
    let mut sequence = None;
    let mut traceparent = None;
    for (name, value) in headers {
        let slot = match name {
            HEADER_EVENT_ID => &mut event_id,
            HEADER_EVENT_TYPE => &mut event_type,
            HEADER_SCHEMA_VERSION => &mut schema_version,
            HEADER_SEQUENCE => &mut sequence,
            HEADER_TRACEPARENT => &mut traceparent,
            _ => continue,
        };
        let value = std::str::from_utf8(value.unwrap_or_default())
            .map_err(|_| format!("header {name} is not UTF-8"))?
            .to_owned();
        if slot.as_ref().is_some_and(|v| *v != value) {
            return Err(format!("header {name} repeated with different values"));
        }
        *slot = Some(value);
    }
    let required = |value: Option<String>, name: &str| match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("missing header {name}")),
    };
    let event_id = required(event_id, HEADER_EVENT_ID)?;
    let event_type = required(event_type, HEADER_EVENT_TYPE)?;
    let schema_version = required(schema_version, HEADER_SCHEMA_VERSION)?;
    let schema_version: u32 = schema_version.parse().map_err(|_| {
        format!("header {HEADER_SCHEMA_VERSION} {schema_version:?} is not a number")
    })?;
    if !KNOWN_SCHEMA_VERSIONS.contains(&schema_version) {
        return Err(format!("unknown schema version {schema_version}"));
    }
    let sequence = required(sequence, HEADER_SEQUENCE)?;
    let sequence: i64 = match sequence.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(format!(
                "header {HEADER_SEQUENCE} {sequence:?} is not a positive integer"
            ));
        }
    };
    Ok(Envelope {
        family,
        event_id,
        event_type,
        schema_version,
        aggregate_id,
        sequence,
        payload: payload.unwrap_or_default().to_vec(),
        traceparent: traceparent.filter(|t| !t.is_empty()),
    })
}

/// A failure to set up a Kafka client or its topics.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// librdkafka refused the configuration or could not create the client.
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    /// Subscribing to the topics failed.
    #[error("kafka subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The CreateTopics request failed as a whole (no broker answered in time, …).
    #[error("kafka create topics: {0}")]
    CreateTopics(#[source] KafkaError),
    /// The broker refused to create one topic (other than because it exists).
    #[error("kafka create topic {topic}: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

/// Every topic of the system with `partitions` partitions each: one per [`Family`], then
/// [`DEAD_LETTER_TOPIC`] (one partition: it is read by people, rarely). What the CLI and
/// `compose.yaml` create.
pub fn all_topics(partitions: i32) -> Vec<(&'static str, i32)> {
    Family::ALL
        .into_iter()
        .map(|f| (f.topic(), partitions))
        .chain([(DEAD_LETTER_TOPIC, 1)])
        .collect()
}

/// How long [`ensure_topics`] waits for the broker, milliseconds.
pub const ENSURE_TOPICS_TIMEOUT_MS: u64 = 15_000;

/// Creates each `(topic, partitions)` with replication factor 1 (one broker: `compose.yaml`, the
/// tests), doing nothing for a topic that exists already (whatever its partition count).
///
/// # Errors
/// [`SetupError::Client`] for a bad broker list, [`SetupError::CreateTopics`] when no broker
/// answered within [`ENSURE_TOPICS_TIMEOUT_MS`], [`SetupError::CreateTopic`] when the broker
/// refused a topic for another reason than `TopicAlreadyExists`.
pub async fn ensure_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), SetupError> {
    ensure_topics_replicated(brokers, topics, 1).await
}

/// [`ensure_topics`] with a replication factor (a cluster of at least `replication` brokers).
///
/// # Errors
/// As [`ensure_topics`].
pub async fn ensure_topics_replicated(
    brokers: &str,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<(), SetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(SetupError::Client)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let timeout = Duration::from_millis(ENSURE_TOPICS_TIMEOUT_MS);
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(SetupError::CreateTopics)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(SetupError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// A new, empty librdkafka configuration, made on a thread of its own.
///
/// `ClientConfig::new` asks the `log` facade whether `librdkafka` logs are enabled, to pick
/// librdkafka's log level. Through the tracing bridge that is a `Subscriber::enabled` call with
/// no event after it, which leaves the per-layer filter state of the calling thread set
/// (tracing-subscriber's per-layer filters): with a `RUST_LOG` that has a target directive
/// (`info,sqlx=debug`), the next events of that thread, the process's own INFO lines among them,
/// were dropped. On a thread that ends at once, that state goes with it.
pub(crate) fn client_config() -> ClientConfig {
    std::thread::scope(|scope| scope.spawn(ClientConfig::new).join())
        .unwrap_or_else(|_| ClientConfig::new())
}

/// The client settings every producer of this module uses (publisher and dead-letter writer):
/// idempotent (`enable.idempotence=true`, which librdkafka requires with `acks=all` and at most 5
/// requests in flight per connection, so order per partition holds across its retries) and a
/// bounded `message.timeout.ms`.
fn producer_client_config(config: &KafkaPublisherConfig) -> ClientConfig {
    let mut client = client_config();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "max.in.flight.requests.per.connection",
            config.max_in_flight.clamp(1, 5).to_string(),
        )
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("linger.ms", config.linger_ms.to_string());
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            family: Family::Order,
            event_id: "0190c6d2-0000-7000-8000-000000000001".into(),
            event_type: "OrderCreated".into(),
            schema_version: SCHEMA_VERSION,
            aggregate_id: "order-1".into(),
            sequence: 3,
            payload: vec![1, 2, 3],
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
    }

    fn parse(headers: &[(&'static str, String)], key: Option<&str>) -> Result<Envelope, String> {
        envelope_from_record(
            Family::Order.topic(),
            key.map(str::as_bytes),
            headers.iter().map(|(n, v)| (*n, Some(v.as_bytes()))),
            Some(&[1, 2, 3]),
        )
    }

    #[test]
    fn all_topics_are_the_families_and_the_dead_letters() {
        assert_eq!(
            all_topics(6),
            vec![
                ("sagaflow.order.events.v1", 6),
                ("sagaflow.inventory.events.v1", 6),
                ("sagaflow.dead-letter.v1", 1),
            ]
        );
    }

    #[test]
    fn headers_round_trip() {
        let e = envelope();
        assert_eq!(parse(&headers_of(&e), Some("order-1")), Ok(e.clone()));
        let untraced = Envelope {
            traceparent: None,
            ..e
        };
        let headers = headers_of(&untraced);
        assert!(headers.iter().all(|(n, _)| *n != HEADER_TRACEPARENT));
        assert_eq!(parse(&headers, Some("order-1")), Ok(untraced));
    }

    #[test]
    fn bad_records_are_poison_with_a_reason() {
        let good = headers_of(&envelope());
        let without = |name: &str| -> Vec<(&'static str, String)> {
            good.iter().filter(|(n, _)| *n != name).cloned().collect()
        };
        let with = |name: &'static str, value: &str| -> Vec<(&'static str, String)> {
            let mut h = without(name);
            h.push((name, value.to_owned()));
            h
        };
        for (headers, key, reason) in [
            (good.clone(), None, "no key"),
            (
                without(HEADER_EVENT_ID),
                Some("o"),
                "missing header event-id",
            ),
            (
                without(HEADER_EVENT_TYPE),
                Some("o"),
                "missing header event-type",
            ),
            (
                without(HEADER_SEQUENCE),
                Some("o"),
                "missing header sequence",
            ),
            (
                without(HEADER_SCHEMA_VERSION),
                Some("o"),
                "missing header schema-version",
            ),
            (
                with(HEADER_EVENT_ID, ""),
                Some("o"),
                "missing header event-id",
            ),
            (
                with(HEADER_SCHEMA_VERSION, "2"),
                Some("o"),
                "unknown schema version 2",
            ),
            (with(HEADER_SCHEMA_VERSION, "v1"), Some("o"), "not a number"),
            (
                with(HEADER_SEQUENCE, "0"),
                Some("o"),
                "not a positive integer",
            ),
            (
                with(HEADER_SEQUENCE, "x"),
                Some("o"),
                "not a positive integer",
            ),
        ] {
            let err = parse(&headers, key).expect_err(reason);
            assert!(err.contains(reason), "{err:?} should say {reason:?}");
        }
        let err = envelope_from_record("other.topic", Some(b"k"), Vec::new(), None)
            .expect_err("unknown topic");
        assert!(err.contains("unknown topic"), "{err}");
        let err = envelope_from_record(
            Family::Order.topic(),
            Some(&[0xff, 0xfe]),
            good.iter().map(|(n, v)| (*n, Some(v.as_bytes()))),
            None,
        )
        .expect_err("non-UTF-8 key");
        assert!(err.contains("not UTF-8"), "{err}");
        let mut repeated = good.clone();
        repeated.push((HEADER_EVENT_ID, "other".into()));
        assert!(parse(&repeated, Some("o")).is_err());
    }
}
