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
use serde_json::Value;
use sqlx::{AnyConnection, migrate::Migrator};

use super::{
    Decide, ListFilter, OperatorError, PrunedSagas, SagaStore, StoreError, Write, WriteOutcome,
};
use crate::{
    journal::{self, EncodedEvent, Event, JournalEntry},
    recovery,
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

const INSERT: &str = concat!(
    "INSERT INTO sagas (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23, $24, $25, $26) ON CONFLICT DO NOTHING"
);

const UPDATE: &str = "UPDATE sagas SET status = $2, phase = $3, step_index = $4, current_step = $5, \
     attempt = $6, outputs = $7, compensation_plan = $8, next_attempt_at = $9, lease_owner = $10, \
     lease_expires_at = $11, fencing_token = $12, updated_at = $13, last_error = $14, \
     failure_reason = $15, last_seq = $16, in_doubt = $19, generation = $20, undelivered = $21 \
     WHERE id = $1 AND fencing_token = $17 AND last_seq = $18";

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

const CLOCK_SQLITE: &str = concat!("SELECT ", sqlite_now!());
const CLOCK_POSTGRES: &str = concat!("SELECT ", postgres_now!());

// A lease counts as expired only when it expired by the caller's clock *and* by the database's.
// Released and due, or orphaned (whatever its next attempt time).
const DUE_SQLITE: &str = concat!(
    " FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING') \
     AND ((lease_owner IS NULL AND next_attempt_at <= $1) OR lease_expires_at < MIN($1, ",
    sqlite_now!(),
    "))"
);

const DUE_POSTGRES: &str = concat!(
    " FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING') \
     AND ((lease_owner IS NULL AND next_attempt_at <= $1) OR lease_expires_at < LEAST($1, ",
    postgres_now!(),
    "))"
);

/// `(definition_name = $k AND definition_version = $k+1) OR …` for `count` definitions whose
/// parameters start at `$first`; `1 = 1` for none (every definition).
fn definitions_filter(first: usize, count: usize) -> String {
    if count == 0 {
        return "1 = 1".to_owned();
    }
    let terms: Vec<String> = (0..count)
        .map(|i| {
            let name = first + 2 * i;
            format!(
                "(definition_name = ${name} AND definition_version = ${})",
                name + 1
            )
        })
        .collect();
    format!("({})", terms.join(" OR "))
}

const CLAIM_ONE_SQLITE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM sagas WHERE id = $2 AND status IN ('RUNNING', 'COMPENSATING') \
     AND (lease_owner IS NULL OR lease_expires_at < MIN($1, ",
    sqlite_now!(),
    "))"
);

const CLAIM_ONE_POSTGRES: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM sagas WHERE id = $2 AND status IN ('RUNNING', 'COMPENSATING') \
     AND (lease_owner IS NULL OR lease_expires_at < LEAST($1, ",
    postgres_now!(),
    ")) FOR UPDATE SKIP LOCKED"
);

/// Group committers the engine runs on PostgreSQL ([`SagaStore::write_parallelism`]).
const POSTGRES_WRITERS: usize = 4;

/// Most journal rows in one INSERT statement (7 parameters each; PostgreSQL allows 65535).
const ROWS_PER_INSERT: usize = 500;

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

    async fn claim_rows(
        &self,
        id: Option<SagaId>,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
        definitions: &[(String, u32)],
    ) -> Result<Vec<SagaState>, StoreError> {
        let backend = self.db.backend();
        let due = match backend {
            Backend::Postgres => DUE_POSTGRES,
            Backend::Sqlite => DUE_SQLITE,
        };
        let filter = definitions_filter(3, definitions.len());
        if backend == Backend::Sqlite && id.is_none() {
            // Look before taking SQLite's write lock: most polls find nothing.
            let sql = format!("SELECT id{due} AND {filter} LIMIT $2");
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(1_i64);
            for (name, version) in definitions {
                query = query.bind(name.clone()).bind(i64::from(*version));
            }
            if query.fetch_optional(self.db.pool()).await?.is_none() {
                return Ok(Vec::new());
            }
        }
        let mut tx = self.db.begin().await?;
        let rows: Vec<SagaRow> = match (backend, id) {
            (_, None) => {
                let lock = match backend {
                    Backend::Postgres => " FOR UPDATE SKIP LOCKED",
                    Backend::Sqlite => "",
                };
                let sql = format!(
                    concat!(
                        "SELECT ",
                        columns!(),
                        "{} AND {} ORDER BY next_attempt_at LIMIT $2{}"
                    ),
                    due, filter, lock
                );
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(i64::from(limit));
                for (name, version) in definitions {
                    query = query.bind(name.clone()).bind(i64::from(*version));
                }
                query.fetch_all(&mut *tx).await?
            }
            (Backend::Postgres, Some(id)) => {
                sqlx::query_as(CLAIM_ONE_POSTGRES)
                    .bind(now)
                    .bind(id.to_string())
                    .fetch_all(&mut *tx)
                    .await?
            }
            (Backend::Sqlite, Some(id)) => {
                sqlx::query_as(CLAIM_ONE_SQLITE)
                    .bind(now)
                    .bind(id.to_string())
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut entries = Vec::new();
        for row in rows {
            // Row by row: one row that does not decode must not stop every other claim.
            let (raw_id, raw_seq) = (row.id.clone(), row.last_seq);
            let state = match row.into_state() {
                Ok(state) => state,
                Err(err) => {
                    park_unreadable(&mut tx, &raw_id, raw_seq, now, &err).await?;
                    continue;
                }
            };
            let events = recovery::claim_events(&state, owner, now.saturating_add(lease_ms));
            let (next, new_entries) = journal::append(&state, now, events)?;
            if update_row(&mut tx, &next, state.fencing_token, state.last_seq).await? {
                entries.extend(new_entries);
                claimed.push(next);
            }
        }
        insert_entries(&mut tx, &entries).await?;
        tx.commit().await?;
        self.committed();
        Ok(claimed)
    }
}

/// Parks a saga whose row does not decode (a step output serde_json cannot read back, a value
/// written by a newer build, a manual edit) in NEEDS_ATTENTION, with the reason journaled, so
/// that it no longer sits at the head of every poll (docs/operations.md, "Sagas that need
/// attention"). The rest of the row is left as it is for the operator to inspect.
async fn park_unreadable(
    conn: &mut AnyConnection,
    id: &str,
    last_seq: i64,
    now: i64,
    err: &StoreError,
) -> Result<(), StoreError> {
    tracing::error!(saga.id = id, error = %err, "ALERT: saga row does not decode; parked in NEEDS_ATTENTION");
    let parked = sqlx::query(
        "UPDATE sagas SET status = 'NEEDS_ATTENTION', lease_owner = NULL, \
         lease_expires_at = NULL, updated_at = $1, last_seq = last_seq + 1 \
         WHERE id = $2 AND last_seq = $3",
    )
    .bind(now)
    .bind(id.to_owned())
    .bind(last_seq)
    .execute(&mut *conn)
    .await?;
    if parked.rows_affected() == 1 {
        let encoded = journal::encode(&Event::SagaNeedsAttention {
            reason: format!("the saga's state row cannot be read: {err}"),
        });
        sqlx::query(
            "INSERT INTO saga_journal (saga_id, seq, at, event_type, step, attempt, detail) \
             VALUES ($1, $2, $3, $4, NULL, NULL, $5)",
        )
        .bind(id.to_owned())
        .bind(last_seq + 1)
        .bind(now)
        .bind(encoded.event_type)
        .bind(encoded.detail)
        .execute(&mut *conn)
        .await?;
        metrics::counter!(crate::metrics::UNREADABLE_PARKED).increment(1);
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct SagaRow {
    id: String,
    definition_name: String,
    definition_version: i64,
    business_key: String,
    status: String,
    phase: String,
    step_index: Option<i64>,
    current_step: Option<String>,
    attempt: i64,
    input: String,
    outputs: String,
    compensation_plan: String,
    next_attempt_at: i64,
    lease_owner: Option<String>,
    lease_expires_at: Option<i64>,
    fencing_token: i64,
    trace_context: Option<String>,
    deadline_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    last_error: Option<String>,
    failure_reason: Option<String>,
    last_seq: i64,
    in_doubt: i64,
    generation: i64,
    undelivered: i64,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("column {what} out of range"))
}

impl SagaRow {
    fn into_state(self) -> Result<SagaState, StoreError> {
        let outputs = match serde_json::from_str::<Value>(&self.outputs)? {
            Value::Object(map) => map,
            _ => return Err(StoreError::Corrupt("outputs is not a JSON object".into())),
        };
        Ok(SagaState {
            id: self
                .id
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("saga id {:?}", self.id)))?,
            definition_name: self.definition_name,
            definition_version: u32::try_from(self.definition_version)
                .map_err(|_| corrupt("definition_version"))?,
            business_key: self.business_key,
            status: self.status.parse()?,
            phase: self.phase.parse()?,
            step_index: self
                .step_index
                .map(u32::try_from)
                .transpose()
                .map_err(|_| corrupt("step_index"))?,
            current_step: self.current_step,
            attempt: u32::try_from(self.attempt).map_err(|_| corrupt("attempt"))?,
            input: serde_json::from_str(&self.input)?,
            outputs,
            compensation_plan: serde_json::from_str(&self.compensation_plan)?,
            next_attempt_at: self.next_attempt_at,
            lease_owner: self.lease_owner,
            lease_expires_at: self.lease_expires_at,
            fencing_token: self.fencing_token,
            trace_context: self.trace_context,
            deadline_at: self.deadline_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_error: self
                .last_error
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            failure_reason: self.failure_reason,
            in_doubt: self.in_doubt != 0,
            generation: u32::try_from(self.generation).map_err(|_| corrupt("generation"))?,
            undelivered: u32::try_from(self.undelivered).map_err(|_| corrupt("undelivered"))?,
            last_seq: self.last_seq,
        })
    }
}

fn json_text(value: &impl serde::Serialize) -> String {
    // Serializing plain data (maps, strings, numbers) to a string cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

async fn insert_row(conn: &mut AnyConnection, s: &SagaState) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(INSERT)
        .bind(s.id.to_string())
        .bind(s.definition_name.clone())
        .bind(i64::from(s.definition_version))
        .bind(s.business_key.clone())
        .bind(s.status.as_str())
        .bind(s.phase.as_str())
        .bind(s.step_index.map(i64::from))
        .bind(s.current_step.clone())
        .bind(i64::from(s.attempt))
        .bind(json_text(&s.input))
        .bind(json_text(&s.outputs))
        .bind(json_text(&s.compensation_plan))
        .bind(s.next_attempt_at)
        .bind(s.lease_owner.clone())
        .bind(s.lease_expires_at)
        .bind(s.fencing_token)
        .bind(s.trace_context.clone())
        .bind(s.deadline_at)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.last_error.as_ref().map(json_text))
        .bind(s.failure_reason.clone())
        .bind(s.last_seq)
        .bind(i64::from(s.in_doubt))
        .bind(i64::from(s.generation))
        .bind(i64::from(s.undelivered))
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The fenced update: true when the row still had `expected_token` and `expected_seq`.
async fn update_row(
    conn: &mut AnyConnection,
    s: &SagaState,
    expected_token: i64,
    expected_seq: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(UPDATE)
        .bind(s.id.to_string())
        .bind(s.status.as_str())
        .bind(s.phase.as_str())
        .bind(s.step_index.map(i64::from))
        .bind(s.current_step.clone())
        .bind(i64::from(s.attempt))
        .bind(json_text(&s.outputs))
        .bind(json_text(&s.compensation_plan))
        .bind(s.next_attempt_at)
        .bind(s.lease_owner.clone())
        .bind(s.lease_expires_at)
        .bind(s.fencing_token)
        .bind(s.updated_at)
        .bind(s.last_error.as_ref().map(json_text))
        .bind(s.failure_reason.clone())
        .bind(s.last_seq)
        .bind(expected_token)
        .bind(expected_seq)
        .bind(i64::from(s.in_doubt))
        .bind(i64::from(s.generation))
        .bind(i64::from(s.undelivered))
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn insert_entries(
    conn: &mut AnyConnection,
    entries: &[JournalEntry],
) -> Result<(), sqlx::Error> {
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO saga_journal (saga_id, seq, at, event_type, step, attempt, detail) VALUES ",
        );
        for i in 0..chunk.len() {
            let p = i * 7;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7
            ));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for entry in chunk {
            let encoded = journal::encode(&entry.event);
            query = query
                .bind(entry.saga_id.to_string())
                .bind(entry.seq)
                .bind(entry.at)
                .bind(encoded.event_type)
                .bind(encoded.step)
                .bind(encoded.attempt)
                .bind(encoded.detail);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    saga_id: String,
    seq: i64,
    at: i64,
    event_type: String,
    step: Option<String>,
    attempt: Option<i64>,
    detail: String,
}

impl EntryRow {
    fn into_entry(self) -> Result<JournalEntry, StoreError> {
        let saga_id: SagaId = self
            .saga_id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("saga id {:?}", self.saga_id)))?;
        let event = journal::decode(&EncodedEvent {
            event_type: self.event_type,
            step: self.step,
            attempt: self.attempt,
            detail: self.detail,
        })
        .map_err(|source| journal::JournalError::Decode {
            saga_id,
            seq: self.seq,
            source,
        })?;
        Ok(JournalEntry {
            saga_id,
            seq: self.seq,
            at: self.at,
            event,
        })
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
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
        definitions: &[(String, u32)],
    ) -> Result<Vec<SagaState>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.claim_rows(None, owner, now, lease_ms, limit, definitions)
            .await
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
        owner: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<SagaState>, StoreError> {
        Ok(self
            .claim_rows(Some(id), owner, now, lease_ms, 1, &[])
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

    #[tracing::instrument(skip_all, fields(saga.id = %id), err)]
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
            return Err(StoreError::Unavailable(sqlx::Error::Protocol(
                "saga row changed under its lock".into(),
            ))
            .into());
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
