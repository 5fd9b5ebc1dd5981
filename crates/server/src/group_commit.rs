//! Group commit of keyed commands (docs/architecture.md, "The service contract", "Group commit"):
//! the commands of one [`crate::Db`] that arrive together share one transaction and one COMMIT
//! (one fsync on SQLite), each in a savepoint of its own so that a failing command rolls back
//! only itself.
//!
//! A **writer** holds one connection of the pool between batches and runs one batch at a time on
//! it. A command that finds its writer idle and nothing queued runs at once, in the caller's
//! own task, as a batch of one: no hop to another task, no savepoint (the transaction is its
//! savepoint), so a lone command costs what it cost before the group commit. Otherwise it
//! queues, and the writer's **batcher** task takes what is queued when the running batch ends:
//!
//! ```text
//!  command ─writer idle, queue empty─▶ batch of one, in the caller's task
//!     └─────otherwise─▶ queue ──batcher: recv_many, then the connection, then whatever else
//!                                queued meanwhile (≤ max_batch; never waits for more)──▶ batch
//!  BEGIN (IMMEDIATE on SQLite)
//!  for each command:  SAVEPOINT; unit.run(conn)            (a batch of one: no SAVEPOINT)
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
//! There is one writer per [`crate::Db`] unless [`crate::PoolConfig::group_commit_writers`]
//! asks for more; a command's key picks its writer, so two commands on one key always meet in
//! one writer (in one batch, or one after the other). A batcher starts on the first command that
//! queues and ends when the pool closes (the commands still queued get UNAVAILABLE) or when every
//! [`crate::Db`] handle is gone; one whose runtime ended is started again by the next command.
//! [`GroupCommit::release`] returns the writers' connections when the database closes.
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
        atomic::{AtomicU64, AtomicUsize, Ordering},
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

type Queue = mpsc::Sender<Queued>;

/// A command on its way to a batch, counted in its writer's `pending` until it is dropped:
/// taken into a running batch, or lost with its queue.
struct Queued {
    unit: Box<dyn Unit>,
    _pending: PendingToken,
}

/// One count in [`Shared::pending`], given back on drop.
struct PendingToken(Arc<Shared>);

impl PendingToken {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.pending.fetch_add(1, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for PendingToken {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The group commit of one database: its writers, each with its connection and the queue of
/// its batcher (started on first use).
pub(crate) struct GroupCommit {
    runner: Runner,
    max_batch: usize,
    writers: Vec<Writer>,
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("begin", &self.runner.begin)
            .field("max_batch", &self.max_batch)
            .field("writers", &self.writers.len())
            .finish_non_exhaustive()
    }
}

/// One writer: its batcher's queue and what the batcher shares with the callers.
struct Writer {
    queue: Mutex<Option<Queue>>,
    shared: Arc<Shared>,
}

/// What a writer's batcher and the commands that run in their caller's task share.
struct Shared {
    /// The writer's connection, kept between batches (`None` until the first batch, and after a
    /// lost connection); locked by whoever runs a batch.
    conn: tokio::sync::Mutex<Option<PoolConnection<Any>>>,
    /// Commands sent to the queue and not yet in a running batch (queued, or taken by the
    /// batcher and waiting for the connection).
    pending: AtomicUsize,
}

impl GroupCommit {
    /// The group commit of `pool`: `writers` writers (at least 1) running batches of at most
    /// `max_batch` commands (at least 1), counting their COMMITs in `commits`, each keeping its
    /// connection between batches when `keep_connections` (else it goes back to the pool after
    /// each batch). Nothing starts yet.
    pub(crate) fn new(
        pool: AnyPool,
        backend: Backend,
        commits: Arc<AtomicU64>,
        max_batch: usize,
        writers: usize,
        keep_connections: bool,
    ) -> Self {
        Self {
            runner: Runner {
                pool,
                begin: match backend {
                    Backend::Sqlite => "BEGIN IMMEDIATE",
                    Backend::Postgres => "BEGIN",
                },
                commits,
                keep_connections,
            },
            max_batch: max_batch.max(1),
            writers: (0..writers.max(1))
                .map(|_| Writer {
                    queue: Mutex::new(None),
                    shared: Arc::new(Shared {
                        conn: tokio::sync::Mutex::new(None),
                        pending: AtomicUsize::new(0),
                    }),
                })
                .collect(),
        }
    }

    /// Commands queued and not yet in a running batch, over every writer.
    pub(crate) fn queued(&self) -> usize {
        self.writers
            .iter()
            .map(|w| w.shared.pending.load(Ordering::SeqCst))
            .sum()
    }

    /// Runs `unit` on the writer of `key`: at once in this task when the writer is idle and
    /// nothing is queued for it, else through its batcher (started if needed). The reply comes
    /// through `unit.finish`; when this returns an error the unit was dropped unfinished.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the database is closed; `INTERNAL` when called outside a tokio
    /// runtime.
    pub(crate) async fn submit(&self, key: &str, unit: Box<dyn Unit>) -> Result<(), Status> {
        if self.runner.pool.is_closed() {
            return Err(closed());
        }
        let writer = &self.writers[self.index(key)];
        if writer.shared.pending.load(Ordering::SeqCst) == 0
            && let Ok(mut conn) = writer.shared.conn.try_lock()
        {
            // Dropping this future (the caller gave up) drops the transaction: rolled back.
            self.runner.run_batch(&mut conn, &mut vec![unit]).await;
            return Ok(());
        }
        let mut queued = Queued {
            unit,
            _pending: PendingToken::new(&writer.shared),
        };
        // A second try only when the batcher ended between taking its queue and sending (its
        // runtime shut down): the next one is started on this runtime.
        for _ in 0..2 {
            match self.queue(writer)?.send(queued).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => queued = back,
            }
        }
        Err(closed())
    }

    /// Returns every writer's connection to the pool, once the batch it runs (if any) ended. For
    /// [`crate::Db::close`], after the pool was marked closed (so no batch takes another).
    pub(crate) async fn release(&self) {
        for writer in &self.writers {
            *writer.shared.conn.lock().await = None;
        }
    }

    fn index(&self, key: &str) -> usize {
        if self.writers.len() == 1 {
            return 0;
        }
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        usize::try_from(hasher.finish() % self.writers.len() as u64).unwrap_or(0)
    }

    /// The queue of a running batcher for `writer`, starting one when there is none (or it
    /// ended).
    fn queue(&self, writer: &Writer) -> Result<Queue, Status> {
        if self.runner.pool.is_closed() {
            return Err(closed());
        }
        let mut current = writer.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = current.as_ref().filter(|q| !q.is_closed()) {
            return Ok(queue.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Status::from(ServiceError::Internal(anyhow::anyhow!(
                "a keyed command ran outside a tokio runtime"
            )))
        })?;
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        runtime.spawn(batcher(
            self.runner.clone(),
            writer.shared.clone(),
            self.max_batch,
            requests,
        ));
        *current = Some(queue.clone());
        Ok(queue)
    }
}

fn closed() -> Status {
    ServiceError::Unavailable("the database is closed; retry with the same key".into()).into()
}

/// A writer's batcher: takes the queued commands, waits for the writer's connection (a command
/// running in its caller's task may hold it), adds what queued meanwhile, runs the batch.
async fn batcher(
    runner: Runner,
    shared: Arc<Shared>,
    max_batch: usize,
    mut requests: mpsc::Receiver<Queued>,
) {
    let closing = runner.pool.close_event();
    tokio::pin!(closing);
    let mut taken: Vec<Queued> = Vec::with_capacity(max_batch);
    let mut batch: Vec<Box<dyn Unit>> = Vec::with_capacity(max_batch);
    loop {
        tokio::select! {
            biased;
            () = &mut closing => break,
            received = requests.recv_many(&mut taken, max_batch) => {
                if received == 0 {
                    break;
                }
            }
        }
        let mut conn = shared.conn.lock().await;
        while taken.len() < max_batch {
            match requests.try_recv() {
                Ok(queued) => taken.push(queued),
                Err(_) => break,
            }
        }
        // No longer pending once in the running batch.
        batch.extend(taken.drain(..).map(|queued| queued.unit));
        runner.run_batch(&mut conn, &mut batch).await;
    }
    // Return the connection first: closing the pool waits for it.
    *shared.conn.lock().await = None;
    requests.close();
    while let Ok(queued) = requests.try_recv() {
        taken.push(queued);
    }
    for queued in taken.drain(..) {
        queued.unit.finish(Some(closed()));
    }
}

/// What running a batch needs: the pool (for a new connection), how to begin, the counter,
/// whether a writer keeps its connection between batches.
#[derive(Clone)]
struct Runner {
    pool: AnyPool,
    begin: &'static str,
    commits: Arc<AtomicU64>,
    keep_connections: bool,
}

impl Runner {
    /// Runs `batch` in one transaction on the writer's connection `held`, or on a fresh one when
    /// there is none or it was lost (its BEGIN failed: nothing ran yet, so taking another is
    /// safe). Leaves `batch` empty, every command finished; keeps the connection in `held` when
    /// it is fit for the next batch and the pool is open.
    async fn run_batch(
        &self,
        held: &mut Option<PoolConnection<Any>>,
        batch: &mut Vec<Box<dyn Unit>>,
    ) {
        if self.pool.is_closed() {
            *held = None;
            return fail_all(batch, &closed());
        }
        if let Some(conn) = held.as_mut() {
            let ran = match conn.begin_with(self.begin).await {
                Ok(tx) => Ok(commit_batch(tx, batch, &self.commits).await),
                Err(err) => Err(err),
            };
            match ran {
                Ok(healthy) => return self.keep(held, healthy),
                Err(err) if connection_lost(&err) => {
                    tracing::debug!(error = %err, "group commit: the held connection is lost; taking another");
                    self.keep(held, false);
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
        *held = Some(conn);
        self.keep(held, healthy);
    }

    /// Keeps the connection in `held` for the next batch when it is `healthy`, the pool is open
    /// and writers keep their connections; otherwise lets it go (closed, when it is not
    /// healthy).
    fn keep(&self, held: &mut Option<PoolConnection<Any>>, healthy: bool) {
        if healthy && self.keep_connections && !self.pool.is_closed() {
            return;
        }
        if let Some(mut conn) = held.take()
            && !healthy
        {
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
    /// Its savepoint was released (or it is alone in the batch): it commits with the batch.
    Kept,
    /// Its savepoint was rolled back: answer it now, with its own outcome (`None`) or this.
    RolledBack(Option<Status>),
    /// It is alone in the batch and must not stay: roll the transaction back, then answer it
    /// with its own outcome (`None`) or this.
    Discard(Option<Status>),
}

/// Runs every command of `batch` in `tx`, each in its savepoint, then commits; answers every
/// command. Returns whether the connection is still fit for another batch.
///
/// A command alone in its batch (the common case when commands do not overlap) needs no
/// savepoint: the transaction is its savepoint, rolled back whole when it fails, so a lone
/// command costs the statements it cost before the group commit.
async fn commit_batch(
    mut tx: Transaction<'_, Any>,
    batch: &mut Vec<Box<dyn Unit>>,
    commits: &AtomicU64,
) -> bool {
    let alone = batch.len() == 1;
    let mut kept: Vec<Box<dyn Unit>> = Vec::with_capacity(batch.len());
    let mut units = batch.drain(..);
    let mut broken = None;
    for mut unit in units.by_ref() {
        match run_one(&mut tx, unit.as_mut(), alone).await {
            Ok(Ran::Kept) => kept.push(unit),
            Ok(Ran::RolledBack(instead)) => unit.finish(instead),
            Ok(Ran::Discard(instead)) => {
                fail::fail_point!("group_commit_after_command");
                let rolled_back = tx.rollback().await;
                unit.finish(instead);
                return rolled_back.is_ok();
            }
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
/// rolled back (and the command answered) otherwise. A command `alone` in the batch runs on
/// `tx` itself, without a savepoint.
///
/// # Errors
/// The savepoint could not be taken, released or rolled back: the transaction is unusable.
async fn run_one(
    tx: &mut Transaction<'_, Any>,
    unit: &mut dyn Unit,
    alone: bool,
) -> Result<Ran, sqlx::Error> {
    if alone {
        return Ok(match AssertUnwindSafe(unit.run(tx)).catch_unwind().await {
            Ok(Verdict::Keep) => Ran::Kept,
            Ok(Verdict::Discard) => Ran::Discard(None),
            Err(_) => {
                tracing::error!("a keyed command panicked; its transaction is rolled back");
                Ran::Discard(Some(panicked()))
            }
        });
    }
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
            Ok(Ran::RolledBack(Some(panicked())))
        }
    }
}

fn panicked() -> Status {
    ServiceError::Internal(anyhow::anyhow!("the command panicked")).into()
}
