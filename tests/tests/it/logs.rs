//! What the logs say in a normal run: one INFO line per finished saga plus a bounded number of
//! lifecycle lines, no WARN or ERROR for the expected business outcomes (declined cards, out of
//! stock, unusable coupons, slow gateways), and nothing per saga under `bench`.

use std::process::Command;

use sagaflow_tests::sagaflow_bin;
use serde_json::Value;

/// Lifecycle lines of one embedded run: server, engine, relay, seeding, each started and stopped.
const LIFECYCLE_MAX: usize = 12;

#[test]
fn a_demo_logs_one_info_line_per_order_and_no_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sagaflow_bin())
        .args(["demo"])
        .env("TMPDIR", dir.path())
        .env_remove("RUST_LOG")
        .env("SAGAFLOW_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let level = |l: &Value| l["level"].as_str().unwrap_or("").to_owned();
    let noisy: Vec<&Value> = lines
        .iter()
        .filter(|l| matches!(level(l).as_str(), "WARN" | "ERROR"))
        .collect();
    assert!(noisy.is_empty(), "warnings in a normal demo: {noisy:#?}");
    let finished = lines
        .iter()
        .filter(|l| l["message"] == "saga finished")
        .count();
    let orders = sagaflow_cli::demo::parse_orders(sagaflow_cli::demo::SAMPLE_ORDERS)
        .unwrap()
        .len();
    assert_eq!(finished, orders, "one 'saga finished' line per order");
    let info = lines.iter().filter(|l| level(l) == "INFO").count();
    assert!(
        info <= orders + LIFECYCLE_MAX,
        "{info} INFO lines for {orders} orders:\n{stderr}"
    );
    // A finished line names the saga, its outcome and its duration, once each.
    let line = lines
        .iter()
        .find(|l| l["message"] == "saga finished" && l["status"] == "COMPENSATED")
        .unwrap();
    assert!(line["saga.id"].is_string(), "{line}");
    assert!(
        line["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{line}"
    );
    assert!(line["took_ms"].is_u64(), "{line}");
}

#[test]
fn a_bench_prints_its_report_and_no_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sagaflow_bin())
        .args(["bench", "--count", "100", "--concurrency", "8"])
        .env("TMPDIR", dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}{stderr}");
    assert!(stderr.trim().is_empty(), "bench logged:\n{stderr}");
    assert!(stdout.contains("concurrency 8: 100 sagas"), "{stdout}");
}
