//! Placing orders and waiting for their sagas, shared by `sagaflow demo` and `sagaflow bench`.

use std::time::Duration;

use sagaflow_proto::order::v1::{
    GetOrderRequest, Order, OrderStatus, PlaceOrderRequest,
    order_service_client::OrderServiceClient,
};
use sagaflow_server::transport::Transport;
use tokio::time::Instant;
use tonic::Code;

/// A server address as a URL: `127.0.0.1:50051` becomes `http://127.0.0.1:50051`; a URL with a
/// scheme is kept.
pub fn addr_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// How long `demo` and `bench` wait for the orders in flight after Ctrl-C before they report what
/// they have (the orders left then are reported unfinished; their sagas go on in the system).
pub const INTERRUPT_GRACE: Duration = Duration::from_millis(1_000);

/// Ctrl-C (SIGINT) for `demo` and `bench`: once it arrives they place no more orders, wait
/// [`INTERRUPT_GRACE`] for those in flight, print a partial report, remove their temporary data
/// and exit 130 (128 + SIGINT, the shell's convention).
#[derive(Debug, Clone, Default)]
pub struct Interrupt(tokio_util::sync::CancellationToken);

impl Interrupt {
    /// Listens for Ctrl-C from now on (the process no longer dies of SIGINT at once).
    pub fn on_ctrl_c() -> Self {
        let interrupt = Self::default();
        let token = interrupt.0.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: placing no more orders");
                token.cancel();
            }
        });
        interrupt
    }

    /// Whether Ctrl-C arrived.
    pub fn is_set(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves when Ctrl-C arrives.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// The next task of `set` to end, as [`tokio::task::JoinSet::join_next`], until Ctrl-C: from then on the
    /// tasks get [`INTERRUPT_GRACE`] (tracked in `grace_ends`), after which the rest are aborted
    /// and `None` ends the caller's loop.
    pub async fn join_next<T: 'static>(
        &self,
        set: &mut tokio::task::JoinSet<T>,
        grace_ends: &mut Option<Instant>,
    ) -> Option<Result<T, tokio::task::JoinError>> {
        loop {
            match *grace_ends {
                None => tokio::select! {
                    joined = set.join_next() => return joined,
                    () = self.wait() => *grace_ends = Some(Instant::now() + INTERRUPT_GRACE),
                },
                Some(end) => {
                    return match tokio::time::timeout_at(end, set.join_next()).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            set.abort_all();
                            None
                        }
                    };
                }
            }
        }
    }
}

/// Progress of a long-running command (`demo`, `bench`): a progress bar when stdout is a terminal,
/// otherwise a plain line at most every [`Progress::PLAIN_EVERY`] (logs and CI output stay
/// readable). Hidden altogether for machine-readable output (`bench --json`).
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: Option<std::sync::Mutex<(Instant, u64)>>,
    total: Option<u64>,
}

impl Progress {
    /// The shortest gap between two plain progress lines.
    pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

    /// Progress towards `total` orders (`None`: a run bounded by time); `hidden` shows nothing.
    pub fn new(total: Option<u64>, hidden: bool) -> Self {
        use std::io::IsTerminal as _;
        if hidden {
            return Self {
                bar: None,
                plain: None,
                total,
            };
        }
        if std::io::stdout().is_terminal() {
            let bar = match total {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_draw_target(indicatif::ProgressDrawTarget::stdout());
            let template = if total.is_some() {
                "{bar:40} {pos}/{len} orders finished  {per_sec}  eta {eta}"
            } else {
                "{spinner} {pos} orders finished  {per_sec}  {elapsed}"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            return Self {
                bar: Some(bar),
                plain: None,
                total,
            };
        }
        Self {
            bar: None,
            plain: Some(std::sync::Mutex::new((Instant::now(), 0))),
            total,
        }
    }

    /// One more order finished.
    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        if let Some(plain) = &self.plain
            && let Ok(mut state) = plain.lock()
        {
            state.1 += 1;
            if state.0.elapsed() >= Self::PLAIN_EVERY {
                state.0 = Instant::now();
                match self.total {
                    Some(total) => println!("  {}/{total} orders finished", state.1),
                    None => println!("  {} orders finished", state.1),
                }
            }
        }
    }

    /// Removes the bar (before the report is printed).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// How long one `GetOrder` long-poll waits, at most (the API's limit is 60 s).
const WAIT_SLICE: Duration = Duration::from_secs(30);

/// Whether an order has reached COMPLETED or FAILED.
pub fn is_terminal(order: &Order) -> bool {
    matches!(
        OrderStatus::try_from(order.status),
        Ok(OrderStatus::Completed | OrderStatus::Failed)
    )
}

/// Whether a status is worth retrying with the same request: the transient codes of
/// docs/architecture.md, "The engine" (Retries), plus CANCELLED (a connection that broke mid-call,
/// for example a server that was killed, surfaces as UNKNOWN "transport error" or CANCELLED).
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Internal
    )
}

/// Places `request` (retrying transient failures with the same request id, which is safe:
/// PlaceOrder is idempotent on it) and waits until the order is terminal or `deadline` passes.
/// Returns the last order read and the time from the first PlaceOrder to the terminal read.
///
/// # Errors
/// PlaceOrder's error (other than UNAVAILABLE before the deadline), or GetOrder's.
pub async fn place_and_wait(
    client: &mut OrderServiceClient<Transport>,
    request: PlaceOrderRequest,
    deadline: Instant,
) -> Result<(Order, Duration), tonic::Status> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let placed = loop {
        match client.place_order(request.clone()).await {
            Ok(reply) => {
                break reply
                    .into_inner()
                    .order
                    .ok_or_else(|| tonic::Status::internal("PlaceOrder returned no order"))?;
            }
            Err(s) if is_retryable(s.code()) && Instant::now() + backoff < deadline => {
                say_retrying("PlaceOrder", &s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(s) => return Err(s),
        }
    };
    let order = wait_terminal(client, placed, deadline).await?;
    Ok((order, started.elapsed()))
}

/// Long-polls `GetOrder` until `order` is terminal or `deadline` passes; returns the last read.
///
/// # Errors
/// GetOrder's error (transient ones are retried until the deadline).
pub async fn wait_terminal(
    client: &mut OrderServiceClient<Transport>,
    mut order: Order,
    deadline: Instant,
) -> Result<Order, tonic::Status> {
    while !is_terminal(&order) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = left.min(WAIT_SLICE);
        let mut req = tonic::Request::new(GetOrderRequest {
            order_id: order.order_id.clone(),
            wait: Some(prost_types::Duration {
                seconds: i64::try_from(wait.as_secs()).unwrap_or(30),
                nanos: i32::try_from(wait.subsec_nanos()).unwrap_or(0),
            }),
        });
        req.set_timeout(wait + Duration::from_secs(5));
        match client.get_order(req).await {
            Ok(reply) => {
                if let Some(o) = reply.into_inner().order {
                    order = o;
                }
            }
            Err(s) if is_retryable(s.code()) => {
                say_retrying("GetOrder", &s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s),
        }
    }
    Ok(order)
}

/// Says on stderr, at most every 5 s for the whole process, that calls are being retried, so that
/// a run against a system that went down is not silent.
fn say_retrying(rpc: &str, status: &tonic::Status) {
    static LAST_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = sagaflow_server::db::now_ms();
    let last = LAST_MS.load(std::sync::atomic::Ordering::Relaxed);
    if now - last >= 5_000
        && LAST_MS
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        eprintln!(
            "{rpc} failed ({:?}: {}); retrying until the order's deadline",
            status.code(),
            status.message()
        );
    }
}

/// Latency percentiles over a set of samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latencies {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest sample, milliseconds.
    pub max_ms: f64,
}

impl Latencies {
    /// Nearest-rank percentiles of `samples` (empty → zeros).
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let idx = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[idx]
        };
        Self {
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// Peak resident set size of process `pid` (or this process for `None`) in KiB, from
/// `/proc/<pid>/status` `VmHWM`; `None` where that is not available.
pub fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) a process has used so far, milliseconds: this process when `pid` is
/// `None`. Read from `/proc/<pid>/stat` (fields 14 and 15, in Linux's fixed `USER_HZ` of 100
/// ticks per second, so 10 ms resolution); `None` where there is no such file.
pub fn process_cpu_ms(pid: Option<u32>) -> Option<f64> {
    /// Linux reports `/proc` times in `USER_HZ`, fixed at 100 on every architecture.
    const TICKS_PER_SECOND: f64 = 100.0;
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) * 1000.0 / TICKS_PER_SECOND)
}

/// The label of an order's outcome: `COMPLETED`, `FAILED/OUT_OF_STOCK`, `PENDING`, …
pub fn outcome_label(order: &Order) -> String {
    use sagaflow_proto::order::v1::FailureReason;
    let status = OrderStatus::try_from(order.status).unwrap_or(OrderStatus::Unspecified);
    let status = status.as_str_name().trim_start_matches("ORDER_STATUS_");
    if status == "FAILED" {
        let reason = FailureReason::try_from(order.failure_reason)
            .unwrap_or(FailureReason::Unspecified)
            .as_str_name()
            .trim_start_matches("FAILURE_REASON_")
            .to_owned();
        format!("FAILED/{reason}")
    } else {
        status.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_counts_work_done() {
        let before = process_cpu_ms(None).expect("/proc/self/stat");
        // Spin until 100 ms of CPU are counted (ten ticks), however busy the machine is.
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        let mut x = 0_u64;
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let used = process_cpu_ms(None).expect("/proc/self/stat") - before;
            if used >= 100.0 {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "only {used} ms counted"
            );
        }
        assert_eq!(process_cpu_ms(Some(u32::MAX)), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latencies::of(&samples);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p95_ms, 95.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(Latencies::of(&[]), Latencies::default());
    }

    #[test]
    fn addresses_become_urls() {
        assert_eq!(addr_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(addr_url("http://127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(addr_url("https://h:443"), "https://h:443");
    }

    #[test]
    fn reads_own_peak_rss() {
        assert!(peak_rss_kib(None).is_some_and(|kib| kib > 0));
    }
}
