//! What the logs say in a normal run: one INFO line per finished saga plus a bounded number of
//! lifecycle lines, no WARN or ERROR for the expected business outcomes (declined cards, out of
//! stock, unusable coupons, slow gateways), and nothing per saga under `bench`. A request id made
//! to forge log lines (newlines, ANSI escapes, 50 kB) is one escaped, truncated line in the pretty
//! and the JSON format (docs/operations.md, "Logs and traces from untrusted input").

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
        // The demo's own default is `warn` (its report is the output); the embedded system's
        // INFO lines are what is counted here.
        .env("RUST_LOG", "info")
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
    // Transient trouble on a loaded machine (a delivery or a write that timed out and is retried)
    // is worth a warning; an expected business outcome never is.
    const TRANSIENT: [&str; 4] = [
        "outbox delivery failed",
        "lease renewal failed",
        "saga store write failed",
        "group commit failed",
    ];
    let noisy: Vec<&Value> = lines
        .iter()
        .filter(|l| matches!(level(l).as_str(), "WARN" | "ERROR"))
        .filter(|l| {
            let message = l["message"].as_str().unwrap_or("");
            level(l) == "ERROR" || !TRANSIENT.iter().any(|t| message.starts_with(t))
        })
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

#[test]
fn operator_cancels_log_no_errors_or_warnings() {
    use sagaflow_testkit::{eventually_blocking, grpcurl_json, grpcurl_output};
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // With end-user authentication (dev's default, which logs no warning): alice's token on
    // the public calls, none on the admin ones.
    let dev =
        sagaflow_tests::start_dev_authenticated("127.0.0.1:0", &data, &[], &[("RUST_LOG", "info")]);
    let alice = format!(
        "authorization: Bearer {}",
        sagaflow_tests::dev_token(&data, "alice")
    );
    let place = |request_id: &str, card: &str| {
        let reply = grpcurl_json(
            dev.addr(),
            &[
                "-H",
                &alice,
                "-d",
                &json!({"request_id": request_id, "user_id": "alice",
                        "lines": [{"sku": "KB-001", "quantity": 1}], "payment_method": card})
                .to_string(),
            ],
            "sagaflow.order.v1.OrderService/PlaceOrder",
        );
        reply["order"]["orderId"].as_str().unwrap().to_owned()
    };
    let cancel = |id: &str| {
        grpcurl_output(
            dev.addr(),
            &["-d", &json!({ "saga_id": id }).to_string()],
            Some("sagaflow.workflow.v1.SagaAdminService/CancelSaga"),
        )
    };
    // A finished saga: the cancel is refused (FAILED_PRECONDITION SAGA_FINISHED), quietly.
    let done = place("logs-done", "tok_ok");
    let order = grpcurl_json(
        dev.addr(),
        &[
            "-H",
            &alice,
            "-d",
            &json!({ "order_id": done, "wait": "30s" }).to_string(),
        ],
        "sagaflow.order.v1.OrderService/GetOrder",
    );
    assert_eq!(
        order["order"]["status"], "ORDER_STATUS_COMPLETED",
        "{order}"
    );
    let refused = cancel(&done);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("SAGA_FINISHED"));
    // A running saga, waiting on the slow gateway: canceled, it compensates.
    let slow = place("logs-slow", "tok_slow");
    eventually_blocking(
        "the saga to be at start_payment",
        std::time::Duration::from_secs(30),
        || {
            let saga = grpcurl_json(
                dev.addr(),
                &["-d", &json!({ "saga_id": slow }).to_string()],
                "sagaflow.workflow.v1.SagaAdminService/GetSaga",
            );
            (saga["saga"]["currentStep"] == "start_payment").then_some(())
        },
    );
    assert!(cancel(&slow).status.success());
    let order = grpcurl_json(
        dev.addr(),
        &[
            "-H",
            &alice,
            "-d",
            &json!({ "order_id": slow, "wait": "30s" }).to_string(),
        ],
        "sagaflow.order.v1.OrderService/GetOrder",
    );
    assert_eq!(order["order"]["status"], "ORDER_STATUS_FAILED", "{order}");
    assert_eq!(
        order["order"]["failureReason"], "FAILURE_REASON_CANCELED",
        "{order}"
    );
    let logs = dev.logs();
    let noisy: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(noisy.is_empty(), "operator cancels logged: {noisy:#?}");
}

/// A request id built to forge log lines: a newline followed by a fake ERROR line, ANSI escape
/// sequences (clear screen, red) and 50,000 more bytes.
fn forged_request_id() -> String {
    format!(
        "forge-\n2026-12-07T00:00:00.000000Z ERROR sagaflow: forged line\u{1b}[2J\u{1b}[31m{}",
        "A".repeat(50_000)
    )
}

/// `sagaflow dev` logging in `format` (`pretty` or `json`) at INFO, sent a PlaceOrder whose
/// request id is [`forged_request_id`]; returns the refusal and every line it logged.
fn log_of_a_forged_request(format: &str) -> (std::process::Output, String) {
    use sagaflow_testkit::grpcurl_output;
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let mut dev = sagaflow_tests::start_dev(
        "127.0.0.1:0",
        &dir.path().join("data"),
        &[],
        &[("RUST_LOG", "info"), ("SAGAFLOW_LOG_FORMAT", format)],
    );
    let body = json!({
        "request_id": forged_request_id(), "user_id": "alice",
        "lines": [{ "sku": "KB-001", "quantity": 1 }], "payment_method": "tok_ok"
    })
    .to_string();
    let refused = grpcurl_output(
        dev.addr(),
        &["-d", &body],
        Some("sagaflow.order.v1.OrderService/PlaceOrder"),
    );
    // SIGTERM: every line is written before the logs are read.
    assert_eq!(dev.terminate(std::time::Duration::from_secs(30)), Some(0));
    (refused, dev.logs())
}

/// The one log line about the forged request: escaped (no raw newline, no ESC byte, the
/// backslash escapes visible) and truncated to 128 characters plus the length marker. Pretty
/// format.
#[test]
fn a_forged_request_id_is_one_escaped_truncated_pretty_line() {
    let (refused, logs) = log_of_a_forged_request("pretty");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("InvalidArgument"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !logs.contains('\u{1b}'),
        "an ESC byte reached the log:\n{logs}"
    );
    let about: Vec<&str> = logs.lines().filter(|l| l.contains("forge")).collect();
    assert_eq!(about.len(), 1, "{about:#?}");
    let line = about[0];
    let shown = sagaflow_server::untrusted::untrusted(&forged_request_id()).to_string();
    assert!(line.contains(&format!("value={shown}")), "{line}");
    assert!(
        line.contains(
            r"forge-\n2026-12-07T00:00:00.000000Z ERROR sagaflow: forged line\u{1b}[2J\u{1b}[31m"
        ),
        "{line}"
    );
    assert!(line.contains("…[truncated, 50071 bytes]"), "{line}");
    assert!(line.contains("request refused"), "{line}");
    assert!(line.len() < 600, "{} bytes: {line}", line.len());
    // No line begins with the forged text.
    assert!(
        !logs.lines().any(|l| l.starts_with("2026-12-07T00:00:00")),
        "{logs}"
    );
}

/// The same in the JSON format: every line is one JSON object, one of them about the request,
/// its `value` the escaped, truncated request id.
#[test]
fn a_forged_request_id_is_one_escaped_truncated_json_line() {
    let (refused, logs) = log_of_a_forged_request("json");
    assert!(!refused.status.success());
    assert!(
        !logs.contains('\u{1b}'),
        "an ESC byte reached the log:\n{logs}"
    );
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("forge"))
        .collect();
    assert_eq!(about.len(), 1, "{about:#?}");
    let value = about[0]["value"].as_str().unwrap();
    assert_eq!(
        value,
        sagaflow_server::untrusted::untrusted(&forged_request_id()).to_string()
    );
    assert!(
        !value.contains('\n') && !value.contains('\u{1b}'),
        "{value}"
    );
    assert!(value.ends_with("…[truncated, 50071 bytes]"), "{value}");
    assert_eq!(about[0]["fields"], "request_id", "{}", about[0]);
}
