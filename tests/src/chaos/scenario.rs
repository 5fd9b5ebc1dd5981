//! What the measured scenarios (`takeover`, `outage`) share: a fresh distributed system on its
//! own PostgreSQL databases with the demo data, plain orders placed at once, and the clean-up.

use std::collections::BTreeMap;

use anyhow::Context as _;
use sagaflow_proto::order::v1::{
    OrderLineRequest, PlaceOrderRequest, order_service_client::OrderServiceClient,
};
use sagaflow_server::transport::Transport;
use sagaflow_testkit::{Kind, TestDatabase};
use tokio::task::JoinSet;

use super::{ChaosConfig, cluster, verify, workload};

/// A running system: its processes, their databases and the run directory.
pub(crate) struct Scenario {
    pub(crate) cluster: cluster::Cluster,
    /// The demo data it was seeded with.
    pub(crate) seed: workload::SeedData,
    pub(crate) urls: BTreeMap<&'static str, String>,
    _databases: BTreeMap<&'static str, TestDatabase>,
    _dir: tempfile::TempDir,
}

impl Scenario {
    /// Starts every process of `config` on fresh databases named after `name`, without faults,
    /// and seeds the demo data.
    pub(crate) async fn start(name: &str, config: &ChaosConfig) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sagaflow-{name}-"))
            .tempdir()
            .context("creating the run directory")?;
        let databases: BTreeMap<&'static str, TestDatabase> = cluster::DATABASES
            .iter()
            .map(|&db| {
                (
                    db,
                    TestDatabase::new(Kind::Postgres, &format!("{name}_{db}")),
                )
            })
            .collect();
        let urls: BTreeMap<&'static str, String> = databases
            .iter()
            .map(|(db, test_db)| (*db, test_db.url.clone()))
            .collect();
        let mut cluster = cluster::Cluster::new(dir.path(), &urls, config)?;
        cluster.start_all(false).await?;
        let seed = workload::seed_data().await?;
        workload::apply_seed(&cluster, &seed).await?;
        Ok(Self {
            cluster,
            seed,
            urls,
            _databases: databases,
            _dir: dir,
        })
    }

    /// The business state the invariants are checked against (before a load, and after).
    ///
    /// # Errors
    /// When a query API fails.
    pub(crate) async fn snapshot(&self) -> anyhow::Result<sagaflow_cli::invariants::Snapshot> {
        let services = self.cluster.services()?;
        sagaflow_cli::invariants::snapshot(&services, &self.seed.users, &self.seed.coupon_codes())
            .await
            .context("taking a snapshot")
    }

    /// Checks every invariant of docs/architecture.md ("Invariants") over `order_ids`, which
    /// must all be terminal, between `before` and now; the violations.
    ///
    /// # Errors
    /// When a query API fails.
    pub(crate) async fn violations(
        &self,
        order_ids: &[String],
        before: &sagaflow_cli::invariants::Snapshot,
    ) -> anyhow::Result<Vec<String>> {
        let mut client = OrderServiceClient::new(self.cluster.channel(super::Role::Order)?);
        let mut orders = Vec::with_capacity(order_ids.len());
        for id in order_ids {
            let order = client
                .get_order(sagaflow_proto::order::v1::GetOrderRequest {
                    order_id: id.clone(),
                    wait: None,
                })
                .await
                .context("GetOrder")?
                .into_inner()
                .order
                .context("GetOrder answered no order")?;
            orders.push(order);
        }
        let services = self.cluster.services()?;
        let (_, report) = sagaflow_cli::invariants::settled(
            &services,
            &orders,
            before,
            &self.seed.users,
            &self.seed.coupon_codes(),
            std::time::Duration::from_secs(30),
        )
        .await
        .context("checking the invariants")?;
        Ok(report.violations)
    }

    /// Kills every process and drops the databases.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.cluster.kill_all().await?;
        if let Err(err) = verify::drop_databases(self.urls.values()).await {
            eprintln!("could not drop the run's databases: {err:#}");
        }
        Ok(())
    }
}

/// Places `count` plain orders at once (alice, one KB-001, `tok_ok`, request ids
/// `<prefix>-<i>`); their ids.
///
/// # Errors
/// When PlaceOrder fails.
pub(crate) async fn place_plain(
    channel: &Transport,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut placing = JoinSet::new();
    for i in 0..count {
        let mut client = OrderServiceClient::new(channel.clone());
        let request_id = format!("{prefix}-{i}");
        placing.spawn(async move {
            client
                .place_order(PlaceOrderRequest {
                    request_id,
                    user_id: "alice".into(),
                    lines: vec![OrderLineRequest {
                        sku: "KB-001".into(),
                        quantity: 1,
                    }],
                    coupon_code: None,
                    points: 0,
                    payment_method: "tok_ok".into(),
                })
                .await
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(joined) = placing.join_next().await {
        let order = joined?
            .context("PlaceOrder")?
            .into_inner()
            .order
            .context("PlaceOrder answered no order")?;
        ids.push(order.order_id);
    }
    Ok(ids)
}
