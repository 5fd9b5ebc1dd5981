//! W3C trace-context propagation over gRPC (docs/operations.md, "Watching").
//!
//! - Servers: [`TraceLayer`] opens one span per request, named `{rpc.service}/{rpc.method}`, whose
//!   parent is the caller's `traceparent` when the server trusts the call — set before the span
//!   is first entered (a parent set later is ignored), so handlers' `#[instrument]` spans nest
//!   under the caller's trace — and which otherwise starts a new trace linked to the caller's
//!   ([`TraceLayer::trusting`]; docs/operations.md, "Logs and traces from untrusted input").
//! - Clients: wrap the channel (or any client transport: TCP or in-process alike) with [`traced`]
//!   and every call carries the current span's `traceparent` ([`TraceInterceptor`], [`inject`]).
//! - Sagas: store [`current_traceparent`] with the saga; when a step runs later (after a crash,
//!   on another replica) make its span a child of it with [`set_parent_from_traceparent`] and
//!   link it to the recovery with [`link_to_current`].
//!
//! ```no_run
//! # async fn demo(channel: tonic::transport::Channel) {
//! use sagaflow_telemetry::propagation::{self, TraceLayer, traced};
//! // server
//! let router = tonic::transport::Server::builder().layer(TraceLayer::new());
//! // client
//! let channel = traced(channel); // XServiceClient::new(channel)
//! // saga start: remember the trace
//! let stored: Option<String> = propagation::current_traceparent();
//! // saga step, possibly much later
//! let span = tracing::info_span!("saga.step");
//! if let Some(tp) = &stored {
//!     propagation::set_parent_from_traceparent(&span, tp);
//! }
//! propagation::link_to_current(&span);
//! # }
//! ```
//!
//! Without an OpenTelemetry layer (telemetry off) nothing is injected, extracted or linked, and
//! [`current_traceparent`] returns `None`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll, ready},
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{SpanContext, TraceContextExt as _, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::{
    Status,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::interceptor::InterceptedService,
    transport::Channel,
};
use tower::{Layer, Service};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::semconv;

/// The W3C header carrying the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// The `tracing` name of server spans (the exported name is `{rpc.service}/{rpc.method}`).
pub const SERVER_SPAN_NAME: &str = "grpc.server";

/// Path prefixes of infrastructure RPCs (health checks, reflection): their spans are
/// `debug`-level, so the default export filter (`info`) leaves them out.
const QUIET_PREFIXES: [&str; 2] = ["/grpc.health.", "/grpc.reflection."];

/// The wire format is W3C TraceContext by design (docs/architecture.md, "Layers"), whatever global
/// propagator is installed, so sagas' stored contexts stay readable.
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

// ---------------------------------------------------------------------------------------------
// carriers

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        let Ok(value) = MetadataValue::try_from(value) else {
            return;
        };
        self.0.insert(key, value);
    }
}

// ---------------------------------------------------------------------------------------------
// context helpers

/// The OpenTelemetry context of the innermost entered span that OpenTelemetry records (spans
/// filtered out of export are skipped, so their children still propagate the trace).
fn current_context() -> Context {
    Context::current()
}

fn has_valid_span(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// Parses a W3C `traceparent` into a remote context; `None` if it is malformed.
fn context_from_traceparent(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.trim().to_owned())]);
    let cx = propagator().extract(&carrier);
    has_valid_span(&cx).then_some(cx)
}

/// Writes the current span's context into `metadata` as `traceparent` (and `tracestate` when
/// there is one). Does nothing when no span is being exported.
pub fn inject(metadata: &mut MetadataMap) {
    let cx = current_context();
    if has_valid_span(&cx) {
        propagator().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// The current span's context as a W3C `traceparent` (`00-{trace id}-{span id}-{flags}`), for a
/// saga to store at its start; `None` when no span is being exported.
pub fn current_traceparent() -> Option<String> {
    traceparent_of_context(&current_context())
}

/// `span`'s context as a W3C `traceparent`, without entering it (e.g. a claim span whose id the
/// steps it hands over link to); `None` when `span` is not exported.
///
/// This starts the OpenTelemetry span: set its parent ([`set_parent_from_traceparent`]) first.
pub fn traceparent_of(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    traceparent_of_context(&span.context())
}

fn traceparent_of_context(cx: &Context) -> Option<String> {
    if !has_valid_span(cx) {
        return None;
    }
    let mut carrier = HashMap::new();
    propagator().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span a stored `traceparent` names, so work done later — after a
/// crash, on another replica — joins the original trace. Call it right after creating `span`,
/// **before it is first entered** (or instrumented and polled).
///
/// Returns whether the parent was set: `false` when telemetry is off, `span` is disabled or
/// already started, or `traceparent` is malformed (logged at debug level; never panics).
pub fn set_parent_from_traceparent(span: &Span, traceparent: &str) -> bool {
    if span.is_disabled() {
        return false;
    }
    let Some(cx) = context_from_traceparent(traceparent) else {
        tracing::debug!(
            traceparent = %crate::untrusted::untrusted(traceparent),
            "ignoring a malformed traceparent"
        );
        return false;
    };
    match span.set_parent(cx) {
        Ok(()) => true,
        // Telemetry is off (no OpenTelemetry layer): nothing to parent, nothing to report.
        Err(tracing_opentelemetry::SetParentError::LayerNotFound) => false,
        Err(err) => {
            tracing::debug!(error = %err, "cannot set a span's remote parent");
            false
        }
    }
}

/// Adds to `span` a link to the current span (e.g. a saga step, parented to its original trace,
/// links to the recovery that resumed it). Does nothing when no span is being exported.
pub fn link_to_current(span: &Span) {
    let cx = current_context();
    if has_valid_span(&cx) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// Adds to `span` a link to the span a `traceparent` names. Returns whether it parsed.
pub fn link_to_traceparent(span: &Span, traceparent: &str) -> bool {
    match context_from_traceparent(traceparent) {
        Some(cx) => {
            span.add_link(cx.span().span_context().clone());
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// client side

/// A tonic interceptor writing the current span's `traceparent` into each outgoing call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

/// A client transport whose calls carry the caller's trace context: a [`Channel`]
/// ([`TracedChannel`]) or any other tower service tonic clients call through (sagaflow's
/// `sagaflow_server::transport::Transport`, TCP or in-process).
pub type Traced<T> = InterceptedService<T, TraceInterceptor>;

/// A channel whose calls carry the caller's trace context.
pub type TracedChannel = Traced<Channel>;

/// Wraps `transport` (a [`Channel`], or any service a tonic client calls through) so every call
/// carries the current span's `traceparent`: `XServiceClient::new(traced(channel))`.
pub fn traced<T>(transport: T) -> Traced<T> {
    InterceptedService::new(transport, TraceInterceptor)
}

// ---------------------------------------------------------------------------------------------
// server side

/// Tower layer for tonic servers (`Server::builder().layer(TraceLayer::new())`): one span per
/// request, following the OpenTelemetry RPC conventions.
///
/// Its parent (docs/operations.md, "Logs and traces from untrusted input"): by default the
/// caller's `traceparent`/`tracestate` headers are trusted, as between sagaflow's own services.
/// A server that faces clients it does not control says which calls it trusts
/// ([`TraceLayer::trusting`]): an untrusted call gets a new root span (a new trace, sampled by
/// this process) with a **link** to the caller's context, so a client can neither choose the
/// trace id nor unsample the request, and its trace is still one click away.
///
/// Its name: `{rpc.service}/{rpc.method}` for the methods [`TraceLayer::known_methods`] accepts
/// (default: every path), else `_OTHER` (rpc.method `_OTHER`, no rpc.service), the
/// OpenTelemetry RPC conventions' rule, so a client cannot mint unbounded operation names.
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    known: fn(&str) -> bool,
    trusted: fn(&str, &http::Extensions) -> bool,
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// The method name of a request whose path is not a known method (OpenTelemetry RPC semantic
/// conventions, `rpc.method`).
pub const OTHER_METHOD: &str = "_OTHER";

fn every_path(_: &str) -> bool {
    true
}

fn every_call(_: &str, _: &http::Extensions) -> bool {
    true
}

impl TraceLayer {
    /// The layer: every path named as it is, every caller's context adopted.
    pub fn new() -> Self {
        Self {
            known: every_path,
            trusted: every_call,
        }
    }

    /// Names only the paths `known` accepts (`/pkg.Service/Method`); every other request's span
    /// and `rpc.method` are `_OTHER`.
    pub fn known_methods(mut self, known: fn(&str) -> bool) -> Self {
        self.known = known;
        self
    }

    /// Adopts the caller's `traceparent` only for calls `trusted` accepts (given the path and
    /// the request's extensions); every other call starts a new trace linked to the caller's.
    pub fn trusting(mut self, trusted: fn(&str, &http::Extensions) -> bool) -> Self {
        self.trusted = trusted;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            layer: *self,
        }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
    layer: TraceLayer,
}

/// Splits `/pkg.Service/Method` into (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed.rsplit_once('/').unwrap_or((trimmed, ""))
}

/// The server span for a request, its parent (or link) already set from the request headers.
fn server_span(layer: &TraceLayer, request: &http::Request<impl Sized>) -> Span {
    let path = request.uri().path();
    let known = (layer.known)(path);
    let (service, method) = if known {
        split_path(path)
    } else {
        ("", OTHER_METHOD)
    };
    let name = if known {
        format!("{service}/{method}")
    } else {
        OTHER_METHOD.to_owned()
    };
    macro_rules! rpc_span {
        ($level:expr) => {
            tracing::span!(
                parent: None,
                $level,
                SERVER_SPAN_NAME,
                { semconv::OTEL_NAME } = %name,
                { semconv::OTEL_KIND } = "server",
                { semconv::OTEL_STATUS_CODE } = Empty,
                { semconv::RPC_SYSTEM } = "grpc",
                { semconv::RPC_SERVICE } = Empty,
                { semconv::RPC_METHOD } = %method,
                { semconv::RPC_GRPC_STATUS_CODE } = Empty,
            )
        };
    }
    let span = if known && QUIET_PREFIXES.iter().any(|p| path.starts_with(p)) {
        rpc_span!(tracing::Level::DEBUG)
    } else {
        rpc_span!(tracing::Level::INFO)
    };
    if known {
        span.record(semconv::RPC_SERVICE, service);
    }
    let headers = request.headers();
    if !span.is_disabled() && headers.contains_key(TRACEPARENT) {
        let cx = propagator().extract(&HeaderExtractor(headers));
        if has_valid_span(&cx) {
            if known && (layer.trusted)(path, request.extensions()) {
                // Fails only when OpenTelemetry is off (no layer): nothing to parent then.
                let _ = span.set_parent(cx);
            } else {
                // The link keeps the caller's ids and flags, not its `tracestate`: vendor data a
                // client chose is not carried into this trace.
                let caller = cx.span().span_context().clone();
                span.add_link(SpanContext::new(
                    caller.trace_id(),
                    caller.span_id(),
                    caller.trace_flags(),
                    true,
                    TraceState::default(),
                ));
            }
        }
    }
    span
}

/// The gRPC status of a response: its `grpc-status` header (trailers-only responses, i.e.
/// errors), else OK for HTTP 200 (the real status then travels in trailers), else the gRPC
/// spec's mapping of the HTTP status.
fn grpc_status_code(response: &http::Response<impl Sized>) -> i32 {
    if let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i32>().ok())
    {
        return code;
    }
    let code = match response.status().as_u16() {
        200 => tonic::Code::Ok,
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    code as i32
}

/// Server-side codes that mark the span as an error (OpenTelemetry RPC conventions).
fn is_server_error(code: i32) -> bool {
    matches!(
        tonic::Code::from_i32(code),
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    )
}

fn record_status<B>(span: &Span, response: &http::Response<B>) {
    let code = grpc_status_code(response);
    span.record(semconv::RPC_GRPC_STATUS_CODE, i64::from(code));
    if is_server_error(code) {
        span.record(semconv::OTEL_STATUS_CODE, "error");
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for TraceService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let span = server_span(&self.layer, &request);
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        TraceFuture {
            inner: Box::pin(inner),
            span,
        }
    }
}

/// The future of [`TraceService`]: runs the inner call inside the request span and records the
/// response's gRPC status on it.
#[derive(Debug)]
pub struct TraceFuture<F> {
    inner: Pin<Box<F>>,
    span: Span,
}

impl<F, ResBody, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let output = ready!(this.inner.as_mut().poll(cx));
        if let Ok(response) = &output {
            record_status(&this.span, response);
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(split_path("/a.B/C"), ("a.B", "C"));
        assert_eq!(split_path("odd"), ("odd", ""));
        assert_eq!(split_path("/"), ("", ""));
    }

    #[test]
    fn reads_grpc_status() {
        let ok = http::Response::builder().status(200).body(()).unwrap();
        assert_eq!(grpc_status_code(&ok), 0);
        let not_found = http::Response::builder()
            .status(200)
            .header("grpc-status", "5")
            .body(())
            .unwrap();
        assert_eq!(grpc_status_code(&not_found), 5);
        let bad_gateway = http::Response::builder().status(502).body(()).unwrap();
        assert_eq!(grpc_status_code(&bad_gateway), 14);
        assert!(is_server_error(13));
        assert!(!is_server_error(5));
        assert!(!is_server_error(0));
    }

    #[test]
    fn parses_traceparents() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(context_from_traceparent(tp).is_some());
        assert!(context_from_traceparent("garbage").is_none());
        assert!(context_from_traceparent("").is_none());
        assert!(
            context_from_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01")
                .is_none()
        );
    }

    #[test]
    fn everything_is_a_no_op_without_opentelemetry() {
        // No subscriber at all on this thread, and one without an OpenTelemetry layer.
        let check = || {
            let span = tracing::info_span!("step");
            assert!(!set_parent_from_traceparent(
                &span,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ));
            let _entered = span.enter();
            assert_eq!(current_traceparent(), None);
            link_to_current(&span);
            assert!(link_to_traceparent(
                &span,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ));
            let mut metadata = MetadataMap::new();
            inject(&mut metadata);
            assert!(metadata.is_empty());
        };
        check();
        tracing::subscriber::with_default(tracing_subscriber::registry(), check);
    }
}
