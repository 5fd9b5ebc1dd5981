//! The idempotency store (docs/architecture.md, "The service contract") on SQLite and PostgreSQL:
//! a repeat replays the stored response and changes nothing; the same key with another request is
//! ALREADY_EXISTS; business errors are stored and replayed; 20 tasks racing one key produce exactly
//! one effect; retention deletes exactly the expired records, in bounded batches, and a live key
//! still replays.

use sagaflow_proto::inventory::v1::{Product, RestockRequest};
use sagaflow_server::{
    Db, Migrations, PoolConfig, ServiceError,
    error::error_reason,
    idempotency::{execute, execute_detailed, lookup},
    retention::{DEFAULT_IDEMPOTENCY_MS, PruneJob, Retention},
};
use sagaflow_testkit::{Kind, TestDatabase};
use tokio_util::sync::CancellationToken;
use tonic::Code;

static PG: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations/sqlite");

async fn open(kind: Kind, name: &str) -> (TestDatabase, Db) {
    let tdb = TestDatabase::new(kind, name);
    let db = Db::connect(
        &tdb.url,
        Migrations {
            postgres: &PG,
            sqlite: &SQLITE,
        },
        &PoolConfig::default(),
    )
    .await
    .expect("connect to the test database");
    sqlx::query("INSERT INTO counters (name, value) VALUES ('stock', 0)")
        .execute(db.pool())
        .await
        .unwrap();
    (tdb, db)
}

async fn stock(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT value FROM counters WHERE name = 'stock'")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn key_rows(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

fn restock(key: &str, quantity: i32) -> RestockRequest {
    RestockRequest {
        sku: "KB-1".into(),
        quantity,
        idempotency_key: key.into(),
    }
}

/// Adds `quantity` to the counter, or fails with OUT_OF_RANGE-like business error when negative.
async fn run_restock(db: &Db, req: &RestockRequest) -> Result<Product, tonic::Status> {
    let quantity = i64::from(req.quantity);
    execute(db, "test.Restock", &req.idempotency_key, req, move |conn| {
        Box::pin(async move {
            sqlx::query("UPDATE counters SET value = value + $1 WHERE name = 'stock'")
                .bind(quantity.abs())
                .execute(&mut *conn)
                .await?;
            if quantity < 0 {
                // The write above must be rolled back with the savepoint.
                return Err(ServiceError::precondition("NEGATIVE", "negative restock"));
            }
            let stock: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'stock'")
                .fetch_one(&mut *conn)
                .await?;
            Ok(Product {
                sku: "KB-1".into(),
                name: "keyboard".into(),
                unit_price: 1000,
                stock,
            })
        })
    })
    .await
}

async fn repeat_replays_and_changes_nothing(kind: Kind) {
    let (_tdb, db) = open(kind, "idem_repeat").await;
    let first = run_restock(&db, &restock("k1", 5)).await.unwrap();
    assert_eq!(first.stock, 5);
    let again =
        execute_detailed::<_, Product, _>(&db, "test.Restock", "k1", &restock("k1", 5), |_conn| {
            Box::pin(async { panic!("the effect must not run on a repeat") })
        })
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.response, first);
    assert_eq!(stock(&db).await, 5);
    assert_eq!(key_rows(&db).await, 1);
}

async fn other_request_same_key_is_already_exists(kind: Kind) {
    let (_tdb, db) = open(kind, "idem_conflict").await;
    run_restock(&db, &restock("k1", 5)).await.unwrap();
    let err = run_restock(&db, &restock("k1", 6)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        error_reason(&err).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(stock(&db).await, 5);
}

async fn business_errors_are_stored_and_replayed(kind: Kind) {
    let (_tdb, db) = open(kind, "idem_business").await;
    let err = run_restock(&db, &restock("neg", -3)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).as_deref(), Some("NEGATIVE"));
    // The effect's partial write was rolled back with the savepoint.
    assert_eq!(stock(&db).await, 0);
    // The repeat gets the same error without running the effect.
    let again = execute::<_, Product, _>(&db, "test.Restock", "neg", &restock("neg", -3), |_c| {
        Box::pin(async { panic!("the effect must not run on a repeat") })
    })
    .await
    .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&again).as_deref(), Some("NEGATIVE"));
    assert_eq!(again.message(), err.message());
}

async fn transient_errors_store_nothing(kind: Kind) {
    let (_tdb, db) = open(kind, "idem_transient").await;
    let err = execute::<_, Product, _>(&db, "test.Restock", "t1", &restock("t1", 2), |conn| {
        Box::pin(async move {
            sqlx::query("UPDATE counters SET value = value + 2 WHERE name = 'stock'")
                .execute(&mut *conn)
                .await?;
            Err(ServiceError::Unavailable("dependency down".into()))
        })
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(stock(&db).await, 0);
    assert_eq!(key_rows(&db).await, 0);
    // A retry with the same key now runs the effect.
    assert_eq!(run_restock(&db, &restock("t1", 2)).await.unwrap().stock, 2);
}

async fn racing_tasks_apply_once(kind: Kind) {
    let (_tdb, db) = open(kind, "idem_race").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            run_restock(&db, &restock("race", 7)).await
        }));
    }
    let mut stocks = Vec::new();
    for t in tasks {
        stocks.push(
            t.await
                .unwrap()
                .expect("every racer gets the one response")
                .stock,
        );
    }
    assert!(stocks.iter().all(|s| *s == 7), "responses: {stocks:?}");
    assert_eq!(stock(&db).await, 7);
    assert_eq!(key_rows(&db).await, 1);
}

async fn lookup_reads_without_claiming(kind: Kind) {
    let (_tdb, db) = open(kind, "idem_lookup").await;
    let none = lookup::<_, Product>(&db, "test.Restock", "k1", &restock("k1", 5))
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(key_rows(&db).await, 0, "lookup writes nothing");
    let first = run_restock(&db, &restock("k1", 5)).await.unwrap();
    let stored = lookup::<_, Product>(&db, "test.Restock", "k1", &restock("k1", 5))
        .await
        .unwrap();
    assert_eq!(stored, Some(first));
    let err = lookup::<_, Product>(&db, "test.Restock", "k1", &restock("k1", 6))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    run_restock(&db, &restock("neg", -1)).await.unwrap_err();
    let err = lookup::<_, Product>(&db, "test.Restock", "neg", &restock("neg", -1))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err).as_deref(), Some("NEGATIVE"));
}

async fn keys(db: &Db) -> Vec<String> {
    sqlx::query_scalar("SELECT idempotency_key FROM idempotency_keys ORDER BY idempotency_key")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

/// Retention (docs/operations.md, "Retention"): 25 records older than the window (successes and
/// stored rejections) and 5 live ones; one round with 10-row batches deletes exactly the 25, and
/// a repeat of a live key still gets its stored response without running the effect.
async fn retention_prunes_exactly_the_expired_records(kind: Kind) {
    let (_tdb, db) = open(kind, "idem_retention").await;
    let day = 86_400_000_i64;
    let now = sagaflow_server::db::now_ms();
    let mut expired = Vec::new();
    let mut live = Vec::new();
    for i in 0..30 {
        let key = format!("k{i:02}");
        // Every third one a stored business rejection.
        let quantity = if i % 3 == 0 { -1 } else { 1 };
        let _ = run_restock(&db, &restock(&key, quantity)).await;
        // 25 created 7 days and 1 ms ago (or much earlier), 5 just inside the window.
        let age = if i < 25 {
            7 * day + 1 + i64::from(i) * day
        } else {
            7 * day - 60_000
        };
        sqlx::query("UPDATE idempotency_keys SET created_at = $1 WHERE idempotency_key = $2")
            .bind(now - age)
            .bind(&key)
            .execute(db.pool())
            .await
            .unwrap();
        if i < 25 {
            expired.push(key)
        } else {
            live.push(key)
        }
    }
    let stock_before = stock(&db).await;
    let retention = Retention::new(
        vec![PruneJob::idempotency_keys(
            "test",
            db.clone(),
            std::time::Duration::from_millis(DEFAULT_IDEMPOTENCY_MS),
        )],
        10,
    );
    let report = retention.run_round(now, &CancellationToken::new()).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.rows("test", "idempotency_keys"), 25);
    assert_eq!(keys(&db).await, live);
    // Nothing else was touched.
    assert_eq!(stock(&db).await, stock_before);
    // A repeat of a live key replays its stored response; the effect does not run.
    for key in &live {
        let quantity = if key == "k27" { -1 } else { 1 };
        let again = execute_detailed::<_, Product, _>(
            &db,
            "test.Restock",
            key,
            &restock(key, quantity),
            |_conn| Box::pin(async { panic!("the effect must not run on a repeat") }),
        )
        .await;
        match again {
            Ok(again) => assert!(again.replayed),
            Err(err) => assert_eq!(error_reason(&err).as_deref(), Some("NEGATIVE"), "{key}"),
        }
    }
    assert_eq!(stock(&db).await, stock_before);
    // A second round deletes nothing.
    let again = retention.run_round(now, &CancellationToken::new()).await;
    assert_eq!(again.rows("test", "idempotency_keys"), 0);
    assert_eq!(key_rows(&db).await, 5);
}

use sagaflow_testkit::both_backends;

both_backends!(
    repeat_replays_and_changes_nothing,
    other_request_same_key_is_already_exists,
    business_errors_are_stored_and_replayed,
    transient_errors_store_nothing,
    racing_tasks_apply_once,
    lookup_reads_without_claiming,
    retention_prunes_exactly_the_expired_records,
);
