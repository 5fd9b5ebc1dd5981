//! The shared plumbing end to end: `sagaflow serve <service>` on SQLite and PostgreSQL serves its
//! service, grpc.health.v1 and reflection (v1alpha, what grpcurl 1.8.6 speaks); `describe` shows
//! the public RPCs of the service's proto file; SIGTERM shuts down cleanly.

use std::time::Duration;

use sagaflow_testkit::{Kind, TestDatabase, grpcurl, grpcurl_output};
use sagaflow_tests::Process;

const START: Duration = Duration::from_secs(30);

fn serve(service: &str, db: &TestDatabase) -> Process {
    Process::start(
        &[
            "serve",
            service,
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ],
        &[],
        START,
    )
}

#[test]
fn every_service_lists_itself_health_and_reflection_on_sqlite() {
    for (service, full_name) in [
        ("order", "sagaflow.order.v1.OrderService"),
        ("coupon", "sagaflow.coupon.v1.CouponService"),
        ("inventory", "sagaflow.inventory.v1.InventoryService"),
        ("payment", "sagaflow.payment.v1.PaymentService"),
        ("point", "sagaflow.point.v1.PointService"),
        ("ranking", "sagaflow.ranking.v1.RankingService"),
    ] {
        let db = TestDatabase::new(Kind::Sqlite, service);
        let mut p = serve(service, &db);
        let listed = grpcurl(p.addr(), &[], Some("list"));
        let names: Vec<&str> = listed.lines().collect();
        assert!(names.contains(&full_name), "{service}: {names:?}");
        assert!(
            names.contains(&"grpc.health.v1.Health"),
            "{service}: {names:?}"
        );
        assert!(
            names.contains(&"grpc.reflection.v1alpha.ServerReflection"),
            "{service}: {names:?}"
        );
        // Only what this process serves (a new user's finding: `serve inventory` listed all);
        // the order service also serves its outbox admin service.
        let sagaflow: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.starts_with("sagaflow."))
            .collect();
        let mut expected = vec![full_name];
        if service == "order" {
            expected.push("sagaflow.order.v1.OutboxAdminService");
        }
        assert_eq!(sagaflow, expected, "{service}: {names:?}");
        let health = grpcurl(
            p.addr(),
            &["-d", &format!("{{\"service\":\"{full_name}\"}}")],
            Some("grpc.health.v1.Health/Check"),
        );
        assert!(health.contains("SERVING"), "{service}: {health}");
        assert_eq!(
            p.terminate(Duration::from_secs(10)),
            Some(0),
            "{}",
            p.logs()
        );
    }
}

#[test]
fn describe_order_service_shows_the_public_rpcs_on_postgres() {
    let db = TestDatabase::new(Kind::Postgres, "found_order");
    let mut p = serve("order", &db);
    let described = grpcurl(
        p.addr(),
        &[],
        Some("describe sagaflow.order.v1.OrderService"),
    );
    // Each with its class, visible to every client (docs/operations.md, "Security").
    for rpc in [
        "rpc PlaceOrder ( .sagaflow.order.v1.PlaceOrderRequest ) returns ( .sagaflow.order.v1.PlaceOrderResponse ) {",
        "rpc GetOrder ( .sagaflow.order.v1.GetOrderRequest ) returns ( .sagaflow.order.v1.GetOrderResponse ) {",
        "rpc ListOrders ( .sagaflow.order.v1.ListOrdersRequest ) returns ( .sagaflow.order.v1.ListOrdersResponse ) {",
    ] {
        let at = described
            .find(rpc)
            .unwrap_or_else(|| panic!("missing {rpc:?} in:\n{described}"));
        let option = described[at + rpc.len()..].trim_start();
        assert!(
            option.starts_with("option (.sagaflow.options.v1.rpc_class) = RPC_CLASS_PUBLIC;"),
            "{rpc:?} is not public in:\n{described}"
        );
    }
    let message = grpcurl(
        p.addr(),
        &[],
        Some("describe sagaflow.order.v1.PlaceOrderRequest"),
    );
    for field in [
        "request_id",
        "user_id",
        "lines",
        "coupon_code",
        "points",
        "payment_method",
    ] {
        assert!(message.contains(field), "missing {field} in:\n{message}");
    }
    let health = grpcurl(p.addr(), &[], Some("describe grpc.health.v1.Health"));
    assert!(health.contains("rpc Check"), "{health}");
    assert_eq!(
        p.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        p.logs()
    );
}

/// grpcurl can read the rich error details (a new user's finding: they printed as raw bytes).
#[test]
fn grpcurl_prints_error_details() {
    let db = TestDatabase::new(Kind::Sqlite, "found_details");
    let p = serve("inventory", &db);
    let out = grpcurl_output(
        p.addr(),
        &["-d", r#"{"sku":"","name":"x","unit_price":-1}"#],
        Some("sagaflow.inventory.v1.InventoryService/UpsertProduct"),
    );
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("InvalidArgument"), "{text}");
    assert!(text.contains("google.rpc.BadRequest"), "{text}");
    assert!(text.contains("fieldViolations"), "{text}");
    assert!(!text.contains("is not recognized"), "{text}");
}

/// A demo that runs out of time says so instead of reporting the orders still in flight as
/// invariant violations (a new user's finding).
#[test]
fn demo_timeout_reports_unfinished_orders_not_violations() {
    let out = std::process::Command::new(sagaflow_tests::sagaflow_bin())
        .args(["demo", "--timeout-secs", "1"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("invariants not checked"), "{stdout}");
    assert!(!stdout.contains("VIOLATED"), "{stdout}");
}

#[test]
fn unsupported_database_url_is_a_usage_error() {
    let out = std::process::Command::new(sagaflow_tests::sagaflow_bin())
        .args(["serve", "coupon", "--database-url", "mysql://x/y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported database URL"));
}

#[test]
fn unknown_method_is_reported_by_grpcurl() {
    let db = TestDatabase::new(Kind::Sqlite, "found_unknown");
    let p = serve("inventory", &db);
    let out = grpcurl_output(
        p.addr(),
        &[],
        Some("sagaflow.inventory.v1.InventoryService/Nope"),
    );
    assert!(!out.status.success());
}
