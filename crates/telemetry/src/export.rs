//! Span export that says when it fails (docs/operations.md, "Watching"): the OTLP exporter's own
//! errors go nowhere by default (the SDK's internal logs are off), so a collector that is down
//! or refuses the spans would go unnoticed. [`ReportingExporter`] wraps the exporter and logs a
//! WARN on the first failed export and then at most once per [`REPORT_EVERY`], with the number
//! of failed batches and spans since the last report, and an INFO line when export works again.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};

/// The shortest gap between two warnings about failing exports.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// A [`SpanExporter`] that reports its inner exporter's failures, rate-limited (see the module
/// docs). Everything else is passed through.
#[derive(Debug)]
pub struct ReportingExporter<E> {
    inner: E,
    endpoint: String,
    state: Mutex<Reports>,
    failed_spans: AtomicU64,
}

#[derive(Debug, Default)]
struct Reports {
    /// When the last warning was logged; `None`: export is healthy (or never failed).
    last_warning: Option<Instant>,
    /// Failed batches since the last warning.
    failed_batches: u64,
}

/// What one export's outcome asks to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// Nothing (a success while healthy, or a failure inside the quiet window).
    Nothing,
    /// A warning: `batches` failed batches since the last one.
    Failing { batches: u64 },
    /// Export works again after failures.
    Recovered,
}

impl Reports {
    /// Records one export's outcome at `now` and says what to log.
    pub(crate) fn record(&mut self, ok: bool, now: Instant) -> Report {
        match (ok, self.last_warning) {
            (true, None) => Report::Nothing,
            (true, Some(_)) => {
                *self = Self::default();
                Report::Recovered
            }
            (false, last) => {
                self.failed_batches += 1;
                if last.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
                    self.last_warning = Some(now);
                    let batches = std::mem::take(&mut self.failed_batches);
                    Report::Failing { batches }
                } else {
                    Report::Nothing
                }
            }
        }
    }
}

impl<E> ReportingExporter<E> {
    /// Wraps `inner`, which exports to `endpoint` (named in the warnings).
    pub fn new(inner: E, endpoint: impl Into<String>) -> Self {
        Self {
            inner,
            endpoint: endpoint.into(),
            state: Mutex::new(Reports::default()),
            failed_spans: AtomicU64::new(0),
        }
    }

    fn report(&self, result: &OTelSdkResult, spans: u64) {
        if result.is_err() {
            self.failed_spans.fetch_add(spans, Ordering::Relaxed);
        }
        let report = match self.state.lock() {
            Ok(mut state) => state.record(result.is_ok(), Instant::now()),
            // A panic while holding this lock cannot happen (no code in it panics); say it
            // anyway rather than go silent.
            Err(_) => Report::Failing { batches: 1 },
        };
        match (report, result) {
            (Report::Failing { batches }, Err(err)) => {
                let spans = self.failed_spans.swap(0, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = %self.endpoint,
                    error = %err,
                    failed_batches = batches,
                    lost_spans = spans,
                    "span export failed: is the OTLP collector up? (repeats at most every {}s)",
                    REPORT_EVERY.as_secs()
                );
            }
            (Report::Recovered, _) => {
                self.failed_spans.store(0, Ordering::Relaxed);
                tracing::info!(endpoint = %self.endpoint, "span export works again");
            }
            _ => {}
        }
    }
}

impl<E: SpanExporter> SpanExporter for ReportingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        self.report(&result, spans);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_warns_then_at_most_once_per_window_with_the_count() {
        let mut reports = Reports::default();
        let start = Instant::now();
        assert_eq!(reports.record(true, start), Report::Nothing);
        assert_eq!(reports.record(false, start), Report::Failing { batches: 1 });
        for i in 1..=5 {
            assert_eq!(
                reports.record(false, start + Duration::from_secs(i)),
                Report::Nothing
            );
        }
        assert_eq!(
            reports.record(false, start + REPORT_EVERY),
            Report::Failing { batches: 6 }
        );
        assert_eq!(
            reports.record(true, start + REPORT_EVERY + Duration::from_secs(1)),
            Report::Recovered
        );
        assert_eq!(
            reports.record(true, start + REPORT_EVERY + Duration::from_secs(2)),
            Report::Nothing
        );
        // Failing again after a recovery warns at once.
        assert_eq!(
            reports.record(false, start + REPORT_EVERY + Duration::from_secs(3)),
            Report::Failing { batches: 1 }
        );
    }
}
