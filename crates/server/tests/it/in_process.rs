//! The in-process transport ([`sagaflow_server::transport`]) against a real server started with
//! [`grpc::spawn_on_in_process`], compared with a TCP channel to the same server:
//!
//! - a call made before the server serves waits for it; once the server shuts down, calls are
//!   refused as a closed port refuses them (UNAVAILABLE, a connect error, `ConnectionRefused`);
//! - `grpc-timeout` ends a call that hangs at its deadline with what tonic answers over TCP
//!   (CANCELLED "Timeout expired"), and drops the handler's future;
//! - a handler that panics is answered CANCELLED, as over TCP (its stream is reset), and the
//!   caller and the transport live on.

use std::{
    convert::Infallible,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sagaflow_server::{
    faults::FaultConfig,
    grpc::{self, ServerHandle},
    transport::{InProcess, Transport, traced},
};
use tokio::net::TcpListener;
use tonic::{Code, Status, body::Body, server::NamedService, service::RoutesBuilder};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::{Service, ServiceExt as _};

/// Routes of `test.Hangs` (never answers; sets its flag when its future is dropped) and
/// `test.Panics` (panics in the handler).
#[derive(Clone)]
struct TestService {
    name: &'static str,
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

macro_rules! named {
    ($ty:ident, $name:literal) => {
        #[derive(Clone)]
        struct $ty(TestService);
        impl NamedService for $ty {
            const NAME: &'static str = $name;
        }
        impl Service<http::Request<Body>> for $ty {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
                let test = self.0.clone();
                Box::pin(async move {
                    let _flag = SetOnDrop(test.dropped.clone());
                    if test.name == "panics" {
                        panic!("the handler panics (a test)");
                    }
                    std::future::pending::<()>().await;
                    Ok(http::Response::new(Body::empty()))
                })
            }
        }
    };
}

named!(Hangs, "test.Hangs");
named!(Panics, "test.Panics");

async fn start(local: &InProcess, dropped: &Arc<AtomicBool>) -> ServerHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(Hangs(TestService {
            name: "hangs",
            dropped: dropped.clone(),
        }))
        .add_service(Panics(TestService {
            name: "panics",
            dropped: dropped.clone(),
        }));
    grpc::spawn_on_in_process(
        listener,
        routes,
        &["test.Hangs", "test.Panics"],
        FaultConfig::default(),
        local.clone(),
    )
    .await
    .unwrap()
}

fn health() -> HealthCheckRequest {
    HealthCheckRequest {
        service: "test.Hangs".into(),
    }
}

/// The status a tonic client reads from a transport's answer: the error (the client's own
/// timer, a refused connection), or the response's `grpc-status` header (the server's timer).
fn status_of(answer: Result<http::Response<Body>, tower::BoxError>) -> Status {
    match answer {
        Err(error) => Status::from_error(error),
        Ok(response) => Status::from_header_map(response.headers())
            .unwrap_or_else(|| Status::internal("no grpc-status header")),
    }
}

/// A bare gRPC request to `path` (the test services read no body).
fn raw(path: &str, timeout: Option<&str>) -> http::Request<Body> {
    let mut request = http::Request::builder()
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    request.body(Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_the_server_and_are_refused_once_it_shut_down() {
    let local = InProcess::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let mut early = HealthClient::new(traced(local.clone()));
    let mut call = pin!(early.check(health()));
    assert!(
        futures::poll!(call.as_mut()).is_pending(),
        "a call before the server serves waits"
    );
    assert!(!local.is_serving());

    let server = start(&local, &dropped).await;
    assert!(local.is_serving());
    let reply = call.await.unwrap().into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);
    // The same server answers the same over TCP.
    let tcp = tcp_channel(&server).await;
    let reply = HealthClient::new(traced(tcp))
        .check(health())
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);

    server.shutdown().await.unwrap();
    assert!(!local.is_serving());
    let status = HealthClient::new(traced(local.clone()))
        .check(health())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("connect error"), "{status:?}");
    let mut source = std::error::Error::source(&status);
    let mut refused = false;
    while let Some(err) = source {
        refused |= err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        source = err.source();
    }
    assert!(refused, "the source is a refused connection: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_ends_a_hanging_call_as_over_tcp_and_drops_the_handler() {
    let local = InProcess::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let server = start(&local, &dropped).await;
    let tcp = tcp_channel(&server).await;
    for (how, transport) in [
        ("in-process", Transport::from(local.clone())),
        ("tcp", Transport::from(tcp)),
    ] {
        dropped.store(false, Ordering::SeqCst);
        let started = Instant::now();
        let answer = transport
            .oneshot(raw("/test.Hangs/Call", Some("100m")))
            .await;
        let took = started.elapsed();
        let status = status_of(answer);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Cancelled, "Timeout expired"),
            "{how}"
        );
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(5),
            "{how}: {took:?}"
        );
        if how == "in-process" {
            // The handler ran on the caller's task: its future is gone with the call.
            assert!(
                dropped.load(Ordering::SeqCst),
                "the handler's future was dropped"
            );
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_answered_cancelled_and_the_caller_lives_on() {
    let local = InProcess::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let server = start(&local, &dropped).await;
    let tcp = tcp_channel(&server).await;
    for (how, transport) in [
        ("in-process", Transport::from(local.clone())),
        ("tcp", Transport::from(tcp)),
    ] {
        dropped.store(false, Ordering::SeqCst);
        let answer = transport.oneshot(raw("/test.Panics/Call", None)).await;
        assert!(
            answer.is_err(),
            "{how}: no response from a panicking handler"
        );
        let status = status_of(answer);
        assert_eq!(status.code(), Code::Cancelled, "{how}: {status:?}");
        assert!(
            dropped.load(Ordering::SeqCst),
            "{how}: the handler's state was dropped"
        );
    }
    // The transport still serves.
    let reply = HealthClient::new(traced(local.clone()))
        .check(health())
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    server.shutdown().await.unwrap();
}

/// A connected TCP channel to `server`, for comparing the in-process answer with TCP's.
async fn tcp_channel(server: &sagaflow_server::grpc::ServerHandle) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}
