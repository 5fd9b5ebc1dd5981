//! What one request may cost (docs/operations.md, "Request limits"), measured on real processes:
//!
//! - every repeated field of every RPC, enumerated from the descriptor set (public ones and the
//!   internal ones `dev` also serves), with 2 million elements is INVALID_ARGUMENT naming the
//!   field, and the server's peak RSS (`VmHWM`) hardly moves: the elements are counted on the
//!   wire and the body is not read past the limit;
//! - a connection's GetOrder{wait} calls beyond its limit are refused with RESOURCE_EXHAUSTED
//!   at once, not queued;
//! - 5,000 GetOrder{wait} calls spread over 25 connections cost PostgreSQL O(1) queries a
//!   second (one shared poll), not one per caller.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use sagaflow_proto::{
    inventory::v1::{UpsertProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        GetOrderRequest, OrderLineRequest, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use sagaflow_server::error::violated_fields;
use sagaflow_testkit::{Kind as DbKind, TestDatabase};
use sagaflow_tests::{Process, free_port, start_dev};
use tonic::{Code, Status, transport::Channel};

use crate::rpc::{call, valid_message};

/// The one place these tests start `sagaflow dev`: every flag all of them need goes here.
fn dev(data: &Path, extra: &[&str]) -> Process {
    let args: Vec<&str> = extra.to_vec();
    start_dev("127.0.0.1:0", data, &args, &[])
}

/// Peak resident set size of process `pid`, KiB (`VmHWM` of `/proc/<pid>/status`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// One repeated field of one RPC's request: the fields that lead to it from the request (list
/// parents at their first element) and its proto path as a violation names it.
struct Case {
    rpc: String,
    fields: Vec<FieldDescriptor>,
    name: String,
    input: MessageDescriptor,
}

/// Every repeated field under `message` (nested ones included).
fn repeated_fields(
    message: &MessageDescriptor,
    prefix: &mut Vec<FieldDescriptor>,
    out: &mut Vec<Vec<FieldDescriptor>>,
) {
    if prefix.len() > 8 {
        return;
    }
    for field in message.fields() {
        prefix.push(field.clone());
        if field.is_list() || field.is_map() {
            out.push(prefix.clone());
        }
        if let Kind::Message(nested) = field.kind()
            && !field.is_map()
        {
            repeated_fields(&nested, prefix, out);
        }
        prefix.pop();
    }
}

fn cases() -> Vec<Case> {
    let pool = DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for service in pool
        .services()
        .filter(|s| s.full_name().starts_with("sagaflow."))
    {
        for method in service.methods() {
            let mut found = Vec::new();
            repeated_fields(&method.input(), &mut Vec::new(), &mut found);
            for fields in found {
                let last = fields.len() - 1;
                let name = fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        if f.is_list() && i < last {
                            format!("{}[0]", f.name())
                        } else {
                            f.name().to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(".");
                out.push(Case {
                    rpc: format!("/{}/{}", service.full_name(), method.name()),
                    fields,
                    name,
                    input: method.input(),
                });
            }
        }
    }
    out
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One empty element of `field` on the wire: its tag and a zero value (an empty message or
/// string, a 0 scalar).
fn empty_element(field: &FieldDescriptor) -> Vec<u8> {
    let (wire, value): (u64, &[u8]) = match field.kind() {
        Kind::Message(_) | Kind::String | Kind::Bytes => (2, &[0]),
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => (5, &[0; 4]),
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => (1, &[0; 8]),
        _ => (0, &[0]),
    };
    let mut out = Vec::new();
    varint((u64::from(field.number()) << 3) | wire, &mut out);
    out.extend_from_slice(value);
    out
}

/// `message` encoded with `n` empty elements in the repeated field at the end of `fields`
/// (the fields before it lead there; a list parent holds one element).
fn with_elements(message: &DynamicMessage, fields: &[FieldDescriptor], n: usize) -> Vec<u8> {
    let (field, rest) = fields.split_first().unwrap();
    let mut without = message.clone();
    without.clear_field(field);
    let mut out = without.encode_to_vec();
    if rest.is_empty() {
        let element = empty_element(field);
        out.reserve(element.len() * n);
        for _ in 0..n {
            out.extend_from_slice(&element);
        }
        return out;
    }
    let value = message.get_field(field);
    let child = match value.as_list() {
        Some(list) => list[0].as_message().unwrap().clone(),
        None => value.as_message().unwrap().clone(),
    };
    let inner = with_elements(&child, rest, n);
    varint((u64::from(field.number()) << 3) | 2, &mut out);
    varint(inner.len() as u64, &mut out);
    out.extend_from_slice(&inner);
    out
}

/// Whether `answer` is INVALID_ARGUMENT naming `field`.
fn names(answer: &Result<Vec<u8>, Status>, field: &str) -> bool {
    matches!(answer, Err(s) if s.code() == Code::InvalidArgument
        && violated_fields(s).iter().any(|f| f == field))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_million_elements_in_any_repeated_field_are_refused_before_they_are_read() {
    let cases = cases();
    let covered: Vec<String> = cases
        .iter()
        .map(|c| format!("{} {}", c.rpc, c.name))
        .collect();
    // Sanity: the walk reaches the public PlaceOrder and the internal RPCs of Inventory, the
    // orchestrator and Ranking (a broken walk must not pass vacuously).
    for expected in [
        "/sagaflow.order.v1.OrderService/PlaceOrder lines",
        "/sagaflow.inventory.v1.InventoryService/BatchGetProducts skus",
        "/sagaflow.orchestrator.v1.OrchestratorService/StartOrderSaga event.order.lines",
        "/sagaflow.ranking.v1.RankingService/RecordOrderCompleted event.order.lines",
    ] {
        assert!(
            covered.iter().any(|c| c == expected),
            "{expected} in {covered:?}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let dev = dev(&dir.path().join("data"), &[]);
    let pid = dev.pid().unwrap();
    let channel = Channel::from_shared(dev.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut serial = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let class = sagaflow_server::access::class_of(&case.rpc)
            .flatten()
            .map_or("unclassified", |c| c.name());
        let request = valid_message(&case.input, 0, &mut serial);
        // Warm up: the same RPC with one element too many (the connection's buffers, the
        // descriptor plans), so that the measurement below is the 2 million's alone.
        let limit =
            sagaflow_server::repeated::max_elements(case.fields.last().unwrap().full_name());
        let warm = call(
            channel.clone(),
            &case.rpc,
            with_elements(&request, &case.fields, limit as usize + 1),
        )
        .await;
        let body = with_elements(&request, &case.fields, 2_000_000);
        let before = peak_rss_kib(pid);
        let started = Instant::now();
        let answer = call(channel.clone(), &case.rpc, body.clone()).await;
        let took = started.elapsed();
        // VmHWM is read from per-thread counters that the kernel folds in lazily: it can read a
        // few pages lower than a moment before.
        let after = peak_rss_kib(pid);
        let rose = after.saturating_sub(before);
        println!(
            "{} {} ({class}): {} bytes, 2000000 elements: {:?} {:?} in {took:?}; peak RSS {before} KiB -> {after} KiB (+{} KiB)",
            case.rpc,
            case.name,
            body.len(),
            answer.as_ref().err().map(Status::code),
            answer.as_ref().err().map(violated_fields),
            rose,
        );
        if !names(&warm, &case.name) {
            failures.push(format!(
                "{} {} with {} elements: {warm:?}",
                case.rpc,
                case.name,
                limit + 1
            ));
        }
        if !names(&answer, &case.name) {
            failures.push(format!("{} {}: {answer:?}", case.rpc, case.name));
        }
        if rose > 4 * 1024 {
            failures.push(format!(
                "{} {}: peak RSS rose by {rose} KiB",
                case.rpc, case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// GET http://addr/metrics: the Prometheus text.
fn scrape(addr: &str) -> String {
    sagaflow_tests::scrape_metrics(addr)
}

/// The value of the unlabelled sample `name` at `metrics` (0 when absent).
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The order service's gauge of waiting GetOrder callers.
const WAITERS_GAUGE: &str = "sagaflow_order_get_order_waiters";
/// The order service's counter of shared wait-poll queries.
const WAIT_POLLS: &str = "sagaflow_order_wait_polls_total";

/// Waits up to 60 s until [`WAITERS_GAUGE`] at `metrics` is `n`.
async fn wait_for_waiters(metrics: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = sample(&scrape(metrics), WAITERS_GAUGE);
        if now == n as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "{now} waiters, expected {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn get(order_id: &str, wait_s: i64) -> GetOrderRequest {
    GetOrderRequest {
        order_id: order_id.to_owned(),
        wait: Some(prost_types::Duration {
            seconds: wait_s,
            nanos: 0,
        }),
    }
}

fn slow_order(request_id: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        request_id: request_id.into(),
        user_id: "alice".into(),
        lines: vec![OrderLineRequest {
            sku: "KB-001".into(),
            quantity: 1,
        }],
        coupon_code: None,
        points: 0,
        payment_method: "tok_slow".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_waits_beyond_its_limit_are_refused_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dev = dev(
        &dir.path().join("data"),
        &[
            "--max-concurrent-per-connection",
            "8",
            "--max-streams-per-connection",
            "16",
            // The order's payment hangs, so the order stays PENDING while the test waits on it.
            "--gateway-slow-ms",
            "120000",
            "--metrics-listen",
            &metrics,
        ],
    );
    let connect = || async {
        Channel::from_shared(dev.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let channel = connect().await;
    let mut orders = OrderServiceClient::new(channel.clone());
    let order = orders
        .place_order(slow_order("cost-streams"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    // The connection's 8 calls: waiting.
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let mut client = OrderServiceClient::new(channel.clone());
            let request = get(&order.order_id, 30);
            tokio::spawn(async move { client.get_order(request).await })
        })
        .collect();
    wait_for_waiters(&metrics, 8).await;
    // 12 more on the same connection, 4 of them beyond its 16 HTTP/2 streams: every one is
    // refused at once, none waits.
    let started = Instant::now();
    let extra: Vec<_> = (0..12)
        .map(|_| {
            let mut client = OrderServiceClient::new(channel.clone());
            let request = get(&order.order_id, 30);
            tokio::spawn(async move { client.get_order(request).await })
        })
        .collect();
    let mut refused = Vec::new();
    for call in extra {
        refused.push(call.await.unwrap().unwrap_err());
    }
    let took = started.elapsed();
    println!(
        "12 calls over the limit of 8: {:?} in {took:?}",
        refused.iter().map(Status::code).collect::<Vec<_>>()
    );
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("connection"), "{status:?}");
    }
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
    // The 8 still wait; another connection is served.
    assert_eq!(sample(&scrape(&metrics), WAITERS_GAUGE), 8.0);
    assert!(waiting.iter().all(|w| !w.is_finished()));
    let other = OrderServiceClient::new(connect().await)
        .get_order(get(&order.order_id, 0))
        .await
        .unwrap();
    assert_eq!(other.into_inner().order.unwrap().order_id, order.order_id);
    for call in waiting {
        call.abort();
    }
}

/// `xact_commit` of database `name` (every statement outside a transaction is one).
async fn commits(admin: &sqlx::PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(name)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Queries a second on database `name` over `window`, once its backends' statistics are
/// flushed (PostgreSQL flushes an idle backend's within 10 s).
async fn rate(admin: &sqlx::PgPool, name: &str, window: Duration) -> f64 {
    let start = commits(admin, name).await;
    tokio::time::sleep(window).await;
    let end = commits(admin, name).await;
    (end - start) as f64 / window.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_waits_over_many_connections_cost_postgres_o1_queries_a_second() {
    const WAITERS: usize = 5_000;
    const CONNECTIONS: usize = 25;
    const ORDERS: usize = 50;
    let inventory_db = TestDatabase::new(DbKind::Postgres, "cost_inventory");
    let order_db = TestDatabase::new(DbKind::Postgres, "cost_order");
    let start = Duration::from_secs(60);
    let inventory = Process::start(
        &[
            "serve",
            "inventory",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &inventory_db.url,
        ],
        &[],
        start,
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    // No orchestrator (its address refuses): the orders stay PENDING.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let order = Process::start(
        &[
            "serve",
            "order",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &order_db.url,
            "--inventory-addr",
            &inventory.url(),
            "--orchestrator-addr",
            &nowhere,
            "--metrics-listen",
            &metrics,
        ],
        &[],
        start,
    );
    InventoryServiceClient::connect(inventory.url())
        .await
        .unwrap()
        .upsert_product(UpsertProductRequest {
            sku: "KB-001".into(),
            name: "Keyboard".into(),
            unit_price: 89_000,
        })
        .await
        .unwrap();
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(order.url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        let placed = OrderServiceClient::new(channels[0].clone())
            .place_order(PlaceOrderRequest {
                payment_method: "tok_ok".into(),
                ..slow_order(&format!("cost-pg-{i}"))
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(placed.order.unwrap().order_id);
    }
    let name = order_db
        .url
        .rsplit_once('/')
        .map(|(_, db)| db.split('?').next().unwrap_or(db).to_owned())
        .unwrap();
    let admin = sqlx::PgPool::connect(&inventory_db.url).await.unwrap();
    // Each caller waits at most 60 s: registering them, the 11 s for the statistics and the
    // window must fit in that.
    let window = Duration::from_secs(10);

    // Idle: what the relay, retention and pool do without anyone waiting.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let idle = rate(&admin, &name, window).await;

    // 5,000 callers over 25 connections and 50 orders, each waiting up to 60 s.
    let calls: Vec<_> = (0..WAITERS)
        .map(|i| {
            let mut client = OrderServiceClient::new(channels[i % CONNECTIONS].clone());
            let request = get(&ids[i % ORDERS], 60);
            tokio::spawn(async move { client.get_order(request).await })
        })
        .collect();
    let started = Instant::now();
    wait_for_waiters(&metrics, WAITERS).await;
    let registered = started.elapsed();
    println!("{WAITERS} waiters registered in {registered:?}");
    let polls_before = sample(&scrape(&metrics), WAIT_POLLS);
    // Each caller's first read is flushed to the statistics within 10 s; then measure.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let waiting = rate(&admin, &name, window).await;
    let polls = sample(&scrape(&metrics), WAIT_POLLS) - polls_before;
    assert_eq!(
        sample(&scrape(&metrics), WAITERS_GAUGE),
        WAITERS as f64,
        "every caller still waits through the measurement (registering took {registered:?})"
    );
    println!(
        "PostgreSQL queries a second on the order database: {idle:.1} idle, {waiting:.1} with \
         {WAITERS} waiting callers on {CONNECTIONS} connections ({:.1} more; one re-read per \
         caller a second would be {WAITERS}); shared poll queries in {:.0} s: {polls}",
        waiting - idle,
        (window + Duration::from_secs(11)).as_secs_f64()
    );
    assert!(
        waiting - idle <= 10.0,
        "{waiting:.1} queries/s with {WAITERS} waiters, {idle:.1} idle"
    );
    assert!(polls <= 25.0, "{polls} shared polls in 21 s");
    for call in calls {
        call.abort();
    }
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_over_the_processs_cap_are_refused_with_a_reason() {
    use tonic_types::StatusExt as _;
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dev = dev(
        &dir.path().join("data"),
        &[
            "--max-order-waiters",
            "3",
            "--gateway-slow-ms",
            "120000",
            "--metrics-listen",
            &metrics,
        ],
    );
    let channel = Channel::from_shared(dev.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut orders = OrderServiceClient::new(channel.clone());
    let order = orders
        .place_order(slow_order("cost-cap"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let mut client = OrderServiceClient::new(channel.clone());
            let request = get(&order.order_id, 30);
            tokio::spawn(async move { client.get_order(request).await })
        })
        .collect();
    wait_for_waiters(&metrics, 3).await;
    let refused = orders
        .get_order(get(&order.order_id, 30))
        .await
        .unwrap_err();
    println!("the 4th wait: {refused:?}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let info = refused.get_details_error_info().unwrap();
    assert_eq!(info.reason, "TOO_MANY_WAITERS");
    assert_eq!(info.metadata["max_waiters"], "3");
    // A read without `wait` is not a waiter and is served.
    let now = orders.get_order(get(&order.order_id, 0)).await.unwrap();
    assert_eq!(now.into_inner().order.unwrap().order_id, order.order_id);
    for call in waiting {
        call.abort();
    }
}
