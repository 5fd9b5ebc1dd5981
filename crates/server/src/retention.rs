//! Retention (docs/operations.md, "Retention"): the background task that deletes records nobody
//! can need any more, written once for every process. Each process hands it the prune jobs of its
//! own databases; the task runs them off the hot path, in bounded batches, and counts what it
//! deleted.
//!
//! ```text
//!  Retention::spawn ── 10 s after start, then every interval ──▶ round:
//!     for each PruneJob (database, window, Prune):
//!        before = now − window
//!        loop { prune_batch(before, batch_rows) ── one transaction, ≤ batch_rows rows ──▶
//!               sagaflow_retention_pruned_total{database, table} += rows;
//!               nothing deleted → next job; else pause, next batch }
//!     a failing job is logged and counted (sagaflow_retention_failures_total), the others run
//!  stop (CancellationToken) ──▶ the task ends at once (a batch in flight rolls back)
//! ```
//!
//! What is pruned, and the default windows (the reasoning is in docs/operations.md,
//! "Retention"):
//!
//! | records | kept for (default) | job |
//! |---|---|---|
//! | `idempotency_keys` of every service | 7 days after the command first ran | [`PruneJob::idempotency_keys`] |
//! | finished sagas and their journals (workflow database) | 30 days after they finished | `sagaflow_workflow_engine::store::finished_sagas_job` |
//! | ranking's processed-event `inbox` | 7 days after the event was counted | `sagaflow_ranking::inbox_prune_job` |
//!
//! Cutoffs are computed on this process's wall clock ([`now_ms`]); windows are days long, so
//! clock skew between replicas does not matter here.

use std::{fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use metrics::{Unit, counter, describe_counter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, now_ms};

/// Rows deleted by retention (counter; labels [`LABEL_DATABASE`], [`LABEL_TABLE`]).
pub const PRUNED: &str = "sagaflow_retention_pruned_total";
/// Prune batches that failed (counter; label [`LABEL_DATABASE`]); the next round tries again.
pub const FAILURES: &str = "sagaflow_retention_failures_total";
/// Label: the service database (`coupon`, …, `workflow`).
pub const LABEL_DATABASE: &str = "database";
/// Label: the table rows were deleted from (`idempotency_keys`, `sagas`, `saga_journal`,
/// `inbox`).
pub const LABEL_TABLE: &str = "table";

/// One day, milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// Default time between two retention rounds, milliseconds (5 minutes).
pub const DEFAULT_INTERVAL_MS: u64 = 300_000;
/// Default and largest number of rows deleted in one transaction.
pub const MAX_BATCH_ROWS: u32 = 1_000;
/// Default idempotency-record window, milliseconds (7 days; docs/operations.md, "Retention").
pub const DEFAULT_IDEMPOTENCY_MS: u64 = 7 * DAY_MS;
/// Default window of finished sagas, milliseconds (30 days).
pub const DEFAULT_SAGAS_MS: u64 = 30 * DAY_MS;
/// Default window of inbox rows, milliseconds (7 days).
pub const DEFAULT_INBOX_MS: u64 = 7 * DAY_MS;

/// How long after start the first round runs (or one interval, if shorter).
const FIRST_ROUND_AFTER: Duration = Duration::from_secs(10);
/// Pause between two batches of a round, so that a large backlog never holds a database's
/// write lock (SQLite) for more than one batch at a time.
const PAUSE_BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// Registers the help text of the retention metrics with the installed recorder (call once
/// after installing it; descriptions given before are lost).
pub fn describe_metrics() {
    describe_counter!(
        PRUNED,
        Unit::Count,
        "Rows deleted by retention, per database and table."
    );
    describe_counter!(
        FAILURES,
        Unit::Count,
        "Retention batches that failed (retried next round), per database."
    );
}

/// What retention keeps, and how it runs: the windows in force and the round schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Time between two rounds; `None`: retention is off (nothing is ever deleted).
    pub interval: Option<Duration>,
    /// Most rows deleted in one transaction (1 to [`MAX_BATCH_ROWS`]).
    pub batch_rows: u32,
    /// How long an idempotency record is kept after the command first ran.
    pub idempotency: Duration,
    /// How long a COMPLETED or COMPENSATED saga (row and journal) is kept after it finished.
    pub sagas: Duration,
    /// How long a processed-event inbox row is kept after the event was counted.
    pub inbox: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_millis(DEFAULT_INTERVAL_MS)),
            batch_rows: MAX_BATCH_ROWS,
            idempotency: Duration::from_millis(DEFAULT_IDEMPOTENCY_MS),
            sagas: Duration::from_millis(DEFAULT_SAGAS_MS),
            inbox: Duration::from_millis(DEFAULT_INBOX_MS),
        }
    }
}

/// Rows one batch deleted from one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// The table (the metric's `table` label).
    pub table: &'static str,
    /// How many rows.
    pub rows: u64,
}

/// The future of [`Prune::prune_batch`].
pub type PruneFuture<'a> = BoxFuture<'a, anyhow::Result<Vec<Pruned>>>;

/// Deletes expired records of one kind, one bounded batch per call.
pub trait Prune: Send + Sync + fmt::Debug + 'static {
    /// Deletes, in **one** transaction, records that expired before `before_ms` (unix ms): at
    /// most `max_rows` rows in total over every table it touches, unless one indivisible record
    /// (a saga and its whole journal) is larger, in which case exactly that one record. Returns
    /// the rows deleted per table; when nothing was deleted, nothing expired is left.
    ///
    /// # Errors
    /// The database's error; nothing of the batch is deleted then.
    fn prune_batch(&self, before_ms: i64, max_rows: u32) -> PruneFuture<'_>;
}

/// One job of the retention task: which records, in which database, kept how long.
#[derive(Debug, Clone)]
pub struct PruneJob {
    database: &'static str,
    window: Duration,
    prune: Arc<dyn Prune>,
}

impl PruneJob {
    /// A job deleting with `prune` the records of `database` (the metric's `database` label)
    /// older than `window`.
    pub fn new(database: &'static str, window: Duration, prune: impl Prune) -> Self {
        Self {
            database,
            window,
            prune: Arc::new(prune),
        }
    }

    /// The job of a service database's `idempotency_keys` table (every service has one, see
    /// [`crate::idempotency`]): rows whose `created_at` is older than `window`.
    pub fn idempotency_keys(database: &'static str, db: Db, window: Duration) -> Self {
        Self::old_rows(database, db, window, IDEMPOTENCY_KEYS)
    }

    /// The job of one table of `db` whose rows expire one by one: rows whose `rows.time` column
    /// (unix ms) is older than `window`.
    pub fn old_rows(database: &'static str, db: Db, window: Duration, rows: OldRows) -> Self {
        Self::new(database, window, OldRowsJob { db, rows })
    }

    /// The database label.
    pub fn database(&self) -> &'static str {
        self.database
    }

    /// How long records are kept.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// A table whose rows expire one by one, by a timestamp column: what [`PruneJob::old_rows`]
/// and [`prune_old_rows`] delete from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldRows {
    /// The table (also the metric's `table` label).
    pub table: &'static str,
    /// Its primary key column.
    pub key: &'static str,
    /// The column (unix ms) a row expires by.
    pub time: &'static str,
}

/// The `idempotency_keys` table of every service database, by `created_at`.
pub const IDEMPOTENCY_KEYS: OldRows = OldRows {
    table: "idempotency_keys",
    key: "idempotency_key",
    time: "created_at",
};

/// Deletes one batch of idempotency records created before `before_ms` (unix ms), at most
/// `max_rows`, and returns how many were deleted. A repeat of a command under a deleted key runs
/// the command again (docs/operations.md, "Retention", says why that cannot happen in time).
///
/// # Errors
/// The database's error; nothing is deleted then.
pub async fn prune_idempotency_keys(
    db: &Db,
    before_ms: i64,
    max_rows: u32,
) -> Result<u64, sqlx::Error> {
    prune_old_rows(db, IDEMPOTENCY_KEYS, before_ms, max_rows).await
}

/// Deletes one batch of the rows of `rows.table` whose `rows.time` is before `before_ms` (unix
/// ms), at most `max_rows`, in one statement, and returns how many were deleted.
///
/// # Errors
/// The database's error; nothing is deleted then.
pub async fn prune_old_rows(
    db: &Db,
    rows: OldRows,
    before_ms: i64,
    max_rows: u32,
) -> Result<u64, sqlx::Error> {
    let OldRows { table, key, time } = rows;
    // The names are compile-time constants of this workspace, never input.
    let sql = format!(
        "DELETE FROM {table} WHERE {key} IN \
         (SELECT {key} FROM {table} WHERE {time} < $1 LIMIT $2)"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(before_ms)
        .bind(i64::from(max_rows))
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

#[derive(Debug)]
struct OldRowsJob {
    db: Db,
    rows: OldRows,
}

impl Prune for OldRowsJob {
    fn prune_batch(&self, before_ms: i64, max_rows: u32) -> PruneFuture<'_> {
        Box::pin(async move {
            let rows = prune_old_rows(&self.db, self.rows, before_ms, max_rows).await?;
            Ok(vec![Pruned {
                table: self.rows.table,
                rows,
            }])
        })
    }
}

/// What one round deleted, per database and table, and which jobs failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// `(database, table, rows)`, one entry per table a job touched (rows may be 0).
    pub pruned: Vec<(&'static str, &'static str, u64)>,
    /// `(database, error)` of each job that failed.
    pub failures: Vec<(&'static str, String)>,
}

impl RoundReport {
    /// Rows deleted from `table` of `database` in this round.
    pub fn rows(&self, database: &str, table: &str) -> u64 {
        self.pruned
            .iter()
            .filter(|(d, t, _)| *d == database && *t == table)
            .map(|(_, _, rows)| rows)
            .sum()
    }

    fn add(&mut self, database: &'static str, table: &'static str, rows: u64) {
        match self
            .pruned
            .iter_mut()
            .find(|(d, t, _)| *d == database && *t == table)
        {
            Some(entry) => entry.2 += rows,
            None => self.pruned.push((database, table, rows)),
        }
    }
}

/// The retention task of one process: its prune jobs and the batch size.
#[derive(Debug, Clone)]
pub struct Retention {
    jobs: Vec<PruneJob>,
    batch_rows: u32,
}

impl Retention {
    /// Retention over `jobs`, deleting at most `batch_rows` rows per transaction (clamped to
    /// 1..=[`MAX_BATCH_ROWS`]).
    pub fn new(jobs: Vec<PruneJob>, batch_rows: u32) -> Self {
        Self {
            jobs,
            batch_rows: batch_rows.clamp(1, MAX_BATCH_ROWS),
        }
    }

    /// The jobs.
    pub fn jobs(&self) -> &[PruneJob] {
        &self.jobs
    }

    /// Runs one round at `now_ms` (unix ms): each job, batch after batch, until a batch deletes
    /// nothing, a batch fails (logged, counted, and left to the next round), or `stop` is
    /// cancelled (checked between batches). Every deleted row is counted in [`PRUNED`].
    pub async fn run_round(&self, now_ms: i64, stop: &CancellationToken) -> RoundReport {
        let mut report = RoundReport::default();
        for job in &self.jobs {
            let window_ms = i64::try_from(job.window.as_millis()).unwrap_or(i64::MAX);
            let before_ms = now_ms.saturating_sub(window_ms);
            loop {
                if stop.is_cancelled() {
                    return report;
                }
                match job.prune.prune_batch(before_ms, self.batch_rows).await {
                    Ok(batch) => {
                        let mut deleted = 0;
                        for Pruned { table, rows } in batch {
                            report.add(job.database, table, rows);
                            if rows > 0 {
                                counter!(PRUNED, LABEL_DATABASE => job.database, LABEL_TABLE => table)
                                    .increment(rows);
                            }
                            deleted += rows;
                        }
                        if deleted == 0 {
                            break;
                        }
                        tracing::debug!(
                            database = job.database,
                            rows = deleted,
                            "retention: pruned a batch"
                        );
                        tokio::time::sleep(PAUSE_BETWEEN_BATCHES).await;
                    }
                    Err(err) => {
                        tracing::warn!(
                            database = job.database,
                            error = %err,
                            "retention: a prune batch failed; retried next round"
                        );
                        counter!(FAILURES, LABEL_DATABASE => job.database).increment(1);
                        report.failures.push((job.database, format!("{err:#}")));
                        break;
                    }
                }
            }
        }
        report
    }

    /// Starts the background task: a first round 10 s after start, or
    /// one `interval` if that is shorter, then one round every `interval`. It ends as soon as
    /// `stop` is cancelled (a batch in flight is rolled back). `None` when `config.interval` is
    /// `None` (retention off) or there are no jobs.
    pub fn spawn(
        self,
        config: &RetentionConfig,
        stop: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let interval = config.interval?;
        if self.jobs.is_empty() || interval.is_zero() {
            return None;
        }
        Some(tokio::spawn(async move {
            let mut wait = interval.min(FIRST_ROUND_AFTER);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    report = self.run_round(now_ms(), &stop) => {
                        let rows: u64 = report.pruned.iter().map(|(_, _, rows)| rows).sum();
                        if rows > 0 {
                            tracing::info!(rows, "retention: round done");
                        }
                    }
                }
                wait = interval;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// An in-memory table of expiry times (unix ms); fails once when `fail_once` is set.
    #[derive(Debug, Default)]
    struct Fake {
        rows: Mutex<Vec<i64>>,
        batches: Mutex<Vec<u64>>,
        fail_once: Mutex<bool>,
    }

    #[derive(Debug, Clone)]
    struct Shared(Arc<Fake>);

    impl Prune for Shared {
        fn prune_batch(&self, before_ms: i64, max_rows: u32) -> PruneFuture<'_> {
            Box::pin(async move {
                if std::mem::take(&mut *self.0.fail_once.lock().unwrap()) {
                    anyhow::bail!("database down");
                }
                let mut rows = self.0.rows.lock().unwrap();
                let mut deleted = 0_u64;
                rows.retain(|&at| {
                    let delete = at < before_ms && deleted < u64::from(max_rows);
                    deleted += u64::from(delete);
                    !delete
                });
                self.0.batches.lock().unwrap().push(deleted);
                Ok(vec![Pruned {
                    table: "fake",
                    rows: deleted,
                }])
            })
        }
    }

    #[tokio::test]
    async fn a_round_prunes_in_batches_and_counts_per_table() {
        let fake = Arc::new(Fake::default());
        // 2500 expired rows (at 0..2500) and 10 live ones (at 10_000).
        *fake.rows.lock().unwrap() = (0..2_500).chain([10_000; 10]).collect();
        let retention = Retention::new(
            vec![PruneJob::new(
                "db",
                Duration::from_millis(1_000),
                Shared(fake.clone()),
            )],
            1_000,
        );
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _guard = metrics::set_default_local_recorder(&recorder);
        // now 9_000 − window 1_000: everything before 8_000 expired.
        let report = retention.run_round(9_000, &CancellationToken::new()).await;
        assert_eq!(report.rows("db", "fake"), 2_500);
        assert!(report.failures.is_empty());
        assert_eq!(*fake.batches.lock().unwrap(), [1_000, 1_000, 500, 0]);
        assert_eq!(fake.rows.lock().unwrap().len(), 10);
        let text = handle.render();
        assert!(
            text.contains(r#"sagaflow_retention_pruned_total{database="db",table="fake"} 2500"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failing_job_does_not_stop_the_others() {
        let failing = Arc::new(Fake::default());
        *failing.fail_once.lock().unwrap() = true;
        *failing.rows.lock().unwrap() = vec![0];
        let fine = Arc::new(Fake::default());
        *fine.rows.lock().unwrap() = vec![0, 1];
        let retention = Retention::new(
            vec![
                PruneJob::new("a", Duration::ZERO, Shared(failing.clone())),
                PruneJob::new("b", Duration::ZERO, Shared(fine.clone())),
            ],
            5_000,
        );
        let report = retention.run_round(100, &CancellationToken::new()).await;
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].0, "a");
        assert_eq!(report.rows("b", "fake"), 2);
        // The next round retries the failed job.
        let report = retention.run_round(100, &CancellationToken::new()).await;
        assert!(report.failures.is_empty());
        assert_eq!(report.rows("a", "fake"), 1);
    }

    #[tokio::test]
    async fn a_cancelled_round_stops_between_batches() {
        let fake = Arc::new(Fake::default());
        *fake.rows.lock().unwrap() = vec![0; 10];
        let retention = Retention::new(
            vec![PruneJob::new("db", Duration::ZERO, Shared(fake.clone()))],
            1,
        );
        let stop = CancellationToken::new();
        stop.cancel();
        let report = retention.run_round(100, &stop).await;
        assert_eq!(report, RoundReport::default());
        assert_eq!(fake.rows.lock().unwrap().len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_runs_rounds_and_stops_with_the_process() {
        let fake = Arc::new(Fake::default());
        let retention = Retention::new(
            vec![PruneJob::new("db", Duration::ZERO, Shared(fake.clone()))],
            10,
        );
        let config = RetentionConfig {
            interval: Some(Duration::from_secs(60)),
            ..RetentionConfig::default()
        };
        let stop = CancellationToken::new();
        let task = retention.clone().spawn(&config, stop.clone()).unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(fake.batches.lock().unwrap().is_empty(), "not before 10 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fake.batches.lock().unwrap().len(), 1, "first round at 10 s");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.batches.lock().unwrap().len(), 2, "then every interval");
        stop.cancel();
        task.await.unwrap();
        // Off: no task.
        let off = RetentionConfig {
            interval: None,
            ..RetentionConfig::default()
        };
        assert!(
            retention
                .clone()
                .spawn(&off, CancellationToken::new())
                .is_none()
        );
        assert!(
            Retention::new(Vec::new(), 10)
                .spawn(&config, CancellationToken::new())
                .is_none()
        );
    }
}
