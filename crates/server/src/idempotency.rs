//! The idempotency store of docs/architecture.md, "The service contract": every mutating command
//! runs through [`execute`], which stores the command's idempotency key, a hash of the request and
//! the outcome in the **same transaction** as the effect.
//!
//! ```text
//!  BEGIN (IMMEDIATE on SQLite)
//!  INSERT key ... ON CONFLICT DO NOTHING ──0 rows──▶ read stored row ─┬─ same hash ─▶ replay outcome
//!       │ 1 row (we own the key; a racer waits on it)                 └─ other hash ▶ ALREADY_EXISTS
//!  SAVEPOINT; effect(conn)
//!       ├─ Ok(resp)            ─▶ RELEASE; store encoded resp ─────────▶ COMMIT
//!       ├─ business error      ─▶ ROLLBACK TO SAVEPOINT; store status ──▶ COMMIT  (replayed later)
//!       └─ transient/internal  ─▶ ROLLBACK everything (key too): a retry runs the effect again
//! ```
//!
//! A crash before COMMIT leaves neither the effect nor the key; after COMMIT a repeat finds the key
//! and replays. Business errors (`NOT_FOUND`, `FAILED_PRECONDITION`, `ALREADY_EXISTS`,
//! `INVALID_ARGUMENT`) are stored so that a repeat gets the same answer even if the world changed
//! meanwhile (for example stock was restocked after an OUT_OF_STOCK). A value the database refuses
//! ([`ServiceError::refused_value`], e.g. PostgreSQL's 22021 for a U+0000 in text) is answered
//! INVALID_ARGUMENT and rolls everything back, key included: nothing is written.
//!
//! Every service database has this table (in its first migration):
//!
//! ```sql
//! CREATE TABLE idempotency_keys (
//!     idempotency_key TEXT PRIMARY KEY,
//!     command         TEXT NOT NULL,
//!     request_hash    BYTEA NOT NULL,  -- BLOB on SQLite
//!     status_code     BIGINT,          -- 0 = OK, else the gRPC code of a stored business error
//!     response        BYTEA,           -- encoded response, or the error's status details
//!     message         TEXT,            -- the error's message
//!     created_at      BIGINT NOT NULL  -- unix ms
//! );
//! ```
//!
//! The third rule of that section, the late-action rule (a compensation that came first makes the
//! action fail with `COMPENSATED_BEFORE_ACTION`), is [`late_action`], run inside the effect.

pub mod late_action;

use futures::future::BoxFuture;
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{Acquire, AnyConnection};
use tonic::{Code, Status};

use crate::{
    db::{Db, now_ms},
    error::ServiceError,
};

/// The result of [`execute_detailed`].
#[derive(Debug, Clone, PartialEq)]
pub struct Executed<T> {
    /// The response: fresh, or the stored one.
    pub response: T,
    /// True when the key had been seen and the stored response was returned.
    pub replayed: bool,
}

/// Runs `effect` at most once per `key` (see the module docs).
///
/// `command` names the RPC (for example `"inventory.DeductInventory"`) and is part of the request
/// hash, so a key reused for another command is also rejected.
///
/// # Errors
/// - `ALREADY_EXISTS` (reason `IDEMPOTENCY_KEY_REUSED`) when `key` was used with another request;
/// - the stored business error when the first run failed with one;
/// - `UNAVAILABLE` / `INTERNAL` when the database fails (nothing was stored; retry with the key).
pub async fn execute<Req, Resp, F>(
    db: &Db,
    command: &'static str,
    key: &str,
    request: &Req,
    effect: F,
) -> Result<Resp, Status>
where
    Req: Message,
    Resp: Message + Default,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>,
{
    execute_detailed(db, command, key, request, effect)
        .await
        .map(|e| e.response)
}

/// [`execute`] as a mutating RPC's whole answer: the response (fresh or stored) wrapped for
/// tonic, which is how every service's command handler ends.
///
/// # Errors
/// As [`execute`].
pub async fn respond<Req, Resp, F>(
    db: &Db,
    command: &'static str,
    key: &str,
    request: &Req,
    effect: F,
) -> Result<tonic::Response<Resp>, Status>
where
    Req: Message,
    Resp: Message + Default,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>,
{
    execute(db, command, key, request, effect)
        .await
        .map(tonic::Response::new)
}

/// Like [`execute`], and also says whether the response was replayed.
///
/// # Errors
/// As [`execute`].
pub async fn execute_detailed<Req, Resp, F>(
    db: &Db,
    command: &'static str,
    key: &str,
    request: &Req,
    effect: F,
) -> Result<Executed<Resp>, Status>
where
    Req: Message,
    Resp: Message + Default,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>,
{
    let hash = request_hash(command, request);
    let mut tx = db.begin().await.map_err(ServiceError::from)?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, command, request_hash, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(command)
    .bind(hash.clone())
    .bind(now_ms())
    .execute(&mut *tx)
    .await
    .map_err(ServiceError::from)?
    .rows_affected()
        == 1;

    if !claimed {
        let stored: Option<StoredRow> = sqlx::query_as(
            "SELECT request_hash, status_code, response, message \
             FROM idempotency_keys WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ServiceError::from)?;
        drop(tx);
        let Some(stored) = stored else {
            return Err(ServiceError::Unavailable(
                "idempotency key is being processed; retry".into(),
            )
            .into());
        };
        return replay(command, key, &hash, stored).map(|response| Executed {
            response,
            replayed: true,
        });
    }

    let mut savepoint = (&mut *tx).begin().await.map_err(ServiceError::from)?;
    let outcome = effect(&mut savepoint).await;
    let (code, bytes, message, result) = match outcome {
        Ok(response) => {
            savepoint.commit().await.map_err(ServiceError::from)?;
            (0_i64, response.encode_to_vec(), None, Ok(response))
        }
        Err(err) if is_business(&err) => {
            savepoint.rollback().await.map_err(ServiceError::from)?;
            let status = Status::from(err);
            (
                i64::from(i32::from(status.code())),
                status.details().to_vec(),
                Some(status.message().to_owned()),
                Err(status),
            )
        }
        Err(err) => return Err(err.into()),
    };
    sqlx::query(
        "UPDATE idempotency_keys SET status_code = $1, response = $2, message = $3 \
         WHERE idempotency_key = $4",
    )
    .bind(code)
    .bind(bytes)
    .bind(message)
    .bind(key)
    .execute(&mut *tx)
    .await
    .map_err(ServiceError::from)?;
    tx.commit().await.map_err(ServiceError::from)?;
    result.map(|response| Executed {
        response,
        replayed: false,
    })
}

/// Reads the committed outcome of `key` without claiming it (no transaction, no write).
///
/// For commands whose effect needs a slow external call (the payment gateway) that must not run
/// inside a database transaction: check for a replay first, make the call, then record the result
/// with [`execute`], which checks the key again atomically.
///
/// Returns `Ok(None)` when the key is unknown (or its first run has not committed yet),
/// `Ok(Some(response))` when a response was stored for this very request.
///
/// # Errors
/// - `ALREADY_EXISTS` (reason `IDEMPOTENCY_KEY_REUSED`) when `key` was used with another request;
/// - the stored business error when the first run failed with one;
/// - `UNAVAILABLE` / `INTERNAL` when the database fails.
pub async fn lookup<Req, Resp>(
    db: &Db,
    command: &'static str,
    key: &str,
    request: &Req,
) -> Result<Option<Resp>, Status>
where
    Req: Message,
    Resp: Message + Default,
{
    let stored: Option<StoredRow> = sqlx::query_as(
        "SELECT request_hash, status_code, response, message \
         FROM idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(db.pool())
    .await
    .map_err(ServiceError::from)?;
    match stored {
        // A row without an outcome is never committed (claim and outcome share a transaction);
        // treat it as unknown.
        None
        | Some(StoredRow {
            status_code: None, ..
        }) => Ok(None),
        Some(stored) => replay(command, key, &request_hash(command, request), stored).map(Some),
    }
}

/// SHA-256 of the command name and the request's protobuf encoding.
pub fn request_hash<Req: Message>(command: &str, request: &Req) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(command.as_bytes());
    hasher.update([0]);
    hasher.update(request.encode_to_vec());
    hasher.finalize().to_vec()
}

fn is_business(err: &ServiceError) -> bool {
    // A value the database refused is not an outcome to keep: nothing is written for it.
    !err.is_refused_value()
        && matches!(
            err,
            ServiceError::InvalidArgument(_)
                | ServiceError::NotFound(_)
                | ServiceError::AlreadyExists { .. }
                | ServiceError::FailedPrecondition { .. }
        )
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    request_hash: Vec<u8>,
    status_code: Option<i64>,
    response: Option<Vec<u8>>,
    message: Option<String>,
}

fn replay<Resp: Message + Default>(
    command: &str,
    key: &str,
    hash: &[u8],
    stored: StoredRow,
) -> Result<Resp, Status> {
    if stored.request_hash != hash {
        return Err(ServiceError::AlreadyExists {
            reason: "IDEMPOTENCY_KEY_REUSED",
            message: format!(
                "idempotency key {key:?} was already used with a different request ({command})"
            ),
        }
        .into());
    }
    let bytes = stored.response.unwrap_or_default();
    match stored.status_code {
        Some(0) => Resp::decode(bytes.as_slice()).map_err(|e| {
            ServiceError::Internal(anyhow::Error::new(e).context("stored response")).into()
        }),
        Some(code) => {
            let code = Code::from_i32(i32::try_from(code).unwrap_or(2));
            Err(Status::with_details(
                code,
                stored.message.unwrap_or_default(),
                bytes.into(),
            ))
        }
        None => Err(
            ServiceError::Unavailable("idempotency key is being processed; retry".into()).into(),
        ),
    }
}
