//! [`EngineBuilder`]: the engine's settings, checked when it is built.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64},
    },
    time::Duration,
};

use tokio::sync::{Notify, Semaphore, broadcast};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Background, Engine};
use crate::{
    clock::{Clock, CorrectedClock, SystemClock},
    committer,
    definition::SagaDefinition,
    errors::EngineError,
    metrics as saga_metrics, poller,
    shared::Shared,
    store::SagaStore,
};

/// Capacity of the channel announcing sagas that came to rest; a lagging waiter re-reads the store.
const RESTED_CHANNEL_CAPACITY: usize = 4096;

/// Builder of an [`Engine`]. Defaults suit a laptop and a small cluster.
#[derive(Debug)]
pub struct EngineBuilder {
    store: Arc<dyn SagaStore>,
    definitions: Vec<SagaDefinition>,
    owner: Option<String>,
    lease_ms: u64,
    poll_interval_ms: u64,
    batch_size: u32,
    concurrency: usize,
    max_local_wait_ms: u64,
    commit_batch_size: usize,
    clock: Box<dyn Clock>,
    sole_owner: bool,
}

impl EngineBuilder {
    /// The defaults, over `store` ([`Engine::builder`]).
    pub(super) fn new(store: Arc<dyn SagaStore>) -> Self {
        Self {
            store,
            definitions: Vec::new(),
            owner: None,
            lease_ms: 30_000,
            poll_interval_ms: 1_000,
            batch_size: 32,
            concurrency: 64,
            max_local_wait_ms: 2_000,
            commit_batch_size: 256,
            clock: Box::new(SystemClock),
            sole_owner: false,
        }
    }

    /// Registers a definition. Several versions of one name may be registered: new sagas start on
    /// the highest version, and each saga finishes on the version that started it.
    pub fn definition(mut self, definition: SagaDefinition) -> Self {
        self.definitions.push(definition);
        self
    }

    /// This engine's owner id in leases and the journal (default: `engine-<random>`). Unique per
    /// replica and per process start.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Lease duration, milliseconds (default 30000). A crashed engine's sagas are taken over at
    /// most this long after its last renewal.
    pub fn lease_ms(mut self, lease_ms: u64) -> Self {
        self.lease_ms = lease_ms;
        self
    }

    /// How often the poller looks for due or orphaned sagas, milliseconds (default 1000).
    pub fn poll_interval_ms(mut self, poll_interval_ms: u64) -> Self {
        self.poll_interval_ms = poll_interval_ms;
        self
    }

    /// Most sagas claimed per poll (default 32).
    pub fn batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Most sagas driven at once by this engine (default 64).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Retry waits up to this long are slept by the driver holding the lease; longer ones release
    /// the lease and leave the saga to the poller, milliseconds (default 2000).
    pub fn max_local_wait_ms(mut self, max_local_wait_ms: u64) -> Self {
        self.max_local_wait_ms = max_local_wait_ms;
        self
    }

    /// Most writes per group commit (default 256).
    pub fn commit_batch_size(mut self, commit_batch_size: usize) -> Self {
        self.commit_batch_size = commit_batch_size;
        self
    }

    /// Sets the wall clock (default [`SystemClock`]); the engine corrects it to the database's
    /// clock ([`crate::clock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Declares this engine the only one that can reach its store (the embedded system holds an
    /// exclusive lock on its data directory): every lease found at start-up belonged to a dead
    /// predecessor, so the engine expires them all before its first claim and resumes their
    /// sagas at once instead of waiting a lease (docs/architecture.md, "Recovery"). Never set it
    /// when replicas share the store.
    pub fn sole_owner(mut self, sole_owner: bool) -> Self {
        self.sole_owner = sole_owner;
        self
    }

    /// Builds the engine and starts its poller and committer.
    ///
    /// # Errors
    /// [`EngineError::NoRuntime`] outside a tokio runtime; [`EngineError::DuplicateDefinition`];
    /// [`EngineError::InvalidConfig`] for a zero lease, poll interval, batch or concurrency.
    pub fn build(self) -> Result<Engine, EngineError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EngineError::NoRuntime)?;
        if self.lease_ms < 3 {
            return Err(EngineError::InvalidConfig("lease_ms must be at least 3"));
        }
        if self.poll_interval_ms == 0 || self.batch_size == 0 || self.concurrency == 0 {
            return Err(EngineError::InvalidConfig(
                "poll interval, batch size and concurrency must be positive",
            ));
        }
        let mut definitions = HashMap::new();
        let mut latest: HashMap<String, Arc<SagaDefinition>> = HashMap::new();
        for def in self.definitions {
            let def = Arc::new(def);
            let key = (def.name().to_owned(), def.version());
            if definitions.insert(key, def.clone()).is_some() {
                return Err(EngineError::DuplicateDefinition {
                    name: def.name().to_owned(),
                    version: def.version(),
                });
            }
            let newer = latest
                .get(def.name())
                .is_none_or(|current| current.version() < def.version());
            if newer {
                latest.insert(def.name().to_owned(), def);
            }
        }
        let mut known: Vec<(String, u32)> = definitions.keys().cloned().collect();
        known.sort();
        let owner = self
            .owner
            .unwrap_or_else(|| format!("engine-{}", uuid::Uuid::new_v4().simple()));
        // One committer per parallel writer the store supports (SQLite: one; PostgreSQL: a few),
        // each owning the sagas whose id hashes to it, so one saga's writes stay in order.
        let (committers, committer_tasks) =
            committer::start(&self.store, self.commit_batch_size, &runtime);
        let (rested, _) = broadcast::channel(RESTED_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            store: self.store,
            definitions,
            latest,
            owner,
            lease_ms: i64::try_from(self.lease_ms).unwrap_or(i64::MAX),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            batch_size: self.batch_size,
            max_local_wait_ms: i64::try_from(self.max_local_wait_ms).unwrap_or(i64::MAX),
            permits: Arc::new(Semaphore::new(self.concurrency)),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            running: Mutex::new(HashMap::new()),
            next_task: AtomicU64::new(0),
            committers,
            rested,
            kick: Notify::new(),
            clock: CorrectedClock::new(self.clock),
            known,
            unknown_counted_at: AtomicI64::new(i64::MIN),
            backlog: AtomicBool::new(false),
            sole_owner: self.sole_owner,
            taken_over: Mutex::new(std::collections::HashSet::new()),
        });
        saga_metrics::initialize(shared.latest.keys().map(String::as_str));
        let poller = runtime.spawn(poller::run_poller(shared.clone()));
        tracing::info!(owner = %shared.owner, "saga engine started");
        Ok(Engine {
            inner: shared,
            background: Arc::new(tokio::sync::Mutex::new(Some(Background {
                committers: committer_tasks,
                poller,
            }))),
        })
    }
}
