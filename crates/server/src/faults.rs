//! Fault injection for chaos tests (`tests/src/chaos/`): a tower layer, off by default, configured
//! by a flag or `SAGAFLOW_FAULTS`.
//!
//! **Test builds only** (docs/operations.md, "Fault injection (test builds only)"): the layer
//! injects anything only when this crate is built with the cargo feature `fault-injection`
//! ([`COMPILED_IN`]), which the tests crates enable and a release build (`cargo build --release
//! -p sagaflow-cli`, the Docker image) does not. Without it the layer passes every call through
//! and `sagaflow` refuses to start with faults configured ([`FaultConfig::ensure_compiled_in`]):
//! a production process cannot be told to commit effects and answer UNAVAILABLE.
//!
//! Syntax: rules separated by `;`, each `METHOD=FAULT[,FAULT…]`, where `METHOD` is `*`, an RPC
//! name (`StartPayment`) or a full path suffix (`PaymentService/StartPayment`), and `FAULT` is
//!
//! - `error:CODE:P` — answer with gRPC `CODE` (`unavailable`, `internal`, `deadline_exceeded`,
//!   `resource_exhausted`, `aborted`, `unknown`, `failed_precondition`, …) with probability `P`
//!   (0..=1) *before* the handler runs: no effect happens;
//! - `latency:MS` or `latency:MIN-MAX` — sleep that many milliseconds (uniform) before the handler;
//! - `lost_reply:P` — run the handler (its effect commits), then answer `UNAVAILABLE` instead of
//!   its reply, with probability `P`: the caller cannot tell whether the effect happened.
//!
//! Example: `SAGAFLOW_FAULTS='StartPayment=error:unavailable:0.2,latency:5-50;*=lost_reply:0.05'`.
//! Health checks and reflection (`/grpc.*`) are never faulted.

#[cfg(feature = "fault-injection")]
use std::time::Duration;
use std::{
    fmt,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
#[cfg(feature = "fault-injection")]
use rand::Rng;
#[cfg(feature = "fault-injection")]
use tonic::Status;
use tonic::{Code, body::Body};
use tower::{Layer, Service};

/// Whether this build injects faults (cargo feature `fault-injection`; test builds only).
pub const COMPILED_IN: bool = cfg!(feature = "fault-injection");

/// Faults were configured for a build without the `fault-injection` feature.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error(
    "fault injection is configured (SAGAFLOW_FAULTS / --faults = {spec}), but this sagaflow was \
     built without the `fault-injection` cargo feature, which only test builds enable: refusing \
     to start (unset SAGAFLOW_FAULTS; docs/operations.md, \"Fault injection (test builds only)\")"
)]
pub struct FaultsNotCompiled {
    spec: String,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Fail with `code` before the handler, with probability `probability`.
    Error {
        /// The gRPC code returned.
        code: Code,
        /// Chance per call, 0..=1.
        probability: f64,
    },
    /// Sleep a uniform random time in `min_ms..=max_ms` milliseconds before the handler.
    Latency {
        /// Shortest delay, milliseconds.
        min_ms: u64,
        /// Longest delay, milliseconds.
        max_ms: u64,
    },
    /// Run the handler, then answer `UNAVAILABLE`, with probability `probability`.
    LostReply {
        /// Chance per call, 0..=1.
        probability: f64,
    },
}

/// Faults applied to the RPCs a pattern matches.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// `*`, an RPC name, or a path suffix.
    pub pattern: String,
    /// Applied in order.
    pub faults: Vec<Fault>,
}

impl FaultRule {
    #[cfg(feature = "fault-injection")]
    fn matches(&self, path: &str) -> bool {
        self.pattern == "*" || path.ends_with(&format!("/{}", self.pattern))
    }
}

/// The parsed `SAGAFLOW_FAULTS` value; empty (the default) injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Every rule whose pattern matches a call applies.
    pub rules: Vec<FaultRule>,
}

/// A `SAGAFLOW_FAULTS` value that does not parse.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("invalid fault spec {spec:?}: {reason}")]
pub struct FaultParseError {
    spec: String,
    reason: String,
}

impl FaultConfig {
    /// Whether no fault is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Ok when no fault is configured or this build injects faults ([`COMPILED_IN`]).
    ///
    /// # Errors
    /// [`FaultsNotCompiled`] for a non-empty configuration in a build without the
    /// `fault-injection` feature: the caller refuses to start (exit 64 for `sagaflow`).
    pub fn ensure_compiled_in(&self) -> Result<(), FaultsNotCompiled> {
        if self.is_empty() || COMPILED_IN {
            Ok(())
        } else {
            Err(FaultsNotCompiled {
                spec: self.to_string(),
            })
        }
    }
}

impl fmt::Display for FaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() {
            return f.write_str("none");
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("{}={:?}", r.pattern, r.faults))
            .collect();
        f.write_str(&rules.join("; "))
    }
}

fn parse_probability(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p))
}

fn parse_code(s: &str) -> Option<Code> {
    Some(match s.to_ascii_lowercase().as_str() {
        "cancelled" | "canceled" => Code::Cancelled,
        "unknown" => Code::Unknown,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        _ => return None,
    })
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    match parts.as_slice() {
        ["error", code, p] => Ok(Fault::Error {
            code: parse_code(code).ok_or_else(|| format!("unknown gRPC code {code:?}"))?,
            probability: parse_probability(p).ok_or("probability must be in 0..=1")?,
        }),
        ["latency", range] => {
            let range = range.trim_end_matches("ms");
            let (min, max) = match range.split_once('-') {
                Some((a, b)) => (a, b),
                None => (range, range),
            };
            let min_ms: u64 = min.parse().map_err(|_| "latency must be MS or MIN-MAX")?;
            let max_ms: u64 = max.parse().map_err(|_| "latency must be MS or MIN-MAX")?;
            if min_ms > max_ms {
                return Err("latency MIN must not exceed MAX".into());
            }
            Ok(Fault::Latency { min_ms, max_ms })
        }
        ["lost_reply", p] => Ok(Fault::LostReply {
            probability: parse_probability(p).ok_or("probability must be in 0..=1")?,
        }),
        _ => Err(format!(
            "unknown fault {s:?} (error:CODE:P, latency:MS[-MS], lost_reply:P)"
        )),
    }
}

impl FromStr for FaultConfig {
    type Err = FaultParseError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| FaultParseError {
            spec: spec.to_owned(),
            reason,
        };
        let mut rules = Vec::new();
        for rule in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let (pattern, faults) = rule
                .split_once('=')
                .ok_or_else(|| err(format!("rule {rule:?} has no '='")))?;
            let faults = faults
                .split(',')
                .filter(|f| !f.trim().is_empty())
                .map(parse_fault)
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            rules.push(FaultRule {
                pattern: pattern.trim().to_owned(),
                faults,
            });
        }
        Ok(Self { rules })
    }
}

/// The tower layer that applies a [`FaultConfig`] to every call.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    config: Arc<FaultConfig>,
}

impl FaultLayer {
    /// A layer applying `config` (an empty config passes every call through untouched, and so
    /// does every config in a build without the `fault-injection` feature: see
    /// [`FaultConfig::ensure_compiled_in`]).
    pub fn new(config: FaultConfig) -> Self {
        if !COMPILED_IN && !config.is_empty() {
            tracing::error!(faults = %config, "fault injection is not compiled in: no fault is injected");
        }
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    #[cfg_attr(
        not(feature = "fault-injection"),
        expect(dead_code, reason = "read only where faults are compiled in")
    )]
    config: Arc<FaultConfig>,
}

/// What one call is subjected to, decided before it runs.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
struct Plan {
    delay: Duration,
    error: Option<Code>,
    lose_reply: bool,
}

#[cfg(feature = "fault-injection")]
fn plan(config: &FaultConfig, path: &str) -> Plan {
    let mut plan = Plan::default();
    if path.starts_with("/grpc.") {
        return plan;
    }
    let mut rng = rand::rng();
    for rule in config.rules.iter().filter(|r| r.matches(path)) {
        for fault in &rule.faults {
            match *fault {
                Fault::Error { code, probability } => {
                    if plan.error.is_none() && rng.random_bool(probability) {
                        plan.error = Some(code);
                    }
                }
                Fault::Latency { min_ms, max_ms } => {
                    plan.delay += Duration::from_millis(rng.random_range(min_ms..=max_ms));
                }
                Fault::LostReply { probability } => {
                    plan.lose_reply |= rng.random_bool(probability);
                }
            }
        }
    }
    plan
}

impl<S> Service<http::Request<Body>> for FaultService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[cfg(not(feature = "fault-injection"))]
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.inner.call(req))
    }

    #[cfg(feature = "fault-injection")]
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if self.config.is_empty() {
            return Box::pin(self.inner.call(req));
        }
        let path = req.uri().path().to_owned();
        let plan = plan(&self.config, &path);
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if !plan.delay.is_zero() {
                tokio::time::sleep(plan.delay).await;
            }
            if let Some(code) = plan.error {
                tracing::info!(path = %crate::untrusted::untrusted(&path), ?code, "fault injected: error");
                return Ok(Status::new(code, "injected fault").into_http());
            }
            let response = inner.call(req).await?;
            if plan.lose_reply {
                tracing::info!(path = %crate::untrusted::untrusted(&path), "fault injected: lost reply");
                return Ok(Status::unavailable("injected fault: reply lost").into_http());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let config: FaultConfig =
            "StartPayment=error:unavailable:0.2,latency:5-50; *=lost_reply:0.05"
                .parse()
                .unwrap();
        assert_eq!(config.rules.len(), 2);
        assert_eq!(
            config.rules[0].faults,
            vec![
                Fault::Error {
                    code: Code::Unavailable,
                    probability: 0.2
                },
                Fault::Latency {
                    min_ms: 5,
                    max_ms: 50
                }
            ]
        );
        assert!(config.rules[0].matches("/sagaflow.payment.v1.PaymentService/StartPayment"));
        assert!(!config.rules[0].matches("/sagaflow.payment.v1.PaymentService/StartPaymentX"));
        assert!(config.rules[1].matches("/x.Y/Z"));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!("x".parse::<FaultConfig>().is_err());
        assert!("*=error:bogus:0.5".parse::<FaultConfig>().is_err());
        assert!("*=error:internal:1.5".parse::<FaultConfig>().is_err());
        assert!("*=latency:9-1".parse::<FaultConfig>().is_err());
        assert_eq!("".parse::<FaultConfig>().unwrap(), FaultConfig::default());
    }

    #[test]
    fn a_configuration_needs_the_feature() {
        assert!(FaultConfig::default().ensure_compiled_in().is_ok());
        let config: FaultConfig = "*=lost_reply:1".parse().unwrap();
        assert_eq!(config.ensure_compiled_in().is_ok(), COMPILED_IN);
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn certain_faults_always_apply_and_health_is_spared() {
        let config: FaultConfig = "*=error:internal:1,lost_reply:1,latency:3".parse().unwrap();
        let p = plan(&config, "/sagaflow.order.v1.OrderService/GetOrder");
        assert_eq!(p.error, Some(Code::Internal));
        assert!(p.lose_reply);
        assert_eq!(p.delay, Duration::from_millis(3));
        let p = plan(&config, "/grpc.health.v1.Health/Check");
        assert_eq!(p.error, None);
        assert!(!p.lose_reply);
    }
}
