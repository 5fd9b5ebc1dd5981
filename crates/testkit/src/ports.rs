//! Loopback ports for servers a test starts by address and may restart on the same address.
//!
//! Binding port 0 and releasing it ("a port that was free a moment ago") races: the kernel hands
//! the same ephemeral port to the next `bind(0)` or outgoing `connect()` of any process, so a
//! server restarted on it after a kill can find it taken (`Address already in use`, seen in the
//! chaos suite when tests run side by side). [`reserved_port`] avoids both:
//!
//! - it picks ports **below the kernel's ephemeral range** (`/proc/sys/net/ipv4/ip_local_port_range`),
//!   which the kernel never hands out on its own, so no `bind(0)` or client connection of any
//!   process lands on it;
//! - it holds an exclusive lock on a file named after the port for the rest of the test process,
//!   so two tests (nextest runs each in its own process) never pick the same one.

use std::{
    fs::{self, File, TryLockError},
    net::TcpListener,
    path::PathBuf,
    sync::Mutex,
};

/// Locks held by this process: each keeps its port reserved until the process ends.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// How many ports below the ephemeral range the reservations are drawn from.
const SPAN: u16 = 12_000;

/// A loopback port reserved for this test process: free when returned, outside the kernel's
/// ephemeral range, and not handed to any other test process using this function until this one
/// ends. Panics when none can be found in 2,000 tries (then the machine is out of ports).
pub fn reserved_port() -> u16 {
    let (low, high) = window();
    let dir = lock_dir();
    fs::create_dir_all(&dir).expect("create the port lock directory");
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) ^ clock_nanos();
    for i in 0..2_000u32 {
        let offset = u16::try_from(start.wrapping_add(i.wrapping_mul(97)) % span).unwrap_or(0);
        let port = low + offset;
        let Ok(file) = File::create(dir.join(format!("{port}.lock"))) else {
            continue;
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock | TryLockError::Error(_)) => continue,
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(file);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high} after 2000 tries");
}

/// The ports to draw from: the `SPAN` ports just below the ephemeral range (32768 when the range
/// cannot be read), never below 1024.
fn window() -> (u16, u16) {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let high = ephemeral_low.max(2_048);
    let low = high.saturating_sub(SPAN).max(1_024);
    (low, high)
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("sagaflow-test-ports")
}

fn clock_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (low, high) = window();
        let ports: Vec<u16> = (0..20).map(|_| reserved_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((low..high).contains(&port), "{port} not in {low}..{high}");
            // Still reserved (lock held) and still free to bind.
            let lock = File::create(lock_dir().join(format!("{port}.lock"))).unwrap();
            assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
