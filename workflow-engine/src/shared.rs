//! What one engine's tasks share ([`Shared`]): the store, the registered definitions, the lease
//! settings, the driver slots, the committers, the corrected clock and the task tracker. The
//! engine, the poller and the drivers all hold it; it depends on none of them.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tokio::{
    sync::{Notify, Semaphore, broadcast},
    task::AbortHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    clock::CorrectedClock,
    committer::Committers,
    definition::SagaDefinition,
    errors::EngineError,
    state::{SagaId, SagaState, SagaStatus},
    store::{SagaStore, StoreError, Write, WriteOutcome},
};

/// The state every task of one engine shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn SagaStore>,
    pub(crate) definitions: HashMap<(String, u32), Arc<SagaDefinition>>,
    pub(crate) latest: HashMap<String, Arc<SagaDefinition>>,
    pub(crate) owner: String,
    pub(crate) lease_ms: i64,
    pub(crate) poll_interval: Duration,
    pub(crate) batch_size: u32,
    pub(crate) max_local_wait_ms: i64,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) running: Mutex<HashMap<u64, AbortHandle>>,
    pub(crate) next_task: AtomicU64,
    pub(crate) committers: Committers,
    pub(crate) rested: broadcast::Sender<(SagaId, SagaStatus)>,
    pub(crate) kick: Notify,
    pub(crate) clock: CorrectedClock,
    /// (name, version) of every registered definition: the only sagas this engine claims.
    pub(crate) known: Vec<(String, u32)>,
    /// Local unix ms of the last count of due sagas of unknown definitions.
    pub(crate) unknown_counted_at: AtomicI64,
    /// Set when the poller may have left due sagas unclaimed for want of a driver slot.
    pub(crate) backlog: AtomicBool,
    /// Whether this engine is provably the only one on its store (see
    /// [`crate::EngineBuilder::sole_owner`]): every lease found at start-up is orphaned.
    pub(crate) sole_owner: bool,
    /// Sagas an operator command (cancel, retry, resolve) of this engine took over: their old
    /// driver's lost lease is expected, not a warning.
    pub(crate) taken_over: Mutex<std::collections::HashSet<SagaId>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.owner)
            .field("lease_ms", &self.lease_ms)
            .field("definitions", &self.definitions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Notes that an operator command took `id` over (see [`Shared::taken_over`]).
    pub(crate) fn note_takeover(&self, id: SagaId) {
        if let Ok(mut set) = self.taken_over.lock() {
            set.insert(id);
        }
    }

    /// Whether an operator command took `id` over since; forgets it.
    pub(crate) fn was_taken_over(&self, id: SagaId) -> bool {
        self.taken_over
            .lock()
            .map(|mut set| set.remove(&id))
            .unwrap_or(false)
    }

    /// A driver slot was freed: wake the poller if it left work for want of one.
    pub(crate) fn slot_freed(&self) {
        if self.backlog.swap(false, Ordering::Relaxed) {
            self.kick.notify_one();
        }
    }

    /// The engine's time: its clock corrected to the database's ([`crate::clock`]), unix ms.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Samples the database's clock when a sample is due; a failure keeps the last offset.
    pub(crate) async fn sync_clock(&self) {
        if !self.clock.sample_due() {
            return;
        }
        let sent = self.clock.local_ms();
        match self.store.clock_ms().await {
            Ok(database) => {
                let received = self.clock.local_ms();
                self.clock.record(sent, received, database);
                tracing::trace!(offset_ms = self.clock.offset_ms(), "clock offset sampled");
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the database's clock"),
        }
    }

    /// The registered definition a saga runs on.
    pub(crate) fn definition_of(
        &self,
        state: &SagaState,
    ) -> Result<Arc<SagaDefinition>, EngineError> {
        self.definitions
            .get(&(state.definition_name.clone(), state.definition_version))
            .cloned()
            .ok_or_else(|| EngineError::UnknownDefinition {
                name: state.definition_name.clone(),
                version: Some(state.definition_version),
            })
    }

    /// Sends a write to its committer and waits for its outcome ([`Committers::commit`]).
    pub(crate) async fn commit(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        self.committers.commit(write).await
    }

    /// Runs `work` as a tracked task (joined at shutdown, aborted past the grace period); not
    /// at all once the engine is shutting down.
    pub(crate) fn spawn_tracked(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let key = self.next_task.fetch_add(1, Ordering::Relaxed);
        let inner = self.clone();
        // The lock is held while spawning so that the task's removal cannot run before the insert.
        let mut running = match self.running.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let handle = self.tracker.spawn(async move {
            work.await;
            match inner.running.lock() {
                Ok(mut r) => r.remove(&key),
                Err(poisoned) => poisoned.into_inner().remove(&key),
            };
        });
        running.insert(key, handle.abort_handle());
    }

    /// Aborts every tracked task still running; returns how many.
    pub(crate) fn abort_running(&self) -> usize {
        let handles: Vec<AbortHandle> = match self.running.lock() {
            Ok(mut running) => running.drain().map(|(_, h)| h).collect(),
            Err(poisoned) => poisoned.into_inner().drain().map(|(_, h)| h).collect(),
        };
        for handle in &handles {
            handle.abort();
        }
        handles.len()
    }
}

/// A uniform random number in `0..=1` for full jitter.
pub(crate) fn jitter() -> f64 {
    rand::rng().random_range(0.0..=1.0)
}
