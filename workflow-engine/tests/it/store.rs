//! The store conformance suite on both backends, plus what only SQL can show: the journal is
//! append-only and migrations run twice.

use sagaflow_server::{Db, PoolConfig};
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{MIGRATIONS, store::conformance};

use crate::support::{both_backends, open};

both_backends!(
    conformance_suite,
    journal_is_append_only,
    migrations_run_twice
);

async fn conformance_suite(kind: Kind) {
    let h = open(kind, "conformance").await;
    conformance::run(h.store.as_ref()).await;
}

async fn journal_is_append_only(kind: Kind) {
    let h = open(kind, "append_only").await;
    conformance::run(h.store.as_ref()).await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM saga_journal")
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    assert!(rows > 0);
    let update = sqlx::query("UPDATE saga_journal SET detail = '{}'")
        .execute(h.db.pool())
        .await;
    assert!(update.is_err(), "journal rows cannot be updated");
    let delete = sqlx::query("DELETE FROM saga_journal")
        .execute(h.db.pool())
        .await;
    assert!(delete.is_err(), "journal rows cannot be deleted");
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM saga_journal")
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    assert_eq!(after, rows);
}

async fn migrations_run_twice(kind: Kind) {
    let h = open(kind, "migrate_twice").await;
    h.db.close().await;
    let again = Db::connect(&h.tdb.url, MIGRATIONS, &PoolConfig::default()).await;
    assert!(again.is_ok(), "{:?}", again.err());
}
