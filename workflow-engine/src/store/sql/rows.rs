//! The rows of the two saga tables and the statements that write them: decoding a state row
//! or a journal row, the insert, the fenced update, the journal append, and the parking of a
//! row that does not decode.

use serde_json::Value;
use sqlx::AnyConnection;

use crate::{
    journal::{self, EncodedEvent, Event, JournalEntry},
    state::{Position, SagaId, SagaState},
    store::StoreError,
};

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

/// Most journal rows in one INSERT statement (7 parameters each; PostgreSQL allows 65535).
const ROWS_PER_INSERT: usize = 500;

/// Parks a saga whose row does not decode (a step output serde_json cannot read back, a value
/// written by a newer build, a manual edit) in NEEDS_ATTENTION, with the reason journaled, so
/// that it no longer sits at the head of every poll (docs/operations.md, "Sagas that need
/// attention"). The rest of the row is left as it is for the operator to inspect.
pub(super) async fn park_unreadable(
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
pub(super) struct SagaRow {
    pub(super) id: String,
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
    pub(super) last_seq: i64,
    in_doubt: i64,
    generation: i64,
    undelivered: i64,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("column {what} out of range"))
}

impl SagaRow {
    pub(super) fn into_state(self) -> Result<SagaState, StoreError> {
        let outputs = match serde_json::from_str::<Value>(&self.outputs)? {
            Value::Object(map) => map,
            _ => return Err(StoreError::Corrupt("outputs is not a JSON object".into())),
        };
        let id: SagaId = self
            .id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("saga id {:?}", self.id)))?;
        let position = Position::from_columns(
            id,
            self.status.parse()?,
            self.phase.parse()?,
            self.step_index
                .map(u32::try_from)
                .transpose()
                .map_err(|_| corrupt("step_index"))?,
            self.current_step,
        )?;
        Ok(SagaState {
            id,
            definition_name: self.definition_name,
            definition_version: u32::try_from(self.definition_version)
                .map_err(|_| corrupt("definition_version"))?,
            business_key: self.business_key,
            position,
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

pub(super) async fn insert_row(
    conn: &mut AnyConnection,
    s: &SagaState,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(INSERT)
        .bind(s.id.to_string())
        .bind(s.definition_name.clone())
        .bind(i64::from(s.definition_version))
        .bind(s.business_key.clone())
        .bind(s.status().as_str())
        .bind(s.phase().as_str())
        .bind(s.step_index().map(i64::from))
        .bind(s.current_step().map(str::to_owned))
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
pub(super) async fn update_row(
    conn: &mut AnyConnection,
    s: &SagaState,
    expected_token: i64,
    expected_seq: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(UPDATE)
        .bind(s.id.to_string())
        .bind(s.status().as_str())
        .bind(s.phase().as_str())
        .bind(s.step_index().map(i64::from))
        .bind(s.current_step().map(str::to_owned))
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

pub(super) async fn insert_entries(
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
pub(super) struct EntryRow {
    saga_id: String,
    seq: i64,
    at: i64,
    event_type: String,
    step: Option<String>,
    attempt: Option<i64>,
    detail: String,
}

impl EntryRow {
    pub(super) fn into_entry(self) -> Result<JournalEntry, StoreError> {
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
