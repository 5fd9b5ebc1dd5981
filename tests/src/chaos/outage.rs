//! A dependency outage in the distributed mode (docs/architecture.md, "Retries"): the payment
//! service is SIGKILLed, orders are placed while it is down, and it comes back before the sagas'
//! deadline. Every `tok_ok` order must complete — a call refused at connect waits, it does not
//! fail the order — and the recovering service must see the waiting sagas' calls as a ramp
//! within the orchestrators' downstream limit. It measures; the caller asserts.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use sagaflow_proto::{
    order::v1::{GetOrderRequest, OrderStatus, order_service_client::OrderServiceClient},
    workflow::v1::{GetSagaRequest, saga_admin_service_client::SagaAdminServiceClient},
};
use tokio::task::JoinSet;

use super::{ChaosConfig, Role, scenario, verify};

/// What one outage run measured.
#[derive(Debug, Clone, Default)]
pub struct OutageReport {
    /// Orders placed while the payment service was down.
    pub orders: usize,
    /// Order outcomes (`COMPLETED`, `FAILED/…`, `PENDING`).
    pub outcomes: BTreeMap<String, usize>,
    /// How long the payment service was down, milliseconds.
    pub outage_ms: u64,
    /// The payment service's calls per second allowed by the orchestrators' limit (0: none).
    pub payment_calls_per_second: u32,
    /// The payment service's calls in flight allowed by the orchestrators' limit (0: none).
    pub payment_in_flight: usize,
    /// The waiting sagas' StartPayment calls the payment service received per 100 ms window
    /// from its restart on, up to the last one: the arrival time each call stamps on its
    /// authorization intent (written as the call arrives, before the gateway is called — unlike
    /// the idempotency record, written when the call ends, whose times bunch when calls queue).
    pub windows: Vec<u64>,
    /// From the restart until the last order was terminal, milliseconds.
    pub drained_ms: f64,
    /// For orders that did not complete: the distinct step errors their sagas journaled.
    pub errors_of_failed: Vec<String>,
    /// Invariants of docs/architecture.md ("Invariants") violated once every order ended.
    pub violations: Vec<String>,
}

impl OutageReport {
    /// The busiest 100 ms window.
    pub fn busiest_window(&self) -> u64 {
        self.windows.iter().copied().max().unwrap_or(0)
    }
}

/// Runs one outage: the payment service down for `outage`, `orders` orders placed meanwhile,
/// the orchestrators limited to `payment_in_flight` calls in flight and
/// `payment_calls_per_second` calls per second to it (0: no limit).
///
/// # Errors
/// When a process does not start, PostgreSQL is unreachable, or an order cannot be placed.
pub async fn outage(
    orders: usize,
    outage: Duration,
    payment_in_flight: usize,
    payment_calls_per_second: u32,
) -> anyhow::Result<OutageReport> {
    let config = ChaosConfig {
        lease_ms: 5_000,
        // The default of `sagaflow serve`: a refused connection must not use it up.
        step_attempts: 4,
        downstream_limits: format!(
            "*=256/2000,payment={payment_in_flight}/{payment_calls_per_second}"
        ),
        ..ChaosConfig::short(0)
    };
    let mut run = scenario::Scenario::start("outage", &config).await?;
    let before = run.snapshot().await?;
    let cluster = &mut run.cluster;
    let payment = cluster.index_of(Role::Payment)?;
    cluster.kill(payment).await?;
    let down_at = Instant::now();
    let order_channel = cluster.channel(Role::Order)?;
    let ids = scenario::place_plain(&order_channel, "outage", orders).await?;
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    let outage_ms = u64::try_from(down_at.elapsed().as_millis()).unwrap_or(u64::MAX);
    let restarted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let restarted = Instant::now();
    cluster.start(payment, false, None).await?;

    let mut waiting = JoinSet::new();
    for id in ids.clone() {
        let mut client = OrderServiceClient::new(order_channel.clone());
        waiting.spawn(async move {
            let bound = Instant::now() + Duration::from_secs(120);
            let id = id.clone();
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
                    && let Some(order) = reply.into_inner().order
                    && (sagaflow_cli::load::is_terminal(&order) || Instant::now() >= bound)
                {
                    return (id, sagaflow_cli::load::outcome_label(&order));
                }
                if Instant::now() >= bound {
                    return (id, format!("{:?}", OrderStatus::Pending));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let mut outcomes = BTreeMap::new();
    let mut failed = Vec::new();
    while let Some(joined) = waiting.join_next().await {
        let (id, outcome) = joined?;
        if outcome != "COMPLETED" {
            failed.push(id);
        }
        *outcomes.entry(outcome).or_default() += 1;
    }
    let mut admin = SagaAdminServiceClient::new(cluster.channel(Role::Orchestrator)?);
    let mut errors_of_failed = std::collections::BTreeSet::new();
    for id in failed {
        if let Ok(reply) = admin.get_saga(GetSagaRequest { saga_id: id }).await {
            for entry in reply.into_inner().journal {
                if entry.event_type == "step_failed" {
                    errors_of_failed.insert(entry.detail_json);
                }
            }
        }
    }
    let drained_ms = restarted.elapsed().as_secs_f64() * 1e3;

    let violations = run.violations(&ids, &before).await?;
    let db = verify::pool(&run.urls["payment"]).await?;
    let stamps: Vec<i64> = sqlx::query_scalar(
        "SELECT created_at FROM payment_intents WHERE created_at >= $1 ORDER BY created_at",
    )
    .bind(restarted_ms)
    .fetch_all(&db)
    .await?;
    db.close().await;
    let mut windows: Vec<u64> = Vec::new();
    for at in stamps {
        let window = usize::try_from((at - restarted_ms) / 100).unwrap_or(0);
        if windows.len() <= window {
            windows.resize(window + 1, 0);
        }
        windows[window] += 1;
    }
    run.stop().await?;
    Ok(OutageReport {
        orders: ids.len(),
        outcomes,
        outage_ms,
        payment_calls_per_second,
        payment_in_flight,
        windows,
        drained_ms,
        errors_of_failed: errors_of_failed.into_iter().collect(),
        violations,
    })
}
