//! Per-downstream limits of the order saga's calls (docs/architecture.md, "Retries"): at most
//! `max_in_flight` calls in flight and at most `calls_per_second` calls started per second to
//! each service, shared by every saga of this orchestrator. When a service comes back after an
//! outage, the sagas that waited for it retry as a ramp, not a wall.
//!
//! The limits are taken before a call is sent. A call that cannot get its turn before its
//! attempt's deadline is not sent at all: it fails as a transient failure that provably never
//! reached the service (`StepError::not_delivered`), so it is not in doubt and, before the saga's
//! deadline, does not use up the step's attempts.
//!
//! Configuration (`sagaflow serve orchestrator --downstream-limits`): comma-separated
//! `SERVICE=IN_FLIGHT/PER_SECOND` entries, `*` for every service not named, `0` for no limit,
//! e.g. `*=256/1000,payment=64/200`. Default [`DEFAULT_LIMITS`].

use std::{collections::BTreeMap, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default: 256 calls in flight and 2,000 calls per second to each service.
pub const DEFAULT_LIMITS: &str = "*=256/2000";

/// The services the order saga calls.
pub const SERVICES: [&str; 5] = ["order", "coupon", "inventory", "payment", "point"];

/// One service's limits: calls in flight and calls started per second; `None`: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Calls in flight at once.
    pub max_in_flight: Option<usize>,
    /// Calls started per second.
    pub calls_per_second: Option<u32>,
}

/// A `--downstream-limits` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "downstream limit {0:?}: expected SERVICE=IN_FLIGHT/PER_SECOND (SERVICE one of order, coupon, inventory, payment, point or *; 0 = unlimited)"
)]
pub struct LimitsError(String);

/// Parses `SERVICE=IN_FLIGHT/PER_SECOND,…` into a limit per service of [`SERVICES`].
///
/// # Errors
/// [`LimitsError`] naming the entry that does not parse.
pub fn parse(spec: &str) -> Result<BTreeMap<&'static str, Limit>, LimitsError> {
    let mut default = Limit {
        max_in_flight: None,
        calls_per_second: None,
    };
    let mut named: BTreeMap<&'static str, Limit> = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || LimitsError(entry.to_owned());
        let (service, values) = entry.split_once('=').ok_or_else(bad)?;
        let (in_flight, per_second) = values.split_once('/').ok_or_else(bad)?;
        let in_flight: usize = in_flight.trim().parse().map_err(|_| bad())?;
        let per_second: u32 = per_second.trim().parse().map_err(|_| bad())?;
        let limit = Limit {
            max_in_flight: (in_flight > 0).then_some(in_flight),
            calls_per_second: (per_second > 0).then_some(per_second),
        };
        match service.trim() {
            "*" => default = limit,
            name => {
                let service = SERVICES
                    .iter()
                    .find(|s| **s == name)
                    .copied()
                    .ok_or_else(bad)?;
                named.insert(service, limit);
            }
        }
    }
    Ok(SERVICES
        .iter()
        .map(|s| (*s, named.get(s).copied().unwrap_or(default)))
        .collect())
}

/// The burst a rate of `per_second` allows: 10 ms worth of calls, at least one.
fn burst(per_second: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new(per_second.get() / 100).unwrap_or(NonZeroU32::MIN)
}

/// The most calls a rate of `per_second` lets start in any window of `window`: the burst plus
/// the window's share.
pub fn window_bound(per_second: u32, window: Duration) -> u64 {
    let burst = NonZeroU32::new(per_second).map_or(0, |r| u64::from(burst(r).get()));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small, positive
    let share = (f64::from(per_second) * window.as_secs_f64()).ceil() as u64;
    burst + share
}

#[derive(Debug)]
struct Gate {
    in_flight: Option<Arc<Semaphore>>,
    rate: Option<DefaultDirectRateLimiter>,
}

/// The limits of every downstream service, shared by all sagas (cheap to clone).
#[derive(Debug, Clone)]
pub struct DownstreamLimits {
    gates: Arc<BTreeMap<&'static str, Gate>>,
}

/// A call's turn: hold it while the call runs.
#[derive(Debug)]
pub struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Default for DownstreamLimits {
    fn default() -> Self {
        match parse(DEFAULT_LIMITS) {
            Ok(limits) => Self::new(&limits),
            Err(_) => Self::unlimited(),
        }
    }
}

impl DownstreamLimits {
    /// Limits per service.
    pub fn new(limits: &BTreeMap<&'static str, Limit>) -> Self {
        let gates = limits
            .iter()
            .map(|(service, limit)| {
                let rate = limit
                    .calls_per_second
                    .and_then(NonZeroU32::new)
                    // A burst of at most 10 ms worth of calls: a second's calls are spread over
                    // the second, so any 100 ms window sees at most [`window_bound`] of them.
                    .map(|per_second| {
                        RateLimiter::direct(
                            Quota::per_second(per_second).allow_burst(burst(per_second)),
                        )
                    });
                let in_flight = limit.max_in_flight.map(|n| Arc::new(Semaphore::new(n)));
                (*service, Gate { in_flight, rate })
            })
            .collect();
        Self {
            gates: Arc::new(gates),
        }
    }

    /// No limits at all.
    pub fn unlimited() -> Self {
        Self {
            gates: Arc::new(BTreeMap::new()),
        }
    }

    /// Waits for a turn to call `service`, at most `within`; `None` when the turn did not come
    /// in time (the call must not be sent).
    pub async fn turn(&self, service: &str, within: Duration) -> Option<Turn> {
        let Some(gate) = self.gates.get(service) else {
            return Some(Turn { _permit: None });
        };
        let wait = async {
            let permit = match &gate.in_flight {
                Some(semaphore) => Some(semaphore.clone().acquire_owned().await.ok()?),
                None => None,
            };
            if let Some(rate) = &gate.rate {
                // Jittered, so that the callers that waited together do not start together.
                rate.until_ready_with_jitter(Jitter::up_to(Duration::from_millis(5)))
                    .await;
            }
            Some(Turn { _permit: permit })
        };
        tokio::time::timeout(within, wait).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_per_service_with_a_default() {
        let limits = parse("*=256/2000, payment=8/100,point=0/0").unwrap();
        assert_eq!(
            limits["payment"],
            Limit {
                max_in_flight: Some(8),
                calls_per_second: Some(100)
            }
        );
        assert_eq!(
            limits["order"],
            Limit {
                max_in_flight: Some(256),
                calls_per_second: Some(2000)
            }
        );
        assert_eq!(
            limits["point"],
            Limit {
                max_in_flight: None,
                calls_per_second: None
            }
        );
        assert!(parse("ranking=1/1").is_err());
        assert!(parse("payment=1").is_err());
        assert!(parse("payment=x/1").is_err());
    }

    #[tokio::test]
    async fn in_flight_calls_are_capped_and_a_late_turn_is_refused() {
        let limits = DownstreamLimits::new(&parse("*=1/0").unwrap());
        let first = limits
            .turn("payment", Duration::from_millis(50))
            .await
            .unwrap();
        assert!(
            limits
                .turn("payment", Duration::from_millis(50))
                .await
                .is_none(),
            "the second call waits for the first and gives up at its deadline"
        );
        // Other services have their own gate.
        assert!(
            limits
                .turn("order", Duration::from_millis(50))
                .await
                .is_some()
        );
        drop(first);
        assert!(
            limits
                .turn("payment", Duration::from_millis(50))
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn calls_per_second_are_spread() {
        let limits = DownstreamLimits::new(&parse("*=0/100").unwrap());
        let started = tokio::time::Instant::now();
        for _ in 0..21 {
            limits
                .turn("payment", Duration::from_secs(5))
                .await
                .unwrap();
        }
        // 100 per second with a burst of one: 21 calls take at least 200 ms.
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert_eq!(window_bound(100, Duration::from_millis(100)), 11);
    }
}
