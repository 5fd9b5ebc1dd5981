//! The crash-recovery chaos suite of the distributed mode (docs/architecture.md, "Run modes",
//! "Recovery" and "Invariants").
//!
//! [`run`] starts the whole distributed system as separate `sagaflow serve` processes on loopback
//! against PostgreSQL (one fresh database per service; the two orchestrator replicas share the
//! workflow database), with fault injection on (transient errors, added latency, lost replies,
//! and a few *permanent* errors on one compensation) and short leases. It seeds the demo data,
//! then places orders from several concurrent clients while a killer SIGKILLs random processes —
//! both orchestrator replicas and every service — at random times and restarts them, sometimes
//! with an engine failpoint armed so that the process aborts at that named point. Afterwards it
//! crashes everything once more, restarts it all with faults off, waits (bounded) for every saga
//! to end, resumes each NEEDS_ATTENTION saga with RetrySaga once it has checked that an injected
//! permanent fault explains it, and checks:
//!
//! - every invariant of docs/architecture.md, "Invariants", through the query APIs
//!   ([`sagaflow_cli::invariants::check`]);
//! - the same and more directly in the service databases (module `verify`): stock never
//!   negative and equal to restocks minus reserved units, one payment per order, no point ledger
//!   double deductions, coupons, the outbox and the ranking inbox, one saga per order;
//! - no saga RUNNING or COMPENSATING; every NEEDS_ATTENTION explained by an injected permanent
//!   fault;
//! - every step's action (and compensation) sent with a single idempotency key.
//!
//! ```text
//!   seed ─▶ snapshot ─▶ ┌ clients: PlaceOrder / GetOrder (retry transient codes, same request id)
//!                       └ killer:  SIGKILL + restart (+ FAILPOINTS) on a seeded schedule
//!        ─▶ SIGKILL all, restart without faults ─▶ wait until quiet ─▶ RetrySaga (explained
//!           NEEDS_ATTENTION) ─▶ wait until quiet ─▶ checks ─▶ [`ChaosReport`]
//! ```
//!
//! Randomness is seeded: one seed drives the order mix and the kill schedule (which process,
//! when, how long it stays down, which failpoint). The seed is printed at the start;
//! `SAGAFLOW_CHAOS_SEED=N` re-runs the same schedule (process timing still varies).

mod cluster;
mod kafka;
mod outage;
mod scenario;
mod schedule;
mod takeover;
mod verify;
mod workload;

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sagaflow_cli::invariants::{self, Services};
use sagaflow_testkit::{Kind, TestDatabase};

pub use cluster::{FaultCounts, Role};
pub use kafka::{
    BrokerOutageReport, CONSUMER_FAILPOINT, ConsumerCrashReport, DeadLetter, PoisonReport,
    ReplicasReport, broker_outage, consumer_crash, poison, replicas,
};
pub use outage::{OutageReport, outage};
pub use schedule::{ChaosEvent, FAILPOINTS, Failpoint};
pub use takeover::{TakeoverReport, takeover};

/// What one chaos run does. [`ChaosConfig::short`] is the CI run, [`ChaosConfig::long`] the long
/// one; [`ChaosConfig::from_env`] picks and adjusts one from `SAGAFLOW_CHAOS_*` variables.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// Orders to place.
    pub orders: usize,
    /// Concurrent clients placing them.
    pub clients: usize,
    /// Bound on the load phase: clients stop placing new orders after it.
    pub load_limit: Duration,
    /// Range of the gap between two kills, milliseconds.
    pub kill_gap_ms: (u64, u64),
    /// Range of how long a killed process stays down, milliseconds.
    pub downtime_ms: (u64, u64),
    /// Chance that a killed orchestrator comes back with a failpoint armed.
    pub arm_probability: f64,
    /// Bound on each wait for the system to become quiet after the load.
    pub settle_limit: Duration,
    /// Saga lease of the orchestrators, milliseconds.
    pub lease_ms: u64,
    /// Chance that a RestoreInventory call fails permanently (FAILED_PRECONDITION, injected).
    pub permanent_fault_probability: f64,
    /// Attempts of a saga step before its outcome counts as unknown (`--step-attempts` of the
    /// orchestrators). 16 with delays up to 1.5 s outlasts a restarted service; the default of
    /// `sagaflow serve` (4) does not, and parks pivots in NEEDS_ATTENTION under kills.
    pub step_attempts: u32,
    /// `--downstream-limits` of the orchestrators.
    pub downstream_limits: String,
    /// `--gateway-latency-ms` of the payment service (0: none).
    pub gateway_latency_ms: u64,
    /// Whether the load phase injects faults (transient errors, latency, lost replies, the
    /// permanent RestoreInventory errors) and SIGKILLs processes on the seeded schedule, with a
    /// crash of everything at its end. Off: a clean run of the same workload.
    pub chaos: bool,
    /// The event bus of every process: `None` for the gRPC delivery (the default), or the
    /// bootstrap servers (`127.0.0.1:PORT`) of a Kafka-protocol broker: every process then runs
    /// with `--event-bus kafka://…` and a 6 s consumer session timeout.
    pub kafka: Option<String>,
    /// More arguments for every process of a role (for example `--metrics-listen` for the order
    /// service), after the harness's own.
    pub extra_args: Vec<(Role, Vec<String>)>,
    /// More environment variables for every process of a role (for example a `RUST_LOG` that
    /// enables a debug line), after the harness's own.
    pub extra_envs: Vec<(Role, String, String)>,
}

impl ChaosConfig {
    /// This configuration with the Kafka bus on the broker at `bootstrap` (`127.0.0.1:PORT`).
    pub fn with_kafka(mut self, bootstrap: impl Into<String>) -> Self {
        self.kafka = Some(bootstrap.into());
        self
    }
}

impl ChaosConfig {
    /// The CI run: 500 orders, at most about 3 minutes on two cores in a debug build.
    pub fn short(seed: u64) -> Self {
        Self {
            seed,
            orders: 500,
            clients: 6,
            load_limit: Duration::from_secs(90),
            kill_gap_ms: (500, 1_500),
            downtime_ms: (0, 700),
            arm_probability: 0.5,
            settle_limit: Duration::from_secs(30),
            lease_ms: 1_500,
            permanent_fault_probability: 0.04,
            step_attempts: 16,
            downstream_limits: sagaflow_orchestrator::limits::DEFAULT_LIMITS.to_owned(),
            gateway_latency_ms: 0,
            chaos: true,
            kafka: None,
            extra_args: Vec::new(),
            extra_envs: Vec::new(),
        }
    }

    /// The long run: 3000 orders over up to 15 minutes.
    pub fn long(seed: u64) -> Self {
        Self {
            orders: 3_000,
            clients: 8,
            load_limit: Duration::from_secs(900),
            settle_limit: Duration::from_secs(120),
            ..Self::short(seed)
        }
    }

    /// [`ChaosConfig::short`], or [`ChaosConfig::long`] when `SAGAFLOW_CHAOS_LONG=1`, with the
    /// seed from `SAGAFLOW_CHAOS_SEED` (default: random) and optional overrides
    /// `SAGAFLOW_CHAOS_ORDERS`, `SAGAFLOW_CHAOS_SECONDS` (load-phase bound),
    /// `SAGAFLOW_CHAOS_CLIENTS` and `SAGAFLOW_CHAOS_STEP_ATTEMPTS`.
    ///
    /// # Panics
    /// When one of these variables is set but is not a number.
    pub fn from_env(long: bool) -> Self {
        let number = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            })
        };
        let seed = number("SAGAFLOW_CHAOS_SEED").unwrap_or_else(rand::random);
        let mut config = if long {
            Self::long(seed)
        } else {
            Self::short(seed)
        };
        if let Some(orders) = number("SAGAFLOW_CHAOS_ORDERS") {
            config.orders = usize::try_from(orders).unwrap_or(usize::MAX);
        }
        if let Some(seconds) = number("SAGAFLOW_CHAOS_SECONDS") {
            config.load_limit = Duration::from_secs(seconds);
        }
        if let Some(attempts) = number("SAGAFLOW_CHAOS_STEP_ATTEMPTS") {
            config.step_attempts = u32::try_from(attempts).unwrap_or(u32::MAX).max(1);
        }
        if let Some(clients) = number("SAGAFLOW_CHAOS_CLIENTS") {
            config.clients = usize::try_from(clients).unwrap_or(1).max(1);
        }
        config
    }
}

/// What a chaos run did and found.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// The seed (re-run with `SAGAFLOW_CHAOS_SEED`).
    pub seed: u64,
    /// Orders the workload planned.
    pub orders_planned: usize,
    /// Orders placed (PlaceOrder answered).
    pub orders_placed: usize,
    /// Final outcome label → orders (`COMPLETED`, `FAILED/OUT_OF_STOCK`, …).
    pub outcomes: BTreeMap<String, usize>,
    /// Workload kind → orders placed (`plain`, `coupon`, `decline`, …).
    pub kinds: BTreeMap<String, usize>,
    /// Process kind → SIGKILLs during the load phase.
    pub kills: BTreeMap<String, usize>,
    /// Processes SIGKILLed at once when the load phase ended.
    pub final_crash: usize,
    /// Failpoint → orchestrator starts with it armed.
    pub armed_starts: BTreeMap<String, usize>,
    /// Failpoint → processes that aborted there (SIGABRT, checked in their logs).
    pub failpoint_aborts: BTreeMap<String, usize>,
    /// Armed processes killed by the schedule before their failpoint fired.
    pub armed_killed_before_firing: usize,
    /// Armed processes still waiting for their failpoint when the load ended.
    pub armed_unfired_at_end: usize,
    /// Faults the services logged as injected.
    pub faults: FaultCounts,
    /// PlaceOrder calls retried after a transient error or a lost reply.
    pub place_retries: usize,
    /// Sagas found in NEEDS_ATTENTION after the load.
    pub needs_attention: usize,
    /// Of those, explained by an injected permanent fault in their journal.
    pub needs_attention_explained: usize,
    /// Sagas resumed with RetrySaga that then finished.
    pub retried_finished: usize,
    /// Individual invariant checks made.
    pub checks: usize,
    /// Violated invariants (empty when the run passed).
    pub violations: Vec<String>,
    /// Time of the load phase.
    pub load_time: Duration,
    /// Time from the end of the load until every saga had ended.
    pub settle_time: Duration,
    /// Time of the whole run.
    pub wall_time: Duration,
    /// Where the processes' logs are (kept when the run failed or `SAGAFLOW_CHAOS_KEEP` is set).
    pub run_dir: PathBuf,
}

impl ChaosReport {
    /// Total SIGKILLs during the load phase.
    pub fn total_kills(&self) -> usize {
        self.kills.values().sum()
    }

    /// Total failpoint aborts.
    pub fn total_failpoint_aborts(&self) -> usize {
        self.failpoint_aborts.values().sum()
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chaos report (seed {})", self.seed)?;
        writeln!(
            f,
            "  orders: {} placed of {} planned; kinds {:?}",
            self.orders_placed, self.orders_planned, self.kinds
        )?;
        writeln!(f, "  outcomes: {:?}", self.outcomes)?;
        writeln!(
            f,
            "  SIGKILLs during load: {} {:?}; final crash of all {} processes",
            self.total_kills(),
            self.kills,
            self.final_crash
        )?;
        writeln!(
            f,
            "  failpoints: armed starts {:?}; aborts {} {:?}; armed but killed first {}, \
             still armed at the end {}",
            self.armed_starts,
            self.total_failpoint_aborts(),
            self.failpoint_aborts,
            self.armed_killed_before_firing,
            self.armed_unfired_at_end
        )?;
        writeln!(
            f,
            "  faults injected: {} transient errors, {} permanent errors, {} lost replies; \
             PlaceOrder retries {}",
            self.faults.transient_errors,
            self.faults.permanent_errors,
            self.faults.lost_replies,
            self.place_retries
        )?;
        writeln!(
            f,
            "  NEEDS_ATTENTION: {} ({} explained by an injected permanent fault, {} finished \
             after RetrySaga)",
            self.needs_attention, self.needs_attention_explained, self.retried_finished
        )?;
        writeln!(
            f,
            "  invariant checks: {}; violations: {}",
            self.checks,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(50) {
            writeln!(f, "    VIOLATION {v}")?;
        }
        if self.violations.len() > 50 {
            writeln!(f, "    … and {} more", self.violations.len() - 50)?;
        }
        writeln!(
            f,
            "  time: load {:.1}s, settle {:.1}s, wall {:.1}s; logs in {}",
            self.load_time.as_secs_f64(),
            self.settle_time.as_secs_f64(),
            self.wall_time.as_secs_f64(),
            self.run_dir.display()
        )
    }
}

/// Runs one chaos run (see the module docs) and returns its report; the run passed when
/// `violations` is empty. Logs are removed after a passing run unless `SAGAFLOW_CHAOS_KEEP` is
/// set, and the run's databases are dropped after a passing run.
///
/// # Errors
/// When the harness itself cannot proceed: a process that does not start, a binary that ignores
/// `FAILPOINTS`, PostgreSQL unreachable. Broken invariants are not errors: they are in the report.
pub async fn run(config: &ChaosConfig) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    eprintln!(
        "chaos: seed {} (re-run with SAGAFLOW_CHAOS_SEED={}); {} orders from {} clients",
        config.seed, config.seed, config.orders, config.clients
    );
    let mut report = ChaosReport {
        seed: config.seed,
        ..ChaosReport::default()
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("sagaflow-chaos-{}-", config.seed))
        .tempdir()
        .context("creating the run directory")?;
    report.run_dir = dir.path().to_owned();
    eprintln!("chaos: logs in {}", dir.path().display());

    let databases: BTreeMap<&'static str, TestDatabase> = cluster::DATABASES
        .iter()
        .map(|&name| {
            (
                name,
                TestDatabase::new(Kind::Postgres, &format!("chaos_{name}")),
            )
        })
        .collect();
    let urls: BTreeMap<&'static str, String> = databases
        .iter()
        .map(|(name, db)| (*name, db.url.clone()))
        .collect();

    let result = run_in(config, &mut report, dir.path(), &urls).await;
    report.wall_time = started.elapsed();
    let passed = result.is_ok() && report.violations.is_empty();
    if passed && let Err(err) = verify::drop_databases(urls.values()).await {
        eprintln!("chaos: could not drop the run's databases: {err:#}");
    }
    if !passed || std::env::var_os("SAGAFLOW_CHAOS_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("chaos: logs kept in {}", kept.display());
        for (name, url) in &urls {
            eprintln!("chaos: database {name}: {url}");
        }
    }
    result.map(|()| report)
}

async fn run_in(
    config: &ChaosConfig,
    report: &mut ChaosReport,
    dir: &std::path::Path,
    urls: &BTreeMap<&'static str, String>,
) -> anyhow::Result<()> {
    let mut cluster = cluster::Cluster::new(dir, urls, config)?;
    cluster.start_all(config.chaos).await?;
    let seed = workload::seed_data().await?;
    workload::apply_seed(&cluster, &seed).await?;
    let services = cluster.services()?;
    let users = seed.users.clone();
    let coupons = seed.coupon_codes();
    let before = invariants::snapshot(&services, &users, &coupons)
        .await
        .context("snapshot before the load")?;

    // Load phase: clients place orders while the killer follows the schedule.
    let plans = workload::plan_orders(config.seed, config.orders, &seed);
    let events = if config.chaos {
        schedule::schedule(config, &cluster.names())
    } else {
        Vec::new()
    };
    eprintln!(
        "chaos: {} scheduled kills; first: {}",
        events.len(),
        events
            .iter()
            .take(5)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load_started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let clients = workload::spawn_clients(
        cluster.channel(Role::Order)?,
        plans.clone(),
        config.clients,
        tokio::time::Instant::now() + config.load_limit,
    );
    let killer_stop = stop.clone();
    let killer = async {
        let outcome = schedule::run_killer(&mut cluster, &events, killer_stop).await;
        (cluster, outcome)
    };
    let clients_then_stop = async {
        let placed = workload::join_clients(clients).await;
        stop.cancel();
        placed
    };
    let ((mut cluster, killer_outcome), placed) = tokio::join!(killer, clients_then_stop);
    let killer_outcome = killer_outcome?;
    report.load_time = load_started.elapsed();
    report.kills = killer_outcome.kills;
    report.armed_starts = killer_outcome.armed_starts;
    report.failpoint_aborts = killer_outcome.failpoint_aborts;
    report.armed_killed_before_firing = killer_outcome.armed_killed_before_firing;
    report.violations.extend(killer_outcome.violations);
    report.place_retries = placed.retries;
    report.orders_planned = plans.len();
    eprintln!(
        "chaos: load phase done in {:.1}s: {} orders placed, {} kills, {} failpoint aborts",
        report.load_time.as_secs_f64(),
        placed.orders.len(),
        report.kills.values().sum::<usize>(),
        report.failpoint_aborts.values().sum::<usize>()
    );

    // Crash everything once more, then restart without faults and let every saga end.
    report.armed_unfired_at_end = cluster.armed();
    if config.chaos {
        report.final_crash = cluster.kill_all().await?;
        cluster.start_all(false).await?;
    }
    let settle_started = Instant::now();
    let placed = workload::finish_placing(&cluster, placed, &plans).await?;
    report.orders_placed = placed.orders.len();
    for order in &placed.orders {
        *report.kinds.entry(order.kind.to_owned()).or_default() += 1;
    }
    report.violations.extend(placed.refused.iter().cloned());
    verify::settle(&cluster, config, report, urls, &placed).await?;
    report.settle_time = settle_started.elapsed();

    // Checks: through the query APIs, then in the databases.
    let orders = workload::read_orders(&cluster, &placed).await?;
    for order in &orders {
        *report
            .outcomes
            .entry(sagaflow_cli::load::outcome_label(order))
            .or_default() += 1;
    }
    let (_, api) = invariants::settled(
        &services,
        &orders,
        &before,
        &users,
        &coupons,
        Duration::from_secs(30),
    )
    .await
    .context("checking the invariants through the query APIs")?;
    report.checks += api.checks;
    report.violations.extend(api.violations);
    let request_ids = plans.iter().map(|p| p.request.request_id.clone()).collect();
    verify::check_databases(urls, &placed, &request_ids, report).await?;
    report.faults = cluster.fault_counts();
    cluster.kill_all().await?;
    Ok(())
}

/// The query-API channels of a cluster, for [`sagaflow_cli::invariants`].
impl cluster::Cluster {
    fn services(&self) -> anyhow::Result<Services> {
        Ok(Services {
            inventory: self.channel(Role::Inventory)?,
            point: self.channel(Role::Point)?,
            coupon: self.channel(Role::Coupon)?,
            payment: self.channel(Role::Payment)?,
            ranking: self.channel(Role::Ranking)?,
        })
    }
}
