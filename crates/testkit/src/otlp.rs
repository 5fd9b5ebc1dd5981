//! An in-process OTLP/gRPC trace receiver (feature `otlp`): point a process's
//! `OTEL_EXPORTER_OTLP_ENDPOINT` at [`Collector::endpoint`] and assert on the spans it exported.
//!
//! ```ignore
//! let collector = Collector::start().await;           // 127.0.0.1:<free port>
//! // … run code exporting to collector.endpoint() …
//! let spans = collector.wait_for(Duration::from_secs(10), "the step", |s| !s.is_empty()).await;
//! collector.stop().await;
//! ```

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;

/// OTLP `SPAN_KIND_INTERNAL`.
pub const KIND_INTERNAL: i32 = 1;
/// OTLP `SPAN_KIND_SERVER`.
pub const KIND_SERVER: i32 = 2;
/// OTLP `SPAN_KIND_CLIENT`.
pub const KIND_CLIENT: i32 = 3;
/// OTLP `STATUS_CODE_ERROR`.
pub const STATUS_ERROR: i32 = 2;

/// One exported span with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Received {
    /// The exporting process's `service.name` resource attribute.
    pub service_name: Option<String>,
    /// The span as exported.
    pub span: Span,
}

impl Received {
    /// The span name.
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id, 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id, 16 hex digits; empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    /// The string attribute `key`.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key) {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    /// The integer attribute `key`.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(Value::IntValue(i)) => Some(*i),
            _ => None,
        }
    }

    /// `(trace id, span id)` of each link.
    pub fn links(&self) -> Vec<(String, String)> {
        self.span
            .links
            .iter()
            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
            .collect()
    }

    /// The span's OTLP status code (0 unset, 1 ok, 2 error).
    pub fn status_code(&self) -> i32 {
        self.span.status.as_ref().map_or(0, |s| s.code)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Default)]
struct Sink(Arc<Mutex<Vec<Received>>>);

impl Sink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
            });
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(Received {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
        self.lock().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The running receiver on `127.0.0.1:<free port>`; [`Collector::stop`] shuts it down and joins
/// it.
#[derive(Debug)]
pub struct Collector {
    /// The bound address.
    pub addr: SocketAddr,
    sink: Sink,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Collector {
    /// Binds a free loopback port and serves the OTLP trace service on it (call inside a tokio
    /// runtime; the server runs on it).
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the OTLP receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let sink = Sink::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink.clone()))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            sink,
            stop,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Received> {
        self.sink.lock().clone()
    }

    /// Polls (every 20 ms) until `done` holds for the spans received so far and returns them.
    ///
    /// # Panics
    /// After `timeout`, naming `what` and listing the spans received.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<&str> = spans.iter().map(Received::name).collect();
                panic!("timed out waiting for {what}; received {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the receiver and waits for it.
    ///
    /// # Panics
    /// When the receiver failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the OTLP receiver task")
            .expect("the OTLP receiver");
    }
}
