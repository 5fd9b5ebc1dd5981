//! `sagaflow recovery`: how long a crash costs. It runs `sagaflow dev` as a child process on a
//! fresh data directory, places `--in-flight` orders at once, SIGKILLs the child while their
//! sagas run, starts it again on the same directory, and prints (docs/operations.md, "Recovery
//! after a crash"):
//!
//! - the restart time: from the new process's start until it serves;
//! - how many sagas were unfinished at the kill;
//! - the time from the restart to the first and to the last of them finishing;
//! - sagas resumed per second.
//!
//! Nothing new is placed after the kill: the sagas must resume on their own. It reports; it never
//! fails on slowness.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use sagaflow_proto::{
    inventory::v1::{
        GetProductRequest, RestockRequest, UpsertProductRequest,
        inventory_service_client::InventoryServiceClient,
    },
    order::v1::{
        GetOrderRequest, Order, OrderLineRequest, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use sagaflow_server::transport::Transport;
use tokio::{task::JoinSet, time::Instant};
use tonic::transport::{Channel, Endpoint};

use crate::load::{is_terminal, wait_terminal};

/// The product every recovery order buys.
const SKU: &str = "RECOVERY-001";

/// Flags of `sagaflow recovery`.
#[derive(Debug, Args)]
pub struct RecoveryArgs {
    /// Orders placed at once before the kill.
    #[arg(long, default_value_t = 150)]
    pub in_flight: usize,
    /// Milliseconds to wait after the last PlaceOrder reply before the kill.
    #[arg(long, default_value_t = 50)]
    pub kill_after_ms: u64,
    /// Loopback port of the child `sagaflow dev`.
    #[arg(long, default_value_t = 50_071)]
    pub port: u16,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The `sagaflow` binary to run as `dev` (default: this one), for before/after comparisons
    /// of two builds.
    #[arg(long)]
    pub dev_binary: Option<std::path::PathBuf>,
}

/// What a recovery run measured. Times in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryReport {
    /// Orders placed before the kill.
    pub placed: usize,
    /// Of them, orders not yet terminal when the child was killed (read after the restart).
    pub unfinished_at_kill: usize,
    /// From spawning the new process until it answered a query.
    pub restart_ms: f64,
    /// From the restart (serving) until the first unfinished order was terminal.
    pub first_finished_ms: f64,
    /// From the restart until the last unfinished order was terminal.
    pub last_finished_ms: f64,
    /// Unfinished orders / seconds from the restart to the last finished.
    pub resumed_per_second: f64,
    /// Orders still not terminal when the run gave up (60 s).
    pub still_unfinished: usize,
}

fn spawn_dev(binary: Option<&Path>, dir: &Path, port: u16) -> anyhow::Result<Child> {
    let exe = match binary {
        Some(path) => path.to_owned(),
        None => std::env::current_exe().context("locating the sagaflow binary")?,
    };
    Command::new(exe)
        .arg("dev")
        // The benchmark places orders for many users: no end-user authentication.
        .arg("--open")
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting sagaflow dev")
}

/// Waits until the child answers a query; the channel.
async fn serving(url: &str) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(endpoint) = Endpoint::from_shared(url.to_owned())
            && let Ok(channel) = endpoint.connect().await
        {
            let answer = InventoryServiceClient::new(channel.clone())
                .get_product(GetProductRequest { sku: "none".into() })
                .await;
            match answer {
                Ok(_) => return Ok(channel),
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(channel),
                Err(_) => {}
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "sagaflow dev did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the recovery benchmark (see the module docs).
///
/// # Errors
/// When the child cannot be started or reached, or the orders cannot be placed.
pub async fn run(args: RecoveryArgs) -> anyhow::Result<RecoveryReport> {
    let dir = tempfile::Builder::new()
        .prefix("sagaflow-recovery-")
        .tempdir()
        .context("creating a data directory")?;
    let url = format!("http://127.0.0.1:{}", args.port);
    let mut child = spawn_dev(args.dev_binary.as_deref(), dir.path(), args.port)?;
    let result = measure(&args, dir.path(), &url, &mut child).await;
    let _ = child.kill();
    let _ = child.wait();
    let report = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        println!(
            "recovery: {} placed, {} unfinished at the kill; restart {:.0} ms; first finished {:.0} ms and last {:.0} ms after the restart; {:.0} sagas resumed/s; {} still unfinished",
            report.placed,
            report.unfinished_at_kill,
            report.restart_ms,
            report.first_finished_ms,
            report.last_finished_ms,
            report.resumed_per_second,
            report.still_unfinished
        );
    }
    Ok(report)
}

async fn measure(
    args: &RecoveryArgs,
    dir: &Path,
    url: &str,
    child: &mut Child,
) -> anyhow::Result<RecoveryReport> {
    let channel = serving(url).await?;
    let run = format!("recovery{}", sagaflow_server::db::now_ms());
    let mut inventory = InventoryServiceClient::new(channel.clone());
    inventory
        .upsert_product(UpsertProductRequest {
            sku: SKU.into(),
            name: "Recovery widget".into(),
            unit_price: 1000,
        })
        .await
        .context("creating the product")?;
    inventory
        .restock(RestockRequest {
            sku: SKU.into(),
            quantity: 1_000_000_000,
            idempotency_key: format!("{run}:restock"),
        })
        .await
        .context("stocking the product")?;
    let mut set = JoinSet::new();
    for i in 0..args.in_flight {
        let mut client = OrderServiceClient::new(channel.clone());
        let request = PlaceOrderRequest {
            request_id: format!("{run}-{i}"),
            user_id: format!("recovery-user-{i}"),
            lines: vec![OrderLineRequest {
                sku: SKU.into(),
                quantity: 1,
            }],
            coupon_code: None,
            points: 0,
            payment_method: "tok_ok".into(),
        };
        set.spawn(async move { client.place_order(request).await });
    }
    let mut ids = Vec::with_capacity(args.in_flight);
    while let Some(joined) = set.join_next().await {
        let order = joined
            .context("placing an order")?
            .context("PlaceOrder")?
            .into_inner()
            .order
            .context("PlaceOrder answered no order")?;
        ids.push(order.order_id);
    }
    tokio::time::sleep(Duration::from_millis(args.kill_after_ms)).await;
    child.kill().context("killing sagaflow dev")?;
    child.wait().context("reaping sagaflow dev")?;
    drop(channel);

    let spawned = Instant::now();
    *child = spawn_dev(args.dev_binary.as_deref(), dir, args.port)?;
    let channel = serving(url).await?;
    let restarted = Instant::now();
    let restart_ms = restarted.duration_since(spawned).as_secs_f64() * 1e3;
    // Which orders were unfinished at the kill: those not terminal at the first read after the
    // restart, read at once (before any could finish, the first read is within milliseconds).
    let mut set = JoinSet::new();
    for id in ids.clone() {
        let mut client = OrderServiceClient::new(Transport::from(channel.clone()));
        set.spawn(async move {
            let first = client
                .get_order(GetOrderRequest {
                    order_id: id,
                    wait: None,
                })
                .await?
                .into_inner()
                .order
                .unwrap_or_default();
            if is_terminal(&first) {
                return Ok::<_, tonic::Status>(None);
            }
            let order: Order =
                wait_terminal(&mut client, first, Instant::now() + Duration::from_secs(60)).await?;
            Ok(Some((is_terminal(&order), Instant::now())))
        });
    }
    let (mut finished, mut unfinished, mut still) = (Vec::new(), 0, 0);
    while let Some(joined) = set.join_next().await {
        match joined.context("waiting for an order")? {
            Ok(None) => {}
            Ok(Some((true, at))) => {
                unfinished += 1;
                finished.push(at.duration_since(restarted));
            }
            Ok(Some((false, _))) | Err(_) => {
                unfinished += 1;
                still += 1;
            }
        }
    }
    finished.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let last = finished.last().copied();
    Ok(RecoveryReport {
        placed: ids.len(),
        unfinished_at_kill: unfinished,
        restart_ms,
        first_finished_ms: ms(finished.first()),
        last_finished_ms: ms(last.as_ref()),
        #[allow(clippy::cast_precision_loss)] // counts of orders
        resumed_per_second: last.map_or(0.0, |d| finished.len() as f64 / d.as_secs_f64().max(1e-3)),
        still_unfinished: still,
    })
}
