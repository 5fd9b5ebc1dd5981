//! Values the database refuses (PostgreSQL's data exceptions, SQLSTATE class 22) are the
//! request's fault: INVALID_ARGUMENT with a message that names no SQL, nothing written, on the
//! idempotency store's path as on a plain query. Other database errors stay INTERNAL.

use sagaflow_proto::inventory::v1::{Product, RestockRequest};
use sagaflow_server::{
    Db, Migrations, PoolConfig, ServiceError, db::bad_data_description, error::violated_fields,
    idempotency::execute,
};
use sagaflow_testkit::{Kind, TestDatabase};
use tonic::{Code, Status};

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
    (tdb, db)
}

async fn rows(db: &Db) -> (i64, i64) {
    let count = |table: &str| {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(db.pool())
                .await
                .unwrap()
        }
    };
    (count("counters").await, count("idempotency_keys").await)
}

/// Inserts a counter named `name` under idempotency key `key`.
async fn insert_counter(db: &Db, key: &str, name: &str) -> Result<Product, Status> {
    let req = RestockRequest {
        sku: name.into(),
        quantity: 1,
        idempotency_key: key.into(),
    };
    let name = name.to_owned();
    execute(db, "test.Insert", key, &req, move |conn| {
        Box::pin(async move {
            sqlx::query("INSERT INTO counters (name, value) VALUES ($1, 1)")
                .bind(&name)
                .execute(&mut *conn)
                .await?;
            Ok(Product::default())
        })
    })
    .await
}

fn assert_bad_data(status: &Status, case: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert_eq!(violated_fields(status), vec![String::new()], "{case}");
    let message = status.message().to_lowercase();
    for leak in [
        "insert", "select", "counters", "utf8", "0x00", "sqlstate", "$1",
    ] {
        assert!(
            !message.contains(leak),
            "{case}: {message:?} leaks {leak:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_data_exceptions_are_invalid_argument_and_write_nothing() {
    let (_tdb, db) = open(Kind::Postgres, "bad_data").await;
    insert_counter(&db, "k0", "existing").await.unwrap();
    let before = rows(&db).await;

    // U+0000 in a TEXT value (22021), in the effect and in the idempotency key itself.
    let status = insert_counter(&db, "k1", "a\u{0}b").await.unwrap_err();
    assert_bad_data(&status, "NUL in a value");
    assert!(status.message().contains("cannot store"), "{status:?}");
    let status = insert_counter(&db, "k\u{0}", "fine").await.unwrap_err();
    assert_bad_data(&status, "NUL in the key");
    assert_eq!(rows(&db).await, before, "nothing written");

    // Any data exception, on a plain query: 22P02 invalid_text_representation.
    let err = sqlx::query_scalar::<_, i64>("SELECT CAST($1 AS BIGINT)")
        .bind("twelve")
        .fetch_one(db.pool())
        .await
        .unwrap_err();
    assert!(bad_data_description(&err).is_some(), "{err}");
    assert_bad_data(&Status::from(ServiceError::from(err)), "22P02");

    // A constraint the statement breaks is a bug, not bad input: still INTERNAL.
    let err = sqlx::query("UPDATE counters SET value = -1 WHERE name = 'existing'")
        .execute(db.pool())
        .await
        .unwrap_err();
    assert_eq!(bad_data_description(&err), None, "{err}");
    assert_eq!(Status::from(ServiceError::from(err)).code(), Code::Internal);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_what_postgres_refuses() {
    // Why the validator refuses control characters before any store sees them: SQLite keeps the
    // U+0000 that PostgreSQL refuses, so only the validator can make both answer alike.
    let (_tdb, db) = open(Kind::Sqlite, "bad_data").await;
    insert_counter(&db, "k1", "a\u{0}b").await.unwrap();
    assert_eq!(rows(&db).await, (1, 1));
    db.close().await;
}
