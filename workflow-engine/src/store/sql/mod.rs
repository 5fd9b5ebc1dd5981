//! [`SqlSagaStore`]: the saga store over `sagaflow_server::Db`, one SQL implementation for both
//! PostgreSQL and SQLite (`$n` placeholders, portable column types; see `sagaflow_server::db`).
//! The only dialect difference is the claim: PostgreSQL selects with `FOR UPDATE SKIP LOCKED` so
//! that replicas claim disjoint batches; SQLite's `BEGIN IMMEDIATE` already serializes writers, and
//! the claim's `UPDATE … WHERE fencing_token = $n` is conditional anyway.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use async_trait::async_trait;
use sagaflow_server::{Backend, Db, Migrations};
use sqlx::migrate::Migrator;

use super::{
    ClaimPlan, Decide, ListFilter, OperatorError, PrunedSagas, SagaStore, StoreError, Write,
    WriteOutcome,
};
use crate::{
    journal::{self, JournalEntry},
    state::{SagaId, SagaState},
};

static POSTGRES: Migrator = sqlx::migrate!("../migrations/workflow/postgres");
static SQLITE: Migrator = sqlx::migrate!("../migrations/workflow/sqlite");

/// The engine's migrations (`migrations/workflow/{postgres,sqlite}`), for
/// `sagaflow_server::Db::connect`.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

macro_rules! columns {
    () => {
        "id, definition_name, definition_version, business_key, status, phase, step_index, \
         current_step, attempt, input, outputs, compensation_plan, next_attempt_at, lease_owner, \
         lease_expires_at, fencing_token, trace_context, deadline_at, created_at, updated_at, \
         last_error, failure_reason, last_seq, in_doubt, generation, undelivered"
    };
}

const SELECT_BY_ID: &str = concat!("SELECT ", columns!(), " FROM sagas WHERE id = $1");

const SELECT_BY_ID_FOR_UPDATE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM sagas WHERE id = $1 FOR UPDATE"
);

/// The database's clock in unix ms, per dialect (docs/architecture.md, "Time").
macro_rules! sqlite_now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}
macro_rules! postgres_now {
    () => {
        "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)"
    };
}

mod claim;
mod rows;

use claim::{DUE_POSTGRES, DUE_SQLITE, definitions_filter};
use rows::{EntryRow, SagaRow, insert_entries, insert_row, update_row};

const CLOCK_SQLITE: &str = concat!("SELECT ", sqlite_now!());
const CLOCK_POSTGRES: &str = concat!("SELECT ", postgres_now!());
/// Group committers the engine runs on PostgreSQL ([`SagaStore::write_parallelism`]).
const POSTGRES_WRITERS: usize = 4;

/// Most saga ids in one DELETE of [`SagaStore::prune_finished`] (one parameter each).
const IDS_PER_DELETE: usize = 500;

/// The oldest finished sagas (docs/operations.md, "Retention"), with their journal lengths; the
/// partial index `sagas_finished` serves it.
const FINISHED_BEFORE: &str = "SELECT id, last_seq FROM sagas \
     WHERE status IN ('COMPLETED', 'COMPENSATED') AND updated_at < $1 \
     ORDER BY updated_at, id LIMIT $2";

/// The saga store over a [`Db`] (PostgreSQL or SQLite).
pub struct SqlSagaStore {
    db: Db,
    commits: AtomicU64,
}

impl fmt::Debug for SqlSagaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlSagaStore")
            .field("backend", &self.db.backend())
            .field("commits", &self.commits.load(Ordering::Relaxed))
            .finish()
    }
}

impl SqlSagaStore {
    /// A store over `db`, whose migrations must include [`MIGRATIONS`] (connect it with
    /// `Db::connect(url, MIGRATIONS, &config)`).
    pub fn new(db: Db) -> Self {
        Self {
            db,
            commits: AtomicU64::new(0),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl SagaStore for SqlSagaStore {
    // Debug level: group commits and polls run without a request (their spans would each be a
    // trace of their own, one per poll interval), so they are not exported by default.
    #[tracing::instrument(level = "debug", skip_all, fields(writes = batch.len()), err)]
    async fn commit(&self, batch: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Lock rows in id order so that two batches never wait on each other in a cycle.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| match &batch[i] {
            Write::Create { state, .. } | Write::Transition { state, .. } => state.id,
        });
        let mut outcomes = vec![WriteOutcome::Fenced; batch.len()];
        let mut entries: Vec<JournalEntry> = Vec::new();
        let mut tx = self.db.begin().await?;
        for i in order {
            outcomes[i] =
                match &batch[i] {
                    Write::Create {
                        state,
                        entries: new,
                    } => {
                        if insert_row(&mut tx, state).await? {
                            entries.extend(new.iter().cloned());
                            WriteOutcome::Created
                        } else {
                            // The conflict was on the business key or on the id (two
                            // deliveries racing to start the same saga with the same id).
                            let existing: String = sqlx::query_scalar(
                                "SELECT id FROM sagas WHERE business_key = $1 OR id = $2 LIMIT 1",
                            )
                            .bind(state.business_key.clone())
                            .bind(state.id.to_string())
                            .fetch_one(&mut *tx)
                            .await?;
                            WriteOutcome::Exists(existing.parse().map_err(|_| {
                                StoreError::Corrupt(format!("saga id {existing:?}"))
                            })?)
                        }
                    }
                    Write::Transition {
                        expected_token,
                        expected_seq,
                        state,
                        entries: new,
                    } => {
                        if update_row(&mut tx, state, *expected_token, *expected_seq).await? {
                            entries.extend(new.iter().cloned());
                            WriteOutcome::Applied
                        } else {
                            WriteOutcome::Fenced
                        }
                    }
                };
        }
        insert_entries(&mut tx, &entries).await?;
        tx.commit().await?;
        self.committed();
        Ok(outcomes)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(owner, limit), err)]
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
        self.claim_rows(None, now, limit, definitions, plan).await
    }

    async fn expire_leases(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE sagas SET lease_expires_at = 0 WHERE status IN ('RUNNING', 'COMPENSATING') \
             AND lease_owner IS NOT NULL",
        )
        .execute(self.db.pool())
        .await?;
        self.committed();
        Ok(done.rows_affected())
    }

    async fn count_due_elsewhere(
        &self,
        now: i64,
        definitions: &[(String, u32)],
    ) -> Result<u64, StoreError> {
        if definitions.is_empty() {
            return Ok(0);
        }
        let due = match self.db.backend() {
            Backend::Postgres => DUE_POSTGRES,
            Backend::Sqlite => DUE_SQLITE,
        };
        let sql = format!(
            "SELECT COUNT(*){due} AND NOT {}",
            definitions_filter(2, definitions.len())
        );
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).bind(now);
        for (name, version) in definitions {
            query = query.bind(name.clone()).bind(i64::from(*version));
        }
        let count = query.fetch_one(self.db.pool()).await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(saga.id = %id), err)]
    async fn claim(
        &self,
        id: SagaId,
        now: i64,
        plan: ClaimPlan<'_>,
    ) -> Result<Option<SagaState>, StoreError> {
        Ok(self
            .claim_rows(Some(id), now, 1, &[], plan)
            .await?
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
        let done = sqlx::query(
            "UPDATE sagas SET lease_expires_at = $1 \
             WHERE id = $2 AND fencing_token = $3 AND lease_owner = $4",
        )
        .bind(lease_expires_at)
        .bind(id.to_string())
        .bind(fencing_token)
        .bind(owner.to_owned())
        .execute(self.db.pool())
        .await?;
        self.committed();
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(skip_all, fields(saga.id = %id), err(level = "debug"))]
    async fn operator_update(
        &self,
        id: SagaId,
        now: i64,
        decide: Decide<'_>,
    ) -> Result<SagaState, OperatorError> {
        let mut tx = self.db.begin().await.map_err(StoreError::from)?;
        let select = match self.db.backend() {
            Backend::Postgres => SELECT_BY_ID_FOR_UPDATE,
            Backend::Sqlite => SELECT_BY_ID,
        };
        let row: Option<SagaRow> = sqlx::query_as(select)
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let state = row.ok_or(OperatorError::NotFound)?.into_state()?;
        let events = decide(&state)?;
        if events.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(state);
        }
        let (next, entries) = journal::append(&state, now, events).map_err(StoreError::from)?;
        let updated = update_row(&mut tx, &next, state.fencing_token, state.last_seq)
            .await
            .map_err(StoreError::from)?;
        if !updated {
            // Impossible while the row is locked; report it as a transient conflict.
            return Err(StoreError::Conflict("saga row changed under its lock".into()).into());
        }
        insert_entries(&mut tx, &entries)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        self.committed();
        Ok(next)
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaState>, StoreError> {
        let row: Option<SagaRow> = sqlx::query_as(SELECT_BY_ID)
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(SagaRow::into_state).transpose()
    }

    async fn find_by_business_key(&self, business_key: &str) -> Result<Option<SagaId>, StoreError> {
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM sagas WHERE business_key = $1")
            .bind(business_key.to_owned())
            .fetch_optional(self.db.pool())
            .await?;
        id.map(|id| {
            id.parse()
                .map_err(|_| StoreError::Corrupt(format!("saga id {id:?}")))
        })
        .transpose()
    }

    async fn journal(&self, id: SagaId) -> Result<Vec<JournalEntry>, StoreError> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT saga_id, seq, at, event_type, step, attempt, detail FROM saga_journal \
             WHERE saga_id = $1 ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(EntryRow::into_entry).collect()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SagaState>, StoreError> {
        let mut sql = String::from(concat!("SELECT ", columns!(), " FROM sagas WHERE 1 = 1"));
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if filter.status.is_some() {
            sql.push_str(&format!(" AND status = ${}", next()));
        }
        if filter.definition_name.is_some() {
            sql.push_str(&format!(" AND definition_name = ${}", next()));
        }
        if filter.created_after.is_some() {
            sql.push_str(&format!(" AND created_at >= ${}", next()));
        }
        if filter.created_before.is_some() {
            sql.push_str(&format!(" AND created_at < ${}", next()));
        }
        if filter.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${b} AND id < ${c}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            next()
        ));
        let mut query = sqlx::query_as::<_, SagaRow>(sqlx::AssertSqlSafe(sql));
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(name) = &filter.definition_name {
            query = query.bind(name.clone());
        }
        if let Some(after) = filter.created_after {
            query = query.bind(after);
        }
        if let Some(before) = filter.created_before {
            query = query.bind(before);
        }
        if let Some((created_at, id)) = filter.after {
            query = query.bind(created_at).bind(created_at).bind(id.to_string());
        }
        query = query.bind(i64::from(filter.limit));
        let rows = query.fetch_all(self.db.pool()).await?;
        // Row by row: an unreadable row (parked by the claim) must not hide every other saga.
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let id = row.id.clone();
                row.into_state()
                    .inspect_err(|err| {
                        tracing::warn!(saga.id = id, error = %err, "saga row does not decode; left out of the listing");
                    })
                    .ok()
            })
            .collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(max_rows), err)]
    async fn prune_finished(
        &self,
        before_ms: i64,
        max_rows: u32,
    ) -> Result<PrunedSagas, StoreError> {
        if max_rows == 0 {
            return Ok(PrunedSagas::default());
        }
        let backend = self.db.backend();
        let mut tx = self.db.begin().await?;
        // PostgreSQL: replicas pruning at once take disjoint sagas. SQLite: BEGIN IMMEDIATE
        // already made this the only writer.
        let select = match backend {
            Backend::Postgres => format!("{FINISHED_BEFORE} FOR UPDATE SKIP LOCKED"),
            Backend::Sqlite => FINISHED_BEFORE.to_owned(),
        };
        let candidates: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(before_ms)
            .bind(i64::from(max_rows))
            .fetch_all(&mut *tx)
            .await?;
        // Whole sagas only, at most `max_rows` rows, but at least one saga.
        let mut ids = Vec::new();
        let mut rows = 0_u64;
        for (id, last_seq) in candidates {
            let cost = 1 + u64::try_from(last_seq).unwrap_or(0);
            if !ids.is_empty() && rows.saturating_add(cost) > u64::from(max_rows) {
                break;
            }
            rows = rows.saturating_add(cost);
            ids.push(id);
        }
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(PrunedSagas::default());
        }
        let mut pruned = PrunedSagas::default();
        for chunk in ids.chunks(IDS_PER_DELETE) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            // The journal first: its rows reference the saga row. The database refuses this
            // delete for a saga that is not finished (migrations/workflow/*/0003_retention.sql).
            let mut journal = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM saga_journal WHERE saga_id IN ({list})"
            )));
            let mut sagas = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM sagas WHERE id IN ({list}) \
                 AND status IN ('COMPLETED', 'COMPENSATED')"
            )));
            for id in chunk {
                journal = journal.bind(id.clone());
                sagas = sagas.bind(id.clone());
            }
            pruned.journal_entries += journal.execute(&mut *tx).await?.rows_affected();
            pruned.sagas += sagas.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        self.committed();
        Ok(pruned)
    }

    async fn clock_ms(&self) -> Result<i64, StoreError> {
        let sql = match self.db.backend() {
            Backend::Postgres => CLOCK_POSTGRES,
            Backend::Sqlite => CLOCK_SQLITE,
        };
        Ok(sqlx::query_scalar(sql).fetch_one(self.db.pool()).await?)
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// SQLite has one writer at a time; PostgreSQL overlaps the round trips of several
    /// committers (each on its own connection).
    fn write_parallelism(&self) -> usize {
        match self.db.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => POSTGRES_WRITERS,
        }
    }
}
