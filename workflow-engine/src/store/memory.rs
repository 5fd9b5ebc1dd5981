//! [`MemorySagaStore`]: the saga store in memory, for tests and demos that need no database
//! (nothing survives the process). It keeps every rule of the store interface — one atomic
//! batch per commit, fenced transitions, claims that journal the planner's decision, retention
//! of finished sagas only — and passes the same conformance suite as the SQL store
//! (`store::conformance`, docs/architecture.md, "The engine").

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;

use super::{
    ClaimPlan, Decide, ListFilter, OperatorError, PrunedSagas, SagaStore, StoreError, Write,
    WriteOutcome,
};
use crate::{
    clock::{Clock, SystemClock},
    journal::{self, JournalEntry},
    state::{SagaId, SagaState},
};

/// One saga: its state row and its journal.
#[derive(Debug, Clone)]
struct Saga {
    state: SagaState,
    journal: Vec<JournalEntry>,
}

#[derive(Debug, Default)]
struct Tables {
    sagas: BTreeMap<SagaId, Saga>,
    by_business_key: HashMap<String, SagaId>,
}

/// The saga store in memory. Its own clock plays the database's clock ([`SagaStore::clock_ms`]
/// and the claim's second lease check): the machine's by default, or an injected one
/// ([`MemorySagaStore::with_clock`]) so that tests run the engine on paused tokio time.
pub struct MemorySagaStore {
    tables: Mutex<Tables>,
    clock: Box<dyn Clock>,
    commits: AtomicU64,
}

impl fmt::Debug for MemorySagaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySagaStore")
            .field("sagas", &self.lock().sagas.len())
            .field("commits", &self.commits.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for MemorySagaStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySagaStore {
    /// An empty store on the machine's clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store whose "database clock" is `clock` (give the engine the same clock).
    pub fn with_clock(clock: impl Clock) -> Self {
        Self {
            tables: Mutex::new(Tables::default()),
            clock: Box::new(clock),
            commits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while the lock was held left no half-written saga: every change below is
        // computed first and then stored in one step.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Claims the sagas `pick` selects, in order, with `plan`'s events.
    fn claim_where(
        &self,
        now: i64,
        limit: usize,
        plan: ClaimPlan<'_>,
        pick: impl Fn(&SagaState, i64) -> bool,
    ) -> Result<Vec<SagaState>, StoreError> {
        let database_now = self.clock.now_ms();
        let mut tables = self.lock();
        let mut due: Vec<&Saga> = tables
            .sagas
            .values()
            .filter(|saga| pick(&saga.state, database_now))
            .collect();
        due.sort_by_key(|saga| saga.state.next_attempt_at);
        due.truncate(limit);
        // Decide everything first: one saga the journal refuses fails the claim, and then
        // nothing of it is kept (as a rolled-back transaction).
        let mut claimed = Vec::with_capacity(due.len());
        for saga in due {
            let (next, entries) = journal::append(&saga.state, now, plan(&saga.state))?;
            claimed.push((next, entries));
        }
        let mut states = Vec::with_capacity(claimed.len());
        for (next, entries) in claimed {
            if let Some(saga) = tables.sagas.get_mut(&next.id) {
                saga.state = next.clone();
                saga.journal.extend(entries);
                states.push(next);
            }
        }
        drop(tables);
        if !states.is_empty() {
            self.committed();
        }
        Ok(states)
    }
}

/// Whether a lease counts as expired: by the caller's clock *and* by the database's.
fn lease_expired(state: &SagaState, now: i64, database_now: i64) -> bool {
    state
        .lease_expires_at
        .is_some_and(|expires| expires < now.min(database_now))
}

/// Due: active, and released with its next attempt due, or orphaned.
fn due(state: &SagaState, now: i64, database_now: i64) -> bool {
    state.status().is_active()
        && ((state.lease_owner.is_none() && state.next_attempt_at <= now)
            || lease_expired(state, now, database_now))
}

fn of_definitions(state: &SagaState, definitions: &[(String, u32)]) -> bool {
    definitions.iter().any(|(name, version)| {
        *name == state.definition_name && *version == state.definition_version
    })
}

#[async_trait]
impl SagaStore for MemorySagaStore {
    async fn commit(&self, batch: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tables = self.lock();
        let mut outcomes = Vec::with_capacity(batch.len());
        for write in batch {
            let outcome = match write {
                Write::Create { state, entries } => {
                    let existing = tables
                        .by_business_key
                        .get(&state.business_key)
                        .copied()
                        .or_else(|| tables.sagas.contains_key(&state.id).then_some(state.id));
                    match existing {
                        Some(id) => WriteOutcome::Exists(id),
                        None => {
                            tables
                                .by_business_key
                                .insert(state.business_key.clone(), state.id);
                            tables.sagas.insert(
                                state.id,
                                Saga {
                                    state: state.clone(),
                                    journal: entries.clone(),
                                },
                            );
                            WriteOutcome::Created
                        }
                    }
                }
                Write::Transition {
                    expected_token,
                    expected_seq,
                    state,
                    entries,
                } => match tables.sagas.get_mut(&state.id) {
                    Some(saga)
                        if saga.state.fencing_token == *expected_token
                            && saga.state.last_seq == *expected_seq =>
                    {
                        saga.state = state.clone();
                        saga.journal.extend(entries.iter().cloned());
                        WriteOutcome::Applied
                    }
                    _ => WriteOutcome::Fenced,
                },
            };
            outcomes.push(outcome);
        }
        drop(tables);
        self.committed();
        Ok(outcomes)
    }

    async fn claim_due(
        &self,
        now: i64,
        limit: u32,
        definitions: &[(String, u32)],
        plan: ClaimPlan<'_>,
    ) -> Result<Vec<SagaState>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.claim_where(now, limit, plan, |state, database_now| {
            due(state, now, database_now)
                && (definitions.is_empty() || of_definitions(state, definitions))
        })
    }

    async fn expire_leases(&self) -> Result<u64, StoreError> {
        let mut tables = self.lock();
        let mut expired = 0;
        for saga in tables.sagas.values_mut() {
            if saga.state.status().is_active() && saga.state.lease_owner.is_some() {
                saga.state.lease_expires_at = Some(0);
                expired += 1;
            }
        }
        drop(tables);
        self.committed();
        Ok(expired)
    }

    async fn count_due_elsewhere(
        &self,
        now: i64,
        definitions: &[(String, u32)],
    ) -> Result<u64, StoreError> {
        if definitions.is_empty() {
            return Ok(0);
        }
        let database_now = self.clock.now_ms();
        let count = self
            .lock()
            .sagas
            .values()
            .filter(|saga| {
                due(&saga.state, now, database_now) && !of_definitions(&saga.state, definitions)
            })
            .count();
        Ok(u64::try_from(count).unwrap_or(u64::MAX))
    }

    async fn claim(
        &self,
        id: SagaId,
        now: i64,
        plan: ClaimPlan<'_>,
    ) -> Result<Option<SagaState>, StoreError> {
        Ok(self
            .claim_where(now, 1, plan, |state, database_now| {
                state.id == id
                    && state.status().is_active()
                    && (state.lease_owner.is_none() || lease_expired(state, now, database_now))
            })?
            .into_iter()
            .next())
    }

    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        fencing_token: i64,
        lease_expires_at: i64,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        let renewed = match tables.sagas.get_mut(&id) {
            Some(saga)
                if saga.state.fencing_token == fencing_token
                    && saga.state.lease_owner.as_deref() == Some(owner) =>
            {
                saga.state.lease_expires_at = Some(lease_expires_at);
                true
            }
            _ => false,
        };
        drop(tables);
        self.committed();
        Ok(renewed)
    }

    async fn operator_update(
        &self,
        id: SagaId,
        now: i64,
        decide: Decide<'_>,
    ) -> Result<SagaState, OperatorError> {
        let mut tables = self.lock();
        let saga = tables.sagas.get_mut(&id).ok_or(OperatorError::NotFound)?;
        let events = decide(&saga.state)?;
        if events.is_empty() {
            return Ok(saga.state.clone());
        }
        let (next, entries) =
            journal::append(&saga.state, now, events).map_err(StoreError::from)?;
        saga.state = next.clone();
        saga.journal.extend(entries);
        drop(tables);
        self.committed();
        Ok(next)
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaState>, StoreError> {
        Ok(self.lock().sagas.get(&id).map(|saga| saga.state.clone()))
    }

    async fn find_by_business_key(&self, business_key: &str) -> Result<Option<SagaId>, StoreError> {
        Ok(self.lock().by_business_key.get(business_key).copied())
    }

    async fn journal(&self, id: SagaId) -> Result<Vec<JournalEntry>, StoreError> {
        Ok(self
            .lock()
            .sagas
            .get(&id)
            .map(|saga| saga.journal.clone())
            .unwrap_or_default())
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaState>, StoreError> {
        let tables = self.lock();
        let mut sagas: Vec<&SagaState> = tables
            .sagas
            .values()
            .map(|saga| &saga.state)
            .filter(|s| filter.status.is_none_or(|status| s.status() == status))
            .filter(|s| {
                filter
                    .definition_name
                    .as_ref()
                    .is_none_or(|name| s.definition_name == *name)
            })
            .filter(|s| filter.created_after.is_none_or(|at| s.created_at >= at))
            .filter(|s| filter.created_before.is_none_or(|at| s.created_at < at))
            .filter(|s| {
                filter.after.is_none_or(|(created_at, id)| {
                    s.created_at < created_at || (s.created_at == created_at && s.id < id)
                })
            })
            .collect();
        sagas.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
        sagas.truncate(usize::try_from(filter.limit).unwrap_or(usize::MAX));
        Ok(sagas.into_iter().cloned().collect())
    }

    async fn prune_finished(
        &self,
        before_ms: i64,
        max_rows: u32,
    ) -> Result<PrunedSagas, StoreError> {
        if max_rows == 0 {
            return Ok(PrunedSagas::default());
        }
        let mut tables = self.lock();
        let mut candidates: Vec<(i64, SagaId, u64)> = tables
            .sagas
            .values()
            .filter(|saga| saga.state.status().is_finished() && saga.state.updated_at < before_ms)
            .map(|saga| {
                let entries = u64::try_from(saga.journal.len()).unwrap_or(u64::MAX);
                (saga.state.updated_at, saga.state.id, entries)
            })
            .collect();
        candidates.sort_unstable();
        candidates.truncate(usize::try_from(max_rows).unwrap_or(usize::MAX));
        // Whole sagas only, at most `max_rows` rows, but at least one saga.
        let mut pruned = PrunedSagas::default();
        for (_, id, entries) in candidates {
            let cost = 1 + entries;
            if pruned.sagas > 0 && pruned.rows().saturating_add(cost) > u64::from(max_rows) {
                break;
            }
            if let Some(saga) = tables.sagas.remove(&id) {
                tables.by_business_key.remove(&saga.state.business_key);
                pruned.sagas += 1;
                pruned.journal_entries += entries;
            }
        }
        drop(tables);
        if pruned.sagas > 0 {
            self.committed();
        }
        Ok(pruned)
    }

    async fn clock_ms(&self) -> Result<i64, StoreError> {
        Ok(self.clock.now_ms())
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}
