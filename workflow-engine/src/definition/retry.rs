//! Retry policies of steps, compensations and the failure finalizer (docs/architecture.md,
//! "The engine" (Retries)).

/// Whether retry delays are randomized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Full jitter: the delay is uniform in `0..=cap` (the default; spreads retries of many
    /// sagas that failed together).
    #[default]
    Full,
    /// No jitter: the delay is the cap itself (deterministic; for tests and demos).
    None,
}

/// How a step is retried on transient failures (docs/architecture.md, "The engine" (Retries)).
///
/// The delay before attempt `n + 1`, after attempt `n` failed, is
///
/// ```text
/// cap(n)   = min(max_delay_ms, base_delay_ms * 2^(n-1))
/// delay(n) = uniform(0 ..= cap(n))        (full jitter; delay(n) = cap(n) with Jitter::None)
/// ```
///
/// (exponential backoff with full jitter, as in the AWS architecture blog's "Exponential Backoff
/// And Jitter"). Forward steps before the pivot and the pivot get `max_attempts` attempts;
/// compensations, the failure finalizer and steps after the pivot retry for as long as they fail
/// transiently, with the same capped delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of a forward step before its outcome is declared unknown (at least 1).
    pub max_attempts: u32,
    /// Cap of the first retry delay, milliseconds.
    pub base_delay_ms: u64,
    /// Largest retry delay, milliseconds.
    pub max_delay_ms: u64,
    /// Randomization of the delay.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    /// 5 attempts, delays capped at 100 ms, 200 ms, 400 ms, … up to 10 s, full jitter.
    fn default() -> Self {
        Self::new(5, 100, 10_000)
    }
}

impl RetryPolicy {
    /// A policy with full jitter.
    pub fn new(max_attempts: u32, base_delay_ms: u64, max_delay_ms: u64) -> Self {
        Self {
            max_attempts,
            base_delay_ms,
            max_delay_ms,
            jitter: Jitter::Full,
        }
    }

    /// The same policy with `jitter`.
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// `cap(n)` of the type docs: the largest delay after failed attempt `attempt` (from 1),
    /// milliseconds.
    pub fn cap_ms(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(62);
        self.base_delay_ms
            .saturating_mul(1_u64 << exponent)
            .min(self.max_delay_ms)
    }

    /// `delay(n)` of the type docs for a uniform random `unit` in `0.0..=1.0`, milliseconds.
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u64 {
        let cap = self.cap_ms(attempt);
        match self.jitter {
            Jitter::None => cap,
            // Truncation is intended: the result lies in 0..=cap.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            Jitter::Full => ((cap as f64) * unit.clamp(0.0, 1.0)).round() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_caps_grow_and_full_jitter_stays_below_the_cap() {
        let policy = RetryPolicy::new(10, 100, 1_000);
        let caps: Vec<u64> = (1..=6).map(|n| policy.cap_ms(n)).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1_000, 1_000]);
        for n in 1..=6 {
            assert_eq!(policy.delay_ms(n, 0.0), 0);
            assert_eq!(policy.delay_ms(n, 1.0), policy.cap_ms(n));
            assert!(policy.delay_ms(n, 0.5) <= policy.cap_ms(n));
        }
        let fixed = policy.with_jitter(Jitter::None);
        assert_eq!(fixed.delay_ms(3, 0.1), 400);
        // Huge attempt numbers saturate instead of overflowing.
        assert_eq!(policy.cap_ms(u32::MAX), 1_000);
    }
}
