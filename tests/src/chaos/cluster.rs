//! The distributed system as separate `sagaflow serve` processes on loopback: one node per
//! service plus two orchestrator replicas, each on a port chosen once so that a restarted process
//! comes back on the same address, each incarnation logging to its own file in the run directory.
//!
//! Security is on as in a deployment (docs/operations.md, "Security"): every node serves TLS
//! with its service's certificate from a CA made for the run, calls its peers over mTLS, and
//! enforces the classes (admin tokens, client certificates for internal RPCs); the harness's own
//! clients trust the CA and carry the operator's token.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use sagaflow_cli::failpoints::{ABORT_PREFIX, ABORT_SUFFIX};
use sagaflow_server::{
    access::AdminTokens,
    transport::{BearerToken, Transport},
};
use sagaflow_testkit::pki::{Leaf, TestPki};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::ChaosConfig;

/// The databases of a run: one per service, `workflow` shared by the orchestrator replicas.
pub(crate) const DATABASES: [&str; 7] = [
    "inventory",
    "coupon",
    "payment",
    "point",
    "ranking",
    "order",
    "workflow",
];

/// The operator token the nodes accept (id `chaos`), which the harness's clients carry.
const OPERATOR_TOKEN: &str = "chaos-operator-token";

/// How long a process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The inventory service.
    Inventory,
    /// The coupon service.
    Coupon,
    /// The payment service (simulated gateway).
    Payment,
    /// The point service.
    Point,
    /// The ranking service.
    Ranking,
    /// The order service and its outbox relay.
    Order,
    /// An orchestrator replica (saga engine).
    Orchestrator,
}

impl Role {
    /// The `sagaflow serve` argument, also the kind reported in kill counts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Coupon => "coupon",
            Self::Payment => "payment",
            Self::Point => "point",
            Self::Ranking => "ranking",
            Self::Order => "order",
            Self::Orchestrator => "orchestrator",
        }
    }

    fn database(self) -> &'static str {
        match self {
            Self::Orchestrator => "workflow",
            other => other.name(),
        }
    }

    /// Most pooled database connections (8 processes share one PostgreSQL with other tests).
    fn max_connections(self) -> u32 {
        match self {
            Self::Orchestrator | Self::Order => 6,
            _ => 4,
        }
    }
}

/// Transient faults applied to each RPC a saga or a client sends: unavailable and aborted
/// errors before the handler, latency, and lost replies after the handler committed.
const TRANSIENT: &str = "error:unavailable:0.03,error:aborted:0.02,latency:0-20,lost_reply:0.03";

/// The `SAGAFLOW_FAULTS` of a role during the load phase. Only the saga's commands and the
/// public order API are faulted: the admin RPCs that seed data and the queries the checks read
/// are left alone. `permanent` is the chance that RestoreInventory fails permanently with an
/// injected FAILED_PRECONDITION (the saga parks in NEEDS_ATTENTION until an operator retries).
pub(crate) fn fault_spec(role: Role, permanent: f64) -> String {
    let rpcs: &[&str] = match role {
        Role::Inventory => &["DeductInventory", "RestoreInventory", "BatchGetProducts"],
        Role::Coupon => &["UseCoupon", "RestoreCoupon"],
        Role::Payment => &["StartPayment", "CancelPayment", "CompletePayment"],
        Role::Point => &["DeductPoints", "RestorePoints"],
        Role::Ranking => &["RecordOrderCompleted"],
        Role::Order => &["PlaceOrder", "ApplyCoupon", "CompleteOrder", "FailOrder"],
        Role::Orchestrator => &["StartOrderSaga"],
    };
    let mut rules: Vec<String> = Vec::new();
    if role == Role::Inventory && permanent > 0.0 {
        rules.push(format!(
            "RestoreInventory=error:failed_precondition:{permanent}"
        ));
    }
    rules.extend(rpcs.iter().map(|rpc| format!("{rpc}={TRANSIENT}")));
    if role == Role::Order {
        rules.push("GetOrder=error:unavailable:0.02,latency:0-10".to_owned());
    }
    rules.join(";")
}

/// Faults the processes logged as injected, over every incarnation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Transient error codes answered before the handler ran.
    pub transient_errors: usize,
    /// Permanent (FAILED_PRECONDITION) errors answered before the handler ran.
    pub permanent_errors: usize,
    /// Replies dropped after the handler committed.
    pub lost_replies: usize,
}

/// One process slot: a role, a fixed port and the current incarnation.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) role: Role,
    port: u16,
    generation: u32,
    child: Option<Child>,
    log: PathBuf,
    /// The failpoint armed in the current incarnation.
    pub(crate) armed: Option<String>,
}

impl Node {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

/// The run's CA, each service's certificate (the orchestrator replicas share one) and the
/// operator tokens file.
#[derive(Debug)]
struct Credentials {
    pki: TestPki,
    leaves: BTreeMap<&'static str, Leaf>,
    tokens_file: PathBuf,
}

impl Credentials {
    fn new() -> anyhow::Result<Self> {
        let pki = TestPki::new("sagaflow chaos CA");
        let leaves = [
            Role::Inventory,
            Role::Coupon,
            Role::Payment,
            Role::Point,
            Role::Ranking,
            Role::Order,
            Role::Orchestrator,
        ]
        .into_iter()
        .map(|role| (role.name(), pki.leaf(role.name())))
        .collect();
        let tokens_file = pki.dir().join("admin-tokens");
        fs::write(&tokens_file, AdminTokens::line_for("chaos", OPERATOR_TOKEN))
            .context("writing the admin tokens file")?;
        Ok(Self {
            pki,
            leaves,
            tokens_file,
        })
    }

    /// The `serve` flags of a node of `role`.
    fn args(&self, role: Role) -> anyhow::Result<Vec<String>> {
        let leaf = self
            .leaves
            .get(role.name())
            .with_context(|| format!("no certificate for {}", role.name()))?;
        Ok(vec![
            "--tls-cert".into(),
            leaf.cert.display().to_string(),
            "--tls-key".into(),
            leaf.key.display().to_string(),
            "--tls-ca".into(),
            self.pki.ca_file.display().to_string(),
            "--admin-tokens-file".into(),
            self.tokens_file.display().to_string(),
        ])
    }

    /// A lazily connected transport to `url` over TLS, trusting the CA, carrying the operator's
    /// token (the harness seeds, reads sagas and places orders).
    fn transport(&self, url: String) -> anyhow::Result<Transport> {
        let channel = Endpoint::from_shared(url)?
            .tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.pki.ca_pem)),
            )?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(Transport::tcp(channel, BearerToken::new(OPERATOR_TOKEN)))
    }
}

/// The processes of one run.
#[derive(Debug)]
pub(crate) struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
    urls: BTreeMap<&'static str, String>,
    lease_ms: u64,
    permanent: f64,
    step_attempts: u32,
    downstream_limits: String,
    gateway_latency_ms: u64,
    kafka: Option<String>,
    extra_args: Vec<(Role, Vec<String>)>,
    extra_envs: Vec<(Role, String, String)>,
    credentials: Credentials,
}

impl Cluster {
    /// Allocates a loopback port per node (nothing starts yet).
    pub(crate) fn new(
        dir: &Path,
        urls: &BTreeMap<&'static str, String>,
        config: &ChaosConfig,
    ) -> anyhow::Result<Self> {
        let roles = [
            ("inventory", Role::Inventory),
            ("coupon", Role::Coupon),
            ("payment", Role::Payment),
            ("point", Role::Point),
            ("ranking", Role::Ranking),
            ("order", Role::Order),
            ("orchestrator-a", Role::Orchestrator),
            ("orchestrator-b", Role::Orchestrator),
        ];
        let mut nodes = Vec::new();
        for (name, role) in roles {
            nodes.push(Node {
                name: name.to_owned(),
                role,
                port: free_port()?,
                generation: 0,
                child: None,
                log: PathBuf::new(),
                armed: None,
            });
        }
        Ok(Self {
            bin: crate::sagaflow_bin(),
            dir: dir.to_owned(),
            nodes,
            urls: urls.clone(),
            lease_ms: config.lease_ms,
            permanent: config.permanent_fault_probability,
            step_attempts: config.step_attempts,
            downstream_limits: config.downstream_limits.clone(),
            gateway_latency_ms: config.gateway_latency_ms,
            kafka: config.kafka.clone(),
            extra_args: config.extra_args.clone(),
            extra_envs: config.extra_envs.clone(),
            credentials: Credentials::new()?,
        })
    }

    /// Node names, in index order.
    pub(crate) fn names(&self) -> Vec<(String, Role)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.role))
            .collect()
    }

    pub(crate) fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    fn first(&self, role: Role) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.role == role)
            .with_context(|| format!("no {} node", role.name()))
    }

    /// The index of the first node of `role`.
    pub(crate) fn index_of(&self, role: Role) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.role == role)
            .with_context(|| format!("no {} node", role.name()))
    }

    /// A lazily connected transport to node `index` (TLS, the operator's token).
    pub(crate) fn channel_to(&self, index: usize) -> anyhow::Result<Transport> {
        let node = self
            .nodes
            .get(index)
            .with_context(|| format!("no node {index}"))?;
        self.credentials.transport(node.url())
    }

    /// A lazily connected transport to the first node of `role` (TLS, the operator's token).
    pub(crate) fn channel(&self, role: Role) -> anyhow::Result<Transport> {
        let url = self.first(role)?.url();
        self.credentials.transport(url)
    }

    fn peer_args(&self) -> Vec<String> {
        let url = |role: Role| {
            self.nodes
                .iter()
                .filter(|n| n.role == role)
                .map(Node::url)
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            "--order-addr".into(),
            url(Role::Order),
            "--coupon-addr".into(),
            url(Role::Coupon),
            "--inventory-addr".into(),
            url(Role::Inventory),
            "--payment-addr".into(),
            url(Role::Payment),
            "--point-addr".into(),
            url(Role::Point),
            "--ranking-addr".into(),
            url(Role::Ranking),
            "--orchestrator-addr".into(),
            url(Role::Orchestrator),
        ]
    }

    /// Starts every node (in dependency-free order: each retries its peers anyway).
    pub(crate) async fn start_all(&mut self, faults: bool) -> anyhow::Result<()> {
        for index in 0..self.nodes.len() {
            self.start(index, faults, None).await?;
        }
        Ok(())
    }

    /// Starts a new incarnation of node `index`, with the load-phase faults when `faults`, and
    /// with `failpoints` (a `FAILPOINTS` value) armed; waits until it listens.
    ///
    /// # Errors
    /// When the process exits or does not listen within a minute, or when failpoints were asked
    /// for and the binary does not report them armed (built without the `failpoints` feature).
    pub(crate) async fn start(
        &mut self,
        index: usize,
        faults: bool,
        failpoints: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        let peers = self.peer_args();
        let lease_ms = self.lease_ms;
        let permanent = self.permanent;
        let step_attempts = self.step_attempts.to_string();
        let downstream_limits = self.downstream_limits.clone();
        let gateway_latency_ms = self.gateway_latency_ms;
        let security = self.credentials.args(self.nodes[index].role)?;
        let db_url = {
            let role = self.nodes[index].role;
            self.urls
                .get(role.database())
                .cloned()
                .with_context(|| format!("no database for {}", role.name()))?
        };
        let node = &mut self.nodes[index];
        node.generation += 1;
        node.log = self
            .dir
            .join(format!("{}.{}.log", node.name, node.generation));
        let out = fs::File::create(&node.log).context("creating a log file")?;
        let err = out.try_clone().context("cloning a log file")?;
        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .arg(node.role.name())
            .args(["--listen", &format!("127.0.0.1:{}", node.port)])
            .args(["--database-url", &db_url])
            .args([
                "--db-max-connections",
                &node.role.max_connections().to_string(),
            ])
            .args(&peers)
            .args(&security)
            // The workload places hundreds of orders at once for a handful of seeded users: the
            // per-user rate limit would turn them into retries (it has its own test,
            // tests/tests/it/security.rs); every other limit stays at its default.
            .args(["--place-order-per-user-per-second", "0"]);
        if node.role == Role::Orchestrator {
            // Short leases make takeovers quick. Steps retry long enough (16 attempts: about
            // 10 s with full jitter) to outlast a restarted service, so that the pivot's outcome
            // does not stay unknown because of a kill (it would park in NEEDS_ATTENTION).
            command
                .args(["--owner", &format!("{}.{}", node.name, node.generation)])
                .args(["--lease-ms", &lease_ms.to_string()])
                .args(["--poll-ms", "200"])
                .args(["--saga-deadline-ms", "120000"])
                .args(["--step-attempts", &step_attempts])
                .args(["--step-base-delay-ms", "100"])
                .args(["--step-max-delay-ms", "1500"])
                .args(["--downstream-limits", &downstream_limits]);
        }
        if node.role == Role::Payment && gateway_latency_ms > 0 {
            command.args(["--gateway-latency-ms", &gateway_latency_ms.to_string()]);
        }
        if let Some(bootstrap) = &self.kafka {
            // A short session: a killed consumer's partitions move to the others within 6 s
            // (and a Tansu group join does not take the default's ~20 s).
            command
                .args(["--event-bus", &format!("kafka://{bootstrap}")])
                .args(["--kafka-session-timeout-ms", "6000"]);
        }
        for (_, args) in self.extra_args.iter().filter(|(r, _)| *r == node.role) {
            command.args(args);
        }
        let spec = if faults {
            fault_spec(node.role, permanent)
        } else {
            String::new()
        };
        command
            .env("SAGAFLOW_FAULTS", spec)
            .env("SAGAFLOW_LOG_FORMAT", "pretty")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("FAILPOINTS")
            .env_remove("SAGAFLOW_LISTEN")
            .env_remove("SAGAFLOW_DATABASE_URL")
            .env_remove("SAGAFLOW_EVENT_BUS")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (_, name, value) in self.extra_envs.iter().filter(|(r, _, _)| *r == node.role) {
            command.env(name, value);
        }
        node.armed = None;
        if let Some((name, spec)) = &failpoints {
            command.env("FAILPOINTS", format!("{name}={spec}"));
            node.armed = Some(name.clone());
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        node.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let logs = fs::read_to_string(&node.log).unwrap_or_default();
            if logs.contains("gRPC server listening") {
                if failpoints.is_some() && !logs.contains("failpoints armed") {
                    bail!(
                        "{} ignores FAILPOINTS: it was built without the `failpoints` feature \
                         (build the tests with cargo so that sagaflow-under-test gets it); \
                         logs:\n{}",
                        self.bin.display(),
                        tail(&logs)
                    );
                }
                return Ok(());
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                node.child = None;
                bail!(
                    "{} (incarnation {}) exited with {status} before listening; logs:\n{}",
                    node.name,
                    node.generation,
                    tail(&logs)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} did not listen within {START_TIMEOUT:?}; logs:\n{}",
                    node.name,
                    tail(&logs)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the current incarnation of node `index` logged so far.
    pub(crate) fn log_of(&self, index: usize) -> String {
        self.nodes
            .get(index)
            .and_then(|n| fs::read_to_string(&n.log).ok())
            .unwrap_or_default()
    }

    /// SIGKILLs node `index` (a crash) and reaps it; `None` when it was not running.
    pub(crate) async fn kill(&mut self, index: usize) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.nodes[index].child.take() else {
            return Ok(None);
        };
        child.start_kill().ok();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .context("a SIGKILLed process did not exit")?
            .context("waiting for a killed process")?;
        Ok(Some(status))
    }

    /// How many running processes have a failpoint armed.
    pub(crate) fn armed(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && n.armed.is_some())
            .count()
    }

    /// SIGKILLs every node; returns how many were running.
    pub(crate) async fn kill_all(&mut self) -> anyhow::Result<usize> {
        let mut killed = 0;
        for index in 0..self.nodes.len() {
            if self.kill(index).await?.is_some() {
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// The nodes whose process exited on its own since the last call, each with its exit status
    /// and whether it died by the abort of its armed failpoint (SIGABRT and the abort line in its
    /// log).
    pub(crate) fn reap_exited(&mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            node.child = None;
            let logs = fs::read_to_string(&node.log).unwrap_or_default();
            let failpoint = node.armed.take().filter(|name| {
                status.signal() == Some(6)
                    && logs.contains(&format!("{ABORT_PREFIX}{name}{ABORT_SUFFIX}"))
            });
            exited.push(Exited {
                index,
                name: node.name.clone(),
                status,
                failpoint,
                log_tail: tail(&logs),
            });
        }
        exited
    }

    /// Counts the faults every incarnation logged as injected.
    pub(crate) fn fault_counts(&self) -> FaultCounts {
        let mut counts = FaultCounts::default();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return counts;
        };
        for entry in entries.flatten() {
            let Ok(logs) = fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in logs.lines() {
                if line.contains("fault injected: error") {
                    if line.contains("FailedPrecondition") {
                        counts.permanent_errors += 1;
                    } else {
                        counts.transient_errors += 1;
                    }
                } else if line.contains("fault injected: lost reply") {
                    counts.lost_replies += 1;
                }
            }
        }
        counts
    }
}

/// A process that exited without being killed by the harness.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) status: ExitStatus,
    /// The armed failpoint it aborted at, if it did.
    pub(crate) failpoint: Option<String>,
    pub(crate) log_tail: String,
}

/// The last lines of a log, for error messages.
fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A loopback port reserved for this test process: a node comes back on the same one after
/// every kill (`sagaflow_testkit::ports`).
fn free_port() -> anyhow::Result<u16> {
    Ok(sagaflow_testkit::reserved_port())
}
