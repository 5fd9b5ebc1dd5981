//! Without OpenTelemetry the layer and the interceptor are transparent.

use sagaflow_telemetry::propagation::{current_traceparent, inject};
use tracing::Instrument as _;

use crate::health::{HealthServer, check};

/// A current-thread runtime: the thread-local subscriber (fmt only, no OpenTelemetry) covers
/// the server's tasks too.
#[tokio::test]
async fn layer_and_interceptor_pass_calls_through_without_opentelemetry() {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::sink)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let server = HealthServer::start().await;
    let mut client = server.client().await;
    async {
        assert_eq!(current_traceparent(), None);
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.is_empty());

        let ok = client.check(check("")).await.unwrap().into_inner();
        assert_eq!(
            ok.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let err = client.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
    .instrument(tracing::info_span!("caller"))
    .await;
    server.stop().await;
}
