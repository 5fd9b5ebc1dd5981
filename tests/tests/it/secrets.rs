//! Secrets at rest and on display (docs/operations.md, "Secrets and card tokens", "Files and
//! permissions"), on a real `sagaflow dev`:
//!
//! - a card token in clear is in no reply (PlaceOrder, GetOrder, ListOrders, GetPayment, the
//!   saga admin RPCs, `sagaflow saga show` / `list`), no byte of any file of the data directory
//!   (the order row, the outbox event, the saga input and journal, the payment rows) and no log
//!   line — while the order is still paid, and a capture decline is still seen at capture (the
//!   payment service opens the sealed token for both gateway calls);
//! - the data directory is 0700 and every file in it 0600, also when it existed with wider
//!   modes (tightened, with a log line).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use sagaflow_testkit::grpcurl_json;
use sagaflow_tests::{Process, sagaflow_bin, start_dev};
use serde_json::{Value, json};

const ORDER: &str = "sagaflow.order.v1.OrderService";
const PAYMENT: &str = "sagaflow.payment.v1.PaymentService";
const ADMIN: &str = "sagaflow.workflow.v1.SagaAdminService";

/// The two card tokens used, and what of each must never be seen in clear (`tok_…line` is the
/// mask of `tok_capture_decline`: its tail is allowed, its middle is not).
const TOKENS: [(&str, &str); 2] = [
    ("tok_ok", "tok_ok"),
    ("tok_capture_decline", "capture_decl"),
];

/// The one way these tests start `sagaflow dev` (flags every test here needs go here).
fn start(data: &Path) -> Process {
    start_dev(
        "127.0.0.1:0",
        data,
        &[],
        // Debug for the services that handle the token: their debug lines must not hold it either.
        &[(
            "RUST_LOG",
            "info,sagaflow_order=debug,sagaflow_payment=debug,sagaflow_orchestrator=debug,\
             sagaflow_workflow_engine=debug",
        )],
    )
}

fn call(addr: &str, method: &str, body: &Value) -> Value {
    grpcurl_json(addr, &["-d", &body.to_string()], method)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Asserts that no text or file content in `haystacks` (name, bytes) holds any token in clear.
fn assert_no_clear_token<'a>(haystacks: impl IntoIterator<Item = (String, &'a [u8])>) -> usize {
    let mut checked = 0;
    for (name, bytes) in haystacks {
        for (token, needle) in TOKENS {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{token} in clear in {name}"
            );
        }
        checked += 1;
    }
    checked
}

#[test]
fn card_tokens_are_masked_everywhere_and_orders_still_pay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = start(&data);
    let addr = dev.addr().to_owned();

    let place = |request_id: &str, token: &str| -> Value {
        call(
            &addr,
            &format!("{ORDER}/PlaceOrder"),
            &json!({
                "request_id": request_id,
                "user_id": "alice",
                "lines": [{ "sku": "KB-001", "quantity": 1 }],
                "payment_method": token,
            }),
        )
    };
    let paid = place("secrets-1", "tok_ok");
    let declined = place("secrets-2", "tok_capture_decline");
    let paid_id = paid["order"]["orderId"].as_str().unwrap().to_owned();
    let declined_id = declined["order"]["orderId"].as_str().unwrap().to_owned();

    let wait = |order_id: &str| {
        call(
            &addr,
            &format!("{ORDER}/GetOrder"),
            &json!({ "order_id": order_id, "wait": "30s" }),
        )
    };
    let paid_order = wait(&paid_id);
    let declined_order = wait(&declined_id);
    // The token reached the gateway at authorization and at capture: one order captured, the
    // other declined at capture (the pivot) and compensated.
    assert_eq!(
        paid_order["order"]["status"], "ORDER_STATUS_COMPLETED",
        "{paid_order}"
    );
    assert_eq!(declined_order["order"]["status"], "ORDER_STATUS_FAILED");
    assert_eq!(
        declined_order["order"]["failureReason"], "FAILURE_REASON_PAYMENT_DECLINED",
        "{declined_order}"
    );
    let paid_payment = call(
        &addr,
        &format!("{PAYMENT}/GetPayment"),
        &json!({ "order_id": paid_id }),
    );
    assert_eq!(
        paid_payment["payment"]["status"], "PAYMENT_STATUS_COMPLETED",
        "{paid_payment}"
    );
    let declined_payment = call(
        &addr,
        &format!("{PAYMENT}/GetPayment"),
        &json!({ "order_id": declined_id }),
    );
    assert_eq!(
        declined_payment["payment"]["status"], "PAYMENT_STATUS_CANCELED",
        "{declined_payment}"
    );
    let listed = call(
        &addr,
        &format!("{ORDER}/ListOrders"),
        &json!({ "user_id": "alice" }),
    );
    let sagas = call(&addr, &format!("{ADMIN}/ListSagas"), &json!({}));
    let saga = call(
        &addr,
        &format!("{ADMIN}/GetSaga"),
        &json!({ "saga_id": paid_id }),
    );
    // The saga input holds the masked and the sealed token (the payment step's, in the table
    // below); the admin view shows even the sealed one masked.
    let input: Value = serde_json::from_str(saga["saga"]["inputJson"].as_str().unwrap()).unwrap();
    assert_eq!(input["payment_method"], "tok_…", "{input}");
    assert_eq!(input["sealed_payment_method"], "sealed:v1:…", "{input}");
    let declined_saga = call(
        &addr,
        &format!("{ADMIN}/GetSaga"),
        &json!({ "saga_id": declined_id }),
    );
    let declined_input: Value =
        serde_json::from_str(declined_saga["saga"]["inputJson"].as_str().unwrap()).unwrap();
    assert_eq!(declined_input["payment_method"], "tok_…line");

    let cli = |args: &[&str]| -> String {
        let out = std::process::Command::new(sagaflow_bin())
            .args(args)
            .args(["--addr", &format!("http://{addr}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let shown = cli(&["saga", "show", &declined_id]);
    assert!(shown.contains(&declined_id), "{shown}");
    let saga_list = cli(&["saga", "list"]);

    let replies: Vec<(String, String)> = [
        ("PlaceOrder", paid.to_string() + &declined.to_string()),
        (
            "GetOrder",
            paid_order.to_string() + &declined_order.to_string(),
        ),
        ("ListOrders", listed.to_string()),
        (
            "GetPayment",
            paid_payment.to_string() + &declined_payment.to_string(),
        ),
        ("ListSagas", sagas.to_string()),
        ("GetSaga", saga.to_string() + &declined_saga.to_string()),
        ("saga show", shown),
        ("saga list", saga_list),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text))
    .collect();
    let checked = assert_no_clear_token(
        replies
            .iter()
            .map(|(name, text)| (format!("the {name} reply"), text.as_bytes())),
    );
    assert_eq!(checked, 8);

    // Stopped, so that the last pages are in the files: the database files, their WAL, the
    // outbox, the saga rows and journal, the payment rows — every byte of the data directory.
    assert_eq!(dev.terminate(Duration::from_secs(30)), Some(0));
    let logs = dev.logs();
    assert!(logs.contains("sagaflow dev is running"));
    let files: Vec<(PathBuf, Vec<u8>)> = files_of(&data)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    assert!(
        files
            .iter()
            .any(|(p, b)| p.ends_with("workflow.db") && !b.is_empty()),
        "{:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let checked = assert_no_clear_token(
        files
            .iter()
            .map(|(path, bytes)| (path.display().to_string(), bytes.as_slice()))
            .chain([("the logs".to_owned(), logs.as_bytes())]),
    );
    assert!(checked >= 8, "{checked} files checked");

    // The tables themselves, read directly: the masked forms are where the tokens were.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection as _;
        let open = |name: &str| {
            let url = format!("sqlite://{}", data.join(name).display());
            async move { sqlx::SqliteConnection::connect(&url).await.unwrap() }
        };
        let mut order_db = open("order.db").await;
        let mut masked: Vec<(String,)> =
            sqlx::query_as("SELECT payment_method FROM orders ORDER BY request_id")
                .fetch_all(&mut order_db)
                .await
                .unwrap();
        masked.sort();
        assert_eq!(
            masked,
            vec![("tok_…".to_owned(),), ("tok_…line".to_owned(),)]
        );
        let mut workflow_db = open("workflow.db").await;
        let inputs: Vec<(String,)> = sqlx::query_as("SELECT input FROM sagas")
            .fetch_all(&mut workflow_db)
            .await
            .unwrap();
        assert_eq!(inputs.len(), 2);
        for (input,) in &inputs {
            let input: Value = serde_json::from_str(input).unwrap();
            let sealed = input["sealed_payment_method"].as_str().unwrap();
            assert!(
                sealed.starts_with("sealed:v1:") && sealed.len() > 60,
                "{input}"
            );
        }
        let mut payment_db = open("payment.db").await;
        let stored: Vec<(String,)> = sqlx::query_as("SELECT payment_method FROM payments")
            .fetch_all(&mut payment_db)
            .await
            .unwrap();
        assert_eq!(stored.len(), 2);
        for (method,) in &stored {
            assert!(method.starts_with("sealed:v1:"), "{method}");
        }
    });
}

#[test]
fn data_directory_is_owner_only_and_tightened_when_wider() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A directory that existed with the umask's mode.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut dev = start(&data);
    assert_eq!(mode(&data), 0o700);
    assert!(
        dev.logs().contains("tightened to 700"),
        "no log line about the directory:\n{}",
        dev.logs()
    );
    let files = files_of(&data);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // Seven databases with their WAL and shared memory, the lock, the card-token key, the seed
    // marker.
    for name in [
        "order.db",
        "workflow.db-wal",
        "payment.db-shm",
        "LOCK",
        "card-token.key",
        "seeded",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    assert!(files.len() >= 7 * 3 + 2, "{names:?}");
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_eq!(dev.terminate(Duration::from_secs(30)), Some(0));

    // Files left wider (by an older version, or a copy): tightened at the next start.
    for file in &files {
        if file.exists() {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut dev = start(&data);
    assert_eq!(mode(&data), 0o700);
    let files = files_of(&data);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    let logs = dev.logs();
    for name in ["order.db", "card-token.key", "LOCK", "seeded"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("tightened to 600") && l.contains(name)),
            "no log line for {name}:\n{logs}"
        );
    }
    assert_eq!(dev.terminate(Duration::from_secs(30)), Some(0));
}

/// A database URL is printed with its passwords removed, whatever form holds them
/// (`sagaflow_server::db::redact`): the start-up error of `serve` names the URL, redacted.
#[test]
fn start_up_errors_print_database_urls_without_passwords() {
    let port = sagaflow_tests::free_port();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "s3cret-from-file\n").unwrap();
    let cases: [(String, Vec<&str>, &str); 4] = [
        (
            format!("postgres://order:s3cret-userinfo@127.0.0.1:{port}/sagaflow_nowhere"),
            vec![],
            "postgres://order:***@127.0.0.1",
        ),
        (
            format!(
                "postgres://order@127.0.0.1:{port}/sagaflow_nowhere?sslmode=disable&password=s3cret-query"
            ),
            vec![],
            "&password=***",
        ),
        (
            format!("postgres://order@127.0.0.1:{port}/sagaflow_nowhere?sslmode=disable"),
            vec!["--database-password-file", password_file.to_str().unwrap()],
            "?sslmode=disable&password=***",
        ),
        (
            "host=127.0.0.1 user=order password=s3cret-conninfo".to_owned(),
            vec![],
            "password=***",
        ),
    ];
    for (url, extra, shown) in &cases {
        let out = std::process::Command::new(sagaflow_bin())
            .args([
                "serve",
                "order",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                url,
            ])
            .args(extra)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url} started");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !printed.contains("s3cret"),
            "{url}: a password printed:\n{printed}"
        );
        assert!(
            printed.contains(shown),
            "{url}: {shown:?} not in:\n{printed}"
        );
    }
}
