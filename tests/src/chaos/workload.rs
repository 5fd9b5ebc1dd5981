//! The orders of a chaos run: a seeded mix over the demo data (plain orders, coupons, points,
//! authorization declines, capture declines, out-of-stock, insufficient points), placed by
//! concurrent clients that retry transient failures with the same request id (PlaceOrder is
//! idempotent on it) and wait a little for each order to finish.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom as _};
use sagaflow_cli::seed::{DEMO_SEED, Seed};
use sagaflow_proto::order::v1::{
    GetOrderRequest, Order, OrderLineRequest, PlaceOrderRequest,
    order_service_client::OrderServiceClient,
};
use sagaflow_server::transport::Transport;
use tokio::{task::JoinHandle, time::Instant};
use tonic::Code;

use super::cluster::{Cluster, Role};

/// The demo data, with what the workload needs to know about it.
#[derive(Debug, Clone)]
pub(crate) struct SeedData {
    seed: Arc<Seed>,
    /// Every seeded user.
    pub(crate) users: BTreeSet<String>,
    /// Users with points who place ordinary orders.
    regular_users: Vec<String>,
    /// (code, owner) of every coupon.
    coupons: Vec<(String, String)>,
    /// Skus with plenty of stock.
    plentiful: Vec<String>,
}

impl SeedData {
    /// Every coupon code.
    pub(crate) fn coupon_codes(&self) -> BTreeSet<String> {
        self.coupons.iter().map(|(code, _)| code.clone()).collect()
    }
}

/// Parses the shipped demo seed.
pub(crate) async fn seed_data() -> anyhow::Result<SeedData> {
    let seed = Seed::parse(DEMO_SEED)?;
    let users = seed.users.iter().map(|u| u.user_id.clone()).collect();
    let regular_users = seed
        .users
        .iter()
        .filter(|u| u.user_id.starts_with("user-") && u.user_id != "user-poor")
        .map(|u| u.user_id.clone())
        .collect();
    let coupons = seed
        .coupons
        .iter()
        .map(|c| (c.code.clone(), c.user_id.clone()))
        .collect();
    let plentiful = seed
        .products
        .iter()
        .filter(|p| p.stock >= 1_000)
        .map(|p| p.sku.clone())
        .collect();
    Ok(SeedData {
        seed: Arc::new(seed),
        users,
        regular_users,
        coupons,
        plentiful,
    })
}

/// Seeds the demo data through the admin RPCs (not faulted), retrying while a service starts.
pub(crate) async fn apply_seed(cluster: &Cluster, seed: &SeedData) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = sagaflow_cli::seed::apply_split(
            cluster.channel(Role::Inventory)?,
            cluster.channel(Role::Point)?,
            cluster.channel(Role::Coupon)?,
            &seed.seed,
        )
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() < deadline => {
                eprintln!("chaos: seeding failed, retrying: {err:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err.context("seeding the demo data")),
        }
    }
}

/// One order to place, and which part of the mix it is.
#[derive(Debug, Clone)]
pub(crate) struct OrderPlan {
    pub(crate) request: PlaceOrderRequest,
    pub(crate) kind: &'static str,
}

/// The run's orders, drawn from `seed`: the same seed gives the same orders.
pub(crate) fn plan_orders(seed: u64, count: usize, data: &SeedData) -> Arc<Vec<OrderPlan>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6f72_6465_7273_0002);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let plans = (0..count)
        .map(|index| plan_one(&mut rng, data, &format!("chaos-{}-{index}", &run[..8])))
        .collect();
    Arc::new(plans)
}

fn lines(rng: &mut StdRng, skus: &[String], max_lines: usize) -> Vec<OrderLineRequest> {
    let count = rng.random_range(1..=max_lines.min(skus.len()).max(1));
    let mut chosen: Vec<&String> = skus.choose_multiple(rng, count).collect();
    chosen.sort();
    chosen
        .into_iter()
        .map(|sku| OrderLineRequest {
            sku: sku.clone(),
            quantity: rng.random_range(1..=2),
        })
        .collect()
}

fn plan_one(rng: &mut StdRng, data: &SeedData, request_id: &str) -> OrderPlan {
    let user = data
        .regular_users
        .choose(rng)
        .cloned()
        .unwrap_or_else(|| "user-001".to_owned());
    let mut request = PlaceOrderRequest {
        request_id: request_id.to_owned(),
        user_id: user,
        lines: lines(rng, &data.plentiful, 3),
        coupon_code: None,
        points: 0,
        payment_method: "tok_ok".to_owned(),
    };
    let roll = rng.random_range(0..100);
    let kind = match roll {
        0..40 => "plain",
        40..55 => {
            if let Some((code, owner)) = data.coupons.choose(rng) {
                request.coupon_code = Some(code.clone());
                request.user_id = owner.clone();
            }
            request.points = if rng.random_bool(0.3) { 500 } else { 0 };
            "coupon"
        }
        55..70 => {
            request.points = rng.random_range(5..=30) * 100;
            "points"
        }
        70..78 => {
            request.payment_method = "tok_decline".to_owned();
            request.points = if rng.random_bool(0.5) { 1_000 } else { 0 };
            "decline"
        }
        78..88 => {
            request.payment_method = "tok_capture_decline".to_owned();
            request.points = 1_000;
            if rng.random_bool(0.3)
                && let Some((code, owner)) = data.coupons.choose(rng)
            {
                request.coupon_code = Some(code.clone());
                request.user_id = owner.clone();
                request.points = 500;
            }
            "capture_decline"
        }
        88..94 => {
            let sku = if rng.random_bool(0.5) {
                "SOLD-001"
            } else {
                "LIM-001"
            };
            request.lines = vec![OrderLineRequest {
                sku: sku.to_owned(),
                quantity: rng.random_range(1..=2),
            }];
            "out_of_stock"
        }
        _ => {
            request.user_id = "user-poor".to_owned();
            request.points = 5_000;
            "insufficient_points"
        }
    };
    OrderPlan { request, kind }
}

/// An order the workload placed.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    /// Index into the plans.
    pub(crate) index: usize,
    pub(crate) order_id: String,
    pub(crate) kind: &'static str,
}

/// What the clients placed.
#[derive(Debug, Default)]
pub(crate) struct Placements {
    pub(crate) orders: Vec<Placed>,
    /// Plans whose PlaceOrder never got an answer (placed again after the load).
    pub(crate) unanswered: Vec<usize>,
    /// PlaceOrder calls retried.
    pub(crate) retries: usize,
    /// PlaceOrder calls refused with a non-transient code (a violation: the plans are valid).
    pub(crate) refused: Vec<String>,
}

/// Whether a code is worth retrying with the same request id.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Cancelled
    )
}

fn client(cluster: &Cluster) -> anyhow::Result<OrderServiceClient<Transport>> {
    Ok(OrderServiceClient::new(cluster.channel(Role::Order)?))
}

/// Places `plan` (retrying transient failures until `deadline`); `Ok(None)` when it got no
/// answer by then.
async fn place(
    client: &mut OrderServiceClient<Transport>,
    plan: &OrderPlan,
    deadline: Instant,
    retries: &mut usize,
) -> Result<Option<Order>, tonic::Status> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut request = tonic::Request::new(plan.request.clone());
        request.set_timeout(Duration::from_secs(10));
        match client.place_order(request).await {
            Ok(reply) => return Ok(reply.into_inner().order),
            Err(status) if transient(status.code()) => {
                if Instant::now() + backoff >= deadline {
                    return Ok(None);
                }
                *retries += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(status) => return Err(status),
        }
    }
}

/// Waits up to `wait` for the order to finish (errors are ignored: the checks read it later).
async fn wait_a_little(client: &mut OrderServiceClient<Transport>, order_id: &str, wait: Duration) {
    let mut request = tonic::Request::new(GetOrderRequest {
        order_id: order_id.to_owned(),
        wait: Some(prost_types::Duration {
            seconds: i64::try_from(wait.as_secs()).unwrap_or(5),
            nanos: 0,
        }),
    });
    request.set_timeout(wait + Duration::from_secs(2));
    let _ = client.get_order(request).await;
}

/// Spawns `clients` tasks that take plans in turn until all are placed or `deadline` passes.
pub(crate) fn spawn_clients(
    transport: Transport,
    plans: Arc<Vec<OrderPlan>>,
    clients: usize,
    deadline: Instant,
) -> Vec<JoinHandle<anyhow::Result<Placements>>> {
    let next = Arc::new(AtomicUsize::new(0));
    (0..clients)
        .map(|_| {
            let (transport, plans, next) = (transport.clone(), plans.clone(), next.clone());
            tokio::spawn(async move {
                let mut client = OrderServiceClient::new(transport);
                let mut out = Placements::default();
                loop {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(plan) = plans.get(index) else { break };
                    let give_up = Instant::now() + Duration::from_secs(30);
                    match place(&mut client, plan, give_up, &mut out.retries).await {
                        Ok(Some(order)) => {
                            wait_a_little(&mut client, &order.order_id, Duration::from_secs(3))
                                .await;
                            out.orders.push(Placed {
                                index,
                                order_id: order.order_id,
                                kind: plan.kind,
                            });
                        }
                        Ok(None) => out.unanswered.push(index),
                        Err(status) => out.refused.push(format!(
                            "PlaceOrder {} ({}) refused: {status}",
                            plan.request.request_id, plan.kind
                        )),
                    }
                }
                Ok(out)
            })
        })
        .collect()
}

/// Joins the clients and merges what they placed.
pub(crate) async fn join_clients(
    clients: Vec<JoinHandle<anyhow::Result<Placements>>>,
) -> Placements {
    let mut all = Placements::default();
    for handle in clients {
        match handle.await {
            Ok(Ok(p)) => {
                all.orders.extend(p.orders);
                all.unanswered.extend(p.unanswered);
                all.retries += p.retries;
                all.refused.extend(p.refused);
            }
            Ok(Err(err)) => all.refused.push(format!("a client failed: {err:#}")),
            Err(err) => all.refused.push(format!("a client panicked: {err}")),
        }
    }
    all
}

/// After the load (faults off): places again every plan that got no answer — the order may or
/// may not exist; the same request id returns it or creates it — so that the run knows every
/// order it caused.
pub(crate) async fn finish_placing(
    cluster: &Cluster,
    mut placed: Placements,
    plans: &[OrderPlan],
) -> anyhow::Result<Placements> {
    let mut client = client(cluster)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for index in std::mem::take(&mut placed.unanswered) {
        let plan = &plans[index];
        match place(&mut client, plan, deadline, &mut placed.retries).await {
            Ok(Some(order)) => placed.orders.push(Placed {
                index,
                order_id: order.order_id,
                kind: plan.kind,
            }),
            Ok(None) => anyhow::bail!(
                "PlaceOrder {} got no answer even with faults off",
                plan.request.request_id
            ),
            Err(status) => placed.refused.push(format!(
                "PlaceOrder {} ({}) refused: {status}",
                plan.request.request_id, plan.kind
            )),
        }
    }
    placed.orders.sort_by_key(|p| p.index);
    Ok(placed)
}

/// Reads every placed order (after the run settled).
pub(crate) async fn read_orders(
    cluster: &Cluster,
    placed: &Placements,
) -> anyhow::Result<Vec<Order>> {
    let mut client = client(cluster)?;
    let mut orders = Vec::with_capacity(placed.orders.len());
    for p in &placed.orders {
        let order = client
            .get_order(GetOrderRequest {
                order_id: p.order_id.clone(),
                wait: None,
            })
            .await
            .with_context(|| format!("GetOrder {}", p.order_id))?
            .into_inner()
            .order
            .with_context(|| format!("GetOrder {} returned no order", p.order_id))?;
        orders.push(order);
    }
    Ok(orders)
}
