//! Tracing setup for every sagaflow process (docs/operations.md, "Watching"): an `EnvFilter`
//! (`RUST_LOG`, default `info`), human-readable output for a terminal or one JSON object per line
//! for log shippers, and — only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — OpenTelemetry export of
//! spans over OTLP/gRPC with W3C trace-context propagation ([`propagation`]).
//!
//! ```no_run
//! # async fn run() {
//! let telemetry = sagaflow_telemetry::init("sagaflow-dev", sagaflow_telemetry::LogFormat::Pretty);
//! tracing::info!("ready");
//! // … serve until a shutdown signal …
//! if let Err(err) = telemetry.shutdown().await {
//!     eprintln!("telemetry: {err}");
//! }
//! # }
//! ```
//!
//! Without `OTEL_EXPORTER_OTLP_ENDPOINT` no exporter, thread or OpenTelemetry layer exists and
//! the [`propagation`] helpers are cheap no-ops.
//!
//! [`metrics`] serves the process's Prometheus metrics over HTTP, only when asked
//! (`--metrics-listen`); the code records them through the `metrics` facade.

use std::time::Duration;

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource, error::OTelSdkError, propagation::TraceContextPropagator, trace::SdkTracerProvider,
};
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, prelude::*};

pub mod export;
pub mod metrics;
pub mod propagation;
pub mod untrusted;

/// The environment variable that turns OTLP export on (OpenTelemetry specification), e.g.
/// `http://localhost:4317`.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The environment variable with `EnvFilter` directives choosing which spans are exported
/// (default [`DEFAULT_EXPORT_FILTER`]); independent of `RUST_LOG`, which only filters log output.
pub const EXPORT_FILTER_ENV: &str = "SAGAFLOW_OTEL_FILTER";

/// Spans at `info` and above are exported unless [`EXPORT_FILTER_ENV`] says otherwise.
pub const DEFAULT_EXPORT_FILTER: &str = "info";

/// Appended to every export filter: the exporter's own transport must never produce spans it
/// then exports (a feedback loop), whatever the configured directives say.
const EXPORT_FILTER_SUPPRESS: &str = "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off";

/// How long a flush or a shutdown waits for the exporter (the SDK's default).
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The instrumentation scope name on exported spans.
const TRACER_NAME: &str = "sagaflow";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Compact, coloured when stderr is a terminal.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Span and attribute names shared by every crate (OpenTelemetry semantic conventions for RPC,
/// plus sagaflow's own `saga.*` attributes). Use them in `tracing` macros as
/// `{ semconv::SAGA_ID } = %id`.
pub mod semconv {
    /// The saga instance id.
    pub const SAGA_ID: &str = "saga.id";
    /// The step name.
    pub const SAGA_STEP: &str = "saga.step";
    /// The attempt number, from 1.
    pub const SAGA_ATTEMPT: &str = "saga.attempt";
    /// `forward`, `compensating` or `finalizing` (the failure finalizer).
    pub const SAGA_PHASE: &str = "saga.phase";
    /// The saga definition's name (`order`).
    pub const SAGA_DEFINITION: &str = "saga.definition";
    /// How a step attempt ended: `ok`, `business_error` or `transient_error`.
    pub const SAGA_OUTCOME: &str = "saga.outcome";
    /// The engine (lease owner) that claimed sagas.
    pub const SAGA_OWNER: &str = "saga.owner";
    /// How many sagas one claim took over.
    pub const SAGA_CLAIMED: &str = "saga.claimed";

    /// The outbox event's id (the consumer's inbox key).
    pub const OUTBOX_EVENT_ID: &str = "outbox.event_id";
    /// The outbox event's type (`OrderCreated`, …).
    pub const OUTBOX_EVENT_TYPE: &str = "outbox.event_type";
    /// The aggregate (order) id of an outbox event.
    pub const OUTBOX_AGGREGATE_ID: &str = "outbox.aggregate_id";

    /// Resource attribute naming the process's service.
    pub const SERVICE_NAME: &str = "service.name";
    /// The RPC system; always `grpc` here.
    pub const RPC_SYSTEM: &str = "rpc.system";
    /// The full gRPC service name, e.g. `sagaflow.payment.v1.PaymentService`.
    pub const RPC_SERVICE: &str = "rpc.service";
    /// The RPC method name, e.g. `StartPayment`.
    pub const RPC_METHOD: &str = "rpc.method";
    /// The numeric gRPC status code of the call (0 = OK).
    pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";

    /// `tracing-opentelemetry` special field: the exported span name.
    pub const OTEL_NAME: &str = "otel.name";
    /// `tracing-opentelemetry` special field: `server`, `client`, `internal`, …
    pub const OTEL_KIND: &str = "otel.kind";
    /// `tracing-opentelemetry` special field: `ok` or `error`.
    pub const OTEL_STATUS_CODE: &str = "otel.status_code";
}

/// Why telemetry could not be set up, flushed or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The span export filter does not parse.
    #[error("invalid span export filter {directives:?}: {source}")]
    Filter {
        /// The directives as given.
        directives: String,
        /// The parser's complaint.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The exporter's runtime could not be started.
    #[error("cannot start the OTLP export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The OTLP exporter rejected its configuration (usually the endpoint).
    #[error("cannot build the OTLP span exporter for {endpoint:?}: {source}")]
    Exporter {
        /// The endpoint as configured.
        endpoint: String,
        /// The exporter's complaint.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Another global tracing subscriber was installed first.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    /// Flushing or shutting down the span pipeline failed (spans may have been lost).
    #[error("span export: {0}")]
    Export(#[source] OTelSdkError),
    /// The blocking task that flushed or shut down the pipeline did not finish.
    #[error("span export task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// What [`init_with`] sets up. [`TelemetryConfig::from_env`] is what [`init`] uses.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    service: String,
    format: LogFormat,
    logs: bool,
    otlp_endpoint: Option<String>,
    export_filter: String,
    log_filter: String,
}

impl TelemetryConfig {
    /// The same configuration with `directives` as the log filter when `RUST_LOG` is unset
    /// (default `info`); `sagaflow bench` uses `warn`, so that a load run prints no line per saga.
    pub fn with_default_log_filter(mut self, directives: &str) -> Self {
        directives.clone_into(&mut self.log_filter);
        self
    }

    /// Logs to stderr in `format`; no span export.
    pub fn new(service: impl Into<String>, format: LogFormat) -> Self {
        Self {
            service: service.into(),
            format,
            logs: true,
            otlp_endpoint: None,
            export_filter: DEFAULT_EXPORT_FILTER.to_owned(),
            log_filter: "info".to_owned(),
        }
    }

    /// Like [`new`](Self::new), plus span export when [`OTLP_ENDPOINT_ENV`] is set and not empty,
    /// filtered by [`EXPORT_FILTER_ENV`] when that is set.
    pub fn from_env(service: impl Into<String>, format: LogFormat) -> Self {
        let mut config = Self::new(service, format);
        config.otlp_endpoint = non_empty_env(OTLP_ENDPOINT_ENV);
        if let Some(filter) = non_empty_env(EXPORT_FILTER_ENV) {
            config.export_filter = filter;
        }
        config
    }

    /// Export spans over OTLP/gRPC to `endpoint` (e.g. `http://127.0.0.1:4317`).
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// `EnvFilter` directives choosing the exported spans (default [`DEFAULT_EXPORT_FILTER`]).
    pub fn export_filter(mut self, directives: impl Into<String>) -> Self {
        self.export_filter = directives.into();
        self
    }

    /// Whether log lines are written to stderr (default yes; tests turn it off unless
    /// `TEST_LOG` is set, so that a passing test prints nothing).
    pub fn logs(mut self, enabled: bool) -> Self {
        self.logs = enabled;
        self
    }

    /// The service name (`service.name` on exported spans).
    pub fn service(&self) -> &str {
        &self.service
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Keeps telemetry alive. Dropping it flushes the span exporter and shuts it down, blocking the
/// dropping thread for at most a few seconds; [`shutdown`](Self::shutdown) does the same without
/// blocking the async runtime and reports failures.
#[derive(Debug)]
#[must_use = "dropping the guard ends span export"]
pub struct TelemetryGuard {
    service: String,
    pipeline: Option<ExportPipeline>,
}

impl TelemetryGuard {
    /// The service name given at init.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Exports every finished span now (waits at most 5 seconds). A no-op when not exporting.
    pub async fn flush(&self) -> Result<(), TelemetryError> {
        let Some(pipeline) = &self.pipeline else {
            return Ok(());
        };
        let provider = pipeline.provider.clone();
        run_blocking(move || provider.force_flush().map_err(TelemetryError::Export)).await
    }

    /// Exports the remaining spans and stops the exporter (waits at most 5 seconds). Call it at
    /// the end of `main`, after the servers have drained, so the last spans are not lost.
    pub async fn shutdown(mut self) -> Result<(), TelemetryError> {
        match self.pipeline.take() {
            Some(pipeline) => run_blocking(move || pipeline.shutdown()).await,
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(pipeline) = self.pipeline.take() {
            // The exporter runs on its own runtime, so blocking here cannot starve it.
            if let Err(err) = pipeline.shutdown() {
                tracing::warn!(error = %err, "span export did not shut down cleanly");
            }
        }
    }
}

/// Runs `f` on tokio's blocking pool when inside a runtime, inline otherwise.
async fn run_blocking<F>(f: F) -> Result<(), TelemetryError>
where
    F: FnOnce() -> Result<(), TelemetryError> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(TelemetryError::Task)?,
        Err(_) => f(),
    }
}

/// The OTLP span pipeline: a batch processor (its own thread) feeding a tonic exporter whose
/// connection is driven by a private one-thread tokio runtime. Owning the runtime means the
/// exporter keeps working while, and after, the application's runtime shuts down, and a
/// blocking flush in `Drop` cannot deadlock a current-thread runtime.
#[derive(Debug)]
struct ExportPipeline {
    provider: SdkTracerProvider,
    _runtime: ExportRuntime,
}

/// A runtime that may be dropped from inside another runtime (plain `Runtime::drop` panics
/// there).
#[derive(Debug)]
struct ExportRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl ExportPipeline {
    fn start(service: &str, endpoint: &str) -> Result<Self, TelemetryError> {
        let runtime = ExportRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()
                .map_err(TelemetryError::Runtime)?,
        ));
        let exporter = {
            let _entered = runtime.0.as_ref().map(tokio::runtime::Runtime::enter);
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|source| TelemetryError::Exporter {
                    endpoint: endpoint.to_owned(),
                    source,
                })?
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(export::ReportingExporter::new(exporter, endpoint))
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        Ok(Self {
            provider,
            _runtime: runtime,
        })
    }

    /// Blocks until the remaining spans are exported (or [`EXPORT_SHUTDOWN_TIMEOUT`] passes).
    fn shutdown(self) -> Result<(), TelemetryError> {
        self.shutdown_within(EXPORT_SHUTDOWN_TIMEOUT)
    }

    fn shutdown_within(self, timeout: Duration) -> Result<(), TelemetryError> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(TelemetryError::Export)
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn log_layer(format: LogFormat, default_filter: &str) -> BoxedLayer {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Pretty => fmt::layer()
            .compact()
            .fmt_fields(escaped_fields())
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    }
}

/// The pretty format's field formatter: `name=value` separated by spaces (the message bare), every
/// value passed through [`untrusted::escape`], so that no field — an error message quoting a
/// client's value included — can end a log line early or carry a terminal escape sequence
/// (docs/operations.md, "Logs and traces from untrusted input"). The JSON format escapes control
/// characters itself.
fn escaped_fields() -> impl for<'w> fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt as _;

    fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = untrusted::escape(&text);
        if field.name() == "message" {
            writer.write_str(&text)
        } else {
            write!(writer, "{field}={text}")
        }
    })
    .delimited(" ")
}

fn export_filter(directives: &str) -> Result<EnvFilter, TelemetryError> {
    let all = [directives.trim(), EXPORT_FILTER_SUPPRESS]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    EnvFilter::builder()
        .parse(&all)
        .map_err(|source| TelemetryError::Filter {
            directives: directives.to_owned(),
            source,
        })
}

/// Installs the global subscriber described by `config`: log output (filtered by `RUST_LOG`)
/// and, when an OTLP endpoint is configured, an OpenTelemetry layer (filtered by its own export
/// filter) exporting to it in batches, with `service.name` = the service, and the W3C
/// TraceContext propagator installed globally.
///
/// Nothing is installed on error. Call it inside a tokio runtime or outside one: the exporter
/// brings its own.
pub fn init_with(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let mut layers: Vec<BoxedLayer> = Vec::with_capacity(2);
    if config.logs {
        layers.push(log_layer(config.format, &config.log_filter));
    }
    let pipeline = match &config.otlp_endpoint {
        Some(endpoint) => {
            let filter = export_filter(&config.export_filter)?;
            let pipeline = ExportPipeline::start(&config.service, endpoint)?;
            let tracer = pipeline.provider.tracer(TRACER_NAME);
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(filter)
                    .boxed(),
            );
            Some(pipeline)
        }
        None => None,
    };
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        if let Some(pipeline) = pipeline {
            // Nothing was recorded through it; errors here say nothing useful.
            let _ = pipeline.shutdown();
        }
        return Err(TelemetryError::AlreadyInstalled);
    }
    if pipeline.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    Ok(TelemetryGuard {
        service: config.service.clone(),
        pipeline,
    })
}

/// Installs the global subscriber for `service` (used as `service.name`): logs to stderr in
/// `format`, plus OTLP span export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see
/// [`TelemetryConfig::from_env`]). Never fails: a second call in the same process (tests) leaves
/// the first subscriber in place, and an unusable exporter configuration is reported as a
/// warning and leaves logging on.
pub fn init(service: &str, format: LogFormat) -> TelemetryGuard {
    init_config(TelemetryConfig::from_env(service, format))
}

/// [`init`] with a configuration of the caller's (for example another default log filter,
/// [`TelemetryConfig::with_default_log_filter`]). Says on one INFO line where spans are exported
/// when export is on.
pub fn init_config(config: TelemetryConfig) -> TelemetryGuard {
    let service = config.service.clone();
    let format = config.format;
    match init_with(&config) {
        Ok(guard) => {
            if guard.pipeline.is_some()
                && let Some(endpoint) = &config.otlp_endpoint
            {
                tracing::info!(%endpoint, service = %service, "exporting spans over OTLP");
            }
            guard
        }
        Err(TelemetryError::AlreadyInstalled) => {
            tracing::debug!("a tracing subscriber was already installed");
            TelemetryGuard {
                service,
                pipeline: None,
            }
        }
        Err(err) => {
            let fallback = TelemetryConfig::new(service.clone(), format)
                .with_default_log_filter(&config.log_filter);
            let guard = init_with(&fallback).unwrap_or_else(|_| TelemetryGuard {
                service: service.clone(),
                pipeline: None,
            });
            tracing::warn!(error = %err, "OpenTelemetry export is off");
            guard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_filter_always_suppresses_transport_spans() {
        assert!(export_filter("info").is_ok());
        assert!(export_filter("").is_ok());
        assert!(export_filter("debug,sagaflow_telemetry=trace").is_ok());
        assert!(matches!(
            export_filter("info,=[=="),
            Err(TelemetryError::Filter { .. })
        ));
    }

    #[test]
    fn a_bad_endpoint_is_an_error() {
        assert!(matches!(
            ExportPipeline::start("svc", "not a uri"),
            Err(TelemetryError::Exporter { .. })
        ));
    }

    /// A collector that is down must not hold the process at exit beyond the timeout.
    #[test]
    fn shutdown_is_bounded_when_the_collector_is_down() {
        use opentelemetry::trace::{Span as _, Tracer as _};

        // Port 1 on loopback: connection refused.
        let pipeline = ExportPipeline::start("svc", "http://127.0.0.1:1").unwrap();
        let tracer = pipeline.provider.tracer("test");
        for _ in 0..10 {
            tracer.start("lost").end();
        }
        let started = std::time::Instant::now();
        let _ = pipeline.shutdown_within(Duration::from_millis(500));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn config_defaults_do_not_export() {
        let config = TelemetryConfig::new("svc", LogFormat::Json);
        assert_eq!(config.service(), "svc");
        assert!(config.otlp_endpoint.is_none());
        assert_eq!(config.export_filter, DEFAULT_EXPORT_FILTER);
    }
}
