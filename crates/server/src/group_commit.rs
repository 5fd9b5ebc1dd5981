//! Group commit of keyed commands (docs/architecture.md, "The service contract", "Group commit"):
//! the commands of one [`crate::Db`] that arrive together share one transaction and one COMMIT
//! (one fsync on SQLite), each in a savepoint of its own so that a failing command rolls back
//! only itself.
//!
//! A **batcher** is a task that holds one connection of the pool and runs one batch at a time:
//!
//! ```text
//!  queue ──recv_many(≤ max_batch; never waits for more than what is queued)──▶ batch
//!  BEGIN (IMMEDIATE on SQLite)
//!  for each command:  SAVEPOINT; unit.run(conn)
//!      ├─ Keep     ─▶ RELEASE                 reply held until COMMIT
//!      ├─ Discard  ─▶ ROLLBACK TO SAVEPOINT   reply (the command's own error) at once
//!      └─ panic    ─▶ ROLLBACK TO SAVEPOINT   reply INTERNAL at once
//!  COMMIT ─ok─▶ reply to every kept command
//!         └─failed─▶ every kept command: UNAVAILABLE (retry with the same key)
//!  BEGIN, SAVEPOINT, RELEASE or ROLLBACK TO failed (connection lost, SQLite rolled back by
//!  itself) ─▶ the transaction is dropped (rolled back): every command of the batch not yet
//!  answered gets UNAVAILABLE, and the connection is closed; the next batch takes another.
//! ```
//!
//! What a command does inside its savepoint, and which outcome is kept, is the idempotency
//! store's ([`crate::idempotency`]); this module only batches, isolates and commits.
//!
//! There is one batcher per [`crate::Db`] unless [`crate::PoolConfig::group_commit_writers`]
//! asks for more; a command's key picks its batcher, so two commands on one key always meet in
//! one batcher (in one batch, or one after the other). A batcher starts on the first command
//! and ends when the pool closes (the commands still queued get UNAVAILABLE) or when every
//! [`crate::Db`] handle is gone; one whose runtime ended is started again by the next command.
//!
//! Failpoints (cargo feature `failpoints`, for the crash tests): `group_commit_after_command`
//! (a command's savepoint was released or rolled back), `group_commit_before_commit` (every
//! command ran, COMMIT not sent), `group_commit_after_commit` (COMMIT returned, no reply sent).

use std::{
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{FutureExt, future::BoxFuture};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Transaction, pool::PoolConnection};
use tokio::sync::mpsc;
use tonic::Status;

use crate::{Backend, ServiceError};

/// Commands that may wait for one batcher; a caller beyond that waits to enqueue
/// (back-pressure).
const QUEUE_CAPACITY: usize = 1024;

/// What a command's run inside its savepoint asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Release the savepoint: the command's writes (if any) commit with the batch, and its reply
    /// waits for the COMMIT.
    Keep,
    /// Roll the savepoint back: nothing of the command is written; its reply (its own error)
    /// goes at once.
    Discard,
}

/// One command of a batch, type-erased: run on the batch's connection inside its savepoint,
/// then finished exactly once.
pub(crate) trait Unit: Send + 'static {
    /// Runs the command on `conn` (inside its savepoint) and says whether to keep its writes.
    fn run<'a>(&'a mut self, conn: &'a mut AnyConnection) -> BoxFuture<'a, Verdict>;

    /// Sends the command's reply: its own outcome when `instead` is `None` (kept and committed,
    /// or discarded and rolled back), otherwise `instead` (the batch failed, or the command
    /// panicked).
    fn finish(self: Box<Self>, instead: Option<Status>);
}

type Queue = mpsc::Sender<Box<dyn Unit>>;

/// The group commit of one database: its batchers' queues, each started on first use.
pub(crate) struct GroupCommit {
    pool: AnyPool,
    backend: Backend,
    commits: Arc<AtomicU64>,
    max_batch: usize,
    queues: Vec<Mutex<Option<Queue>>>,
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("backend", &self.backend)
            .field("max_batch", &self.max_batch)
            .field("writers", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// The group commit of `pool`: `writers` batchers (at least 1) of at most `max_batch`
    /// commands (at least 1) each, counting their COMMITs in `commits`. Nothing starts yet.
    pub(crate) fn new(
        pool: AnyPool,
        backend: Backend,
        commits: Arc<AtomicU64>,
        max_batch: usize,
        writers: usize,
    ) -> Self {
        Self {
            pool,
            backend,
            commits,
            max_batch: max_batch.max(1),
            queues: (0..writers.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Commands queued and not yet taken into a batch, over every batcher.
    pub(crate) fn queued(&self) -> usize {
        self.queues
            .iter()
            .filter_map(|slot| {
                let queue = slot.lock().unwrap_or_else(PoisonError::into_inner);
                queue.as_ref().map(|q| q.max_capacity() - q.capacity())
            })
            .sum()
    }

    /// Queues `unit` on the batcher of `key` (starting it if needed). The reply comes through
    /// `unit.finish`; when this returns an error the unit was dropped unfinished.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the database is closed; `INTERNAL` when called outside a tokio
    /// runtime.
    pub(crate) async fn submit(&self, key: &str, mut unit: Box<dyn Unit>) -> Result<(), Status> {
        let slot = &self.queues[self.index(key)];
        // A second try only when the batcher ended between taking its queue and sending (its
        // runtime shut down): the next one is started on this runtime.
        for _ in 0..2 {
            let queue = self.queue(slot)?;
            match queue.send(unit).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => unit = back,
            }
        }
        Err(closed())
    }

    fn index(&self, key: &str) -> usize {
        if self.queues.len() == 1 {
            return 0;
        }
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        usize::try_from(hasher.finish() % self.queues.len() as u64).unwrap_or(0)
    }

    /// The queue of a running batcher for `slot`, starting one when there is none (or it ended).
    fn queue(&self, slot: &Mutex<Option<Queue>>) -> Result<Queue, Status> {
        if self.pool.is_closed() {
            return Err(closed());
        }
        let mut current = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = current.as_ref().filter(|q| !q.is_closed()) {
            return Ok(queue.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Status::from(ServiceError::Internal(anyhow::anyhow!(
                "a keyed command ran outside a tokio runtime"
            )))
        })?;
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let batcher = Batcher {
            pool: self.pool.clone(),
            begin: match self.backend {
                Backend::Sqlite => "BEGIN IMMEDIATE",
                Backend::Postgres => "BEGIN",
            },
            commits: self.commits.clone(),
            max_batch: self.max_batch,
            conn: None,
        };
        runtime.spawn(batcher.run(requests));
        *current = Some(queue.clone());
        Ok(queue)
    }
}

fn closed() -> Status {
    ServiceError::Unavailable("the database is closed; retry with the same key".into()).into()
}

/// One batcher: its connection (kept between batches) and what it needs to run them.
struct Batcher {
    pool: AnyPool,
    begin: &'static str,
    commits: Arc<AtomicU64>,
    max_batch: usize,
    conn: Option<PoolConnection<Any>>,
}

impl Batcher {
    async fn run(mut self, mut requests: mpsc::Receiver<Box<dyn Unit>>) {
        let closing = self.pool.close_event();
        tokio::pin!(closing);
        let mut batch: Vec<Box<dyn Unit>> = Vec::with_capacity(self.max_batch);
        loop {
            tokio::select! {
                biased;
                () = &mut closing => break,
                received = requests.recv_many(&mut batch, self.max_batch) => {
                    if received == 0 {
                        break;
                    }
                }
            }
            self.run_batch(&mut batch).await;
        }
        // Return the connection first: closing the pool waits for it.
        self.conn = None;
        requests.close();
        while let Ok(unit) = requests.try_recv() {
            batch.push(unit);
        }
        for unit in batch.drain(..) {
            unit.finish(Some(closed()));
        }
    }

    /// Runs `batch` in one transaction on the batcher's connection, or on a fresh one when that
    /// connection was lost (its BEGIN failed: nothing ran yet, so taking another is safe).
    /// Leaves `batch` empty, every command finished.
    async fn run_batch(&mut self, batch: &mut Vec<Box<dyn Unit>>) {
        if let Some(conn) = self.conn.as_mut() {
            let ran = match conn.begin_with(self.begin).await {
                Ok(tx) => Ok(commit_batch(tx, batch, &self.commits).await),
                Err(err) => Err(err),
            };
            match ran {
                Ok(true) => return,
                Ok(false) => {
                    self.discard_connection();
                    return;
                }
                Err(err) if connection_lost(&err) => {
                    tracing::debug!(error = %err, "group commit: the held connection is lost; taking another");
                    self.discard_connection();
                }
                // The database said no (SQLite still busy after its timeout, …): the connection
                // is fine, the batch is not run.
                Err(err) => return fail_all(batch, &Status::from(ServiceError::from(err))),
            }
        }
        let mut conn = match self.pool.acquire().await {
            Ok(conn) => conn,
            Err(err) => return fail_all(batch, &Status::from(ServiceError::from(err))),
        };
        let healthy = match conn.begin_with(self.begin).await {
            Ok(tx) => commit_batch(tx, batch, &self.commits).await,
            Err(err) => {
                let lost = connection_lost(&err);
                fail_all(batch, &Status::from(ServiceError::from(err)));
                !lost
            }
        };
        if healthy {
            self.conn = Some(conn);
        } else {
            conn.close_on_drop();
        }
    }

    fn discard_connection(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// Whether `err` says the connection itself failed (I/O, protocol, a crashed SQLite worker)
/// rather than the database refusing a statement.
fn connection_lost(err: &sqlx::Error) -> bool {
    !matches!(err, sqlx::Error::Database(_))
}

/// Every command of `batch` gets `status`; nothing of them ran.
fn fail_all(batch: &mut Vec<Box<dyn Unit>>, status: &Status) {
    for unit in batch.drain(..) {
        unit.finish(Some(status.clone()));
    }
}

/// What became of one command in the batch.
enum Ran {
    /// Its savepoint was released: it commits with the batch.
    Kept,
    /// Its savepoint was rolled back: answer it now, with its own outcome (`None`) or this.
    RolledBack(Option<Status>),
}

/// Runs every command of `batch` in `tx`, each in its savepoint, then commits; answers every
/// command. Returns whether the connection is still fit for another batch.
async fn commit_batch(
    mut tx: Transaction<'_, Any>,
    batch: &mut Vec<Box<dyn Unit>>,
    commits: &AtomicU64,
) -> bool {
    let mut kept: Vec<Box<dyn Unit>> = Vec::with_capacity(batch.len());
    let mut units = batch.drain(..);
    let mut broken = None;
    for mut unit in units.by_ref() {
        match run_one(&mut tx, unit.as_mut()).await {
            Ok(Ran::Kept) => kept.push(unit),
            Ok(Ran::RolledBack(instead)) => unit.finish(instead),
            Err(err) => {
                kept.push(unit);
                broken = Some(err);
                break;
            }
        }
        fail::fail_point!("group_commit_after_command");
    }
    if let Some(err) = broken {
        tracing::warn!(error = %err, commands = kept.len() + units.len(), "group commit: the batch's transaction failed; its commands are answered UNAVAILABLE");
        let status = Status::from(ServiceError::Unavailable(format!(
            "the database failed during the command's batch ({err}); nothing was applied; retry \
             with the same key"
        )));
        for unit in kept.into_iter().chain(units) {
            unit.finish(Some(status.clone()));
        }
        return false;
    }
    drop(units);
    if kept.is_empty() {
        // Every command was rolled back to its savepoint and answered: nothing to commit.
        return tx.rollback().await.is_ok();
    }
    fail::fail_point!("group_commit_before_commit");
    match tx.commit().await {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            fail::fail_point!("group_commit_after_commit");
            for unit in kept {
                unit.finish(None);
            }
            true
        }
        Err(err) => {
            tracing::warn!(error = %err, commands = kept.len(), "group commit: COMMIT failed; its commands are answered UNAVAILABLE");
            // On a lost connection the COMMIT's fate is unknown: a retry with the same key
            // replays the stored outcome if it did commit.
            let status = Status::from(ServiceError::Unavailable(format!(
                "the database failed to commit the command's batch ({err}); retry with the same \
                 key"
            )));
            for unit in kept {
                unit.finish(Some(status.clone()));
            }
            false
        }
    }
}

/// Runs one command inside a savepoint of `tx`: released when the command keeps its writes,
/// rolled back (and the command answered) otherwise.
///
/// # Errors
/// The savepoint could not be taken, released or rolled back: the transaction is unusable.
async fn run_one(tx: &mut Transaction<'_, Any>, unit: &mut dyn Unit) -> Result<Ran, sqlx::Error> {
    let mut savepoint = tx.begin().await?;
    let verdict = AssertUnwindSafe(unit.run(&mut savepoint))
        .catch_unwind()
        .await;
    match verdict {
        Ok(Verdict::Keep) => {
            savepoint.commit().await?;
            Ok(Ran::Kept)
        }
        Ok(Verdict::Discard) => {
            savepoint.rollback().await?;
            Ok(Ran::RolledBack(None))
        }
        Err(_) => {
            tracing::error!("a keyed command panicked; its savepoint is rolled back");
            savepoint.rollback().await?;
            Ok(Ran::RolledBack(Some(Status::from(ServiceError::Internal(
                anyhow::anyhow!("the command panicked"),
            )))))
        }
    }
}
