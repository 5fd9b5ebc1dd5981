//! A tiny tonic server (the standard health service) behind `TraceLayer`, and a traced client.

use std::net::SocketAddr;

use sagaflow_telemetry::propagation::{TraceLayer, TracedChannel, traced};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::health_client::HealthClient;

/// The running server; `stop` shuts it down and joins it.
#[derive(Debug)]
pub(crate) struct HealthServer {
    pub(crate) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl HealthServer {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, service) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(TraceLayer::new())
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self { addr, stop, task }
    }

    pub(crate) async fn client(&self) -> HealthClient<TracedChannel> {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(traced(channel))
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// `Check` for `service` ("" = the whole server, which is SERVING).
pub(crate) fn check(service: &str) -> tonic_health::pb::HealthCheckRequest {
    tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    }
}
