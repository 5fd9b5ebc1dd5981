//! Prometheus metrics for every sagaflow process (docs/operations.md, "Watching"): the code records
//! facts through the [`metrics`] facade where they happen (the saga engine's executor, the outbox
//! relay); this module installs the one recorder of the process and serves its Prometheus text
//! format over HTTP — **only** when `--metrics-listen ADDR` / `SAGAFLOW_METRICS_LISTEN` is set.
//!
//! ```text
//!  counter!/histogram!/gauge! ──▶ global PrometheusRecorder ◀── GET http://ADDR/<any path>
//!  (no recorder installed: the facade's no-op, nothing allocated)      (MetricsExporter task)
//! ```
//!
//! ```no_run
//! # async fn run() -> Result<(), sagaflow_telemetry::metrics::MetricsError> {
//! let exporter = sagaflow_telemetry::metrics::MetricsExporter::start("127.0.0.1:9464".parse().unwrap())?;
//! // … serve …
//! exporter.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

use clap::Args;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};
use tokio::{sync::oneshot, task::JoinHandle};

/// The environment variable of `--metrics-listen`.
pub const METRICS_LISTEN_ENV: &str = "SAGAFLOW_METRICS_LISTEN";

/// Upper bounds, in seconds, of the buckets of every latency histogram (step attempts take from
/// about a millisecond to the per-attempt timeout, 2 s by default).
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The metrics flag shared by the commands that serve (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (text format) over HTTP on this address, any path, e.g.
    /// `127.0.0.1:9464`. Default: off, nothing is recorded. The port must be given (not 0).
    #[arg(long, env = METRICS_LISTEN_ENV)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Why the metrics endpoint could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// `--metrics-listen` named port 0: scrapers need a known port.
    #[error("--metrics-listen {0}: give a port (0 would pick an unknown one)")]
    NoPort(SocketAddr),
    /// The exporter could not be built (usually: the address cannot be bound).
    #[error("cannot serve metrics on {addr}: {source}")]
    Build {
        /// The address asked for.
        addr: SocketAddr,
        /// The exporter's complaint.
        source: BuildError,
    },
    /// Another metrics recorder was installed first (a second exporter in one process).
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
    /// Not called inside a tokio runtime.
    #[error("the metrics exporter must be started inside a tokio runtime")]
    NoRuntime,
}

/// The running metrics endpoint: installs the process-global recorder and owns the HTTP task.
/// [`shutdown`](Self::shutdown) stops serving (the recorder stays installed, recording is cheap).
#[derive(Debug)]
#[must_use = "dropping the exporter leaves its task running until the runtime stops; call shutdown"]
pub struct MetricsExporter {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl MetricsExporter {
    /// Binds `addr`, installs the global Prometheus recorder (histograms with
    /// [`LATENCY_BUCKETS_SECONDS`]) and serves the text format on every path of `http://addr/`.
    ///
    /// # Errors
    /// [`MetricsError`]: port 0, the address cannot be bound, a recorder is already installed,
    /// or no tokio runtime.
    pub fn start(addr: SocketAddr) -> Result<Self, MetricsError> {
        if addr.port() == 0 {
            return Err(MetricsError::NoPort(addr));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MetricsError::NoRuntime)?;
        let built = {
            let _entered = runtime.enter();
            PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets(&LATENCY_BUCKETS_SECONDS)
                .and_then(PrometheusBuilder::build)
        };
        let (recorder, serve) = built.map_err(|source| MetricsError::Build { addr, source })?;
        metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            tokio::select! {
                served = serve => {
                    if let Err(err) = served {
                        tracing::error!(error = ?err, "the metrics endpoint stopped");
                    }
                }
                _ = stopped => {}
            }
        });
        tracing::info!(%addr, "metrics endpoint listening");
        Ok(Self {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Starts the exporter when `args` ask for one.
    ///
    /// # Errors
    /// As [`MetricsExporter::start`].
    pub fn from_args(args: &MetricsArgs) -> Result<Option<Self>, MetricsError> {
        args.metrics_listen.map(Self::start).transpose()
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the HTTP task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(err) = (&mut self.task).await {
            tracing::warn!(error = %err, "the metrics endpoint task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_refused() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(matches!(
            MetricsExporter::start(addr),
            Err(MetricsError::NoPort(a)) if a == addr
        ));
    }

    #[test]
    fn outside_a_runtime_is_an_error() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(matches!(
            MetricsExporter::start(addr),
            Err(MetricsError::NoRuntime)
        ));
    }

    #[test]
    fn the_flag_is_off_by_default() {
        assert!(MetricsArgs::default().metrics_listen.is_none());
    }
}
