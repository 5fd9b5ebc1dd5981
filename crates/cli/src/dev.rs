//! The embedded system (docs/architecture.md, "Run modes", the default): every service and the
//! orchestrator in one process, all gRPC services on one port with reflection and health, each
//! service on its own SQLite file under the data directory (database-per-service preserved), demo
//! data seeded once.
//!
//! ```text
//!  data dir: order.db coupon.db inventory.db payment.db point.db ranking.db workflow.db
//!
//!  grpcurl, demo and bench clients ──TCP──▶ one port ─┐
//!                                                     ├─▶ TraceLayer ─▶ AccessLayer ─▶ KeyedRateLimitLayer ─▶ FaultLayer ─▶ StringGuardLayer ─▶ routes:
//!  this process's own calls ──in-process transport────┘    (one stack, crates/server/src/grpc.rs)
//!    ▲                                                     ├─ OrderService ──commit──▶ outbox ──relay──▶ StartOrderSaga ─┐
//!    │                                                     ├─ Coupon/Inventory/Payment/Point/Ranking services            │
//!    │                                                     ├─ OrchestratorService + SagaAdminService ──▶ Engine ─────────┤
//!    │                                                     └─ health, reflection v1 + v1alpha                            │
//!    └── relay deliveries, saga steps (typed clients), PlaceOrder's pricing call, seeding ───────────────────────────────┘
//! ```
//!
//! Services call each other with the same typed gRPC clients as in the distributed deployment,
//! through the in-process transport ([`sagaflow_server::transport`]): the request goes through the
//! server's own stack (the same layers, routes, codec, metadata, status details and deadlines as
//! over TCP) without a socket or HTTP/2, so the embedded system exercises the same code paths
//! without paying for loopback TCP. The port serves every client outside the process. A restart
//! continues every unfinished saga: the engine reclaims their leases (after they expire) and
//! resumes them from their state rows.
//!
//! Observability: spans are exported as `service.name` `sagaflow-dev` when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `--metrics-listen ADDR` serves the engine's and the
//! relay's Prometheus metrics (including the sampled outbox backlog).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use sagaflow_orchestrator::{StepPolicies, limits::DownstreamLimits};
use sagaflow_order::relay;
use sagaflow_payment::SimulatedGatewayConfig;
use sagaflow_server::{
    Db, PoolConfig,
    access::{AccessPolicy, AdminTokens},
    card_token::{self, CardTokenKey},
    config::{Security, Synchronous},
    db::SqliteSynchronous,
    end_users::{DevKey, dev_operator_token},
    faults::FaultConfig,
    grpc::{self, ServerHandle, ServerOptions},
    limits::Limits,
    transport::{InProcess, Transport},
};
use sagaflow_telemetry::metrics::{MetricsArgs, MetricsExporter};
use sagaflow_workflow_engine::Engine;
use tonic::service::RoutesBuilder;

use crate::{
    seed::{self, DEMO_SEED, Seed},
    services::{
        EngineSettings, EventArgs, EventSettings, Peers, RelaySettings, Running, Service, Settings,
    },
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
    pub trace: sagaflow_server::config::TraceArgs,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub retention: sagaflow_server::config::RetentionArgs,
    #[command(flatten)]
    pub server_limits: sagaflow_server::limits::ServerLimitArgs,
    /// Listen on a non-loopback address although `dev` is unauthenticated (only on a network
    /// where every host that can reach the port is trusted).
    #[arg(long, env = "SAGAFLOW_INSECURE")]
    pub insecure: bool,
    /// Run without end-user authentication: public RPCs answer anyone, as any user (logged as a
    /// warning). Without it, public RPCs need a token of `sagaflow token <user>`
    /// (docs/operations.md, "End users").
    #[arg(long, env = "SAGAFLOW_DEV_OPEN")]
    pub open: bool,
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
    /// How events travel: gRPC inside the process (the default), or through Kafka.
    pub events: EventSettings,
    /// TLS and who may call what (default: plaintext, every call let through; docs/operations.md,
    /// "Security"). The process's own in-process calls always pass.
    pub security: Security,
    /// End-user authentication with the development key of `data_dir` (`sagaflow dev` without
    /// `--open`; docs/operations.md, "End users"): the key and `dev`'s operator token are made on
    /// the first start, and public RPCs then need a token of `sagaflow token` or that operator
    /// token. Default false (the embedded systems of `demo` and `bench`).
    pub dev_end_users: bool,
    /// The server's limits (message size, concurrency, timeout, PlaceOrder per user).
    pub limits: Limits,
    /// Adopt every caller's `traceparent` (`--trust-traceparent`); default `false`: public and
    /// admin calls start a new trace linked to the caller's (docs/operations.md, "Logs and
    /// traces from untrusted input").
    pub trust_traceparent: bool,
}

/// Where an embedded system keeps its databases. Its `Debug` shows the URL with any password
/// removed ([`sagaflow_server::db::redact`]).
#[derive(Clone, Default, PartialEq, Eq)]
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

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("Sqlite"),
            Self::Postgres { url, prefix } => f
                .debug_struct("Postgres")
                .field("url", &sagaflow_server::db::redact(url))
                .field("prefix", prefix)
                .finish(),
        }
    }
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
            events: EventSettings::default(),
            security: Security::default(),
            limits: Limits::default(),
            dev_end_users: false,
            trust_traceparent: false,
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
            events: args.events.settings(),
            security: Security::default(),
            limits: args.server_limits.limits(),
            dev_end_users: !args.open,
            trust_traceparent: args.trace.trust_traceparent,
        })
    }
}

/// A running embedded system.
#[derive(Debug)]
pub struct Embedded {
    /// Held until the process ends (released after the databases are closed).
    _lock: crate::datadir::DataDirLock,
    server: ServerHandle,
    /// The server's in-process transport: every call the system makes to itself.
    local: InProcess,
    engine: Engine,
    /// The relay, the retention task of every database and the engine.
    running: Running,
    dbs: Vec<(Service, Db)>,
}

impl Embedded {
    /// Opens (creating and migrating) the databases, starts every service, the saga engine and
    /// the outbox relay on `config.listen`, and seeds the demo data on first start.
    ///
    /// # Errors
    /// When a database cannot be opened, the port cannot be bound, or seeding fails.
    pub async fn start(config: EmbeddedConfig) -> anyhow::Result<Self> {
        // The port first: a port in use changes nothing, not even the data directory.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        crate::datadir::prepare(&config.data_dir)?;
        // Before anything is opened: a second `dev` on the same directory changes nothing.
        let lock = crate::datadir::DataDirLock::exclusive(&config.data_dir)?;
        let mut access = config.security.access.clone();
        if config.dev_end_users {
            access = dev_access(access, &config.data_dir)?;
        }

        let pool = PoolConfig {
            sqlite_synchronous: match config.sqlite_synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            },
            ..PoolConfig::default()
        };
        let mut dbs = Vec::with_capacity(Service::ALL.len());
        for service in Service::ALL {
            let url = config
                .storage
                .url(&config.data_dir, service.database_name());
            let db = Db::connect(&url, service.migrations(), &pool)
                .await
                .with_context(|| format!("opening the {} database", service.database_name()));
            match db {
                Ok(db) => dbs.push((service, db)),
                Err(err) => {
                    for (_, db) in &dbs {
                        db.close().await;
                    }
                    return Err(err);
                }
            }
        }

        // Every call the system makes to itself goes through the server's stack in-process: the
        // transport exists before the services that call through it, and serves once the server
        // is started below (calls made before that wait, as connections wait in a backlog).
        if let Err(err) = config.events.prepare().await {
            for (_, db) in &dbs {
                db.close().await;
            }
            return Err(err);
        }
        // Order and Payment share it (docs/architecture.md, "Card tokens").
        let card_token_key = match CardTokenKey::load_or_create(
            &config.data_dir.join(card_token::DEFAULT_KEY_FILE_NAME),
        ) {
            Ok(key) => key,
            Err(err) => {
                for (_, db) in &dbs {
                    db.close().await;
                }
                return Err(anyhow::Error::new(err).context("loading the card-token key"));
            }
        };
        let local = InProcess::new();
        let settings = Settings {
            payment_methods: config.payment_methods.clone(),
            card_token_key: Some(card_token_key),
            gateway: config.gateway,
            relay: RelaySettings {
                poll: config.relay_poll,
                retry: config.outbox_retry,
                sent_retention: config.outbox_sent_retention,
                backlog_sampling: config.backlog_sampling,
            },
            engine: EngineSettings {
                policies: config.policies,
                limits: DownstreamLimits::default(),
                owner: sagaflow_workflow_engine::engine::default_owner("dev"),
                lease_ms: config.lease_ms,
                poll_ms: 500,
                // The lock on the data directory makes this engine the only one on its SQLite
                // files: the leases a crashed predecessor left are taken over at once.
                sole_owner: config.storage == Storage::Sqlite,
                saga_deadline: config.saga_deadline,
            },
            events: config.events.clone(),
            max_order_waiters: config.limits.max_order_waiters,
        };
        let peers = Peers::single(local.clone());
        let mut running = Running::default();
        let mut routes = RoutesBuilder::default();
        let mut names = Vec::new();
        let mut registered = Ok(());
        for (service, db) in &dbs {
            registered = service.register(db, &peers, &settings, &mut routes, &mut running);
            if registered.is_err() {
                break;
            }
            names.extend_from_slice(service.grpc_names());
        }
        let server = match registered {
            Ok(()) => grpc::spawn_on_in_process(
                listener,
                routes,
                &names,
                ServerOptions {
                    faults: config.faults.clone(),
                    access,
                    tls: config.security.tls.server_config(),
                    limits: config.limits.clone(),
                    trust_traceparent: config.trust_traceparent,
                },
                local.clone(),
            )
            .await
            .context("starting the gRPC server"),
            Err(err) => Err(err),
        };
        let server = match server {
            Ok(server) => server,
            Err(err) => {
                // Calls already waiting for the server are refused, so the relay and the engine
                // stop at once.
                local.close();
                running.shutdown().await;
                for (_, db) in &dbs {
                    db.close().await;
                }
                return Err(err);
            }
        };
        // Retention of all seven databases (docs/operations.md, "Retention"); ends with the stop
        // token.
        let databases: Vec<(Service, &Db)> = dbs.iter().map(|(s, db)| (*s, db)).collect();
        running.spawn_background(
            "retention",
            crate::retention::spawn(&databases, &config.retention, running.stop_token()),
        );
        let Some(engine) = running.engine().cloned() else {
            anyhow::bail!("the orchestrator registered no saga engine");
        };
        let system = Self {
            _lock: lock,
            server,
            local,
            engine,
            running,
            dbs,
        };
        if let Some(seed_json) = &config.seed {
            let seed = Seed::parse(seed_json)?;
            if seed::seed_once(&config.data_dir, system.transport(), &seed).await? {
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

    /// The in-process transport to every service of this system (what its own calls use): calls
    /// through it go through the server's stack without a socket. Refused (UNAVAILABLE, a
    /// connect error) once the system shuts down.
    pub fn transport(&self) -> Transport {
        Transport::from(self.local.clone())
    }

    /// Write transactions committed so far on each database (`order`, `coupon`, …, `workflow`):
    /// [`Db::commits`], which counts the services' group-commit batches and every transaction of
    /// `Db::begin` (the engine's included).
    pub fn commits(&self) -> Vec<(&'static str, u64)> {
        self.dbs
            .iter()
            .map(|(service, db)| (service.database_name(), db.commits()))
            .collect()
    }

    /// The saga engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Graceful shutdown: stop accepting calls and let in-flight ones finish, stop the relay,
    /// let running steps finish (up to 10 s) and release their leases, close the databases.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(10)).await;
    }

    /// [`Embedded::shutdown`] with `grace` for the running steps instead of 10 s (`demo` and
    /// `bench` after Ctrl-C: their data directory is removed right after).
    pub async fn shutdown_within(self, grace: Duration) {
        // Order matters: the engine's steps call services in this very process, so the engine
        // stops (finishing the calls in flight, releasing its leases) while the server still
        // serves; long-polls and the relay stop first so the server can drain at once.
        self.running.shutdown_within(grace).await;
        if let Err(err) = self.server.shutdown().await {
            tracing::warn!(error = %err, "gRPC server stopped with an error");
        }
        for (_, db) in &self.dbs {
            db.close().await;
        }
    }
}

/// `policy` with end-user authentication by the development key of `data_dir`, and `dev`'s
/// operator token accepted on the public RPCs (both made on the first start, mode 0600;
/// docs/operations.md, "End users").
fn dev_access(policy: AccessPolicy, data_dir: &Path) -> anyhow::Result<AccessPolicy> {
    let key = DevKey::load_or_create(data_dir).context("the development signing key")?;
    let operator = dev_operator_token(data_dir).context("the development operator token")?;
    let operators = AdminTokens::parse(&AdminTokens::line_for("dev", &operator))
        .context("the development operator token")?;
    Ok(policy.with_end_users(key.verifier()?, Some(operators)))
}

/// `sagaflow dev`: runs the embedded system until SIGTERM or Ctrl-C, with the metrics endpoint
/// when `--metrics-listen` is set.
///
/// # Errors
/// As [`Embedded::start`]; when the metrics endpoint cannot be started.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() && !args.insecure {
        anyhow::bail!(
            "refusing to listen on {}: `sagaflow dev` is unauthenticated and unencrypted, so \
             anyone who reaches the port could call every RPC, internal and admin ones included. \
             Listen on 127.0.0.1, add --insecure on a network you trust, or run `sagaflow serve` \
             with TLS and tokens (docs/operations.md, \"Security\")",
            args.listen
        );
    }
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
    // INFO, not WARN: it is the expected state of a laptop's system, printed at every start;
    // a warning would be noise in every log check.
    tracing::info!(
        addr = %system.addr(),
        "sagaflow dev's internal and admin RPCs are UNAUTHENTICATED and unencrypted: they answer \
         anyone who reaches this port; a deployment runs `sagaflow serve` with TLS, client \
         certificates and admin tokens (docs/operations.md, \"Security\")"
    );
    if args.open {
        tracing::warn!(
            addr = %system.addr(),
            "sagaflow dev --open: end-user authentication is OFF; the public RPCs answer anyone, \
             who may act as and read the data of any user (docs/operations.md, \"End users\")"
        );
    } else {
        tracing::info!(
            data_dir = %args.data_dir.display(),
            "public RPCs need a user's token: `sagaflow token alice --data-dir {}` prints one \
             (send it as `authorization: Bearer <token>`)",
            args.data_dir.display()
        );
    }
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
        sagaflow_events::kafka::describe_metrics();
        sagaflow_server::retention::describe_metrics();
    }
    Ok(exporter)
}
