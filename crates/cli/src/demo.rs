//! `sagaflow demo`: places the shipped sample orders (`examples/orders.jsonl`, or `--orders FILE`)
//! against a running system (`--addr`) or an embedded one started for the occasion, waits for every
//! saga, prints the outcomes by reason and scenario, sagas per second and p50/p99 latency, then
//! checks the invariants of docs/architecture.md, "Invariants", through the query APIs. Exits
//! non-zero if an order did not finish or an invariant fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use crate::{
    dev::{Embedded, EmbeddedConfig},
    invariants::{self, Services},
    load::{
        INTERRUPT_GRACE, Interrupt, Latencies, Progress, is_terminal, outcome_label, place_and_wait,
    },
    services::{Peers, Service},
    targets::TargetArgs,
};
use anyhow::{Context as _, bail};
use clap::Args;
use sagaflow_proto::order::v1::{
    Order, OrderLineRequest, PlaceOrderRequest, order_service_client::OrderServiceClient,
};
use serde::Deserialize;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

/// The shipped sample orders.
pub const SAMPLE_ORDERS: &str = include_str!("../examples/orders.jsonl");

/// Flags of `sagaflow demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the system runs (`--addr` for `sagaflow dev`, `--distributed` or
    /// `--<service>-addr` for `sagaflow serve` processes); with none of them an embedded system
    /// is started on a fresh temporary data directory and removed afterwards.
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Orders to place, one JSON `PlaceOrderRequest` per line (default: the shipped sample).
    #[arg(long)]
    pub orders: Option<PathBuf>,
    /// Orders in flight at once (at least 1).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Longest wait for all orders to finish, seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout_secs: u64,
}

/// What each scenario of the shipped sample must end as (outcome labels as the report prints
/// them). An order whose outcome is not among its scenario's is a demo failure; scenarios not
/// listed (a custom `--orders` file) are not checked.
pub const SCENARIO_OUTCOMES: &[(&str, &[&str])] = &[
    ("plain", &["COMPLETED"]),
    ("coupon", &["COMPLETED"]),
    ("coupon+points", &["COMPLETED"]),
    ("points", &["COMPLETED"]),
    ("coupon minimum not met", &["FAILED/COUPON_UNAVAILABLE"]),
    ("expired coupon", &["FAILED/COUPON_UNAVAILABLE"]),
    ("someone else's coupon", &["FAILED/COUPON_UNAVAILABLE"]),
    ("out of stock", &["FAILED/OUT_OF_STOCK"]),
    (
        "limited stock (5 units, some win)",
        &["COMPLETED", "FAILED/OUT_OF_STOCK"],
    ),
    ("points above balance", &["FAILED/INSUFFICIENT_POINTS"]),
    ("declined card", &["FAILED/PAYMENT_DECLINED"]),
    (
        "capture declined (pivot fails: everything compensated)",
        &["FAILED/PAYMENT_DECLINED"],
    ),
    (
        "slow gateway (unknown outcome)",
        &["FAILED/DEADLINE_EXCEEDED"],
    ),
];

/// The outcomes `scenario` may end as, when it is one of the shipped sample's.
pub fn expected_outcomes(scenario: &str) -> Option<&'static [&'static str]> {
    SCENARIO_OUTCOMES
        .iter()
        .find(|(name, _)| *name == scenario)
        .map(|(_, outcomes)| *outcomes)
}

/// One line of the orders file. Unknown fields are an error (a misspelt `coupon_code` would
/// otherwise place an order without its coupon).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleOrder {
    /// Client request id; the demo prefixes it with a run id so every run places new orders.
    pub request_id: String,
    /// Ordering user.
    pub user_id: String,
    /// Lines.
    pub lines: Vec<SampleLine>,
    /// Coupon code, if any.
    #[serde(default)]
    pub coupon_code: Option<String>,
    /// Points to spend, KRW won.
    #[serde(default)]
    pub points: i64,
    /// Card token.
    pub payment_method: String,
    /// What the order exercises (for the report).
    #[serde(default)]
    pub scenario: String,
}

/// One line of a sample order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleLine {
    /// Product sku.
    pub sku: String,
    /// Units.
    pub quantity: i32,
}

/// Parses a JSONL orders file.
///
/// # Errors
/// Names the first line that is not a sample order.
pub fn parse_orders(text: &str) -> anyhow::Result<Vec<SampleOrder>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("orders line {}", i + 1)))
        .collect()
}

impl SampleOrder {
    /// The PlaceOrder request, with `run` prefixed to the request id.
    pub fn request(&self, run: &str) -> PlaceOrderRequest {
        PlaceOrderRequest {
            request_id: format!("{run}-{}", self.request_id),
            user_id: self.user_id.clone(),
            lines: self
                .lines
                .iter()
                .map(|l| OrderLineRequest {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                })
                .collect(),
            coupon_code: self.coupon_code.clone(),
            points: self.points,
            payment_method: self.payment_method.clone(),
        }
    }
}

/// What one demo run observed.
#[derive(Debug)]
pub struct DemoOutcome {
    /// Every order as last read.
    pub orders: Vec<Order>,
    /// Orders that never reached a terminal status.
    pub unfinished: usize,
    /// Invariant violations.
    pub violations: Vec<String>,
    /// Number of invariant checks made.
    pub checks: usize,
    /// Whether Ctrl-C cut the run short (the process then exits 130).
    pub interrupted: bool,
    /// Orders that ended other than their scenario says (`request_id: scenario: outcome`).
    pub mismatches: Vec<String>,
}

/// Runs the demo (see the module docs).
///
/// # Errors
/// When the system cannot be reached or started, or orders cannot be placed.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoOutcome> {
    let text = match &args.orders {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => SAMPLE_ORDERS.to_owned(),
    };
    let samples = parse_orders(&text)?;
    if samples.is_empty() {
        bail!("the orders file has no orders");
    }
    let interrupt = Interrupt::on_ctrl_c();
    let (embedded, peers) = if args.targets.any() {
        let needed = [
            Service::Order,
            Service::Inventory,
            Service::Point,
            Service::Coupon,
            Service::Payment,
        ]
        .map(|s| (s, args.targets.url_or_dev(s)));
        crate::targets::reachable(&args.targets, &needed).await?;
        (None, args.targets.peers(crate::targets::DEV_ADDR)?)
    } else {
        // Owner-only from the start, as `datadir::prepare` wants it (docs/operations.md, "Files
        // and permissions").
        let dir = tempfile::Builder::new()
            .prefix("sagaflow-demo-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(
                crate::datadir::DIR_MODE,
            ))
            .tempdir()
            .context("creating a data directory")?;
        let config = EmbeddedConfig::demo(dir.path().to_path_buf());
        println!("starting an embedded system on {}", dir.path().display());
        let system = Embedded::start(config).await?;
        println!("embedded system listening on {}", system.url());
        let channel = TargetArgs::channel(Service::Order, &system.url())?;
        (Some((system, dir)), Peers::single(channel))
    };
    let outcome = place_all(&args, &samples, &peers, &interrupt).await;
    if let Some((system, dir)) = embedded {
        if interrupt.is_set() {
            system.shutdown_within(INTERRUPT_GRACE / 2).await;
        } else {
            system.shutdown().await;
        }
        if let Err(err) = dir.close() {
            eprintln!("could not remove the demo's data directory: {err}");
        }
    }
    outcome
}

/// How long the invariant check waits for Ranking's read models to catch up with the last
/// orders (their events travel through the outbox relays, and Kafka in the distributed mode).
const READ_MODEL_PATIENCE: Duration = Duration::from_secs(30);

async fn place_all(
    args: &DemoArgs,
    samples: &[SampleOrder],
    peers: &Peers,
    interrupt: &Interrupt,
) -> anyhow::Result<DemoOutcome> {
    let services = Services {
        inventory: peers.inventory.clone(),
        point: peers.point.clone(),
        coupon: peers.coupon.clone(),
        payment: peers.payment.clone(),
        ranking: peers.ranking.clone(),
    };
    let users: BTreeSet<String> = samples.iter().map(|o| o.user_id.clone()).collect();
    let coupons: BTreeSet<String> = samples
        .iter()
        .filter_map(|o| o.coupon_code.clone())
        .collect();
    let before = invariants::snapshot(&services, &users, &coupons)
        .await
        .context("reading the state before the run")?;

    let run = format!("run{}", sagaflow_server::db::now_ms());
    println!(
        "placing {} orders ({} in flight at once), run id {run}",
        samples.len(),
        usize::try_from(args.concurrency).unwrap_or(1).max(1)
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let permits = Arc::new(Semaphore::new(
        usize::try_from(args.concurrency).unwrap_or(1).max(1),
    ));
    let started = Instant::now();
    let progress = Arc::new(Progress::new(u64::try_from(samples.len()).ok(), false));
    let mut set = JoinSet::new();
    for (i, sample) in samples.iter().enumerate() {
        let progress = progress.clone();
        let permits = permits.clone();
        let mut client = OrderServiceClient::new(peers.order.clone());
        let request = sample.request(&run);
        let interrupt = interrupt.clone();
        set.spawn(async move {
            // Ctrl-C while waiting for a turn: this order is never placed.
            let _permit = tokio::select! {
                biased;
                () = interrupt.wait() => return (i, None),
                permit = permits.acquire_owned() => permit,
            };
            let result = place_and_wait(&mut client, request, deadline).await;
            progress.inc();
            (i, Some(result))
        });
    }
    let mut results: Vec<Option<(Order, Duration)>> = vec![None; samples.len()];
    let mut errors = Vec::new();
    let mut not_placed = 0_usize;
    // After Ctrl-C and its grace, what is still in flight is reported unfinished.
    let mut grace_ends = None;
    while let Some(joined) = interrupt.join_next(&mut set, &mut grace_ends).await {
        let (i, result) = joined.context("an order task failed")?;
        match result {
            None => not_placed += 1,
            Some(Ok(r)) => results[i] = Some(r),
            Some(Err(status)) => errors.push(format!(
                "{}: {} {}",
                samples[i].request_id,
                status.code(),
                status.message()
            )),
        }
    }
    progress.finish();
    let elapsed = started.elapsed();

    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_scenario: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut orders = Vec::new();
    let mut mismatches = Vec::new();
    for (sample, result) in samples.iter().zip(&results) {
        let Some((order, latency)) = result else {
            continue;
        };
        let label = outcome_label(order);
        if is_terminal(order)
            && let Some(expected) = expected_outcomes(&sample.scenario)
            && !expected.contains(&label.as_str())
        {
            mismatches.push(format!(
                "{}: scenario {:?} expects {}, got {label}",
                sample.request_id,
                sample.scenario,
                expected.join(" or ")
            ));
        }
        *by_outcome.entry(label.clone()).or_default() += 1;
        *by_scenario
            .entry((sample.scenario.clone(), label))
            .or_default() += 1;
        if is_terminal(order) {
            latencies.push(*latency);
        }
        orders.push(order.clone());
    }
    let interrupted = interrupt.is_set();
    let unfinished = orders.iter().filter(|o| !is_terminal(o)).count() + errors.len();
    // Placed but not read back before the grace period ended.
    let in_flight = samples.len() - orders.len() - errors.len() - not_placed;
    let lat = Latencies::of(&latencies);

    println!("\noutcomes:");
    for (label, n) in &by_outcome {
        println!("  {label:<32} {n:>5}");
    }
    println!("\nby scenario:");
    for ((scenario, label), n) in &by_scenario {
        println!("  {scenario:<56} {label:<30} {n:>4}");
    }
    for e in &errors {
        println!("  error placing {e}");
    }
    if !mismatches.is_empty() {
        println!(
            "\n{} orders ended other than their scenario says:",
            mismatches.len()
        );
        for m in &mismatches {
            println!("  {m}");
        }
    }
    println!(
        "\n{} orders finished in {:.2} s: {:.1} sagas/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        lat.p50_ms,
        lat.p99_ms,
        lat.max_ms
    );

    if interrupted {
        println!(
            "interrupted: {} of {} orders placed and finished, {} still in flight, {} never \
             placed; invariants not checked",
            latencies.len(),
            samples.len(),
            unfinished + in_flight,
            not_placed
        );
        return Ok(DemoOutcome {
            orders,
            unfinished: unfinished + in_flight,
            violations: Vec::new(),
            checks: 0,
            interrupted,
            mismatches,
        });
    }
    if unfinished > 0 {
        // The invariants hold once every saga has finished (docs/architecture.md, "Invariants");
        // checking them now would report the orders still in flight as corruption.
        println!(
            "timed out: {unfinished} orders did not finish within {} s; invariants not checked",
            args.timeout_secs
        );
        return Ok(DemoOutcome {
            orders,
            unfinished,
            violations: Vec::new(),
            checks: 0,
            interrupted,
            mismatches,
        });
    }
    let (_, report) = invariants::settled(
        &services,
        &orders,
        &before,
        &users,
        &coupons,
        READ_MODEL_PATIENCE,
    )
    .await
    .context("checking invariants")?;
    if report.violations.is_empty() {
        println!("invariants: {} checks, all hold", report.checks);
    } else {
        println!(
            "invariants: {} checks, {} VIOLATED:",
            report.checks,
            report.violations.len()
        );
        for v in &report.violations {
            println!("  {v}");
        }
    }
    Ok(DemoOutcome {
        orders,
        unfinished,
        violations: report.violations,
        checks: report.checks,
        interrupted,
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sample_has_every_scenario() {
        let orders = parse_orders(SAMPLE_ORDERS).unwrap();
        assert!(orders.len() >= 200);
        let scenarios: BTreeSet<&str> = orders.iter().map(|o| o.scenario.as_str()).collect();
        for s in [
            "plain",
            "coupon",
            "points",
            "out of stock",
            "expired coupon",
            "someone else's coupon",
            "declined card",
            "points above balance",
            "slow gateway (unknown outcome)",
        ] {
            assert!(scenarios.contains(s), "missing scenario {s}");
        }
        assert!(
            orders
                .iter()
                .any(|o| o.payment_method == "tok_capture_decline")
        );
        // Every scenario of the shipped sample has its expected outcomes.
        for s in &scenarios {
            assert!(
                expected_outcomes(s).is_some(),
                "no expected outcome for {s}"
            );
        }
    }

    #[test]
    fn unknown_fields_in_an_orders_file_are_an_error() {
        let line = r#"{"request_id":"r","user_id":"u","lines":[{"sku":"A","quantity":1}],"payment_method":"tok_ok","cupon_code":"X"}"#;
        let err = parse_orders(line).unwrap_err();
        assert!(format!("{err:#}").contains("cupon_code"), "{err:#}");
    }
}
