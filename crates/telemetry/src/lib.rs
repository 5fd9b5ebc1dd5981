//! Tracing setup for every sagaflow process (DESIGN §8): an `EnvFilter` (`RUST_LOG`, default
//! `info`), human-readable output for a terminal or one JSON object per line for log shippers.
//!
//! ```no_run
//! let _guard = sagaflow_telemetry::init("sagaflow-dev", sagaflow_telemetry::LogFormat::Pretty);
//! tracing::info!("ready");
//! ```

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

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
/// plus sagaflow's own `saga.*` attributes).
pub mod semconv {
    /// The saga instance id.
    pub const SAGA_ID: &str = "saga.id";
    /// The step name.
    pub const SAGA_STEP: &str = "saga.step";
    /// The attempt number, from 1.
    pub const SAGA_ATTEMPT: &str = "saga.attempt";
    /// `forward` or `compensating`.
    pub const SAGA_PHASE: &str = "saga.phase";
}

/// Keeps telemetry alive; drop it at exit (later: flushes exporters).
#[derive(Debug)]
#[must_use = "dropping the guard ends telemetry"]
pub struct TelemetryGuard {
    _service: String,
}

/// Installs the global subscriber for `service` (used as `service.name`). A second call in the
/// same process (tests) leaves the first subscriber in place.
pub fn init(service: &str, format: LogFormat) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match format {
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .compact()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
    TelemetryGuard {
        _service: service.to_owned(),
    }
}
