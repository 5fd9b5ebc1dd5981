//! [`KafkaConsumer`]: one member of a consumer group that runs an [`EventHandler`] for every
//! record, at least once, committing offsets only past what was handled.
//!
//! ```text
//!  recv ─▶ envelope_from_record ─▶ lane (topic, partition, key): FIFO ─▶ ≤ handler_concurrency
//!    │        (Err = poison)          one record of a lane at a time       worker tasks
//!    │                                                                         │
//!    └─ Tracker: per partition, offsets received and not finished ◀── finished ┘
//!         commit every commit_interval_ms: min(unfinished) or (last received + 1)
//!         revoke (rebalance): commit that synchronously, forget the partition
//! ```
//!
//! Offsets are committed manually (`enable.auto.commit=false`): records of different keys finish
//! out of order, so the offset to commit is the partition's lowest unfinished one, computed here.
//! librdkafka's own auto-commit of stored offsets (`enable.auto.offset.store=false` plus
//! `store_offset` after each record) was rejected: storing a later record's offset while an
//! earlier one of another key is still being retried would commit past it, and a revoke needs a
//! synchronous commit of exactly what is done, which the rebalance callback does here.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fmt,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::FutureExt as _;
use metrics::{counter, gauge};
use rdkafka::{
    ClientContext, Message as _, Offset, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    message::{Header, Headers as _, OwnedHeaders, OwnedMessage},
};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    CONSUMED, CONSUMER_LAG, DEAD_LETTER_TOPIC, DEAD_LETTERED, HANDLED, HANDLER_FAILURES,
    HEADER_DEAD_LETTER_REASON, HEADER_ORIGINAL_OFFSET, HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TOPIC, KafkaPublisher, KafkaPublisherConfig, LABEL_KIND, LABEL_PARTITION,
    LABEL_TOPIC, SetupError, envelope_from_record,
};
use crate::{Envelope, EventHandler, HandleError};

/// How a [`KafkaConsumer`] joins its group and runs its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConsumerConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The consumer group (`group.id`): members share the partitions.
    pub group_id: String,
    /// The topics to subscribe to (each a [`crate::Family::topic`]; a record of any other topic
    /// is poison).
    pub topics: Vec<String>,
    /// librdkafka's `client.id`.
    pub client_id: String,
    /// `session.timeout.ms`: how long the group waits for a silent member before it gives its
    /// partitions to others (milliseconds, default 10000; tests use 6000). The heartbeat
    /// interval is a third of it.
    pub session_timeout_ms: u64,
    /// Records handled at once, of different keys (default 16; at least 1).
    pub handler_concurrency: usize,
    /// Records received and not finished above which fetching pauses (default 1000); it resumes
    /// at half.
    pub max_buffered: usize,
    /// First wait before a record whose handler failed transiently (or whose dead-lettering
    /// failed) is tried again (milliseconds, default 100); doubled per failure up to
    /// [`Self::retry_max_backoff_ms`].
    pub retry_initial_backoff_ms: u64,
    /// Cap of that wait (milliseconds, default 5000).
    pub retry_max_backoff_ms: u64,
    /// How often finished offsets are committed (asynchronously; milliseconds, default 200).
    /// A revoke and the shutdown commit synchronously.
    pub commit_interval_ms: u64,
    /// librdkafka statistics interval, the source of [`super::CONSUMER_LAG`] (milliseconds,
    /// default 5000; 0 turns them off).
    pub statistics_interval_ms: u64,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch that has no new record
    /// (milliseconds, default 20). librdkafka's own default, 500, adds up to half a second to
    /// each hop of a saga's events when the topic is quiet.
    pub fetch_wait_max_ms: u64,
    /// Where poison records go (default [`DEAD_LETTER_TOPIC`]).
    pub dead_letter_topic: String,
    /// `message.timeout.ms` of the dead-letter producer (milliseconds, default 5000).
    pub dead_letter_timeout_ms: u64,
}

impl KafkaConsumerConfig {
    /// The defaults for `brokers`, `group_id` and `topics`; client id = group id.
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>, topics: &[&str]) -> Self {
        let group_id = group_id.into();
        Self {
            brokers: brokers.into(),
            client_id: group_id.clone(),
            group_id,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            session_timeout_ms: 10_000,
            handler_concurrency: 16,
            max_buffered: 1_000,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 5_000,
            commit_interval_ms: 200,
            statistics_interval_ms: 5_000,
            fetch_wait_max_ms: 20,
            dead_letter_topic: DEAD_LETTER_TOPIC.to_owned(),
            dead_letter_timeout_ms: 5_000,
        }
    }
}

/// Why [`KafkaConsumer::run`] stopped before its shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// librdkafka reported a fatal consumer error: this client cannot go on (build a new one).
    #[error("kafka consumer: fatal: {0}")]
    Fatal(#[source] KafkaError),
}

/// A partition: (topic, partition).
type Tp = (String, i32);

/// Per-partition progress, shared between the run loop and the rebalance callback.
#[derive(Debug, Default)]
struct Tracker {
    partitions: HashMap<Tp, PartitionState>,
    next_epoch: u64,
}

#[derive(Debug)]
struct PartitionState {
    /// Changes when the partition is revoked and assigned again: work of an older epoch is
    /// no longer ours to commit.
    epoch: u64,
    /// The offset after the highest received.
    next: i64,
    /// Received and not finished (queued or being handled).
    unfinished: BTreeSet<i64>,
    /// The last offset committed (or sent in an asynchronous commit); -1 none.
    committed: i64,
}

impl PartitionState {
    fn committable(&self) -> i64 {
        self.unfinished.first().copied().unwrap_or(self.next)
    }
}

impl Tracker {
    fn received(&mut self, tp: &Tp, offset: i64) -> u64 {
        let next_epoch = &mut self.next_epoch;
        let state = self.partitions.entry(tp.clone()).or_insert_with(|| {
            *next_epoch += 1;
            PartitionState {
                epoch: *next_epoch,
                next: offset,
                unfinished: BTreeSet::new(),
                committed: -1,
            }
        });
        state.unfinished.insert(offset);
        state.next = state.next.max(offset + 1);
        state.epoch
    }

    fn is_current(&self, tp: &Tp, epoch: u64) -> bool {
        self.partitions.get(tp).is_some_and(|s| s.epoch == epoch)
    }

    /// Marks `offset` finished; false when the partition was revoked since.
    fn finished(&mut self, tp: &Tp, epoch: u64, offset: i64) -> bool {
        match self.partitions.get_mut(tp) {
            Some(state) if state.epoch == epoch => {
                state.unfinished.remove(&offset);
                true
            }
            _ => false,
        }
    }

    /// Offsets to commit: each partition's committable offset, only where it moved past the last
    /// commit unless `all`.
    fn to_commit(&self, all: bool) -> Vec<(Tp, i64)> {
        self.partitions
            .iter()
            .map(|(tp, s)| (tp, s.committable(), s.committed))
            .filter(|(_, offset, committed)| *offset >= 0 && (all || offset > committed))
            .map(|(tp, offset, _)| (tp.clone(), offset))
            .collect()
    }

    fn committed(&mut self, offsets: &[(Tp, i64)]) {
        for (tp, offset) in offsets {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.committed = state.committed.max(*offset);
            }
        }
    }

    /// Forgets `tps` and returns what to commit for them.
    fn revoke(&mut self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        tps.iter()
            .filter_map(|tp| {
                self.partitions
                    .remove(tp)
                    .map(|s| (tp.clone(), s.committable()))
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shared {
    tracker: Mutex<Tracker>,
    /// Fetching is paused (too many records buffered): a new assignment is paused too.
    paused: AtomicBool,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        // A panic while holding the lock left no half-made change (each method is one step).
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn partition_list(offsets: &[(Tp, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(%topic, partition, offset, %error, "kafka: offset not committable");
        }
    }
    list
}

/// The consumer's librdkafka context: commits a revoked partition's finished offsets in the
/// rebalance callback, and turns statistics into the lag gauge.
struct GroupContext {
    shared: Arc<Shared>,
    group: String,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    gauge!(CONSUMER_LAG, LABEL_TOPIC => topic.clone(), LABEL_PARTITION => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let tps: Vec<Tp> = list
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                // TODO-design: handlers still running for these partitions are not waited for
                // (this callback runs inside the loop's `recv`); their records are redelivered to
                // the next owner, which may handle one while this member still does. The
                // handler's inbox (one transaction with the effect) makes that safe; a bounded
                // wait here would only save redeliveries.
                let offsets = self.shared.tracker().revoke(&tps);
                tracing::info!(group = %self.group, ?tps, ?offsets, "kafka: partitions revoked");
                if !offsets.is_empty()
                    && let Err(error) = base.commit(&partition_list(&offsets), CommitMode::Sync)
                {
                    // Not fatal: the next owner starts at the last commit that did land and
                    // redelivers the rest (at least once; the inbox drops duplicates).
                    tracing::warn!(group = %self.group, %error, "kafka: commit at revoke failed");
                }
            }
            Rebalance::Assign(list) => {
                let tps: Vec<Tp> = list
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                tracing::info!(group = %self.group, ?tps, "kafka: partitions assigned");
            }
            Rebalance::Error(error) => {
                tracing::warn!(group = %self.group, %error, "kafka: rebalance error");
            }
        }
    }

    fn post_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance
            && self.shared.paused.load(Ordering::SeqCst)
            && let Err(error) = base.pause(list)
        {
            tracing::warn!(group = %self.group, %error, "kafka: pause of new assignment failed");
        }
    }
}

/// A consumer-group member running an [`EventHandler`] (docs/architecture.md, "Kafka
/// transport"): at least once, different keys concurrently, one key strictly in order, poison to
/// the dead-letter topic, transient failures retried with capped backoff.
pub struct KafkaConsumer {
    consumer: StreamConsumer<GroupContext>,
    shared: Arc<Shared>,
    worker: Arc<Worker>,
    config: KafkaConsumerConfig,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What each worker task needs.
#[derive(Debug)]
struct Worker {
    handler: Arc<dyn EventHandler>,
    dead_letters: KafkaPublisher,
    dead_letter_topic: String,
    shared: Arc<Shared>,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// One received record.
#[derive(Debug)]
struct Item {
    tp: Tp,
    epoch: u64,
    offset: i64,
    message: OwnedMessage,
    envelope: Result<Envelope, String>,
}

/// A key's records in order: at most one of them is being handled.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Item>,
    busy: bool,
    in_ready: bool,
}

/// (topic, partition, key).
type LaneKey = (String, i32, Option<Vec<u8>>);

#[derive(Debug)]
enum Outcome {
    /// Handled, or written to the dead-letter topic: the offset may be committed.
    Done,
    /// Given up by shutdown or revoke: not committed, redelivered to the next owner.
    Abandoned,
}

#[derive(Debug)]
struct Finished {
    tp: Tp,
    epoch: u64,
    offset: i64,
    outcome: Outcome,
}

impl KafkaConsumer {
    /// Creates the consumer and subscribes to `config.topics`; it joins the group when
    /// [`Self::run`] polls.
    ///
    /// # Errors
    /// [`SetupError::Client`] for a configuration librdkafka refuses (also of the dead-letter
    /// producer), [`SetupError::Subscribe`] when subscribing fails.
    pub fn new(
        config: KafkaConsumerConfig,
        handler: Arc<dyn EventHandler>,
    ) -> Result<Self, SetupError> {
        let shared = Arc::new(Shared::default());
        let session = config.session_timeout_ms.max(1);
        let consumer: StreamConsumer<GroupContext> = super::client_config()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("client.id", &config.client_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(1).to_string())
            .set(
                "statistics.interval.ms",
                config.statistics_interval_ms.to_string(),
            )
            .create_with_context(GroupContext {
                shared: Arc::clone(&shared),
                group: config.group_id.clone(),
            })
            .map_err(SetupError::Client)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| SetupError::Subscribe {
                topics: config.topics.clone(),
                source,
            })?;
        let mut dead_letter_config = KafkaPublisherConfig::new(config.brokers.clone());
        dead_letter_config.client_id = format!("{}-dead-letter", config.client_id);
        dead_letter_config.message_timeout_ms = config.dead_letter_timeout_ms;
        let worker = Arc::new(Worker {
            handler,
            dead_letters: KafkaPublisher::new(dead_letter_config)?,
            dead_letter_topic: config.dead_letter_topic.clone(),
            shared: Arc::clone(&shared),
            initial_backoff: Duration::from_millis(config.retry_initial_backoff_ms.max(1)),
            max_backoff: Duration::from_millis(config.retry_max_backoff_ms.max(1)),
        });
        Ok(Self {
            consumer,
            shared,
            worker,
            config,
        })
    }

    /// Consumes until `shutdown` is cancelled, then lets running handlers finish (a retry's wait
    /// is cut short), commits what finished synchronously and leaves the group.
    ///
    /// # Errors
    /// [`ConsumerError::Fatal`] on a fatal librdkafka consumer error (after the same drain).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        // The workers' token: cancelled when the loop ends for any reason, without cancelling
        // the caller's.
        let stop = shutdown.child_token();
        let concurrency = self.config.handler_concurrency.max(1);
        let max_buffered = self.config.max_buffered.max(1);
        let mut lanes: HashMap<LaneKey, Lane> = HashMap::new();
        let mut ready: VecDeque<LaneKey> = VecDeque::new();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut running_lanes: HashMap<Id, LaneKey> = HashMap::new();
        let mut buffered = 0usize;
        let mut dirty = false;
        let mut commit_tick =
            tokio::time::interval(Duration::from_millis(self.config.commit_interval_ms.max(1)));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let result = loop {
            self.schedule(
                concurrency,
                &mut lanes,
                &mut ready,
                &mut running,
                &mut running_lanes,
                &mut buffered,
                &stop,
            );
            self.backpressure(buffered, max_buffered);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    dirty |= self.finish(joined, &mut lanes, &mut ready, &mut running_lanes, &mut buffered);
                }
                _ = commit_tick.tick() => {
                    if dirty {
                        self.commit(CommitMode::Async, false);
                        dirty = false;
                    }
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let message = message.detach();
                        let item = self.item(message);
                        let key = (item.tp.0.clone(), item.tp.1, item.message.key().map(<[u8]>::to_vec));
                        let lane = lanes.entry(key.clone()).or_default();
                        lane.queue.push_back(item);
                        buffered += 1;
                        if !lane.busy && !lane.in_ready {
                            lane.in_ready = true;
                            ready.push_back(key);
                        }
                    }
                    Err(KafkaError::MessageConsumptionFatal(code)) => {
                        break Err(ConsumerError::Fatal(KafkaError::MessageConsumptionFatal(code)));
                    }
                    Err(error) => {
                        // Transport errors and the like: librdkafka reconnects by itself.
                        tracing::warn!(group = %self.config.group_id, %error, "kafka: consumer error");
                    }
                },
            }
        };

        // Drain: queued records stay unfinished (not committed); running ones finish or give up
        // at their next wait (the token is cancelled, or the loop stopped on a fatal error).
        stop.cancel();
        while let Some(joined) = running.join_next_with_id().await {
            self.finish(
                joined,
                &mut lanes,
                &mut ready,
                &mut running_lanes,
                &mut buffered,
            );
        }
        self.commit(CommitMode::Sync, true);
        tracing::info!(group = %self.config.group_id, "kafka: consumer stopped");
        // Closing leaves the group (its revoke callback commits again, harmlessly); it blocks on
        // the broker, so it runs off the async workers.
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        result
    }

    fn item(&self, message: OwnedMessage) -> Item {
        let tp = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        counter!(CONSUMED, LABEL_TOPIC => tp.0.clone()).increment(1);
        let envelope = envelope_from_record(
            &tp.0,
            message.key(),
            message
                .headers()
                .into_iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value)),
            message.payload(),
        );
        let epoch = self.shared.tracker().received(&tp, offset);
        Item {
            tp,
            epoch,
            offset,
            message,
            envelope,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn schedule(
        &self,
        concurrency: usize,
        lanes: &mut HashMap<LaneKey, Lane>,
        ready: &mut VecDeque<LaneKey>,
        running: &mut JoinSet<Finished>,
        running_lanes: &mut HashMap<Id, LaneKey>,
        buffered: &mut usize,
        shutdown: &CancellationToken,
    ) {
        while running.len() < concurrency {
            let Some(key) = ready.pop_front() else { return };
            let Some(lane) = lanes.get_mut(&key) else {
                continue;
            };
            lane.in_ready = false;
            let mut next = None;
            while let Some(item) = lane.queue.pop_front() {
                if self.shared.tracker().is_current(&item.tp, item.epoch) {
                    next = Some(item);
                    break;
                }
                // Received before a revoke: no longer ours; the next owner redelivers it.
                *buffered -= 1;
            }
            match next {
                Some(item) => {
                    lane.busy = true;
                    let worker = Arc::clone(&self.worker);
                    let shutdown = shutdown.clone();
                    let handle = running.spawn(async move { worker.process(item, shutdown).await });
                    running_lanes.insert(handle.id(), key);
                }
                None => {
                    lanes.remove(&key);
                }
            }
        }
    }

    /// Books a finished worker; true when an offset became committable.
    fn finish(
        &self,
        joined: Result<(Id, Finished), tokio::task::JoinError>,
        lanes: &mut HashMap<LaneKey, Lane>,
        ready: &mut VecDeque<LaneKey>,
        running_lanes: &mut HashMap<Id, LaneKey>,
        buffered: &mut usize,
    ) -> bool {
        *buffered = buffered.saturating_sub(1);
        let (id, committable) = match joined {
            Ok((id, finished)) => {
                let committable = matches!(finished.outcome, Outcome::Done)
                    && self.shared.tracker().finished(
                        &finished.tp,
                        finished.epoch,
                        finished.offset,
                    );
                (id, committable)
            }
            Err(error) => {
                // The worker catches the handler's panics, so this is the runtime shutting
                // down: the record stays unfinished, never committed.
                tracing::error!(%error, "kafka: consumer worker failed");
                (error.id(), false)
            }
        };
        if let Some(key) = running_lanes.remove(&id)
            && let Some(lane) = lanes.get_mut(&key)
        {
            lane.busy = false;
            if lane.queue.is_empty() {
                lanes.remove(&key);
            } else if !lane.in_ready {
                lane.in_ready = true;
                ready.push_back(key);
            }
        }
        committable
    }

    fn backpressure(&self, buffered: usize, max_buffered: usize) {
        let paused = self.shared.paused.load(Ordering::SeqCst);
        let pause = if paused {
            buffered > max_buffered / 2
        } else {
            buffered >= max_buffered
        };
        if pause == paused {
            return;
        }
        let result = self.consumer.assignment().and_then(|assignment| {
            if pause {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            }
        });
        match result {
            Ok(()) => self.shared.paused.store(pause, Ordering::SeqCst),
            Err(error) => tracing::warn!(%error, pause, "kafka: pause/resume failed"),
        }
    }

    fn commit(&self, mode: CommitMode, all: bool) {
        let offsets = self.shared.tracker().to_commit(all);
        if offsets.is_empty() {
            return;
        }
        match self.consumer.commit(&partition_list(&offsets), mode) {
            Ok(()) => self.shared.tracker().committed(&offsets),
            Err(error) => {
                tracing::warn!(group = %self.config.group_id, %error, "kafka: offset commit failed");
            }
        }
    }
}

impl Worker {
    async fn process(&self, item: Item, shutdown: CancellationToken) -> Finished {
        let outcome = self.outcome(&item, &shutdown).await;
        Finished {
            tp: item.tp,
            epoch: item.epoch,
            offset: item.offset,
            outcome,
        }
    }

    async fn outcome(&self, item: &Item, shutdown: &CancellationToken) -> Outcome {
        let topic = item.tp.0.as_str();
        let mut backoff = self.initial_backoff;
        let reason = match &item.envelope {
            Err(reason) => reason.clone(),
            Ok(envelope) => loop {
                let handled = AssertUnwindSafe(self.handler.handle(envelope.clone()))
                    .catch_unwind()
                    .await;
                let failure = match handled {
                    Ok(Ok(())) => {
                        counter!(HANDLED, LABEL_TOPIC => topic.to_owned()).increment(1);
                        tracing::debug!(
                            %topic, partition = item.tp.1, offset = item.offset,
                            event_id = %envelope.event_id, "kafka: record handled"
                        );
                        // The crash tests' point: the handler's effect is committed, the offset
                        // is not (a crash here redelivers the record to the next owner).
                        fail::fail_point!("kafka_consumer_after_handle");
                        return Outcome::Done;
                    }
                    Ok(Err(HandleError::Poison(reason))) => break reason,
                    Ok(Err(HandleError::Transient(message))) => message,
                    Err(_panic) => "the handler panicked".to_owned(),
                };
                counter!(HANDLER_FAILURES, LABEL_TOPIC => topic.to_owned(), LABEL_KIND => "transient")
                    .increment(1);
                tracing::warn!(
                    %topic, partition = item.tp.1, offset = item.offset,
                    event_id = %envelope.event_id, error = %failure, retry_in = ?backoff,
                    "kafka: handler failed, retrying"
                );
                if !self.wait(&mut backoff, item, shutdown).await {
                    return Outcome::Abandoned;
                }
            },
        };
        counter!(HANDLER_FAILURES, LABEL_TOPIC => topic.to_owned(), LABEL_KIND => "poison")
            .increment(1);
        let mut backoff = self.initial_backoff;
        loop {
            match self.dead_letter(item, &reason).await {
                Ok(()) => {
                    counter!(DEAD_LETTERED, LABEL_TOPIC => topic.to_owned()).increment(1);
                    tracing::warn!(
                        %topic, partition = item.tp.1, offset = item.offset, %reason,
                        "kafka: record dead-lettered"
                    );
                    return Outcome::Done;
                }
                Err(error) => {
                    tracing::warn!(%topic, offset = item.offset, %error, "kafka: dead-lettering failed, retrying");
                    if !self.wait(&mut backoff, item, shutdown).await {
                        return Outcome::Abandoned;
                    }
                }
            }
        }
    }

    /// Waits `backoff` (then doubles it, capped); false when shutdown or a revoke came first.
    async fn wait(
        &self,
        backoff: &mut Duration,
        item: &Item,
        shutdown: &CancellationToken,
    ) -> bool {
        let delay = *backoff;
        *backoff = (*backoff * 2).min(self.max_backoff);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => self.shared.tracker().is_current(&item.tp, item.epoch),
        }
    }

    async fn dead_letter(&self, item: &Item, reason: &str) -> Result<(), crate::PublishError> {
        let message = &item.message;
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let partition = item.tp.1.to_string();
        let offset = item.offset.to_string();
        for (name, value) in [
            (HEADER_DEAD_LETTER_REASON, reason),
            (HEADER_ORIGINAL_TOPIC, item.tp.0.as_str()),
            (HEADER_ORIGINAL_PARTITION, partition.as_str()),
            (HEADER_ORIGINAL_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        self.dead_letters
            .send(
                &self.dead_letter_topic,
                message.key(),
                message.payload(),
                headers,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_owned(), p)
    }

    #[test]
    fn commits_stop_at_the_lowest_unfinished_offset() {
        let mut t = Tracker::default();
        let e = t.received(&tp(0), 10);
        for offset in 11..15 {
            assert_eq!(t.received(&tp(0), offset), e);
        }
        assert_eq!(t.to_commit(false), vec![(tp(0), 10)]);
        assert!(t.finished(&tp(0), e, 12));
        assert!(t.finished(&tp(0), e, 13));
        assert_eq!(
            t.to_commit(false),
            vec![(tp(0), 10)],
            "10 is still unfinished"
        );
        t.committed(&[(tp(0), 10)]);
        assert!(t.to_commit(false).is_empty());
        assert!(t.finished(&tp(0), e, 10));
        assert_eq!(t.to_commit(false), vec![(tp(0), 11)]);
        assert!(t.finished(&tp(0), e, 11));
        assert!(t.finished(&tp(0), e, 14));
        assert_eq!(t.to_commit(false), vec![(tp(0), 15)]);
    }

    #[test]
    fn a_revoke_commits_what_finished_and_fences_older_work() {
        let mut t = Tracker::default();
        let e = t.received(&tp(1), 0);
        t.received(&tp(1), 1);
        assert!(t.finished(&tp(1), e, 1));
        assert_eq!(t.revoke(&[tp(1), tp(2)]), vec![(tp(1), 0)]);
        assert!(!t.is_current(&tp(1), e));
        assert!(
            !t.finished(&tp(1), e, 0),
            "work of a revoked epoch is not ours"
        );
        let e2 = t.received(&tp(1), 0);
        assert_ne!(e, e2);
        assert!(t.is_current(&tp(1), e2));
    }
}
