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
//! The engine is split by responsibility:
//! - this module: [`Engine`] (start, the operator commands, waits, shutdown) and
//!   [`EngineBuilder`];
//! - `committer` (private): the group committer. It batches the writes of all drivers into one
//!   transaction, so many sagas share one flush, and retries transient database errors for as
//!   long as the engine runs, with capped exponential backoff (never a hot retry loop). There is
//!   one committer per parallel writer of the store (`SagaStore::write_parallelism`: one on
//!   SQLite, four on PostgreSQL); a saga's writes always go to the committer its id hashes to,
//!   so they stay in order;
//! - `poller` (private): claims due and orphaned sagas in batches;
//! - `driver` (private): drives one leased saga (tracing of the step calls: see there);
//! - [`crate::planner`]: decides, without I/O, what happens next to a saga.
//!
//! The replica that starts a saga drives it at once: the insert already holds the lease and the
//! first step's `step_started`. [`Engine::shutdown`] stops the poller, lets drivers finish the
//! call in flight (bounded by a grace period), releases their leases, then stops the committer.
//! Every task is owned and joined.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::{
    committer::CommitterTasks,
    definition::SagaDefinition,
    driver, journal, planner,
    shared::Shared,
    state::{SagaId, SagaState},
    store::{OperatorError, SagaStore, StoreError, Write, WriteOutcome},
};

mod builder;

pub use crate::errors::EngineError;
pub use builder::EngineBuilder;

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

#[derive(Debug)]
struct Background {
    committers: CommitterTasks,
    poller: JoinHandle<()>,
}

/// The saga engine. Cheap to clone (all clones are one engine). Call [`Engine::shutdown`] before
/// dropping the last clone: the poller keeps the engine alive until then.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Shared>,
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
        EngineBuilder::new(store)
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
        let events = planner::start_events(
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
        tracing::debug!(saga.id = %id, "saga started");
        if state.status().is_active() {
            driver::spawn(inner, state, None, now, None);
        } else {
            let _ = inner.rested.send((id, state.status()));
        }
        Ok((id, true))
    }

    /// CancelSaga (docs/architecture.md, "Operator commands"): a saga before its pivot moves to
    /// COMPENSATING with reason CANCELED (the current step is compensated too, since it may have
    /// been sent), and any engine still running one of its steps throws the result away. A saga
    /// already compensating is returned unchanged. The compensation starts at once on this engine.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Refused`] with [`Refusal::PastPivot`](crate::planner::Refusal::PastPivot) or
    /// [`Refusal::Finished`](crate::planner::Refusal::Finished); [`EngineError::UnknownDefinition`]; [`EngineError::Store`].
    pub async fn cancel(&self, id: SagaId) -> Result<SagaState, EngineError> {
        self.cancel_by(id, None).await
    }

    /// [`Engine::cancel`] by `operator` (the caller's identity, `token:<id>`, …), which the
    /// journal's `canceled` entry keeps: the audit record of who canceled (docs/operations.md,
    /// "Security").
    ///
    /// # Errors
    /// As [`Engine::cancel`].
    #[tracing::instrument(skip_all, fields(saga.id = %id, operator), err(level = "debug"))]
    pub async fn cancel_by(
        &self,
        id: SagaId,
        operator: Option<&str>,
    ) -> Result<SagaState, EngineError> {
        let state = self.get(id).await?;
        let def = self.inner.definition_of(&state)?;
        let decide =
            move |s: &SagaState| planner::cancel_events(&def, s, s.fencing_token + 1, operator);
        // Before the update: the saga's driver on this engine may see its lease gone at once.
        self.inner.note_takeover(id);
        let state = match self
            .inner
            .store
            .operator_update(id, self.inner.now(), &decide)
            .await
        {
            Ok(state) => state,
            Err(err) => {
                self.inner.was_taken_over(id);
                return Err(not_found_as(err, id));
            }
        };
        if state.status().is_active() && state.lease_owner.is_none() {
            tracing::info!(saga.id = %id, operator, "AUDIT: saga canceled by an operator: compensating");
            driver::spawn_claim(&self.inner, id);
        }
        Ok(state)
    }

    /// RetrySaga (docs/architecture.md, "Operator commands"): resumes a NEEDS_ATTENTION saga from
    /// the step, compensation or finalizer that parked it (journal `operator_retry`, attempts
    /// counted afresh), at once on this engine.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Refused`] with [`Refusal::NotNeedsAttention`](crate::planner::Refusal::NotNeedsAttention);
    /// [`EngineError::Store`].
    pub async fn retry(&self, id: SagaId) -> Result<SagaState, EngineError> {
        self.retry_by(id, None).await
    }

    /// [`Engine::retry`] by `operator` (the caller's identity), which the journal's
    /// `operator_retry` entry keeps: the audit record of who resumed it (docs/operations.md,
    /// "Security").
    ///
    /// # Errors
    /// As [`Engine::retry`].
    #[tracing::instrument(skip_all, fields(saga.id = %id, operator), err(level = "debug"))]
    pub async fn retry_by(
        &self,
        id: SagaId,
        operator: Option<&str>,
    ) -> Result<SagaState, EngineError> {
        let decide = move |s: &SagaState| planner::retry_events(s, operator);
        let state = self
            .inner
            .store
            .operator_update(id, self.inner.now(), &decide)
            .await
            .map_err(|e| not_found_as(e, id))?;
        tracing::info!(saga.id = %id, operator, "AUDIT: saga resumed by an operator");
        driver::spawn_claim(&self.inner, id);
        Ok(state)
    }

    /// ResolveStep (docs/architecture.md, "Operator commands"): an operator settles the parked
    /// call of a NEEDS_ATTENTION saga by hand — the one case only a person can decide (a pivot
    /// whose outcome stayed unknown, a compensation a service keeps refusing) — and the saga
    /// moves on at once on this engine. The journal keeps who and why (`operator_resolved`).
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; [`EngineError::Refused`] with [`Refusal::NotNeedsAttention`](crate::planner::Refusal::NotNeedsAttention)
    /// or [`Refusal::NotApplicable`](crate::planner::Refusal::NotApplicable); [`EngineError::UnknownDefinition`];
    /// [`EngineError::Store`].
    #[tracing::instrument(skip_all, fields(saga.id = %id, resolution = resolution.as_str()), err(level = "debug"))]
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
            move |s: &SagaState| planner::resolve_events(&def, s, resolution, operator, reason);
        let state = self
            .inner
            .store
            .operator_update(id, self.inner.now(), &decide)
            .await
            .map_err(|e| not_found_as(e, id))?;
        tracing::warn!(saga.id = %id, operator, reason, resolution = resolution.as_str(),
            "AUDIT: parked call resolved by an operator");
        if state.status().is_active() {
            driver::spawn_claim(&self.inner, id);
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
            if !state.status().is_active() {
                return Ok(state);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(EngineError::Timeout {
                    id,
                    status: state.status(),
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
            aborted = inner.abort_running();
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
            background.committers.stop().await;
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
