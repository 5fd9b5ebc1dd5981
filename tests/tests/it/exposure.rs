//! What a process shows callers besides its answers (docs/operations.md, "Logs and traces from
//! untrusted input"):
//!
//! - `reflection_describes_only_the_served_services`: `sagaflow serve order` lists and describes
//!   the order services and their messages, never SagaAdminService or another service's
//!   (grpcurl `list`, `describe`); `sagaflow dev`, which serves the admin service, describes it.
//! - `a_database_failure_is_generic_to_the_caller_and_detailed_in_the_log`: `sagaflow serve
//!   point` on PostgreSQL whose database stops accepting connections answers GetBalance with
//!   `temporarily unavailable, retry; error id <id>` (or `internal error, error id <id>`), no
//!   driver text; the log line with that `error_id` holds the cause.

use std::time::Duration;

use sagaflow_testkit::{TestDatabase, grpcurl, grpcurl_output};
use sagaflow_tests::Process;
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(60);

/// `sagaflow serve SERVICE --listen 127.0.0.1:0 EXTRA…`, once it listens.
fn serve(service: &str, extra: &[&str]) -> Process {
    let mut args = vec!["serve", service, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Process::start(&args, &[], WITHIN)
}

/// `grpcurl describe SYMBOL`: its output when it succeeds, `Err(stderr)` when it does not.
fn describe(addr: &str, symbol: &str) -> Result<String, String> {
    let out = grpcurl_output(addr, &[], Some(&format!("describe {symbol}")));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn reflection_describes_only_the_served_services() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let order = serve("order", &["--data-dir", data]);
    let listed: Vec<String> = grpcurl(order.addr(), &[], Some("list"))
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listed,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "sagaflow.order.v1.OrderService",
            "sagaflow.order.v1.OutboxAdminService",
        ]
    );
    // What it serves, and the messages of its methods, are described.
    for symbol in [
        "sagaflow.order.v1.OrderService",
        "sagaflow.order.v1.PlaceOrderRequest",
        "grpc.health.v1.Health",
    ] {
        assert!(describe(order.addr(), symbol).is_ok(), "{symbol}");
    }
    // Nothing it does not serve: the saga admin API, another service, their messages.
    for symbol in [
        "sagaflow.workflow.v1.SagaAdminService",
        "sagaflow.workflow.v1.GetSagaRequest",
        "sagaflow.payment.v1.PaymentService",
        "sagaflow.point.v1.PointService",
        "sagaflow.orchestrator.v1.OrchestratorService",
    ] {
        let refused = describe(order.addr(), symbol).unwrap_err();
        assert!(refused.contains("Symbol not found"), "{symbol}: {refused}");
    }

    // The embedded system serves the admin API on its port: there it is described.
    let dev = sagaflow_tests::start_dev("127.0.0.1:0", &dir.path().join("dev"), &[], &[]);
    let described = describe(dev.addr(), "sagaflow.workflow.v1.SagaAdminService").unwrap();
    assert!(described.contains("rpc GetSaga"), "{described}");
}

#[test]
fn a_database_failure_is_generic_to_the_caller_and_detailed_in_the_log() {
    let db = TestDatabase::postgres("generic_errors");
    let database = db
        .url
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let point = serve("point", &["--database-url", &db.url]);
    let balance = |user: &str| {
        grpcurl_output(
            point.addr(),
            &["-d", &json!({ "user_id": user }).to_string()],
            Some("sagaflow.point.v1.PointService/GetBalance"),
        )
    };
    assert!(balance("alice").status.success());

    // The database goes away under the running process: no new connection is accepted and
    // every open one is terminated.
    let admin = std::env::var("SAGAFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let drop_database = |allow: bool| {
        rt.block_on(async {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            // The name is the test's own (`sft_generic_errors_<hex>`), quoted.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS {allow}"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            if !allow {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                )
                .bind(&database)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        });
    };
    drop_database(false);
    let out = balance("alice");
    drop_database(true);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Message: "))
        .unwrap_or_else(|| panic!("no message: {stderr}"))
        .to_owned();
    let (code, id) =
        if let Some(id) = message.strip_prefix("temporarily unavailable, retry; error id ") {
            assert!(stderr.contains("Code: Unavailable"), "{stderr}");
            ("Unavailable", id.to_owned())
        } else if let Some(id) = message.strip_prefix("internal error, error id ") {
            assert!(stderr.contains("Code: Internal"), "{stderr}");
            ("Internal", id.to_owned())
        } else {
            panic!("not a generic message: {stderr}");
        };
    assert_eq!(id.len(), 16, "{message}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{message}");
    for leak in ["database", "postgres", "sqlx", "connection", &database] {
        assert!(
            !stderr.to_lowercase().contains(leak),
            "{leak:?} in {stderr}"
        );
    }
    // The cause is in the log line that carries the same id.
    let logs = point.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&format!("error_id={id}")))
        .collect();
    assert_eq!(lines.len(), 1, "{code}: {logs}");
    assert!(lines[0].contains("error="), "{}", lines[0]);
    assert!(lines[0].to_lowercase().contains("database"), "{}", lines[0]);
    eprintln!("caller: {code}: {message}\nlog: {}", lines[0]);
}
