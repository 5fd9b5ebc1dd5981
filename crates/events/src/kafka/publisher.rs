//! [`KafkaPublisher`]: the outbox relay's publisher over Kafka, and [`classify`], what each
//! producer error proves about its record.

use std::{
    fmt,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use metrics::counter;
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
    types::RDKafkaErrorCode,
    util::Timeout,
};

use super::{
    LABEL_KIND, LABEL_TOPIC, PRODUCER_RENEWALS, PUBLISH_FAILURES, PUBLISHED, SetupError, headers_of,
};
use crate::{Envelope, FailureKind, PublishError, Publisher};

/// How a [`KafkaPublisher`] reaches the broker and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaPublisherConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// librdkafka's `client.id` (shows in the broker's logs and quotas).
    pub client_id: String,
    /// `message.timeout.ms`: how long librdkafka tries to get one record acknowledged before it
    /// fails it (milliseconds, default 5000). A `publish` returns within about twice this (the
    /// wait for room in a full local queue, then the delivery).
    pub message_timeout_ms: u64,
    /// `max.in.flight.requests.per.connection`, 1–5 (default 5): the idempotent producer keeps
    /// order per partition up to 5.
    pub max_in_flight: u32,
    /// `linger.ms`: how long a record waits to be batched with others (milliseconds, default 5).
    pub linger_ms: u64,
}

impl KafkaPublisherConfig {
    /// The defaults for `brokers`: client id `sagaflow`, 5000 ms message timeout, 5 in flight,
    /// 5 ms linger.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: "sagaflow".to_owned(),
            message_timeout_ms: 5_000,
            max_in_flight: 5,
            linger_ms: 5,
        }
    }
}

/// Publishes envelopes to their family's topic ([`crate::Family::topic`]): key = aggregate id,
/// value = payload, headers from [`headers_of`]. Idempotent producer with `acks=all`
/// (docs/architecture.md, "Kafka transport"): `Ok` only once every in-sync replica has the
/// record; the broker drops the duplicates of librdkafka's own retries.
///
/// Per-aggregate order: one aggregate's records go to one partition (same key), and the relay
/// publishes an aggregate's next event only after the previous one returned `Ok`.
///
/// Renewal: an idempotent producer whose state the broker no longer accepts (a fatal librdkafka
/// error, or `ProducerFenced`, `InvalidProducerEpoch`, `UnknownProducerId`,
/// `OutOfOrderSequenceNumber` — seen after a broker stopped long enough for records to time out:
/// librdkafka bumps its epoch and Tansu fences it) never recovers; the failing `publish` returns
/// in doubt and the next one uses a new producer (a new producer id). Order still holds: the
/// relay's next attempt for the aggregate starts after this one returned.
pub struct KafkaPublisher {
    producer: RwLock<Arc<FutureProducer>>,
    config: KafkaPublisherConfig,
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A producer for `config`. It connects lazily: a broker that is down shows at the first
    /// `publish`.
    ///
    /// # Errors
    /// [`SetupError::Client`] when librdkafka refuses the configuration.
    pub fn new(config: KafkaPublisherConfig) -> Result<Self, SetupError> {
        let producer = super::producer_client_config(&config)
            .create()
            .map_err(SetupError::Client)?;
        Ok(Self {
            producer: RwLock::new(Arc::new(producer)),
            config,
        })
    }

    fn producer(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces `failed` by a new producer (unless another call did already).
    fn renew(&self, failed: &Arc<FutureProducer>) {
        let fresh = match super::producer_client_config(&self.config).create() {
            Ok(fresh) => Arc::new(fresh),
            Err(error) => {
                tracing::error!(%error, "kafka: cannot create a new producer");
                return;
            }
        };
        let old = {
            let mut current = self
                .producer
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if !Arc::ptr_eq(&current, failed) {
                return;
            }
            std::mem::replace(&mut *current, fresh)
        };
        counter!(PRODUCER_RENEWALS).increment(1);
        tracing::warn!(client_id = %self.config.client_id, "kafka: producer renewed after a fatal error");
        // Dropping a producer purges and flushes for up to 500 ms: not on an async worker. Not
        // joined: nothing waits for it and it cannot fail (a drop).
        drop(tokio::task::spawn_blocking(move || drop(old)));
    }

    /// Sends one record and waits for the broker's acknowledgement, bounded in time.
    pub(super) async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), PublishError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        let message_timeout = Duration::from_millis(self.config.message_timeout_ms);
        // The send waits up to `message_timeout` for room in librdkafka's queue, then for the
        // delivery report (librdkafka fails the record after `message.timeout.ms`); the outer
        // bound is a guard against a report that never comes.
        let bound = message_timeout * 2 + Duration::from_secs(1);
        let producer = self.producer();
        let result = tokio::time::timeout(
            bound,
            producer.send(record, Timeout::After(message_timeout)),
        )
        .await;
        let error = match result {
            Ok(Ok(_delivery)) => {
                counter!(PUBLISHED, LABEL_TOPIC => topic.to_owned()).increment(1);
                return Ok(());
            }
            Ok(Err((error, _record))) => {
                if needs_new_producer(&error) || producer.client().fatal_error().is_some() {
                    self.renew(&producer);
                }
                PublishError {
                    kind: classify(&error),
                    message: format!("kafka publish to {topic}: {error}"),
                }
            }
            Err(_elapsed) => PublishError {
                kind: FailureKind::InDoubt,
                message: format!("kafka publish to {topic}: no acknowledgement within {bound:?}"),
            },
        };
        counter!(PUBLISH_FAILURES, LABEL_TOPIC => topic.to_owned(), LABEL_KIND => kind_label(error.kind))
            .increment(1);
        Err(error)
    }
}

#[async_trait::async_trait]
impl Publisher for KafkaPublisher {
    /// Publishes `envelope` to `envelope.family.topic()` and waits for `acks=all`; returns within
    /// about `2 × message_timeout_ms` (+1 s).
    ///
    /// # Errors
    /// [`PublishError`] classified by [`classify`]; no acknowledgement in time is
    /// [`FailureKind::InDoubt`].
    async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let mut headers = OwnedHeaders::new();
        for (name, value) in headers_of(envelope) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_str()),
            });
        }
        self.send(
            envelope.family.topic(),
            Some(envelope.aggregate_id.as_bytes()),
            Some(&envelope.payload),
            headers,
        )
        .await
    }
}

/// Errors after which the idempotent producer's id or epoch is no longer accepted.
fn needs_new_producer(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error,
        KafkaError::MessageProduction(
            C::Fatal
                | C::Fenced
                | C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber
        )
    )
}

fn kind_label(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Refused => "refused",
        FailureKind::NotDelivered => "not_delivered",
        FailureKind::InDoubt => "in_doubt",
    }
}

/// What a producer error proves about its record (docs/architecture.md, "Kafka transport"):
///
/// - [`FailureKind::Refused`]: a record the broker or librdkafka will never take, whatever the
///   attempt — too large (`MessageSizeTooLarge`, `InvalidMessageSize`, `MessageBatchTooLarge`),
///   invalid (`InvalidMessage` i.e. CORRUPT_MESSAGE, `InvalidRecord`, `InvalidTimestamp`,
///   `InvalidTopic`, `UnsupportedForMessageFormat`, `PolicyViolation`, `InvalidRequiredAcks`,
///   librdkafka's `BadMessage`, `InvalidArgument`);
/// - [`FailureKind::NotDelivered`]: it provably never reached a broker's log — the local queue
///   stayed full (`QueueFull`), the topic or partition is unknown (`UnknownTopic`,
///   `UnknownPartition`, `UnknownTopicOrPartition`: not created yet), authorization refused
///   (`TopicAuthorizationFailed`, `ClusterAuthorizationFailed`);
/// - [`FailureKind::InDoubt`]: everything else — `MessageTimedOut` (the broker may have written
///   it and the acknowledgement was lost), transport failures, all brokers down, request
///   timeouts, `NotEnoughReplicas` (librdkafka retries it, and an earlier attempt may have been
///   written), fatal idempotence errors (`ProducerFenced` …), a dropped producer
///   (`Canceled`), and any code not listed here. Retrying an in-doubt record is safe: the
///   consumer's inbox drops a duplicate.
pub fn classify(error: &KafkaError) -> FailureKind {
    use RDKafkaErrorCode as C;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return FailureKind::InDoubt,
    };
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::InvalidTopic
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation
        | C::InvalidRequiredAcks
        | C::BadMessage
        | C::InvalidArgument => FailureKind::Refused,
        C::QueueFull
        | C::UnknownTopic
        | C::UnknownPartition
        | C::UnknownTopicOrPartition
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed => FailureKind::NotDelivered,
        _ => FailureKind::InDoubt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_producer_errors() {
        use RDKafkaErrorCode as C;
        let produce = KafkaError::MessageProduction;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidMessageSize,
            C::MessageBatchTooLarge,
            C::InvalidMessage,
            C::InvalidRecord,
            C::InvalidTimestamp,
            C::InvalidTopic,
            C::UnsupportedForMessageFormat,
            C::PolicyViolation,
            C::InvalidRequiredAcks,
            C::BadMessage,
            C::InvalidArgument,
        ] {
            assert_eq!(classify(&produce(code)), FailureKind::Refused, "{code:?}");
        }
        for code in [
            C::QueueFull,
            C::UnknownTopic,
            C::UnknownPartition,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
        ] {
            assert_eq!(
                classify(&produce(code)),
                FailureKind::NotDelivered,
                "{code:?}"
            );
        }
        for code in [
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::RequestTimedOut,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::Fatal,
            C::OutOfOrderSequenceNumber,
            C::Unknown,
            C::NotLeaderForPartition,
            C::ProducerFenced,
        ] {
            assert_eq!(classify(&produce(code)), FailureKind::InDoubt, "{code:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), FailureKind::InDoubt);
        assert!(needs_new_producer(&produce(C::ProducerFenced)));
        assert!(needs_new_producer(&produce(C::Fatal)));
        assert!(!needs_new_producer(&produce(C::MessageTimedOut)));
        assert_eq!(
            classify(&KafkaError::Flush(C::MessageSizeTooLarge)),
            FailureKind::InDoubt
        );
    }
}
