//! The migrations run at every start: a second run on a migrated database changes nothing
//! (migrations are append-only; `scripts/check-migrations.sh` checks it), and a database with
//! rows from before 0003 (the product view) keeps them valid.

use sagaflow_server::{Db, Migrations, PoolConfig};
use sagaflow_testkit::{Kind, TestDatabase, service};
use sqlx::migrate::Migrator;

use crate::harness::{completed, deducted};

async fn migrations_run_twice(kind: Kind) {
    service::migrations_run_twice(kind, "ran_migrate", sagaflow_ranking::migrations()).await;
}

/// No migration at all: opens (creates) the database only.
static NONE: Migrator = Migrator::DEFAULT;

/// Inbox and sales rows written at version 2 stay as they were through 0003, are OrderCompleted
/// rows, still count each order once, and sit next to Inventory events' rows.
async fn rows_from_before_the_product_view_stay_valid(kind: Kind) {
    let tdb = TestDatabase::new(kind, "ran_migrate_rows");
    let empty = Migrations {
        postgres: &NONE,
        sqlite: &NONE,
    };
    let db = Db::connect(&tdb.url, empty, &PoolConfig::default())
        .await
        .unwrap();
    let all = sagaflow_ranking::migrations();
    let migrator = match kind {
        Kind::Postgres => all.postgres,
        Kind::Sqlite => all.sqlite,
    };
    migrator.run_to(2, db.pool()).await.unwrap();
    let old_order = completed(&[("KB-001", 2)]);
    let order_id = old_order
        .event
        .as_ref()
        .unwrap()
        .order
        .as_ref()
        .unwrap()
        .order_id
        .clone();
    sqlx::query("INSERT INTO inbox (event_id, order_id, recorded_at) VALUES ($1, $2, 5)")
        .bind(&old_order.event_id)
        .bind(&order_id)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO product_sales (sku, units_sold, orders, updated_at) \
         VALUES ('KB-001', 2, 1, 5)",
    )
    .execute(db.pool())
    .await
    .unwrap();

    migrator.run(db.pool()).await.unwrap();
    let row: (String, String, Option<String>, i64) =
        sqlx::query_as("SELECT event_id, event_type, order_id, recorded_at FROM inbox")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(
        row,
        (
            old_order.event_id.clone(),
            "OrderCompleted".to_owned(),
            Some(order_id.clone()),
            5
        )
    );
    // The order is still counted once, under any event id.
    let mut again = old_order.clone();
    again.event_id = crate::harness::new_id();
    let event = again.event.clone().unwrap();
    assert!(
        !sagaflow_ranking::events::record_order_completed(&db, &again.event_id, event)
            .await
            .unwrap()
    );
    // Inventory events have inbox rows without an order.
    let inventory = deducted("KB-001", 1, 2, 8);
    let event = inventory.event.clone().unwrap().into();
    assert!(
        sagaflow_ranking::events::record_inventory_event(
            &db,
            &inventory.event_id,
            inventory.sequence,
            event
        )
        .await
        .unwrap()
    );
    let types: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_type, order_id FROM inbox ORDER BY recorded_at")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        types,
        [
            ("OrderCompleted".to_owned(), Some(order_id)),
            ("InventoryDeducted".to_owned(), None),
        ]
    );
    // Only OrderCompleted rows name an order.
    let bad = sqlx::query(
        "INSERT INTO inbox (event_id, event_type, order_id, recorded_at) \
         VALUES ('x', 'InventoryDeducted', 'o', 6)",
    )
    .execute(db.pool())
    .await;
    assert!(bad.is_err(), "{bad:?}");
    db.close().await;
}

sagaflow_testkit::both_backends!(
    migrations_run_twice,
    rows_from_before_the_product_view_stay_valid
);
