//! The migrations run at every start: a second run on a migrated database changes nothing
//! (migrations are append-only; `scripts/check-migrations.sh` checks it).

use sagaflow_server::{Db, PoolConfig};
use sagaflow_testkit::{Kind, TestDatabase};

async fn migrations_run_twice(kind: Kind) {
    let tdb = TestDatabase::new(kind, "rank_migrate");
    for _ in 0..2 {
        let db = Db::connect(
            &tdb.url,
            sagaflow_ranking::migrations(),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(keys, 0);
        db.close().await;
    }
}

sagaflow_testkit::both_backends!(migrations_run_twice);
