//! The distributed mode on the Kafka transport (docs/architecture.md, "Events" → "Kafka
//! transport"): the whole system as `sagaflow serve` processes on PostgreSQL with
//! `--event-bus kafka://…` on a real Kafka-protocol broker (Tansu, [`Broker`]) started for the
//! run, under the faults the transport must survive:
//!
//! - [`broker_outage`]: the broker SIGSTOPped while orders are placed, then SIGCONTed;
//! - [`consumer_crash`]: Ranking aborted at the consumer's failpoint `kafka_consumer_after_handle`
//!   (its effect committed, its offset not), restarted, the record redelivered;
//! - [`replicas`]: two orchestrator replicas sharing the group's partitions, one SIGKILLed;
//! - [`poison`]: undecodable records on every partition of the order topic.
//!
//! Each places a seeded mix of orders ([`super::workload`]), waits (bounded) for every order to
//! end, and checks every invariant through the query APIs and in the databases
//! ([`super::verify::check_databases`]: one saga per order, each event once in Ranking's inbox,
//! …). It measures and collects violations; the caller asserts.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    message::{Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use sagaflow_cli::invariants::Snapshot;
use sagaflow_events::{
    Family,
    kafka::{
        DEAD_LETTER_TOPIC, HEADER_DEAD_LETTER_REASON, HEADER_EVENT_ID, HEADER_EVENT_TYPE,
        HEADER_ORIGINAL_PARTITION, HEADER_ORIGINAL_TOPIC, HEADER_SCHEMA_VERSION, HEADER_SEQUENCE,
    },
};
use sagaflow_proto::order::v1::{Order, order_service_client::OrderServiceClient};
use sagaflow_testkit::kafka::Broker;
use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, task::JoinSet};

use super::{
    ChaosConfig, ChaosReport, Role,
    scenario::Scenario,
    verify,
    workload::{self, OrderPlan, Placements},
};

/// The consumer failpoint [`consumer_crash`] arms (crates/events, feature `failpoints`).
pub const CONSUMER_FAILPOINT: &str = "kafka_consumer_after_handle";

/// The order service's outbox backlog gauge (`sagaflow_server::relay::PENDING`).
const PENDING_METRIC: &str = "sagaflow_outbox_pending";

/// How long every order gets to reach its terminal status after the load.
const FINISH_BOUND: Duration = Duration::from_secs(120);

/// A system on the Kafka bus: the broker, the processes, the state before the load.
struct Run {
    name: &'static str,
    started: Instant,
    scenario: Scenario,
    before: Snapshot,
    // Dropped last: the processes die before their broker.
    broker: Broker,
}

impl Run {
    /// Starts a broker, then every process of `config` (no faults, no kills) on it, seeded.
    async fn start(name: &'static str, config: ChaosConfig) -> anyhow::Result<Self> {
        let started = Instant::now();
        // A broker that cannot start panics: the test fails, it is never skipped.
        let broker = tokio::task::spawn_blocking(Broker::start)
            .await
            .context("starting the broker")?;
        let config = ChaosConfig {
            chaos: false,
            ..config.with_kafka(broker.bootstrap())
        };
        let scenario = Scenario::start(name, &config).await?;
        let before = scenario.snapshot().await?;
        eprintln!(
            "{name}: broker and system up after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            name,
            started,
            scenario,
            before,
            broker,
        })
    }

    /// Prints how long the run took to get to `what` (the tests' durations, phase by phase).
    fn phase(&self, what: &str) {
        eprintln!(
            "{}: {what} after {:.1}s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Spawns `clients` clients placing `count` orders of the seeded mix.
    fn load(&self, seed: u64, count: usize, clients: usize) -> anyhow::Result<Load> {
        let plans = workload::plan_orders(seed, count, &self.scenario.seed);
        let handles = workload::spawn_clients(
            self.scenario.cluster.channel(Role::Order)?,
            plans.clone(),
            clients,
            tokio::time::Instant::now() + FINISH_BOUND,
        );
        Ok(Load { plans, handles })
    }

    /// Joins the clients, places what got no answer, waits for every order to end, and runs
    /// every check into `report`; the orders' outcomes.
    async fn finish_and_check(
        &self,
        load: Load,
        report: &mut ChaosReport,
    ) -> anyhow::Result<Finished> {
        let placed = workload::join_clients(load.handles).await;
        let placed = workload::finish_placing(&self.scenario.cluster, placed, &load.plans).await?;
        report.violations.extend(placed.refused.iter().cloned());
        self.phase(&format!("{} orders placed", placed.orders.len()));
        let finished = self.wait_terminal(&placed).await?;
        self.phase("every order ended");
        if finished.unfinished > 0 {
            report.violations.push(format!(
                "{} orders not terminal within {FINISH_BOUND:?}",
                finished.unfinished
            ));
        } else {
            let ids: Vec<String> = placed.orders.iter().map(|p| p.order_id.clone()).collect();
            report
                .violations
                .extend(self.scenario.violations(&ids, &self.before).await?);
            report.checks += ids.len();
        }
        let request_ids: BTreeSet<String> = load
            .plans
            .iter()
            .map(|p| p.request.request_id.clone())
            .collect();
        verify::check_databases(&self.scenario.urls, &placed, &request_ids, report).await?;
        report.orders_placed = placed.orders.len();
        self.phase("invariants and databases checked");
        Ok(finished)
    }

    /// Waits (bounded) until every placed order is terminal.
    async fn wait_terminal(&self, placed: &Placements) -> anyhow::Result<Finished> {
        let channel = self.scenario.cluster.channel(Role::Order)?;
        let bound = tokio::time::Instant::now() + FINISH_BOUND;
        let mut waiting = JoinSet::new();
        for p in &placed.orders {
            let mut client = OrderServiceClient::new(channel.clone());
            let order = Order {
                order_id: p.order_id.clone(),
                ..Order::default()
            };
            waiting.spawn(async move {
                sagaflow_cli::load::wait_terminal(&mut client, order, bound).await
            });
        }
        let mut finished = Finished::default();
        while let Some(joined) = waiting.join_next().await {
            let order = joined?.context("waiting for an order")?;
            if sagaflow_cli::load::is_terminal(&order) {
                *finished
                    .outcomes
                    .entry(sagaflow_cli::load::outcome_label(&order))
                    .or_default() += 1;
            } else {
                finished.unfinished += 1;
            }
        }
        Ok(finished)
    }

    /// Sagas in the workflow database.
    async fn sagas(&self) -> anyhow::Result<i64> {
        let db = verify::pool(&self.scenario.urls["workflow"]).await?;
        let count = sqlx::query_scalar("SELECT COUNT(*) FROM sagas")
            .fetch_one(&db)
            .await?;
        db.close().await;
        Ok(count)
    }

    /// Waits (bounded by `within`) until the workflow database has at least `count` sagas.
    async fn wait_for_sagas(&self, count: i64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let sagas = self.sagas().await?;
            if sagas >= count {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {sagas} sagas of {count} started within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let Self {
            scenario, broker, ..
        } = self;
        scenario.stop().await?;
        drop(broker);
        Ok(())
    }
}

/// A load in progress.
struct Load {
    plans: Arc<Vec<OrderPlan>>,
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<Placements>>>,
}

/// The outcomes of a run's orders.
#[derive(Debug, Clone, Default)]
struct Finished {
    outcomes: BTreeMap<String, usize>,
    unfinished: usize,
}

/// What [`broker_outage`] measured.
#[derive(Debug, Clone, Default)]
pub struct BrokerOutageReport {
    /// Orders placed.
    pub orders: usize,
    /// Final outcome label → orders.
    pub outcomes: BTreeMap<String, usize>,
    /// Orders not terminal within the bound.
    pub unfinished: usize,
    /// Orders placed while the broker was stopped.
    pub placed_during_outage: i64,
    /// How long the broker was stopped, milliseconds.
    pub outage_ms: u64,
    /// `sagaflow_outbox_pending` of the order service right before the stop.
    pub pending_before: f64,
    /// Its highest value while the broker was stopped.
    pub pending_peak: f64,
    /// Its value once drained (0 when it drained within the bound).
    pub pending_after: f64,
    /// From SIGCONT until the order service's backlog gauge read 0, milliseconds.
    pub drained_ms: f64,
    /// Checks made and violations found (invariants, databases, per-order event order).
    pub report: ChaosReport,
}

/// Runs `orders` orders of the seeded mix; after the first sagas start the broker is SIGSTOPped
/// for `outage` while the clients keep placing orders, then SIGCONTed. Samples the order
/// service's `sagaflow_outbox_pending` (from its `--metrics-listen`) before, during and after.
///
/// # Errors
/// When a process does not start, PostgreSQL is unreachable or the metrics cannot be scraped.
pub async fn broker_outage(orders: usize, outage: Duration) -> anyhow::Result<BrokerOutageReport> {
    let metrics = format!("127.0.0.1:{}", crate::free_port());
    let config = ChaosConfig {
        extra_args: vec![(
            Role::Order,
            vec!["--metrics-listen".to_owned(), metrics.clone()],
        )],
        ..ChaosConfig::short(21)
    };
    let run = Run::start("kafka_outage", config).await?;
    let mut out = BrokerOutageReport::default();
    let load = run.load(21, orders, 6)?;
    run.wait_for_sagas(10, Duration::from_secs(60)).await?;

    let order_db = verify::pool(&run.scenario.urls["order"]).await?;
    let count_orders = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM orders")
            .fetch_one(&order_db)
            .await
    };
    out.pending_before = pending(&metrics).await?;
    let placed_before = count_orders().await?;
    run.broker.pause();
    run.phase("broker stopped");
    let stopped = Instant::now();
    while stopped.elapsed() < outage {
        // The gauge is sampled every second by the relay; read it through the whole outage.
        out.pending_peak = out.pending_peak.max(pending(&metrics).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out.placed_during_outage = count_orders().await? - placed_before;
    out.pending_peak = out.pending_peak.max(pending(&metrics).await?);
    run.broker.resume();
    run.phase("broker continued");
    out.outage_ms = u64::try_from(stopped.elapsed().as_millis()).unwrap_or(u64::MAX);
    let resumed = Instant::now();

    let finished = run.finish_and_check(load, &mut out.report).await?;
    out.orders = out.report.orders_placed;
    out.outcomes = finished.outcomes;
    out.unfinished = finished.unfinished;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        out.pending_after = pending(&metrics).await?;
        if out.pending_after == 0.0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.drained_ms = resumed.elapsed().as_secs_f64() * 1e3;
    order_db.close().await;
    event_order(&run.scenario.urls, &mut out.report).await?;
    run.stop().await?;
    Ok(out)
}

/// The sum of the `sagaflow_outbox_pending` samples `addr`'s `/metrics` serves.
async fn pending(addr: &str) -> anyhow::Result<f64> {
    let text = scrape(addr).await?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(PENDING_METRIC))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse().ok())
        .collect();
    anyhow::ensure!(!values.is_empty(), "{addr} serves no {PENDING_METRIC}");
    Ok(values.iter().sum())
}

/// `GET /metrics` from `addr` (Prometheus text), bounded to 10 s.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .with_context(|| format!("scraping {addr} took over 10 s"))??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{addr}: {head}");
    Ok(body.to_owned())
}

/// Per-aggregate event order, in the databases: each order's OrderCreated is its event 1 and
/// its terminal event (OrderCompleted or OrderFailed) its event 2, published in that order; the
/// OrderCreated was consumed (the order's saga exists) before Ranking recorded the order's
/// OrderCompleted; and each product view holds the state of its sku's last Inventory event.
async fn event_order(
    urls: &BTreeMap<&'static str, String>,
    report: &mut ChaosReport,
) -> anyhow::Result<()> {
    let order_db = verify::pool(&urls["order"]).await?;
    let workflow_db = verify::pool(&urls["workflow"]).await?;
    let ranking_db = verify::pool(&urls["ranking"]).await?;
    let inventory_db = verify::pool(&urls["inventory"]).await?;
    let mut expect = |ok: bool, violation: String| {
        report.checks += 1;
        if !ok {
            report.violations.push(violation);
        }
    };
    type Row = (String, String, i64, Option<i64>, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT aggregate_id, event_type, sequence, sent_at, event_id FROM outbox \
         ORDER BY aggregate_id, sequence",
    )
    .fetch_all(&order_db)
    .await?;
    let mut by_order: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        by_order.entry(row.0.as_str()).or_default().push(row);
    }
    let sagas: BTreeMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT business_key, created_at FROM sagas")
            .fetch_all(&workflow_db)
            .await?
            .into_iter()
            .collect();
    let recorded: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT order_id, recorded_at FROM inbox WHERE order_id IS NOT NULL",
    )
    .fetch_all(&ranking_db)
    .await?
    .into_iter()
    .collect();
    for (order, events) in &by_order {
        let kinds: Vec<(&str, i64)> = events.iter().map(|r| (r.1.as_str(), r.2)).collect();
        let shape_ok = matches!(
            kinds.as_slice(),
            [("OrderCreated", 1), ("OrderCompleted" | "OrderFailed", 2)]
        );
        expect(shape_ok, format!("order {order}: outbox events {kinds:?}"));
        if let [created, terminal] = events.as_slice() {
            expect(
                matches!((created.3, terminal.3), (Some(a), Some(b)) if a <= b),
                format!(
                    "order {order}: OrderCreated sent at {:?}, {} at {:?}",
                    created.3, terminal.1, terminal.3
                ),
            );
        }
        let saga = sagas.get(*order).copied();
        expect(
            saga.is_some(),
            format!("order {order}: no saga (OrderCreated not consumed)"),
        );
        if let (Some(started), Some(at)) = (saga, recorded.get(*order).copied()) {
            expect(
                started <= at,
                format!(
                    "order {order}: Ranking recorded OrderCompleted at {at}, before the saga \
                     started at {started}"
                ),
            );
        }
    }
    let last: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT aggregate_id, MAX(sequence)::BIGINT FROM outbox GROUP BY aggregate_id",
    )
    .fetch_all(&inventory_db)
    .await?
    .into_iter()
    .collect();
    let views: BTreeMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT sku, last_sequence FROM product_view")
            .fetch_all(&ranking_db)
            .await?
            .into_iter()
            .collect();
    expect(
        views == last,
        format!("product view's last sequence per sku {views:?}, Inventory's outbox {last:?}"),
    );
    for db in [order_db, workflow_db, ranking_db, inventory_db] {
        db.close().await;
    }
    Ok(())
}

/// What [`consumer_crash`] found.
#[derive(Debug, Clone, Default)]
pub struct ConsumerCrashReport {
    /// Orders placed.
    pub orders: usize,
    /// Final outcome label → orders.
    pub outcomes: BTreeMap<String, usize>,
    /// Orders not terminal within the bound.
    pub unfinished: usize,
    /// Ranking aborted at [`CONSUMER_FAILPOINT`] (SIGABRT and the abort line).
    pub aborted: bool,
    /// Right after the abort: records past the group `sagaflow-ranking`'s committed offsets
    /// (to be redelivered to the restarted Ranking).
    pub uncommitted: usize,
    /// Of those, records whose effect was already committed: their event id is in Ranking's
    /// inbox (at least the record the failpoint stopped after).
    pub uncommitted_with_effect: usize,
    /// Rows in Ranking's inbox right after the abort.
    pub inbox_at_abort: usize,
    /// Once every order ended: the group's committed offsets reached the end of every partition
    /// (the restarted Ranking consumed the redelivered records and went on).
    pub caught_up: bool,
    /// Checks made and violations found.
    pub report: ChaosReport,
}

/// Ranking's consumer aborts right after a handler returned (its inbox row and effect
/// committed, the offset not) while `orders` orders flow; Ranking is restarted and gets those
/// records again. Checks that the redelivery changed nothing: the inbox holds each event once,
/// sales and the product view equal what the completed orders and the stock changes imply.
///
/// # Errors
/// When a process does not start or Ranking does not abort within a minute.
pub async fn consumer_crash(orders: usize) -> anyhow::Result<ConsumerCrashReport> {
    let mut run = Run::start("kafka_redelivery", ChaosConfig::short(3)).await?;
    let mut out = ConsumerCrashReport::default();
    let bootstrap = run.broker.bootstrap();
    let ranking = run.scenario.cluster.index_of(Role::Ranking)?;
    // Restart Ranking with the failpoint armed: 200 records pass, the 201st aborts the process
    // after its handler returned.
    run.scenario.cluster.kill(ranking).await?;
    run.scenario
        .cluster
        .start(
            ranking,
            false,
            Some((CONSUMER_FAILPOINT.to_owned(), "200*off->1*panic".to_owned())),
        )
        .await?;
    let load = run.load(3, orders, 6)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exited = run.scenario.cluster.reap_exited();
        if let Some(e) = exited.iter().find(|e| e.index == ranking) {
            out.aborted = e.failpoint.as_deref() == Some(CONSUMER_FAILPOINT);
            anyhow::ensure!(
                out.aborted,
                "ranking exited with {} without its failpoint; logs:\n{}",
                e.status,
                e.log_tail
            );
            break;
        }
        if let Some(e) = exited.first() {
            anyhow::bail!("{} exited with {}:\n{}", e.name, e.status, e.log_tail);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "ranking did not reach {CONSUMER_FAILPOINT} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the dead member leaves to its successor: the records past its committed offsets,
    // some of them with their effect in the inbox already.
    run.phase("ranking aborted at the failpoint");
    let pending = uncommitted(&bootstrap, RANKING_GROUP).await?;
    out.uncommitted = pending.len();
    let ranking_db = verify::pool(&run.scenario.urls["ranking"]).await?;
    let recorded: BTreeSet<String> = sqlx::query_scalar("SELECT event_id FROM inbox")
        .fetch_all(&ranking_db)
        .await?
        .into_iter()
        .collect();
    ranking_db.close().await;
    out.inbox_at_abort = recorded.len();
    out.uncommitted_with_effect = pending.iter().filter(|id| recorded.contains(*id)).count();
    run.scenario.cluster.start(ranking, false, None).await?;

    let finished = run.finish_and_check(load, &mut out.report).await?;
    out.orders = out.report.orders_placed;
    out.outcomes = finished.outcomes;
    out.unfinished = finished.unfinished;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        out.caught_up = uncommitted(&bootstrap, RANKING_GROUP).await?.is_empty();
        if out.caught_up || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    run.stop().await?;
    Ok(out)
}

/// Ranking's consumer group.
const RANKING_GROUP: &str = "sagaflow-ranking";

/// The event ids of the records of Ranking's topics past `group`'s committed offsets (all of a
/// partition without a committed offset).
async fn uncommitted(bootstrap: &str, group: &str) -> anyhow::Result<Vec<String>> {
    let mut list = TopicPartitionList::new();
    for family in [Family::Order, Family::Inventory] {
        let topic = family.topic();
        for partition in 0..i32::try_from(partitions_of(bootstrap, topic).await?)? {
            list.add_partition(topic, partition);
        }
    }
    // An OffsetFetch for the group (no join: this client never subscribes).
    let offsets: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating an offsets client")?;
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("sagaflow-test-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a reader")?;
    tokio::task::spawn_blocking(move || {
        let committed = offsets.committed_offsets(list, Duration::from_secs(10))?;
        let mut from = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for e in committed.elements() {
            let (_, high) =
                reader.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?;
            let start = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            if start < high {
                from.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
                ends.insert((e.topic().to_owned(), e.partition()), high);
            }
        }
        let mut ids = Vec::new();
        if ends.is_empty() {
            return Ok(ids);
        }
        let wanted: i64 = ends.values().sum::<i64>()
            - from
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum::<i64>();
        reader.assign(&from)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut read = 0i64;
        while read < wanted {
            anyhow::ensure!(
                Instant::now() < deadline,
                "read {read} of {wanted} uncommitted records within 20 s"
            );
            let Some(received) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = received.context("reading uncommitted records")?;
            let end = ends
                .get(&(message.topic().to_owned(), message.partition()))
                .copied()
                .unwrap_or(0);
            if message.offset() >= end {
                continue;
            }
            read += 1;
            if let Some(id) = message.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == HEADER_EVENT_ID)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            }) {
                ids.push(id);
            }
        }
        Ok(ids)
    })
    .await?
}

/// What [`replicas`] found.
#[derive(Debug, Clone, Default)]
pub struct ReplicasReport {
    /// Orders placed.
    pub orders: usize,
    /// Final outcome label → orders.
    pub outcomes: BTreeMap<String, usize>,
    /// Orders not terminal within the bound.
    pub unfinished: usize,
    /// Partitions of the order topic.
    pub partitions: usize,
    /// Each replica's partitions of the order topic before the kill (its last assignment).
    pub assigned_before: BTreeMap<String, BTreeSet<i32>>,
    /// Replica → sagas it started (took the first lease of) before the kill.
    pub started_before_kill: BTreeMap<String, usize>,
    /// The replica SIGKILLed.
    pub killed: String,
    /// The survivor's partitions after the kill.
    pub survivor_after: BTreeSet<i32>,
    /// From the kill until the survivor was assigned every partition, milliseconds.
    pub takeover_ms: f64,
    /// Replica → sagas it started over the whole run.
    pub started: BTreeMap<String, usize>,
    /// Checks made and violations found (one saga per order among them).
    pub report: ChaosReport,
}

/// Two orchestrator replicas in the group `sagaflow-orchestrator` share the order topic's
/// partitions and both start sagas; once a third of `orders` sagas started one replica is
/// SIGKILLed; the survivor must be assigned every partition and every order still gets exactly
/// one saga and ends.
///
/// # Errors
/// When a process does not start or the replicas are not both assigned within a minute.
pub async fn replicas(orders: usize) -> anyhow::Result<ReplicasReport> {
    let mut run = Run::start("kafka_replicas", ChaosConfig::short(4)).await?;
    let mut out = ReplicasReport::default();
    let cluster = &run.scenario.cluster;
    let replicas: Vec<usize> = (0..cluster.names().len())
        .filter(|&i| cluster.node(i).role == Role::Orchestrator)
        .collect();
    anyhow::ensure!(replicas.len() == 2, "{} orchestrators", replicas.len());
    out.partitions = order_topic_partitions(&run.broker.bootstrap()).await?;

    // Both members joined: their assignments split the partitions between them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        out.assigned_before = replicas
            .iter()
            .map(|&i| {
                let node = run.scenario.cluster.node(i);
                (
                    node.name.clone(),
                    last_assignment(&run.scenario.cluster.log_of(i)),
                )
            })
            .collect();
        let all: BTreeSet<i32> = out.assigned_before.values().flatten().copied().collect();
        let split = out.assigned_before.values().all(|a| !a.is_empty())
            && out
                .assigned_before
                .values()
                .map(BTreeSet::len)
                .sum::<usize>()
                == all.len()
            && all.len() == out.partitions;
        if split {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replicas did not share the partitions within 60 s: {:?}",
            out.assigned_before
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let load = run.load(4, orders, 6)?;
    let third = i64::try_from(orders / 3).unwrap_or(i64::MAX);
    run.wait_for_sagas(third, Duration::from_secs(90)).await?;
    out.started_before_kill = starters(&run.scenario.urls).await?;
    let victim = replicas[0];
    let survivor = replicas[1];
    out.killed = run.scenario.cluster.node(victim).name.clone();
    run.scenario.cluster.kill(victim).await?;
    run.phase("orchestrator replica killed");
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    loop {
        out.survivor_after = last_assignment(&run.scenario.cluster.log_of(survivor));
        if out.survivor_after.len() == out.partitions {
            out.takeover_ms = killed.elapsed().as_secs_f64() * 1e3;
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let finished = run.finish_and_check(load, &mut out.report).await?;
    out.orders = out.report.orders_placed;
    out.outcomes = finished.outcomes;
    out.unfinished = finished.unfinished;
    out.started = starters(&run.scenario.urls).await?;
    run.stop().await?;
    Ok(out)
}

/// The partitions of the order topic in the last `kafka: partitions assigned` line of `logs`.
fn last_assignment(logs: &str) -> BTreeSet<i32> {
    let topic = Family::Order.topic();
    let Some(line) = logs
        .lines()
        .rfind(|l| l.contains("kafka: partitions assigned"))
    else {
        return BTreeSet::new();
    };
    // `tps=[("sagaflow.order.events.v1", 0), …]`
    line.split(&format!("{topic}\", "))
        .skip(1)
        .filter_map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .collect()
}

/// Replica (owner id without its incarnation) → sagas whose first lease it took: the replica
/// that consumed the OrderCreated and started the saga.
async fn starters(
    urls: &BTreeMap<&'static str, String>,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let db = verify::pool(&urls["workflow"]).await?;
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT ON (saga_id) detail FROM saga_journal \
         WHERE event_type = 'lease_acquired' ORDER BY saga_id, seq",
    )
    .fetch_all(&db)
    .await?;
    db.close().await;
    let mut starters = BTreeMap::new();
    for detail in owners {
        let detail: serde_json::Value = serde_json::from_str(&detail)?;
        let owner = detail["owner"].as_str().unwrap_or("?");
        let replica = owner.split('.').next().unwrap_or(owner).to_owned();
        *starters.entry(replica).or_default() += 1;
    }
    Ok(starters)
}

/// Partitions of the order topic, from the broker's metadata.
async fn order_topic_partitions(bootstrap: &str) -> anyhow::Result<usize> {
    partitions_of(bootstrap, Family::Order.topic()).await
}

async fn partitions_of(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a metadata client")?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic}"))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
        Ok(partitions)
    })
    .await?
}

/// A record of the dead-letter topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its key (the original key).
    pub key: String,
    /// The `dead-letter-reason` header.
    pub reason: Option<String>,
    /// The `original-topic` header.
    pub original_topic: Option<String>,
    /// The `original-partition` header.
    pub original_partition: Option<i32>,
}

/// What [`poison`] found.
#[derive(Debug, Clone, Default)]
pub struct PoisonReport {
    /// Partitions of the order topic (one poison record was produced to each).
    pub partitions: usize,
    /// Keys of the poison records (fresh order ids), by partition.
    pub poison: BTreeMap<i32, String>,
    /// Key of the record without any header (undecodable for both consumer groups).
    pub headerless: String,
    /// The dead-letter topic's records.
    pub dead_letters: Vec<DeadLetter>,
    /// Orders placed after the poison.
    pub orders: usize,
    /// Final outcome label → orders.
    pub outcomes: BTreeMap<String, usize>,
    /// Orders not terminal within the bound.
    pub unfinished: usize,
    /// Checks made and violations found.
    pub report: ChaosReport,
}

/// Produces, to every partition of the order topic, an OrderCreated whose payload does not
/// decode (keyed with a fresh order id), and one record without headers to partition 0; then
/// places `orders` orders. The orchestrator must dead-letter each poison OrderCreated, both
/// consumer groups the headerless record, and every order must end.
///
/// # Errors
/// When a process does not start or the broker refuses the records.
pub async fn poison(orders: usize) -> anyhow::Result<PoisonReport> {
    let run = Run::start("kafka_poison", ChaosConfig::short(5)).await?;
    let bootstrap = run.broker.bootstrap();
    let mut out = PoisonReport {
        partitions: order_topic_partitions(&bootstrap).await?,
        ..PoisonReport::default()
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "10000")
        .create()
        .context("creating the producer")?;
    let topic = Family::Order.topic();
    // An unterminated varint: no protobuf message decodes from it.
    let garbage = [0xffu8; 11];
    for partition in 0..i32::try_from(out.partitions)? {
        let key = uuid::Uuid::new_v4().to_string();
        let event_id = uuid::Uuid::new_v4().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_EVENT_ID,
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: HEADER_EVENT_TYPE,
                value: Some("OrderCreated"),
            })
            .insert(Header {
                key: HEADER_SCHEMA_VERSION,
                value: Some("1"),
            })
            .insert(Header {
                key: HEADER_SEQUENCE,
                value: Some("1"),
            });
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&garbage[..])
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("producing poison to partition {partition}"))?;
        out.poison.insert(partition, key);
    }
    out.headerless = uuid::Uuid::new_v4().to_string();
    producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key(&out.headerless)
                .payload("not an event"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("producing the headerless record")?;

    let load = run.load(5, orders, 6)?;
    let finished = run.finish_and_check(load, &mut out.report).await?;
    out.orders = out.report.orders_placed;
    out.outcomes = finished.outcomes;
    out.unfinished = finished.unfinished;
    // Every poison OrderCreated once (the orchestrator's group), the headerless record twice.
    let expected = out.partitions + 2;
    out.dead_letters = dead_letters(&bootstrap, expected, Duration::from_secs(30)).await?;
    run.stop().await?;
    Ok(out)
}

/// Reads the dead-letter topic from its beginning until it has `expected` records or `within`
/// passed (without joining a group: every partition assigned).
async fn dead_letters(
    bootstrap: &str,
    expected: usize,
    within: Duration,
) -> anyhow::Result<Vec<DeadLetter>> {
    let partitions = partitions_of(bootstrap, DEAD_LETTER_TOPIC).await?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("sagaflow-test-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the dead-letter reader")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..i32::try_from(partitions)? {
        assignment.add_partition_offset(DEAD_LETTER_TOPIC, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + within;
        let mut letters = Vec::new();
        while letters.len() < expected && Instant::now() < deadline {
            let Some(received) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = received.context("reading the dead-letter topic")?;
            let header = |name: &str| {
                message.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == name)
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            letters.push(DeadLetter {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                reason: header(HEADER_DEAD_LETTER_REASON),
                original_topic: header(HEADER_ORIGINAL_TOPIC),
                original_partition: header(HEADER_ORIGINAL_PARTITION).and_then(|p| p.parse().ok()),
            });
        }
        Ok(letters)
    })
    .await?
}
