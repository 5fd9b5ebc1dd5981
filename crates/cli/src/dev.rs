//! The embedded system (docs/architecture.md, "Run modes", the default): every service and the
//! orchestrator in one process, all gRPC services on one port with reflection and health, each
//! service on its own SQLite file under the data directory (database-per-service preserved), demo
//! data seeded once.
//!
//! ```text
//!  data dir: order.db coupon.db inventory.db payment.db point.db ranking.db workflow.db
//!
//!  one port ─┬─ OrderService ──commit──▶ outbox ──relay──▶ StartOrderSaga (same port)
//!            ├─ Coupon/Inventory/Payment/Point/Ranking services
//!            ├─ OrchestratorService + SagaAdminService ──▶ Engine ──typed clients──▶ (same port)
//!            └─ health, reflection v1 + v1alpha
//! ```
//!
//! Services call each other over loopback gRPC exactly as in the distributed deployment, so the
//! embedded system exercises the same code paths. A restart continues every unfinished saga: the
//! engine reclaims their leases (after they expire) and resumes them from their state rows.
//!
//! Observability: spans are exported as `service.name` `sagaflow-dev` when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `--metrics-listen ADDR` serves the engine's and the
//! relay's Prometheus metrics (including the sampled outbox backlog).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use sagaflow_orchestrator::{OrchestratorService, ServiceClients, StepPolicies, order_saga};
use sagaflow_order::relay::{self, OutboxRelay, RelayWaker};
use sagaflow_payment::{SimulatedGateway, SimulatedGatewayConfig};
use sagaflow_server::{
    Db, Migrations, PoolConfig,
    config::Synchronous,
    db::SqliteSynchronous,
    faults::FaultConfig,
    grpc::{self, ServerHandle},
};
use sagaflow_telemetry::metrics::{MetricsArgs, MetricsExporter};
use sagaflow_workflow_engine::{Engine, SqlSagaStore, admin::SagaAdmin};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{service::RoutesBuilder, transport::Endpoint};

use crate::{
    seed::{self, DEMO_SEED, Seed},
    serve::Service,
};

/// Flags of `sagaflow dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address of the one port every service listens on.
    #[arg(long, env = "SAGAFLOW_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory of the SQLite files (created when missing).
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = ".sagaflow")]
    pub data_dir: PathBuf,
    /// Seed data (catalog, users, coupons) applied on first start; default: the shipped demo data.
    #[arg(long, env = "SAGAFLOW_SEED")]
    pub seed: Option<PathBuf>,
    /// Do not seed anything.
    #[arg(long)]
    pub no_seed: bool,
    /// SQLite durability: `full` fsyncs every commit; `normal` survives a process crash (the
    /// chaos tests' SIGKILL) but may lose the last commits on power loss.
    #[arg(long, env = "SAGAFLOW_SQLITE_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Full)]
    pub sqlite_synchronous: Synchronous,
    /// Saga lease, milliseconds: how long after a crash another start may take a saga over.
    #[arg(long, env = "SAGAFLOW_LEASE_MS", default_value_t = 5_000)]
    pub lease_ms: u64,
    /// A saga still before its pivot this long after it started is compensated with reason
    /// DEADLINE_EXCEEDED, milliseconds.
    #[arg(long, env = "SAGAFLOW_SAGA_DEADLINE_MS", default_value_t = 60_000)]
    pub saga_deadline_ms: u64,
    #[command(flatten)]
    pub gateway: sagaflow_payment::GatewayArgs,
    /// Faults to inject (drills and chaos tests), e.g. `CompletePayment=lost_reply:0.5`: rules
    /// `METHOD=FAULT[,FAULT…]` separated by `;`; faults `error:CODE:P`, `latency:MS[-MAX]`,
    /// `lost_reply:P` (docs/operations.md, "Fault injection").
    #[arg(long, env = "SAGAFLOW_FAULTS", default_value = "")]
    pub faults: FaultConfig,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub retention: sagaflow_server::config::RetentionArgs,
}

/// Configuration of an embedded system.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The one port.
    pub listen: SocketAddr,
    /// Directory of the SQLite files.
    pub data_dir: PathBuf,
    /// Seed applied once (marker file in the data dir), if any.
    pub seed: Option<String>,
    /// SQLite durability.
    pub sqlite_synchronous: Synchronous,
    /// Simulated payment gateway.
    pub gateway: SimulatedGatewayConfig,
    /// Per-step timeouts and retries of the order saga.
    pub policies: StepPolicies,
    /// Saga deadline.
    pub saga_deadline: Duration,
    /// Saga lease, milliseconds.
    pub lease_ms: u64,
    /// Faults injected into every RPC (empty: none).
    pub faults: FaultConfig,
    /// How often the outbox relay polls for missed events.
    pub relay_poll: Duration,
    /// How often the relay samples the outbox backlog into the metrics; `None` (the default):
    /// never (no metrics endpoint).
    pub backlog_sampling: Option<Duration>,
    /// Retries of failed outbox deliveries and when the relay dead-letters an event
    /// (docs/architecture.md, "Events"); default: `RetryPolicy::default()` (20 attempts, 100 ms
    /// doubling to 30 s, full jitter).
    pub outbox_retry: relay::RetryPolicy,
    /// How long delivered outbox rows are kept; `None`: forever. Default 7 days.
    pub outbox_sent_retention: Option<Duration>,
    /// Where the seven databases live: SQLite files under `data_dir` (the default), or one
    /// PostgreSQL database per service (for running the same system on both stores in tests).
    pub storage: Storage,
    /// The payment methods PlaceOrder accepts (any other is INVALID_ARGUMENT naming
    /// `payment_method`); default: the simulated gateway's card tokens.
    pub payment_methods: Vec<String>,
    /// Retention of every database (docs/operations.md, "Retention"); default: on, with the
    /// documented windows.
    pub retention: sagaflow_server::retention::RetentionConfig,
}

/// Where an embedded system keeps its databases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    /// `<data_dir>/<service>.db`.
    #[default]
    Sqlite,
    /// Database `<prefix>_<service>` on the PostgreSQL server of `url` (created if missing).
    Postgres {
        /// A `postgres://` URL of the server (its database part is replaced).
        url: String,
        /// Prefix of the database names.
        prefix: String,
    },
}

impl Storage {
    /// The database URL of service `name`.
    fn url(&self, data_dir: &std::path::Path, name: &str) -> String {
        match self {
            Self::Sqlite => format!("sqlite://{}", data_dir.join(format!("{name}.db")).display()),
            Self::Postgres { url, prefix } => {
                let base = url.split('?').next().unwrap_or(url);
                let query = url
                    .split_once('?')
                    .map(|(_, q)| format!("?{q}"))
                    .unwrap_or_default();
                let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
                format!("{server}/{prefix}_{name}{query}")
            }
        }
    }
}

impl EmbeddedConfig {
    /// Defaults for `data_dir` on a free loopback port with the demo seed.
    pub fn demo(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            seed: Some(DEMO_SEED.to_owned()),
            sqlite_synchronous: Synchronous::Full,
            gateway: SimulatedGatewayConfig::default(),
            policies: StepPolicies::default(),
            saga_deadline: Duration::from_secs(60),
            lease_ms: 5_000,
            faults: FaultConfig::default(),
            relay_poll: Duration::from_millis(500),
            backlog_sampling: None,
            outbox_retry: relay::RetryPolicy::default(),
            outbox_sent_retention: Some(relay::DEFAULT_SENT_RETENTION),
            storage: Storage::Sqlite,
            payment_methods: sagaflow_payment::SIMULATED_CARD_TOKENS
                .map(String::from)
                .to_vec(),
            retention: sagaflow_server::retention::RetentionConfig::default(),
        }
    }

    /// Like [`EmbeddedConfig::demo`], without seed data (the bench brings its own product).
    pub fn bench(data_dir: PathBuf) -> Self {
        Self {
            seed: None,
            ..Self::demo(data_dir)
        }
    }

    fn from_args(args: &DevArgs) -> anyhow::Result<Self> {
        let seed = if args.no_seed {
            None
        } else {
            Some(match &args.seed {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
                None => DEMO_SEED.to_owned(),
            })
        };
        Ok(Self {
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            seed,
            sqlite_synchronous: args.sqlite_synchronous,
            gateway: args.gateway.config(),
            policies: StepPolicies::default(),
            saga_deadline: Duration::from_millis(args.saga_deadline_ms),
            lease_ms: args.lease_ms,
            faults: args.faults.clone(),
            relay_poll: Duration::from_millis(500),
            backlog_sampling: args
                .metrics
                .metrics_listen
                .map(|_| relay::BACKLOG_SAMPLE_INTERVAL),
            outbox_retry: relay::RetryPolicy::default(),
            outbox_sent_retention: Some(relay::DEFAULT_SENT_RETENTION),
            storage: Storage::Sqlite,
            payment_methods: sagaflow_payment::SIMULATED_CARD_TOKENS
                .map(String::from)
                .to_vec(),
            retention: args.retention.config(args.saga_deadline_ms)?,
        })
    }
}

/// A running embedded system.
#[derive(Debug)]
pub struct Embedded {
    /// Held until the process ends (released after the databases are closed).
    _lock: crate::datadir::DataDirLock,
    server: ServerHandle,
    engine: Engine,
    stop: CancellationToken,
    relay: JoinHandle<()>,
    /// The retention task of every database (`None`: retention off).
    retention: Option<JoinHandle<()>>,
    dbs: Vec<Db>,
}

impl Embedded {
    /// Opens (creating and migrating) the databases, starts every service, the saga engine and
    /// the outbox relay on `config.listen`, and seeds the demo data on first start.
    ///
    /// # Errors
    /// When a database cannot be opened, the port cannot be bound, or seeding fails.
    pub async fn start(config: EmbeddedConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        // Before anything is opened: a second `dev` on the same directory changes nothing.
        let lock = crate::datadir::DataDirLock::exclusive(&config.data_dir)?;
        // The port next, before any database file is created: a port in use changes nothing.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;

        let pool = PoolConfig {
            sqlite_synchronous: match config.sqlite_synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            },
            ..PoolConfig::default()
        };
        let open = |name: &'static str, migrations: Migrations| {
            let url = config.storage.url(&config.data_dir, name);
            let pool = pool.clone();
            async move {
                Db::connect(&url, migrations, &pool)
                    .await
                    .with_context(|| format!("opening the {name} database"))
            }
        };
        let order_db = open("order", sagaflow_order::migrations()).await?;
        let coupon_db = open("coupon", sagaflow_coupon::migrations()).await?;
        let inventory_db = open("inventory", sagaflow_inventory::migrations()).await?;
        let payment_db = open("payment", sagaflow_payment::migrations()).await?;
        let point_db = open("point", sagaflow_point::migrations()).await?;
        let ranking_db = open("ranking", sagaflow_ranking::migrations()).await?;
        let workflow_db = open("workflow", sagaflow_workflow_engine::MIGRATIONS).await?;

        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .context("loopback endpoint")?
            .connect_lazy();

        let engine = Engine::builder(Arc::new(SqlSagaStore::new(workflow_db.clone())))
            .definition(
                order_saga(ServiceClients::single(channel.clone()), config.policies)
                    .context("building the order saga")?,
            )
            .owner(sagaflow_workflow_engine::engine::default_owner("dev"))
            .lease_ms(config.lease_ms)
            .poll_interval_ms(500)
            // The lock on the data directory makes this engine the only one on its SQLite
            // files: the leases a crashed predecessor left are taken over at once.
            .sole_owner(config.storage == Storage::Sqlite)
            .build()
            .context("starting the saga engine")?;

        let waker = RelayWaker::default();
        let mut routes = RoutesBuilder::default();
        let stop = CancellationToken::new();
        sagaflow_order::OrderService::new(order_db.clone(), channel.clone())
            .with_payment_methods(config.payment_methods.clone())
            .with_relay_waker(waker.clone())
            .with_shutdown(stop.clone())
            .register(&mut routes);
        sagaflow_coupon::CouponService::new(coupon_db.clone()).register(&mut routes);
        sagaflow_inventory::InventoryService::new(inventory_db.clone()).register(&mut routes);
        sagaflow_payment::PaymentService::new(
            payment_db.clone(),
            Arc::new(SimulatedGateway::new(config.gateway)),
        )
        .register(&mut routes);
        sagaflow_point::PointService::new(point_db.clone()).register(&mut routes);
        sagaflow_ranking::RankingService::new(ranking_db.clone()).register(&mut routes);
        OrchestratorService::new(engine.clone(), config.saga_deadline).register(&mut routes);
        routes.add_service(SagaAdmin::new(engine.clone()).into_server());

        let server = grpc::spawn_on(
            listener,
            routes,
            &[
                sagaflow_order::SERVICE_NAME,
                sagaflow_order::OUTBOX_ADMIN_SERVICE_NAME,
                sagaflow_coupon::SERVICE_NAME,
                sagaflow_inventory::SERVICE_NAME,
                sagaflow_payment::SERVICE_NAME,
                sagaflow_point::SERVICE_NAME,
                sagaflow_ranking::SERVICE_NAME,
                sagaflow_orchestrator::SERVICE_NAME,
                "sagaflow.workflow.v1.SagaAdminService",
            ],
            config.faults.clone(),
        )
        .context("starting the gRPC server")?;

        let mut relay = OutboxRelay::new(
            order_db.clone(),
            channel.clone(),
            channel.clone(),
            waker,
            config.relay_poll,
        )
        .with_retry(config.outbox_retry)
        .with_sent_retention(config.outbox_sent_retention);
        if let Some(every) = config.backlog_sampling {
            relay = relay.with_backlog_sampling(every);
        }
        let relay = tokio::spawn(relay.run(stop.clone()));
        // Retention of all seven databases (docs/operations.md, "Retention"); ends with `stop`.
        let retention = crate::retention::spawn(
            &[
                (Service::Order, &order_db),
                (Service::Coupon, &coupon_db),
                (Service::Inventory, &inventory_db),
                (Service::Payment, &payment_db),
                (Service::Point, &point_db),
                (Service::Ranking, &ranking_db),
                (Service::Orchestrator, &workflow_db),
            ],
            &config.retention,
            stop.clone(),
        );
        let system = Self {
            _lock: lock,
            server,
            engine,
            stop,
            relay,
            retention,
            dbs: vec![
                order_db,
                coupon_db,
                inventory_db,
                payment_db,
                point_db,
                ranking_db,
                workflow_db,
            ],
        };
        if let Some(seed_json) = &config.seed {
            let seed = Seed::parse(seed_json)?;
            if seed::seed_once(&config.data_dir, channel, &seed).await? {
                tracing::info!(
                    products = seed.products.len(),
                    users = seed.users.len(),
                    "demo data seeded"
                );
            }
        }
        Ok(system)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The saga engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Graceful shutdown: stop accepting calls and let in-flight ones finish, stop the relay,
    /// let running steps finish (up to 10 s) and release their leases, close the databases.
    pub async fn shutdown(self) {
        // Order matters: the engine's steps call services in this very process, so the engine
        // stops (finishing the calls in flight, releasing its leases) while the server still
        // serves; long-polls and the relay stop first so the server can drain at once.
        self.stop.cancel();
        if let Err(err) = self.relay.await {
            tracing::warn!(error = %err, "outbox relay task failed");
        }
        if let Some(task) = self.retention
            && let Err(err) = task.await
        {
            tracing::warn!(error = %err, "retention task failed");
        }
        let report = self.engine.shutdown(Duration::from_secs(10)).await;
        if report.aborted > 0 {
            tracing::warn!(
                aborted = report.aborted,
                "saga drivers aborted at shutdown; their leases will expire"
            );
        }
        if let Err(err) = self.server.shutdown().await {
            tracing::warn!(error = %err, "gRPC server stopped with an error");
        }
        for db in &self.dbs {
            db.close().await;
        }
    }
}

/// `sagaflow dev`: runs the embedded system until SIGTERM or Ctrl-C, with the metrics endpoint
/// when `--metrics-listen` is set.
///
/// # Errors
/// As [`Embedded::start`]; when the metrics endpoint cannot be started.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let config = EmbeddedConfig::from_args(&args)?;
    let metrics = start_metrics(&args.metrics)?;
    let system = match Embedded::start(config).await {
        Ok(system) => system,
        Err(err) => {
            if let Some(metrics) = metrics {
                metrics.shutdown().await;
            }
            return Err(err);
        }
    };
    tracing::info!(
        addr = %system.addr(),
        data_dir = %args.data_dir.display(),
        "sagaflow dev is running: try `grpcurl -plaintext {} list`",
        system.addr()
    );
    grpc::shutdown_signal().await;
    system.shutdown().await;
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    Ok(())
}

/// Starts the metrics endpoint when `args` ask for one, with the descriptions of every metric
/// the embedded system records (engine and relay).
fn start_metrics(args: &MetricsArgs) -> anyhow::Result<Option<MetricsExporter>> {
    let exporter = MetricsExporter::from_args(args)?;
    if exporter.is_some() {
        sagaflow_workflow_engine::metrics::describe();
        relay::describe_metrics();
        sagaflow_server::retention::describe_metrics();
    }
    Ok(exporter)
}
