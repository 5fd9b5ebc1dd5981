//! The outbox relay (docs/architecture.md, "Events"): publishes a service's outbox events at
//! least once, in order per aggregate, through a [`Publisher`], and marks them sent once the
//! publisher said so (the consumer replied, or the broker acknowledged). One relay for every
//! service with an outbox (Order, Inventory); what differs is the [`OutboxSchema`] and the
//! publisher: the gRPC delivery of the embedded default (each service maps its event types to
//! consumer RPCs: OrderCreated → `OrchestratorService/StartOrderSaga`, …) or Kafka.
//!
//! It tries right after a commit that wrote an event (the service calls [`RelayWaker::wake`]) and
//! polls for anything missed (a crash between commit and delivery, a consumer that was down).
//! Within one round, events of different orders are delivered concurrently; an order whose event
//! failed gets none of its later events delivered in that round, which keeps per-order order.
//!
//! ```text
//!  commit(order + outbox row) ─▶ wake ─▶ pending(due batch) ─▶ deliver (≤ DELIVERY_CONCURRENCY)
//!                                   ▲                         │ ok: mark_sent
//!          poll every interval, or when the next retry is due │ failed: retry_later (backoff)
//!                                                             │   or dead_letter_refused
//! ```
//!
//! Failures (docs/architecture.md, "Events"): a failed delivery is retried after a capped
//! exponential backoff with full jitter ([`RetryPolicy`]); rows waiting for their retry are not
//! read, so they never hold up other orders. Each failure is classified ([`classify`]): a
//! definite refusal by the consumer's handler, a request that provably never reached a handler,
//! or an attempt **in doubt** (it may have had its effect). An event is dead-lettered only after
//! [`RetryPolicy::max_attempts`] failures none of which was in doubt, the last one a refusal; for
//! an OrderCreated its order is then failed (reason INTERNAL) in the same transaction, which is
//! safe because no saga can exist for it. An event in doubt is retried for as long as it fails:
//! StartOrderSaga and RecordOrderCompleted are idempotent on the order and event ids, so a
//! retry is always safe, while failing an order whose saga may be running is not.
//!
//! Retention: delivered rows older than the window ([`OutboxRelay::with_sent_retention`], default
//! [`DEFAULT_SENT_RETENTION`]) are deleted in bounded batches, at most once per
//! [`PRUNE_INTERVAL`], counted in [`PRUNED`].
//!
//! Tracing (docs/operations.md, "Watching"): each delivery runs in an `outbox.deliver` span whose
//! parent is the `traceparent` stored with the event (the handler that wrote it), and the call
//! carries that span's context (traced channels), so OrderCreated → StartOrderSaga → the order
//! saga's steps stay in the PlaceOrder trace, however late the delivery.
//!
//! Metrics (only when a recorder is installed): [`DELIVERED`] and [`DELIVERY_FAILURES`] by event
//! type, [`outbox::DEAD_LETTERED`] by event type, [`PRUNED`], and — when
//! [`OutboxRelay::with_backlog_sampling`] asks for it — the backlog gauges [`PENDING`] and
//! [`OLDEST_PENDING_AGE`], sampled with one query at most once per interval.

use std::{collections::HashMap, sync::Arc, time::Duration};

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
pub use sagaflow_events::FailureKind;
use sagaflow_events::{PublishError, Publisher};
use sagaflow_telemetry::{propagation, semconv};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Code, metadata::MetadataValue};
use tracing::{Instrument as _, field::Empty};

use crate::{
    Db,
    db::now_ms,
    error::error_reason,
    outbox::{self, DeadLettered, OutboxEvent, OutboxSchema},
};

mod handoff;

/// Events delivered and marked sent (counter; label `event_type`). An event without a gRPC
/// consumer (OrderFailed) counts when marked sent.
pub const DELIVERED: &str = "sagaflow_outbox_delivered_total";
/// Deliveries that failed (counter; label `event_type`): retried later or dead-lettered.
pub const DELIVERY_FAILURES: &str = "sagaflow_outbox_delivery_failures_total";
/// Delivered outbox rows deleted after the retention window (counter).
pub const PRUNED: &str = "sagaflow_outbox_pruned_total";
/// Undelivered outbox events at the last sample (gauge; label `family`: `order`, `inventory`).
pub const PENDING: &str = "sagaflow_outbox_pending";
/// Age of the oldest undelivered event at the last sample, seconds; 0 when none (gauge; label
/// `family`).
pub const OLDEST_PENDING_AGE: &str = "sagaflow_outbox_oldest_pending_age_seconds";
/// The label of the relay's counters.
pub const LABEL_EVENT_TYPE: &str = "event_type";
/// The label of the relay's gauges: the outbox's family ([`sagaflow_events::Family::name`]).
pub const LABEL_FAMILY: &str = "family";

/// Registers the help text of the relay's metrics with the installed recorder (call once after
/// installing it).
pub fn describe_metrics() {
    describe_counter!(
        DELIVERED,
        Unit::Count,
        "Outbox events delivered and marked sent."
    );
    describe_counter!(
        DELIVERY_FAILURES,
        Unit::Count,
        "Outbox deliveries that failed (retried later, or dead-lettered)."
    );
    describe_counter!(
        outbox::DEAD_LETTERED,
        Unit::Count,
        "Outbox events dead-lettered: undecodable, or refused on every attempt."
    );
    describe_counter!(
        PRUNED,
        Unit::Count,
        "Delivered outbox rows deleted after the retention window."
    );
    describe_gauge!(
        PENDING,
        Unit::Count,
        "Undelivered outbox events (sampled by the relay)."
    );
    describe_gauge!(
        OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest undelivered outbox event (sampled by the relay); 0 when none."
    );
}

/// Exports the relay's counters at zero for every event type of `schema`, so that the first
/// failure or dead letter after a start is an increase an alert rule can see.
pub fn initialize_metrics(schema: &dyn OutboxSchema) {
    for event_type in schema.event_types() {
        counter!(DELIVERED, LABEL_EVENT_TYPE => *event_type).increment(0);
        counter!(DELIVERY_FAILURES, LABEL_EVENT_TYPE => *event_type).increment(0);
        counter!(outbox::DEAD_LETTERED, LABEL_EVENT_TYPE => *event_type).increment(0);
    }
}

/// Events read per round.
pub const RELAY_BATCH: i64 = 256;
/// Deliveries in flight at once.
pub const DELIVERY_CONCURRENCY: usize = 64;
/// Per-delivery timeout (a gRPC call's deadline; a broker's acknowledgement is awaited as long),
/// enforced here as well; a delivery without a reply by then is in doubt.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// A sensible interval for [`OutboxRelay::with_backlog_sampling`] (what the CLI uses): 1 s.
pub const BACKLOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How long delivered rows are kept by default, milliseconds: 7 days.
pub const DEFAULT_SENT_RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// How long delivered rows are kept by default: 7 days ([`DEFAULT_SENT_RETENTION_MS`]).
pub const DEFAULT_SENT_RETENTION: Duration = Duration::from_millis(DEFAULT_SENT_RETENTION_MS);
/// [`RetryPolicy::max_attempts`] by default: 20.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;
/// How often the relay deletes delivered rows past the retention window: once a minute (and at
/// its start).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Rows deleted per statement when pruning.
pub const PRUNE_BATCH: i64 = 1_000;
/// Statements per pruning run, so that a long-neglected table is caught up over several runs
/// instead of holding up deliveries: at most `PRUNE_BATCH × PRUNE_MAX_BATCHES` rows a run.
pub const PRUNE_MAX_BATCHES: u32 = 10;
/// The shortest wait for a retry that is due (or almost): keeps a round of zero-delay retries
/// from spinning.
const MIN_RETRY_NAP: Duration = Duration::from_millis(5);

/// How failed deliveries are retried and when the relay gives up on an event
/// (docs/architecture.md, "Events").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts after which an event is dead-lettered, if none of them was in doubt and
    /// the last one was a definite refusal ([`FailureKind`]). Default 20; at least 1.
    pub max_attempts: u32,
    /// Delay cap after the first failure. Default 100 ms.
    pub base_delay: Duration,
    /// Largest delay cap: the cap doubles per failure up to this. Default 5 s, so that an event
    /// is delivered within seconds of its consumer coming back from an outage.
    pub max_delay: Duration,
    /// `true` (the default): each delay is uniform in `0..=cap` (full jitter), so that the events
    /// of one outage are not retried in lockstep. `false`: each delay is its cap (predictable
    /// spacing, for tests).
    pub full_jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            full_jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay cap after the `attempt`-th failed attempt (1, 2, …):
    /// `min(max_delay, base_delay · 2^(attempt − 1))`.
    pub fn cap(&self, attempt: i64) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 31)).unwrap_or(31);
        let factor = 1_u32 << doublings;
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay before the next attempt after the `attempt`-th failed one: `unit · cap` with
    /// full jitter (`unit` is clamped to `0..=1`), the cap without.
    pub fn delay(&self, attempt: i64, unit: f64) -> Duration {
        let cap = self.cap(attempt);
        if self.full_jitter {
            cap.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            cap
        }
    }
}

/// The ErrorInfo reason of ALREADY_EXISTS for a reused idempotency key: proof that an earlier
/// request was applied, not a refusal.
const REASON_IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// Classifies a failed gRPC delivery by its status (docs/architecture.md, "Attempts in doubt",
/// for the codes that prove a request never reached a handler):
///
/// - [`FailureKind::Refused`]: INVALID_ARGUMENT, or FAILED_PRECONDITION with an ErrorInfo reason
///   (other than `IDEMPOTENCY_KEY_REUSED`) — the consumer's handler refused it definitely;
/// - [`FailureKind::NotDelivered`]: a refused connection (UNAVAILABLE while connecting),
///   UNIMPLEMENTED (a proxy during a redeploy), UNAUTHENTICATED or PERMISSION_DENIED;
/// - [`FailureKind::InDoubt`]: anything else (UNAVAILABLE or INTERNAL from a server,
///   DEADLINE_EXCEEDED, a lost reply, a bare code from a proxy).
pub fn classify(status: &tonic::Status) -> FailureKind {
    match status.code() {
        Code::Unavailable if is_connect_error(status) => FailureKind::NotDelivered,
        Code::Unimplemented | Code::Unauthenticated | Code::PermissionDenied => {
            FailureKind::NotDelivered
        }
        Code::InvalidArgument => FailureKind::Refused,
        Code::FailedPrecondition
            if error_reason(status).is_some_and(|r| r != REASON_IDEMPOTENCY_KEY_REUSED) =>
        {
            FailureKind::Refused
        }
        _ => FailureKind::InDoubt,
    }
}

/// A failed gRPC delivery as the relay records it: [`classify`]d, the code and message kept.
pub fn publish_error(status: &tonic::Status) -> PublishError {
    PublishError {
        kind: classify(status),
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Whether the call failed while connecting (refused, reset or timed out before the request
/// was sent).
fn is_connect_error(status: &tonic::Status) -> bool {
    if status.message().contains("connect error") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if err.to_string().contains("connect error") {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether the relay gives up on an event after a failure of `kind` that makes `attempts`
/// failed attempts, `in_doubt` telling whether an earlier one was in doubt: only a refusal, and
/// only when no attempt was ever in doubt, after `max_attempts` (docs/architecture.md, "Events").
pub fn gives_up(attempts: i64, in_doubt: bool, kind: FailureKind, max_attempts: u32) -> bool {
    kind == FailureKind::Refused && !in_doubt && attempts >= i64::from(max_attempts.max(1))
}

/// Whether a failed delivery's `attempts`-th failure is logged at WARN: rate-limited to attempts
/// 1, 2, 4, 8, … (the count is in the line), DEBUG in between, so an event that keeps failing
/// does not fill the log (about 7 lines for an event failing 100 times).
fn warns_at(attempts: i64) -> bool {
    u64::try_from(attempts).is_ok_and(u64::is_power_of_two)
}

/// Wakes the relay after a commit that wrote an outbox row, or hands it the event itself
/// ([`RelayWaker::hand_over`]). Cloning is cheap; clones share the relay's hand-off queue and
/// the set of orders with a delivery in flight.
#[derive(Debug, Clone, Default)]
pub struct RelayWaker(Arc<handoff::Shared>);

impl RelayWaker {
    /// Asks the relay to run a round now (a wake-up while it is busy is kept for the next wait).
    pub fn wake(&self) {
        self.0.round.notify_one();
    }

    /// Hands `event`, the first event of its order, committed just now, to the relay's hand-off
    /// lane: delivered at once, concurrently with any round in flight, without reading it back
    /// (docs/architecture.md, "Events"). When the lane is full (or no relay runs) it is left to
    /// a round, as after [`RelayWaker::wake`]; the row is the truth either way.
    pub fn hand_over(&self, event: OutboxEvent) {
        if !self.0.push(event) {
            self.wake();
        }
    }
}

/// The relay. Run it with [`OutboxRelay::run`].
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    db: Db,
    schema: Arc<dyn OutboxSchema>,
    publisher: Arc<dyn Publisher>,
    waker: RelayWaker,
    poll_interval: Duration,
    backlog_every: Option<Duration>,
    retry: RetryPolicy,
    sent_retention: Option<Duration>,
}

impl OutboxRelay {
    /// A relay over the outbox of `db` (a service database with an `outbox` table), whose events
    /// `schema` describes, publishing through `publisher` (the service's gRPC delivery, or
    /// Kafka). `waker` is the one the service's command handlers wake. `poll_interval` bounds how
    /// long a missed event waits. Retries follow [`RetryPolicy::default`]; delivered rows are
    /// kept for [`DEFAULT_SENT_RETENTION`].
    pub fn new(
        db: Db,
        schema: Arc<dyn OutboxSchema>,
        publisher: Arc<dyn Publisher>,
        waker: RelayWaker,
        poll_interval: Duration,
    ) -> Self {
        Self {
            db,
            schema,
            publisher,
            waker,
            poll_interval,
            backlog_every: None,
            retry: RetryPolicy::default(),
            sent_retention: Some(DEFAULT_SENT_RETENTION),
        }
    }

    /// The same relay, sampling the outbox backlog into the [`PENDING`] and
    /// [`OLDEST_PENDING_AGE`] gauges at most once per `every` (one query; the relay runs at
    /// least once per poll interval). Off by default: the CLI turns it on with the metrics
    /// endpoint.
    pub fn with_backlog_sampling(mut self, every: Duration) -> Self {
        self.backlog_every = Some(every);
        self
    }

    /// The same relay, retrying failed deliveries by `policy` (a `max_attempts` of 0 counts as
    /// 1).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The same relay, deleting delivered rows once they were sent longer than `keep` ago
    /// (checked at the start and every [`PRUNE_INTERVAL`]); `None`: keep them forever.
    pub fn with_sent_retention(mut self, keep: Option<Duration>) -> Self {
        self.sent_retention = keep;
        self
    }

    /// Runs rounds until `shutdown` is cancelled: at once when woken, when the earliest retry
    /// this relay scheduled is due, every `poll_interval` otherwise, back to back while full
    /// batches keep coming.
    pub async fn run(self, shutdown: CancellationToken) {
        initialize_metrics(self.schema.as_ref());
        tracing::info!(
            family = self.schema.family().topic(),
            poll_ms = self.poll_interval.as_millis() as u64,
            max_attempts = self.retry.max_attempts,
            "outbox relay started"
        );
        let lane = tokio::spawn(self.clone().hand_off_lane(shutdown.clone()));
        let mut next_sample = Instant::now();
        let mut next_prune = Instant::now();
        // Unix ms of the earliest retry scheduled by this relay that may not have run yet.
        let mut next_retry: Option<i64> = None;
        loop {
            if let Some(every) = self.backlog_every
                && Instant::now() >= next_sample
            {
                self.sample_backlog().await;
                next_sample = Instant::now() + every;
            }
            if self.sent_retention.is_some() && Instant::now() >= next_prune {
                if let Err(err) = self.prune_sent().await {
                    tracing::warn!(error = %err, "pruning delivered outbox rows failed");
                }
                next_prune = Instant::now() + PRUNE_INTERVAL;
            }
            let started_ms = now_ms();
            let full = match self.deliver_round().await {
                Ok(round) => {
                    // Retries due before this round started were read by it (or are held
                    // back by an earlier event of their order, which has its own retry time).
                    next_retry = earliest(
                        earliest(
                            next_retry.filter(|at| *at > started_ms),
                            self.waker.0.take_retry_hint(),
                        ),
                        round.next_retry_at_ms,
                    );
                    round.read >= RELAY_BATCH as usize && round.unrecorded == 0
                }
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay round failed");
                    false
                }
            };
            if full {
                continue;
            }
            let nap = next_retry.map_or(self.poll_interval, |at| {
                let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                Duration::from_millis(wait)
                    .max(MIN_RETRY_NAP)
                    .min(self.poll_interval)
            });
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.waker.0.round.notified() => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
        if let Err(err) = lane.await {
            tracing::error!(%err, "the outbox relay's hand-off lane failed");
        }
        tracing::info!("outbox relay stopped");
    }

    /// Sets the backlog gauges from one query (a failure is logged and leaves them as they
    /// were).
    async fn sample_backlog(&self) {
        match outbox::backlog(&self.db).await {
            Ok(backlog) => {
                #[allow(
                    clippy::cast_precision_loss,
                    reason = "a gauge: counts and milliseconds far below 2^52"
                )]
                let (pending, age_seconds) = (
                    backlog.pending as f64,
                    backlog
                        .oldest_created_at_ms
                        .map_or(0.0, |at| (now_ms() - at).max(0) as f64 / 1000.0),
                );
                let family = self.schema.family().name();
                gauge!(PENDING, LABEL_FAMILY => family).set(pending);
                gauge!(OLDEST_PENDING_AGE, LABEL_FAMILY => family).set(age_seconds);
            }
            Err(err) => tracing::warn!(error = %err, "sampling the outbox backlog failed"),
        }
    }

    /// Deletes delivered rows sent before the retention window (nothing without one), at most
    /// [`PRUNE_MAX_BATCHES`] statements of [`PRUNE_BATCH`] rows, counting them in [`PRUNED`].
    /// Returns how many rows it deleted.
    ///
    /// # Errors
    /// The outbox's database error (the batches deleted before it stay deleted and counted).
    pub async fn prune_sent(&self) -> Result<u64, outbox::OutboxError> {
        let Some(keep) = self.sent_retention else {
            return Ok(0);
        };
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(keep_ms);
        let mut total = 0;
        for _ in 0..PRUNE_MAX_BATCHES {
            let deleted =
                outbox::prune_sent(&self.db, self.schema.as_ref(), cutoff, PRUNE_BATCH).await?;
            counter!(PRUNED).increment(deleted);
            total += deleted;
            if deleted < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
        if total > 0 {
            tracing::info!(
                deleted = total,
                keep_hours = keep.as_secs() / 3600,
                "delivered outbox rows pruned"
            );
        }
        Ok(total)
    }

    /// Reads one batch of due events, delivers it, marks the delivered ones sent and records the
    /// failures (a retry time, or a dead letter).
    ///
    /// # Errors
    /// The outbox's database error when reading the batch or marking it sent (deliveries that
    /// fail are counted, not errors; a failure that could not be recorded counts in
    /// [`Round::unrecorded`]).
    pub async fn deliver_round(&self) -> Result<Round, outbox::OutboxError> {
        let pending = outbox::pending(&self.db, self.schema.as_ref(), RELAY_BATCH).await?;
        let mut round = Round {
            read: pending.len(),
            ..Round::default()
        };
        if pending.is_empty() {
            return Ok(round);
        }
        // Group by order, keeping each order's events in sequence order. An order whose
        // delivery is in flight elsewhere (the hand-off lane) is left alone this round.
        let mut groups: Vec<Vec<OutboxEvent>> = Vec::new();
        let mut index = HashMap::new();
        let mut held = Vec::new();
        for event in pending {
            let slot = match index.get(&event.aggregate_id) {
                Some(slot) => *slot,
                None if held.contains(&event.aggregate_id) => continue,
                None if !self.waker.0.claim(&event.aggregate_id) => {
                    held.push(event.aggregate_id.clone());
                    continue;
                }
                None => {
                    groups.push(Vec::new());
                    index.insert(event.aggregate_id.clone(), groups.len() - 1);
                    groups.len() - 1
                }
            };
            groups[slot].push(event);
        }
        // Released when this round ends, however it ends.
        let _claimed = handoff::Claimed::new(&self.waker.0, index.into_keys().collect());
        let mut set = JoinSet::new();
        let mut delivered: Vec<(String, String)> = Vec::new();
        let mut groups = groups.into_iter();
        loop {
            while set.len() < DELIVERY_CONCURRENCY {
                let Some(group) = groups.next() else { break };
                let relay = self.clone();
                set.spawn(async move { relay.deliver_group(group).await });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            match joined {
                Ok(group) => {
                    delivered.extend(group.delivered);
                    if let Some(failure) = group.failure {
                        round.failed += 1;
                        match failure {
                            Failure::Retry { at_ms } => {
                                round.next_retry_at_ms =
                                    earliest(round.next_retry_at_ms, Some(at_ms));
                            }
                            Failure::DeadLettered => round.dead_lettered += 1,
                            Failure::Unrecorded => round.unrecorded += 1,
                        }
                    }
                }
                Err(join) => {
                    tracing::error!(%join, "an outbox delivery failed");
                    round.failed += 1;
                    round.unrecorded += 1;
                }
            }
        }
        round.delivered = delivered.len();
        if !delivered.is_empty() {
            let ids: Vec<String> = delivered.iter().map(|(id, _)| id.clone()).collect();
            outbox::mark_sent(&self.db, &ids).await?;
            for (_, event_type) in &delivered {
                counter!(DELIVERED, LABEL_EVENT_TYPE => event_type.clone()).increment(1);
            }
        }
        Ok(round)
    }

    /// Delivers one order's events in order, stopping at the first failure, which it records.
    async fn deliver_group(&self, group: Vec<OutboxEvent>) -> GroupResult {
        let mut delivered = Vec::with_capacity(group.len());
        for event in group {
            match self.deliver(&event).await {
                Ok(()) => delivered.push((event.event_id, event.event_type)),
                Err(error) => {
                    let failure = self.record_failure(&event, &error).await;
                    return GroupResult {
                        delivered,
                        failure: Some(failure),
                    };
                }
            }
        }
        GroupResult {
            delivered,
            failure: None,
        }
    }

    /// Records a failed delivery of `event` (docs/architecture.md, "Events"): dead-letters it
    /// when [`gives_up`] says so, schedules its next attempt otherwise.
    async fn record_failure(&self, event: &OutboxEvent, failed: &PublishError) -> Failure {
        counter!(DELIVERY_FAILURES, LABEL_EVENT_TYPE => event.event_type.clone()).increment(1);
        let kind = failed.kind;
        let attempts = event.attempts.saturating_add(1);
        let in_doubt = event.in_doubt || kind == FailureKind::InDoubt;
        let error = format!(
            "{} (attempt {attempts}, {})",
            failed.message,
            match kind {
                FailureKind::Refused => "refused by the consumer",
                FailureKind::NotDelivered => "never reached the consumer",
                FailureKind::InDoubt => "in doubt",
            }
        );
        if gives_up(attempts, event.in_doubt, kind, self.retry.max_attempts) {
            return match outbox::dead_letter_refused(&self.db, self.schema.as_ref(), event, &error)
                .await
            {
                Ok(DeadLettered::Unchanged) => Failure::Unrecorded,
                Ok(DeadLettered::Event | DeadLettered::EventAndOrder) => Failure::DeadLettered,
                Err(err) => {
                    tracing::warn!(
                        event_id = %event.event_id,
                        error = %err,
                        "dead-lettering an outbox event failed"
                    );
                    Failure::Unrecorded
                }
            };
        }
        let delay = self.retry.delay(attempts, rand::random::<f64>());
        let at_ms = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        if in_doubt && attempts == i64::from(self.retry.max_attempts.max(1)) {
            tracing::error!(
                event_id = %event.event_id,
                order_id = %event.aggregate_id,
                event_type = event.event_type.as_str(),
                attempts,
                "ALERT: outbox event keeps failing and may have reached its consumer; \
                 retried until it is delivered, never dead-lettered"
            );
        }
        if warns_at(attempts) {
            tracing::warn!(
                event_id = %event.event_id,
                order_id = %event.aggregate_id,
                event_type = event.event_type.as_str(),
                error = %failed.message,
                attempts,
                in_doubt,
                retry_in_ms = delay.as_millis() as u64,
                "outbox delivery failed; will retry (logged at attempts 1, 2, 4, 8, …)"
            );
        } else {
            tracing::debug!(
                event_id = %event.event_id,
                event_type = event.event_type.as_str(),
                error = %failed.message,
                attempts,
                retry_in_ms = delay.as_millis() as u64,
                "outbox delivery failed; will retry"
            );
        }
        match outbox::retry_later(&self.db, event, in_doubt, at_ms, &error).await {
            Ok(true) => Failure::Retry { at_ms },
            Ok(false) => Failure::Unrecorded,
            Err(err) => {
                tracing::warn!(
                    event_id = %event.event_id,
                    error = %err,
                    "recording an outbox delivery failure failed"
                );
                Failure::Unrecorded
            }
        }
    }

    /// Publishes one event inside its `outbox.deliver` span, a child of the span that wrote it
    /// (the publisher carries that span's context on: gRPC metadata, Kafka headers).
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let span = tracing::info_span!(
            parent: None,
            "outbox.deliver",
            { semconv::OTEL_KIND } = "producer",
            { semconv::OTEL_STATUS_CODE } = Empty,
            { semconv::OUTBOX_EVENT_ID } = %event.event_id,
            { semconv::OUTBOX_EVENT_TYPE } = event.event_type.as_str(),
            { semconv::OUTBOX_AGGREGATE_ID } = %event.aggregate_id,
            error = Empty,
        );
        if let Some(tp) = &event.traceparent {
            propagation::set_parent_from_traceparent(&span, tp);
        }
        let envelope = event.envelope(self.schema.family());
        let publish = self.publisher.publish(&envelope).instrument(span.clone());
        let result = match tokio::time::timeout(DELIVERY_TIMEOUT, publish).await {
            Ok(result) => result,
            Err(_) => Err(PublishError {
                kind: FailureKind::InDoubt,
                message: format!("no reply within {} ms", DELIVERY_TIMEOUT.as_millis()),
            }),
        };
        if let Err(error) = &result {
            span.record(semconv::OTEL_STATUS_CODE, "error");
            span.record("error", error.message.as_str());
        }
        result
    }
}

/// The earlier of two optional unix-ms times.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A gRPC delivery call for a [`Publisher`]: [`DELIVERY_TIMEOUT`] and the event's stored
/// `traceparent`. With tracing on, the traced channel replaces it with the delivery span's
/// context (a child of it); with tracing off in this process the stored context still travels,
/// so a consumer that traces joins it.
pub fn delivery_request<T>(message: T, traceparent: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DELIVERY_TIMEOUT);
    if let Some(value) = traceparent.and_then(|tp| MetadataValue::try_from(tp).ok()) {
        request
            .metadata_mut()
            .insert(propagation::TRACEPARENT, value);
    }
    request
}

/// What became of one order's events in a round.
struct GroupResult {
    /// Delivered (to be marked sent), in order: event id and type.
    delivered: Vec<(String, String)>,
    /// The failure that stopped the order's deliveries, if any.
    failure: Option<Failure>,
}

/// How a failed delivery was recorded.
enum Failure {
    /// Scheduled for another attempt at this unix-ms time.
    Retry { at_ms: i64 },
    /// Dead-lettered (and, for an OrderCreated, its order failed).
    DeadLettered,
    /// Not recorded (the database failed, or the row changed meanwhile): the row is due again.
    Unrecorded,
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Due events read.
    pub read: usize,
    /// Events delivered and marked sent.
    pub delivered: usize,
    /// Orders whose delivery failed this round.
    pub failed: usize,
    /// Of those, events dead-lettered.
    pub dead_lettered: usize,
    /// Of those, failures that could not be recorded (the event is due again at once).
    pub unrecorded: usize,
    /// Unix ms of the earliest retry scheduled this round.
    pub next_retry_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ServiceError;

    #[test]
    fn a_failing_event_warns_at_powers_of_two_only() {
        let warned: Vec<i64> = (0..=100).filter(|a| warns_at(*a)).collect();
        assert_eq!(warned, [1, 2, 4, 8, 16, 32, 64]);
    }

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            full_jitter: jitter,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn delay_caps_double_up_to_the_largest() {
        let p = policy(false);
        let caps: Vec<u64> = (1..=12).map(|n| p.cap(n).as_millis() as u64).collect();
        assert_eq!(
            caps,
            [
                100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000, 5_000, 5_000, 5_000
            ]
        );
        assert_eq!(p.cap(0), Duration::from_millis(100));
        assert_eq!(p.cap(i64::MAX), Duration::from_secs(5));
        assert_eq!(
            p.delay(3, 0.1),
            Duration::from_millis(400),
            "no jitter: the cap"
        );
        let j = policy(true);
        assert_eq!(j.delay(3, 0.0), Duration::ZERO);
        assert_eq!(j.delay(3, 0.5), Duration::from_millis(200));
        assert_eq!(j.delay(3, 7.0), Duration::from_millis(400), "unit clamped");
        for n in 1..40 {
            let d = j.delay(n, rand::random::<f64>());
            assert!(d <= j.cap(n), "{n}: {d:?}");
        }
    }

    #[test]
    fn failures_are_classified_by_what_they_prove() {
        let refused: tonic::Status =
            ServiceError::invalid("event.order.user_id", "is required").into();
        assert_eq!(classify(&refused), FailureKind::Refused);
        let rejected: tonic::Status = ServiceError::FailedPrecondition {
            reason: "ORDER_UNKNOWN",
            message: "no".into(),
            metadata: HashMap::new(),
        }
        .into();
        assert_eq!(classify(&rejected), FailureKind::Refused);
        let reused: tonic::Status = ServiceError::AlreadyExists {
            reason: "IDEMPOTENCY_KEY_REUSED",
            message: "reused".into(),
        }
        .into();
        assert_eq!(classify(&reused), FailureKind::InDoubt);
        for code in [
            Code::Unimplemented,
            Code::Unauthenticated,
            Code::PermissionDenied,
        ] {
            assert_eq!(
                classify(&tonic::Status::new(code, "proxy")),
                FailureKind::NotDelivered
            );
        }
        assert_eq!(
            classify(&tonic::Status::unavailable(
                "tcp connect error: Connection refused"
            )),
            FailureKind::NotDelivered
        );
        for status in [
            tonic::Status::unavailable("saga store: pool timed out"),
            tonic::Status::deadline_exceeded("no reply"),
            tonic::Status::cancelled("Timeout expired"),
            tonic::Status::internal("internal error"),
            tonic::Status::unknown("h2"),
            tonic::Status::failed_precondition("bare code, no reason"),
            tonic::Status::resource_exhausted("busy"),
        ] {
            assert_eq!(classify(&status), FailureKind::InDoubt, "{status:?}");
        }
    }

    #[test]
    fn only_refusals_never_in_doubt_are_given_up_after_the_attempts() {
        use FailureKind::*;
        assert!(gives_up(20, false, Refused, 20));
        assert!(gives_up(25, false, Refused, 20));
        assert!(!gives_up(19, false, Refused, 20), "attempts left");
        assert!(
            !gives_up(20, true, Refused, 20),
            "an earlier attempt was in doubt"
        );
        assert!(!gives_up(20, false, InDoubt, 20));
        assert!(
            !gives_up(20, false, NotDelivered, 20),
            "unreachable is no verdict"
        );
        assert!(
            !gives_up(1_000, true, InDoubt, 20),
            "in doubt: retried forever"
        );
        assert!(gives_up(1, false, Refused, 0), "0 attempts count as 1");
    }
}
