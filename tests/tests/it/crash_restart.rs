//! Recovery of the embedded system (docs/architecture.md, "Recovery"): SIGKILL `sagaflow dev`
//! while `sagaflow demo` is placing the sample orders against it, start it again on the same port
//! and data directory, and the demo still sees every saga finish with every invariant of
//! docs/architecture.md, "Invariants", holding (it exits non-zero otherwise).

use std::{
    fmt,
    process::{Command, Stdio},
    time::Duration,
};

use sagaflow_testkit::{eventually_blocking, grpcurl_output};
use sagaflow_tests::{KillOnDrop, free_port, sagaflow_bin, start_dev};
use serde_json::Value;

/// Sagas the admin API lists (up to 1000).
fn saga_count(addr: &str) -> usize {
    let out = grpcurl_output(
        addr,
        &["-d", r#"{"page_size":1000}"#],
        Some("sagaflow.workflow.v1.SagaAdminService/ListSagas"),
    );
    if !out.status.success() {
        return 0;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["sagas"].as_array().map_or(0, Vec::len)
}

#[test]
fn sigkill_during_demo_then_restart_finishes_every_saga() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut dev = start_dev(&listen, &data, &["--lease-ms", "2000"], &[]);

    let demo_log = dir.path().join("demo.log");
    let demo_err = dir.path().join("demo.err");
    let mut demo = KillOnDrop(
        Command::new(sagaflow_bin())
            .args([
                "demo",
                "--addr",
                &format!("http://{listen}"),
                "--timeout-secs",
                "150",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&demo_log).unwrap())
            .stderr(std::fs::File::create(&demo_err).unwrap())
            .spawn()
            .unwrap(),
    );

    // Kill once the run is well under way: some sagas exist, many are still running.
    eventually_blocking(
        "the demo to start 40 sagas",
        Duration::from_secs(60),
        || {
            if saga_count(&listen) >= 40 {
                return Some(());
            }
            assert!(
                demo.try_wait().unwrap().is_none(),
                "the demo ended before the crash"
            );
            None
        },
    );
    let before_kill = saga_count(&listen);
    let running_before_kill = running_count(&listen);
    dev.kill();

    // Start it again on the same port and data directory: it resumes every unfinished saga.
    let mut dev = start_dev(&listen, &data, &["--lease-ms", "2000"], &[]);
    if running_before_kill >= 5 {
        // Sagas were running when it died (a few could finish between the count and the kill,
        // not five): the restarted process says it resumes them.
        dev.wait_for_log(
            "resuming the sagas a crashed predecessor left running",
            Duration::from_secs(20),
        );
    }
    let status = eventually_blocking(
        fmt::from_fn(|f| write!(f, "the demo to finish; dev logs:\n{}", dev.logs())),
        Duration::from_secs(200),
        || demo.try_wait().unwrap(),
    );
    let report = std::fs::read_to_string(&demo_log).unwrap();
    assert!(
        status.success(),
        "demo failed after the crash ({status}):\n{report}\ndev logs:\n{}",
        dev.logs()
    );
    assert!(report.contains("all hold"), "{report}");
    // While the system was down the demo said why it waited instead of going silent.
    let errors = std::fs::read_to_string(&demo_err).unwrap();
    assert!(
        errors.contains("retrying until the order's deadline"),
        "{errors}"
    );
    assert!(report.contains("206 orders finished"), "{report}");
    assert!(before_kill >= 40);
    // Every saga of the run came to rest: none RUNNING or COMPENSATING.
    for status in ["SAGA_STATUS_RUNNING", "SAGA_STATUS_COMPENSATING"] {
        let out = grpcurl_output(
            &listen,
            &[
                "-d",
                &format!(r#"{{"status":"{status}","page_size":1000}}"#),
            ],
            Some("sagaflow.workflow.v1.SagaAdminService/ListSagas"),
        );
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v["sagas"].as_array().is_none_or(Vec::is_empty),
            "{status}: {v}"
        );
    }
    assert_eq!(
        dev.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        dev.logs()
    );
}

/// Sagas RUNNING now (one page of up to 1000).
fn running_count(listen: &str) -> usize {
    let out = grpcurl_output(
        listen,
        &["-d", r#"{"status":"SAGA_STATUS_RUNNING","page_size":1000}"#],
        Some("sagaflow.workflow.v1.SagaAdminService/ListSagas"),
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sagas"].as_array().map_or(0, Vec::len)
}
