//! `sagaflow bench`: a load generator for the order saga. It places plain orders (one line, card
//! `tok_ok` or, for `--mix`, `tok_capture_decline`, no coupon, no points) from `--concurrency` clients for `--count` orders or
//! `--duration` seconds, waits for each saga to finish, and prints sagas per second, p50/p95/p99
//! latency from PlaceOrder to the terminal status, outcome counts, CPU milliseconds per order
//! (user + system time of the serving process over the run) and, for a local server, its peak
//! RSS. `--mix` makes a share of the orders compensating ones (capture declined at the pivot).
//! It reports; it never fails on slowness.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{
    dev::{Embedded, EmbeddedConfig},
    load::{
        INTERRUPT_GRACE, Interrupt, Latencies, Progress, outcome_label, peak_rss_kib,
        place_and_wait,
    },
    services::{Peers, Service},
    targets::TargetArgs,
};
use anyhow::Context as _;
use clap::Args;
use sagaflow_proto::{
    inventory::v1::{
        RestockRequest, UpsertProductRequest, inventory_service_client::InventoryServiceClient,
    },
    order::v1::{OrderLineRequest, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use tokio::{sync::Mutex, task::JoinSet, time::Instant};

/// The product every bench order buys.
const BENCH_SKU: &str = "BENCH-001";

/// Flags of `sagaflow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Where the system runs (`--addr` for `sagaflow dev`, `--distributed` or
    /// `--<service>-addr` for `sagaflow serve` processes: the bench uses order and inventory);
    /// with none of them an embedded system is started on a fresh temporary data directory (its
    /// peak RSS is then reported) and removed afterwards.
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Orders in flight at once (at least 1).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Orders to place in all (ignored when --duration is given).
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Place orders for this many seconds instead of a fixed count.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Process id of a local server started separately, to report its peak RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// SQLite durability of the embedded system: `full` or `normal`.
    #[arg(long, value_enum, default_value_t = sagaflow_server::config::Synchronous::Full)]
    pub sqlite_synchronous: sagaflow_server::config::Synchronous,
    /// Share of compensating orders, 0 to 1: that fraction (spread evenly) pays with
    /// `tok_capture_decline`, so its saga fails at the pivot and compensates four steps.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub mix: f64,
}

/// A share from 0 to 1 (`--mix`).
fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{share} is not between 0 and 1"))
    }
}

/// Whether the `i`-th order of a run with compensating share `mix` is a compensating one: the
/// orders where `i · mix` crosses an integer, so any prefix of the run has its share.
fn compensating(i: u64, mix: f64) -> bool {
    #[allow(clippy::cast_precision_loss, reason = "order numbers far below 2^52")]
    let (at, next) = (i as f64 * mix, (i + 1) as f64 * mix);
    next.floor() > at.floor()
}

/// Bench results.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    /// Clients placing orders at once.
    pub concurrency: usize,
    /// Orders that reached a terminal status.
    pub finished: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Finished sagas per second.
    pub sagas_per_second: f64,
    /// Latency from PlaceOrder to the terminal read, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Outcome label → count.
    pub outcomes: BTreeMap<String, u64>,
    /// Errors placing or waiting.
    pub errors: u64,
    /// Peak RSS of the server in KiB (embedded: this process, clients included).
    pub server_peak_rss_kib: Option<u64>,
    /// Durability of the embedded system's SQLite databases, when embedded.
    pub durability: String,
    /// Whether Ctrl-C cut the run short (the figures cover what finished until then).
    pub interrupted: bool,
    /// Share of compensating orders asked for (`--mix`).
    pub mix: f64,
    /// CPU time (user + system) per finished order over the run, milliseconds, of the process
    /// that serves the system: the embedded system's (this process, load clients included), or
    /// the `--server-pid`'s; `None` when unknown.
    pub cpu_ms_per_order: Option<f64>,
    /// Write transactions committed per finished order over the run, by database (embedded
    /// system only; empty otherwise): group commit shows as fewer than one per command.
    pub commits_per_order: BTreeMap<String, f64>,
}

/// Runs the bench (see the module docs).
///
/// # Errors
/// When the system cannot be reached or started, or the bench product cannot be set up.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    let interrupt = Interrupt::on_ctrl_c();
    let (embedded, peers, durability) = if args.targets.any() {
        let needed = [Service::Order, Service::Inventory].map(|s| (s, args.targets.url_or_dev(s)));
        crate::targets::reachable(&args.targets, &needed).await?;
        (
            None,
            args.targets.peers(crate::targets::DEV_ADDR)?,
            "remote (its own settings)".to_owned(),
        )
    } else {
        // Owner-only from the start, as `datadir::prepare` wants it (docs/operations.md, "Files
        // and permissions").
        let dir = tempfile::Builder::new()
            .prefix("sagaflow-bench-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(
                crate::datadir::DIR_MODE,
            ))
            .tempdir()
            .context("creating a data directory")?;
        let mut config = EmbeddedConfig::bench(dir.path().to_path_buf());
        config.sqlite_synchronous = args.sqlite_synchronous;
        let durability = format!(
            "embedded SQLite, WAL, synchronous={:?}",
            args.sqlite_synchronous
        );
        let system = Embedded::start(config).await?;
        if !args.json {
            println!("embedded system listening on {}", system.url());
        }
        let channel = TargetArgs::channel(Service::Order, &system.url())?;
        (Some((system, dir)), Peers::single(channel), durability)
    };
    let cpu_pid = if args.targets.any() {
        args.server_pid
    } else {
        None
    };
    let measure_cpu = !args.targets.any() || args.server_pid.is_some();
    let commits_before = embedded.as_ref().map(|(system, _)| system.commits());
    let report = drive(
        &args,
        &peers,
        durability,
        &interrupt,
        measure_cpu.then_some(cpu_pid),
    )
    .await;
    let commits_after = embedded.as_ref().map(|(system, _)| system.commits());
    if let Some((system, dir)) = embedded {
        if interrupt.is_set() {
            system.shutdown_within(INTERRUPT_GRACE / 2).await;
        } else {
            system.shutdown().await;
        }
        if let Err(err) = dir.close() {
            eprintln!("could not remove the bench's data directory: {err}");
        }
    }
    let mut report = report?;
    if let (Some(before), Some(after)) = (commits_before, commits_after) {
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let orders = report.finished.max(1) as f64;
        for ((name, b), (_, a)) in before.into_iter().zip(after) {
            #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let per_order = a.saturating_sub(b) as f64 / orders;
            report.commits_per_order.insert(name.to_owned(), per_order);
        }
    }
    if !args.targets.any() {
        report.server_peak_rss_kib = peak_rss_kib(None);
    } else if let Some(pid) = args.server_pid {
        report.server_peak_rss_kib = peak_rss_kib(Some(pid));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        println!(
            "concurrency {}: {} sagas in {:.2} s = {:.1} sagas/s; latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; CPU {} per order; commits per order {}; errors {}; outcomes {:?}; server peak RSS {}; durability: {}{}",
            report.concurrency,
            report.finished,
            report.seconds,
            report.sagas_per_second,
            report.p50_ms,
            report.p95_ms,
            report.p99_ms,
            report
                .cpu_ms_per_order
                .map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.2} ms")),
            if report.commits_per_order.is_empty() {
                "n/a".to_owned()
            } else {
                report
                    .commits_per_order
                    .iter()
                    .map(|(db, n)| format!("{db} {n:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            report.errors,
            report.outcomes,
            report.server_peak_rss_kib.map_or_else(
                || "n/a".to_owned(),
                |k| format!("{:.1} MiB", k as f64 / 1024.0)
            ),
            report.durability,
            if report.interrupted {
                "; interrupted by Ctrl-C (orders still in flight then are left out)"
            } else {
                ""
            }
        );
    }
    Ok(report)
}

/// Places the orders and measures; `cpu_of`: whose CPU time to count (`Some(None)`: this
/// process; `None`: nobody's).
async fn drive(
    args: &BenchArgs,
    peers: &Peers,
    durability: String,
    interrupt: &Interrupt,
    cpu_of: Option<Option<u32>>,
) -> anyhow::Result<BenchReport> {
    let run = format!("bench{}", sagaflow_server::db::now_ms());
    let mut inventory = InventoryServiceClient::new(peers.inventory.clone());
    inventory
        .upsert_product(UpsertProductRequest {
            sku: BENCH_SKU.into(),
            name: "Bench widget".into(),
            unit_price: 1000,
        })
        .await
        .context("creating the bench product")?;
    inventory
        .restock(RestockRequest {
            sku: BENCH_SKU.into(),
            quantity: 1_000_000_000,
            idempotency_key: format!("{run}:restock"),
        })
        .await
        .context("stocking the bench product")?;

    let concurrency = usize::try_from(args.concurrency).unwrap_or(1).max(1);
    if !args.json {
        match args.duration {
            Some(secs) => {
                println!("placing orders for {secs} s from {concurrency} clients, run id {run}")
            }
            None => println!(
                "placing {} orders from {concurrency} clients, run id {run}",
                args.count
            ),
        }
    }
    let cpu_before = cpu_of.and_then(crate::load::process_cpu_ms);
    let started = Instant::now();
    let stop_at = args.duration.map(|s| started + Duration::from_secs(s));
    let mix = args.mix;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let results = Arc::new(Mutex::new((Vec::new(), BTreeMap::new(), 0_u64)));
    let progress = Arc::new(Progress::new(
        args.duration.is_none().then_some(args.count),
        args.json,
    ));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let progress = progress.clone();
        let next = next.clone();
        let results = results.clone();
        let mut client = OrderServiceClient::new(peers.order.clone());
        let run = run.clone();
        let count = args.count;
        let interrupt = interrupt.clone();
        set.spawn(async move {
            loop {
                if interrupt.is_set() {
                    break;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let more = match stop_at {
                    Some(t) => Instant::now() < t,
                    None => i < count,
                };
                if !more {
                    break;
                }
                let request = PlaceOrderRequest {
                    request_id: format!("{run}-{i}"),
                    user_id: format!("bench-user-{}", i % 1000),
                    lines: vec![OrderLineRequest {
                        sku: BENCH_SKU.into(),
                        quantity: 1,
                    }],
                    coupon_code: None,
                    points: 0,
                    payment_method: if compensating(i, mix) {
                        "tok_capture_decline".into()
                    } else {
                        "tok_ok".into()
                    },
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                let outcome = place_and_wait(&mut client, request, deadline).await;
                progress.inc();
                let mut r = results.lock().await;
                match outcome {
                    Ok((order, latency)) => {
                        r.0.push(latency);
                        *r.1.entry(outcome_label(&order)).or_insert(0_u64) += 1;
                    }
                    Err(_) => r.2 += 1,
                }
            }
        });
    }
    // After Ctrl-C and its grace, orders still in flight are left out of the figures.
    let mut grace_ends = None;
    while let Some(joined) = interrupt.join_next(&mut set, &mut grace_ends).await {
        joined.context("a bench client failed")?;
    }
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let cpu_used = cpu_of
        .and_then(crate::load::process_cpu_ms)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let (latencies, outcomes, errors) = std::mem::take(&mut *results.lock().await);
    let lat = Latencies::of(&latencies);
    let finished = latencies.len() as u64;
    Ok(BenchReport {
        concurrency,
        finished,
        seconds,
        sagas_per_second: finished as f64 / seconds.max(1e-9),
        p50_ms: lat.p50_ms,
        p95_ms: lat.p95_ms,
        p99_ms: lat.p99_ms,
        outcomes,
        errors,
        server_peak_rss_kib: None,
        durability,
        interrupted: interrupt.is_set(),
        mix,
        cpu_ms_per_order: cpu_used
            .filter(|_| finished > 0)
            .map(|ms| ms / finished as f64),
        commits_per_order: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_spreads_its_share_evenly() {
        let picked = |mix: f64, n: u64| (0..n).filter(|i| compensating(*i, mix)).count();
        assert_eq!(picked(0.0, 1000), 0);
        assert_eq!(picked(1.0, 1000), 1000);
        assert_eq!(picked(0.1, 1000), 100);
        assert_eq!(picked(0.25, 8), 2);
        // Every prefix holds its share (within one order).
        for n in 1..200 {
            let share = picked(0.3, n) as f64;
            assert!((share - 0.3 * n as f64).abs() <= 1.0, "{n}: {share}");
        }
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("x").is_err());
        assert_eq!(parse_share("0.2"), Ok(0.2));
    }
}
