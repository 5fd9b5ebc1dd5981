//! Harness for tests that run the real `sagaflow` binary as separate processes.
//!
//! [`Process::start`] runs `sagaflow ARGS…` with its logs in a temp dir, waits until its gRPC
//! server reports the address it bound (tests pass `--listen 127.0.0.1:0`), and can stop it with
//! SIGTERM ([`Process::terminate`]) or SIGKILL ([`Process::kill`]). Logs of a test that panics are
//! kept and their path printed (a failed test leaves its evidence).
//!
//! The binary is this package's `sagaflow-under-test` (the `sagaflow` command line, rebuilt with
//! every test build), next to the test executable's `deps/` directory; `SAGAFLOW_BIN` overrides it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod chaos;

use std::{
    fs,
    io::{Read, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Path of the `sagaflow` binary under test.
pub fn sagaflow_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SAGAFLOW_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/it-xxxx -> target/debug/sagaflow-under-test
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = dir.join("sagaflow-under-test");
    assert!(
        bin.exists(),
        "{} not found: build the tests with cargo (or set SAGAFLOW_BIN)",
        bin.display()
    );
    bin
}

/// A loopback port reserved for this test process (below the kernel's ephemeral range, locked
/// against other tests; `sagaflow_testkit::ports`). For processes started by address that must
/// come back on the same address after a restart.
pub fn free_port() -> u16 {
    sagaflow_testkit::reserved_port()
}

/// Readiness line of `sagaflow dev`, logged once the demo data is seeded.
pub const DEV_READY: &str = "sagaflow dev is running";

/// `sagaflow dev --open --listen LISTEN --data-dir DATA EXTRA…` with `envs`, once ready (see
/// [`start_dev_authenticated`]): without end-user authentication, for tests that are not about
/// who the caller is (public RPCs answer without a token, for any user).
pub fn start_dev(listen: &str, data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut args = vec!["--open"];
    args.extend_from_slice(extra);
    start_dev_authenticated(listen, data, &args, envs)
}

/// `sagaflow dev --listen LISTEN --data-dir DATA EXTRA…` with `envs`, once ready: its health
/// service answers SERVING for the whole server and the readiness line ([`DEV_READY`], logged
/// after the demo data is seeded) is out. Waits up to 60 s. With `dev`'s default end-user
/// authentication: public RPCs need a token of [`dev_token`] (or [`dev_operator_token`]). The
/// one way tests start `dev` (with [`start_dev`]).
pub fn start_dev_authenticated(
    listen: &str,
    data: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Process {
    const WITHIN: Duration = Duration::from_secs(60);
    let data = data.to_str().expect("a UTF-8 data directory");
    let mut args = vec!["dev", "--listen", listen, "--data-dir", data];
    args.extend_from_slice(extra);
    let mut dev = Process::start(&args, envs, WITHIN);
    dev.wait_for_log(DEV_READY, WITHIN);
    let health = sagaflow_testkit::grpcurl_json(dev.addr(), &[], "grpc.health.v1.Health/Check");
    assert_eq!(
        health["status"],
        "SERVING",
        "health of {}: {health}",
        dev.addr()
    );
    dev
}

/// The token `sagaflow token USER --data-dir DATA` prints (signed with that `dev`'s key, valid
/// for an hour).
pub fn dev_token(data: &Path, user: &str) -> String {
    let out = Command::new(sagaflow_bin())
        .args(["token", user, "--data-dir"])
        .arg(data)
        .output()
        .expect("run sagaflow token");
    assert!(
        out.status.success(),
        "sagaflow token {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("a UTF-8 token")
        .trim()
        .to_owned()
}

/// The operator token `sagaflow dev` made in DATA (`dev-operator-token`): sees every user's
/// data on the public RPCs.
pub fn dev_operator_token(data: &Path) -> String {
    fs::read_to_string(data.join("dev-operator-token"))
        .expect("dev's operator token")
        .trim()
        .to_owned()
}

/// A child process (one a test runs with its own output, like `sagaflow demo`) killed and reaped
/// when dropped: a test that fails while it runs leaves no process behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Both fail harmlessly when the process has exited and was reaped already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `sagaflow` process.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
    addr: String,
    _dir: Option<tempfile::TempDir>,
}

/// The `addr` field of a "gRPC server listening" line, in the pretty (`addr=…`) or the JSON
/// (`"addr":"…"`) log format.
fn listening_addr(line: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json["addr"].as_str().map(str::to_owned);
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .map(str::to_owned)
}

impl Process {
    /// Starts `sagaflow args…` with `envs`, logging to a file in a temp dir, and waits up to
    /// `timeout` for the "gRPC server listening" line, whose address it records.
    pub fn start(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sagaflow-proc-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("sagaflow.log");
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(sagaflow_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("SAGAFLOW_LOG_FORMAT", "pretty")
            // The test's own variables win (for example a RUST_LOG that enables a debug line).
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn sagaflow");
        let mut process = Self {
            child: Some(child),
            log,
            addr: String::new(),
            _dir: Some(dir),
        };
        process.addr = process.wait_for_listening(timeout);
        process
    }

    fn wait_for_listening(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains("gRPC server listening"))
                && let Some(addr) = listening_addr(line)
            {
                return addr;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sagaflow exited with {status} before listening; logs:\n{logs}");
            }
            assert!(
                Instant::now() < deadline,
                "sagaflow did not start listening within {timeout:?}; logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` until the logs contain `needle` (for example a readiness line).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sagaflow exited with {status} before logging {needle:?}; logs:\n{logs}");
            }
            assert!(
                Instant::now() < deadline,
                "sagaflow did not log {needle:?} within {timeout:?}; logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while the process runs (for reading `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The address the server bound, `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns its exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() >= deadline {
                panic!(
                    "sagaflow did not exit within {timeout:?} of SIGTERM; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the process (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking()
            && let Some(dir) = self._dir.take()
        {
            let kept = dir.keep();
            eprintln!("sagaflow logs kept in {}", kept.display());
        }
    }
}

/// GetOrder for `order_id` that waits up to 30 s for its terminal status.
pub fn wait_for_order(order_id: &str) -> sagaflow_proto::order::v1::GetOrderRequest {
    sagaflow_proto::order::v1::GetOrderRequest {
        order_id: order_id.to_owned(),
        wait: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
    }
}

/// Every service `sagaflow serve` runs, in the order the process tests start them.
pub const SERVICES: [&str; 7] = [
    "inventory",
    "coupon",
    "payment",
    "point",
    "ranking",
    "order",
    "orchestrator",
];

/// Where the seven `sagaflow serve` processes of a distributed test live: a free loopback port
/// and a fresh PostgreSQL database (`<prefix>_<service>`) per service, and the
/// `--<service>-addr <scheme>://127.0.0.1:<port>` flags that tell each process and the CLI
/// where the others are.
#[derive(Debug)]
pub struct ServeLayout {
    /// Service → port.
    pub ports: Vec<(&'static str, u16)>,
    /// The peer flags, `--<service>-addr URL` pairs.
    pub addrs: Vec<String>,
    /// One database per service, in [`SERVICES`] order (dropped with the layout).
    pub dbs: Vec<sagaflow_testkit::TestDatabase>,
}

impl ServeLayout {
    /// A layout whose URLs use `scheme` (`http`, or `https` with TLS) and whose databases are
    /// named `<prefix>_<service>`.
    pub fn new(scheme: &str, prefix: &str) -> Self {
        let ports: Vec<(&'static str, u16)> = SERVICES.iter().map(|s| (*s, free_port())).collect();
        let addrs = ports
            .iter()
            .flat_map(|(s, port)| {
                [
                    format!("--{s}-addr"),
                    format!("{scheme}://127.0.0.1:{port}"),
                ]
            })
            .collect();
        let dbs = SERVICES
            .iter()
            .map(|s| {
                sagaflow_testkit::TestDatabase::new(
                    sagaflow_testkit::Kind::Postgres,
                    &format!("{prefix}_{s}"),
                )
            })
            .collect();
        Self { ports, addrs, dbs }
    }

    /// The port of `service`.
    ///
    /// # Panics
    /// When `service` is not one of [`SERVICES`] (a test's mistake).
    pub fn port(&self, service: &str) -> u16 {
        self.ports
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("{service} is not a service"))
    }
}

/// GET `http://<addr>/metrics` of a process started with `--metrics-listen <addr>`: the
/// Prometheus text exposition. Panics unless the answer is `200`.
pub fn scrape_metrics(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}
