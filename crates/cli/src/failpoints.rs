//! Arming the workflow engine's failpoints in a `sagaflow serve` process (for the chaos suite,
//! `tests/src/chaos/`).
//!
//! The engine marks its crash points (docs/architecture.md, "The engine" (Durability rule)) with
//! the `fail` crate (`after_claim`,
//! `before_step_call`, `after_step_reply_before_record`, `after_step_recorded`,
//! `in_compensation`), and the Kafka consumer (crates/events) marks one,
//! `kafka_consumer_after_handle` (a handler returned Ok, its offset is not committed yet); they
//! are compiled in only with the cargo feature `failpoints` (never in a production build). A chaos test arms them through the `FAILPOINTS` environment variable in the
//! `fail` crate's syntax, `NAME=ACTIONS[;NAME=ACTIONS…]`, for example
//! `before_step_call=5*off->1*panic` (let five hits pass, then fire once).
//!
//! A fired failpoint must **crash the process**, not just the tokio task that hit it (tokio would
//! catch the panic and the process would live on). So, when failpoints are armed, a panic hook
//! turns every failpoint panic — the `panic` action, and the `return` action of a failpoint
//! without a return value, which the `fail` crate also implements as a panic — into
//! `std::process::abort()` (SIGABRT), after printing `failpoint NAME hit: aborting the process`
//! to stderr. Other panics keep the default behaviour.
//!
//! Without the feature, a non-empty `FAILPOINTS` is refused: `sagaflow serve` exits 64 before it
//! opens anything (docs/operations.md, "Fault injection (test builds only)"); with it, the process
//! logs `failpoints armed` with the configuration, which the chaos harness checks.

use crate::CliError;

/// The environment variable read by [`arm_from_env`] (the `fail` crate's own name for it).
pub const ENV: &str = "FAILPOINTS";

/// The line printed to stderr just before a fired failpoint aborts the process, followed by the
/// failpoint's name and [`ABORT_SUFFIX`].
pub const ABORT_PREFIX: &str = "failpoint ";

/// See [`ABORT_PREFIX`].
pub const ABORT_SUFFIX: &str = " hit: aborting the process";

/// Whether this binary was built with the engine's failpoints (cargo feature `failpoints`).
pub const COMPILED_IN: bool = cfg!(feature = "failpoints");

/// Parses a `FAILPOINTS` value into `(name, actions)` pairs (empty entries are skipped).
///
/// # Errors
/// A one-line message naming the entry without `=` or with an empty name.
pub fn parse(spec: &str) -> Result<Vec<(String, String)>, String> {
    spec.split(';')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((name, actions)) if !name.trim().is_empty() => {
                Ok((name.trim().to_owned(), actions.trim().to_owned()))
            }
            _ => Err(format!("{ENV}: entry {entry:?} is not NAME=ACTIONS")),
        })
        .collect()
}

/// The failpoint named by a panic message of the `fail` crate, if it is one: `failpoint NAME
/// panic` (the `panic` action) or `Return is not supported for the fail point "NAME"`.
pub fn failpoint_of_panic(message: &str) -> Option<&str> {
    if let Some(name) = message
        .strip_prefix("failpoint ")
        .and_then(|rest| rest.strip_suffix(" panic"))
    {
        return Some(name);
    }
    message
        .strip_prefix("Return is not supported for the fail point \"")
        .and_then(|rest| rest.strip_suffix('"'))
}

/// Arms the failpoints configured in `FAILPOINTS` (see the module docs). Call once, early, after
/// logging is set up.
///
/// # Errors
/// `CliError::Usage` when `FAILPOINTS` does not parse or names an invalid action, or is set in a
/// build without the `failpoints` feature.
pub fn arm_from_env() -> Result<(), CliError> {
    let spec = std::env::var(ENV).unwrap_or_default();
    let entries = parse(&spec).map_err(CliError::Usage)?;
    if entries.is_empty() {
        return Ok(());
    }
    arm(&spec, &entries)
}

#[cfg(feature = "failpoints")]
fn arm(spec: &str, entries: &[(String, String)]) -> Result<(), CliError> {
    for (name, actions) in entries {
        fail::cfg(name.clone(), actions)
            .map_err(|e| CliError::Usage(format!("{ENV}: failpoint {name:?}: {e}")))?;
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if let Some(name) = message.and_then(failpoint_of_panic) {
            eprintln!("{ABORT_PREFIX}{name}{ABORT_SUFFIX}");
            std::process::abort();
        }
        default_hook(info);
    }));
    tracing::warn!(failpoints = %spec, "failpoints armed");
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn arm(spec: &str, _entries: &[(String, String)]) -> Result<(), CliError> {
    Err(CliError::Usage(format!(
        "{ENV} is set ({spec}), but this sagaflow was built without the `failpoints` cargo \
         feature, which only test builds enable: refusing to start (unset {ENV}; \
         docs/operations.md, \"Fault injection (test builds only)\")"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        assert_eq!(
            parse(" before_step_call=5*off->1*panic; ;after_claim=panic ").unwrap(),
            vec![
                ("before_step_call".to_owned(), "5*off->1*panic".to_owned()),
                ("after_claim".to_owned(), "panic".to_owned()),
            ]
        );
        assert_eq!(parse("").unwrap(), Vec::new());
        assert!(parse("after_claim").is_err());
        assert!(parse("=panic").is_err());
    }

    #[test]
    fn recognizes_failpoint_panics_only() {
        assert_eq!(
            failpoint_of_panic("failpoint in_compensation panic"),
            Some("in_compensation")
        );
        assert_eq!(
            failpoint_of_panic("Return is not supported for the fail point \"after_claim\""),
            Some("after_claim")
        );
        assert_eq!(failpoint_of_panic("index out of bounds"), None);
    }
}
