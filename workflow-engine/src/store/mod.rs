//! Storage of saga state rows and journals (docs/architecture.md, "The engine"): the [`SagaStore`]
//! trait and its implementations: [`SqlSagaStore`], written once over `sqlx::Any` for PostgreSQL
//! and SQLite (`sagaflow_server::db`), and [`MemorySagaStore`] for tests; plus the shared
//! conformance suite that both pass (feature `testkit`).
//!
//! Rules every implementation keeps:
//! - a state-row change and its journal entries commit in one transaction ([`Write`]);
//! - every change of an existing row is fenced: `UPDATE … WHERE id = $1 AND fencing_token = $2
//!   AND last_seq = $3`; when no row matches, the writer lost its lease and nothing of its write is
//!   kept ([`WriteOutcome::Fenced`]);
//! - the journal is only appended to while its saga is not finished (the migrations also make the
//!   database refuse updates of journal rows, and deletes unless the saga is COMPLETED or
//!   COMPENSATED); retention deletes a finished saga's row and journal together
//!   ([`SagaStore::prune_finished`], docs/operations.md, "Retention");
//! - claims take due or orphaned sagas in batches and journal what the planner decided for each
//!   ([`ClaimPlan`]: a new fencing token in `lease_acquired`, and `recovered` when another
//!   engine's lease had expired); the store only finds the rows and commits the decision, so a
//!   new backend does not repeat it.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use sagaflow_server::retention::{Prune, PruneFuture, PruneJob, Pruned};

use crate::{
    journal::{Event, JournalEntry, JournalError},
    planner::Refusal,
    state::{InvalidState, SagaId, SagaState, SagaStatus, UnknownValue},
};

mod memory;
mod sql;

#[cfg(feature = "testkit")]
pub mod conformance;

pub use memory::MemorySagaStore;
pub use sql::{MIGRATIONS, SqlSagaStore};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, timed out or busy; retrying may help.
    #[error("saga store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error (a bug or a schema mismatch).
    #[error("saga store: {0}")]
    Database(#[source] sqlx::Error),
    /// A row or journal entry that does not decode.
    #[error("saga store holds an invalid value: {0}")]
    Corrupt(String),
    /// A row changed under the lock its writer held (transient: retrying reads it again).
    #[error("saga store: {0}")]
    Conflict(String),
    /// The group commit that carried this write failed as a whole; every write of the batch
    /// reports the one error.
    #[error(transparent)]
    Batch(Arc<StoreError>),
    /// The engine's committer has stopped (the engine is shutting down): the write was not
    /// committed by this engine. Transient: another replica can take the request.
    #[error("the saga engine's committer has stopped")]
    Stopped,
}

impl StoreError {
    /// Whether retrying the operation may help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Conflict(_) | Self::Stopped => true,
            Self::Batch(err) => err.is_transient(),
            Self::Database(_) | Self::Corrupt(_) => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if sagaflow_server::db::is_transient(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

impl From<JournalError> for StoreError {
    fn from(err: JournalError) -> Self {
        Self::Corrupt(err.to_string())
    }
}

impl From<UnknownValue> for StoreError {
    fn from(err: UnknownValue) -> Self {
        Self::Corrupt(err.to_string())
    }
}

impl From<InvalidState> for StoreError {
    fn from(err: InvalidState) -> Self {
        Self::Corrupt(err.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        Self::Corrupt(format!("JSON: {err}"))
    }
}

/// One write of a batch: the new state row and the journal entries that produced it
/// (`journal::append`). A write API that cannot express an unfenced change (docs/architecture.md,
/// "The engine" (Durability rule)).
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert a new saga, unless its business key exists.
    Create {
        /// The folded state after `entries`.
        state: SagaState,
        /// The first entries (`saga_started`, `lease_acquired`, …).
        entries: Vec<JournalEntry>,
    },
    /// Change a saga the writer holds the lease of.
    Transition {
        /// The fencing token the writer holds.
        expected_token: i64,
        /// The `last_seq` the writer read.
        expected_seq: i64,
        /// The new state.
        state: SagaState,
        /// The entries to append (numbered after `expected_seq`).
        entries: Vec<JournalEntry>,
    },
}

/// What happened to one [`Write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The saga was inserted.
    Created,
    /// A saga with that business key exists already: nothing was written.
    Exists(SagaId),
    /// The transition was committed.
    Applied,
    /// The fencing token or sequence no longer matched: nothing was written; the writer lost
    /// its lease and must throw its result away.
    Fenced,
}

/// Filters and page position of [`SagaStore::list`]. Sagas are listed newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<SagaStatus>,
    /// Only this definition.
    pub definition_name: Option<String>,
    /// Only sagas created at or after this unix ms.
    pub created_after: Option<i64>,
    /// Only sagas created before this unix ms.
    pub created_before: Option<i64>,
    /// Continue after this `(created_at, id)` (the last saga of the previous page).
    pub after: Option<(i64, SagaId)>,
    /// Most sagas returned.
    pub limit: u32,
}

/// What one [`SagaStore::prune_finished`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedSagas {
    /// Saga state rows deleted.
    pub sagas: u64,
    /// Journal entries deleted with them.
    pub journal_entries: u64,
}

impl PrunedSagas {
    /// Every row deleted (state rows and journal entries).
    pub fn rows(&self) -> u64 {
        self.sagas.saturating_add(self.journal_entries)
    }
}

/// Why an operator's command could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No such saga.
    #[error("saga not found")]
    NotFound,
    /// The command does not apply to the saga's state.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The planner's decision for a claim, taken on each claimed saga's current state inside the
/// store's transaction: the events that hand the saga to the claiming engine
/// (`crate::planner::claim_plan` builds it: `lease_acquired` with the next fencing token and the
/// lease's expiry, and `recovered` when another holder's lease had expired).
pub type ClaimPlan<'a> = &'a (dyn Fn(&SagaState) -> Vec<Event> + Send + Sync);

/// A decision taken on a saga's current state inside the store's transaction.
pub type Decide<'a> = &'a (dyn Fn(&SagaState) -> Result<Vec<Event>, Refusal> + Send + Sync);

/// Storage of saga instances (docs/architecture.md, "The engine"). Timestamps and durations are
/// unix ms / ms.
#[async_trait]
pub trait SagaStore: Send + Sync + std::fmt::Debug + 'static {
    /// Commits `batch` in **one** transaction (group commit: many sagas' transitions share one
    /// flush). Each write is fenced on its own: a fenced write is skipped, the others commit.
    ///
    /// # Errors
    /// [`StoreError`]; on error nothing of the batch is committed.
    async fn commit(&self, batch: &[Write]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Claims up to `limit` due or orphaned sagas: status RUNNING or COMPENSATING,
    /// and either released with `next_attempt_at <= now`, or orphaned — a lease expired by `now`
    /// *and* by the database's own clock (so a replica whose clock runs ahead never takes a live
    /// lease), whatever its `next_attempt_at`: backoff earned before a crash does not delay the
    /// recovery (the `recovered` event makes the saga due at once). Each claimed saga gets the events
    /// of `plan` (a new fencing token and lease), journaled with the new row, in one transaction.
    ///
    /// # Errors
    /// [`StoreError`].
    ///
    /// Only sagas of `definitions` (name, version) are claimed — the ones the calling engine can
    /// drive — so that during a rolling upgrade an old replica never takes a saga of a newer
    /// definition version; empty: every definition. A saga whose row does not decode is parked
    /// in NEEDS_ATTENTION with the reason journaled instead of failing the batch.
    async fn claim_due(
        &self,
        now: i64,
        limit: u32,
        definitions: &[(String, u32)],
        plan: ClaimPlan<'_>,
    ) -> Result<Vec<SagaState>, StoreError>;

    /// Expires every lease of an active saga at once (not journaled: the lease expiry is the one
    /// field renewals also move without the journal). Only for an engine that is provably the
    /// only one on the store, at start-up: the leases it finds were left by a dead
    /// predecessor. Returns how many were expired.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn expire_leases(&self) -> Result<u64, StoreError>;

    /// How many sagas are due at `now` whose definition is not one of `definitions` (sagas no
    /// engine with these definitions will ever take); 0 for an empty list.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn count_due_elsewhere(
        &self,
        now: i64,
        definitions: &[(String, u32)],
    ) -> Result<u64, StoreError>;

    /// Claims saga `id` like [`SagaStore::claim_due`] but regardless of `next_attempt_at`;
    /// `None` when it is not active or another engine holds a live lease.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn claim(
        &self,
        id: SagaId,
        now: i64,
        plan: ClaimPlan<'_>,
    ) -> Result<Option<SagaState>, StoreError>;

    /// Extends the lease of saga `id` to `lease_expires_at` if `owner` still holds it with
    /// `fencing_token`. Not journaled. Returns false when the lease was lost.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        fencing_token: i64,
        lease_expires_at: i64,
    ) -> Result<bool, StoreError>;

    /// Applies an operator's command (CancelSaga, RetrySaga) to saga `id` at `now`: reads the
    /// row under a write lock, asks `decide` for the events, commits them. No events: nothing is
    /// written. Returns the resulting state.
    ///
    /// # Errors
    /// [`OperatorError`].
    async fn operator_update(
        &self,
        id: SagaId,
        now: i64,
        decide: Decide<'_>,
    ) -> Result<SagaState, OperatorError>;

    /// The state row of saga `id`.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn get(&self, id: SagaId) -> Result<Option<SagaState>, StoreError>;

    /// The id of the saga started with `business_key`.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn find_by_business_key(&self, business_key: &str) -> Result<Option<SagaId>, StoreError>;

    /// The whole journal of saga `id`, in sequence order.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn journal(&self, id: SagaId) -> Result<Vec<JournalEntry>, StoreError>;

    /// Sagas matching `filter`, newest first.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaState>, StoreError>;

    /// Deletes finished sagas — COMPLETED or COMPENSATED only, never RUNNING, COMPENSATING or
    /// NEEDS_ATTENTION — whose last journal entry is before `before_ms` (unix ms), oldest first,
    /// each with its whole journal, in **one** transaction: at most `max_rows` rows in total
    /// (a saga counts one row plus one per journal entry), but always one saga when one is due,
    /// whatever its size (a journal is never split). Returns what was deleted; nothing when no
    /// finished saga is that old. A later [`SagaStore::get`] of a deleted saga finds nothing,
    /// and a saga started again with the same business key is a new saga (docs/operations.md,
    /// "Retention").
    ///
    /// # Errors
    /// [`StoreError`]; nothing is deleted then.
    async fn prune_finished(
        &self,
        before_ms: i64,
        max_rows: u32,
    ) -> Result<PrunedSagas, StoreError>;

    /// The database's clock, unix ms: the one time line every replica's engine corrects its own
    /// clock to ([`crate::clock`]).
    ///
    /// # Errors
    /// [`StoreError`].
    async fn clock_ms(&self) -> Result<i64, StoreError>;

    /// Number of write transactions committed through this store so far (for benchmarks).
    fn commits(&self) -> u64;

    /// How many [`SagaStore::commit`] calls may usefully run at once (the engine runs that many
    /// group committers). Default 1.
    fn write_parallelism(&self) -> usize {
        1
    }
}

/// The retention job of the workflow database (docs/operations.md, "Retention"): finished sagas
/// and their journals, [`SagaStore::prune_finished`] batch by batch, kept `window` after they
/// finished. Counted under the `workflow` database, tables `sagas` and `saga_journal`.
pub fn finished_sagas_job(store: Arc<dyn SagaStore>, window: Duration) -> PruneJob {
    PruneJob::new("workflow", window, FinishedSagas { store })
}

#[derive(Debug)]
struct FinishedSagas {
    store: Arc<dyn SagaStore>,
}

impl Prune for FinishedSagas {
    fn prune_batch(&self, before_ms: i64, max_rows: u32) -> PruneFuture<'_> {
        Box::pin(async move {
            let pruned = self.store.prune_finished(before_ms, max_rows).await?;
            Ok(vec![
                Pruned {
                    table: "sagas",
                    rows: pruned.sagas,
                },
                Pruned {
                    table: "saga_journal",
                    rows: pruned.journal_entries,
                },
            ])
        })
    }
}
