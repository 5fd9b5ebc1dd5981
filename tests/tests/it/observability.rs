//! Observability (docs/operations.md, "Watching"): a real `sagaflow dev` process exporting its
//! spans to an in-process OTLP receiver, driven with the real grpcurl.
//!
//! - `one_trace_per_order_with_every_step_handler_and_compensation`: an order placed with
//!   `-H traceparent:…` and a capture-declined one; every span of each — PlaceOrder, the outbox
//!   delivery, StartOrderSaga, each saga step, each service handler, each compensation and the
//!   finalizer, the OrderCompleted delivery to Ranking — is in that order's one trace under the
//!   right parent. The batch exporter's schedule is set to 10 minutes: the spans arrive because
//!   SIGTERM flushes them. `…_over_kafka`: the same with `--event-bus kafka://…` on a broker the
//!   test starts: each consumer's `event.consume` span is a child of the handler that wrote the
//!   event (its `traceparent` header), StartOrderSaga and the consumers' RPCs are not called.
//! - `the_trace_survives_a_crash_and_links_the_recovery`: the same with `sagaflow dev` SIGKILLed
//!   while the saga waits on a slow payment, restarted on the same port and data directory: the
//!   recovered steps are still in the PlaceOrder trace, linked to the restarted engine's
//!   `saga.claim` span. Spans still open at the kill are lost (only the in-flight StartPayment).
//! - `metrics_count_the_outcomes_of_a_mixed_run`: completed, compensated (declined, capture
//!   declined, out of stock) and retried orders; every counter and histogram count scraped from
//!   `--metrics-listen` equals what the sagas' journals and the orders say.
//! - `metrics_listen_on_port_zero_is_a_usage_error`: exit 64 for `serve` and `dev`.
//! - `public_calls_start_a_new_trace_linked_to_the_callers`: without `--trust-traceparent` (the
//!   tests above pass it) grpcurl's `traceparent` is linked from a new root PlaceOrder span, not
//!   adopted; the internal hops stay in the new trace; unknown methods' spans are `_OTHER`.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    time::Duration,
};

use sagaflow_testkit::{
    eventually_blocking, grpcurl_json,
    otlp::{Collector, KIND_SERVER, Received, STATUS_ERROR},
};
use sagaflow_tests::{Process, free_port};
use serde_json::{Value, json};

const ORDER: &str = "sagaflow.order.v1.OrderService";
const COUPON: &str = "sagaflow.coupon.v1.CouponService";
const INVENTORY: &str = "sagaflow.inventory.v1.InventoryService";
const PAYMENT: &str = "sagaflow.payment.v1.PaymentService";
const POINT: &str = "sagaflow.point.v1.PointService";
const RANKING: &str = "sagaflow.ranking.v1.RankingService";
const ORCHESTRATOR: &str = "sagaflow.orchestrator.v1.OrchestratorService";
const ADMIN: &str = "sagaflow.workflow.v1.SagaAdminService";

/// `service.name` of `sagaflow dev`.
const SERVICE: &str = "sagaflow-dev";
const WAIT: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `sagaflow dev` on `listen` and `data`, exporting to `collector`, with `extra` flags and
/// `--trust-traceparent`: these tests follow grpcurl's trace through the whole saga, as a
/// deployment that trusts its clients' trace context sees it (the default, linking instead, is
/// `public_calls_start_a_new_trace_linked_to_the_callers`).
fn start_dev(
    listen: &str,
    data: &Path,
    collector: &Collector,
    schedule_delay_ms: &str,
    extra: &[&str],
) -> Process {
    let mut flags = vec!["--trust-traceparent"];
    flags.extend_from_slice(extra);
    start_dev_exporting(listen, data, collector, schedule_delay_ms, &flags)
}

/// `sagaflow dev` on `listen` and `data`, exporting to `collector`, with `extra` flags only.
fn start_dev_exporting(
    listen: &str,
    data: &Path,
    collector: &Collector,
    schedule_delay_ms: &str,
    extra: &[&str],
) -> Process {
    let endpoint = collector.endpoint();
    sagaflow_tests::start_dev(
        listen,
        data,
        extra,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Milliseconds; honoured by opentelemetry_sdk's BatchConfig.
            ("OTEL_BSP_SCHEDULE_DELAY", schedule_delay_ms),
        ],
    )
}

/// Places an order through grpcurl with `-H traceparent:…` (when given); returns its id.
fn place(addr: &str, traceparent: Option<&str>, body: Value) -> String {
    let header = traceparent.map(|tp| format!("traceparent: {tp}"));
    let body = body.to_string();
    let mut args = Vec::new();
    if let Some(header) = &header {
        args.extend(["-H", header.as_str()]);
    }
    args.extend(["-d", body.as_str()]);
    let reply = grpcurl_json(addr, &args, &format!("{ORDER}/PlaceOrder"));
    assert_eq!(reply["order"]["status"], "ORDER_STATUS_PENDING", "{reply}");
    reply["order"]["orderId"].as_str().unwrap().to_owned()
}

/// GetOrder with a 60 s wait: the order once terminal.
fn wait_order(addr: &str, order_id: &str) -> Value {
    let order = grpcurl_json(
        addr,
        &[
            "-d",
            &json!({ "order_id": order_id, "wait": "60s" }).to_string(),
        ],
        &format!("{ORDER}/GetOrder"),
    )["order"]
        .clone();
    assert_ne!(order["status"], "ORDER_STATUS_PENDING", "{order}");
    order
}

fn get_saga(addr: &str, saga_id: &str) -> Value {
    grpcurl_json(
        addr,
        &["-d", &json!({ "saga_id": saga_id }).to_string()],
        &format!("{ADMIN}/GetSaga"),
    )
}

/// Units of `sku` that Ranking has recorded (OrderCompleted delivered by the relay).
fn units_ranked(addr: &str, sku: &str) -> i64 {
    let top = grpcurl_json(
        addr,
        &["-d", r#"{"limit":1000}"#],
        &format!("{RANKING}/TopProducts"),
    );
    top["products"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["sku"] == sku)
        .map(|p| {
            p["unitsSold"]
                .as_str()
                .unwrap_or("0")
                .parse::<i64>()
                .unwrap()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// trace checks

/// One step call the saga must have made: the step, its phase, the RPC it calls.
type Call = (&'static str, &'static str, String);

fn rpc(service: &str, method: &str) -> String {
    format!("{service}/{method}")
}

/// What an order's trace must contain.
struct Expected {
    /// Every step attempt's call, in any order.
    calls: Vec<Call>,
    /// The outbox event written by the saga's last command and its consumer's RPC (if any).
    final_event: (&'static str, &'static str, Option<String>),
    /// Names of server spans whose parent may be missing (open when the process was killed).
    lost_parents_ok: &'static [&'static str],
    /// Each (step, phase) ran exactly once (no retries, nothing lost).
    one_attempt_each: bool,
    /// The events went through Kafka: each consumer's `event.consume` span is a child of the
    /// handler that wrote the event (its `traceparent` header), with no RPC between.
    kafka: bool,
}

/// The spans of one order's trace, checked.
struct OrderTrace<'a> {
    spans: Vec<&'a Received>,
    /// The `start_order_saga` handler span: the saga's stored trace context.
    saga_parent: &'a Received,
    /// The order's `saga.step` spans.
    steps: Vec<&'a Received>,
}

impl<'a> OrderTrace<'a> {
    fn children(&self, parent: &Received) -> Vec<&'a Received> {
        let id = parent.span_id();
        self.spans
            .iter()
            .copied()
            .filter(|s| s.parent_span_id() == id)
            .collect()
    }

    fn child(&self, parent: &Received, name: &str) -> &'a Received {
        let found: Vec<_> = self
            .children(parent)
            .into_iter()
            .filter(|s| s.name() == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one {name:?} under {:?} expected; children: {:?}",
            parent.name(),
            self.children(parent)
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
        );
        found[0]
    }

    fn step_spans(&self, step: &str, phase: &str) -> Vec<&'a Received> {
        self.steps
            .iter()
            .copied()
            .filter(|s| {
                s.str_attr("saga.step") == Some(step) && s.str_attr("saga.phase") == Some(phase)
            })
            .collect()
    }
}

fn outbox_delivery<'a>(trace: &OrderTrace<'a>, event_type: &str) -> &'a Received {
    let found: Vec<_> = trace
        .spans
        .iter()
        .copied()
        .filter(|s| {
            s.name() == "outbox.deliver" && s.str_attr("outbox.event_type") == Some(event_type)
        })
        .collect();
    assert_eq!(found.len(), 1, "one {event_type} delivery span expected");
    found[0]
}

/// The `event.consume` spans of `event_type` under `parent` (the handler that wrote the event).
fn consumes<'a>(trace: &OrderTrace<'a>, parent: &Received, event_type: &str) -> Vec<&'a Received> {
    trace
        .children(parent)
        .into_iter()
        .filter(|s| {
            s.name() == "event.consume" && s.str_attr("outbox.event_type") == Some(event_type)
        })
        .collect()
}

/// Checks that every span of order `order_id` is in trace `trace`, under the right parent, as
/// `expected` says; `client_span` is the span id grpcurl sent.
fn check_order_trace<'a>(
    all: &'a [Received],
    trace: &str,
    client_span: &str,
    order_id: &str,
    expected: &Expected,
) -> OrderTrace<'a> {
    let spans: Vec<&Received> = all.iter().filter(|s| s.trace_id() == trace).collect();
    assert!(!spans.is_empty(), "no span of trace {trace}");
    let ids: HashSet<String> = spans.iter().map(|s| s.span_id()).collect();
    for span in &spans {
        assert_eq!(span.service_name.as_deref(), Some(SERVICE), "{span:?}");
        let parent = span.parent_span_id();
        assert!(
            parent == client_span
                || ids.contains(&parent)
                || expected.lost_parents_ok.contains(&span.name()),
            "{} ({}) has parent {parent}, which is not in trace {trace}",
            span.name(),
            span.span_id()
        );
    }

    // PlaceOrder, under grpcurl's span, and what it did: price through Inventory, write the
    // outbox row that the relay delivers to StartOrderSaga.
    let roots: Vec<_> = spans
        .iter()
        .copied()
        .filter(|s| s.parent_span_id() == client_span)
        .collect();
    assert_eq!(roots.len(), 1, "one span under grpcurl's: {roots:?}");
    let place_order = roots[0];
    assert_eq!(place_order.name(), rpc(ORDER, "PlaceOrder"));
    assert_eq!(place_order.span.kind, KIND_SERVER);
    assert_eq!(place_order.str_attr("rpc.system"), Some("grpc"));
    assert_eq!(place_order.str_attr("rpc.service"), Some(ORDER));
    assert_eq!(place_order.str_attr("rpc.method"), Some("PlaceOrder"));
    assert_eq!(place_order.int_attr("rpc.grpc.status_code"), Some(0));

    let mut checked = OrderTrace {
        spans: spans.clone(),
        saga_parent: place_order,
        steps: Vec::new(),
    };
    let handler = checked.child(place_order, "place_order");
    let pricing = checked.child(handler, &rpc(INVENTORY, "BatchGetProducts"));
    assert_eq!(pricing.span.kind, KIND_SERVER);
    let created = outbox_delivery(&checked, "OrderCreated");
    assert_eq!(created.parent_span_id(), handler.span_id());
    assert_eq!(created.str_attr("outbox.aggregate_id"), Some(order_id));
    let start_handler = if expected.kafka {
        // Published, not called: the orchestrator's consumer started the saga inside its
        // `event.consume` span (Ranking's group consumes the event too, and passes it).
        assert!(checked.children(created).is_empty(), "{created:?}");
        let starts: Vec<&Received> = consumes(&checked, handler, "OrderCreated")
            .into_iter()
            .flat_map(|consume| checked.children(consume))
            .filter(|s| s.name() == "start_order_saga")
            .collect();
        assert_eq!(
            starts.len(),
            1,
            "one saga start under the consumers: {starts:?}"
        );
        starts[0]
    } else {
        let start = checked.child(created, &rpc(ORCHESTRATOR, "StartOrderSaga"));
        checked.child(start, "start_order_saga")
    };
    checked.saga_parent = start_handler;

    // Every step span of this saga, wherever it was exported, is in this trace, directly under
    // the context the saga stored at its start.
    let steps: Vec<&Received> = all
        .iter()
        .filter(|s| s.name() == "saga.step" && s.str_attr("saga.id") == Some(order_id))
        .collect();
    for step in &steps {
        assert_eq!(
            step.trace_id(),
            trace,
            "step outside the order's trace: {step:?}"
        );
        assert_eq!(step.parent_span_id(), start_handler.span_id(), "{step:?}");
        assert_eq!(step.str_attr("saga.definition"), Some("order"));
        assert!(
            step.int_attr("saga.attempt").is_some_and(|a| a >= 1),
            "{step:?}"
        );
    }
    checked.steps = steps;

    // Each expected call: its step span, and the service's server span as that span's child.
    let mut server_spans_expected =
        vec![rpc(ORDER, "PlaceOrder"), rpc(INVENTORY, "BatchGetProducts")];
    if !expected.kafka {
        server_spans_expected.push(rpc(ORCHESTRATOR, "StartOrderSaga"));
    }
    let mut seen = HashSet::new();
    for (step, phase, method) in &expected.calls {
        let attempts = checked.step_spans(step, phase);
        assert!(!attempts.is_empty(), "no span of {step} ({phase})");
        if expected.one_attempt_each {
            assert_eq!(attempts.len(), 1, "{step} ({phase}) ran once");
            assert_eq!(attempts[0].int_attr("saga.attempt"), Some(1));
        }
        for attempt in &attempts {
            let servers: Vec<_> = checked
                .children(attempt)
                .into_iter()
                .filter(|s| s.name() == method.as_str())
                .collect();
            // A failed attempt's call may have been lost with a killed process; one that
            // succeeded was answered by exactly one server span.
            if expected.one_attempt_each || attempt.str_attr("saga.outcome") == Some("ok") {
                assert_eq!(
                    servers.len(),
                    1,
                    "one {method} under {step} ({phase}) {attempt:?}"
                );
            }
            assert!(servers.len() <= 1, "{servers:?}");
            for server in servers {
                assert_eq!(server.span.kind, KIND_SERVER);
                server_spans_expected.push(method.clone());
            }
        }
        seen.insert((*step, *phase));
    }
    for step in &checked.steps {
        let key = (
            step.str_attr("saga.step").unwrap(),
            step.str_attr("saga.phase").unwrap(),
        );
        assert!(
            expected.calls.iter().any(|(s, p, _)| (*s, *p) == key),
            "unexpected step span {key:?}"
        );
    }
    assert_eq!(seen.len(), expected.calls.len());

    // The saga's last command wrote an outbox event; its delivery is in the trace too.
    let (last_handler, event_type, consumer) = &expected.final_event;
    let finals: Vec<_> = spans
        .iter()
        .copied()
        .filter(|s| s.name() == *last_handler)
        .collect();
    assert_eq!(finals.len(), 1, "one {last_handler} handler span");
    let delivery = outbox_delivery(&checked, event_type);
    assert_eq!(delivery.parent_span_id(), finals[0].span_id());
    if expected.kafka {
        assert!(checked.children(delivery).is_empty(), "{delivery:?}");
        if consumer.is_some() {
            assert!(
                !consumes(&checked, finals[0], event_type).is_empty(),
                "{event_type} consumed within the order's trace"
            );
        }
    } else if let Some(consumer) = consumer {
        checked.child(delivery, consumer);
        server_spans_expected.push(consumer.clone());
    } else {
        assert!(checked.children(delivery).is_empty());
    }

    // Inventory's events (DeductInventory's InventoryDeducted, RestoreInventory's
    // InventoryRestored) are delivered within the order's trace too: to Ranking's
    // RecordInventoryEvent (gRPC) or its consumer (Kafka).
    let inventory_events: Vec<&Received> = spans
        .iter()
        .copied()
        .filter(|s| {
            s.name() == "outbox.deliver"
                && s.str_attr("outbox.event_type")
                    .is_some_and(|t| t.starts_with("Inventory"))
        })
        .collect();
    assert!(!inventory_events.is_empty(), "no Inventory event delivered");
    for delivery in inventory_events {
        let event_type = delivery.str_attr("outbox.event_type").unwrap_or_default();
        if expected.kafka {
            assert!(checked.children(delivery).is_empty(), "{delivery:?}");
            let writer = spans
                .iter()
                .find(|s| s.span_id() == delivery.parent_span_id())
                .unwrap_or_else(|| panic!("the writer of {delivery:?}"));
            assert!(
                !consumes(&checked, writer, event_type).is_empty(),
                "{event_type} consumed within the order's trace"
            );
        } else {
            checked.child(delivery, &rpc(RANKING, "RecordInventoryEvent"));
            server_spans_expected.push(rpc(RANKING, "RecordInventoryEvent"));
        }
    }

    // No other server span in the trace: every handler is accounted for.
    if expected.lost_parents_ok.is_empty() {
        let mut got: Vec<String> = spans
            .iter()
            .filter(|s| s.span.kind == KIND_SERVER)
            .map(|s| s.name().to_owned())
            .collect();
        got.sort();
        server_spans_expected.sort();
        assert_eq!(got, server_spans_expected);
    }
    checked
}

/// The calls of an order with a coupon and points up to and including the pivot.
fn forward_calls_to_pivot() -> Vec<Call> {
    vec![
        ("use_coupon", "forward", rpc(COUPON, "UseCoupon")),
        ("apply_coupon", "forward", rpc(ORDER, "ApplyCoupon")),
        (
            "deduct_inventory",
            "forward",
            rpc(INVENTORY, "DeductInventory"),
        ),
        ("start_payment", "forward", rpc(PAYMENT, "StartPayment")),
        ("deduct_points", "forward", rpc(POINT, "DeductPoints")),
        (
            "complete_payment",
            "forward",
            rpc(PAYMENT, "CompletePayment"),
        ),
    ]
}

const TRACE_OK: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_OK: &str = "b7ad6b7169203331";
const TRACE_DECLINED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_DECLINED: &str = "00f067aa0ba902b7";
const TRACE_CRASH: &str = "5c1e2f3a4b5c6d7e8f90a1b2c3d4e5f6";
const CLIENT_CRASH: &str = "1a2b3c4d5e6f7081";

fn tp(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

#[test]
fn one_trace_per_order_with_every_step_handler_and_compensation() {
    one_trace_per_order(None);
}

/// The same over Kafka (`--event-bus kafka://…`, a broker started by the test): the
/// `traceparent` header carries each order's trace through the broker to the consumers.
#[test]
fn one_trace_per_order_with_every_step_handler_and_compensation_over_kafka() {
    let broker = sagaflow_testkit::kafka::Broker::start();
    one_trace_per_order(Some(&broker));
}

fn one_trace_per_order(kafka: Option<&sagaflow_testkit::kafka::Broker>) {
    let rt = runtime();
    let collector = rt.block_on(Collector::start());
    let dir = tempfile::tempdir().unwrap();
    let bus = kafka.map(|b| format!("kafka://{}", b.bootstrap()));
    let extra: Vec<&str> = match &bus {
        Some(bus) => vec!["--event-bus", bus, "--kafka-session-timeout-ms", "6000"],
        None => Vec::new(),
    };
    // A 10-minute export schedule: what arrives, arrives because SIGTERM flushed it.
    let mut dev = start_dev(
        "127.0.0.1:0",
        &dir.path().join("data"),
        &collector,
        "600000",
        &extra,
    );
    let addr = dev.addr().to_owned();

    // The failing order first, to its end: its OrderFailed delivery precedes the other order's.
    let declined = place(
        &addr,
        Some(&tp(TRACE_DECLINED, CLIENT_DECLINED)),
        json!({
            "request_id": "obs-declined", "user_id": "bob",
            "lines": [{ "sku": "MS-001", "quantity": 1 }],
            "coupon_code": "WELCOME-BOB", "points": 1000, "payment_method": "tok_capture_decline"
        }),
    );
    let order = wait_order(&addr, &declined);
    assert_eq!(order["status"], "ORDER_STATUS_FAILED", "{order}");
    assert_eq!(order["failureReason"], "FAILURE_REASON_PAYMENT_DECLINED");

    let ok = place(
        &addr,
        Some(&tp(TRACE_OK, CLIENT_OK)),
        json!({
            "request_id": "obs-ok", "user_id": "alice",
            "lines": [{ "sku": "DK-001", "quantity": 2 }],
            "coupon_code": "WELCOME-ALICE", "points": 5000, "payment_method": "tok_ok"
        }),
    );
    let order = wait_order(&addr, &ok);
    assert_eq!(order["status"], "ORDER_STATUS_COMPLETED", "{order}");
    // The relay delivered OrderCompleted to Ranking (the last call of the order's trace).
    eventually_blocking("Ranking to record the order", WAIT, || {
        (units_ranked(&addr, "DK-001") == 2).then_some(())
    });

    // Nothing of the order's end was exported on schedule: the flush at exit must send it.
    let ranked = |spans: &[Received]| {
        spans.iter().any(|s| {
            s.trace_id() == TRACE_OK
                && if kafka.is_some() {
                    s.name() == "event.consume"
                        && s.str_attr("outbox.event_type") == Some("OrderCompleted")
                } else {
                    s.name() == rpc(RANKING, "RecordOrderCompleted")
                }
        })
    };
    assert!(!ranked(&collector.spans()), "exported before SIGTERM");
    assert_eq!(dev.terminate(WAIT), Some(0), "{}", dev.logs());
    let spans = rt.block_on(collector.wait_for(
        Duration::from_secs(10),
        "both orders' last spans",
        |spans| {
            ranked(spans)
                && spans.iter().any(|s| {
                    s.trace_id() == TRACE_DECLINED
                        && s.name() == "outbox.deliver"
                        && s.str_attr("outbox.event_type") == Some("OrderFailed")
                })
        },
    ));

    // The completed order: seven steps, one call each, then Ranking.
    let mut calls = forward_calls_to_pivot();
    calls.push(("complete_order", "forward", rpc(ORDER, "CompleteOrder")));
    let trace = check_order_trace(
        &spans,
        TRACE_OK,
        CLIENT_OK,
        &ok,
        &Expected {
            calls,
            final_event: (
                "complete_order",
                "OrderCompleted",
                Some(rpc(RANKING, "RecordOrderCompleted")),
            ),
            lost_parents_ok: &[],
            one_attempt_each: true,
            kafka: kafka.is_some(),
        },
    );
    for step in &trace.steps {
        assert_eq!(step.str_attr("saga.outcome"), Some("ok"), "{step:?}");
        assert!(step.links().is_empty(), "no recovery, no link: {step:?}");
    }

    // The capture-declined order: six steps, the pivot failing, four compensations in reverse
    // order, the finalizer's FailOrder; its OrderFailed has no consumer.
    let mut calls = forward_calls_to_pivot();
    calls.extend([
        ("deduct_points", "compensating", rpc(POINT, "RestorePoints")),
        (
            "start_payment",
            "compensating",
            rpc(PAYMENT, "CancelPayment"),
        ),
        (
            "deduct_inventory",
            "compensating",
            rpc(INVENTORY, "RestoreInventory"),
        ),
        ("use_coupon", "compensating", rpc(COUPON, "RestoreCoupon")),
        ("finalize", "finalizing", rpc(ORDER, "FailOrder")),
    ]);
    let trace = check_order_trace(
        &spans,
        TRACE_DECLINED,
        CLIENT_DECLINED,
        &declined,
        &Expected {
            calls,
            final_event: ("fail_order", "OrderFailed", None),
            lost_parents_ok: &[],
            one_attempt_each: true,
            kafka: kafka.is_some(),
        },
    );
    let pivot = trace.step_spans("complete_payment", "forward")[0];
    assert_eq!(pivot.str_attr("saga.outcome"), Some("business_error"));
    assert_eq!(pivot.status_code(), STATUS_ERROR);
    let capture = trace.child(pivot, &rpc(PAYMENT, "CompletePayment"));
    assert_eq!(
        capture.int_attr("rpc.grpc.status_code"),
        Some(tonic::Code::FailedPrecondition as i64)
    );
    // Compensations ran in reverse order of the steps (their spans start one after another).
    let started = |step: &str| {
        trace.step_spans(step, "compensating")[0]
            .span
            .start_time_unix_nano
    };
    assert!(started("deduct_points") < started("start_payment"));
    assert!(started("start_payment") < started("deduct_inventory"));
    assert!(started("deduct_inventory") < started("use_coupon"));
    assert!(
        started("use_coupon")
            < trace.step_spans("finalize", "finalizing")[0]
                .span
                .start_time_unix_nano
    );

    rt.block_on(collector.stop());
}

#[test]
fn the_trace_survives_a_crash_and_links_the_recovery() {
    let rt = runtime();
    let collector = rt.block_on(Collector::start());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    // Spans are exported every 100 ms, so those finished before the kill reach the receiver.
    // `tok_slow` answers after 10 s, past every 2 s attempt: the saga waits in start_payment.
    let mut dev = start_dev(&listen, &data, &collector, "100", &["--lease-ms", "1000"]);
    let order_id = place(
        &listen,
        Some(&tp(TRACE_CRASH, CLIENT_CRASH)),
        json!({
            "request_id": "obs-crash", "user_id": "user-003",
            "lines": [{ "sku": "HS-001", "quantity": 1 }],
            "points": 1000, "payment_method": "tok_slow"
        }),
    );
    eventually_blocking("the saga to wait in start_payment", WAIT, || {
        (get_saga(&listen, &order_id)["saga"]["currentStep"] == "start_payment").then_some(())
    });
    // What finished before the kill was exported: the first step.
    rt.block_on(
        collector.wait_for(WAIT, "deduct_inventory's span", |spans| {
            spans.iter().any(|s| {
                s.str_attr("saga.id") == Some(order_id.as_str())
                    && s.str_attr("saga.step") == Some("deduct_inventory")
            })
        }),
    );
    let saga = get_saga(&listen, &order_id)["saga"].clone();
    assert_eq!(saga["status"], "SAGA_STATUS_RUNNING", "{saga}");
    assert_eq!(saga["currentStep"], "start_payment", "{saga}");
    dev.kill();

    // Restarted on the same port and data: it claims the saga once the lease expired and
    // payments now answer at once.
    let mut dev = start_dev(
        &listen,
        &data,
        &collector,
        "100",
        &["--lease-ms", "1000", "--gateway-slow-ms", "100"],
    );
    let order = wait_order(&listen, &order_id);
    assert_eq!(order["status"], "ORDER_STATUS_COMPLETED", "{order}");
    let journal = get_saga(&listen, &order_id)["journal"].clone();
    assert!(
        journal
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["eventType"] == "recovered"),
        "the restarted engine recovered the saga: {journal}"
    );
    eventually_blocking("Ranking to record the order", WAIT, || {
        (units_ranked(&listen, "HS-001") == 1).then_some(())
    });
    assert_eq!(dev.terminate(WAIT), Some(0), "{}", dev.logs());

    let spans = rt.block_on(collector.wait_for(
        Duration::from_secs(10),
        "the recovered order's last span",
        |spans| {
            spans.iter().any(|s| {
                s.trace_id() == TRACE_CRASH && s.name() == rpc(RANKING, "RecordOrderCompleted")
            })
        },
    ));
    let trace = check_order_trace(
        &spans,
        TRACE_CRASH,
        CLIENT_CRASH,
        &order_id,
        &Expected {
            calls: vec![
                (
                    "deduct_inventory",
                    "forward",
                    rpc(INVENTORY, "DeductInventory"),
                ),
                ("start_payment", "forward", rpc(PAYMENT, "StartPayment")),
                ("deduct_points", "forward", rpc(POINT, "DeductPoints")),
                (
                    "complete_payment",
                    "forward",
                    rpc(PAYMENT, "CompletePayment"),
                ),
                ("complete_order", "forward", rpc(ORDER, "CompleteOrder")),
            ],
            final_event: (
                "complete_order",
                "OrderCompleted",
                Some(rpc(RANKING, "RecordOrderCompleted")),
            ),
            // The StartPayment call in flight at the kill: its step span never ended.
            lost_parents_ok: &["sagaflow.payment.v1.PaymentService/StartPayment"],
            one_attempt_each: false,
            kafka: false,
        },
    );

    // The recovery: the restarted engine's claim span, in its own trace, links to the saga's
    // stored context; every step run after it links back to it.
    let claims: Vec<&Received> = spans
        .iter()
        .filter(|s| {
            s.name() == "saga.claim"
                && s.links()
                    .contains(&(TRACE_CRASH.to_owned(), trace.saga_parent.span_id()))
        })
        .collect();
    assert_eq!(claims.len(), 1, "one claim of the saga: {claims:?}");
    let claim = claims[0];
    assert_ne!(claim.trace_id(), TRACE_CRASH);
    assert_eq!(claim.service_name.as_deref(), Some(SERVICE));
    let recovery = (claim.trace_id(), claim.span_id());
    let before = trace.step_spans("deduct_inventory", "forward");
    assert_eq!(before.len(), 1);
    assert!(
        before[0].links().is_empty(),
        "run before the crash: no link"
    );
    for step in ["deduct_points", "complete_payment", "complete_order"] {
        let spans = trace.step_spans(step, "forward");
        assert_eq!(spans.len(), 1, "{step}");
        assert_eq!(
            spans[0].links(),
            std::slice::from_ref(&recovery),
            "{step} links the recovery"
        );
        assert_eq!(spans[0].str_attr("saga.outcome"), Some("ok"));
    }
    // The payment attempt that succeeded ran after the recovery; any attempt exported before
    // the kill (timed out) did not.
    let payments = trace.step_spans("start_payment", "forward");
    let succeeded: Vec<_> = payments
        .iter()
        .filter(|s| s.str_attr("saga.outcome") == Some("ok"))
        .collect();
    assert_eq!(succeeded.len(), 1, "{payments:?}");
    assert_eq!(succeeded[0].links(), std::slice::from_ref(&recovery));
    for failed in payments
        .iter()
        .filter(|s| s.str_attr("saga.outcome") != Some("ok"))
    {
        assert_eq!(failed.str_attr("saga.outcome"), Some("transient_error"));
        assert!(failed.links().is_empty());
    }
    assert_eq!(
        trace
            .child(succeeded[0], &rpc(PAYMENT, "StartPayment"))
            .int_attr("rpc.grpc.status_code"),
        Some(0)
    );

    rt.block_on(collector.stop());
}

// ---------------------------------------------------------------------------------------------
// metrics

/// GET http://addr/metrics: the Prometheus text.
fn scrape(addr: &str) -> String {
    sagaflow_tests::scrape_metrics(addr)
}

/// The samples of `text`: `name{labels}` → value (labels as rendered).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of `metric`'s samples whose labels include every `label="value"` of `labels`.
fn total(samples: &BTreeMap<String, f64>, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (name, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            name == metric
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// What the sagas' journals say the metrics must be.
#[derive(Debug, Default)]
struct FromJournals {
    /// (step, phase, outcome) → attempts.
    attempts: BTreeMap<(String, String, String), f64>,
    /// (step, phase) → retries scheduled.
    retries: BTreeMap<(String, String), f64>,
    /// step → compensations that succeeded.
    compensations: BTreeMap<String, f64>,
    /// Claims beyond each saga's start.
    claims: f64,
}

fn from_journals(addr: &str, saga_ids: &[String]) -> FromJournals {
    let mut expected = FromJournals::default();
    for id in saga_ids {
        let journal = get_saga(addr, id)["journal"].clone();
        let mut acquired = 0.0;
        for entry in journal.as_array().unwrap() {
            let kind = entry["eventType"].as_str().unwrap();
            let step = entry["step"].as_str().unwrap_or("finalize").to_owned();
            let detail: Value =
                serde_json::from_str(entry["detailJson"].as_str().unwrap_or("{}")).unwrap();
            let retryable = detail["error"]["retryable"].as_bool() == Some(true);
            let phase = match kind {
                k if k.starts_with("step_") => "forward",
                k if k.starts_with("compensation_") => "compensating",
                k if k.starts_with("finalizer_") => "finalizing",
                _ => "",
            };
            let outcome = match kind {
                "step_succeeded" | "compensation_succeeded" | "finalizer_succeeded" => "ok",
                "step_failed" | "compensation_failed" | "finalizer_failed" if retryable => {
                    "transient_error"
                }
                "step_failed" | "compensation_failed" | "finalizer_failed" => "business_error",
                _ => "",
            };
            if !outcome.is_empty() {
                *expected
                    .attempts
                    .entry((step.clone(), phase.to_owned(), outcome.to_owned()))
                    .or_default() += 1.0;
            }
            let retry = match kind {
                "step_failed" => detail["outcome"] == "retry",
                "compensation_failed" | "finalizer_failed" => !detail["next_attempt_at"].is_null(),
                _ => false,
            };
            if retry {
                *expected
                    .retries
                    .entry((step.clone(), phase.to_owned()))
                    .or_default() += 1.0;
            }
            if kind == "compensation_succeeded" {
                *expected.compensations.entry(step).or_default() += 1.0;
            }
            if kind == "lease_acquired" {
                acquired += 1.0;
            }
        }
        expected.claims += acquired - 1.0;
    }
    expected
}

#[test]
fn metrics_count_the_outcomes_of_a_mixed_run() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut dev = sagaflow_tests::start_dev(
        "127.0.0.1:0",
        &dir.path().join("data"),
        &[
            "--metrics-listen",
            &metrics_addr,
            // Retries: half the inventory deductions fail transiently before the handler runs.
            "--faults",
            "DeductInventory=error:unavailable:0.5",
        ],
        &[],
    );
    dev.wait_for_log("metrics endpoint listening", WAIT);
    let addr = dev.addr().to_owned();
    // Off by default, on here: the endpoint answers before any saga ran.
    let before = samples(&scrape(&metrics_addr));
    assert_eq!(total(&before, "sagaflow_sagas_started_total", &[]), 0.0);
    // Every alerting counter is exported at zero from the start, so that the first increase
    // after a start is seen by a rule like `increase(…[5m]) > 0`.
    let scraped = scrape(&metrics_addr);
    for series in [
        "sagaflow_sagas_needs_attention_total",
        "sagaflow_sagas_compensated_total",
        "sagaflow_saga_lease_losses_total",
        "sagaflow_saga_unreadable_parked_total",
        "sagaflow_outbox_delivery_failures_total",
        "sagaflow_outbox_dead_lettered_total",
    ] {
        assert!(
            scraped.lines().any(|l| l.starts_with(series)),
            "{series} is exported before it first happens:\n{scraped}"
        );
    }

    let orders: Vec<(Value, &str)> = vec![
        (
            json!({ "user_id": "user-001", "lines": [{ "sku": "KB-001", "quantity": 1 }], "points": 1000, "payment_method": "tok_ok" }),
            "ORDER_STATUS_COMPLETED",
        ),
        (
            json!({ "user_id": "user-002", "lines": [{ "sku": "MS-001", "quantity": 2 }], "payment_method": "tok_ok" }),
            "ORDER_STATUS_COMPLETED",
        ),
        (
            json!({ "user_id": "alice", "lines": [{ "sku": "CB-001", "quantity": 1 }], "coupon_code": "WELCOME-ALICE", "payment_method": "tok_ok" }),
            "ORDER_STATUS_COMPLETED",
        ),
        (
            json!({ "user_id": "user-004", "lines": [{ "sku": "HS-001", "quantity": 1 }], "points": 500, "payment_method": "tok_decline" }),
            "ORDER_STATUS_FAILED",
        ),
        (
            json!({ "user_id": "bob", "lines": [{ "sku": "WC-001", "quantity": 1 }], "coupon_code": "WELCOME-BOB", "points": 1000, "payment_method": "tok_capture_decline" }),
            "ORDER_STATUS_FAILED",
        ),
        (
            json!({ "user_id": "user-005", "lines": [{ "sku": "SOLD-001", "quantity": 1 }], "payment_method": "tok_ok" }),
            "ORDER_STATUS_FAILED",
        ),
    ];
    let mut ids = Vec::new();
    let mut completed = 0.0;
    let mut failed = 0.0;
    for (i, (mut body, _)) in orders.clone().into_iter().enumerate() {
        body["request_id"] = json!(format!("metrics-{i}"));
        ids.push(place(&addr, None, body));
    }
    for (id, (_, planned)) in ids.iter().zip(&orders) {
        let order = wait_order(&addr, id);
        // An injected fault may exhaust a deduction's attempts: the order then fails too.
        let status = order["status"].as_str().unwrap();
        assert!(
            status == *planned || status == "ORDER_STATUS_FAILED",
            "{order}"
        );
        if status == "ORDER_STATUS_COMPLETED" {
            completed += 1.0;
        } else {
            failed += 1.0;
        }
    }
    assert!(completed >= 1.0, "some order completed");
    let placed = ids.len() as f64;

    // The relay delivers the last events after the orders' last commands; the backlog is
    // sampled once a second.
    let text = eventually_blocking(
        "every outbox event delivered and the backlog sampled empty",
        WAIT,
        || {
            let text = scrape(&metrics_addr);
            let done = {
                let s = samples(&text);
                let delivered = |event_type: &str| {
                    total(
                        &s,
                        "sagaflow_outbox_delivered_total",
                        &[("event_type", event_type)],
                    )
                };
                delivered("OrderCreated") == placed
                    && delivered("OrderCompleted") == completed
                    && delivered("OrderFailed") == failed
                    && ["order", "inventory"].iter().all(|family| {
                        s.get(&format!("sagaflow_outbox_pending{{family=\"{family}\"}}"))
                            == Some(&0.0)
                    })
            };
            done.then_some(text)
        },
    );
    let s = samples(&text);
    assert_eq!(
        s.get("sagaflow_outbox_oldest_pending_age_seconds{family=\"order\"}"),
        Some(&0.0),
        "{text}"
    );
    assert_eq!(
        total(&s, "sagaflow_outbox_delivery_failures_total", &[]),
        0.0
    );
    assert!(
        text.contains("# TYPE sagaflow_saga_step_duration_seconds histogram"),
        "{text}"
    );

    // Saga outcomes equal the orders'.
    let order = [("definition", "order")];
    assert_eq!(
        total(&s, "sagaflow_sagas_started_total", &order),
        placed,
        "{text}"
    );
    assert_eq!(
        total(&s, "sagaflow_sagas_completed_total", &order),
        completed,
        "{text}"
    );
    assert_eq!(
        total(&s, "sagaflow_sagas_compensated_total", &order),
        failed,
        "{text}"
    );
    assert_eq!(
        total(&s, "sagaflow_sagas_needs_attention_total", &order),
        0.0
    );
    assert_eq!(s.get("sagaflow_sagas_in_flight"), Some(&0.0), "{text}");
    assert_eq!(total(&s, "sagaflow_saga_lease_losses_total", &[]), 0.0);

    // Attempts, retries, compensations and claims equal what the journals recorded.
    let expected = from_journals(&addr, &ids);
    let retried: f64 = expected.retries.values().sum();
    for ((step, phase, outcome), count) in &expected.attempts {
        assert_eq!(
            total(
                &s,
                "sagaflow_saga_step_duration_seconds_count",
                &[("step", step), ("phase", phase), ("outcome", outcome)]
            ),
            *count,
            "attempts of {step} ({phase}) ending {outcome}:\n{text}"
        );
    }
    let attempts: f64 = expected.attempts.values().sum();
    assert_eq!(
        total(&s, "sagaflow_saga_step_duration_seconds_count", &order),
        attempts,
        "{text}"
    );
    for ((step, phase), count) in &expected.retries {
        assert_eq!(
            total(
                &s,
                "sagaflow_saga_step_retries_total",
                &[("step", step), ("phase", phase)]
            ),
            *count,
            "retries of {step} ({phase}):\n{text}"
        );
    }
    assert_eq!(
        total(&s, "sagaflow_saga_step_retries_total", &order),
        retried
    );
    for (step, count) in &expected.compensations {
        assert_eq!(
            total(&s, "sagaflow_saga_compensations_total", &[("step", step)]),
            *count,
            "compensations of {step}:\n{text}"
        );
    }
    let compensations: f64 = expected.compensations.values().sum();
    assert_eq!(
        total(&s, "sagaflow_saga_compensations_total", &order),
        compensations
    );
    assert!(
        compensations >= 3.0,
        "the declined orders were compensated: {text}"
    );
    assert_eq!(
        total(&s, "sagaflow_saga_lease_claims_total", &[]),
        expected.claims
    );
    eprintln!(
        "mixed run: {completed} completed, {failed} failed, {retried} retries, {compensations} compensations"
    );

    assert_eq!(dev.terminate(WAIT), Some(0), "{}", dev.logs());
}

/// The metrics endpoint needs a port scrapers can know: port 0 is a usage error (exit 64) for
/// every command that serves.
#[test]
fn metrics_listen_on_port_zero_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["serve", "coupon", "--data-dir", data],
        vec!["dev", "--listen", "127.0.0.1:0", "--data-dir", data],
    ] {
        let out = std::process::Command::new(sagaflow_tests::sagaflow_bin())
            .args(&args)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("--metrics-listen 127.0.0.1:0"), "{stderr}");
    }
}

#[test]
fn a_collector_that_is_down_is_reported_once_with_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    // Nothing listens on this port: every export fails with a refused connection.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut dev = sagaflow_tests::start_dev(
        &listen,
        &data,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    dev.wait_for_log("exporting spans over OTLP", WAIT);
    assert!(dev.logs().contains(&endpoint), "{}", dev.logs());
    for i in 0..3 {
        let order_id = place(
            &listen,
            None,
            json!({
                "request_id": format!("obs-down-{i}"), "user_id": "user-003",
                "lines": [{ "sku": "HS-001", "quantity": 1 }],
                "payment_method": "tok_ok"
            }),
        );
        assert_eq!(
            wait_order(&listen, &order_id)["status"],
            "ORDER_STATUS_COMPLETED"
        );
    }
    dev.wait_for_log("span export failed", WAIT);
    let logs = dev.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("span export failed"))
        .collect();
    // Many batches failed (one every 100 ms while orders ran), one warning says so.
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains(&endpoint), "{}", warnings[0]);
    assert!(warnings[0].contains("lost_spans="), "{}", warnings[0]);
    dev.terminate(WAIT);
}

// ---------------------------------------------------------------------------------------------
// untrusted trace context and method names (docs/operations.md, "Logs and traces from untrusted
// input")

const TRACE_CALLER: &str = "7e57ab1e7e57ab1e7e57ab1e7e57ab1e";
const CLIENT_CALLER: &str = "c0ffee00c0ffee00";

/// Calls `path` (a method no server has) with an empty message; returns the refusal.
async fn call_unknown(addr: &str, path: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).unwrap();
    grpc.unary(
        tonic::Request::new(()),
        path,
        tonic_prost::ProstCodec::<(), ()>::default(),
    )
    .await
    .unwrap_err()
}

/// By default (no `--trust-traceparent`) a public call's `traceparent` is linked, not adopted:
/// PlaceOrder's server span is a root of a new trace with a link to grpcurl's span, and nothing
/// is exported in the caller's trace; the internal hops (pricing, the saga start, every step)
/// still continue the new trace, so the order is one trace. Calls to methods no server has are
/// named `_OTHER`, whatever their path.
#[test]
fn public_calls_start_a_new_trace_linked_to_the_callers() {
    let rt = runtime();
    let collector = rt.block_on(Collector::start());
    let dir = tempfile::tempdir().unwrap();
    let mut dev = start_dev_exporting(
        "127.0.0.1:0",
        &dir.path().join("data"),
        &collector,
        "600000",
        &[],
    );
    let addr = dev.addr().to_owned();
    let order_id = place(
        &addr,
        Some(&tp(TRACE_CALLER, CLIENT_CALLER)),
        json!({
            "request_id": "obs-linked", "user_id": "alice",
            "lines": [{ "sku": "KB-001", "quantity": 1 }],
            "payment_method": "tok_ok"
        }),
    );
    assert_eq!(
        wait_order(&addr, &order_id)["status"],
        "ORDER_STATUS_COMPLETED"
    );
    let forged = format!("/{}/{}", "A".repeat(2000), "Forged");
    for path in ["/sagaflow.evil.v1.Forged/Method", forged.as_str()] {
        let status = rt.block_on(call_unknown(&addr, path));
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    }
    assert_eq!(dev.terminate(WAIT), Some(0), "{}", dev.logs());
    let spans = rt.block_on(collector.wait_for(
        Duration::from_secs(10),
        "the order's steps and the unknown calls",
        |spans| {
            spans.iter().filter(|s| s.name() == "_OTHER").count() == 2
                && spans
                    .iter()
                    .filter(|s| s.name() == "saga.step" && s.str_attr("saga.id") == Some(&order_id))
                    .count()
                    >= 4
        },
    ));

    // Nothing joined the caller's trace.
    let adopted: Vec<&Received> = spans
        .iter()
        .filter(|s| s.trace_id() == TRACE_CALLER)
        .collect();
    assert!(
        adopted.is_empty(),
        "spans in the caller's trace: {adopted:#?}"
    );
    // PlaceOrder: a root span, linked to grpcurl's.
    let places: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name() == rpc(ORDER, "PlaceOrder"))
        .collect();
    assert_eq!(places.len(), 1, "{places:#?}");
    let place_order = places[0];
    assert_eq!(
        place_order.parent_span_id(),
        "",
        "a new root: {place_order:?}"
    );
    assert_eq!(
        place_order.links(),
        vec![(TRACE_CALLER.to_owned(), CLIENT_CALLER.to_owned())]
    );
    // The internal hops continue the new trace: pricing, the saga start, every step.
    let trace = place_order.trace_id();
    let in_trace = |name: &str| {
        spans
            .iter()
            .filter(|s| s.name() == name && s.trace_id() == trace)
            .count()
    };
    assert_eq!(in_trace(&rpc(INVENTORY, "BatchGetProducts")), 1);
    assert_eq!(in_trace(&rpc(ORCHESTRATOR, "StartOrderSaga")), 1);
    let steps: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name() == "saga.step" && s.str_attr("saga.id") == Some(&order_id))
        .collect();
    assert!(
        steps.iter().all(|s| s.trace_id() == trace),
        "every step in the order's trace: {steps:#?}"
    );
    // Unknown methods: `_OTHER`, never the path.
    let others: Vec<&Received> = spans.iter().filter(|s| s.name() == "_OTHER").collect();
    for other in &others {
        assert_eq!(other.span.kind, KIND_SERVER);
        assert_eq!(other.str_attr("rpc.method"), Some("_OTHER"), "{other:?}");
        assert_eq!(other.str_attr("rpc.service"), None, "{other:?}");
        assert_eq!(
            other.int_attr("rpc.grpc.status_code"),
            Some(tonic::Code::Unimplemented as i64)
        );
    }
    assert!(
        !spans
            .iter()
            .any(|s| s.name().contains("Forged") || s.name().contains("AAAA")),
        "a span named after a client's path"
    );
    rt.block_on(collector.stop());
}
