//! The outbox relay (DESIGN §7): delivers the Order service's outbox events at least once, in
//! order per order, and marks them sent.
//!
//! - OrderCreated → `OrchestratorService/StartOrderSaga` (the orchestrator's business-key inbox
//!   makes a redelivery find the same saga);
//! - OrderCompleted → `RankingService/RecordOrderCompleted` (Ranking's inbox ignores redeliveries);
//! - OrderFailed → no consumer yet: marked sent.
//!
//! It tries right after a commit that wrote an event (the service calls [`RelayWaker::wake`]) and
//! polls for anything missed (a crash between commit and delivery, a consumer that was down).
//! Within one round, events of different orders are delivered concurrently; an order whose event
//! failed gets none of its later events delivered in that round, which keeps per-order order.
//!
//! ```text
//!  commit(order + outbox row) ─▶ wake ─▶ pending(batch) ─▶ deliver (≤ DELIVERY_CONCURRENCY)
//!                                   ▲                         │
//!                        poll every interval             mark_sent(delivered)
//! ```
//!
//! Tracing (issue 7): each delivery runs in an `outbox.deliver` span whose parent is the
//! `traceparent` stored with the event (the handler that wrote it), and the call carries that
//! span's context (traced channels), so OrderCreated → StartOrderSaga → the order saga's steps
//! stay in the PlaceOrder trace, however late the delivery.
//!
//! Metrics (only when a recorder is installed): [`DELIVERED`] and [`DELIVERY_FAILURES`] by event
//! type, and — when [`OutboxRelay::with_backlog_sampling`] asks for it — the backlog gauges
//! [`PENDING`] and [`OLDEST_PENDING_AGE`], sampled with one query at most once per interval.

use std::{collections::HashMap, sync::Arc, time::Duration};

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use sagaflow_proto::{
    orchestrator::v1::{
        StartOrderSagaRequest, orchestrator_service_client::OrchestratorServiceClient,
    },
    ranking::v1::{RecordOrderCompletedRequest, ranking_service_client::RankingServiceClient},
};
use sagaflow_server::{Db, db::now_ms};
use sagaflow_telemetry::{
    propagation::{self, TracedChannel, traced},
    semconv,
};
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{metadata::MetadataValue, transport::Channel};
use tracing::{Instrument as _, field::Empty};

use crate::outbox::{self, EventType, OrderEvent, OutboxEvent};

/// Events delivered and marked sent (counter; label `event_type`). OrderFailed has no consumer
/// yet: it counts when marked sent.
pub const DELIVERED: &str = "sagaflow_outbox_delivered_total";
/// Deliveries that failed and will be retried (counter; label `event_type`).
pub const DELIVERY_FAILURES: &str = "sagaflow_outbox_delivery_failures_total";
/// Undelivered outbox events at the last sample (gauge).
pub const PENDING: &str = "sagaflow_outbox_pending";
/// Age of the oldest undelivered event at the last sample, seconds; 0 when none (gauge).
pub const OLDEST_PENDING_AGE: &str = "sagaflow_outbox_oldest_pending_age_seconds";
/// The label of the relay's counters.
pub const LABEL_EVENT_TYPE: &str = "event_type";

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
        "Outbox deliveries that failed (retried later)."
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

/// Events read per round.
pub const RELAY_BATCH: i64 = 256;
/// Deliveries in flight at once.
pub const DELIVERY_CONCURRENCY: usize = 64;
/// Per-delivery gRPC timeout.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// A sensible interval for [`OutboxRelay::with_backlog_sampling`] (what the CLI uses): 1 s.
pub const BACKLOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Wakes the relay after a commit that wrote an outbox row. Cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    /// Asks the relay to run a round now (a wake-up while it is busy is kept for the next wait).
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The relay. Run it with [`OutboxRelay::run`].
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    db: Db,
    orchestrator: OrchestratorServiceClient<TracedChannel>,
    ranking: RankingServiceClient<TracedChannel>,
    waker: RelayWaker,
    poll_interval: Duration,
    backlog_every: Option<Duration>,
}

impl OutboxRelay {
    /// A relay over the order database `db`, delivering to the orchestrator and Ranking channels
    /// (lazy channels are fine; they are wrapped with [`traced`]). `poll_interval` bounds how
    /// long a missed event waits.
    pub fn new(
        db: Db,
        orchestrator: Channel,
        ranking: Channel,
        waker: RelayWaker,
        poll_interval: Duration,
    ) -> Self {
        Self {
            db,
            orchestrator: OrchestratorServiceClient::new(traced(orchestrator)),
            ranking: RankingServiceClient::new(traced(ranking)),
            waker,
            poll_interval,
            backlog_every: None,
        }
    }

    /// The same relay, also sampling the outbox backlog into the [`PENDING`] and
    /// [`OLDEST_PENDING_AGE`] gauges at most once per `every` (one query; the relay runs at
    /// least once per poll interval). Off by default: the CLI turns it on with the metrics
    /// endpoint.
    pub fn with_backlog_sampling(mut self, every: Duration) -> Self {
        self.backlog_every = Some(every);
        self
    }

    /// Runs rounds until `shutdown` is cancelled: at once when woken, every `poll_interval`
    /// otherwise, back to back while full batches keep coming.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            poll_ms = self.poll_interval.as_millis() as u64,
            "outbox relay started"
        );
        let mut next_sample = Instant::now();
        loop {
            if let Some(every) = self.backlog_every
                && Instant::now() >= next_sample
            {
                self.sample_backlog().await;
                next_sample = Instant::now() + every;
            }
            let full = match self.deliver_round().await {
                Ok(round) => round.read >= RELAY_BATCH as usize && round.failed == 0,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay round failed");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.waker.0.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
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
                gauge!(PENDING).set(pending);
                gauge!(OLDEST_PENDING_AGE).set(age_seconds);
            }
            Err(err) => tracing::warn!(error = %err, "sampling the outbox backlog failed"),
        }
    }

    /// Reads one batch of pending events, delivers it and marks the delivered ones sent.
    ///
    /// # Errors
    /// The outbox's database error (deliveries that fail are counted, not errors).
    pub async fn deliver_round(&self) -> Result<Round, outbox::OutboxError> {
        let pending = outbox::pending(&self.db, RELAY_BATCH).await?;
        let mut round = Round {
            read: pending.len(),
            ..Round::default()
        };
        if pending.is_empty() {
            return Ok(round);
        }
        // Group by order, keeping each order's events in sequence order.
        let mut groups: Vec<Vec<OutboxEvent>> = Vec::new();
        let mut index = HashMap::new();
        for event in pending {
            let slot = *index.entry(event.aggregate_id.clone()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[slot].push(event);
        }
        let mut set = JoinSet::new();
        let mut delivered: Vec<(String, EventType)> = Vec::new();
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
                Ok((ok, failed)) => {
                    delivered.extend(ok);
                    round.failed += failed;
                }
                Err(join) => {
                    tracing::error!(%join, "an outbox delivery failed");
                    round.failed += 1;
                }
            }
        }
        round.delivered = delivered.len();
        if !delivered.is_empty() {
            let ids: Vec<String> = delivered.iter().map(|(id, _)| id.clone()).collect();
            outbox::mark_sent(&self.db, &ids).await?;
            for (_, event_type) in &delivered {
                counter!(DELIVERED, LABEL_EVENT_TYPE => event_type.as_str()).increment(1);
            }
        }
        Ok(round)
    }

    /// Delivers one order's events in order, stopping at the first failure. Returns the ids
    /// (and types) delivered and the number that failed (0 or 1).
    async fn deliver_group(&self, group: Vec<OutboxEvent>) -> (Vec<(String, EventType)>, usize) {
        let mut ok = Vec::with_capacity(group.len());
        for event in group {
            match self.deliver(&event).await {
                Ok(()) => ok.push((event.event_id, event.event_type)),
                Err(status) => {
                    counter!(DELIVERY_FAILURES, LABEL_EVENT_TYPE => event.event_type.as_str())
                        .increment(1);
                    tracing::warn!(
                        event_id = %event.event_id,
                        order_id = %event.aggregate_id,
                        event_type = event.event_type.as_str(),
                        code = ?status.code(),
                        message = status.message(),
                        "outbox delivery failed; will retry"
                    );
                    return (ok, 1);
                }
            }
        }
        (ok, 0)
    }

    /// Delivers one event inside its `outbox.deliver` span, a child of the span that wrote it.
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), tonic::Status> {
        let span = tracing::info_span!(
            parent: None,
            "outbox.deliver",
            { semconv::OTEL_KIND } = "producer",
            { semconv::OTEL_STATUS_CODE } = Empty,
            { semconv::OUTBOX_EVENT_ID } = %event.event_id,
            { semconv::OUTBOX_EVENT_TYPE } = event.event_type.as_str(),
            { semconv::OUTBOX_AGGREGATE_ID } = %event.aggregate_id,
            { semconv::RPC_GRPC_STATUS_CODE } = Empty,
        );
        if let Some(tp) = &event.traceparent {
            propagation::set_parent_from_traceparent(&span, tp);
        }
        let result = self.send(event).instrument(span.clone()).await;
        if let Err(status) = &result {
            span.record(semconv::OTEL_STATUS_CODE, "error");
            span.record(semconv::RPC_GRPC_STATUS_CODE, status.code() as i64);
        }
        result
    }

    async fn send(&self, event: &OutboxEvent) -> Result<(), tonic::Status> {
        let decoded = event
            .decode()
            .map_err(|e| tonic::Status::internal(format!("undecodable outbox payload: {e}")))?;
        let traceparent = event.traceparent.as_deref();
        match decoded {
            OrderEvent::Created(created) => {
                let request = delivery_request(
                    StartOrderSagaRequest {
                        event_id: event.event_id.clone(),
                        event: Some(created),
                    },
                    traceparent,
                );
                self.orchestrator.clone().start_order_saga(request).await?;
            }
            OrderEvent::Completed(completed) => {
                let request = delivery_request(
                    RecordOrderCompletedRequest {
                        event_id: event.event_id.clone(),
                        event: Some(completed),
                    },
                    traceparent,
                );
                self.ranking.clone().record_order_completed(request).await?;
            }
            OrderEvent::Failed(_) => {}
        }
        Ok(())
    }
}

/// A delivery call with [`DELIVERY_TIMEOUT`] and the event's stored `traceparent`. With tracing on,
/// the traced channel replaces it with the delivery span's context (a child of it); with tracing
/// off in this process the stored context still travels, so a consumer that traces joins it.
fn delivery_request<T>(message: T, traceparent: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DELIVERY_TIMEOUT);
    if let Some(value) = traceparent.and_then(|tp| MetadataValue::try_from(tp).ok()) {
        request
            .metadata_mut()
            .insert(propagation::TRACEPARENT, value);
    }
    request
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Pending events read.
    pub read: usize,
    /// Events delivered and marked sent.
    pub delivered: usize,
    /// Orders whose delivery failed this round.
    pub failed: usize,
}
