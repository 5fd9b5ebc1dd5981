//! How a sagaflow process calls a gRPC service (docs/architecture.md, "Run modes"): over TCP and
//! HTTP/2 through a tonic [`Channel`] (the distributed deployment, and every external client), or,
//! when caller and callee share one process (the embedded `sagaflow dev`, `demo` and `bench`),
//! [`InProcess`]: the tonic client hands its request to the server's own tower stack, with no
//! socket and no HTTP/2 in between.
//!
//! ```text
//!  XServiceClient<TracedTransport>: protobuf encode, TraceInterceptor (traceparent), grpc-timeout
//!      │
//!      ├─ Transport::Tcp(Channel) ─▶ HTTP/2 over TCP ─▶ tonic server: grpc-timeout ─┐
//!      │                                                                            ├─▶ TraceLayer ─▶ AccessLayer ─▶ RepeatedLimitLayer ─▶ KeyedRateLimitLayer ─▶ FaultLayer
//!      └─ Transport::InProcess ─────────────────────▶ grpc-timeout (as tonic's) ────┘   ─▶ StringGuardLayer ─▶ Routes
//! ```
//!
//! Both paths run the same code on both sides: the generated client and its codec, the client
//! interceptors, the layers of [`crate::stack::layers`] over the same routes (health and reflection
//! included), the handlers and their codec. Metadata, status codes, messages and details
//! (`ErrorInfo`, `BadRequest`) travel in the same headers and trailers. What the in-process path
//! does differently, and why it does not matter to a caller:
//!
//! - the deadline: tonic enforces `grpc-timeout` with a timer around the server's stack (and one
//!   around the client's channel); [`InProcess`] puts one timer around the stack and, when it
//!   fires, fails the call with [`tonic::TimeoutExpired`], which the client reports exactly as
//!   over TCP: CANCELLED "Timeout expired". Either way the handler's future is dropped;
//! - the handler runs on the caller's task instead of a task of the HTTP/2 connection; a caller
//!   that gives up (its own timeout, an abort) drops it at once, as a reset stream would. A
//!   handler that panics is answered CANCELLED, as the reset stream of its dead task is over TCP,
//!   and the caller's task lives on;
//! - request extensions are cleared (only headers and body cross a socket); the server's
//!   `TcpConnectInfo` is absent (no handler reads the peer address); the call is marked as the
//!   process's own instead, which the access layer lets through ([`crate::access`]);
//! - before the server serves, calls wait, as connections wait in a bound listener's backlog;
//!   once it has shut down they are refused as a closed port refuses them: UNAVAILABLE whose
//!   message says `connect error` and whose source is a `ConnectionRefused` I/O error, so the
//!   orchestrator and the outbox relay know the request never reached a handler
//!   (docs/architecture.md, "Attempts in doubt").

use std::{
    fmt,
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{FutureExt as _, future::BoxFuture};
use http::{HeaderMap, Request, Response};
use sagaflow_telemetry::propagation::{self, Traced};
use tokio::sync::watch;
use tonic::{Status, body::Body, transport::Channel};
use tower::{BoxError, Service, ServiceExt as _};

use crate::stack::ServerStack;

/// A client transport: [`Transport::Tcp`] or [`Transport::InProcess`]. Generated clients take it
/// as it is (`XServiceClient::new(transport)`), or [`traced`] (`XServiceClient<TracedTransport>`),
/// whichever it is; cloning is cheap.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTP/2 over TCP to a server at an address (a lazy channel connects on first use).
    Tcp(Channel),
    /// HTTP/2 over TCP, every call carrying an operator's credential (`authorization: Bearer
    /// <token>`, for admin RPCs; docs/operations.md, "Security"): the CLI's client commands.
    TcpWithToken(Channel, BearerToken),
    /// The server of this very process, called through its tower stack.
    InProcess(InProcess),
}

/// The `authorization` header of an operator's bearer token (marked sensitive: never logged).
#[derive(Clone)]
pub struct BearerToken(http::HeaderValue);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// The header for `token`; `None` when the token cannot be a header value (control
    /// characters, non-ASCII) or is empty.
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let mut value = http::HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(Self(value))
    }
}

impl Transport {
    /// `channel`, with every call carrying `token` when there is one.
    pub fn tcp(channel: Channel, token: Option<BearerToken>) -> Self {
        match token {
            Some(token) => Self::TcpWithToken(channel, token),
            None => Self::Tcp(channel),
        }
    }
}

/// A transport whose calls carry the caller's `traceparent`
/// ([`sagaflow_telemetry::propagation::TraceInterceptor`]).
pub type TracedTransport = Traced<Transport>;

/// Wraps `transport` (a [`Channel`], an [`InProcess`] or a [`Transport`]) so that every call
/// carries the current span's `traceparent`: `XServiceClient::new(traced(transport))`.
pub fn traced(transport: impl Into<Transport>) -> TracedTransport {
    propagation::traced(transport.into())
}

impl From<Channel> for Transport {
    fn from(channel: Channel) -> Self {
        Self::Tcp(channel)
    }
}

impl From<InProcess> for Transport {
    fn from(local: InProcess) -> Self {
        Self::InProcess(local)
    }
}

impl Service<Request<Body>> for Transport {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Tcp(channel) | Self::TcpWithToken(channel, _) => {
                channel.poll_ready(cx).map_err(Into::into)
            }
            Self::InProcess(local) => local.poll_ready(cx),
        }
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self {
            Self::Tcp(channel) => {
                let call = channel.call(request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Self::TcpWithToken(channel, token) => {
                request
                    .headers_mut()
                    .entry(http::header::AUTHORIZATION)
                    .or_insert_with(|| token.0.clone());
                let call = channel.call(request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Self::InProcess(local) => local.call(request),
        }
    }
}

/// Where an [`InProcess`] transport stands with its server.
#[derive(Clone)]
enum State {
    /// The server has not started serving: calls wait.
    Starting,
    /// Calls go through this stack.
    Serving(ServerStack),
    /// The server shut down: calls are refused.
    Closed,
}

/// The in-process transport: a handle on the stack of a server of this process
/// ([`crate::grpc::spawn_on_in_process`] makes it serve, its shutdown closes it). Create it before
/// the services that call through it, then start the server. Cloning is cheap; clones share the
/// server.
#[derive(Clone)]
pub struct InProcess {
    state: Arc<watch::Sender<State>>,
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.state.borrow() {
            State::Starting => "starting",
            State::Serving(_) => "serving",
            State::Closed => "closed",
        };
        f.debug_struct("InProcess").field("state", &state).finish()
    }
}

impl Default for InProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcess {
    /// A transport whose server has not started: its calls wait until it serves.
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(State::Starting)),
        }
    }

    /// Serves calls through `stack` from now on (and the calls waiting for it).
    pub(crate) fn serve(&self, stack: ServerStack) {
        self.state.send_replace(State::Serving(stack));
    }

    /// Refuses calls from now on, and those waiting for the server (it shut down, or will never
    /// start); calls already running finish in their callers' tasks. The server's shutdown
    /// calls it.
    pub fn close(&self) {
        self.state.send_replace(State::Closed);
    }

    /// Whether calls are served now (not waiting for the server, not refused).
    pub fn is_serving(&self) -> bool {
        matches!(*self.state.borrow(), State::Serving(_))
    }

    /// The stack to call: at once while serving; waits while starting; `None` once closed.
    async fn stack(state: Arc<watch::Sender<State>>) -> Option<ServerStack> {
        let current = state.borrow().clone();
        match current {
            State::Serving(stack) => Some(stack),
            State::Closed => None,
            State::Starting => {
                let mut changes = state.subscribe();
                let settled = changes
                    .wait_for(|s| !matches!(s, State::Starting))
                    .await
                    .ok()?
                    .clone();
                match settled {
                    State::Serving(stack) => Some(stack),
                    State::Starting | State::Closed => None,
                }
            }
        }
    }
}

impl Service<Request<Body>> for InProcess {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the stack's, checked per call: the routes are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let deadline = grpc_timeout(request.headers());
        // Only headers and body cross a socket: the client's extensions stay with the client.
        *request.extensions_mut() = http::Extensions::new();
        // ... and the server knows the call is this process's own (docs/operations.md,
        // "Security": the process trusts itself).
        request
            .extensions_mut()
            .insert(crate::access::InProcessCall::mark());
        let state = self.state.clone();
        let call = async move {
            let Some(stack) = Self::stack(state).await else {
                return Err(refused());
            };
            match AssertUnwindSafe(stack.oneshot(request))
                .catch_unwind()
                .await
            {
                Ok(Ok(response)) => Ok(response),
                // The routes and every layer answer failures as gRPC statuses, never as errors.
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::error!("an in-process gRPC handler panicked");
                    Err(
                        Box::new(Status::cancelled("the handler panicked (in-process call)"))
                            as BoxError,
                    )
                }
            }
        };
        Box::pin(async move {
            match deadline {
                Some(deadline) => tokio::time::timeout(deadline, call)
                    .await
                    .unwrap_or_else(|_| Err(Box::new(tonic::TimeoutExpired(())) as BoxError)),
                None => call.await,
            }
        })
    }
}

/// The error of a call the server refused because it no longer serves: as a refused connection.
fn refused() -> BoxError {
    Box::new(tonic::ConnectError(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "in-process connect error: the server is shut down",
    ))))
}

/// The `grpc-timeout` of a request (gRPC over HTTP/2: at most 8 digits and a unit, `H`, `M`,
/// `S`, `m`, `u` or `n`); `None` when absent or malformed. The rules of tonic's server (its
/// parser is private to tonic), so both paths honour the same deadlines.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(unit_at);
    // At most 8 digits (so no overflow below), parsed as tonic parses them.
    if digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn reads_grpc_timeout_as_tonic_writes_it() {
        assert_eq!(timeout_of("3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(timeout_of("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout_of("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout_of("1999m"), Some(Duration::from_millis(1999)));
        assert_eq!(timeout_of("250000u"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout_of("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        // What tonic's client writes for `Request::set_timeout`.
        for set in [
            Duration::from_millis(1500),
            Duration::from_micros(1_999_873),
        ] {
            let mut request = tonic::Request::new(());
            request.set_timeout(set);
            let written = request
                .metadata()
                .get("grpc-timeout")
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(timeout_of(written), Some(set), "{written}");
        }
    }

    #[test]
    fn ignores_malformed_grpc_timeouts_as_tonic_does() {
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
        for bad in ["", "m", "5", "5s", "123456789m", "-5m", "1.5S"] {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(grpc_timeout(&headers), None, "{bad:?}");
        }
    }
}
