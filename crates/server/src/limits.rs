//! Limits every server applies (docs/operations.md, "Security"), as tower layers and tonic
//! settings rather than checks in handlers:
//!
//! | limit | where | answer |
//! |---|---|---|
//! | request message size (`--max-message-bytes`, default 4 MiB, and each service's own limit) | [`crate::repeated`] reads at most that much | RESOURCE_EXHAUSTED, reason `MESSAGE_TOO_LARGE` |
//! | elements per repeated field (order lines: 100) | [`crate::repeated`], on the wire before decoding | INVALID_ARGUMENT naming the field |
//! | calls in flight per connection (`--max-concurrent-per-connection`, default 256) | tonic's `concurrency_limit_per_connection` with `load_shed`; HTTP/2 `max_concurrent_streams` above it (`--max-streams-per-connection`, 512) | RESOURCE_EXHAUSTED at once, never queued |
//! | calls in flight per server (`--max-concurrent-calls`, default 20000) | [`CallLimitLayer`] (TCP only) | RESOURCE_EXHAUSTED, reason `SERVER_BUSY` |
//! | HTTP/2 keepalive, connection age (`--http2-keepalive-interval-ms`, `--http2-keepalive-timeout-ms`, `--max-connection-age-ms`) | tonic's server builder | dead peers' connections closed; old ones sent away (GOAWAY) |
//! | GetOrder waits per process (`--max-order-waiters`, default 10000) | the order service | RESOURCE_EXHAUSTED, reason `TOO_MANY_WAITERS` |
//! | time per call (`--request-timeout-ms`, default 90 s: over GetOrder's longest wait of 60 s) | tonic's server `timeout` (the caller's `grpc-timeout` wins when shorter) | CANCELLED `Timeout expired` |
//! | PlaceOrder per user (`serve`'s `--place-order-per-user-per-second`, `--place-order-burst`, default 50/s, burst 100; none in the embedded system) | [`KeyedRateLimitLayer`]: governor's GCRA keyed by the request's `user_id` | RESOURCE_EXHAUSTED, reason `RATE_LIMITED`, `google.rpc.RetryInfo` |

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use clap::Args;
use futures::future::BoxFuture;
use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};
use http_body_util::{BodyExt as _, Full, Limited};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Layer, Service};

use crate::error::ERROR_DOMAIN;

/// The path of PlaceOrder, the one RPC rate-limited per user.
pub const PLACE_ORDER: &str = "/sagaflow.order.v1.OrderService/PlaceOrder";

/// Default largest request message, bytes (tonic's own default decoding limit).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Default calls one connection may have in flight at once.
pub const DEFAULT_MAX_CONCURRENT_PER_CONNECTION: u32 = 256;

/// Limits flags of `sagaflow serve` (docs/operations.md, "Security" and "Request limits"):
/// message size, the server's limits ([`ServerLimitArgs`]) and PlaceOrder's rate per user.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest request message, bytes, 1024 to 4194304; a larger one is RESOURCE_EXHAUSTED
    /// before any handler runs. Each service also has its own, smaller limit: twice its largest
    /// legitimate request ([`crate::repeated::max_message_bytes`]); the smaller one applies.
    /// Default 4194304 (4 MiB, tonic's own decoding limit).
    #[arg(long, env = "SAGAFLOW_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=4_194_304))]
    pub max_message_bytes: usize,
    #[command(flatten)]
    pub server: ServerLimitArgs,
    /// PlaceOrder calls per second per `user_id` (GCRA); 0 turns the limit off. Default 50.
    #[arg(
        long,
        env = "SAGAFLOW_PLACE_ORDER_PER_USER_PER_SECOND",
        default_value_t = 50
    )]
    pub place_order_per_user_per_second: u32,
    /// PlaceOrder calls one user may make at once above the rate. Default 100.
    #[arg(long, env = "SAGAFLOW_PLACE_ORDER_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub place_order_burst: u32,
}

/// The limits of a server's connections and calls, flags of both `sagaflow serve` and
/// `sagaflow dev` (docs/operations.md, "Request limits").
#[derive(Debug, Clone, Args)]
pub struct ServerLimitArgs {
    /// Calls one connection may have in flight at once; a call over it is refused at once with
    /// RESOURCE_EXHAUSTED ("Too many active requests for the connection"), never queued.
    /// Default 256.
    #[arg(long, env = "SAGAFLOW_MAX_CONCURRENT_PER_CONNECTION", default_value_t = DEFAULT_MAX_CONCURRENT_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_per_connection: u32,
    /// HTTP/2 streams one connection may open at once (SETTINGS_MAX_CONCURRENT_STREAMS): above
    /// --max-concurrent-per-connection, so that the calls over that limit reach the server and
    /// are refused rather than wait in the client; beyond this the client's HTTP/2 stack holds
    /// them back. Raised to --max-concurrent-per-connection when below it. Default 512.
    #[arg(long, env = "SAGAFLOW_MAX_STREAMS_PER_CONNECTION", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Calls the server has in flight at once over all its connections (load shedding); a call
    /// over it is RESOURCE_EXHAUSTED, reason `SERVER_BUSY`. The process's own in-process calls
    /// (the embedded system) do not count. Default 20000.
    #[arg(long, env = "SAGAFLOW_MAX_CONCURRENT_CALLS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_calls: u32,
    /// Longest time a call may run on the server, milliseconds (a shorter `grpc-timeout` of the
    /// caller wins). Default 90000: longer than GetOrder's longest `wait` (60 s).
    #[arg(long, env = "SAGAFLOW_REQUEST_TIMEOUT_MS", default_value_t = 90_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// HTTP/2 keepalive: a PING on every connection this often, milliseconds; 0 turns it off.
    /// Default 30000.
    #[arg(
        long,
        env = "SAGAFLOW_HTTP2_KEEPALIVE_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub http2_keepalive_interval_ms: u64,
    /// A connection whose peer does not answer a keepalive PING within this is closed,
    /// milliseconds. Default 10000.
    #[arg(long, env = "SAGAFLOW_HTTP2_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_timeout_ms: u64,
    /// A connection older than this is asked to go away (HTTP/2 GOAWAY: its calls in flight get
    /// the request timeout to finish, the client reconnects), so idle and long-lived connections
    /// are reaped and load rebalances, milliseconds; 0: never. Default 1800000 (30 minutes).
    #[arg(
        long,
        env = "SAGAFLOW_MAX_CONNECTION_AGE_MS",
        default_value_t = 1_800_000
    )]
    pub max_connection_age_ms: u64,
    /// GetOrder calls with a `wait` the order service keeps waiting at once (every connection);
    /// one more is RESOURCE_EXHAUSTED, reason `TOO_MANY_WAITERS`. Default 10000.
    #[arg(long, env = "SAGAFLOW_MAX_ORDER_WAITERS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_order_waiters: u32,
}

impl Default for ServerLimitArgs {
    fn default() -> Self {
        Self {
            max_concurrent_per_connection: DEFAULT_MAX_CONCURRENT_PER_CONNECTION,
            max_streams_per_connection: 512,
            max_concurrent_calls: 20_000,
            request_timeout_ms: 90_000,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 10_000,
            max_connection_age_ms: 1_800_000,
            max_order_waiters: 10_000,
        }
    }
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            server: ServerLimitArgs::default(),
            place_order_per_user_per_second: 50,
            place_order_burst: 100,
        }
    }
}

/// The limits of one server (see the module docs and docs/operations.md, "Request limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request message, bytes (each service's own limit applies when smaller).
    pub max_message_bytes: usize,
    /// Calls served at once per connection; more are refused.
    pub max_concurrent_per_connection: u32,
    /// HTTP/2 streams per connection (at least `max_concurrent_per_connection`).
    pub max_streams_per_connection: u32,
    /// Calls served at once over every connection; more are refused.
    pub max_concurrent_calls: u32,
    /// Longest time a call may run.
    pub request_timeout: Duration,
    /// HTTP/2 keepalive PING interval; `None`: no keepalive.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a keepalive PING may go unanswered.
    pub http2_keepalive_timeout: Duration,
    /// Connections older than this are sent away (GOAWAY); `None`: never.
    pub max_connection_age: Option<Duration>,
    /// GetOrder waits kept at once by the order service.
    pub max_order_waiters: usize,
    /// PlaceOrder per user: `(per second, burst)`; `None` for no limit (the default of
    /// [`Limits::default`], not of the `serve` flags).
    pub place_order_per_user: Option<(NonZeroU32, NonZeroU32)>,
}

impl Default for Limits {
    /// The flags' defaults without the per-user rate limit: what a server gets that nobody
    /// configured (tests, the embedded `sagaflow dev`, `demo` and `bench`, whose load drivers
    /// place many orders for few users); `sagaflow serve` takes [`LimitArgs`], rate limit
    /// included.
    fn default() -> Self {
        Limits {
            place_order_per_user: None,
            ..LimitArgs::default().limits()
        }
    }
}

impl ServerLimitArgs {
    /// The limits these flags describe, with the default message size and no per-user rate
    /// limit (`sagaflow dev`).
    pub fn limits(&self) -> Limits {
        let max_concurrent_per_connection = self.max_concurrent_per_connection.max(1);
        let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_concurrent_per_connection,
            max_streams_per_connection: self
                .max_streams_per_connection
                .max(max_concurrent_per_connection),
            max_concurrent_calls: self.max_concurrent_calls.max(1),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            http2_keepalive_interval: millis(self.http2_keepalive_interval_ms),
            http2_keepalive_timeout: Duration::from_millis(self.http2_keepalive_timeout_ms.max(1)),
            max_connection_age: millis(self.max_connection_age_ms),
            max_order_waiters: usize::try_from(self.max_order_waiters.max(1)).unwrap_or(usize::MAX),
            place_order_per_user: None,
        }
    }
}

impl LimitArgs {
    /// The limits these flags describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            place_order_per_user: NonZeroU32::new(self.place_order_per_user_per_second).map(
                |rate| {
                    (
                        rate,
                        NonZeroU32::new(self.place_order_burst).unwrap_or(NonZeroU32::MIN),
                    )
                },
            ),
            ..self.server.limits()
        }
    }
}

/// Load shedding over every connection of a TCP server: at most `max` calls in flight; one more
/// is refused at once with RESOURCE_EXHAUSTED, reason `SERVER_BUSY` (nothing queues). Not on
/// the in-process path: the embedded system's own calls are never shed.
#[derive(Debug, Clone)]
pub struct CallLimitLayer {
    permits: Arc<tokio::sync::Semaphore>,
    max: u32,
}

impl CallLimitLayer {
    /// At most `max` calls at once (shared by every connection of the server).
    pub fn new(max: u32) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(max).unwrap_or(usize::MAX),
            )),
            max,
        }
    }
}

impl<S> Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimit {
            limit: self.clone(),
            inner,
        }
    }
}

/// The service made by [`CallLimitLayer`].
#[derive(Debug, Clone)]
pub struct CallLimit<S> {
    limit: CallLimitLayer,
    inner: S,
}

/// RESOURCE_EXHAUSTED: the server has `max` calls in flight.
fn server_busy(max: u32) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("the server is at its limit of {max} calls in flight: retry later"),
        ErrorDetails::with_error_info(
            "SERVER_BUSY",
            ERROR_DOMAIN,
            HashMap::from([("max_concurrent_calls".to_owned(), max.to_string())]),
        ),
    )
}

impl<S> Service<http::Request<Body>> for CallLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            let max = self.limit.max;
            tracing::info!(path = req.uri().path(), max, "call refused: server busy");
            return Box::pin(async move { Ok(server_busy(max).into_http()) });
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            drop(permit);
            response
        })
    }
}

type KeyedLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// Keys kept by a limiter before it forgets those whose rate has fully recovered.
const RETAIN_ABOVE_KEYS: usize = 10_000;

/// Rate limits per key for some RPCs: the key is a string field of the request message (for
/// PlaceOrder, `user_id`), read from the body before the handler runs. A call over its key's
/// rate is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` saying when the next call is
/// allowed, and an `ErrorInfo` reason `RATE_LIMITED`; nothing runs.
#[derive(Debug, Clone, Default)]
pub struct KeyedRateLimitLayer {
    rules: Arc<HashMap<String, Rule>>,
}

struct Rule {
    input: MessageDescriptor,
    field: String,
    limiter: KeyedLimiter,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule").field("field", &self.field).finish()
    }
}

impl KeyedRateLimitLayer {
    /// The limits of `limits` (PlaceOrder per `user_id`), or none.
    pub fn new(limits: &Limits) -> Self {
        let mut rules = HashMap::new();
        if let Some((rate, burst)) = limits.place_order_per_user
            && let Some(input) = crate::string_guard::input_message(PLACE_ORDER)
        {
            rules.insert(
                PLACE_ORDER.to_owned(),
                Rule {
                    input,
                    field: "user_id".to_owned(),
                    limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
                },
            );
        }
        Self {
            rules: Arc::new(rules),
        }
    }
}

impl<S> Layer<S> for KeyedRateLimitLayer {
    type Service = KeyedRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            rules: self.rules.clone(),
            inner,
        }
    }
}

/// The service made by [`KeyedRateLimitLayer`].
#[derive(Debug, Clone)]
pub struct KeyedRateLimit<S> {
    rules: Arc<HashMap<String, Rule>>,
    inner: S,
}

/// The key field of the first gRPC frame of `body` decoded as `input` (empty when it does not
/// decode: the handler answers such a body, and an empty key is still one key).
fn key_of(input: &MessageDescriptor, field: &str, body: &[u8]) -> String {
    let Some((&[0, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return String::new();
    };
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    let Some(message) = rest.get(..len) else {
        return String::new();
    };
    DynamicMessage::decode(input.clone(), message)
        .ok()
        .and_then(|m| {
            m.get_field_by_name(field)
                .and_then(|v| v.as_str().map(str::to_owned))
        })
        .unwrap_or_default()
}

/// RESOURCE_EXHAUSTED for `key`, retry after `wait`.
fn rate_limited(path: &str, field: &str, wait: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(wait));
    details.set_error_info(
        "RATE_LIMITED",
        ERROR_DOMAIN,
        HashMap::from([
            ("rpc".to_owned(), path.to_owned()),
            ("key".to_owned(), field.to_owned()),
        ]),
    );
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "too many calls for this {field}: retry in {} ms",
            wait.as_millis().max(1)
        ),
        details,
    )
}

impl<S> Service<http::Request<Body>> for KeyedRateLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if !self.rules.contains_key(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let rules = self.rules.clone();
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let Some(rule) = rules.get(&path) else {
                return inner.call(req).await;
            };
            let (parts, body) = req.into_parts();
            // The string guard below enforces the size limit; this only needs the key.
            let bytes = match Limited::new(body, crate::string_guard::MAX_REQUEST_BYTES)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(err) => return Ok(Status::from_error(err).into_http()),
            };
            // An end user's calls count as theirs, whatever user_id they name (an empty one
            // included; docs/operations.md, "End users").
            let key = match parts.extensions.get::<crate::access::Identity>() {
                Some(crate::access::Identity::User(subject)) => subject.clone(),
                _ => key_of(&rule.input, &rule.field, &bytes),
            };
            if rule.limiter.len() > RETAIN_ABOVE_KEYS {
                rule.limiter.retain_recent();
            }
            if let Err(not_until) = rule.limiter.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                tracing::info!(%path, field = %rule.field, wait_ms = wait.as_millis(), "call refused: rate limit");
                return Ok(rate_limited(&path, &rule.field, wait).into_http());
            }
            let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use sagaflow_proto::order::v1::PlaceOrderRequest;

    use super::*;

    #[test]
    fn reads_the_key_field_of_the_first_frame() {
        let input = crate::string_guard::input_message(PLACE_ORDER).unwrap();
        let message = prost::Message::encode_to_vec(&PlaceOrderRequest {
            user_id: "alice".into(),
            ..PlaceOrderRequest::default()
        });
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        assert_eq!(key_of(&input, "user_id", &frame), "alice");
        assert_eq!(key_of(&input, "user_id", &frame[..3]), "");
        assert_eq!(key_of(&input, "user_id", &[]), "");
    }

    #[test]
    fn rate_limited_carries_retry_info() {
        let status = rate_limited(PLACE_ORDER, "user_id", Duration::from_millis(20));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(20))
        );
        assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
    }

    #[tokio::test]
    async fn calls_over_the_server_limit_are_refused_at_once() {
        use tower::ServiceExt as _;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = futures::FutureExt::shared(released);
        let inner = tower::service_fn(move |_req: http::Request<Body>| {
            let released = released.clone();
            async move {
                let _ = released.await;
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let mut service = CallLimitLayer::new(1).layer(inner);
        // `call` takes the place at once: the first call holds it until released, and the
        // second is answered without reaching the inner service.
        let first = service
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(Body::empty()));
        let first = tokio::spawn(first);
        let second = service
            .clone()
            .oneshot(http::Request::new(Body::empty()))
            .await
            .unwrap();
        let status = Status::from_header_map(second.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "SERVER_BUSY"
        );
        release.send(()).unwrap();
        assert!(
            first
                .await
                .unwrap()
                .unwrap()
                .headers()
                .get("grpc-status")
                .is_none()
        );
        // The place is free again.
        let third = service
            .oneshot(http::Request::new(Body::empty()))
            .await
            .unwrap();
        assert!(third.headers().get("grpc-status").is_none());
    }

    #[test]
    fn flags_make_limits() {
        let limits = LimitArgs::default().limits();
        assert_eq!(limits.request_timeout, Duration::from_secs(90));
        assert_eq!(limits.max_streams_per_connection, 512);
        assert_eq!(limits.max_connection_age, Some(Duration::from_secs(1800)));
        let few = ServerLimitArgs {
            max_concurrent_per_connection: 1000,
            http2_keepalive_interval_ms: 0,
            ..ServerLimitArgs::default()
        }
        .limits();
        assert_eq!(few.max_streams_per_connection, 1000);
        assert_eq!(few.http2_keepalive_interval, None);
        assert!(limits.place_order_per_user.is_some());
        assert!(Limits::default().place_order_per_user.is_none());
        let off = LimitArgs {
            place_order_per_user_per_second: 0,
            ..LimitArgs::default()
        };
        assert!(off.limits().place_order_per_user.is_none());
    }
}
