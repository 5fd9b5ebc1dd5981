//! The embedded system's in-process transport (docs/architecture.md, "Run modes"): its own calls
//! (orchestrator → services, relay → orchestrator and Ranking, seeding) go through the server's
//! tower stack without a socket, with the same answers as a client over TCP gets from the same
//! server. Each test starts a real embedded system on SQLite and sends the same request both ways:
//! through [`Embedded::transport`] and through a TCP channel to its port.
//!
//! - `an_order_completes_in_process_without_a_loopback_connection`: the saga's seven calls and
//!   the relay's deliveries, and no TCP connection to the port exists at any time;
//! - `invalid_argument_has_the_same_bad_request_in_process_as_over_tcp`: the handler's validation
//!   and the string-field guard, code, message and details byte for byte;
//! - `a_deadline_shorter_than_an_injected_latency_ends_the_call_in_process`: `grpc-timeout` is
//!   honoured (the answer comes at the deadline, not after the latency) with the code tonic gives
//!   over TCP, and the saga journals the step's attempts as DEADLINE_EXCEEDED;
//! - `an_injected_unavailable_reaches_the_in_process_caller`: the fault layer's answer, which is
//!   not mistaken for a refused connection.

use std::time::{Duration, Instant};

use sagaflow_cli::dev::{Embedded, EmbeddedConfig};
use sagaflow_orchestrator::StepPolicies;
use sagaflow_proto::{
    inventory::v1::{GetProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        GetOrderRequest, OrderLineRequest, OrderStatus, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
    workflow::v1::{GetSagaRequest, SagaStatus, saga_admin_service_client::SagaAdminServiceClient},
};
use sagaflow_server::transport::{Transport, traced};
use serde_json::Value;
use tonic::{Code, Status, transport::Channel};

const SKU: &str = "KB-001";

/// An embedded system on SQLite with `faults`, and a TCP channel to its port.
struct System {
    _dir: tempfile::TempDir,
    system: Embedded,
    tcp: Channel,
}

async fn start(faults: &str, policies: StepPolicies) -> System {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::demo(dir.path().to_path_buf());
    config.faults = faults.parse().unwrap();
    config.policies = policies;
    let system = Embedded::start(config).await.unwrap();
    let tcp = Channel::from_shared(system.url()).unwrap().connect_lazy();
    System {
        _dir: dir,
        system,
        tcp,
    }
}

impl System {
    /// Both ways to the same server: `(in-process, TCP)`.
    fn transports(&self) -> [(&'static str, Transport); 2] {
        [
            ("in-process", self.system.transport()),
            ("tcp", Transport::from(self.tcp.clone())),
        ]
    }
}

fn place(request_id: &str, user_id: &str, sku: &str, payment_method: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        request_id: request_id.into(),
        user_id: user_id.into(),
        lines: vec![OrderLineRequest {
            sku: sku.into(),
            quantity: 1,
        }],
        coupon_code: None,
        points: 0,
        payment_method: payment_method.into(),
    }
}

/// The TCP connections (IPv4, any state but LISTEN and TIME_WAIT) from or to `port` on this
/// machine, from `/proc/net/tcp`.
fn connections_on(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (0A LISTEN, 06 TIME_WAIT)
            fields.len() > 3
                && (fields[1].ends_with(&port) || fields[2].ends_with(&port))
                && !matches!(fields[3], "0A" | "06")
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_completes_in_process_without_a_loopback_connection() {
    let s = start("", StepPolicies::default()).await;
    let port = s.system.addr().port();
    // The seeding went in-process too: nothing has connected yet.
    assert_eq!(connections_on(port), Vec::<String>::new());
    let local = s.system.transport();
    let mut orders = OrderServiceClient::new(traced(local.clone()));
    let order = orders
        .place_order(place("inproc-1", "alice", SKU, "tok_ok"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let done = orders
        .get_order(sagaflow_tests::wait_for_order(&order.order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(done.status(), OrderStatus::Completed);
    // The saga comes to rest right after its last step (CompleteOrder) committed.
    let state = s
        .system
        .engine()
        .wait_finished(order.order_id.parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(state.status().to_string(), "COMPLETED");
    let saga = SagaAdminServiceClient::new(local)
        .get_saga(GetSagaRequest {
            saga_id: order.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saga.saga.unwrap().status(), SagaStatus::Completed);
    let succeeded: Vec<&str> = saga
        .journal
        .iter()
        .filter(|e| e.event_type == "step_succeeded")
        .map(|e| e.step.as_str())
        .collect();
    assert_eq!(
        succeeded,
        [
            "deduct_inventory",
            "start_payment",
            "complete_payment",
            "complete_order"
        ]
    );
    // PlaceOrder's pricing call, the relay's delivery, the saga's calls: none went over TCP.
    assert_eq!(connections_on(port), Vec::<String>::new());
    // The check sees a connection when there is one: a client's call over TCP.
    OrderServiceClient::new(s.tcp.clone())
        .get_order(GetOrderRequest {
            order_id: order.order_id.clone(),
            wait: None,
        })
        .await
        .unwrap();
    assert!(!connections_on(port).is_empty());
    s.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_has_the_same_bad_request_in_process_as_over_tcp() {
    let s = start("", StepPolicies::default()).await;
    let cases = [
        // The handler's validation: two fields.
        (
            place("inproc-bad-1", "", SKU, "tok_unknown"),
            vec!["user_id", "payment_method"],
        ),
        // The string-field guard, before any handler.
        (
            place("inproc-bad-2", "alice", "KB\u{7}", "tok_ok"),
            vec!["lines[0].sku"],
        ),
    ];
    for (request, fields) in cases {
        let mut answers: Vec<Status> = Vec::new();
        for (how, transport) in s.transports() {
            let status = OrderServiceClient::new(traced(transport))
                .place_order(request.clone())
                .await
                .expect_err(how);
            assert_eq!(status.code(), Code::InvalidArgument, "{how}: {status:?}");
            assert_eq!(
                sagaflow_server::error::violated_fields(&status),
                fields,
                "{how}"
            );
            answers.push(status);
        }
        let [local, tcp] = &answers[..] else {
            unreachable!()
        };
        assert_eq!(local.message(), tcp.message());
        assert_eq!(
            local.details(),
            tcp.details(),
            "the same google.rpc.Status bytes"
        );
        assert!(!local.details().is_empty());
    }
    s.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_shorter_than_an_injected_latency_ends_the_call_in_process() {
    const LATENCY: Duration = Duration::from_secs(10);
    const DEADLINE: Duration = Duration::from_millis(200);
    let s = start(
        "GetProduct=latency:10000;DeductInventory=latency:10000",
        StepPolicies {
            call_timeout_ms: 300,
            max_attempts: 2,
            base_delay_ms: 5,
            max_delay_ms: 20,
            ..StepPolicies::default()
        },
    )
    .await;
    let mut codes = Vec::new();
    for (how, transport) in s.transports() {
        let mut request = tonic::Request::new(GetProductRequest { sku: SKU.into() });
        request.set_timeout(DEADLINE);
        let started = Instant::now();
        let status = InventoryServiceClient::new(traced(transport))
            .get_product(request)
            .await
            .expect_err(how);
        let took = started.elapsed();
        assert!(
            took >= DEADLINE && took < LATENCY / 2,
            "{how}: the answer came at the deadline, not after the latency: {took:?}"
        );
        codes.push((status.code(), status.message().to_owned()));
    }
    // tonic reports the expiry of `grpc-timeout` as CANCELLED "Timeout expired" over TCP; the
    // in-process transport answers exactly that, so callers need no second rule (the saga reads
    // it as DEADLINE_EXCEEDED, below).
    assert_eq!(codes[0], codes[1]);
    assert_eq!(codes[0], (Code::Cancelled, "Timeout expired".to_owned()));

    // The saga's step: every attempt ends at its per-attempt deadline, in doubt; the step is
    // compensated and the order fails.
    let local = s.system.transport();
    let order_id = OrderServiceClient::new(traced(local.clone()))
        .place_order(place("inproc-slow", "alice", SKU, "tok_ok"))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .order_id;
    let started = Instant::now();
    let order = OrderServiceClient::new(traced(local.clone()))
        .get_order(sagaflow_tests::wait_for_order(&order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Failed);
    assert!(
        started.elapsed() < LATENCY,
        "the attempts did not wait out the latency: {:?}",
        started.elapsed()
    );
    let state = s
        .system
        .engine()
        .wait_finished(order_id.parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(state.status().to_string(), "COMPENSATED");
    let journal = SagaAdminServiceClient::new(local)
        .get_saga(GetSagaRequest { saga_id: order_id })
        .await
        .unwrap()
        .into_inner()
        .journal;
    let failures: Vec<Value> = journal
        .iter()
        .filter(|e| e.event_type == "step_failed" && e.step == "deduct_inventory")
        .map(|e| serde_json::from_str(&e.detail_json).unwrap())
        .collect();
    assert_eq!(failures.len(), 2, "{journal:#?}");
    for failure in &failures {
        assert_eq!(failure["error"]["code"], "DEADLINE_EXCEEDED", "{failure}");
    }
    s.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_unavailable_reaches_the_in_process_caller() {
    let s = start("GetProduct=error:unavailable:1", StepPolicies::default()).await;
    let mut answers = Vec::new();
    for (how, transport) in s.transports() {
        let status = InventoryServiceClient::new(traced(transport))
            .get_product(GetProductRequest { sku: SKU.into() })
            .await
            .expect_err(how);
        assert_eq!(status.code(), Code::Unavailable, "{how}: {status:?}");
        assert_eq!(status.message(), "injected fault", "{how}");
        // The server answered: not to be mistaken for a refused connection (which the relay
        // and the saga count as never delivered).
        assert!(!status.message().contains("connect error"), "{how}");
        answers.push((
            status.code(),
            status.message().to_owned(),
            status.details().to_vec(),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    s.system.shutdown().await;
}
