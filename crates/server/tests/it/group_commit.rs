//! The group commit of keyed commands (docs/architecture.md, "Group commit") on SQLite and
//! PostgreSQL: the commands queued while a batch runs share the next transaction and its one
//! COMMIT; in that batch a failing command (business error, transient error, database error, a
//! refused value, a panic) rolls back only itself and its key; two commands on one key in one
//! batch, and a compensation and its late action, behave as one after the other; and a process killed (`kill -9`) in the middle of a batch, or
//! after its COMMIT before any reply, leaves every acknowledged command durable and no command
//! half-applied.
//!
//! Batches are made deterministic without timing: a **blocker** command's effect holds the
//! writer until the test has seen (with `Db::queued_commands`) every other command queued, so
//! the next batch takes exactly those.

use std::{
    collections::BTreeSet,
    io::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use sagaflow_proto::inventory::v1::{Product, RestockRequest};
use sagaflow_server::{
    Db, Migrations, PoolConfig, ServiceError,
    error::error_reason,
    idempotency::{
        Executed, execute_detailed,
        late_action::{self, RestorePlan, TombstoneTable, Value},
    },
};
use sagaflow_testkit::{Kind, TestDatabase, eventually};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status};

static PG: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/sqlite");
const MIGRATIONS: Migrations = Migrations {
    postgres: &PG,
    sqlite: &SQLITE,
};

/// What a test command's effect does after inserting its counter row (named after its key).
#[derive(Debug)]
enum Then {
    /// Answers the row.
    Ok,
    /// FAILED_PRECONDITION reason `NOPE` (stored with the key, the row rolled back).
    Business,
    /// UNAVAILABLE (nothing stored).
    Transient,
    /// A statement the database rejects: the counter's `CHECK (value >= 0)` (INTERNAL).
    DatabaseError,
    /// A value the database refuses: on PostgreSQL a real one (a U+0000 in text, SQLSTATE 22021);
    /// SQLite stores that, so there the effect answers [`ServiceError::refused_value`] itself.
    RefusedValue,
    /// Panics (a bug): INTERNAL, rolled back with its key.
    Panic,
    /// Says it started, then waits for the release (holds the writer: a test's blocker).
    Block(oneshot::Sender<()>, oneshot::Receiver<()>),
    /// Records its key in the child's file before answering (the crash tests).
    Record(String),
}

async fn open(kind: Kind, name: &str, config: &PoolConfig) -> (TestDatabase, Db) {
    let tdb = TestDatabase::new(kind, name);
    let db = Db::connect(&tdb.url, MIGRATIONS, config)
        .await
        .expect("connect to the test database");
    (tdb, db)
}

fn request(key: &str) -> RestockRequest {
    RestockRequest {
        sku: key.into(),
        quantity: 1,
        idempotency_key: key.into(),
    }
}

/// Runs the test command `key` through the idempotency store: inserts counter `key` (value 1),
/// then does what `then` says.
async fn command(db: &Db, key: &str, then: Then) -> Result<Executed<Product>, Status> {
    let backend = db.backend();
    let name = key.to_owned();
    execute_detailed(db, "test.Insert", key, &request(key), move |conn| {
        Box::pin(async move {
            sqlx::query("INSERT INTO counters (name, value) VALUES ($1, 1)")
                .bind(&name)
                .execute(&mut *conn)
                .await?;
            match then {
                Then::Ok => {}
                Then::Business => return Err(ServiceError::precondition("NOPE", "no")),
                Then::Transient => return Err(ServiceError::Unavailable("try later".into())),
                Then::DatabaseError => {
                    sqlx::query("UPDATE counters SET value = -1 WHERE name = $1")
                        .bind(&name)
                        .execute(&mut *conn)
                        .await?;
                }
                Then::RefusedValue => match backend {
                    sagaflow_server::Backend::Postgres => {
                        sqlx::query("INSERT INTO counters (name, value) VALUES ($1, 1)")
                            .bind(format!("{name}\u{0}"))
                            .execute(&mut *conn)
                            .await?;
                    }
                    sagaflow_server::Backend::Sqlite => {
                        return Err(ServiceError::refused_value("cannot be stored"));
                    }
                },
                Then::Panic => panic!("a bug in the effect (this panic is expected by the test)"),
                Then::Block(started, release) => {
                    let _ = started.send(());
                    let _ = release.await;
                }
                Then::Record(file) => append(&file, &format!("RAN {name}\n")),
            }
            Ok(Product {
                sku: name,
                name: "counter".into(),
                unit_price: 0,
                stock: 1,
            })
        })
    })
    .await
}

/// Appends `line` to `file` in one write (a test's record survives the process dying after it).
fn append(file: &str, line: &str) {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    out.write_all(line.as_bytes()).unwrap();
}

/// The blocker: a command (key `blocker`) whose effect holds the writer until `release` is sent.
struct Blocker {
    task: JoinHandle<Result<Executed<Product>, Status>>,
    release: oneshot::Sender<()>,
}

impl Blocker {
    /// Starts the blocker and returns once its effect runs: the writer is busy from then on.
    async fn start(db: &Db) -> Self {
        let (started, is_started) = oneshot::channel();
        let (release, released) = oneshot::channel();
        let db = db.clone();
        let task =
            tokio::spawn(
                async move { command(&db, "blocker", Then::Block(started, released)).await },
            );
        is_started.await.expect("the blocker's effect runs");
        Self { task, release }
    }

    /// Releases the writer and returns the blocker's own result.
    async fn release(self) -> Result<Executed<Product>, Status> {
        let _ = self.release.send(());
        self.task.await.unwrap()
    }
}

/// Queues the command `key` behind the blocker and returns once it is queued (so commands queue
/// in the order they are given).
async fn enqueue(db: &Db, key: &str, then: Then) -> JoinHandle<Result<Executed<Product>, Status>> {
    let before = db.queued_commands();
    let task = {
        let db = db.clone();
        let key = key.to_owned();
        tokio::spawn(async move { command(&db, &key, then).await })
    };
    eventually(
        &format!("{key} to be queued"),
        Duration::from_secs(10),
        || async { (db.queued_commands() > before).then_some(()) },
    )
    .await;
    task
}

async fn names(db: &Db, sql: &'static str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The counters (effects) in the database.
async fn effects(db: &Db) -> BTreeSet<String> {
    names(db, "SELECT name FROM counters").await
}

/// The stored keys and their stored status codes.
async fn stored(db: &Db) -> Vec<(String, Option<i64>)> {
    sqlx::query_as(
        "SELECT idempotency_key, status_code FROM idempotency_keys ORDER BY idempotency_key",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// In one batch, beside succeeding commands: a business error (its key stored with the error,
/// its write rolled back), a transient error, a database error, a refused value and a panic
/// (each rolled back with its key), and repeats of a success and of the business error (replayed
/// from the same batch). The batch is one COMMIT; each command gets its own answer.
async fn a_failing_command_rolls_back_only_itself(kind: Kind) {
    let (_tdb, db) = open(kind, "gc_isolation", &PoolConfig::default()).await;
    let before = db.commits();
    let blocker = Blocker::start(&db).await;
    let ok1 = enqueue(&db, "ok-1", Then::Ok).await;
    let business = enqueue(&db, "business", Then::Business).await;
    let transient = enqueue(&db, "transient", Then::Transient).await;
    let ok1_again = enqueue(&db, "ok-1", Then::Ok).await;
    let database = enqueue(&db, "database", Then::DatabaseError).await;
    let refused = enqueue(&db, "refused", Then::RefusedValue).await;
    let panicked = enqueue(&db, "panic", Then::Panic).await;
    let business_again = enqueue(&db, "business", Then::Business).await;
    let ok2 = enqueue(&db, "ok-2", Then::Ok).await;
    assert_eq!(db.queued_commands(), 9);
    blocker.release().await.unwrap();

    let ok1 = ok1.await.unwrap().unwrap();
    assert!(!ok1.replayed);
    assert_eq!(ok1.response.sku, "ok-1");
    let again = ok1_again.await.unwrap().unwrap();
    assert!(again.replayed, "the repeat in the same batch replays");
    assert_eq!(again.response, ok1.response);
    let err = business.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).as_deref(), Some("NOPE"));
    let err = business_again.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "the stored rejection");
    assert_eq!(error_reason(&err).as_deref(), Some("NOPE"));
    assert_eq!(
        transient.await.unwrap().unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(database.await.unwrap().unwrap_err().code(), Code::Internal);
    let err = refused.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(panicked.await.unwrap().unwrap_err().code(), Code::Internal);
    assert!(!ok2.await.unwrap().unwrap().replayed);

    assert_eq!(
        db.commits() - before,
        2,
        "the blocker's batch, then one for all 9"
    );
    assert_eq!(effects(&db).await, set(&["blocker", "ok-1", "ok-2"]));
    assert_eq!(
        stored(&db).await,
        vec![
            ("blocker".to_owned(), Some(0)),
            ("business".to_owned(), Some(9)),
            ("ok-1".to_owned(), Some(0)),
            ("ok-2".to_owned(), Some(0)),
        ]
    );

    // The rolled-back commands left nothing: a retry with the same key runs the effect now.
    for key in ["transient", "database", "refused", "panic"] {
        let retried = command(&db, key, Then::Ok).await.unwrap();
        assert!(!retried.replayed, "{key}");
    }
    assert_eq!(
        effects(&db).await,
        set(&[
            "blocker",
            "database",
            "ok-1",
            "ok-2",
            "panic",
            "refused",
            "transient"
        ])
    );
    db.close().await;
}

/// Commands queued together commit together: 40 commands (20 keys, each twice) behind the
/// blocker are one batch and one COMMIT; every key's effect ran once and its repeat replayed it.
/// With a cap of 8 per batch, 20 queued commands take three batches (8, 8, 4).
async fn queued_commands_share_one_commit(kind: Kind) {
    let (_tdb, db) = open(kind, "gc_batching", &PoolConfig::default()).await;
    let before = db.commits();
    let blocker = Blocker::start(&db).await;
    let mut tasks = Vec::new();
    for round in 0..2 {
        for i in 0..20 {
            tasks.push((round, enqueue(&db, &format!("k{i:02}"), Then::Ok).await));
        }
    }
    assert_eq!(db.queued_commands(), 40);
    blocker.release().await.unwrap();
    for (round, task) in tasks {
        let executed = task.await.unwrap().unwrap();
        assert_eq!(executed.replayed, round == 1, "{}", executed.response.sku);
    }
    assert_eq!(
        db.commits() - before,
        2,
        "the blocker's batch, then one for all 40"
    );
    let mut expected: BTreeSet<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    expected.insert("blocker".into());
    assert_eq!(effects(&db).await, expected);
    assert_eq!(stored(&db).await.len(), 21);
    db.close().await;

    let config = PoolConfig {
        group_commit_max_batch: 8,
        ..PoolConfig::default()
    };
    let (_tdb, db) = open(kind, "gc_batch_cap", &config).await;
    let before = db.commits();
    let blocker = Blocker::start(&db).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(enqueue(&db, &format!("k{i:02}"), Then::Ok).await);
    }
    blocker.release().await.unwrap();
    for task in tasks {
        assert!(!task.await.unwrap().unwrap().replayed);
    }
    assert_eq!(db.commits() - before, 1 + 3, "batches of 8, 8 and 4");
    assert_eq!(effects(&db).await.len(), 21);
    db.close().await;
}

/// Without a blocker: 64 commands at once (32 keys, each twice, with two writers) all get their
/// key's one answer, every effect ran once, and they took at most 64 commits. Plain transactions
/// of [`Db::begin`] count too.
async fn concurrent_commands_apply_once(kind: Kind) {
    let config = PoolConfig {
        group_commit_writers: Some(2),
        ..PoolConfig::default()
    };
    let (_tdb, db) = open(kind, "gc_concurrent", &config).await;
    let before = db.commits();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        for i in 0..32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                command(&db, &format!("c{i:02}"), Then::Ok).await
            }));
        }
    }
    let mut replayed = 0;
    for task in tasks {
        let executed = task.await.unwrap().unwrap();
        replayed += usize::from(executed.replayed);
    }
    assert_eq!(replayed, 32, "one run and one replay per key");
    assert_eq!(effects(&db).await.len(), 32);
    assert_eq!(stored(&db).await.len(), 32);
    let commits = db.commits() - before;
    assert!((1..=64).contains(&commits), "{commits} commits");

    let tx = db.begin().await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        db.commits() - before,
        commits + 1,
        "a plain transaction counts"
    );
    let tx = db.begin().await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.commits() - before, commits + 1, "a rollback does not");
    db.close().await;
}

/// A caller that goes away: one whose command runs in its own task (the writer was idle) takes
/// it down with it (rolled back, key and effect; the writer's connection serves the next
/// command), and one whose command is queued leaves it to run all the same (stored, so the
/// retry replays it).
async fn a_caller_that_goes_away(kind: Kind) {
    let (_tdb, db) = open(kind, "gc_gone", &PoolConfig::default()).await;
    // Runs in its caller's task (nothing queued), then the caller is aborted mid-effect.
    let blocker = Blocker::start(&db).await;
    blocker.task.abort();
    assert!(blocker.task.await.unwrap_err().is_cancelled());
    let after = command(&db, "after", Then::Ok).await.unwrap();
    assert!(!after.replayed);
    assert_eq!(effects(&db).await, set(&["after"]));
    assert_eq!(stored(&db).await, vec![("after".to_owned(), Some(0))]);

    // Queued behind a blocker; its caller is aborted before the batch runs.
    let blocker = Blocker::start(&db).await;
    let queued = enqueue(&db, "queued", Then::Ok).await;
    queued.abort();
    assert!(queued.await.unwrap_err().is_cancelled());
    blocker.release().await.unwrap();
    eventually(
        "the queued command to commit",
        Duration::from_secs(10),
        || async { effects(&db).await.contains("queued").then_some(()) },
    )
    .await;
    let again = command(&db, "queued", Then::Ok).await.unwrap();
    assert!(
        again.replayed,
        "the retry replays what ran without its caller"
    );
    db.close().await;
}

/// A pool of one connection (asking for three writers, which it cannot give): the one writer
/// borrows the connection per batch, so reads between commands still get it.
async fn a_pool_of_one_connection_serves_commands_and_reads(kind: Kind) {
    let config = PoolConfig {
        max_connections: Some(1),
        group_commit_writers: Some(3),
        ..PoolConfig::default()
    };
    let (_tdb, db) = open(kind, "gc_pool_of_one", &config).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("p{i:02}");
            command(&db, &key, Then::Ok).await.unwrap();
            effects(&db).await.contains(&key)
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap(), "a read after the command sees it");
    }
    assert_eq!(effects(&db).await.len(), 16);
    db.close().await;
}

/// After `Db::close` a command is UNAVAILABLE, and nothing runs.
async fn a_closed_database_refuses_commands(kind: Kind) {
    let (_tdb, db) = open(kind, "gc_closed", &PoolConfig::default()).await;
    command(&db, "before", Then::Ok).await.unwrap();
    db.close().await;
    let err = command(&db, "after", Then::Ok).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

/// The late-action rule's table of the test database (`holds`, migration 0002).
const HOLDS: TombstoneTable = TombstoneTable {
    table: "holds",
    subject: &["order_id"],
    tombstone_when: "status = 'RELEASED'",
    timestamps: &["created_at"],
};

/// An action (`compensate` false: hold the order) or its compensation (release it, or leave a
/// tombstone), under key `<order>:action` or `<order>:compensate`, answering what it did.
async fn late_action_command(
    db: &Db,
    order: &'static str,
    compensate: bool,
) -> Result<Executed<Product>, Status> {
    let backend = db.backend();
    let key = format!(
        "{order}:{}",
        if compensate { "compensate" } else { "action" }
    );
    execute_detailed(db, "test.Hold", &key, &request(&key), move |conn| {
        Box::pin(async move {
            let did = if compensate {
                let released = [("status", Value::Text("RELEASED"))];
                match late_action::record(conn, backend, &HOLDS, &[order], &released).await? {
                    RestorePlan::Tombstone => "tombstone",
                    RestorePlan::Nothing => "nothing",
                    RestorePlan::GiveBack => {
                        sqlx::query("UPDATE holds SET status = 'RELEASED' WHERE order_id = $1")
                            .bind(order)
                            .execute(&mut *conn)
                            .await?;
                        "given back"
                    }
                }
            } else {
                let held = [("status", Value::Text("HELD"))];
                late_action::claim_action(conn, backend, &HOLDS, &[order], &held, || {
                    format!("order {order} was compensated first")
                })
                .await?;
                "held"
            };
            Ok(Product {
                sku: did.into(),
                ..Product::default()
            })
        })
    })
    .await
}

/// The late-action rule inside one batch (docs/architecture.md, "The service contract"): a
/// compensation queued before its action leaves a tombstone, and the action behind it in the
/// same batch is refused COMPENSATED_BEFORE_ACTION (stored, changing nothing); an action queued
/// before its compensation is held, then given back.
async fn the_late_action_rule_holds_within_a_batch(kind: Kind) {
    let (_tdb, db) = open(kind, "gc_late_action", &PoolConfig::default()).await;
    let blocker = Blocker::start(&db).await;
    let mut tasks = Vec::new();
    for (order, compensate) in [("a", true), ("a", false), ("b", false), ("b", true)] {
        let queued = db.queued_commands();
        let task = {
            let db = db.clone();
            tokio::spawn(async move { late_action_command(&db, order, compensate).await })
        };
        tasks.push(task);
        eventually(
            "the command to be queued",
            Duration::from_secs(10),
            || async { (db.queued_commands() > queued).then_some(()) },
        )
        .await;
    }
    blocker.release().await.unwrap();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(match task.await.unwrap() {
            Ok(executed) => executed.response.sku,
            Err(status) => error_reason(&status).unwrap_or_else(|| format!("{status:?}")),
        });
    }
    assert_eq!(
        answers,
        [
            "tombstone",
            "COMPENSATED_BEFORE_ACTION",
            "held",
            "given back"
        ]
    );
    let holds: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, status FROM holds ORDER BY order_id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        holds,
        [
            ("a".to_owned(), "RELEASED".to_owned()),
            ("b".to_owned(), "RELEASED".to_owned())
        ]
    );
    assert_eq!(
        stored(&db).await,
        vec![
            ("a:action".to_owned(), Some(9)),
            ("a:compensate".to_owned(), Some(0)),
            ("b:action".to_owned(), Some(0)),
            ("b:compensate".to_owned(), Some(0)),
            ("blocker".to_owned(), Some(0)),
        ]
    );
    // The refused action stays refused on a repeat, though nothing changed since.
    let again = late_action_command(&db, "a", false).await.unwrap_err();
    assert_eq!(
        error_reason(&again).as_deref(),
        Some("COMPENSATED_BEFORE_ACTION")
    );
    db.close().await;
}

sagaflow_testkit::both_backends!(
    a_failing_command_rolls_back_only_itself,
    the_late_action_rule_holds_within_a_batch,
    queued_commands_share_one_commit,
    concurrent_commands_apply_once,
    a_caller_that_goes_away,
    a_pool_of_one_connection_serves_commands_and_reads,
    a_closed_database_refuses_commands,
);

// ---------------------------------------------------------------------------------------------
// Crash safety: the test re-executes itself as a child process, which the failpoint kills with
// SIGKILL in the middle of a batch.

const ENV_FAILPOINT: &str = "SAGAFLOW_GC_TEST_FAILPOINT";
const ENV_HIT: &str = "SAGAFLOW_GC_TEST_HIT";
const ENV_DB: &str = "SAGAFLOW_GC_TEST_DB";
const ENV_LOG: &str = "SAGAFLOW_GC_TEST_LOG";

/// The crashing batch: twelve commands, one a business error and one a transient error.
fn crash_batch() -> Vec<(String, &'static str)> {
    (0..12)
        .map(|i| {
            let then = match i {
                3 => "business",
                7 => "transient",
                _ => "ok",
            };
            (format!("c{i:02}"), then)
        })
        .collect()
}

/// The child: the blocker's batch, then the crashing batch of [`crash_batch`]; the failpoint's
/// `hit`-th evaluation kills the process. Every effect that ran and every answer received is
/// appended to the log file.
async fn child() {
    let failpoint = std::env::var(ENV_FAILPOINT).unwrap();
    let hit: usize = std::env::var(ENV_HIT).unwrap().parse().unwrap();
    let log = std::env::var(ENV_LOG).unwrap();
    let db = Db::connect(
        &std::env::var(ENV_DB).unwrap(),
        MIGRATIONS,
        &PoolConfig::default(),
    )
    .await
    .unwrap();
    let hits = AtomicUsize::new(0);
    fail::cfg_callback(&failpoint, move || {
        if hits.fetch_add(1, Ordering::SeqCst) + 1 == hit {
            // kill -9 of this very process; abort() if that failed.
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::process::abort();
        }
    })
    .unwrap();
    let blocker = Blocker::start(&db).await;
    let mut tasks = Vec::new();
    for (key, then) in crash_batch() {
        let then = match then {
            "business" => Then::Business,
            "transient" => Then::Transient,
            _ => Then::Record(log.clone()),
        };
        let task = enqueue(&db, &key, then).await;
        tasks.push((key, task));
    }
    let blocker_result = blocker.release().await;
    if blocker_result.is_ok() {
        append(&log, "ACK blocker\n");
    }
    for (key, task) in tasks {
        match task.await.unwrap() {
            Ok(_) => append(&log, &format!("ACK {key}\n")),
            Err(status) => append(&log, &format!("ERR {key} {:?}\n", status.code())),
        }
    }
    // Closing waits for the writer to end its batch (its COMMIT and failpoints included).
    db.close().await;
    // Reached only when the failpoint was not hit often enough: the parent reports it.
}

/// The parent: runs `test_name` again as the child, killed at the `hit`-th evaluation of
/// `failpoint`; then checks the database against what the child logged.
async fn crash_and_check(kind: Kind, failpoint: &str, hit: usize, test_name: &str) {
    if std::env::var_os(ENV_FAILPOINT).is_some() {
        child().await;
        return;
    }
    let (tdb, db) = open(kind, &format!("gc_{failpoint}"), &PoolConfig::default()).await;
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("child.log");
    let status = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture"])
        .env(ENV_FAILPOINT, failpoint)
        .env(ENV_HIT, hit.to_string())
        .env(ENV_DB, &tdb.url)
        .env(ENV_LOG, &log)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("the child finished in time")
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed at {failpoint}: {status}");
    }
    assert!(!status.success(), "the child died at {failpoint}");

    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let lines = |tag: &str| -> BTreeSet<String> {
        logged
            .lines()
            .filter_map(|l| l.strip_prefix(tag))
            .map(|rest| rest.split(' ').next().unwrap_or("").to_owned())
            .collect()
    };
    let (acked, ran) = (lines("ACK "), lines("RAN "));
    let keys: BTreeSet<String> = stored(&db).await.into_iter().map(|(k, _)| k).collect();
    let applied = effects(&db).await;
    let batch = crash_batch();
    let succeeding: BTreeSet<String> = batch
        .iter()
        .filter(|(_, then)| *then == "ok")
        .map(|(key, _)| key.clone())
        .collect();

    // Every acknowledged command is durable: its key and, for a success, its effect.
    assert!(acked.is_subset(&keys), "acked {acked:?}, stored {keys:?}");
    assert!(
        acked.is_subset(&applied),
        "acked {acked:?}, effects {applied:?}"
    );
    // None is half-applied: a success's key and effect are both there or both absent, and a
    // failed command left no effect.
    for key in succeeding
        .iter()
        .chain(std::iter::once(&"blocker".to_owned()))
    {
        assert_eq!(
            keys.contains(key),
            applied.contains(key),
            "{key}: key stored {}, effect applied {}",
            keys.contains(key),
            applied.contains(key)
        );
    }
    assert!(!applied.contains("c03") && !applied.contains("c07"));
    assert!(!keys.contains("c07"), "a transient failure stores no key");
    // The blocker's batch committed before the crashing batch began.
    assert!(keys.contains("blocker"));

    match failpoint {
        "group_commit_after_command" | "group_commit_before_commit" => {
            // Killed before the crashing batch's COMMIT, after effects ran in it: nothing of
            // the batch is stored, nothing of it was answered.
            assert!(!ran.is_empty(), "effects ran in the batch before the kill");
            if failpoint == "group_commit_after_command" {
                assert!(
                    ran.len() < succeeding.len(),
                    "killed in the middle of the batch: {ran:?}"
                );
            } else {
                assert_eq!(ran, succeeding, "every effect ran before the COMMIT");
            }
            for (key, _) in &batch {
                assert!(
                    !keys.contains(key),
                    "{key} stored though its batch never committed"
                );
                assert!(!acked.contains(key), "{key} acknowledged");
            }
        }
        "group_commit_after_commit" => {
            // Killed after the COMMIT, before any reply: all of the batch is durable (the
            // business error's key with its stored rejection), none of it was answered.
            assert_eq!(ran, succeeding);
            for key in &succeeding {
                assert!(keys.contains(key) && applied.contains(key), "{key} durable");
            }
            assert!(keys.contains("c03"), "the stored business error is durable");
            for (key, _) in &batch {
                assert!(!acked.contains(key), "{key} answered before the kill");
            }
        }
        other => panic!("no expectations for {other}"),
    }

    // The saga's retry: every command again with its key. Durable ones replay, the others run
    // now; afterwards every success's effect exists exactly once (counter names are unique).
    for (key, then) in &batch {
        let then = match *then {
            "business" => Then::Business,
            _ => Then::Ok,
        };
        let result = command(&db, key, then).await;
        if keys.contains(key) {
            match result {
                Ok(executed) => assert!(executed.replayed, "{key} replays"),
                Err(status) => assert_eq!(error_reason(&status).as_deref(), Some("NOPE")),
            }
        } else if key == "c03" {
            assert_eq!(result.unwrap_err().code(), Code::FailedPrecondition);
        } else {
            assert!(!result.unwrap().replayed, "{key} runs now");
        }
    }
    let mut expected = succeeding.clone();
    expected.insert("c07".into());
    expected.insert("blocker".into());
    assert_eq!(effects(&db).await, expected);
    db.close().await;
}

macro_rules! crash_tests {
    ($($name:ident: $failpoint:literal at $hit:expr),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::crash_and_check(
                        sagaflow_testkit::Kind::Sqlite,
                        $failpoint,
                        $hit,
                        concat!("group_commit::", stringify!($name), "::sqlite"),
                    )
                    .await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::crash_and_check(
                        sagaflow_testkit::Kind::Postgres,
                        $failpoint,
                        $hit,
                        concat!("group_commit::", stringify!($name), "::postgres"),
                    )
                    .await;
                }
            }
        )*
    };
}

crash_tests!(
    // Hit 1 is the blocker's own command; hits 2..=13 the crashing batch's: 7 is after c05.
    killed_in_the_middle_of_a_batch: "group_commit_after_command" at 7,
    // Hit 1 is the blocker's batch.
    killed_before_the_commit: "group_commit_before_commit" at 2,
    killed_after_the_commit_before_any_reply: "group_commit_after_commit" at 2,
);
