//! The engine (docs/architecture.md, "The engine" (Scheduling) and "Recovery"): starts sagas,
//! executes their steps, records every result durably, and recovers sagas that another engine (or
//! this one, before a crash) left unfinished.
//!
//! ```text
//!  Engine::start ──Create──┐                        ┌──────────── poller (every poll interval,
//!                          ▼                        │             or kicked): claim_due in batches
//!                   ┌─ committer ─┐  ◀──Transition── driver ×N ◀──┘  (one per leased saga,
//!                   │ group commit│                    │              at most `concurrency`)
//!                   └─────┬───────┘                    ├─ action / compensation / finalizer call
//!                         ▼                            │  (per-attempt timeout, lease renewal)
//!                     SagaStore (one transaction per batch: state rows + journal, fenced)
//! ```
//!
//! - The replica that starts a saga drives it at once: the insert already holds the lease and the
//!   first step's `step_started`.
//! - A driver owns one saga while it holds the lease: it asks [`crate::recovery`] what is next,
//!   calls the action with the step's idempotency key, and records the result together with the
//!   next step's start in **one** fenced commit. A fenced commit means the lease was lost: the
//!   result is thrown away and the driver stops.
//! - The committer batches the writes of all drivers into one transaction (group commit), so many
//!   sagas share one flush. It retries transient database errors for as long as the engine runs,
//!   with capped exponential backoff (never a hot retry loop). There is one committer per parallel
//!   writer of the store (`SagaStore::write_parallelism`: one on SQLite, four on PostgreSQL); a
//!   saga's writes always go to the committer its id hashes to, so they stay in order.
//! - Before every call the driver checks that its lease is valid for at least a third of the
//!   lease duration (renewing it if not) and renews it every third of the lease while the call
//!   runs; so no step of a saga starts after another engine took it over or after it ended.
//! - [`Engine::shutdown`] stops the poller, lets drivers finish the call in flight (bounded by a
//!   grace period), releases their leases, then stops the committer. Every task is owned and
//!   joined.
//!
//! Tracing (docs/operations.md, "Watching"): every attempt of a step, compensation or finalizer
//! runs inside a `saga.step` span (`saga.id`, `saga.definition`, `saga.step`, `saga.attempt`,
//! `saga.phase`, `saga.outcome`) whose parent is the trace context saved when the saga started, set
//! before the span is first entered, so the service calls the step makes (through traced channels)
//! and their server spans join the trace of the request that started the saga — also after a crash
//! or on another replica. A driver whose saga was claimed by the poller (an orphaned lease after a
//! crash, or a saga resumed after a released lease) links each step span to the poller's
//! `saga.claim` span; one resumed by CancelSaga/RetrySaga links to the operator's request. Metrics:
//! [`crate::metrics`].

use std::{
    collections::HashMap,
    fmt,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use rand::Rng;
use sagaflow_telemetry::{propagation, semconv};
use serde_json::Value;
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot},
    task::{AbortHandle, JoinHandle},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, field::Empty};

use crate::{
    clock::{Clock, CorrectedClock, SystemClock},
    definition::{ActionRef, CallKind, SagaDefinition, StepContext, StepError},
    journal::{self, Event},
    metrics::{self as saga_metrics, Facts, InFlight},
    recovery::{self, Next, Refusal},
    state::{SagaId, SagaState, SagaStatus},
    store::{OperatorError, SagaStore, StoreError, Write, WriteOutcome},
};

/// Capacity of the committer's queue: drivers wait when it is full (back-pressure).
pub const COMMIT_QUEUE_CAPACITY: usize = 4096;
/// Capacity of the channel announcing sagas that came to rest; a lagging waiter re-reads the store.
const RESTED_CHANNEL_CAPACITY: usize = 4096;
/// How often the poller counts due sagas of unknown definitions, milliseconds.
const UNKNOWN_COUNT_INTERVAL_MS: i64 = 30_000;
/// Longest pause between retries of a failing database write, milliseconds.
const MAX_WRITE_BACKOFF_MS: u64 = 1_000;

/// An engine failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No registered definition has this name (and version).
    #[error("no saga definition {name:?}{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownDefinition {
        /// The name.
        name: String,
        /// The version, when one was asked for.
        version: Option<u32>,
    },
    /// Two registered definitions have the same name and version.
    #[error("saga definition {name:?} version {version} is registered twice")]
    DuplicateDefinition {
        /// The name.
        name: String,
        /// The version.
        version: u32,
    },
    /// No saga has this id.
    #[error("saga {0} not found")]
    NotFound(SagaId),
    /// The operator's command does not apply (FAILED_PRECONDITION at the admin API).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine is shutting down and accepts no new sagas.
    #[error("the saga engine is shutting down")]
    ShuttingDown,
    /// [`Engine::wait_finished`] gave up.
    #[error("saga {id} is still {status} after waiting")]
    Timeout {
        /// The saga.
        id: SagaId,
        /// Its status when the wait ended.
        status: SagaStatus,
    },
    /// The engine was built outside a tokio runtime.
    #[error("the saga engine must be built inside a tokio runtime")]
    NoRuntime,
    /// A configuration value is out of range.
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(&'static str),
}

/// A lease owner id unique to this process: `<role>-<host>-<pid>-<random>`. The host name and
/// the process id alone are not enough: two containers both run as PID 1, and a restarted
/// process may reuse a PID while its predecessor's leases are still live.
pub fn default_owner(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{role}-{host}-{}-{}",
        std::process::id(),
        suffix.get(..8).unwrap_or(&suffix)
    )
}

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
        let writers = self.store.write_parallelism().max(1);
        let (commit_txs, commit_rxs): (Vec<_>, Vec<_>) = (0..writers)
            .map(|_| mpsc::channel::<CommitRequest>(COMMIT_QUEUE_CAPACITY))
            .unzip();
        let (rested, _) = broadcast::channel(RESTED_CHANNEL_CAPACITY);
        let inner = Arc::new(Inner {
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
            commit_txs,
            rested,
            kick: Notify::new(),
            clock: CorrectedClock::new(self.clock),
            known,
            unknown_counted_at: std::sync::atomic::AtomicI64::new(i64::MIN),
            backlog: std::sync::atomic::AtomicBool::new(false),
            sole_owner: self.sole_owner,
        });
        let stop_committer = CancellationToken::new();
        let committers = commit_rxs
            .into_iter()
            .map(|rx| {
                runtime.spawn(run_committer(
                    inner.store.clone(),
                    rx,
                    self.commit_batch_size.max(1),
                    stop_committer.clone(),
                ))
            })
            .collect();
        saga_metrics::initialize(inner.latest.keys().map(String::as_str));
        let poller = runtime.spawn(run_poller(inner.clone()));
        tracing::info!(owner = %inner.owner, "saga engine started");
        Ok(Engine {
            inner,
            background: Arc::new(tokio::sync::Mutex::new(Some(Background {
                committers,
                poller,
                stop_committer,
            }))),
        })
    }
}

#[derive(Debug)]
struct Background {
    committers: Vec<JoinHandle<()>>,
    poller: JoinHandle<()>,
    stop_committer: CancellationToken,
}

struct CommitRequest {
    write: Write,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

struct Inner {
    store: Arc<dyn SagaStore>,
    definitions: HashMap<(String, u32), Arc<SagaDefinition>>,
    latest: HashMap<String, Arc<SagaDefinition>>,
    owner: String,
    lease_ms: i64,
    poll_interval: Duration,
    batch_size: u32,
    max_local_wait_ms: i64,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    running: Mutex<HashMap<u64, AbortHandle>>,
    next_task: AtomicU64,
    /// One queue per committer; a saga's writes always go to the same one.
    commit_txs: Vec<mpsc::Sender<CommitRequest>>,
    rested: broadcast::Sender<(SagaId, SagaStatus)>,
    kick: Notify,
    clock: CorrectedClock,
    /// (name, version) of every registered definition: the only sagas this engine claims.
    known: Vec<(String, u32)>,
    /// Local unix ms of the last count of due sagas of unknown definitions.
    unknown_counted_at: std::sync::atomic::AtomicI64,
    /// Set when the poller may have left due sagas unclaimed for want of a driver slot.
    backlog: std::sync::atomic::AtomicBool,
    /// Whether this engine is provably the only one on its store (see
    /// [`EngineBuilder::sole_owner`]): every lease found at start-up is orphaned.
    sole_owner: bool,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.owner)
            .field("lease_ms", &self.lease_ms)
            .field("definitions", &self.definitions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The saga engine. Cheap to clone (all clones are one engine). Call [`Engine::shutdown`] before
/// dropping the last clone: the poller keeps the engine alive until then.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    background: Arc<tokio::sync::Mutex<Option<Background>>>,
}

/// What [`Engine::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Drivers that had not finished within the grace period and were aborted (their leases
    /// expire instead of being released).
    pub aborted: usize,
}

impl Engine {
    /// Starts building an engine over `store`.
    pub fn builder(store: Arc<dyn SagaStore>) -> EngineBuilder {
        EngineBuilder {
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

    /// The engine's time, unix ms: its clock corrected to the database's ([`crate::clock`]).
    /// Compute saga deadlines from this.
    pub fn now_ms(&self) -> i64 {
        self.inner.now()
    }

    /// This engine's owner id.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.inner.store
    }

    /// The registered definition `name` at `version`.
    pub fn definition(&self, name: &str, version: u32) -> Option<Arc<SagaDefinition>> {
        self.inner
            .definitions
            .get(&(name.to_owned(), version))
            .cloned()
    }

    /// Starts a saga of the newest registered version of `definition_name`, idempotently on
    /// `business_key`: when a saga with that key exists, returns its id and `false` and changes
    /// nothing. A new saga is driven by this engine at once.
    ///
    /// `trace_context` is the W3C `traceparent` to join (saved with the saga); `deadline_ms` is a
    /// unix-ms deadline after which a saga still before its pivot is compensated with reason
    /// DEADLINE_EXCEEDED.
    ///
    /// # Errors
    /// [`EngineError::UnknownDefinition`], [`EngineError::ShuttingDown`], or
    /// [`EngineError::Store`] when the database fails.
    pub async fn start(
        &self,
        definition_name: &str,
        business_key: &str,
        input: Value,
        trace_context: Option<String>,
        deadline_ms: Option<i64>,
    ) -> Result<(SagaId, bool), EngineError> {
        self.start_as(
            SagaId::new(),
            true,
            definition_name,
            business_key,
            input,
            trace_context,
            deadline_ms,
        )
        .await
    }

    /// Like [`Engine::start`], with a saga id chosen by the caller (the orchestrator uses the
    /// order id, so an order names its saga before the saga exists). A second call with the same
    /// business key returns the existing saga's id and `false`.
    ///
    /// One difference from [`Engine::start`]: when the create's commit reply was lost and the
    /// retry finds the saga, this engine cannot tell its own create from an earlier caller's, so it
    /// does not drive the saga at once; the poller takes it over when its lease expires.
    ///
    /// # Errors
    /// As [`Engine::start`].
    pub async fn start_with_id(
        &self,
        id: SagaId,
        definition_name: &str,
        business_key: &str,
        input: Value,
        trace_context: Option<String>,
        deadline_ms: Option<i64>,
    ) -> Result<(SagaId, bool), EngineError> {
        self.start_as(
            id,
            false,
            definition_name,
            business_key,
            input,
            trace_context,
            deadline_ms,
        )
        .await
    }

    /// `fresh_id`: the id was generated for this call, so finding it already stored can only be
    /// this call's own commit retried after a lost reply.
    #[allow(
        clippy::too_many_arguments,
        reason = "private: the two public starts pass through"
    )]
    #[tracing::instrument(skip_all, fields(saga.definition = definition_name, saga.business_key = business_key, saga.id = %id), err)]
    async fn start_as(
        &self,
        id: SagaId,
        fresh_id: bool,
        definition_name: &str,
        business_key: &str,
        input: Value,
        trace_context: Option<String>,
        deadline_ms: Option<i64>,
    ) -> Result<(SagaId, bool), EngineError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let def = inner.latest.get(definition_name).cloned().ok_or_else(|| {
            EngineError::UnknownDefinition {
                name: definition_name.to_owned(),
                version: None,
            }
        })?;
        let now = inner.now();
        let events = recovery::start_events(
            &def,
            business_key,
            &input,
            trace_context,
            deadline_ms,
            &inner.owner,
            now.saturating_add(inner.lease_ms),
        );
        let (state, entries) =
            journal::begin(id, now, events).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let outcome = inner
            .commit(Write::Create {
                state: state.clone(),
                entries,
            })
            .await?;
        match outcome {
            WriteOutcome::Created => {}
            WriteOutcome::Exists(existing) if existing == id && fresh_id => {}
            WriteOutcome::Exists(existing) => return Ok((existing, false)),
            WriteOutcome::Applied | WriteOutcome::Fenced => {
                return Err(StoreError::Corrupt("unexpected outcome of a create".into()).into());
            }
        }
        tracing::info!(saga.id = %id, "saga started");
        if state.status.is_active() {
            inner.spawn_driver(state, None, now, None);
        } else {
            let _ = inner.rested.send((id, state.status));
        }
        Ok((id, true))
    }

    /// CancelSaga (docs/architecture.md, "Operator commands"): a saga before its pivot moves to
    /// COMPENSATING with reason CANCELED (the current step is compensated too, since it may have
    /// been sent), and any engine still running one of its steps throws the result away. A saga
    /// already compensating is returned unchanged. The compensation starts at once on this engine.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Refused`] with [`Refusal::PastPivot`] or
    /// [`Refusal::Finished`]; [`EngineError::UnknownDefinition`]; [`EngineError::Store`].
    #[tracing::instrument(skip_all, fields(saga.id = %id), err)]
    pub async fn cancel(&self, id: SagaId) -> Result<SagaState, EngineError> {
        let state = self.get(id).await?;
        let def = self.inner.definition_of(&state)?;
        let decide = move |s: &SagaState| recovery::cancel_events(&def, s, s.fencing_token + 1);
        let state = self
            .inner
            .store
            .operator_update(id, self.inner.now(), &decide)
            .await
            .map_err(|e| not_found_as(e, id))?;
        if state.status.is_active() && state.lease_owner.is_none() {
            tracing::warn!(saga.id = %id, "saga canceled: compensating");
            self.inner.spawn_claim(id);
        }
        Ok(state)
    }

    /// RetrySaga (docs/architecture.md, "Operator commands"): resumes a NEEDS_ATTENTION saga from
    /// the step, compensation or finalizer that parked it (journal `operator_retry`, attempts
    /// counted afresh), at once on this engine.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Refused`] with [`Refusal::NotNeedsAttention`];
    /// [`EngineError::Store`].
    #[tracing::instrument(skip_all, fields(saga.id = %id), err)]
    pub async fn retry(&self, id: SagaId) -> Result<SagaState, EngineError> {
        let state = self
            .inner
            .store
            .operator_update(id, self.inner.now(), &recovery::retry_events)
            .await
            .map_err(|e| not_found_as(e, id))?;
        tracing::info!(saga.id = %id, "saga resumed by an operator");
        self.inner.spawn_claim(id);
        Ok(state)
    }

    /// ResolveStep (docs/architecture.md, "Operator commands"): an operator settles the parked
    /// call of a NEEDS_ATTENTION saga by hand — the one case only a person can decide (a pivot
    /// whose outcome stayed unknown, a compensation a service keeps refusing) — and the saga
    /// moves on at once on this engine. The journal keeps who and why (`operator_resolved`).
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Refused`] with [`Refusal::NotNeedsAttention`]
    /// or [`Refusal::NotApplicable`]; [`EngineError::UnknownDefinition`];
    /// [`EngineError::Store`].
    #[tracing::instrument(skip_all, fields(saga.id = %id, resolution = resolution.as_str()), err)]
    pub async fn resolve(
        &self,
        id: SagaId,
        resolution: journal::Resolution,
        operator: &str,
        reason: &str,
    ) -> Result<SagaState, EngineError> {
        let state = self.get(id).await?;
        let def = self.inner.definition_of(&state)?;
        let decide =
            move |s: &SagaState| recovery::resolve_events(&def, s, resolution, operator, reason);
        let state = self
            .inner
            .store
            .operator_update(id, self.inner.now(), &decide)
            .await
            .map_err(|e| not_found_as(e, id))?;
        tracing::warn!(saga.id = %id, operator, reason, resolution = resolution.as_str(),
            "AUDIT: parked call resolved by an operator");
        if state.status.is_active() {
            self.inner.spawn_claim(id);
        }
        Ok(state)
    }

    /// The state row of saga `id`.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Store`].
    pub async fn get(&self, id: SagaId) -> Result<SagaState, EngineError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or(EngineError::NotFound(id))
    }

    /// The journal of saga `id`, in order.
    ///
    /// # Errors
    /// [`EngineError::Store`].
    pub async fn journal(&self, id: SagaId) -> Result<Vec<journal::JournalEntry>, EngineError> {
        Ok(self.inner.store.journal(id).await?)
    }

    /// Waits until saga `id` comes to rest (COMPLETED, COMPENSATED or NEEDS_ATTENTION), at most
    /// `timeout`. Woken by this engine's drivers; re-reads the store every 100 ms for sagas that
    /// other engines drive.
    ///
    /// # Errors
    /// [`EngineError::Timeout`] with the last status; [`EngineError::NotFound`];
    /// [`EngineError::Store`].
    pub async fn wait_finished(
        &self,
        id: SagaId,
        timeout: Duration,
    ) -> Result<SagaState, EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rested = self.inner.rested.subscribe();
        loop {
            let state = self.get(id).await?;
            if !state.status.is_active() {
                return Ok(state);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(EngineError::Timeout {
                    id,
                    status: state.status,
                });
            }
            let recheck = (now + Duration::from_millis(100)).min(deadline);
            loop {
                match tokio::time::timeout_at(recheck, rested.recv()).await {
                    Ok(Ok((rested_id, _))) if rested_id != id => continue,
                    // Ours came to rest, the channel lagged, or it is time to re-read the store.
                    _ => break,
                }
            }
        }
    }

    /// Wakes the poller now instead of at its next interval.
    pub fn kick(&self) {
        self.inner.kick.notify_one();
    }

    /// Graceful shutdown (docs/architecture.md, "The engine" (Scheduling)): stops claiming, lets
    /// drivers finish the call in flight and release their leases for at most `grace`, aborts the
    /// rest (their leases expire), then stops the committer. Idempotent.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.shutdown.cancel();
        inner.tracker.close();
        let mut aborted = 0;
        if tokio::time::timeout(grace, inner.tracker.wait())
            .await
            .is_err()
        {
            let handles: Vec<AbortHandle> = match inner.running.lock() {
                Ok(mut running) => running.drain().map(|(_, h)| h).collect(),
                Err(poisoned) => poisoned.into_inner().drain().map(|(_, h)| h).collect(),
            };
            aborted = handles.len();
            for handle in handles {
                handle.abort();
            }
            inner.tracker.wait().await;
            tracing::warn!(
                aborted,
                "saga drivers aborted at shutdown; their leases will expire"
            );
        }
        if let Some(background) = self.background.lock().await.take() {
            if let Err(err) = background.poller.await {
                tracing::error!(%err, "saga poller failed");
            }
            background.stop_committer.cancel();
            for committer in background.committers {
                if let Err(err) = committer.await {
                    tracing::error!(%err, "saga committer failed");
                }
            }
            tracing::info!(owner = %inner.owner, "saga engine stopped");
        }
        ShutdownReport { aborted }
    }
}

fn not_found_as(err: OperatorError, id: SagaId) -> EngineError {
    match err {
        OperatorError::NotFound => EngineError::NotFound(id),
        OperatorError::Refused(refusal) => EngineError::Refused(refusal),
        OperatorError::Store(err) => EngineError::Store(err),
    }
}

impl Inner {
    /// A driver slot was freed: wake the poller if it left work for want of one.
    fn slot_freed(&self) {
        if self.backlog.swap(false, Ordering::Relaxed) {
            self.kick.notify_one();
        }
    }

    /// The engine's time: its clock corrected to the database's ([`crate::clock`]), unix ms.
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Every [`UNKNOWN_COUNT_INTERVAL_MS`], counts the due sagas of definitions this engine does
    /// not know (it never claims them) into a gauge, and warns when there are any.
    async fn count_unknown_definitions(&self, now: i64) {
        let last = self.unknown_counted_at.load(Ordering::Relaxed);
        let local = self.clock.local_ms();
        if last != i64::MIN && local.saturating_sub(last) < UNKNOWN_COUNT_INTERVAL_MS {
            return;
        }
        self.unknown_counted_at.store(local, Ordering::Relaxed);
        match self.store.count_due_elsewhere(now, &self.known).await {
            Ok(count) => {
                #[allow(clippy::cast_precision_loss)] // a count of sagas fits an f64 exactly
                metrics::gauge!(saga_metrics::UNKNOWN_DEFINITION_DUE).set(count as f64);
                if count > 0 {
                    tracing::warn!(count, known = ?self.known,
                        "due sagas of a definition version this engine does not know: left to a replica that knows it");
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot count sagas of unknown definitions"),
        }
    }

    /// Samples the database's clock when a sample is due; a failure keeps the last offset.
    async fn sync_clock(&self) {
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

    fn definition_of(&self, state: &SagaState) -> Result<Arc<SagaDefinition>, EngineError> {
        self.definitions
            .get(&(state.definition_name.clone(), state.definition_version))
            .cloned()
            .ok_or_else(|| EngineError::UnknownDefinition {
                name: state.definition_name.clone(),
                version: Some(state.definition_version),
            })
    }

    /// Sends a write to the committer and waits for its outcome; counts what the write made
    /// true once it committed ([`crate::metrics`]).
    async fn commit(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let stopped = || StoreError::Unavailable(sqlx::Error::PoolClosed);
        let id = match &write {
            Write::Create { state, .. } | Write::Transition { state, .. } => state.id,
        };
        let facts = Facts::of(&write);
        let shard = usize::try_from(id.0.as_u128() % self.commit_txs.len() as u128).unwrap_or(0);
        self.commit_txs[shard]
            .send(CommitRequest { write, reply })
            .await
            .map_err(|_| stopped())?;
        let outcome = outcome.await.map_err(|_| stopped())??;
        facts.record(&outcome);
        Ok(outcome)
    }

    /// Spawns a tracked driver for a leased saga; `permit` is taken when `None`. `claimed_by`
    /// is the `traceparent` of the span that claimed the saga (its step spans link to it).
    fn spawn_driver(
        self: &Arc<Self>,
        state: SagaState,
        permit: Option<OwnedSemaphorePermit>,
        leased_at: i64,
        claimed_by: Option<String>,
    ) {
        let inner = self.clone();
        self.spawn_tracked(async move {
            let permit = match permit {
                Some(p) => p,
                None => match inner.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            Driver::new(inner.clone(), state, leased_at, claimed_by)
                .run()
                .await;
            drop(permit);
            inner.slot_freed();
        });
    }

    /// Claims saga `id` and drives it, in a tracked task (after CancelSaga and RetrySaga). The
    /// steps it runs link to the current span (the operator's request).
    fn spawn_claim(self: &Arc<Self>, id: SagaId) {
        let inner = self.clone();
        let requested_by = propagation::current_traceparent();
        self.spawn_tracked(async move {
            let Ok(permit) = inner.permits.clone().acquire_owned().await else {
                return;
            };
            inner.sync_clock().await;
            let now = inner.now();
            match inner.store.claim(id, &inner.owner, now, inner.lease_ms).await {
                Ok(Some(state)) => {
                    fail::fail_point!("after_claim");
                    saga_metrics::claimed(1);
                    Driver::new(inner, state, now, requested_by).run().await;
                    drop(permit);
                }
                Ok(None) => inner.kick.notify_one(),
                Err(err) => {
                    tracing::warn!(saga.id = %id, error = %err, "claim failed; the poller will retry");
                }
            }
        });
    }

    fn spawn_tracked(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
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
}

/// The committer: takes writes from every driver and commits them in batches (group commit).
/// Transient database errors are retried indefinitely with capped backoff until the engine
/// stops; a batch failing otherwise is split so that only the bad write fails.
async fn run_committer(
    store: Arc<dyn SagaStore>,
    mut requests: mpsc::Receiver<CommitRequest>,
    batch_size: usize,
    stop: CancellationToken,
) {
    let mut batch: Vec<CommitRequest> = Vec::with_capacity(batch_size);
    loop {
        tokio::select! {
            biased;
            received = requests.recv_many(&mut batch, batch_size) => {
                if received == 0 {
                    break;
                }
            }
            () = stop.cancelled() => {
                // Drivers have finished; answer anything left and stop.
                requests.close();
                while let Ok(req) = requests.try_recv() {
                    batch.push(req);
                }
                if batch.is_empty() {
                    break;
                }
            }
        }
        let writes: Vec<Write> = batch.iter().map(|r| r.write.clone()).collect();
        let outcomes = commit_with_retry(store.as_ref(), &writes, &stop).await;
        match outcomes {
            Ok(outcomes) => {
                for (req, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = req.reply.send(Ok(outcome));
                }
            }
            Err(err) if batch.len() > 1 && !err.is_transient() => {
                tracing::warn!(error = %err, "group commit failed; committing its writes one by one");
                for req in batch.drain(..) {
                    let result =
                        commit_with_retry(store.as_ref(), std::slice::from_ref(&req.write), &stop)
                            .await
                            .and_then(|mut o| {
                                o.pop()
                                    .ok_or_else(|| StoreError::Corrupt("no outcome".into()))
                            });
                    let _ = req.reply.send(result);
                }
            }
            Err(err) => {
                let message = err.to_string();
                let transient = err.is_transient();
                for req in batch.drain(..) {
                    let err = if transient {
                        StoreError::Unavailable(sqlx::Error::Protocol(message.clone()))
                    } else {
                        StoreError::Corrupt(message.clone())
                    };
                    let _ = req.reply.send(Err(err));
                }
            }
        }
        if stop.is_cancelled() && requests.is_closed() && requests.is_empty() {
            break;
        }
    }
}

async fn commit_with_retry(
    store: &dyn SagaStore,
    writes: &[Write],
    stop: &CancellationToken,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut backoff_ms = 10;
    loop {
        match store.commit(writes).await {
            Err(err) if err.is_transient() && !stop.is_cancelled() => {
                tracing::warn!(error = %err, backoff_ms, "saga store write failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                    () = stop.cancelled() => return Err(err),
                }
                backoff_ms = (backoff_ms * 2).min(MAX_WRITE_BACKOFF_MS);
            }
            other => return other,
        }
    }
}

/// The poller: claims due and orphaned sagas in batches, as many as there are free driver slots.
async fn run_poller(inner: Arc<Inner>) {
    if inner.sole_owner {
        match inner.store.expire_leases().await {
            Ok(0) => {}
            Ok(orphaned) => {
                tracing::info!(
                    orphaned,
                    "resuming the sagas a crashed predecessor left running"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot expire the leases left at start-up; they expire on their own")
            }
        }
    }
    let mut again = true;
    loop {
        if !again {
            // Jittered (0.5–1.5 × the interval), so that replicas started together do not poll
            // in lockstep and a recovering fleet spreads its claims.
            let nap = inner.poll_interval.mul_f64(0.5 + jitter());
            tokio::select! {
                () = inner.shutdown.cancelled() => break,
                () = tokio::time::sleep(nap) => {}
                () = inner.kick.notified() => {}
            }
        }
        if inner.shutdown.is_cancelled() {
            break;
        }
        again = false;
        let mut permits = Vec::new();
        while permits.len() < inner.batch_size as usize {
            match inner.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if permits.is_empty() {
            // Every driver slot is busy and there may be more work: the next driver to finish
            // wakes the poller instead of leaving its slot idle until the next interval.
            inner.backlog.store(true, Ordering::Relaxed);
            continue;
        }
        let limit = u32::try_from(permits.len()).unwrap_or(inner.batch_size);
        inner.sync_clock().await;
        let now = inner.now();
        inner.count_unknown_definitions(now).await;
        match inner
            .store
            .claim_due(&inner.owner, now, inner.lease_ms, limit, &inner.known)
            .await
        {
            Ok(claimed) => {
                if claimed.is_empty() {
                    continue;
                }
                fail::fail_point!("after_claim");
                again = claimed.len() == permits.len();
                if again {
                    inner.backlog.store(true, Ordering::Relaxed);
                }
                saga_metrics::claimed(claimed.len());
                // The recovery's own span (a new trace: the poller serves no request). It links
                // to each saga's trace and each step the drivers run links back to it. Created
                // only when something was claimed, so idle polls export nothing.
                let claim = tracing::info_span!(
                    parent: None,
                    "saga.claim",
                    { semconv::SAGA_OWNER } = %inner.owner,
                    { semconv::SAGA_CLAIMED } = i64::try_from(claimed.len()).unwrap_or(i64::MAX),
                );
                for state in &claimed {
                    if let Some(tp) = &state.trace_context {
                        propagation::link_to_traceparent(&claim, tp);
                    }
                }
                let claimed_by = propagation::traceparent_of(&claim);
                let _entered = claim.enter();
                tracing::debug!(count = claimed.len(), "claimed sagas");
                for state in claimed {
                    let Some(permit) = permits.pop() else { break };
                    tracing::debug!(saga.id = %state.id, fencing_token = state.fencing_token, "saga claimed");
                    inner.spawn_driver(state, Some(permit), now, claimed_by.clone());
                }
            }
            Err(err) => tracing::warn!(error = %err, "claiming due sagas failed"),
        }
    }
}

/// Why a driver stops driving its saga.
#[derive(Debug)]
enum Stop {
    /// The saga is at rest or no longer ours.
    Done,
}

/// Drives one leased saga until it rests, waits long, loses its lease or the engine stops.
struct Driver {
    inner: Arc<Inner>,
    state: SagaState,
    /// Unix ms until which this driver knows its lease is valid (measured from before the write
    /// that set it, so it errs early).
    lease_valid_until: i64,
    /// `traceparent` of the span that claimed the saga (the poller's `saga.claim`, an
    /// operator's request): every step span of this driver links to it. `None` for a saga this
    /// engine started.
    claimed_by: Option<String>,
}

impl Driver {
    fn new(
        inner: Arc<Inner>,
        state: SagaState,
        leased_at: i64,
        claimed_by: Option<String>,
    ) -> Self {
        let lease_valid_until = leased_at.saturating_add(inner.lease_ms);
        Self {
            inner,
            state,
            lease_valid_until,
            claimed_by,
        }
    }

    async fn run(mut self) {
        let _in_flight = InFlight::enter();
        let _ = self.drive().await;
        if !self.state.status.is_active() {
            let _ = self.inner.rested.send((self.state.id, self.state.status));
        }
    }

    async fn drive(&mut self) -> Result<(), Stop> {
        let def = match self.inner.definition_of(&self.state) {
            Ok(def) => def,
            Err(err) => {
                tracing::error!(saga.id = %self.state.id, error = %err, "cannot drive saga: releasing it");
                return self.release().await;
            }
        };
        loop {
            if self.inner.shutdown.is_cancelled() {
                return self.release().await;
            }
            let now = self.inner.now();
            let next = match recovery::next(&def, &self.state, now) {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(saga.id = %self.state.id, error = %err, "ALERT: saga parked in NEEDS_ATTENTION");
                    let reason = err.to_string();
                    self.record(vec![Event::SagaNeedsAttention { reason }])
                        .await?;
                    continue;
                }
            };
            match next {
                Next::Idle => return Ok(()),
                Next::Record(events) => self.record(events).await?,
                Next::WaitUntil(at) => {
                    if at - now > self.inner.max_local_wait_ms {
                        return self.release().await;
                    }
                    self.wait_until(at).await?;
                }
                Next::Forward(index) => {
                    let step = &def.steps()[index];
                    let ctx = self.context(&def, step.name(), CallKind::Action);
                    let mut timeout_ms = step.timeout();
                    if let (Some(deadline), true) =
                        (self.state.deadline_at, index < def.point_of_no_return())
                    {
                        let left = u64::try_from(deadline - now).unwrap_or(0).max(1);
                        timeout_ms = timeout_ms.min(left);
                    }
                    self.ensure_lease().await?;
                    fail::fail_point!("before_step_call");
                    let result = self.call(step.action(), ctx, timeout_ms).await?;
                    fail::fail_point!("after_step_reply_before_record");
                    let events = recovery::after_forward(
                        &def,
                        &self.state,
                        index,
                        result,
                        self.inner.now(),
                        jitter(),
                    )
                    .map_err(|e| self.plan_failed(&e))?;
                    self.record(events).await?;
                    fail::fail_point!("after_step_recorded");
                }
                Next::Compensate(index) => {
                    let step = &def.steps()[index];
                    let Some(compensation) = step.compensation_action() else {
                        tracing::error!(saga.id = %self.state.id, step = step.name(), "no compensation to run");
                        return Err(Stop::Done);
                    };
                    let ctx = self.context(&def, step.name(), CallKind::Compensation);
                    self.ensure_lease().await?;
                    let result = self.call(compensation, ctx, step.timeout()).await?;
                    fail::fail_point!("in_compensation");
                    if let Err(err) = &result
                        && !err.retryable
                    {
                        tracing::error!(saga.id = %self.state.id, step = step.name(), error = %err,
                            "ALERT: compensation failed for good; saga needs attention");
                    }
                    let events = recovery::after_compensation(
                        &def,
                        &self.state,
                        index,
                        result,
                        self.inner.now(),
                        jitter(),
                    )
                    .map_err(|e| self.plan_failed(&e))?;
                    self.record(events).await?;
                }
                Next::Finalize => {
                    let Some(finalizer) = def.finalizer() else {
                        return Err(Stop::Done);
                    };
                    let ctx = self.context(&def, crate::definition::FINALIZER, CallKind::Finalizer);
                    self.ensure_lease().await?;
                    let result = self
                        .call(finalizer, ctx, def.finalizer_timeout_ms())
                        .await?;
                    if let Err(err) = &result
                        && !err.retryable
                    {
                        tracing::error!(saga.id = %self.state.id, error = %err,
                            "ALERT: failure finalizer failed for good; saga needs attention");
                    }
                    let events = recovery::after_finalizer(
                        &def,
                        &self.state,
                        result,
                        self.inner.now(),
                        jitter(),
                    );
                    self.record(events).await?;
                }
            }
        }
    }

    fn plan_failed(&self, err: &recovery::PlanError) -> Stop {
        tracing::error!(saga.id = %self.state.id, error = %err, "cannot plan the saga's next step");
        Stop::Done
    }

    fn context(&self, def: &SagaDefinition, step: &'static str, kind: CallKind) -> StepContext {
        // After an operator retry, calls carry the next key generation — except the pivot's
        // action: a pivot is parked only when its outcome is unknown, and its retry must learn
        // the fate of the original request under the original key.
        let pivot = kind == CallKind::Action
            && def
                .step(step)
                .is_some_and(|(_, s)| s.kind() == crate::definition::StepKind::Pivot);
        let generation = if pivot { 0 } else { self.state.generation };
        StepContext {
            saga_id: self.state.id,
            step,
            kind,
            attempt: self.state.attempt,
            idempotency_key: recovery::idempotency_key(self.state.id, step, kind, generation),
            input: self.state.input.clone(),
            outputs: self.state.outputs.clone(),
            deadline_ms: 0,
            deadline: tokio::time::Instant::now(),
            failure_reason: self.state.failure_reason.clone(),
            trace_context: self.state.trace_context.clone(),
        }
    }

    /// Runs one attempt with its timeout, renewing the lease while it runs. A panicking action
    /// counts as a transient INTERNAL failure. `Err` when the lease was lost meanwhile.
    async fn call(
        &mut self,
        action: &ActionRef,
        mut ctx: StepContext,
        timeout_ms: u64,
    ) -> Result<Result<Value, StepError>, Stop> {
        let started = self.inner.now();
        let timer = tokio::time::Instant::now();
        ctx.deadline_ms = started.saturating_add(i64::try_from(timeout_ms).unwrap_or(i64::MAX));
        ctx.deadline = timer
            .checked_add(Duration::from_millis(timeout_ms))
            .unwrap_or_else(|| timer + Duration::from_secs(86_400));
        let step = ctx.step;
        let attempt = ctx.attempt;
        let kind = ctx.kind;
        let span = self.step_span(step, attempt, kind);
        let run = AssertUnwindSafe(action.run(ctx).instrument(span.clone())).catch_unwind();
        let attempt_fut = tokio::time::timeout(Duration::from_millis(timeout_ms), run);
        tokio::pin!(attempt_fut);
        let renew_every =
            Duration::from_millis(u64::try_from(self.inner.lease_ms / 3).unwrap_or(1).max(1));
        loop {
            tokio::select! {
                outcome = &mut attempt_fut => {
                    let result = match outcome {
                        Err(_) => Err(StepError::timed_out(timeout_ms)),
                        Ok(Err(_panic)) => Err(StepError::internal(format!("the {step} call panicked"))),
                        Ok(Ok(result)) => result,
                    };
                    let outcome = match &result {
                        Ok(_) => saga_metrics::OUTCOME_OK,
                        Err(err) if err.retryable => saga_metrics::OUTCOME_TRANSIENT_ERROR,
                        Err(_) => saga_metrics::OUTCOME_BUSINESS_ERROR,
                    };
                    saga_metrics::attempt_finished(
                        &self.state.definition_name,
                        step,
                        kind,
                        outcome,
                        timer.elapsed().as_secs_f64(),
                    );
                    span.record(semconv::SAGA_OUTCOME, outcome);
                    if let Err(err) = &result {
                        span.record(semconv::OTEL_STATUS_CODE, "error");
                        span.in_scope(|| {
                            tracing::info!(saga.id = %self.state.id, saga.step = step, saga.attempt = attempt,
                                error = %err, "step attempt failed");
                        });
                    }
                    return Ok(result);
                }
                () = tokio::time::sleep(renew_every) => self.renew().await?,
            }
        }
    }

    /// The span of one attempt: parented to the saga's stored trace context (before it is first
    /// entered: tracing-opentelemetry ignores a parent set later) and linked to the claim that
    /// handed the saga to this driver.
    fn step_span(&self, step: &'static str, attempt: u32, kind: CallKind) -> tracing::Span {
        let span = tracing::info_span!(
            parent: None,
            "saga.step",
            { semconv::SAGA_ID } = %self.state.id,
            { semconv::SAGA_DEFINITION } = %self.state.definition_name,
            { semconv::SAGA_STEP } = step,
            // i64: tracing-opentelemetry exports unsigned integers as strings.
            { semconv::SAGA_ATTEMPT } = i64::from(attempt),
            { semconv::SAGA_PHASE } = saga_metrics::phase_of(kind),
            { semconv::SAGA_OUTCOME } = Empty,
            { semconv::OTEL_STATUS_CODE } = Empty,
        );
        if let Some(tp) = &self.state.trace_context {
            propagation::set_parent_from_traceparent(&span, tp);
        }
        if let Some(tp) = &self.claimed_by {
            propagation::link_to_traceparent(&span, tp);
        }
        span
    }

    /// Makes sure the lease stays valid for at least a third of its duration before a call.
    async fn ensure_lease(&mut self) -> Result<(), Stop> {
        if self.inner.now().saturating_add(self.inner.lease_ms / 3) >= self.lease_valid_until {
            self.renew().await?;
        }
        Ok(())
    }

    async fn renew(&mut self) -> Result<(), Stop> {
        let now = self.inner.now();
        let until = now.saturating_add(self.inner.lease_ms);
        match self
            .inner
            .store
            .renew_lease(
                self.state.id,
                &self.inner.owner,
                self.state.fencing_token,
                until,
            )
            .await
        {
            Ok(true) => {
                self.lease_valid_until = until;
                self.state.lease_expires_at = Some(until);
                Ok(())
            }
            Ok(false) => {
                saga_metrics::lease_lost(saga_metrics::LOSS_RENEWAL);
                tracing::warn!(saga.id = %self.state.id, "lease lost; stopping this saga's driver");
                Err(Stop::Done)
            }
            Err(err) if now < self.lease_valid_until => {
                tracing::warn!(saga.id = %self.state.id, error = %err, "lease renewal failed; lease still valid");
                Ok(())
            }
            Err(err) => {
                saga_metrics::lease_lost(saga_metrics::LOSS_RENEWAL);
                tracing::warn!(saga.id = %self.state.id, error = %err, "lease renewal failed and the lease expired");
                Err(Stop::Done)
            }
        }
    }

    async fn wait_until(&mut self, at: i64) -> Result<(), Stop> {
        loop {
            let now = self.inner.now();
            if now >= at {
                return Ok(());
            }
            self.ensure_lease().await?;
            let nap = u64::try_from(at - now)
                .unwrap_or(0)
                .min(u64::try_from(self.inner.lease_ms / 3).unwrap_or(1).max(1));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(nap)) => {}
                () = self.inner.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Journals `events` and the resulting state in one fenced commit (renewing the lease).
    async fn record(&mut self, events: Vec<Event>) -> Result<(), Stop> {
        let now = self.inner.now();
        let (mut next, entries) = match journal::append(&self.state, now, events) {
            Ok(x) => x,
            Err(err) => {
                tracing::error!(saga.id = %self.state.id, error = %err, "invalid transition");
                return Err(Stop::Done);
            }
        };
        if next.lease_owner.is_some() {
            next.lease_expires_at = Some(now.saturating_add(self.inner.lease_ms));
        }
        let write = Write::Transition {
            expected_token: self.state.fencing_token,
            expected_seq: self.state.last_seq,
            state: next.clone(),
            entries,
        };
        match self.inner.commit(write).await {
            Ok(WriteOutcome::Applied) => {
                if next.lease_owner.is_some() {
                    self.lease_valid_until = now.saturating_add(self.inner.lease_ms);
                }
                if next.status == SagaStatus::NeedsAttention && self.state.status != next.status {
                    tracing::error!(saga.id = %next.id, step = ?next.current_step,
                        error = ?next.last_error, "ALERT: saga needs attention");
                }
                self.state = next;
                Ok(())
            }
            Ok(_) => {
                tracing::warn!(saga.id = %self.state.id, "write fenced: lease lost, result thrown away");
                Err(Stop::Done)
            }
            Err(err) => {
                tracing::error!(saga.id = %self.state.id, error = %err, "cannot record; the lease will expire and the saga be recovered");
                Err(Stop::Done)
            }
        }
    }

    async fn release(&mut self) -> Result<(), Stop> {
        if self.state.lease_owner.as_deref() != Some(self.inner.owner.as_str()) {
            return Ok(());
        }
        let owner = self.inner.owner.clone();
        self.record(vec![Event::LeaseReleased { owner }]).await
    }
}

/// A uniform random number in `0..=1` for full jitter.
fn jitter() -> f64 {
    rand::rng().random_range(0.0..=1.0)
}
