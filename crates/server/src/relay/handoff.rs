//! The relay's hand-off lane (docs/architecture.md, "Events"): an event committed by a
//! command (PlaceOrder's OrderCreated) is handed to the relay in memory ([`super::RelayWaker::hand_over`]) and delivered at
//! once, concurrently with any round in flight, instead of waiting for the round to end and the
//! next one to read it back. The row stays the truth: the lane marks it sent after the delivery
//! (batched: one statement for every delivery that finished meanwhile), and anything the lane
//! does not finish — a failed delivery, a full lane, a crash — is delivered by the rounds, as
//! before.
//!
//! ```text
//!  PlaceOrder commit ─▶ hand_over(event) ─▶ lane: claim order ─▶ deliver ─┬─ ok ─▶ marker: mark_sent(batch), release
//!                                              │ claimed by a round:       └─ failed ─▶ retry_later (row), release
//!                                              ▼ skip (the round has it)
//! ```
//!
//! Claims keep one order's deliveries on one path at a time: a round skips an order the lane
//! holds (until it is marked sent) and the lane skips an order a round holds, so per-order order
//! is kept and an event is not delivered twice at once. (At least once still holds: consumers
//! are idempotent on the event id.)

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
};

use metrics::counter;
use tokio::{
    sync::{Notify, Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{DELIVERED, DELIVERY_CONCURRENCY, Failure, LABEL_EVENT_TYPE, OutboxRelay, earliest};
use crate::outbox::{self, OutboxEvent};

/// Events waiting in the hand-off queue at most; past that an event is left to a round.
const HANDOFF_CAP: usize = 4_096;

/// What the service's [`super::RelayWaker`] shares with the relay.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Wakes the round loop.
    pub(super) round: Notify,
    /// Wakes the hand-off lane.
    handed: Notify,
    /// Events handed over and not yet taken by the lane.
    queue: Mutex<Vec<OutboxEvent>>,
    /// Orders with a delivery in flight (lane or round).
    in_flight: Mutex<HashSet<String>>,
    /// The earliest retry (unix ms) the lane scheduled and the round loop has not seen.
    retry_hint: Mutex<Option<i64>>,
}

/// Locks `mutex`, also after a panic elsewhere (the data is a plain set or queue, valid at every
/// point).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Queues `event` for the lane; false when the queue is full.
    pub(super) fn push(&self, event: OutboxEvent) -> bool {
        {
            let mut queue = lock(&self.queue);
            if queue.len() >= HANDOFF_CAP {
                return false;
            }
            queue.push(event);
        }
        self.handed.notify_one();
        true
    }

    /// Claims `order_id` for one delivery path; false when another path holds it.
    pub(super) fn claim(&self, order_id: &str) -> bool {
        lock(&self.in_flight).insert(order_id.to_owned())
    }

    fn release<'a>(&self, order_ids: impl IntoIterator<Item = &'a String>) {
        let mut in_flight = lock(&self.in_flight);
        for id in order_ids {
            in_flight.remove(id);
        }
    }

    /// The retry time the lane scheduled since the last call, if any.
    pub(super) fn take_retry_hint(&self) -> Option<i64> {
        lock(&self.retry_hint).take()
    }

    fn hint_retry(&self, at_ms: i64) {
        let mut hint = lock(&self.retry_hint);
        *hint = earliest(*hint, Some(at_ms));
    }
}

/// Orders a round claimed, released when the round ends.
pub(super) struct Claimed<'a> {
    shared: &'a Shared,
    order_ids: Vec<String>,
}

impl<'a> Claimed<'a> {
    pub(super) fn new(shared: &'a Shared, order_ids: Vec<String>) -> Self {
        Self { shared, order_ids }
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.shared.release(&self.order_ids);
    }
}

/// A delivery the lane finished: marked sent by the marker, then released.
struct Delivered {
    event_id: String,
    event_type: String,
    order_id: String,
}

impl OutboxRelay {
    /// Runs the hand-off lane until `shutdown` (see the module docs).
    pub(super) async fn hand_off_lane(self, shutdown: CancellationToken) {
        let shared = Arc::clone(&self.waker.0);
        let permits = Arc::new(Semaphore::new(DELIVERY_CONCURRENCY));
        let (done, finished) = mpsc::unbounded_channel();
        let marker = tokio::spawn(self.clone().mark_delivered(finished));
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = shared.handed.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            }
            let handed = std::mem::take(&mut *lock(&shared.queue));
            let mut left = false;
            for event in handed {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    left = true;
                    continue;
                };
                if !shared.claim(&event.aggregate_id) {
                    // A round holds the order: it delivers this event too.
                    continue;
                }
                let (relay, done) = (self.clone(), done.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    relay.deliver_handed(event, &done).await;
                });
            }
            if left {
                // The lane is full: the rows wait for a round.
                self.waker.wake();
            }
        }
        // Deliveries cut short are rows still unsent: the next start delivers them.
        tasks.shutdown().await;
        drop(done);
        if let Err(err) = marker.await {
            tracing::error!(%err, "the hand-off lane's marker failed");
        }
    }

    /// Delivers one handed-over event; a failure is recorded on its row (the rounds retry it).
    async fn deliver_handed(&self, event: OutboxEvent, done: &mpsc::UnboundedSender<Delivered>) {
        let order_id = event.aggregate_id.clone();
        let result = self.deliver_group(vec![event]).await;
        if let Some((event_id, event_type)) = result.delivered.into_iter().next() {
            let delivered = Delivered {
                event_id,
                event_type,
                order_id,
            };
            if let Err(unsent) = done.send(delivered) {
                // The marker is gone (shutting down): a round or the next start delivers it
                // again.
                self.waker.0.release([&unsent.0.order_id]);
            }
            return;
        }
        if let Some(Failure::Retry { at_ms }) = result.failure {
            self.waker.0.hint_retry(at_ms);
        }
        self.waker.0.release([&order_id]);
        // The round loop learns of the failed row (and its retry time) at once.
        self.waker.wake();
    }

    /// Marks the lane's deliveries sent, every delivery that finished meanwhile in one
    /// statement, then releases their orders.
    async fn mark_delivered(self, mut finished: mpsc::UnboundedReceiver<Delivered>) {
        let mut batch = Vec::new();
        while finished
            .recv_many(&mut batch, super::RELAY_BATCH as usize)
            .await
            > 0
        {
            let ids: Vec<String> = batch.iter().map(|d| d.event_id.clone()).collect();
            match outbox::mark_sent(&self.db, &ids).await {
                Ok(_) => {
                    for delivered in &batch {
                        counter!(DELIVERED, LABEL_EVENT_TYPE => delivered.event_type.clone())
                            .increment(1);
                    }
                }
                Err(err) => {
                    // Delivered but not marked: a round delivers them again, and the consumers
                    // recognise the event ids.
                    tracing::warn!(error = %err, events = ids.len(), "marking handed-over events sent failed");
                    self.waker.wake();
                }
            }
            self.waker.0.release(batch.iter().map(|d| &d.order_id));
            batch.clear();
        }
    }
}
