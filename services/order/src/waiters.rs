//! GetOrder's long-poll waiters (docs/operations.md, "Request limits"): one notice per order id,
//! shared by every caller waiting for that order, and at most a configured number of callers
//! waiting at once in the process.
//!
//! ```text
//!  GetOrder{wait} ─▶ wait_for(order) ── over the cap ─▶ RESOURCE_EXHAUSTED  TOO_MANY_WAITERS
//!                        │ registered (count per order, one Notify per order)
//!                        ▼
//!      read the order once ─▶ terminal? ─▶ answer
//!                        │ no
//!                        ▼
//!      wait for the order's notice, the deadline or shutdown ─▶ read once more ─▶ …
//!
//!  notices: CompleteOrder / FailOrder of this process ─▶ announce(order)
//!           the shared poll (one task, one query a second while anyone waits):
//!             orders that reached a terminal status lately, whoever changed them
//!             (another replica, the relay failing an undeliverable order) ─▶ announce(each)
//! ```
//!
//! So N callers waiting on the same or different orders cost the database one query a second,
//! not N: a caller reads its order when it starts and when its notice fires, never on a timer.
//! Without the shared poll ([`Waiters::poll`] not running: a service built in a test), each
//! caller re-reads its order every [`crate::WAIT_POLL_INTERVAL`] instead.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sagaflow_server::{Db, db::now_ms};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Per order id: how many callers wait, and their notice.
type ByOrder = HashMap<String, (usize, Arc<Notify>)>;

/// How far back each shared poll looks before the previous one started, milliseconds: covers
/// a commit that lands after the poll that should have seen it (its `updated_at` is taken
/// before it commits) and clocks of other replicas that run behind. An order in that window
/// is announced again; its callers, if any are left, read it once more.
const POLL_OVERLAP_MS: i64 = 5_000;

/// Gauge: GetOrder callers waiting right now in this process.
pub const WAITERS_GAUGE: &str = "sagaflow_order_get_order_waiters";
/// Counter: queries of the shared wait poll.
pub const WAIT_POLLS: &str = "sagaflow_order_wait_polls_total";

#[derive(Debug)]
struct Shared {
    by_order: Mutex<(ByOrder, usize)>,
    /// Most callers waiting at once.
    max: usize,
    /// Whether a shared poll runs (callers then never poll themselves).
    polled: AtomicBool,
    /// Wakes the shared poll when the first caller arrives.
    arrived: Notify,
}

/// The waiters of this process, by order id. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub(crate) struct Waiters {
    shared: Arc<Shared>,
}

impl Default for Waiters {
    fn default() -> Self {
        Self::new(sagaflow_server::limits::Limits::default().max_order_waiters)
    }
}

/// One caller's registration; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Waiting {
    waiters: Waiters,
    order_id: String,
    notify: Arc<Notify>,
}

impl Waiting {
    /// The notice of this order.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

/// More callers wait than the cap allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyWaiters {
    /// The cap.
    pub(crate) max: usize,
}

impl Waiters {
    /// Waiters of which at most `max` wait at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                by_order: Mutex::new((HashMap::new(), 0)),
                max: max.max(1),
                polled: AtomicBool::new(false),
                arrived: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (ByOrder, usize)> {
        match self.shared.by_order.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a waiter of `order_id`.
    ///
    /// # Errors
    /// [`TooManyWaiters`] when the cap is reached (nothing is registered).
    pub(crate) fn wait_for(&self, order_id: &str) -> Result<Waiting, TooManyWaiters> {
        let mut guard = self.lock();
        let (map, total) = &mut *guard;
        if *total >= self.shared.max {
            return Err(TooManyWaiters {
                max: self.shared.max,
            });
        }
        *total += 1;
        let entry = map
            .entry(order_id.to_owned())
            .or_insert_with(|| (0, Arc::new(Notify::new())));
        entry.0 += 1;
        let notify = entry.1.clone();
        metrics::gauge!(WAITERS_GAUGE).set(*total as f64);
        drop(guard);
        self.shared.arrived.notify_one();
        Ok(Waiting {
            waiters: self.clone(),
            order_id: order_id.to_owned(),
            notify,
        })
    }

    /// Wakes the waiters of `order_id` (none: nothing happens).
    pub(crate) fn announce(&self, order_id: &str) {
        if let Some((_, notify)) = self.lock().0.get(order_id) {
            notify.notify_waiters();
        }
    }

    /// How many callers wait on `order_id`.
    pub(crate) fn waiting(&self, order_id: &str) -> usize {
        self.lock().0.get(order_id).map_or(0, |(count, _)| *count)
    }

    /// How many callers wait, on any order.
    fn total(&self) -> usize {
        self.lock().1
    }

    /// Whether the shared poll runs (callers need not re-read on a timer).
    pub(crate) fn is_polled(&self) -> bool {
        self.shared.polled.load(Ordering::Acquire)
    }

    /// The shared poll: while anyone waits, every `interval` one query for the orders of `db`
    /// that reached a terminal status since shortly before the previous query, and a notice
    /// for each; nothing while nobody waits. Ends when `stop` is cancelled. Callers count on it
    /// from the moment this is called (before the future is first polled). A failed query is
    /// logged and tried again at the next interval (callers still end at their deadline).
    pub(crate) fn poll(
        &self,
        db: Db,
        interval: Duration,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.shared.polled.store(true, Ordering::Release);
        let waiters = self.clone();
        async move {
            let mut since = now_ms() - POLL_OVERLAP_MS;
            loop {
                // Nobody waits: sleep until someone arrives (listening before looking).
                loop {
                    let arrived = waiters.shared.arrived.notified();
                    tokio::pin!(arrived);
                    arrived.as_mut().enable();
                    if waiters.total() > 0 {
                        break;
                    }
                    tokio::select! {
                        () = arrived => {}
                        () = stop.cancelled() => return,
                    }
                    // Orders finished while nobody waited do not matter to those who come now
                    // (they read their order when they start).
                    since = now_ms() - POLL_OVERLAP_MS;
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stop.cancelled() => return,
                }
                let started = now_ms();
                metrics::counter!(WAIT_POLLS).increment(1);
                match finished_since(&db, since).await {
                    Ok(ids) => {
                        for id in ids {
                            waiters.announce(&id);
                        }
                        since = started - POLL_OVERLAP_MS;
                    }
                    Err(err) => tracing::warn!(error = %err, "GetOrder's wait poll failed"),
                }
            }
        }
    }
}

/// The orders that reached a terminal status at or after `since_ms` (unix ms; index
/// `orders_finished`).
async fn finished_since(
    db: &Db,
    since_ms: i64,
) -> Result<Vec<String>, sagaflow_server::ServiceError> {
    let mut conn = db.connection().await?;
    let ids = sqlx::query_scalar(
        "SELECT order_id FROM orders WHERE status <> 'PENDING' AND updated_at >= $1",
    )
    .bind(since_ms)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids)
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut guard = self.waiters.lock();
        let (map, total) = &mut *guard;
        *total = total.saturating_sub(1);
        metrics::gauge!(WAITERS_GAUGE).set(*total as f64);
        if let Some(entry) = map.get_mut(&self.order_id) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                map.remove(&self.order_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_waiters_of_the_order_wake_and_registrations_are_removed() {
        let waiters = Waiters::default();
        let a = waiters.wait_for("a").unwrap();
        let b = waiters.wait_for("b").unwrap();
        {
            let woken_a = a.notify().notified();
            let woken_b = b.notify().notified();
            tokio::pin!(woken_a, woken_b);
            woken_a.as_mut().enable();
            woken_b.as_mut().enable();
            waiters.announce("a");
            tokio::time::timeout(Duration::from_secs(1), woken_a)
                .await
                .unwrap();
            assert!(
                tokio::time::timeout(Duration::from_millis(50), woken_b)
                    .await
                    .is_err()
            );
        }
        assert_eq!(waiters.lock().0.len(), 2);
        drop((a, b));
        assert_eq!(waiters.lock().0.len(), 0);
        assert_eq!(waiters.total(), 0);
    }

    /// An order made terminal behind this process's back (no announce) wakes its callers
    /// through the shared poll: one query per interval while anyone waits, none while nobody
    /// does.
    #[tokio::test]
    async fn the_shared_poll_wakes_callers_of_orders_finished_elsewhere() {
        let store = sagaflow_testkit::TestDatabase::sqlite("waiters");
        let db = Db::connect(
            &store.url,
            crate::migrations(),
            &sagaflow_server::PoolConfig::default(),
        )
        .await
        .unwrap();
        let waiters = Waiters::new(10);
        let stop = CancellationToken::new();
        let poll = tokio::spawn(waiters.poll(db.clone(), Duration::from_millis(20), stop.clone()));
        assert!(waiters.is_polled());
        let waiting = waiters.wait_for("o-1").unwrap();
        let woken = waiting.notify().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO orders (order_id, request_id, user_id, subtotal, discount, points, \
             payable, status, payment_method, created_at, updated_at) \
             VALUES ('o-1', 'r-1', 'alice', 10, 0, 0, 10, 'COMPLETED', 'tok_ok', $1, $1)",
        )
        .bind(now)
        .execute(db.pool())
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("the shared poll announces the order");
        stop.cancel();
        poll.await.unwrap();
        db.close().await;
    }

    #[test]
    fn callers_over_the_cap_are_refused_and_a_freed_place_is_taken_again() {
        let waiters = Waiters::new(2);
        let a = waiters.wait_for("a").unwrap();
        let _b = waiters.wait_for("a").unwrap();
        assert_eq!(
            waiters.wait_for("c").unwrap_err(),
            TooManyWaiters { max: 2 }
        );
        assert_eq!(waiters.waiting("a"), 2);
        assert_eq!(waiters.waiting("c"), 0);
        drop(a);
        let _c = waiters.wait_for("c").unwrap();
        assert_eq!(waiters.total(), 2);
    }
}
