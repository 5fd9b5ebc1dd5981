//! The gRPC server every sagaflow process runs: the caller's services plus `grpc.health.v1` and
//! server reflection in both v1 and v1alpha (grpcurl 1.8.6 speaks only v1alpha),
//! behind the tracing layer (one span per call, parented to the caller's `traceparent`;
//! [`sagaflow_telemetry::propagation::TraceLayer`]), the access layer ([`crate::access`]: each
//! RPC's class from the protos, enforced), the count of repeated fields and the per-service
//! message limit ([`crate::repeated`]), the per-user rate limit ([`crate::limits`]), the
//! fault-injection layer ([`crate::faults`]) and the string-field guard
//! ([`crate::string_guard`]: INVALID_ARGUMENT for a control character in any string field of a
//! request, RESOURCE_EXHAUSTED for a message over the size limit), with TLS when configured
//! ([`crate::tls`]), tonic's per-connection concurrency limit (calls over it shed, not queued),
//! the server-wide call limit ([`crate::limits::CallLimitLayer`]), request timeout, HTTP/2
//! keepalive and connection age, and graceful shutdown that finishes in-flight calls
//! ([`ServerOptions`]; docs/operations.md, "Security" and "Request limits").
//!
//! ```text
//!  TcpListener ─ TLS (rustls, optional client certificate) ─┐
//!   calls per connection (shed), per server (CallLimitLayer),│
//!   request timeout, keepalive, connection age              ├─▶ TraceLayer ─▶ AccessLayer ─▶ RepeatedLimitLayer ─▶ KeyedRateLimitLayer ─▶ FaultLayer ─▶ StringGuardLayer ─▶ Routes ─┬─ caller's services
//!  InProcess (embedded only) ───────────────────────────────┘   (layers(), one stack for both)                                                                                      ├─ grpc.health.v1.Health
//!                                                                                                                                                                                   └─ grpc.reflection.{v1,v1alpha}.ServerReflection
//! ```
//!
//! The tracing layer is outermost so that a refusal, an injected fault, and a request the guard
//! refuses, is recorded on the call's span (`rpc.grpc.status_code`) like any other answer. The embedded
//! system also serves its own calls through the same stack without a socket
//! ([`spawn_on_in_process`], [`crate::transport::InProcess`]; docs/architecture.md, "Run modes").

use std::future::Future;

use tokio::net::TcpListener;
use tonic::{
    service::{Routes, RoutesBuilder},
    transport::server::TcpIncoming,
};
use tonic_health::ServingStatus;

use tonic::transport::ServerTlsConfig;

pub use crate::stack::{Layers, ServerStack, layers};
use crate::{access::AccessPolicy, faults::FaultConfig, limits::Limits, transport::InProcess};

/// How a server is set up besides its routes (docs/operations.md, "Security"). The default is
/// what tests and `sagaflow dev` run: plaintext, every call let through, the default limits, no
/// faults. A [`FaultConfig`] converts into it.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Faults to inject (chaos tests).
    pub faults: FaultConfig,
    /// Who may call which RPC.
    pub access: AccessPolicy,
    /// TLS of the listener ([`crate::tls::Tls::server_config`]); `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Message size, concurrency, timeout and rate limits.
    pub limits: Limits,
    /// Adopt every caller's `traceparent` (`--trust-traceparent`); default `false`: only internal
    /// RPCs and in-process calls continue the caller's trace, any other call starts a new trace
    /// linked to it ([`crate::stack::is_trusted_call`]; docs/operations.md, "Logs and traces from
    /// untrusted input").
    pub trust_traceparent: bool,
}

impl From<FaultConfig> for ServerOptions {
    fn from(faults: FaultConfig) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not load a descriptor set (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// The files of [`sagaflow_proto::FILE_DESCRIPTOR_SET`] that define the services named in
/// `service_names` (fully-qualified), with every file they import, transitively, as an encoded
/// `FileDescriptorSet`: what reflection may describe on a port that serves those services. Each
/// file's bytes are copied as they are, since decoding into `prost_types` would drop the custom
/// options (`rpc_class`) that `describe` shows. Empty if the set does not decode (a build
/// problem, logged): reflection then describes no sagaflow service rather than every one.
pub fn served_files(service_names: &[&str]) -> Vec<u8> {
    use prost::{
        Message as _,
        encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint},
    };

    let all = sagaflow_proto::FILE_DESCRIPTOR_SET;
    let pool = match prost_reflect::DescriptorPool::decode(all) {
        Ok(pool) => pool,
        Err(err) => {
            tracing::error!(error = %err, "the descriptor set does not decode: reflection describes no sagaflow service");
            return Vec::new();
        }
    };
    // The names of the files to keep: each served service's file and its imports.
    let mut keep = std::collections::HashSet::new();
    let mut stack: Vec<prost_reflect::FileDescriptor> = service_names
        .iter()
        .filter_map(|name| pool.get_service_by_name(name))
        .map(|service| service.parent_file())
        .collect();
    while let Some(file) = stack.pop() {
        if keep.insert(file.name().to_owned()) {
            stack.extend(file.dependencies());
        }
    }
    // `FileDescriptorSet { repeated FileDescriptorProto file = 1; }`: copy the kept entries.
    let mut out = Vec::new();
    let mut rest = all;
    while !rest.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut rest) else {
            break;
        };
        let Ok(len) = decode_varint(&mut rest).map(|l| usize::try_from(l).unwrap_or(usize::MAX))
        else {
            break;
        };
        if tag != 1 || wire_type != WireType::LengthDelimited || len > rest.len() {
            break;
        }
        let (file, after) = rest.split_at(len);
        rest = after;
        let kept = prost_types::FileDescriptorProto::decode(file)
            .is_ok_and(|proto| keep.contains(proto.name()));
        if kept {
            encode_key(1, WireType::LengthDelimited, &mut out);
            encode_varint(file.len() as u64, &mut out);
            out.extend_from_slice(file);
        }
    }
    out
}

/// `routes` with the health service (`service_names` and the whole server SERVING) and
/// reflection added.
async fn with_health_and_reflection(
    mut routes: RoutesBuilder,
    service_names: &[&str],
) -> Result<Routes, ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in service_names {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;

    // Reflection lists and describes only what this process serves: the files of its services
    // and their imports (a `serve order` neither lists nor describes SagaAdminService or the
    // point service; docs/operations.md, "Logs and traces from untrusted input"), plus health and
    // the google.rpc error details so that grpcurl can print a status's ErrorInfo and BadRequest.
    let served = served_files(service_names);
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(&served)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in service_names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(routes.routes())
}

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting connections and
/// waits for in-flight calls to finish.
///
/// `service_names` are the fully-qualified names (`sagaflow.order.v1.OrderService`) reported as
/// SERVING by the health service (the empty name, the whole server, is always reported).
///
/// # Errors
/// [`ServeError`] when reflection cannot be built or the transport fails.
pub async fn serve(
    listener: TcpListener,
    routes: RoutesBuilder,
    service_names: &[&str],
    options: impl Into<ServerOptions>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let options = options.into();
    let routes = with_health_and_reflection(routes, service_names).await?;
    let layers = layers(&options);
    serve_routes(
        listener,
        routes,
        service_names,
        &options,
        layers,
        None,
        shutdown,
    )
    .await
}

/// Closes an in-process transport when dropped: when its server stops, however it stops.
struct CloseOnDrop(Option<InProcess>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(local) = &self.0 {
            local.close();
        }
    }
}

/// Serves the finished `routes` behind `layers` (made from `options`) on `listener`; `local`, if
/// any, already serves the same stack and is closed when `shutdown` resolves or the server stops.
async fn serve_routes(
    listener: TcpListener,
    routes: Routes,
    service_names: &[&str],
    options: &ServerOptions,
    layers: Layers,
    local: Option<InProcess>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let _closer = CloseOnDrop(local.clone());
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        %addr,
        services = ?service_names,
        faults = %options.faults,
        in_process = local.is_some(),
        tls = options.tls.is_some(),
        access = if options.access.is_enforced() { "enforced" } else { "open" },
        "gRPC server listening"
    );
    // Small unary messages: do not let Nagle's algorithm hold replies back. Set on the incoming
    // stream: tonic's `Server::tcp_nodelay` applies only to listeners tonic binds itself, and a
    // reply written in two segments (headers, then data and trailers) otherwise waits for the
    // client's delayed ACK, 40 ms on Linux.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let limits = &options.limits;
    // Calls over the per-connection limit are shed (RESOURCE_EXHAUSTED), not queued: HTTP/2
    // lets more streams in than that, so they reach the server instead of waiting in the
    // client (docs/operations.md, "Request limits").
    let mut builder = tonic::transport::Server::builder()
        .load_shed(true)
        .concurrency_limit_per_connection(
            usize::try_from(limits.max_concurrent_per_connection).unwrap_or(usize::MAX),
        )
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(limits.http2_keepalive_interval)
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout));
    if let Some(age) = limits.max_connection_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(limits.request_timeout);
    }
    if let Some(tls) = options.tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    builder
        .layer(crate::limits::CallLimitLayer::new(
            limits.max_concurrent_calls,
        ))
        .layer(layers.into_inner())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // New in-process calls are refused from now on, as new connections are.
            if let Some(local) = &local {
                local.close();
            }
        })
        .await?;
    tracing::info!(%addr, "gRPC server stopped");
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received: shutting down"),
        () = term => tracing::info!("SIGTERM received: shutting down"),
    }
}

/// A server running on a background task, stopped by [`ServerHandle::shutdown`] (tests and the
/// embedded `sagaflow dev` use it).
#[derive(Debug)]
pub struct ServerHandle {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl ServerHandle {
    /// The bound address (with the real port when spawned on port 0).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, lets in-flight calls finish, and waits for the server.
    ///
    /// # Errors
    /// The server's own error, if it failed while running.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(%join, "gRPC server task failed");
                Ok(())
            }
        }
    }
}

/// Binds `addr` (use `127.0.0.1:0` for a free port) and serves `routes` on a background task.
///
/// # Errors
/// The bind error.
pub async fn spawn(
    addr: std::net::SocketAddr,
    routes: RoutesBuilder,
    service_names: &[&str],
    options: impl Into<ServerOptions>,
) -> std::io::Result<ServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    spawn_on(listener, routes, service_names, options)
}

/// Serves `routes` on an already-bound `listener` on a background task (bind first when other
/// components must know the address before the server runs, as the embedded system does).
///
/// # Errors
/// When the listener's local address cannot be read.
pub fn spawn_on(
    listener: TcpListener,
    routes: RoutesBuilder,
    service_names: &[&str],
    options: impl Into<ServerOptions>,
) -> std::io::Result<ServerHandle> {
    let options = options.into();
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let names: Vec<String> = service_names.iter().map(|s| (*s).to_owned()).collect();
    let task = tokio::spawn(async move {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        serve(listener, routes, &names, options, async {
            let _ = stopped.await;
        })
        .await
    });
    Ok(ServerHandle {
        addr,
        stop: Some(stop),
        task,
    })
}

/// Like [`spawn_on`], and serves the same stack to this process's own callers through `local`
/// without a socket (the embedded system; [`crate::transport`]). Returns once `local` serves, so
/// that calls made right after (seeding) need not wait; its calls are refused from the moment
/// the server starts shutting down.
///
/// # Errors
/// When the listener's address cannot be read or reflection cannot be built (`local` is then
/// closed).
pub async fn spawn_on_in_process(
    listener: TcpListener,
    routes: RoutesBuilder,
    service_names: &[&str],
    options: impl Into<ServerOptions>,
    local: InProcess,
) -> Result<ServerHandle, ServeError> {
    let options = options.into();
    // Closed if this returns an error (or is dropped) before the server task owns it.
    let mut closer = CloseOnDrop(Some(local.clone()));
    let addr = listener.local_addr()?;
    let routes = with_health_and_reflection(routes, service_names).await?;
    let layers = layers(&options);
    local.serve(layers.service(routes.clone().prepare()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let names: Vec<String> = service_names.iter().map(|s| (*s).to_owned()).collect();
    let task = tokio::spawn(async move {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let stopped = async {
            let _ = stopped.await;
        };
        serve_routes(
            listener,
            routes,
            &names,
            &options,
            layers,
            Some(local),
            stopped,
        )
        .await
    });
    closer.0 = None;
    Ok(ServerHandle {
        addr,
        stop: Some(stop),
        task,
    })
}

/// Opens the database at `url` (creating and migrating it), lets `register` add the service built
/// on it to the routes, and serves them on a free loopback port: one service on its own database,
/// as every service's integration tests need it.
///
/// # Errors
/// When the database cannot be opened or the port cannot be bound.
pub async fn spawn_service(
    url: &str,
    migrations: crate::Migrations,
    service_name: &str,
    register: impl FnOnce(crate::Db, &mut RoutesBuilder),
) -> anyhow::Result<(crate::Db, ServerHandle)> {
    let db = crate::Db::connect(url, migrations, &crate::PoolConfig::default()).await?;
    let mut routes = RoutesBuilder::default();
    register(db.clone(), &mut routes);
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let server = spawn(loopback, routes, &[service_name], FaultConfig::default()).await?;
    Ok((db, server))
}
