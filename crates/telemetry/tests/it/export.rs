//! The one test that installs the process-global subscriber with OTLP export: a traced client
//! call through `TraceLayer`, and saga steps parented to a stored `traceparent` and linked to
//! their recovery, all checked on the spans an in-process OTLP receiver gets; exported by
//! `flush()` and by dropping the guard.

use std::time::Duration;

use sagaflow_telemetry::{
    LogFormat, TelemetryConfig,
    propagation::{
        current_traceparent, link_to_current, link_to_traceparent, set_parent_from_traceparent,
        traceparent_of,
    },
    semconv,
};
use sagaflow_testkit::otlp::{Collector, KIND_SERVER, Received, STATUS_ERROR};
use tracing::Instrument as _;

use crate::health::{HealthServer, check};

const SERVICE: &str = "telemetry-it";
/// flush() and the guard's drop return once the receiver has answered, so the spans are there
/// already; the bound stays well below the batch processor's 5-second schedule, which would
/// otherwise export them anyway and hide a flush that does nothing.
const WAIT: Duration = Duration::from_secs(2);

/// A stored context from "another process": a fixed trace and span id.
const STORED_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const STORED_SPAN: &str = "00f067aa0ba902b7";

fn one<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| s.name() == name).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name:?} span expected: {found:#?}"
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_with_propagated_parents() {
    let collector = Collector::start().await;
    let config = TelemetryConfig::new(SERVICE, LogFormat::Pretty)
        .logs(std::env::var_os("TEST_LOG").is_some())
        .otlp_endpoint(collector.endpoint())
        // Health checks are debug-level server spans; export them here.
        .export_filter("info,sagaflow_telemetry=debug");
    let telemetry = sagaflow_telemetry::init_with(&config).unwrap();
    assert!(telemetry.is_exporting());

    // --- a client call inside a parent span, through traced(channel) and TraceLayer
    let server = HealthServer::start().await;
    let mut client = server.client().await;
    let parent = tracing::info_span!("client.parent");
    let (stored, ok, not_found) = async {
        let stored = current_traceparent();
        let ok = client.check(check("")).await;
        let not_found = client.check(check("no.such.Service")).await;
        (stored, ok, not_found)
    }
    .instrument(parent)
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(not_found.unwrap_err().code(), tonic::Code::NotFound);
    let stored = stored.expect("a traceparent inside an exported span");

    // Outside any span there is no context to store.
    assert_eq!(current_traceparent(), None);

    // flush() exports what has finished so far.
    server.stop().await;
    telemetry.flush().await.unwrap();
    collector
        .wait_for(WAIT, "the client and server spans", |spans| {
            spans.iter().any(|s| s.name() == "client.parent")
                && spans
                    .iter()
                    .filter(|s| s.name() == "grpc.health.v1.Health/Check")
                    .count()
                    == 2
        })
        .await;

    // --- a saga step run "later": parent = stored context, link = the recovery
    let recovery = tracing::info_span!(parent: None, "saga.recover");
    // The context of a span that was never entered (the engine's claim span).
    let recovery_tp_unentered = traceparent_of(&recovery);
    let recovery_tp = async {
        let step = tracing::info_span!("saga.step", { semconv::SAGA_STEP } = "reserve");
        assert!(set_parent_from_traceparent(&step, &stored));
        link_to_current(&step);
        async {
            // Entered: a second parent is refused, not panicked on.
            assert!(!set_parent_from_traceparent(
                &tracing::Span::current(),
                &stored
            ));
        }
        .instrument(step)
        .await;
        current_traceparent().unwrap()
    }
    .instrument(recovery)
    .await;

    // --- a step parented to a context stored by some other process
    let synthetic = tracing::info_span!(parent: None, "saga.step.synthetic");
    assert!(set_parent_from_traceparent(
        &synthetic,
        &format!("00-{STORED_TRACE}-{STORED_SPAN}-01")
    ));
    assert!(link_to_traceparent(&synthetic, &recovery_tp));
    assert!(!set_parent_from_traceparent(
        &synthetic,
        "not-a-traceparent"
    ));
    synthetic.in_scope(|| tracing::info!("step ran"));
    drop(synthetic);

    // Dropping the guard exports the rest (it blocks, so off the runtime's workers).
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();
    let spans = collector
        .wait_for(WAIT, "all spans", |spans| {
            let names = [
                "client.parent",
                "saga.recover",
                "saga.step",
                "saga.step.synthetic",
            ];
            names.iter().all(|n| spans.iter().any(|s| s.name() == *n))
                && spans
                    .iter()
                    .filter(|s| s.name() == "grpc.health.v1.Health/Check")
                    .count()
                    == 2
        })
        .await;

    for span in &spans {
        assert_eq!(span.service_name.as_deref(), Some(SERVICE), "{span:#?}");
    }

    // The client parent and both server spans share a trace; the server spans' parent is the
    // client's span, whose context current_traceparent() returned.
    let client_parent = one(&spans, "client.parent");
    let trace = client_parent.trace_id();
    assert_eq!(stored, format!("00-{trace}-{}-01", client_parent.span_id()));
    let server_spans: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name() == "grpc.health.v1.Health/Check")
        .collect();
    for span in &server_spans {
        assert_eq!(span.trace_id(), trace);
        assert_eq!(span.parent_span_id(), client_parent.span_id());
        assert_eq!(span.span.kind, KIND_SERVER);
        assert_eq!(span.str_attr(semconv::RPC_SYSTEM), Some("grpc"));
        assert_eq!(
            span.str_attr(semconv::RPC_SERVICE),
            Some("grpc.health.v1.Health")
        );
        assert_eq!(span.str_attr(semconv::RPC_METHOD), Some("Check"));
    }
    let mut codes: Vec<i64> = server_spans
        .iter()
        .map(|s| s.int_attr(semconv::RPC_GRPC_STATUS_CODE).unwrap())
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, [0, tonic::Code::NotFound as i64]);
    // NOT_FOUND is the caller's problem, not a server error.
    for span in &server_spans {
        assert_ne!(
            span.span.status.as_ref().map(|s| s.code),
            Some(STATUS_ERROR)
        );
    }

    // The step joined the stored trace under the client span, and links to the recovery.
    let recover = one(&spans, "saga.recover");
    assert_ne!(recover.trace_id(), trace);
    let step = one(&spans, "saga.step");
    assert_eq!(step.trace_id(), trace);
    assert_eq!(step.parent_span_id(), client_parent.span_id());
    assert_eq!(step.str_attr(semconv::SAGA_STEP), Some("reserve"));
    assert_eq!(
        step.links(),
        [(recover.trace_id(), recover.span_id())],
        "the step links to its recovery"
    );
    assert_eq!(
        recovery_tp,
        format!("00-{}-{}-01", recover.trace_id(), recover.span_id())
    );
    assert_eq!(recovery_tp_unentered.as_deref(), Some(recovery_tp.as_str()));

    // A context stored elsewhere: the span is in that trace, under that span.
    let synthetic = one(&spans, "saga.step.synthetic");
    assert_eq!(synthetic.trace_id(), STORED_TRACE);
    assert_eq!(synthetic.parent_span_id(), STORED_SPAN);
    assert_eq!(synthetic.links(), [(recover.trace_id(), recover.span_id())]);

    collector.stop().await;
}
