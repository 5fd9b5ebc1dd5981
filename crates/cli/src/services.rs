//! The one per-service builder: how each service of sagaflow is put together over its database,
//! the transports to the services it calls and its settings. `sagaflow serve <service>` builds
//! one service per process with a TCP channel to each peer (docs/architecture.md, "Run modes",
//! distributed); the embedded system (`sagaflow dev`, `demo`, `bench`) builds all seven on one
//! port with every peer being that server's in-process transport. Both go through
//! [`Service::register`], so the two modes cannot drift apart.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use sagaflow_events::{
    EventBus, EventHandler, Family, Publisher,
    kafka::{self, KafkaConsumer, KafkaConsumerConfig, KafkaPublisher, KafkaPublisherConfig},
};
use sagaflow_orchestrator::{
    OrchestratorService, ServiceClients, StepPolicies, limits::DownstreamLimits, order_saga,
};
use sagaflow_order::relay::{self, RelayWaker};
use sagaflow_payment::SimulatedGatewayConfig;
use sagaflow_server::{Db, Migrations, transport::Transport};
use sagaflow_workflow_engine::{Engine, SqlSagaStore, admin::SagaAdmin};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;

/// The gRPC name of the saga admin API (served beside the orchestrator).
pub const SAGA_ADMIN_SERVICE_NAME: &str = "sagaflow.workflow.v1.SagaAdminService";

/// The services of sagaflow, each with its own database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Service {
    /// Orders (PlaceOrder, GetOrder, …) and the outbox relay.
    Order,
    /// Coupons.
    Coupon,
    /// Products and stock.
    Inventory,
    /// Payments through the simulated gateway.
    Payment,
    /// Point balances.
    Point,
    /// Sales ranking.
    Ranking,
    /// The saga engine with the order saga, StartOrderSaga and the saga admin API.
    Orchestrator,
}

impl Service {
    /// Every service, in the order the embedded system opens their databases.
    pub const ALL: [Self; 7] = [
        Self::Order,
        Self::Coupon,
        Self::Inventory,
        Self::Payment,
        Self::Point,
        Self::Ranking,
        Self::Orchestrator,
    ];

    /// The service's short name (flag prefix `--<name>-addr`; `service.name` is
    /// `sagaflow-<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Coupon => "coupon",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Point => "point",
            Self::Ranking => "ranking",
            Self::Orchestrator => "orchestrator",
        }
    }

    /// The port a service listens on when `serve --listen` is not given, so that every service
    /// can run on one laptop at once: order 50061, coupon 50062, inventory 50063, payment 50064,
    /// point 50065, ranking 50066, orchestrator 50067.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Order => 50061,
            Self::Coupon => 50062,
            Self::Inventory => 50063,
            Self::Payment => 50064,
            Self::Point => 50065,
            Self::Ranking => 50066,
            Self::Orchestrator => 50067,
        }
    }

    /// The OpenTelemetry `service.name` of a process serving this service: `sagaflow-<name>`.
    pub fn telemetry_name(self) -> String {
        format!("sagaflow-{}", self.name())
    }

    /// The service's schema migrations.
    pub fn migrations(self) -> Migrations {
        match self {
            Self::Order => sagaflow_order::migrations(),
            Self::Coupon => sagaflow_coupon::migrations(),
            Self::Inventory => sagaflow_inventory::migrations(),
            Self::Payment => sagaflow_payment::migrations(),
            Self::Point => sagaflow_point::migrations(),
            Self::Ranking => sagaflow_ranking::migrations(),
            Self::Orchestrator => sagaflow_workflow_engine::MIGRATIONS,
        }
    }

    /// The database name: `<name>.db` under the data directory on SQLite (`workflow.db` for the
    /// orchestrator).
    pub fn database_name(self) -> &'static str {
        match self {
            Self::Orchestrator => "workflow",
            other => other.name(),
        }
    }

    /// The gRPC services this service serves (health and reflection come on top).
    pub fn grpc_names(self) -> &'static [&'static str] {
        match self {
            Self::Order => &[
                sagaflow_order::SERVICE_NAME,
                sagaflow_order::OUTBOX_ADMIN_SERVICE_NAME,
            ],
            Self::Coupon => &[sagaflow_coupon::SERVICE_NAME],
            Self::Inventory => &[sagaflow_inventory::SERVICE_NAME],
            Self::Payment => &[sagaflow_payment::SERVICE_NAME],
            Self::Point => &[sagaflow_point::SERVICE_NAME],
            Self::Ranking => &[sagaflow_ranking::SERVICE_NAME],
            Self::Orchestrator => &[sagaflow_orchestrator::SERVICE_NAME, SAGA_ADMIN_SERVICE_NAME],
        }
    }

    /// Registers this service's gRPC services on `routes` over `db`, and starts what runs beside
    /// them (the order service's outbox relay, the orchestrator's saga engine) into `running`.
    /// Background tasks end when `running`'s stop token is cancelled.
    ///
    /// # Errors
    /// When the order saga's definition or the engine cannot be built (an invalid setting).
    pub fn register(
        self,
        db: &Db,
        peers: &Peers,
        settings: &Settings,
        routes: &mut RoutesBuilder,
        running: &mut Running,
    ) -> anyhow::Result<()> {
        match self {
            Self::Coupon => sagaflow_coupon::CouponService::new(db.clone()).register(routes),
            Self::Inventory => {
                let waker = RelayWaker::default();
                sagaflow_inventory::InventoryService::new(db.clone())
                    .with_relay_waker(waker.clone())
                    .register(routes);
                let publisher: Arc<dyn Publisher> = match &settings.events.bus {
                    EventBus::Grpc => {
                        Arc::new(sagaflow_inventory::events::InventoryGrpcPublisher::new(
                            peers.ranking.clone(),
                        ))
                    }
                    EventBus::Kafka { brokers } => kafka_publisher(brokers, self)?,
                };
                let relay = relay::OutboxRelay::new(
                    db.clone(),
                    Arc::new(sagaflow_inventory::events::InventoryOutbox),
                    publisher,
                    waker,
                    settings.relay.poll,
                );
                start_relay(relay, &settings.relay, running);
            }
            Self::Payment => {
                let gateway = Arc::new(sagaflow_payment::SimulatedGateway::new(settings.gateway));
                let mut payment = sagaflow_payment::PaymentService::new(db.clone(), gateway);
                if let Some(key) = &settings.card_token_key {
                    payment = payment.with_card_token_key(key.clone());
                }
                payment.register(routes);
            }
            Self::Point => sagaflow_point::PointService::new(db.clone()).register(routes),
            Self::Ranking => {
                let ranking = sagaflow_ranking::RankingService::new(db.clone());
                let consumer = ranking.consumer();
                ranking.register(routes);
                settings.events.consume(
                    self,
                    &[Family::Order, Family::Inventory],
                    Arc::new(consumer),
                    running,
                )?;
            }
            Self::Order => {
                let waker = RelayWaker::default();
                let key = settings
                    .card_token_key
                    .clone()
                    .context("the order service needs a card-token key")?;
                let order = sagaflow_order::OrderService::new(db.clone(), peers.inventory.clone())
                    .with_payment_methods(settings.payment_methods.clone())
                    .with_card_token_key(key)
                    .with_relay_waker(waker.clone())
                    .with_shutdown(running.stop.clone())
                    .with_max_waiters(settings.max_order_waiters);
                running.background.push((
                    "GetOrder wait poll",
                    tokio::spawn(order.poll_waiters(running.stop.clone())),
                ));
                order.register(routes);
                let publisher: Arc<dyn Publisher> = match &settings.events.bus {
                    EventBus::Grpc => Arc::new(relay::OrderGrpcPublisher::new(
                        peers.orchestrator.clone(),
                        peers.ranking.clone(),
                    )),
                    EventBus::Kafka { brokers } => kafka_publisher(brokers, self)?,
                };
                let relay = relay::relay_through(db.clone(), publisher, waker, settings.relay.poll);
                start_relay(relay, &settings.relay, running);
            }
            Self::Orchestrator => {
                let e = &settings.engine;
                let clients = ServiceClients::new(
                    peers.order.clone(),
                    peers.coupon.clone(),
                    peers.inventory.clone(),
                    peers.payment.clone(),
                    peers.point.clone(),
                )
                .with_limits(e.limits.clone());
                let engine = Engine::builder(Arc::new(SqlSagaStore::new(db.clone())))
                    .definition(order_saga(clients, e.policies).context("building the order saga")?)
                    .owner(e.owner.clone())
                    .lease_ms(e.lease_ms)
                    .poll_interval_ms(e.poll_ms)
                    .sole_owner(e.sole_owner)
                    .build()
                    .context("starting the saga engine")?;
                let orchestrator = OrchestratorService::new(engine.clone(), e.saga_deadline);
                settings.events.consume(
                    self,
                    &[Family::Order],
                    Arc::new(orchestrator.consumer()),
                    running,
                )?;
                orchestrator.register(routes);
                routes.add_service(SagaAdmin::new(engine.clone()).into_server());
                running.engine = Some(engine);
            }
        }
        Ok(())
    }
}

/// A Kafka publisher for `service`'s outbox relay (client id `sagaflow-<service>`).
fn kafka_publisher(brokers: &str, service: Service) -> anyhow::Result<Arc<dyn Publisher>> {
    let mut config = KafkaPublisherConfig::new(brokers);
    config.client_id = service.telemetry_name();
    let publisher = KafkaPublisher::new(config)
        .with_context(|| format!("creating the {} Kafka producer", service.name()))?;
    Ok(Arc::new(publisher))
}

/// Starts `relay` with the retry, retention and sampling of `settings` into `running`.
fn start_relay(relay: relay::OutboxRelay, settings: &RelaySettings, running: &mut Running) {
    let mut relay = relay
        .with_retry(settings.retry)
        .with_sent_retention(settings.sent_retention);
    if let Some(every) = settings.backlog_sampling {
        relay = relay.with_backlog_sampling(every);
    }
    running.background.push((
        "outbox relay",
        tokio::spawn(relay.run(running.stop.clone())),
    ));
}

/// How events travel between the services (docs/architecture.md, "Events"; "Kafka transport"):
/// `--event-bus` and the Kafka consumers' settings, shared by `serve` and `dev`.
#[derive(Debug, Clone, Args)]
pub struct EventArgs {
    /// `grpc` (the default: each outbox relay calls its consumers' delivery RPCs, no broker) or
    /// `kafka://host:port[,host:port]` (the relays publish to Kafka; the orchestrator and Ranking
    /// consume in consumer groups `sagaflow-orchestrator` and `sagaflow-ranking`).
    #[arg(long, env = "SAGAFLOW_EVENT_BUS", default_value = "grpc")]
    pub event_bus: EventBus,
    /// Kafka only: `session.timeout.ms` of the consumers, milliseconds: how long the group waits
    /// for a silent member before giving its partitions to another.
    #[arg(
        long,
        env = "SAGAFLOW_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_session_timeout_ms: u64,
    /// Kafka only: partitions of each event topic when this process creates it (an existing
    /// topic is left as it is).
    #[arg(long, env = "SAGAFLOW_KAFKA_PARTITIONS", default_value_t = 8,
        value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub kafka_partitions: i32,
}

impl EventArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> EventSettings {
        EventSettings {
            bus: self.event_bus.clone(),
            session_timeout_ms: self.kafka_session_timeout_ms,
            partitions: self.kafka_partitions,
        }
    }
}

/// How events travel between the services.
#[derive(Debug, Clone, Default)]
pub struct EventSettings {
    /// The transport.
    pub bus: EventBus,
    /// Kafka consumers' `session.timeout.ms`, milliseconds (0: the default 10000).
    pub session_timeout_ms: u64,
    /// Partitions of each topic this process creates (0: 8).
    pub partitions: i32,
}

impl EventSettings {
    /// Creates the event topics and the dead-letter topic (Kafka only; existing topics are left
    /// as they are). Call it before [`Service::register`].
    ///
    /// # Errors
    /// When the broker cannot be reached or refuses to create a topic.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        if let EventBus::Kafka { brokers } = &self.bus {
            let partitions = if self.partitions > 0 {
                self.partitions
            } else {
                8
            };
            kafka::ensure_topics(brokers, &kafka::all_topics(partitions))
                .await
                .with_context(|| format!("creating the event topics on {brokers}"))?;
        }
        Ok(())
    }

    /// With Kafka, starts `service`'s consumer group `sagaflow-<service>` on the topics of
    /// `families`, running `handler` for each event, into `running`; with gRPC, nothing (the
    /// relays call the delivery RPCs).
    fn consume(
        &self,
        service: Service,
        families: &[Family],
        handler: Arc<dyn EventHandler>,
        running: &mut Running,
    ) -> anyhow::Result<()> {
        let EventBus::Kafka { brokers } = &self.bus else {
            return Ok(());
        };
        let topics: Vec<&str> = families.iter().map(|f| f.topic()).collect();
        let mut config =
            KafkaConsumerConfig::new(brokers.clone(), service.telemetry_name(), &topics);
        if self.session_timeout_ms > 0 {
            config.session_timeout_ms = self.session_timeout_ms;
        }
        let consumer = KafkaConsumer::new(config, handler)
            .with_context(|| format!("creating the {} Kafka consumer", service.name()))?;
        let stop = running.stop.clone();
        running.background.push((
            "kafka consumer",
            tokio::spawn(async move {
                if let Err(err) = consumer.run(stop).await {
                    tracing::error!(error = %err, "ALERT: the Kafka consumer stopped");
                }
            }),
        ));
        Ok(())
    }
}

/// Transports to the services a service calls: the order service calls inventory (pricing) and
/// delivers events to the orchestrator and ranking; the orchestrator calls order, coupon,
/// inventory, payment and point. TCP channels in the distributed mode (and for the load drivers
/// of `demo` and `bench`); the in-process transport inside the embedded system.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Order service.
    pub order: Transport,
    /// Coupon service.
    pub coupon: Transport,
    /// Inventory service.
    pub inventory: Transport,
    /// Payment service.
    pub payment: Transport,
    /// Point service.
    pub point: Transport,
    /// Ranking service.
    pub ranking: Transport,
    /// Orchestrator replicas.
    pub orchestrator: Transport,
}

impl Peers {
    /// Every service behind one transport (the embedded system: its in-process transport; a
    /// client of it: a channel to its port).
    pub fn single(transport: impl Into<Transport>) -> Self {
        let transport = transport.into();
        Self {
            order: transport.clone(),
            coupon: transport.clone(),
            inventory: transport.clone(),
            payment: transport.clone(),
            point: transport.clone(),
            ranking: transport.clone(),
            orchestrator: transport,
        }
    }
}

/// Settings of the services besides their databases and peers; each service reads its own part.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Order: the payment methods PlaceOrder accepts.
    pub payment_methods: Vec<String>,
    /// Order and Payment: the deployment's card-token key (docs/architecture.md, "Card tokens");
    /// `None` in other services.
    pub card_token_key: Option<sagaflow_server::card_token::CardTokenKey>,
    /// Payment: the simulated gateway.
    pub gateway: SimulatedGatewayConfig,
    /// Order: the outbox relay.
    pub relay: RelaySettings,
    /// Orchestrator: the saga engine.
    pub engine: EngineSettings,
    /// Order, Inventory, Ranking, orchestrator: how events travel.
    pub events: EventSettings,
    /// Order: GetOrder callers kept waiting at once (`--max-order-waiters`).
    pub max_order_waiters: usize,
}

/// The outbox relays of Order and Inventory (docs/architecture.md, "Events").
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// How often the relay looks for undelivered events when nothing wakes it.
    pub poll: Duration,
    /// Delivery retries and dead-lettering.
    pub retry: relay::RetryPolicy,
    /// Delivered rows are deleted this long after they were sent; `None` keeps them.
    pub sent_retention: Option<Duration>,
    /// Sample the outbox backlog for the metrics this often (only with a metrics endpoint).
    pub backlog_sampling: Option<Duration>,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            retry: relay::RetryPolicy::default(),
            sent_retention: Some(relay::DEFAULT_SENT_RETENTION),
            backlog_sampling: None,
        }
    }
}

/// The orchestrator's saga engine (docs/architecture.md, "The engine").
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The order saga's step timeouts and retries.
    pub policies: StepPolicies,
    /// Limits of the saga's calls to each downstream service.
    pub limits: DownstreamLimits,
    /// This replica's lease owner id.
    pub owner: String,
    /// Saga lease, ms.
    pub lease_ms: u64,
    /// Poll interval for due and orphaned sagas, ms.
    pub poll_ms: u64,
    /// Whether this engine is the only one on its database (a locked SQLite data directory): the
    /// leases a crashed predecessor left are then taken over at once.
    pub sole_owner: bool,
    /// A saga still before its pivot this long after it started is compensated
    /// (DEADLINE_EXCEEDED).
    pub saga_deadline: Duration,
}

/// What the registered services run beside their gRPC handlers, and the token that stops it.
#[derive(Debug, Default)]
pub struct Running {
    stop: CancellationToken,
    background: Vec<(&'static str, JoinHandle<()>)>,
    engine: Option<Engine>,
}

impl Running {
    /// The token that ends long-polls, the relay and the retention tasks.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Adds a background task that ends when the stop token is cancelled.
    pub fn spawn_background(&mut self, what: &'static str, task: Option<JoinHandle<()>>) {
        if let Some(task) = task {
            self.background.push((what, task));
        }
    }

    /// The saga engine, when the orchestrator is among the registered services.
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    /// Stops the background tasks (waiting for each), then the saga engine: its drivers get 10 s
    /// to finish the calls in flight and release their leases; those still running then are
    /// aborted and their leases expire (docs/operations.md, "Recovery after a crash").
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(10)).await;
    }

    /// [`Running::shutdown`] with `grace` for the saga drivers instead of 10 s.
    pub async fn shutdown_within(self, grace: Duration) {
        self.stop.cancel();
        for (what, task) in self.background {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "{what} task failed");
            }
        }
        if let Some(engine) = self.engine {
            let report = engine.shutdown(grace).await;
            if report.aborted > 0 {
                tracing::warn!(
                    aborted = report.aborted,
                    "saga drivers aborted at shutdown; their leases will expire"
                );
            }
        }
    }
}
