//! The generated clients of other languages (README.md, "Typed clients"): the Python and
//! TypeScript examples under `clients/` generate their code from `proto/`, place orders on a real
//! `sagaflow dev` and check every value; this test runs each against its own fresh `dev`, checks
//! what it printed against the server (grpcurl), and checks that a second run, whose values are
//! wrong (WELCOME-ALICE is single-use), fails.
//!
//! They need the examples' dependencies (`.ci/run` installs them): `pip install -r
//! clients/python/requirements.txt` and `npm ci` in `clients/typescript`. Without them these tests
//! fail and say what to install; they never skip.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use sagaflow_testkit::grpcurl_json;
use serde_json::{Value, json};

const GET_ORDER: &str = "sagaflow.order.v1.OrderService/GetOrder";

/// The repository root (this package is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A `sagaflow dev` with end-user authentication on, the tokens of alice and bob from
/// `sagaflow token` (the examples read them from `SAGAFLOW_TOKEN_ALICE` / `_BOB`), and its
/// operator token.
struct Dev {
    process: sagaflow_tests::Process,
    tokens: Vec<(&'static str, String)>,
    operator: String,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let process = sagaflow_tests::start_dev_authenticated("127.0.0.1:0", &data, &[], &[]);
        let tokens = vec![
            (
                "SAGAFLOW_TOKEN_ALICE",
                sagaflow_tests::dev_token(&data, "alice"),
            ),
            (
                "SAGAFLOW_TOKEN_BOB",
                sagaflow_tests::dev_token(&data, "bob"),
            ),
        ];
        let operator = sagaflow_tests::dev_operator_token(&data);
        Self {
            process,
            tokens,
            operator,
            _dir: dir,
        }
    }

    fn addr(&self) -> &str {
        self.process.addr()
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.tokens.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// Runs `program args…` in `dir`; panics (naming `hint`) when it cannot be started.
fn run(dir: &Path, program: &str, args: &[&str], hint: &str) -> Output {
    run_with(dir, program, args, &[], hint)
}

/// [`run`] with environment variables.
fn run_with(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &str)], hint: &str) -> Output {
    Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {hint}"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_success(what: &str, out: &Output, hint: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{what} failed with {} ({hint}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// The order id of the line of `stdout` that starts with `prefix` (`completed <id>: …`).
fn order_id_after(stdout: &str, prefix: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{stdout}"));
    line[prefix.len()..]
        .split(':')
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

/// What every example prints on success, and the server's view of the orders it names (read
/// with `dev`'s operator token, `operator`).
fn check_example_output(addr: &str, operator: &str, stdout: &str, banner: &str) {
    let header = format!("authorization: Bearer {operator}");
    assert!(
        stdout.lines().any(|l| l.starts_with("completed ")
            && l.ends_with(": subtotal 89000 discount 8900 points 5000 payable 75100")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("failed ") && l.ends_with(": FAILURE_REASON_PAYMENT_DECLINED")),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "reused request id: ALREADY_EXISTS reason IDEMPOTENCY_KEY_REUSED domain sagaflow"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("unknown payment method: INVALID_ARGUMENT fields payment_method"),
        "{stdout}"
    );
    assert!(stdout.contains(banner), "{stdout}");

    // The orders it reported are the server's.
    let completed = order_id_after(stdout, "completed ");
    let order = &grpcurl_json(
        addr,
        &[
            "-H",
            &header,
            "-d",
            &json!({ "order_id": completed }).to_string(),
        ],
        GET_ORDER,
    )["order"];
    assert_eq!(order["status"], "ORDER_STATUS_COMPLETED", "{order}");
    assert_eq!(order["userId"], "alice", "{order}");
    assert_eq!(order["couponCode"], "WELCOME-ALICE", "{order}");
    assert_eq!(order["payable"], "75100", "{order}");
    let failed = order_id_after(stdout, "failed ");
    let order = &grpcurl_json(
        addr,
        &[
            "-H",
            &header,
            "-d",
            &json!({ "order_id": failed }).to_string(),
        ],
        GET_ORDER,
    )["order"];
    assert_eq!(order["status"], "ORDER_STATUS_FAILED", "{order}");
    assert_eq!(order["userId"], "bob", "{order}");
    assert_eq!(
        order["failureReason"], "FAILURE_REASON_PAYMENT_DECLINED",
        "{order}"
    );
    assert_eq!(order.get("discount"), None::<&Value>, "cleared: {order}");
}

/// A second run against the same data: alice's coupon is used, her order fails, the example must
/// say which value was wrong and exit 1.
fn check_second_run_fails(out: &Output) {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("MISMATCH alice's order status")
            && stderr.contains("ORDER_STATUS_FAILED")
            && stderr.contains("want")
            && stderr.contains("ORDER_STATUS_COMPLETED"),
        "{stderr}"
    );
    assert!(!stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn python_client_example_places_orders_and_reads_error_details() {
    const HINT: &str = "pip install -r clients/python/requirements.txt";
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start();
    let python = repo().join("clients/python");
    let gen_dir = dir.path().join("gen");
    let gen_dir = gen_dir.to_str().unwrap();

    let out = run(&python, "python3", &["generate.py", gen_dir], HINT);
    let stdout = assert_success("generate.py", &out, HINT);
    assert!(stdout.contains("generated 11 contracts"), "{stdout}");
    assert!(
        Path::new(gen_dir)
            .join("sagaflow/order/v1/order_pb2_grpc.py")
            .exists()
    );

    let example = ["place_order.py", dev.addr(), "--gen-dir", gen_dir];
    let out = run_with(&python, "python3", &example, &dev.envs(), HINT);
    let stdout = assert_success("place_order.py", &out, HINT);
    check_example_output(
        dev.addr(),
        &dev.operator,
        &stdout,
        "python client: all checks passed",
    );

    check_second_run_fails(&run_with(&python, "python3", &example, &dev.envs(), HINT));
    // Without tokens every call is refused: the example reports the server's refusal.
    let out = run(&python, "python3", &example, HINT);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("UNAUTHENTICATED"), "{}", text(&out).1);
}

#[test]
fn typescript_client_example_places_orders_and_reads_error_details() {
    const HINT: &str = "run `npm ci` in clients/typescript";
    let dev = Dev::start();
    let typescript = repo().join("clients/typescript");
    assert!(
        typescript.join("node_modules/@grpc/grpc-js").exists(),
        "clients/typescript has no node_modules: {HINT}"
    );

    // Generates src/gen from proto/ and compiles to dist/ (both ignored by git).
    let out = run(&typescript, "npm", &["run", "--silent", "build"], HINT);
    let stdout = assert_success("npm run build", &out, HINT);
    assert!(stdout.contains("generated 11 contracts"), "{stdout}");

    let example = ["dist/place_order.js", dev.addr()];
    let out = run_with(&typescript, "node", &example, &dev.envs(), HINT);
    let stdout = assert_success("node dist/place_order.js", &out, HINT);
    check_example_output(
        dev.addr(),
        &dev.operator,
        &stdout,
        "typescript client: all checks passed",
    );

    check_second_run_fails(&run_with(&typescript, "node", &example, &dev.envs(), HINT));
}
