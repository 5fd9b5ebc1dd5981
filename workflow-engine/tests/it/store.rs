//! The store conformance suite on both backends, plus what only SQL can show: the journal is
//! append-only (deletes only of finished sagas' journals, for retention) and migrations run
//! twice.

use sagaflow_server::{Db, PoolConfig};
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{MIGRATIONS, store::conformance};

use crate::support::open;

sagaflow_testkit::both_backends!(
    conformance_suite,
    journal_is_append_only,
    journal_deletes_only_of_finished_sagas,
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

/// The database itself (migrations/workflow/*/0003_retention.sql) refuses to delete the journal
/// of a saga that is not COMPLETED or COMPENSATED, and every update of a journal row.
async fn journal_deletes_only_of_finished_sagas(kind: Kind) {
    let h = open(kind, "journal_delete").await;
    sqlx::query(
        "INSERT INTO sagas (id, definition_name, definition_version, business_key, status, phase, \
         attempt, input, outputs, compensation_plan, next_attempt_at, fencing_token, created_at, \
         updated_at, last_seq) \
         VALUES ('s1', 'd', 1, 'k1', 'RUNNING', 'forward', 0, 'null', '{}', '[]', 0, 1, 0, 0, 1)",
    )
    .execute(h.db.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO saga_journal (saga_id, seq, at, event_type, step, attempt, detail) \
         VALUES ('s1', 1, 0, 'saga_started', NULL, NULL, '{}')",
    )
    .execute(h.db.pool())
    .await
    .unwrap();
    let delete = || async {
        sqlx::query("DELETE FROM saga_journal WHERE saga_id = 's1'")
            .execute(h.db.pool())
            .await
    };
    for status in ["RUNNING", "COMPENSATING", "NEEDS_ATTENTION"] {
        sqlx::query("UPDATE sagas SET status = $1 WHERE id = 's1'")
            .bind(status)
            .execute(h.db.pool())
            .await
            .unwrap();
        assert!(
            delete().await.is_err(),
            "the journal of a {status} saga stays"
        );
    }
    // The saga row cannot go first either (the journal references it).
    assert!(
        sqlx::query("DELETE FROM sagas WHERE id = 's1'")
            .execute(h.db.pool())
            .await
            .is_err()
    );
    for status in ["COMPLETED", "COMPENSATED"] {
        sqlx::query("UPDATE sagas SET status = $1 WHERE id = 's1'")
            .bind(status)
            .execute(h.db.pool())
            .await
            .unwrap();
        let update = sqlx::query("UPDATE saga_journal SET detail = '[]' WHERE saga_id = 's1'")
            .execute(h.db.pool())
            .await;
        assert!(update.is_err(), "journal rows are never updated");
    }
    assert_eq!(delete().await.unwrap().rows_affected(), 1);
    sqlx::query("DELETE FROM sagas WHERE id = 's1'")
        .execute(h.db.pool())
        .await
        .unwrap();
}

async fn migrations_run_twice(kind: Kind) {
    let h = open(kind, "migrate_twice").await;
    h.db.close().await;
    let again = Db::connect(&h.tdb.url, MIGRATIONS, &PoolConfig::default()).await;
    assert!(again.is_ok(), "{:?}", again.err());
}
