//! The engine's clock (docs/architecture.md, "Time"): an injectable wall clock, corrected to the
//! database's clock so that every replica stamps leases, retry times and deadlines on one time
//! line even when the machines' clocks disagree.
//!
//! The correction is an offset, sampled from the store ([`crate::SagaStore::clock_ms`]) by the
//! poller at most once per [`SYNC_INTERVAL_MS`], as `database − midpoint of the round trip`.
//! The store's claim also compares lease expiry with the database's own clock, so a replica whose
//! clock runs ahead never takes a live lease, even before its first sample.

use std::{
    fmt,
    sync::atomic::{AtomicI64, Ordering},
};

/// Differences from the current offset up to this are noise, milliseconds (a lease is seconds).
pub const OFFSET_TOLERANCE_MS: i64 = 250;

/// Shortest time between two samples of the database's clock, milliseconds.
pub const SYNC_INTERVAL_MS: i64 = 1_000;

/// A wall clock in unix milliseconds. Inject one with `EngineBuilder::clock` (tests skew it).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Unix milliseconds now.
    fn now_ms(&self) -> i64;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        sagaflow_server::db::now_ms()
    }
}

/// The machine's clock shifted by a fixed amount (a skewed replica, for tests and drills).
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    /// Added to the machine's clock, milliseconds (negative: behind).
    pub skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> i64 {
        sagaflow_server::db::now_ms().saturating_add(self.skew_ms)
    }
}

/// Unix milliseconds that follow tokio's clock: `epoch_ms` plus the tokio time elapsed since
/// the clock was made. Under paused tokio time (`#[tokio::test(start_paused = true)]`) it moves
/// only when tokio's clock advances — when every task waits on a timer — so an engine test of
/// retry backoff runs its waits without waiting for real. Give the store the same clock
/// ([`crate::store::MemorySagaStore::with_clock`]).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch_ms: i64,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `epoch_ms` now (call inside a tokio runtime for paused time).
    pub fn new(epoch_ms: i64) -> Self {
        Self {
            epoch_ms,
            started: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.epoch_ms.saturating_add(elapsed)
    }
}

/// A clock corrected by a sampled offset to the database's clock.
#[derive(Debug)]
pub(crate) struct CorrectedClock {
    clock: Box<dyn Clock>,
    offset_ms: AtomicI64,
    /// Local time of the last sample; `i64::MIN` before the first.
    sampled_at: AtomicI64,
}

impl CorrectedClock {
    pub(crate) fn new(clock: Box<dyn Clock>) -> Self {
        Self {
            clock,
            offset_ms: AtomicI64::new(0),
            sampled_at: AtomicI64::new(i64::MIN),
        }
    }

    /// The corrected time, unix ms.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock
            .now_ms()
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The uncorrected local time, unix ms.
    pub(crate) fn local_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether a new sample is due.
    pub(crate) fn sample_due(&self) -> bool {
        let last = self.sampled_at.load(Ordering::Relaxed);
        last == i64::MIN || self.clock.now_ms().saturating_sub(last) >= SYNC_INTERVAL_MS
    }

    /// Records a sample: the database said `database_ms` between local times `sent` and
    /// `received`.
    ///
    /// The offset only moves when the sample differs from it by more than
    /// [`OFFSET_TOLERANCE_MS`]: a round trip's noise must not make the engine's time step back
    /// and forth between two readings (a synchronized clock keeps offset 0).
    pub(crate) fn record(&self, sent: i64, received: i64, database_ms: i64) {
        let midpoint = sent + (received - sent) / 2;
        let sampled = database_ms.saturating_sub(midpoint);
        let current = self.offset_ms.load(Ordering::Relaxed);
        if sampled.saturating_sub(current).abs() > OFFSET_TOLERANCE_MS {
            self.offset_ms.store(sampled, Ordering::Relaxed);
        }
        self.sampled_at.store(received, Ordering::Relaxed);
    }

    /// The current offset, milliseconds.
    pub(crate) fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_is_corrected_by_the_sample() {
        let clock = CorrectedClock::new(Box::new(SkewedClock { skew_ms: 3_600_000 }));
        assert!(clock.sample_due());
        let local = clock.local_ms();
        let database = sagaflow_server::db::now_ms();
        clock.record(local, local + 4, database + 2);
        assert!(!clock.sample_due());
        assert!((clock.now_ms() - sagaflow_server::db::now_ms()).abs() < 1_000);
        assert!((clock.offset_ms() + 3_600_000).abs() < 1_000);
    }
}
