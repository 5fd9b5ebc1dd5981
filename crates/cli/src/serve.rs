//! `sagaflow serve <service>`: one service, its own port and database (the distributed mode of
//! docs/architecture.md, "Run modes"). The orchestrator runs the saga engine over the workflow
//! database; any number of orchestrator replicas may share one PostgreSQL workflow database. The
//! order service also runs its outbox relay.
//!
//! Observability: spans are exported as `service.name` `sagaflow-<service>` when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `--metrics-listen ADDR` serves this process's Prometheus
//! metrics (the orchestrator's engine metrics, the order relay's outbox metrics).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use sagaflow_orchestrator::{
    StepPolicies,
    limits::{self, DownstreamLimits},
};
use sagaflow_order::relay;
use sagaflow_server::{
    Db,
    card_token::{self, CardTokenKey},
    config::{DatabaseArgs, FaultArgs, RetentionArgs, SecurityArgs, TraceArgs},
    grpc,
    tls::Tls,
};
use sagaflow_telemetry::metrics::{MetricsArgs, MetricsError, MetricsExporter};
use tonic::{
    service::RoutesBuilder,
    transport::{Channel, Endpoint},
};

pub use crate::services::Service;
use crate::{
    CliError,
    services::{EngineSettings, EventArgs, Peers, RelaySettings, Running, Settings},
};

/// Addresses of the other services (each a URL; several comma-separated URLs are load-balanced).
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Order service (used by the orchestrator).
    #[arg(
        long,
        env = "SAGAFLOW_ORDER_ADDR",
        default_value = "http://127.0.0.1:50061"
    )]
    pub order_addr: String,
    /// Coupon service (used by the orchestrator).
    #[arg(
        long,
        env = "SAGAFLOW_COUPON_ADDR",
        default_value = "http://127.0.0.1:50062"
    )]
    pub coupon_addr: String,
    /// Inventory service (used by the orchestrator, and by order to price orders).
    #[arg(
        long,
        env = "SAGAFLOW_INVENTORY_ADDR",
        default_value = "http://127.0.0.1:50063"
    )]
    pub inventory_addr: String,
    /// Payment service (used by the orchestrator).
    #[arg(
        long,
        env = "SAGAFLOW_PAYMENT_ADDR",
        default_value = "http://127.0.0.1:50064"
    )]
    pub payment_addr: String,
    /// Point service (used by the orchestrator).
    #[arg(
        long,
        env = "SAGAFLOW_POINT_ADDR",
        default_value = "http://127.0.0.1:50065"
    )]
    pub point_addr: String,
    /// Ranking service (the order relay delivers OrderCompleted to it).
    #[arg(
        long,
        env = "SAGAFLOW_RANKING_ADDR",
        default_value = "http://127.0.0.1:50066"
    )]
    pub ranking_addr: String,
    /// Orchestrator replicas (the order relay delivers OrderCreated to them).
    #[arg(
        long,
        env = "SAGAFLOW_ORCHESTRATOR_ADDR",
        default_value = "http://127.0.0.1:50067"
    )]
    pub orchestrator_addr: String,
}

impl PeerArgs {
    /// Lazily connected channels to every peer; over TLS when this process has a certificate
    /// (`tls`: presenting it as the client certificate, trusting only the CA).
    ///
    /// # Errors
    /// `CliError::Usage` naming the flag of a malformed URL.
    pub fn peers(&self, tls: &Tls) -> Result<Peers, CliError> {
        let tls = tls.has_identity().then_some(tls);
        Ok(Peers {
            order: channel("order-addr", &self.order_addr, tls)?.into(),
            coupon: channel("coupon-addr", &self.coupon_addr, tls)?.into(),
            inventory: channel("inventory-addr", &self.inventory_addr, tls)?.into(),
            payment: channel("payment-addr", &self.payment_addr, tls)?.into(),
            point: channel("point-addr", &self.point_addr, tls)?.into(),
            ranking: channel("ranking-addr", &self.ranking_addr, tls)?.into(),
            orchestrator: channel("orchestrator-addr", &self.orchestrator_addr, tls)?.into(),
        })
    }
}

/// Saga engine settings (orchestrator only).
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Saga lease, milliseconds: how long after a crash another replica may take a saga over.
    #[arg(long, env = "SAGAFLOW_LEASE_MS", default_value_t = 5_000)]
    pub lease_ms: u64,
    /// How often the engine polls for due and orphaned sagas, milliseconds.
    #[arg(long, env = "SAGAFLOW_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// Limits of the saga's calls to each service, shared by all sagas of this replica:
    /// comma-separated `SERVICE=IN_FLIGHT/PER_SECOND` (SERVICE: order, coupon, inventory,
    /// payment, point, or `*` for the rest; 0 = unlimited). A service back from an outage sees
    /// the waiting sagas' retries as a ramp, not a wall.
    #[arg(long, env = "SAGAFLOW_DOWNSTREAM_LIMITS", default_value = sagaflow_orchestrator::limits::DEFAULT_LIMITS)]
    pub downstream_limits: String,
    /// A saga still before its pivot this long after it started is compensated with reason
    /// DEADLINE_EXCEEDED, milliseconds.
    #[arg(long, env = "SAGAFLOW_SAGA_DEADLINE_MS", default_value_t = 60_000)]
    pub saga_deadline_ms: u64,
    /// This replica's lease owner id (default: `orchestrator-<host>-<pid>-<random>`, unique per
    /// process even when replicas run as PID 1 in containers).
    #[arg(long, env = "SAGAFLOW_OWNER")]
    pub owner: Option<String>,
    /// Attempts of each step of the order saga other than the pivot before its outcome counts as
    /// unknown (a step before the pivot is then compensated; complete_order keeps retrying).
    /// Default 4; raise it so that the retries outlast a service restart. The pivot
    /// (complete_payment) always gets at least 30 attempts (about a minute) before it parks in
    /// NEEDS_ATTENTION. `sagaflow dev` runs with the defaults.
    #[arg(long, env = "SAGAFLOW_STEP_ATTEMPTS", default_value_t = 4)]
    pub step_attempts: u32,
    /// First retry delay cap of a step, milliseconds (doubles per attempt, full jitter).
    /// Default 50.
    #[arg(long, env = "SAGAFLOW_STEP_BASE_DELAY_MS", default_value_t = 50)]
    pub step_base_delay_ms: u64,
    /// Largest retry delay of a step, milliseconds. Default 2000.
    #[arg(long, env = "SAGAFLOW_STEP_MAX_DELAY_MS", default_value_t = 2_000)]
    pub step_max_delay_ms: u64,
    /// Per-attempt timeout of the coupon, order, inventory and point calls, milliseconds.
    /// Default 2000.
    #[arg(long, env = "SAGAFLOW_CALL_TIMEOUT_MS", default_value_t = 2_000)]
    pub call_timeout_ms: u64,
    /// Per-attempt timeout of the payment calls, milliseconds. Default 2000.
    #[arg(long, env = "SAGAFLOW_PAYMENT_TIMEOUT_MS", default_value_t = 2_000)]
    pub payment_timeout_ms: u64,
}

impl EngineArgs {
    /// The order saga's step policies these flags describe (defaults: [`StepPolicies::default`]).
    ///
    /// # Errors
    /// `CliError::Usage` when `--step-attempts` or a timeout is 0, or the base delay exceeds the
    /// largest delay.
    pub fn policies(&self) -> Result<StepPolicies, CliError> {
        if self.step_attempts == 0 {
            return Err(CliError::Usage("--step-attempts must be at least 1".into()));
        }
        if self.call_timeout_ms == 0 || self.payment_timeout_ms == 0 {
            return Err(CliError::Usage(
                "--call-timeout-ms and --payment-timeout-ms must be positive".into(),
            ));
        }
        if self.step_base_delay_ms > self.step_max_delay_ms {
            return Err(CliError::Usage(
                "--step-base-delay-ms must not exceed --step-max-delay-ms".into(),
            ));
        }
        Ok(StepPolicies {
            call_timeout_ms: self.call_timeout_ms,
            payment_timeout_ms: self.payment_timeout_ms,
            max_attempts: self.step_attempts,
            pivot_attempts: StepPolicies::default().pivot_attempts,
            base_delay_ms: self.step_base_delay_ms,
            max_delay_ms: self.step_max_delay_ms,
        })
    }
}

/// Flags of `sagaflow serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which service to run.
    #[arg(value_enum)]
    pub service: Service,
    /// Address to bind (default: 127.0.0.1 and the service's own port: order 50061, coupon
    /// 50062, inventory 50063, payment 50064, point 50065, ranking 50066, orchestrator 50067).
    #[arg(long, env = "SAGAFLOW_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the default SQLite database file `<service>.db`.
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = ".sagaflow")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub gateway: sagaflow_payment::GatewayArgs,
    /// Order only: the payment methods PlaceOrder accepts, comma-separated (any other is
    /// INVALID_ARGUMENT naming `payment_method`). Default: the simulated gateway's card tokens.
    #[arg(
        long,
        env = "SAGAFLOW_PAYMENT_METHODS",
        value_delimiter = ',',
        default_values_t = sagaflow_payment::SIMULATED_CARD_TOKENS.map(String::from)
    )]
    pub payment_methods: Vec<String>,
    /// Order and Payment only: the deployment's card-token key, a file of 64 hex digits
    /// (`openssl rand -hex 32`), the same for every order and payment process (docs/operations.md,
    /// "Secrets and card tokens"); it must exist. Default: `<data-dir>/card-token.key`, created
    /// (mode 0600) when missing.
    #[arg(long, env = "SAGAFLOW_CARD_TOKEN_KEY_FILE")]
    pub card_token_key_file: Option<PathBuf>,
    /// Order only: failed deliveries after which the outbox relay dead-letters an event, when
    /// none of them was in doubt and the last was a definite refusal by its consumer (an
    /// OrderCreated's order is then failed, reason INTERNAL); deliveries in doubt are retried for
    /// as long as they fail (docs/architecture.md, "Events"). At least 1. Default 20.
    #[arg(
        long,
        env = "SAGAFLOW_OUTBOX_MAX_ATTEMPTS",
        default_value_t = relay::DEFAULT_MAX_ATTEMPTS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub outbox_max_attempts: u32,
    /// Order only: delivered outbox rows are deleted this long after they were sent,
    /// milliseconds (checked every minute, in batches of 1000); 0 keeps them forever. Default
    /// 604800000 (7 days).
    #[arg(
        long,
        env = "SAGAFLOW_OUTBOX_RETENTION_MS",
        default_value_t = relay::DEFAULT_SENT_RETENTION_MS
    )]
    pub outbox_retention_ms: u64,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// The `--payment-methods` list, trimmed, without empty entries.
///
/// # Errors
/// `CliError::Usage` when no method is left.
pub fn payment_methods(values: &[String]) -> Result<Vec<String>, CliError> {
    let methods: Vec<String> = values
        .iter()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    if methods.is_empty() {
        return Err(CliError::Usage("--payment-methods is empty".into()));
    }
    Ok(methods)
}

/// A lazily connected channel to one URL, or load-balanced over several comma-separated URLs;
/// with `tls`, over TLS (an `http://` URL is called as `https://`: a process with a
/// certificate never calls a peer in plaintext).
///
/// # Errors
/// `CliError::Usage` naming `flag` when a URL is malformed.
pub fn channel(flag: &str, urls: &str, tls: Option<&Tls>) -> Result<Channel, CliError> {
    let endpoints = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let url = match (tls, u.strip_prefix("http://")) {
                (Some(_), Some(rest)) => format!("https://{rest}"),
                _ => u.to_owned(),
            };
            let endpoint = Endpoint::from_shared(url)
                .map(|e| e.connect_timeout(Duration::from_secs(2)))
                .map_err(|e| CliError::Usage(format!("--{flag} {u:?}: {e}")))?;
            match tls {
                Some(tls) => endpoint
                    .tls_config(tls.client_config())
                    .map_err(|e| CliError::Usage(format!("--{flag} {u:?}: TLS: {e}"))),
                None => Ok(endpoint),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    match endpoints.len() {
        0 => Err(CliError::Usage(format!("--{flag} is empty"))),
        1 => {
            let mut endpoints = endpoints;
            match endpoints.pop() {
                Some(endpoint) => Ok(endpoint.connect_lazy()),
                None => Err(CliError::Usage(format!("--{flag} is empty"))),
            }
        }
        _ => Ok(Channel::balance_list(endpoints.into_iter())),
    }
}

/// Connects the database (creating and migrating it), builds the service and serves it until
/// SIGTERM or Ctrl-C, then shuts down gracefully.
///
/// # Errors
/// `CliError::Usage` for bad flags (exit 64); `CliError::Failed` when the database or the port
/// cannot be opened.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    // First: a build without failpoints refuses FAILPOINTS before it creates or opens anything.
    crate::failpoints::arm_from_env()?;
    let service = args.service;
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], service.default_port())));
    // SQLite files under the data directory: held shared, so never beside a `sagaflow dev`.
    let mut _data_dir_lock = None;
    let url = match &args.database.database_url {
        Some(url) => url.clone(),
        None => {
            crate::datadir::prepare(&args.data_dir)?;
            _data_dir_lock = Some(crate::datadir::DataDirLock::shared(&args.data_dir)?);
            format!(
                "sqlite://{}",
                args.data_dir
                    .join(format!("{}.db", service.database_name()))
                    .display()
            )
        }
    };
    sagaflow_server::Backend::from_url(&url).map_err(|e| CliError::Usage(e.to_string()))?;
    let url = args
        .database
        .url_with_password(&url)
        .map_err(CliError::Usage)?;
    let policies = args.engine.policies()?;
    let metrics = MetricsExporter::from_args(&args.metrics).map_err(|err| match err {
        MetricsError::NoPort(_) => CliError::Usage(err.to_string()),
        other => CliError::Failed(other.into()),
    })?;
    if metrics.is_some() {
        match service {
            Service::Orchestrator => sagaflow_workflow_engine::metrics::describe(),
            Service::Order | Service::Inventory => relay::describe_metrics(),
            _ => {}
        }
        if args.events.event_bus != sagaflow_events::EventBus::Grpc {
            sagaflow_events::kafka::describe_metrics();
        }
        sagaflow_server::retention::describe_metrics();
    }
    let served = serve_with(args, service, listen, &url, policies).await;
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    served
}

/// The body of [`run`] once the metrics endpoint (if any) is up.
async fn serve_with(
    args: ServeArgs,
    service: Service,
    listen: SocketAddr,
    url: &str,
    policies: StepPolicies,
) -> Result<(), CliError> {
    let retention = args
        .retention
        .config(args.engine.saga_deadline_ms)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let security = args
        .security
        .resolve(listen)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let peers = args.peers.peers(&security.tls)?;
    let mut settings =
        Settings {
            payment_methods: payment_methods(&args.payment_methods)?,
            // Read once the port and the database are open: a start that fails on them creates
            // no key file.
            card_token_key: None,
            gateway: args.gateway.config(),
            relay: RelaySettings {
                retry: relay::RetryPolicy {
                    max_attempts: args.outbox_max_attempts,
                    ..relay::RetryPolicy::default()
                },
                sent_retention: (args.outbox_retention_ms > 0)
                    .then(|| Duration::from_millis(args.outbox_retention_ms)),
                backlog_sampling: args
                    .metrics
                    .metrics_listen
                    .map(|_| relay::BACKLOG_SAMPLE_INTERVAL),
                ..RelaySettings::default()
            },
            engine: EngineSettings {
                policies,
                limits: DownstreamLimits::new(
                    &limits::parse(&args.engine.downstream_limits)
                        .map_err(|e| CliError::Usage(format!("--downstream-limits: {e}")))?,
                ),
                owner: args.engine.owner.clone().unwrap_or_else(|| {
                    sagaflow_workflow_engine::engine::default_owner("orchestrator")
                }),
                lease_ms: args.engine.lease_ms,
                poll_ms: args.engine.poll_ms,
                sole_owner: false,
                saga_deadline: Duration::from_millis(args.engine.saga_deadline_ms),
            },
            events: args.events.settings(),
            max_order_waiters: args.security.limits.limits().max_order_waiters,
        };
    // The port first: a port in use changes nothing (no migration, no relay started).
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|err| {
        CliError::Failed(anyhow::Error::new(err).context(format!("binding {listen}")))
    })?;
    let db = Db::connect(url, service.migrations(), &args.database.pool_config())
        .await
        .context("opening the database")?;
    if let Err(err) = settings.events.prepare().await {
        db.close().await;
        return Err(CliError::Failed(err));
    }
    if matches!(service, Service::Order | Service::Payment) {
        match card_token_key(&args) {
            Ok(key) => settings.card_token_key = Some(key),
            Err(err) => {
                db.close().await;
                return Err(err);
            }
        }
    }

    let mut running = Running::default();
    let mut routes = RoutesBuilder::default();
    if let Err(err) = service.register(&db, &peers, &settings, &mut routes, &mut running) {
        running.shutdown().await;
        db.close().await;
        return Err(CliError::Usage(format!("{err:#}")));
    }
    // Retention of this service's database (docs/operations.md, "Retention"); ends with the stop
    // token.
    running.spawn_background(
        "retention",
        crate::retention::spawn(&[(service, &db)], &retention, running.stop_token()),
    );
    // On SIGTERM/Ctrl-C, end long-polls and the relay at once, then let the server drain.
    let signal = {
        let stop = running.stop_token();
        async move {
            grpc::shutdown_signal().await;
            stop.cancel();
        }
    };
    let options = grpc::ServerOptions {
        faults: args.faults.faults,
        tls: security.tls.server_config(),
        access: security.access,
        limits: args.security.limits.limits(),
        trust_traceparent: args.trace.trust_traceparent,
    };
    let served = grpc::serve(listener, routes, service.grpc_names(), options, signal).await;
    running.shutdown().await;
    db.close().await;
    served.context("serving")?;
    Ok(())
}

/// The card-token key of `serve order|payment`: `--card-token-key-file`, or the data directory's
/// (created when missing; docs/operations.md, "Secrets and card tokens").
///
/// # Errors
/// `CliError::Usage` (exit 64) naming the file when it is missing, unreadable or malformed.
fn card_token_key(args: &ServeArgs) -> Result<CardTokenKey, CliError> {
    let loaded = match &args.card_token_key_file {
        Some(path) => CardTokenKey::load(path),
        None => {
            crate::datadir::prepare(&args.data_dir)?;
            CardTokenKey::load_or_create(&args.data_dir.join(card_token::DEFAULT_KEY_FILE_NAME))
        }
    };
    loaded.map_err(|err| CliError::Usage(err.to_string()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn step_policy_defaults_are_the_orchestrators() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.engine.policies().unwrap(), StepPolicies::default());
    }

    #[test]
    fn step_policy_flags_are_validated() {
        let cli = Cli::try_parse_from(["x", "--step-attempts", "20", "--step-max-delay-ms", "800"])
            .unwrap();
        let policies = cli.engine.policies().unwrap();
        assert_eq!(policies.max_attempts, 20);
        assert_eq!(policies.max_delay_ms, 800);
        let cli = Cli::try_parse_from(["x", "--step-attempts", "0"]).unwrap();
        assert!(matches!(cli.engine.policies(), Err(CliError::Usage(_))));
    }

    #[derive(Debug, Parser)]
    struct ServeCli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn payment_methods_default_to_the_simulated_card_tokens() {
        let cli = ServeCli::try_parse_from(["x", "order"]).unwrap();
        assert_eq!(
            payment_methods(&cli.serve.payment_methods).unwrap(),
            sagaflow_payment::SIMULATED_CARD_TOKENS
        );
        let cli =
            ServeCli::try_parse_from(["x", "order", "--payment-methods", "tok_a, tok_b,"]).unwrap();
        assert_eq!(
            payment_methods(&cli.serve.payment_methods).unwrap(),
            ["tok_a", "tok_b"]
        );
        let cli = ServeCli::try_parse_from(["x", "order", "--payment-methods", " , "]).unwrap();
        assert!(matches!(
            payment_methods(&cli.serve.payment_methods),
            Err(CliError::Usage(_))
        ));
    }
}
