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

use std::{collections::HashMap, sync::Arc, time::Duration};

use sagaflow_proto::{
    orchestrator::v1::{
        StartOrderSagaRequest, orchestrator_service_client::OrchestratorServiceClient,
    },
    ranking::v1::{RecordOrderCompletedRequest, ranking_service_client::RankingServiceClient},
};
use sagaflow_server::Db;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::outbox::{self, OrderEvent, OutboxEvent};

/// Events read per round.
pub const RELAY_BATCH: i64 = 256;
/// Deliveries in flight at once.
pub const DELIVERY_CONCURRENCY: usize = 64;
/// Per-delivery gRPC timeout.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

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
    orchestrator: OrchestratorServiceClient<Channel>,
    ranking: RankingServiceClient<Channel>,
    waker: RelayWaker,
    poll_interval: Duration,
}

impl OutboxRelay {
    /// A relay over the order database `db`, delivering to the orchestrator and Ranking channels
    /// (lazy channels are fine). `poll_interval` bounds how long a missed event waits.
    pub fn new(
        db: Db,
        orchestrator: Channel,
        ranking: Channel,
        waker: RelayWaker,
        poll_interval: Duration,
    ) -> Self {
        Self {
            db,
            orchestrator: OrchestratorServiceClient::new(orchestrator),
            ranking: RankingServiceClient::new(ranking),
            waker,
            poll_interval,
        }
    }

    /// Runs rounds until `shutdown` is cancelled: at once when woken, every `poll_interval`
    /// otherwise, back to back while full batches keep coming.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            poll_ms = self.poll_interval.as_millis() as u64,
            "outbox relay started"
        );
        loop {
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
        let mut delivered = Vec::new();
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
            outbox::mark_sent(&self.db, &delivered).await?;
        }
        Ok(round)
    }

    /// Delivers one order's events in order, stopping at the first failure. Returns the ids
    /// delivered and the number that failed (0 or 1).
    async fn deliver_group(&self, group: Vec<OutboxEvent>) -> (Vec<String>, usize) {
        let mut ok = Vec::with_capacity(group.len());
        for event in group {
            match self.deliver(&event).await {
                Ok(()) => ok.push(event.event_id),
                Err(status) => {
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

    async fn deliver(&self, event: &OutboxEvent) -> Result<(), tonic::Status> {
        let decoded = event
            .decode()
            .map_err(|e| tonic::Status::internal(format!("undecodable outbox payload: {e}")))?;
        match decoded {
            OrderEvent::Created(created) => {
                let mut request = tonic::Request::new(StartOrderSagaRequest {
                    event_id: event.event_id.clone(),
                    event: Some(created),
                });
                request.set_timeout(DELIVERY_TIMEOUT);
                self.orchestrator.clone().start_order_saga(request).await?;
            }
            OrderEvent::Completed(completed) => {
                let mut request = tonic::Request::new(RecordOrderCompletedRequest {
                    event_id: event.event_id.clone(),
                    event: Some(completed),
                });
                request.set_timeout(DELIVERY_TIMEOUT);
                self.ranking.clone().record_order_completed(request).await?;
            }
            OrderEvent::Failed(_) => {}
        }
        Ok(())
    }
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
