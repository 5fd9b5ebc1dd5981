//! The migrations run at every start: a second run on a migrated database changes nothing
//! (migrations are append-only; `scripts/check-migrations.sh` checks it).

use sagaflow_testkit::{Kind, service};

async fn migrations_run_twice(kind: Kind) {
    service::migrations_run_twice(kind, "ran_migrate", sagaflow_ranking::migrations()).await;
}

sagaflow_testkit::both_backends!(migrations_run_twice);
