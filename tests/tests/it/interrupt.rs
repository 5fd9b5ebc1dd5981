//! Ctrl-C during `sagaflow demo` and `sagaflow bench` on the embedded system: they stop placing at
//! once, print a partial report, remove their temporary data directory and exit 130.

use std::{
    fmt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sagaflow_testkit::{eventually_blocking, grpcurl_output};
use sagaflow_tests::{KillOnDrop, sagaflow_bin};
use serde_json::Value;

/// Runs `sagaflow ARGS…` with its temporary files under `tmp`, waits until its embedded system
/// holds at least 3 sagas (orders are being placed), sends SIGINT and returns (exit code, output,
/// seconds from SIGINT to exit).
fn interrupt_mid_run(args: &[&str], tmp: &Path) -> (Option<i32>, String, f64) {
    let out_path = tmp.join("out.log");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = KillOnDrop(
        Command::new(sagaflow_bin())
            .args(args)
            .env("TMPDIR", tmp)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    eventually_blocking(
        fmt::from_fn(|f| write!(f, "3 orders placed; output:\n{}", output())),
        Duration::from_secs(60),
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "ended before it was interrupted:\n{}",
                output()
            );
            let log = output();
            let addr = log
                .lines()
                .find_map(|l| l.strip_prefix("embedded system listening on http://"))?;
            let listed = grpcurl_output(
                addr,
                &["-d", "{}"],
                Some("sagaflow.workflow.v1.SagaAdminService/ListSagas"),
            );
            let v: Value = serde_json::from_slice(&listed.stdout).unwrap_or(Value::Null);
            let sagas = v["sagas"].as_array().map_or(0, Vec::len);
            (listed.status.success() && sagas >= 3).then_some(())
        },
    );
    let pid = child.id().to_string();
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Killed (by the guard) if it is still running when this gives up.
    let status = eventually_blocking(
        fmt::from_fn(|f| write!(f, "the exit after SIGINT; output:\n{}", output())),
        Duration::from_secs(20),
        || child.try_wait().unwrap(),
    );
    (status.code(), output(), sent.elapsed().as_secs_f64())
}

/// The sagaflow temporary directories left under `tmp`.
fn leftovers(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sagaflow-"))
        .collect()
}

#[test]
fn sigint_stops_the_demo_with_a_partial_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, output, took) = interrupt_mid_run(&["demo", "--concurrency", "2"], tmp.path());
    assert_eq!(code, Some(130), "{output}");
    assert!(took < 3.0, "exit took {took:.2} s after SIGINT:\n{output}");
    let line = output
        .lines()
        .find(|l| l.starts_with("interrupted:") && l.contains("never placed"))
        .unwrap_or_else(|| panic!("no partial report:\n{output}"));
    // Not all 206 orders were placed: the demo stopped placing.
    let never: usize = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" never placed; invariants not checked"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unreadable report line: {line}"));
    assert!(never > 0, "{line}");
    assert!(output.contains("outcomes:"), "{output}");
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn sigint_stops_the_bench_with_a_partial_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, output, took) = interrupt_mid_run(
        &["bench", "--count", "1000000", "--concurrency", "8"],
        tmp.path(),
    );
    assert_eq!(code, Some(130), "{output}");
    assert!(took < 3.0, "exit took {took:.2} s after SIGINT:\n{output}");
    let report = output
        .lines()
        .find(|l| l.starts_with("concurrency 8:"))
        .unwrap_or_else(|| panic!("no report:\n{output}"));
    let finished: u64 = report
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable report: {report}"));
    assert!(finished > 0 && finished < 1_000_000, "{report}");
    assert!(report.contains("interrupted"), "{report}");
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}
