//! `sagaflow demo` checks each order's outcome against the scenario it claims.

use std::process::Command;

use sagaflow_tests::sagaflow_bin;

#[test]
fn an_order_that_ends_other_than_its_scenario_fails_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let orders = dir.path().join("orders.jsonl");
    // A "plain" order (expected COMPLETED) paid with a card the gateway declines.
    std::fs::write(
        &orders,
        concat!(
            r#"{"request_id":"m-1","user_id":"user-001","lines":[{"sku":"CB-001","quantity":1}],"#,
            r#""payment_method":"tok_decline","scenario":"plain"}"#,
            "\n",
            r#"{"request_id":"m-2","user_id":"user-002","lines":[{"sku":"CB-001","quantity":1}],"#,
            r#""payment_method":"tok_ok","scenario":"plain"}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = Command::new(sagaflow_bin())
        .args(["demo", "--orders", orders.to_str().unwrap()])
        .env("TMPDIR", dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("m-1: scenario \"plain\" expects COMPLETED, got FAILED/PAYMENT_DECLINED"),
        "{stdout}"
    );
    assert!(!stdout.contains("m-2: scenario"), "{stdout}");
    assert!(
        stderr.contains("1 orders not as their scenario says"),
        "{stderr}"
    );
}
