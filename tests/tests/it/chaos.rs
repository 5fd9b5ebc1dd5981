//! The chaos suite: the whole system as separate processes on PostgreSQL, SIGKILLed at random and
//! at the engine's failpoints under injected faults, ends every saga with every invariant of
//! docs/architecture.md, "Invariants", intact (harness: `sagaflow_tests::chaos`).
//!
//! `chaos::run`: by default the short run CI makes (500 orders, at most about 3
//! minutes); with `SAGAFLOW_CHAOS_LONG=1` the long run (3000 orders, up to 15 minutes of load).
//! `SAGAFLOW_CHAOS_ORDERS`, `SAGAFLOW_CHAOS_SECONDS` and `SAGAFLOW_CHAOS_CLIENTS` adjust either.
//! `chaos::run_kafka`: the short run on the Kafka transport (a broker started by the test),
//! bounded to about two minutes.
//!
//! It prints the seed first; `SAGAFLOW_CHAOS_SEED=N` re-runs a schedule. For example:
//! `SAGAFLOW_CHAOS_LONG=1 cargo nextest run -p sagaflow-tests --test it chaos::run --no-capture`.

use sagaflow_tests::chaos::{self, ChaosConfig, ChaosReport};

/// Asserts that the run passed and that the chaos really happened; `failpoint_abort`: at least
/// one process aborted at an armed failpoint (the Kafka variant's short load with group
/// rebalances after every kill often kills an armed orchestrator before its failpoint fires).
fn assert_passed(report: &ChaosReport, min_orders: usize, failpoint_abort: bool) {
    eprintln!("{report}");
    assert!(
        report.violations.is_empty(),
        "{} violations (seed {}): re-run with SAGAFLOW_CHAOS_SEED={}\n{report}",
        report.violations.len(),
        report.seed,
        report.seed
    );
    assert!(
        report.orders_placed >= min_orders,
        "only {} orders placed (seed {})",
        report.orders_placed,
        report.seed
    );
    // The chaos really happened: processes died, one at least at a failpoint, faults fired.
    assert!(report.total_kills() >= 5, "{report}");
    assert!(
        report.kills.contains_key("orchestrator"),
        "no orchestrator was killed: {report}"
    );
    if failpoint_abort {
        assert!(report.total_failpoint_aborts() >= 1, "{report}");
    }
    assert!(report.faults.transient_errors > 0, "{report}");
    assert!(report.faults.lost_replies > 0, "{report}");
    assert_eq!(
        report.needs_attention, report.needs_attention_explained,
        "{report}"
    );
    assert_eq!(report.needs_attention, report.retried_finished, "{report}");
    let completed = report.outcomes.get("COMPLETED").copied().unwrap_or(0);
    assert!(completed > 0, "{report}");
    assert!(report.checks > report.orders_placed * 10, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run() {
    let long = std::env::var_os("SAGAFLOW_CHAOS_LONG").is_some_and(|v| v != "0");
    let config = ChaosConfig::from_env(long);
    let report = chaos::run(&config).await.unwrap();
    assert_passed(&report, config.orders.min(500), true);
}

/// The chaos run on the Kafka transport (a Tansu broker started by the test; every process with
/// `--event-bus kafka://…`): the same kills, failpoints and faults, bounded for CI (200 orders
/// from 12 clients, 40 s of load, kills 1.5–3 s apart). The
/// relays publish to the broker and the orchestrators and Ranking consume in their groups, so a
/// kill also costs a rebalance; every check of the default run holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_kafka() {
    let broker = tokio::task::spawn_blocking(sagaflow_testkit::kafka::Broker::start)
        .await
        .unwrap();
    let mut config = ChaosConfig::from_env(false);
    if std::env::var_os("SAGAFLOW_CHAOS_ORDERS").is_none() {
        config.orders = 200;
    }
    if std::env::var_os("SAGAFLOW_CHAOS_SECONDS").is_none() {
        config.load_limit = std::time::Duration::from_secs(40);
    }
    if std::env::var_os("SAGAFLOW_CHAOS_CLIENTS").is_none() {
        // An order waits for its consumer group after each kill: more clients keep the load up.
        config.clients = 12;
    }
    config.kill_gap_ms = (1_500, 3_000);
    config.settle_limit = std::time::Duration::from_secs(60);
    let config = config.with_kafka(broker.bootstrap());
    let report = chaos::run(&config).await.unwrap();
    assert_passed(&report, config.orders.min(100), false);
}

/// A dead orchestrator replica's sagas are adopted by the other within one lease and finished
/// (docs/operations.md, "Recovery after a crash"), and with the replicas killed one at a time
/// new orders keep starting sagas (the relay balances over every replica that answers). It prints the figures; the bound it asserts is
/// generous (the mechanism, not the speed: that is measured, not tested).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover() {
    let lease_ms = 5_000;
    let report = chaos::takeover(120, lease_ms).await.unwrap();
    eprintln!("{report:?}");
    assert_eq!(report.unfinished, 0, "{report:?}");
    assert!(
        report.taken_over > 0,
        "the dead replica held sagas: {report:?}"
    );
    assert!(report.placed_while_down > 0);
    assert_eq!(
        report.unfinished_while_down, 0,
        "with either replica down, new orders start sagas: {report:?}"
    );
    assert!(
        report.last_taken_over_ms < (lease_ms * 4 + 10_000) as f64,
        "{report:?}"
    );
}

/// The payment service is down for 15 s while 120 orders are placed, then comes back, under a
/// limit of 8 calls in flight and 100 calls per second to it per orchestrator: every order
/// completes (a refused connection waits until the saga's deadline; it does not fail the order)
/// with every invariant intact, and no 100 ms window after the restart sees more StartPayment
/// arrivals than the two limits allow: per replica, the rate's burst and share of the window plus
/// the calls in flight (those that waited on the reconnection arrive together)
/// (docs/architecture.md, "Retries").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage() {
    // `SAGAFLOW_OUTAGE_PER_SECOND=0` runs it without a limit, to see the burst it prevents.
    let per_second = std::env::var("SAGAFLOW_OUTAGE_PER_SECOND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let in_flight = if per_second == 0 { 0 } else { 8 };
    let report = chaos::outage(
        120,
        std::time::Duration::from_secs(15),
        in_flight,
        per_second,
    )
    .await
    .unwrap();
    eprintln!("{report:?}");
    assert_eq!(
        report.outcomes.get("COMPLETED").copied().unwrap_or(0),
        report.orders,
        "no order fails for the outage alone: {report:?}"
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let per_replica = sagaflow_orchestrator::limits::window_bound(
        per_second,
        std::time::Duration::from_millis(100),
    ) + in_flight as u64;
    // Two orchestrator replicas, each with its own limits.
    assert!(
        per_second == 0 || report.busiest_window() <= 2 * per_replica,
        "busiest window {} > {} (2 replicas × {per_replica}): {report:?}",
        report.busiest_window(),
        2 * per_replica
    );
}
