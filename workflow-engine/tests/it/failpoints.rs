//! Crash recovery at every failpoint (docs/architecture.md, "The engine" (Durability rule)): a
//! child process (this test binary re-executed) runs the engine on a database file or PostgreSQL
//! and `abort()`s at the failpoint; a fresh engine on the same database then finishes every saga.
//! An idempotent fake service in a separate SQLite file, reached by both processes, records every
//! call and applies each idempotency key's effect once: each step's action was sent with a single
//! key, and every effect happened exactly once.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sagaflow_server::{Db, Migrations, PoolConfig};
use sagaflow_testkit::{Kind, TestDatabase};
use sagaflow_workflow_engine::{
    Engine, MIGRATIONS, SagaDefinition, SagaStatus, SagaStore, SqlSagaStore, Step, StepContext,
    StepError, definition::CallKind, store::conformance,
};
use serde_json::{Value, json};

use crate::support::fixed_retry;

static EFFECTS_PG: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/effects/postgres");
static EFFECTS_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/effects/sqlite");
const EFFECTS: Migrations = Migrations {
    postgres: &EFFECTS_PG,
    sqlite: &EFFECTS_SQLITE,
};

const ENV_FAILPOINT: &str = "SAGAFLOW_TEST_FAILPOINT";
const ENV_HIT: &str = "SAGAFLOW_TEST_FAILPOINT_HIT";
const ENV_DB: &str = "SAGAFLOW_TEST_ENGINE_DB";
const ENV_EFFECTS: &str = "SAGAFLOW_TEST_EFFECTS_DB";
/// Lease of the child: the parent takes its sagas over this long after the crash.
const CHILD_LEASE_MS: u64 = 1_000;

/// Saga business keys and inputs: two succeed, one needs a poller claim (transient failure), one
/// fails at `c` and compensates `b` and `a`.
fn sagas() -> Vec<(String, Value)> {
    vec![
        ("fp-0".into(), json!({})),
        ("fp-1".into(), json!({"plan": {"b": ["transient"]}})),
        ("fp-2".into(), json!({"plan": {"c": ["business"]}})),
        ("fp-3".into(), json!({})),
    ]
}

/// The fake service: records the call; applies the effect once per key; answers from the script.
async fn serve_call(effects: &Db, ctx: &StepContext) -> Result<Value, StepError> {
    let kind = match ctx.kind {
        CallKind::Action => "action",
        CallKind::Compensation => "compensation",
        CallKind::Finalizer => "finalizer",
    };
    let db_err = |e: sqlx::Error| StepError::transient(format!("effects db: {e}"));
    sqlx::query(
        "INSERT INTO calls (idempotency_key, saga_id, step, kind, attempt) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ctx.idempotency_key.clone())
    .bind(ctx.saga_id.to_string())
    .bind(ctx.step)
    .bind(kind)
    .bind(i64::from(ctx.attempt))
    .execute(effects.pool())
    .await
    .map_err(db_err)?;
    let previous: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE idempotency_key = $1")
        .bind(ctx.idempotency_key.clone())
        .fetch_one(effects.pool())
        .await
        .map_err(db_err)?;
    let section = if ctx.kind == CallKind::Action {
        "plan"
    } else {
        "compensation_plan"
    };
    let script = &ctx.input[section][ctx.step];
    // A business rejection is answered again on every repeat (as a real service replays the
    // stored response, docs/architecture.md, "The service contract"); transient failures are per
    // call.
    let rejected = script
        .as_array()
        .is_some_and(|words| words.iter().any(|w| w == "business"));
    let word = if rejected {
        "business"
    } else {
        usize::try_from(previous - 1)
            .ok()
            .and_then(|n| script.get(n))
            .and_then(Value::as_str)
            .unwrap_or("ok")
    };
    match word {
        "business" => return Err(StepError::business("NO", "no")),
        "transient" => return Err(StepError::transient("try later")),
        _ => {}
    }
    sqlx::query(
        "INSERT INTO effects (idempotency_key, saga_id, step, kind) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(ctx.idempotency_key.clone())
    .bind(ctx.saga_id.to_string())
    .bind(ctx.step)
    .bind(kind)
    .execute(effects.pool())
    .await
    .map_err(db_err)?;
    Ok(json!({"key": ctx.idempotency_key}))
}

/// Delay between attempts of every step, milliseconds.
const RETRY_MS: u64 = 300;

fn definition(effects: &Db) -> SagaDefinition {
    let act = || {
        let effects = effects.clone();
        move |ctx: StepContext| {
            let effects = effects.clone();
            async move { serve_call(&effects, &ctx).await }
        }
    };
    // Retry delays far above a commit's latency under load: a retry that is already due when its
    // failure is recorded runs locally without a claim, and `after_claim` would never be hit.
    let mut builder = SagaDefinition::builder("fp", 1);
    for step in ["a", "b", "c"] {
        builder = builder.step(
            Step::compensatable(step, act())
                .compensation(act())
                .retry(fixed_retry(RETRY_MS)),
        );
    }
    builder
        .step(Step::pivot("p", act()).retry(fixed_retry(RETRY_MS)))
        .step(Step::retriable("r", act()).retry(fixed_retry(RETRY_MS)))
        .failure_finalizer(act())
        .build()
        .unwrap()
}

async fn connect(engine_url: &str, effects_url: &str) -> (Arc<SqlSagaStore>, Db) {
    let db = Db::connect(engine_url, MIGRATIONS, &PoolConfig::default())
        .await
        .unwrap();
    let effects = Db::connect(effects_url, EFFECTS, &PoolConfig::default())
        .await
        .unwrap();
    (Arc::new(SqlSagaStore::new(db)), effects)
}

/// The child process: runs the sagas and aborts at the configured failpoint hit. Each test runs
/// it by re-executing itself (same test name) with the child's environment set.
async fn child() {
    let name = std::env::var(ENV_FAILPOINT).expect("failpoint name");
    let hit: usize = std::env::var(ENV_HIT).unwrap().parse().unwrap();
    let (store, effects) = connect(
        &std::env::var(ENV_DB).unwrap(),
        &std::env::var(ENV_EFFECTS).unwrap(),
    )
    .await;
    let hits = AtomicUsize::new(0);
    fail::cfg_callback(name, move || {
        if hits.fetch_add(1, Ordering::SeqCst) + 1 == hit {
            std::process::abort();
        }
    })
    .unwrap();
    let engine = Engine::builder(store)
        .definition(definition(&effects))
        .owner("child")
        .lease_ms(CHILD_LEASE_MS)
        .poll_interval_ms(10)
        .max_local_wait_ms(0)
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for (key, input) in sagas() {
        ids.push(engine.start("fp", &key, input, None, None).await.unwrap().0);
    }
    for id in ids {
        // Reached only when the failpoint was not hit often enough: the parent reports it.
        engine
            .wait_finished(id, Duration::from_secs(20))
            .await
            .unwrap();
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

/// The test body: as the parent, runs `test_name` again as the child process and checks the
/// recovery; as that child (the environment says so), runs [`child`].
async fn crash_and_recover(kind: Kind, failpoint: &str, hit: usize, test_name: &str) {
    if std::env::var_os(ENV_FAILPOINT).is_some() {
        child().await;
        return;
    }
    let engine_db = TestDatabase::new(kind, &format!("fp_{failpoint}"));
    let effects_db = TestDatabase::sqlite("effects");
    // Create both databases before the child starts.
    connect(&engine_db.url, &effects_db.url).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture"])
        .env(ENV_FAILPOINT, failpoint)
        .env(ENV_HIT, hit.to_string())
        .env(ENV_DB, &engine_db.url)
        .env(ENV_EFFECTS, &effects_db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("child finished in time")
        .unwrap();
    assert!(
        !status.success(),
        "the child aborted at {failpoint} (status {status})"
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "SIGABRT at {failpoint}");
    }

    // A fresh engine finishes every saga (starting again any the child never created).
    let (store, effects) = connect(&engine_db.url, &effects_db.url).await;
    let engine = Engine::builder(store.clone())
        .definition(definition(&effects))
        .owner("recovery")
        .poll_interval_ms(20)
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for (key, input) in sagas() {
        ids.push(engine.start("fp", &key, input, None, None).await.unwrap().0);
    }
    let mut recovered = 0;
    for (i, id) in ids.iter().enumerate() {
        let done = engine
            .wait_finished(*id, Duration::from_secs(30))
            .await
            .unwrap();
        let expected = if i == 2 {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        assert_eq!(
            done.status(),
            expected,
            "saga fp-{i} after a crash at {failpoint}"
        );
        conformance::assert_row_is_fold(store.as_ref(), *id).await;
        let journal = store.journal(*id).await.unwrap();
        recovered += journal
            .iter()
            .filter(|e| e.event.event_type() == "recovered")
            .count();
    }
    engine.shutdown(Duration::from_secs(5)).await;
    assert!(recovered > 0, "the crashed engine's lease was taken over");

    // Every effect exactly once; every call of a step's action used that step's one key.
    // A crash between a reply and its record re-executes the call with the same key.
    if matches!(
        failpoint,
        "after_step_reply_before_record" | "in_compensation"
    ) {
        let scripted_retry = format!("{}:b", ids[1]);
        let repeated: Vec<(String, i64)> = sqlx::query_as(
            "SELECT idempotency_key, COUNT(*) FROM calls WHERE idempotency_key <> $1 \
             GROUP BY idempotency_key HAVING COUNT(*) > 1",
        )
        .bind(scripted_retry)
        .fetch_all(effects.pool())
        .await
        .unwrap();
        assert!(
            !repeated.is_empty(),
            "a call was repeated after the crash at {failpoint}"
        );
        if failpoint == "in_compensation" {
            assert!(repeated.iter().any(|(key, _)| key.ends_with(":compensate")));
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let mut effects_of: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT idempotency_key, step, kind FROM effects WHERE saga_id = $1 ORDER BY idempotency_key",
        )
        .bind(id.to_string())
        .fetch_all(effects.pool())
        .await
        .unwrap();
        if i == 2 {
            // Step c failed for good. When the crash left c current (its start recorded, the
            // call maybe sent), the recovered attempt is in doubt (docs/architecture.md,
            // "Attempts in doubt") and c is compensated too: safe, since a compensation of an
            // action that never happened changes nothing. Whether that happened depends on the
            // crash point, so the check leaves it out.
            effects_of.retain(|(key, _, _)| *key != format!("{id}:c:compensate"));
        }
        let mut expected: Vec<(String, String, String)> = if i == 2 {
            vec![
                (format!("{id}:a"), "a".into(), "action".into()),
                (
                    format!("{id}:a:compensate"),
                    "a".into(),
                    "compensation".into(),
                ),
                (format!("{id}:b"), "b".into(), "action".into()),
                (
                    format!("{id}:b:compensate"),
                    "b".into(),
                    "compensation".into(),
                ),
                (
                    format!("{id}:finalize"),
                    "finalize".into(),
                    "finalizer".into(),
                ),
            ]
        } else {
            ["a", "b", "c", "p", "r"]
                .iter()
                .map(|s| (format!("{id}:{s}"), (*s).to_owned(), "action".to_owned()))
                .collect()
        };
        expected.sort();
        assert_eq!(
            effects_of, expected,
            "effects of fp-{i} after a crash at {failpoint}"
        );
        let keys_per_step: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT step, kind, COUNT(DISTINCT idempotency_key) FROM calls WHERE saga_id = $1 \
             GROUP BY step, kind",
        )
        .bind(id.to_string())
        .fetch_all(effects.pool())
        .await
        .unwrap();
        for (step, kind, keys) in keys_per_step {
            assert_eq!(keys, 1, "{kind} of {step} used one idempotency key");
        }
    }
}

macro_rules! failpoint_tests {
    ($($name:ident: $hit:expr),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::crash_and_recover(
                        sagaflow_testkit::Kind::Sqlite,
                        stringify!($name),
                        $hit,
                        concat!("failpoints::", stringify!($name), "::sqlite"),
                    )
                    .await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::crash_and_recover(
                        sagaflow_testkit::Kind::Postgres,
                        stringify!($name),
                        $hit,
                        concat!("failpoints::", stringify!($name), "::postgres"),
                    )
                    .await;
                }
            }
        )*
    };
}

failpoint_tests!(
    after_claim: 1,
    before_step_call: 6,
    after_step_reply_before_record: 6,
    after_step_recorded: 6,
    in_compensation: 1,
);
