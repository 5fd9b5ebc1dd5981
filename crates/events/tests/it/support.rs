//! Test support: an inbox-keeping handler, envelopes, consumers run as tasks, a raw topic reader,
//! and a counting metrics recorder.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{Consumer as _, StreamConsumer},
    message::OwnedMessage,
};
use sagaflow_events::{
    Envelope, EventHandler, Family, HandleError, SCHEMA_VERSION,
    kafka::{KafkaConsumer, KafkaConsumerConfig, KafkaPublisher, KafkaPublisherConfig},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A bound for every wait of these tests: group joins take a few seconds against Tansu.
pub(crate) const WITHIN: Duration = Duration::from_secs(60);

pub(crate) fn envelope(family: Family, aggregate: &str, sequence: i64) -> Envelope {
    Envelope {
        family,
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: "OrderCreated".into(),
        schema_version: SCHEMA_VERSION,
        aggregate_id: aggregate.into(),
        sequence,
        payload: format!("{aggregate}#{sequence}").into_bytes(),
        traceparent: Some(format!(
            "00-{}-{}-01",
            uuid::Uuid::new_v4().simple(),
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        )),
    }
}

pub(crate) fn publisher(brokers: &str) -> KafkaPublisher {
    KafkaPublisher::new(KafkaPublisherConfig::new(brokers)).unwrap()
}

pub(crate) fn consumer_config(brokers: &str, group: &str, topics: &[&str]) -> KafkaConsumerConfig {
    let mut config = KafkaConsumerConfig::new(brokers, group, topics);
    config.session_timeout_ms = 6_000;
    config.retry_initial_backoff_ms = 20;
    config.retry_max_backoff_ms = 200;
    config.commit_interval_ms = 50;
    config.statistics_interval_ms = 0;
    config
}

/// A consumer running as a task until its token is cancelled.
pub(crate) struct Running {
    pub(crate) token: CancellationToken,
    pub(crate) task: JoinHandle<()>,
}

impl Running {
    /// Cancels it and waits (bounded) for `run` to return.
    pub(crate) async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the consumer stops within 20 s of its shutdown")
            .expect("the consumer task");
    }
}

pub(crate) fn spawn_consumer<H: EventHandler>(
    config: KafkaConsumerConfig,
    handler: Arc<H>,
) -> Running {
    let consumer = KafkaConsumer::new(config, handler).unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let token = token.clone();
        async move { consumer.run(token).await.expect("consumer run") }
    });
    Running { token, task }
}

/// What the consumers applied: the inbox (event id → first application), per aggregate the
/// sequences in the order first applied, and how many deliveries the inbox dropped.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    applied: Mutex<HashMap<String, Envelope>>,
    order: Mutex<HashMap<String, Vec<i64>>>,
    pub(crate) duplicates: AtomicUsize,
}

impl Inbox {
    /// Applies `envelope` once; false for a redelivery.
    fn apply(&self, envelope: &Envelope) -> bool {
        let mut applied = self.applied.lock().unwrap();
        if applied.contains_key(&envelope.event_id) {
            self.duplicates.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        applied.insert(envelope.event_id.clone(), envelope.clone());
        self.order
            .lock()
            .unwrap()
            .entry(envelope.aggregate_id.clone())
            .or_default()
            .push(envelope.sequence);
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.applied.lock().unwrap().len()
    }

    pub(crate) fn contains(&self, event_id: &str) -> bool {
        self.applied.lock().unwrap().contains_key(event_id)
    }

    pub(crate) fn get(&self, event_id: &str) -> Option<Envelope> {
        self.applied.lock().unwrap().get(event_id).cloned()
    }

    pub(crate) fn order(&self) -> HashMap<String, Vec<i64>> {
        self.order.lock().unwrap().clone()
    }
}

/// A handler over an [`Inbox`] with scripted failures.
#[derive(Debug, Default)]
pub(crate) struct TestHandler {
    pub(crate) inbox: Arc<Inbox>,
    /// Event ids refused as poison.
    pub(crate) poison: HashSet<String>,
    /// Event ids that fail transiently while listed.
    pub(crate) failing: Mutex<HashSet<String>>,
    /// Every call, in order (this handler only).
    pub(crate) calls: Mutex<Vec<Envelope>>,
    /// Handler calls that returned Ok (this handler only).
    pub(crate) handled: AtomicUsize,
    /// Sleep up to this many ms (by sequence) inside the handler, so calls overlap.
    pub(crate) delay_ms: u64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) max_in_flight: AtomicUsize,
}

impl TestHandler {
    pub(crate) fn with_inbox(inbox: Arc<Inbox>) -> Self {
        Self {
            inbox,
            ..Self::default()
        }
    }

    pub(crate) fn calls_of(&self, event_id: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.event_id == event_id)
            .count()
    }

    pub(crate) fn called_ids(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl EventHandler for TestHandler {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandleError> {
        self.calls.lock().unwrap().push(envelope.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if self.delay_ms > 0 {
            let ms = (envelope.sequence as u64 * 7) % (self.delay_ms + 1);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let result = if self.poison.contains(&envelope.event_id) {
            Err(HandleError::Poison("refused by the domain".into()))
        } else if self.failing.lock().unwrap().contains(&envelope.event_id) {
            Err(HandleError::Transient("database unavailable".into()))
        } else {
            self.inbox.apply(&envelope);
            self.handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// Reads `count` records of partition 0 of `topic` from the beginning (no group commits).
pub(crate) async fn read_topic(brokers: &str, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&list).unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while records.len() < count {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out reading {topic}: {} of {count} records",
                    records.len()
                )
            })
            .unwrap();
        records.push(message.detach());
    }
    records
}

/// Counters of a process-wide recorder, by name and labels (`name{k=v,…}`).
#[derive(Debug, Default)]
pub(crate) struct CountingRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Gauges: f64 bits.
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl CountingRecorder {
    /// The recorder of this test process (installed on first use).
    pub(crate) fn global() -> &'static CountingRecorder {
        static RECORDER: OnceLock<&'static CountingRecorder> = OnceLock::new();
        RECORDER.get_or_init(|| {
            let recorder: &'static CountingRecorder = Box::leak(Box::default());
            metrics::set_global_recorder(recorder).expect("no other recorder in this test binary");
            recorder
        })
    }

    /// The sum of the counters named `name` whose labels include `label`.
    pub(crate) fn counter(&self, name: &str, label: (&str, &str)) -> u64 {
        Self::sum(&self.counters, name, label)
    }

    /// The value of the gauge `name{labels}` (labels in their order of declaration), if set.
    pub(crate) fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let key = format!("{name}{{{}}}", labels.join(","));
        self.gauges
            .lock()
            .unwrap()
            .get(&key)
            .map(|v| f64::from_bits(v.load(Ordering::SeqCst)))
    }

    fn sum(cells: &Mutex<HashMap<String, Arc<AtomicU64>>>, name: &str, label: (&str, &str)) -> u64 {
        let wanted = format!("{}={}", label.0, label.1);
        cells
            .lock()
            .unwrap()
            .iter()
            .filter(|(key, _)| {
                key.split_once('{').is_some_and(|(n, labels)| {
                    n == name && labels.trim_end_matches('}').split(',').any(|l| l == wanted)
                })
            })
            .map(|(_, v)| v.load(Ordering::SeqCst))
            .sum()
    }
}

impl CountingRecorder {
    fn name(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = Arc::clone(
            self.counters
                .lock()
                .unwrap()
                .entry(Self::name(key))
                .or_default(),
        );
        Counter::from_arc(cell)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = Arc::clone(
            self.gauges
                .lock()
                .unwrap()
                .entry(Self::name(key))
                .or_default(),
        );
        Gauge::from_arc(cell)
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// One line of a [`FileInboxHandler`]'s inbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InboxLine {
    pub(crate) event_id: String,
    pub(crate) aggregate: String,
    pub(crate) sequence: i64,
    pub(crate) member: String,
}

/// Reads an inbox file (lines `event-id aggregate sequence member`).
pub(crate) fn read_inbox_file(path: &std::path::Path) -> Vec<InboxLine> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            InboxLine {
                event_id: parts[0].to_owned(),
                aggregate: parts[1].to_owned(),
                sequence: parts[2].parse().unwrap(),
                member: parts[3].to_owned(),
            }
        })
        .collect()
}

/// A handler whose inbox is a file shared by processes: under an exclusive file lock it applies
/// an event (appends its line) unless its id is there already, so "the effect and the inbox row
/// commit together" holds across a SIGKILL, as a database transaction would make it.
#[derive(Debug)]
pub(crate) struct FileInboxHandler {
    pub(crate) path: std::path::PathBuf,
    pub(crate) member: String,
    pub(crate) applied: AtomicUsize,
    pub(crate) duplicates: AtomicUsize,
}

impl FileInboxHandler {
    pub(crate) fn new(path: std::path::PathBuf, member: &str) -> Self {
        Self {
            path,
            member: member.to_owned(),
            applied: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
        }
    }

    fn apply(&self, envelope: &Envelope) -> std::io::Result<bool> {
        use std::io::{Read as _, Write as _};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)?;
        file.lock()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let seen = text
            .lines()
            .any(|l| l.split(' ').next() == Some(envelope.event_id.as_str()));
        if !seen {
            file.write_all(
                format!(
                    "{} {} {} {}\n",
                    envelope.event_id, envelope.aggregate_id, envelope.sequence, self.member
                )
                .as_bytes(),
            )?;
        }
        file.unlock()?;
        Ok(!seen)
    }
}

#[async_trait::async_trait]
impl EventHandler for FileInboxHandler {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandleError> {
        match self.apply(&envelope) {
            Ok(true) => self.applied.fetch_add(1, Ordering::SeqCst),
            Ok(false) => self.duplicates.fetch_add(1, Ordering::SeqCst),
            Err(e) => return Err(HandleError::Transient(e.to_string())),
        };
        Ok(())
    }
}
