//! How long the death of an orchestrator replica costs in the distributed mode
//! (docs/operations.md, "Recovery after a crash"): the whole system as `sagaflow serve`
//! processes on PostgreSQL with two orchestrator replicas and the default lease, orders placed
//! at once, one replica SIGKILLed while their sagas run; the other replica must adopt the dead
//! one's sagas within one lease and finish them. It measures; the caller decides what to assert.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sagaflow_proto::{
    order::v1::{GetOrderRequest, order_service_client::OrderServiceClient},
    workflow::v1::{GetSagaRequest, saga_admin_service_client::SagaAdminServiceClient},
};
use serde_json::Value;
use tokio::task::JoinSet;

use super::{ChaosConfig, Role, scenario, verify};

/// What one takeover run measured.
#[derive(Debug, Clone, Default)]
pub struct TakeoverReport {
    /// Orders placed before the kill.
    pub orders: usize,
    /// Of their sagas, those the surviving replica recovered from the dead one.
    pub taken_over: usize,
    /// The orchestrators' lease, milliseconds.
    pub lease_ms: u64,
    /// From the kill until the last taken-over saga's order was terminal, milliseconds.
    pub last_taken_over_ms: f64,
    /// From the kill until the first taken-over saga's order was terminal, milliseconds.
    pub first_taken_over_ms: f64,
    /// From the kill until every order was terminal, milliseconds.
    pub all_finished_ms: f64,
    /// Orders that were not terminal within the bound.
    pub unfinished: usize,
    /// Orders placed while one replica was down (first one, then the other, one at a time), and
    /// of them those that did not finish: new orders keep starting sagas.
    pub placed_while_down: usize,
    /// Of [`TakeoverReport::placed_while_down`], those not terminal within 60 s.
    pub unfinished_while_down: usize,
}

/// Places `count` plain orders and waits up to 60 s for each to be terminal; the ids of those
/// that were not.
async fn place_and_finish(
    channel: &sagaflow_server::transport::Transport,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let ids = scenario::place_plain(channel, prefix, count).await?;
    let mut set = JoinSet::new();
    for id in ids {
        let mut client = OrderServiceClient::new(channel.clone());
        set.spawn(async move {
            let order = sagaflow_proto::order::v1::Order {
                order_id: id,
                ..Default::default()
            };
            let bound = tokio::time::Instant::now() + Duration::from_secs(60);
            let done = sagaflow_cli::load::wait_terminal(&mut client, order, bound).await?;
            Ok::<_, tonic::Status>((
                done.order_id.clone(),
                sagaflow_cli::load::is_terminal(&done),
            ))
        });
    }
    let mut unfinished = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (id, terminal) = joined?.context("waiting for an order")?;
        if !terminal {
            unfinished.push(id);
        }
    }
    Ok(unfinished)
}

/// Runs one takeover measurement with `orders` orders and the orchestrators' `lease_ms`.
///
/// # Errors
/// When a process does not start, PostgreSQL is unreachable, or an order cannot be placed.
pub async fn takeover(orders: usize, lease_ms: u64) -> anyhow::Result<TakeoverReport> {
    let config = ChaosConfig {
        lease_ms,
        // Slow enough that many sagas are mid-way when the replica dies.
        gateway_latency_ms: 300,
        ..ChaosConfig::short(0)
    };
    let mut run = scenario::Scenario::start("takeover", &config).await?;
    let cluster = &mut run.cluster;
    let order_channel = cluster.channel(Role::Order)?;
    let ids = scenario::place_plain(&order_channel, "takeover", orders).await?;
    // Kill the orchestrator replica that holds the most live leases while the sagas run (the
    // relay balances deliveries over both, not necessarily evenly).
    let workflow = verify::pool(&run.urls["workflow"]).await?;
    let holders: Vec<(String, i64)> = sqlx::query_as(
        "SELECT lease_owner, COUNT(*) FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING') \
         AND lease_owner IS NOT NULL GROUP BY lease_owner ORDER BY COUNT(*) DESC",
    )
    .fetch_all(&workflow)
    .await?;
    workflow.close().await;
    let busiest = holders.first().map(|(owner, _)| owner.clone());
    let orchestrators: Vec<usize> = (0..cluster.names().len())
        .filter(|&i| cluster.node(i).role == Role::Orchestrator)
        .collect();
    let victim = orchestrators
        .iter()
        .copied()
        .find(|&i| {
            busiest
                .as_deref()
                .is_some_and(|o| o.starts_with(&format!("{}.", cluster.node(i).name)))
        })
        .or_else(|| orchestrators.first().copied())
        .context("no orchestrator")?;
    let victim_name = cluster.node(victim).name.clone();
    cluster.kill(victim).await?;
    let killed = Instant::now();

    let mut waiting = JoinSet::new();
    for id in ids.clone() {
        let mut client = OrderServiceClient::new(order_channel.clone());
        waiting.spawn(async move {
            let bound = Instant::now() + Duration::from_secs(60);
            loop {
                let reply = client
                    .get_order(GetOrderRequest {
                        order_id: id.clone(),
                        wait: Some(prost_types::Duration {
                            seconds: 10,
                            nanos: 0,
                        }),
                    })
                    .await;
                if let Ok(reply) = reply
                    && reply
                        .into_inner()
                        .order
                        .is_some_and(|o| sagaflow_cli::load::is_terminal(&o))
                {
                    return (id, Some(Instant::now()));
                }
                if Instant::now() >= bound {
                    return (id, None);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let mut finished: BTreeMap<String, Option<Instant>> = BTreeMap::new();
    while let Some(joined) = waiting.join_next().await {
        let (id, at) = joined?;
        finished.insert(id, at);
    }
    // Which sagas the survivor took over from the dead replica: their journal says so.
    let survivor = orchestrators
        .iter()
        .copied()
        .find(|&i| i != victim)
        .context("no second orchestrator")?;
    let mut admin = SagaAdminServiceClient::new(cluster.channel_to(survivor)?);
    let mut taken_over = Vec::new();
    for id in &ids {
        let journal = admin
            .get_saga(GetSagaRequest {
                saga_id: id.clone(),
            })
            .await
            .context("GetSaga")?
            .into_inner()
            .journal;
        let from_victim = journal.iter().any(|e| {
            e.event_type == "recovered"
                && serde_json::from_str::<Value>(&e.detail_json).is_ok_and(|d| {
                    d["previous_owner"]
                        .as_str()
                        .is_some_and(|o| o.starts_with(&format!("{victim_name}.")))
                })
        });
        if from_victim {
            taken_over.push(id.clone());
        }
    }
    let since = |at: &Instant| at.duration_since(killed).as_secs_f64() * 1e3;
    let taken_times: Vec<f64> = taken_over
        .iter()
        .filter_map(|id| finished.get(id).copied().flatten())
        .map(|at| since(&at))
        .collect();
    let all: Vec<f64> = finished.values().flatten().map(since).collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    let report = TakeoverReport {
        orders: ids.len(),
        taken_over: taken_over.len(),
        lease_ms,
        last_taken_over_ms: max(&taken_times),
        first_taken_over_ms: taken_times.iter().copied().fold(f64::INFINITY, f64::min),
        all_finished_ms: max(&all),
        unfinished: finished.values().filter(|at| at.is_none()).count(),
        ..TakeoverReport::default()
    };
    // New orders keep starting sagas with one replica down: first the victim (still down), then,
    // with it back, the other one.
    let mut report = report;
    let batch = orders / 4;
    let mut unfinished = place_and_finish(&order_channel, "while-a-down", batch).await?;
    cluster.start(victim, false, None).await?;
    let other = orchestrators
        .iter()
        .copied()
        .find(|&i| i != victim)
        .context("no second orchestrator")?;
    cluster.kill(other).await?;
    unfinished.extend(place_and_finish(&order_channel, "while-b-down", batch).await?);
    report.placed_while_down = 2 * batch;
    report.unfinished_while_down = unfinished.len();
    run.stop().await?;
    Ok(report)
}
