//! The idempotency store of docs/architecture.md, "The service contract": every mutating command
//! runs through [`execute`], which stores the command's idempotency key, a hash of the request and
//! the outcome in the **same transaction** as the effect.
//!
//! That transaction is shared: the [`Db`]'s group commit (docs/architecture.md, "Group commit")
//! takes the commands that arrived together (up to 64, never waiting for more) into one
//! transaction and one COMMIT, each command in a savepoint of its own (a command that arrives
//! alone runs at once, in its caller's task, its transaction its savepoint):
//!
//! ```text
//!  BEGIN (IMMEDIATE on SQLite)                      ── one per batch, on the writer's connection
//!  │ for each command of the batch:
//!  │ SAVEPOINT cmd
//!  │ INSERT key ... ON CONFLICT DO NOTHING ──0 rows──▶ read stored row ─┬─ same hash ─▶ replay outcome
//!  │      │ 1 row (we own the key)                    (stored by an      └─ other hash ▶ ALREADY_EXISTS
//!  │      │                                            earlier batch or command)       (RELEASE cmd)
//!  │ SAVEPOINT effect; effect(conn)
//!  │      ├─ Ok(resp)           ─▶ RELEASE effect; store encoded resp ─▶ RELEASE cmd
//!  │      ├─ business error     ─▶ ROLLBACK TO effect; store status ──▶ RELEASE cmd  (replayed later)
//!  │      └─ transient/internal ─▶ ROLLBACK TO cmd (key too): answered now; a retry runs it again
//!  COMMIT ──▶ the kept commands are answered (COMMIT failed: UNAVAILABLE for every one of them)
//! ```
//!
//! (A batch of one has no `cmd` savepoint: its ROLLBACK TO cmd is the transaction's ROLLBACK.)
//!
//! A crash before COMMIT leaves neither the effect nor the key of any command of the batch; after
//! COMMIT a repeat finds the key and replays. A command is answered only once its outcome is
//! committed (or, rolled back to its savepoint, once nothing of it can commit), so an answered
//! success is durable. Two commands on one key meet in one writer: in one batch the second
//! finds the first's stored outcome and replays it, as it would after the first's commit.
//! Business errors (`NOT_FOUND`, `FAILED_PRECONDITION`, `ALREADY_EXISTS`, `INVALID_ARGUMENT`) are
//! stored so that a repeat gets the same answer even if the world changed meanwhile (for example
//! stock was restocked after an OUT_OF_STOCK). A value the database refuses
//! ([`ServiceError::refused_value`], e.g. PostgreSQL's 22021 for a U+0000 in text) is answered
//! INVALID_ARGUMENT and rolls the command back, key included: nothing is written for it.
//!
//! The effect runs on the batch's connection while the other commands of the batch wait: it
//! makes database statements only (no network call, no wait on anything but the database; the
//! payment gateway is called before [`execute`], with [`lookup`] first), and it never opens a
//! transaction of its own on the same database. A caller that goes away (its RPC canceled) does
//! not stop a queued command: its outcome is stored and a retry replays it (a command running
//! alone in its caller's task is rolled back with it, as a transaction of its own would be).
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
use sqlx::{AnyConnection, Connection};
use tokio::sync::oneshot;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::{
    db::{Db, now_ms},
    error::ServiceError,
    group_commit::{Unit, Verdict},
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
/// hash, so a key reused for another command is also rejected. `effect` runs in this task when
/// the database's writer is idle, otherwise on the group commit's task in a batch with other
/// commands (hence `Send + 'static`: it owns what it uses); it makes database statements only.
///
/// # Errors
/// - `ALREADY_EXISTS` (reason `IDEMPOTENCY_KEY_REUSED`) when `key` was used with another request;
/// - the stored business error when the first run failed with one;
/// - `INVALID_ARGUMENT` (empty field path) when the database refused a value of the request;
///   nothing was stored;
/// - `UNAVAILABLE` / `INTERNAL` when the database fails, the batch's COMMIT included, or the
///   database is closed (retry with the key: nothing was stored, or, when a lost connection hid
///   the COMMIT's fate, the retry replays what was).
pub async fn execute<Req, Resp, F>(
    db: &Db,
    command: &'static str,
    key: &str,
    request: &Req,
    effect: F,
) -> Result<Resp, Status>
where
    Req: Message,
    Resp: Message + Default + Send + 'static,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>
        + Send
        + 'static,
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
    Resp: Message + Default + Send + 'static,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>
        + Send
        + 'static,
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
    Resp: Message + Default + Send + 'static,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>
        + Send
        + 'static,
{
    let (reply, answer) = oneshot::channel();
    let keyed = Keyed {
        command,
        key: key.to_owned(),
        hash: request_hash(command, request),
        effect: Some(effect),
        span: tracing::Span::current(),
        outcome: None,
        reply,
    };
    db.group_commit().submit(key, Box::new(keyed)).await?;
    answer.await.unwrap_or_else(|_| {
        // The batch went away without answering (its runtime ended): the batch may or may
        // not have committed; a retry with the key replays it if it did.
        Err(ServiceError::Unavailable(
            "the command's batch ended without an answer; retry with the same key".into(),
        )
        .into())
    })
}

/// One keyed command on its way through the group commit: claim, replay or effect, outcome
/// (see the module docs), run by the group commit inside the command's savepoint.
struct Keyed<Resp, F> {
    command: &'static str,
    key: String,
    hash: Vec<u8>,
    effect: Option<F>,
    /// The caller's span: the effect's spans stay children of the request's.
    span: tracing::Span,
    outcome: Option<Result<Executed<Resp>, Status>>,
    reply: oneshot::Sender<Result<Executed<Resp>, Status>>,
}

impl<Resp, F> Unit for Keyed<Resp, F>
where
    Resp: Message + Default + Send + 'static,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>
        + Send
        + 'static,
{
    fn run<'a>(&'a mut self, conn: &'a mut AnyConnection) -> BoxFuture<'a, Verdict> {
        let span = self.span.clone();
        Box::pin(
            async move {
                let (verdict, outcome) = match self.apply(conn).await {
                    Ok(done) => done,
                    // Transient, internal or a refused value: the group commit rolls the command's
                    // savepoint back, key included; a retry runs the effect again.
                    Err(err) => (Verdict::Discard, Err(Status::from(err))),
                };
                self.outcome = Some(outcome);
                verdict
            }
            .instrument(span),
        )
    }

    fn finish(self: Box<Self>, instead: Option<Status>) {
        let result = match instead {
            Some(status) => Err(status),
            None => self.outcome.unwrap_or_else(|| {
                Err(
                    ServiceError::Internal(anyhow::anyhow!("a keyed command finished unrun"))
                        .into(),
                )
            }),
        };
        // The caller may have gone (its RPC was canceled): the outcome stands all the same.
        let _ = self.reply.send(result);
    }
}

impl<Resp, F> Keyed<Resp, F>
where
    Resp: Message + Default + Send + 'static,
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Resp, ServiceError>>
        + Send
        + 'static,
{
    /// Claims the key and runs the effect, or replays the key's stored outcome. `Err` means
    /// nothing of the command may stay.
    async fn apply(
        &mut self,
        conn: &mut AnyConnection,
    ) -> Result<(Verdict, Result<Executed<Resp>, Status>), ServiceError> {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (idempotency_key, command, request_hash, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(self.key.as_str())
        .bind(self.command)
        .bind(self.hash.clone())
        .bind(now_ms())
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;

        if !claimed {
            // Stored by an earlier batch, or by an earlier command of this one: either way its
            // outcome is final in this transaction (a command that failed transiently left no
            // row).
            let stored: Option<StoredRow> = sqlx::query_as(
                "SELECT request_hash, status_code, response, message \
                 FROM idempotency_keys WHERE idempotency_key = $1",
            )
            .bind(self.key.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            let Some(stored) = stored else {
                return Err(ServiceError::Unavailable(
                    "idempotency key is being processed; retry".into(),
                ));
            };
            let replayed = replay(self.command, &self.key, &self.hash, stored);
            return Ok((
                Verdict::Keep,
                replayed.map(|response| Executed {
                    response,
                    replayed: true,
                }),
            ));
        }

        let effect = self.effect.take().ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!("a keyed command's effect ran twice"))
        })?;
        let mut savepoint = conn.begin().await?;
        let (code, bytes, message, result) = match effect(&mut savepoint).await {
            Ok(response) => {
                savepoint.commit().await?;
                (0_i64, response.encode_to_vec(), None, Ok(response))
            }
            Err(err) if is_business(&err) => {
                savepoint.rollback().await?;
                let status = Status::from(err);
                (
                    i64::from(i32::from(status.code())),
                    status.details().to_vec(),
                    Some(status.message().to_owned()),
                    Err(status),
                )
            }
            Err(err) => return Err(err),
        };
        sqlx::query(
            "UPDATE idempotency_keys SET status_code = $1, response = $2, message = $3 \
             WHERE idempotency_key = $4",
        )
        .bind(code)
        .bind(bytes)
        .bind(message)
        .bind(self.key.as_str())
        .execute(&mut *conn)
        .await?;
        Ok((
            Verdict::Keep,
            result.map(|response| Executed {
                response,
                replayed: false,
            }),
        ))
    }
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
