//! The migrations run at every start: a second run on a migrated database changes nothing
//! (migrations are append-only; `scripts/check-migrations.sh` checks it).

use sagaflow_server::{Db, PoolConfig};
use sagaflow_testkit::{Kind, TestDatabase, service};

async fn migrations_run_twice(kind: Kind) {
    service::migrations_run_twice(kind, "ord_migrate", sagaflow_order::migrations()).await;
}

/// Migration 0007 (docs/operations.md, "End users") rewrites the request id and PlaceOrder key
/// of an order placed before it to the per-user form the service uses since
/// (`<byte length of user>:<user>:<request_id>`), so a retry after the upgrade finds its order.
async fn migration_0007_scopes_older_request_ids_by_user(kind: Kind) {
    let tdb = TestDatabase::new(kind, "ord_0007");
    let db = Db::connect(
        &tdb.url,
        sagaflow_order::migrations(),
        &PoolConfig::default(),
    )
    .await
    .unwrap();
    // Rows as the service wrote them before 0007 (a 4-byte user: "é" is two bytes), and a key
    // of another command that must stay as it is.
    sqlx::query(
        "INSERT INTO orders (order_id, request_id, user_id, subtotal, discount, points, payable, \
         status, payment_method, created_at, updated_at) \
         VALUES ('o-1', 'r-1', 'éve', 0, 0, 0, 0, 'PENDING', 'tok_ok', 1, 1)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    for (key, command) in [
        ("PlaceOrder:r-1", "order.PlaceOrder"),
        ("saga-1:complete_order", "order.CompleteOrder"),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys (idempotency_key, command, request_hash, created_at) \
             VALUES ($1, $2, $3, 1)",
        )
        .bind(key)
        .bind(command)
        .bind(vec![0u8])
        .execute(db.pool())
        .await
        .unwrap();
    }
    let sql = match kind {
        Kind::Postgres => {
            include_str!("../../../../migrations/order/postgres/0007_request_id_per_user.sql")
        }
        Kind::Sqlite => {
            include_str!("../../../../migrations/order/sqlite/0007_request_id_per_user.sql")
        }
    };
    for statement in sql.split(';').filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"))
    }) {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(db.pool())
            .await
            .unwrap();
    }
    let request_id: String = sqlx::query_scalar("SELECT request_id FROM orders")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(request_id, "4:éve:r-1");
    let mut keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM idempotency_keys")
        .fetch_all(db.pool())
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, ["PlaceOrder:4:éve:r-1", "saga-1:complete_order"]);
    db.close().await;
}

sagaflow_testkit::both_backends!(
    migrations_run_twice,
    migration_0007_scopes_older_request_ids_by_user
);
