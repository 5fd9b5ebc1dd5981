//! GetOrder's long-poll waiters: one notice per order id, so that an order reaching a terminal
//! status wakes only the callers waiting for that order (a change does not wake every waiter of
//! every other order, and no waiter re-reads its order on every change).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

/// Per order id: how many callers wait, and their notice.
type ByOrder = HashMap<String, (usize, Arc<Notify>)>;

/// The waiters of this process, by order id. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct Waiters {
    by_order: Arc<Mutex<ByOrder>>,
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

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByOrder> {
        match self.by_order.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a waiter of `order_id`.
    pub(crate) fn wait_for(&self, order_id: &str) -> Waiting {
        let mut map = self.lock();
        let entry = map
            .entry(order_id.to_owned())
            .or_insert_with(|| (0, Arc::new(Notify::new())));
        entry.0 += 1;
        Waiting {
            waiters: self.clone(),
            order_id: order_id.to_owned(),
            notify: entry.1.clone(),
        }
    }

    /// Wakes the waiters of `order_id` (none: nothing happens).
    pub(crate) fn announce(&self, order_id: &str) {
        if let Some((_, notify)) = self.lock().get(order_id) {
            notify.notify_waiters();
        }
    }

    /// How many callers wait on `order_id`.
    pub(crate) fn waiting(&self, order_id: &str) -> usize {
        self.lock().get(order_id).map_or(0, |(count, _)| *count)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
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
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn only_the_waiters_of_the_order_wake_and_registrations_are_removed() {
        let waiters = Waiters::default();
        let a = waiters.wait_for("a");
        let b = waiters.wait_for("b");
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
        assert_eq!(waiters.len(), 2);
        drop((a, b));
        assert_eq!(waiters.len(), 0);
    }
}
