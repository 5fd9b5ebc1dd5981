//! Which retention jobs each process runs (docs/operations.md, "Retention"): `sagaflow serve
//! <service>` prunes its own database, the embedded system (`sagaflow dev`) every database. The
//! task itself is `sagaflow_server::retention`.
//!
//! | database | jobs |
//! |---|---|
//! | order, coupon, inventory, payment, point | `idempotency_keys` |
//! | ranking | `idempotency_keys`, `inbox` |
//! | workflow (orchestrator) | finished `sagas` with their `saga_journal` |

use std::sync::Arc;

use sagaflow_server::{
    Db,
    retention::{PruneJob, Retention, RetentionConfig},
};
use sagaflow_workflow_engine::{SagaStore, SqlSagaStore, store::finished_sagas_job};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::services::Service;

/// The prune jobs of `service`'s database `db` under `config`'s windows.
pub fn jobs(service: Service, db: &Db, config: &RetentionConfig) -> Vec<PruneJob> {
    let idempotency = |name| PruneJob::idempotency_keys(name, db.clone(), config.idempotency);
    match service {
        Service::Orchestrator => {
            let store: Arc<dyn SagaStore> = Arc::new(SqlSagaStore::new(db.clone()));
            vec![finished_sagas_job(store, config.sagas)]
        }
        Service::Ranking => vec![
            idempotency("ranking"),
            sagaflow_ranking::inbox_prune_job(db.clone(), config.inbox),
        ],
        Service::Order => vec![idempotency("order")],
        Service::Coupon => vec![idempotency("coupon")],
        Service::Inventory => vec![idempotency("inventory")],
        Service::Payment => vec![idempotency("payment")],
        Service::Point => vec![idempotency("point")],
    }
}

/// Starts the retention task of a process serving `databases` (each service with its
/// database); it ends when `stop` is cancelled. `None` when retention is off
/// (`--retention-interval-ms 0`).
pub fn spawn(
    databases: &[(Service, &Db)],
    config: &RetentionConfig,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let jobs = databases
        .iter()
        .flat_map(|(service, db)| jobs(*service, db, config))
        .collect();
    Retention::new(jobs, config.batch_rows).spawn(config, stop)
}
