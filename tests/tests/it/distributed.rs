//! The distributed mode driven by sagaflow's own tools: every service a `sagaflow serve` process
//! on its own PostgreSQL database, `sagaflow seed` loading the demo data through the admin RPCs,
//! `demo` and `bench` placing orders through the per-service addresses, and `saga show` finding a
//! saga at the orchestrator.

use std::{process::Command, time::Duration};

use sagaflow_testkit::grpcurl_json;
use sagaflow_tests::{Process, ServeLayout, sagaflow_bin};
use serde_json::{Value, json};

/// Runs `sagaflow ARGS… ADDRS…`; returns (success, stdout, stderr).
fn cli(args: &[&str], addrs: &[String]) -> (bool, String, String) {
    let out = Command::new(sagaflow_bin())
        .args(args)
        .args(addrs)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn seed_demo_bench_and_saga_show_drive_serve_processes_on_postgres() {
    let layout = ServeLayout::new("http", "dist");
    let (ports, addrs) = (&layout.ports, &layout.addrs);
    let _processes: Vec<Process> = ports
        .iter()
        .zip(&layout.dbs)
        .map(|((service, port), db)| {
            let listen = format!("127.0.0.1:{port}");
            let mut args = vec![
                "serve",
                service,
                "--listen",
                &listen,
                "--database-url",
                &db.url,
            ];
            args.extend(addrs.iter().map(String::as_str));
            Process::start(&args, &[], Duration::from_secs(60))
        })
        .collect();
    let port = |name: &str| layout.port(name);

    // Empty databases: seed them through the admin RPCs, twice (the second changes nothing).
    for _ in 0..2 {
        let (ok, out, err) = cli(&["seed"], addrs);
        assert!(ok, "seed failed: {out}{err}");
        assert!(out.contains("seeded 12 products"), "{out}");
    }
    let inventory = format!("127.0.0.1:{}", port("inventory"));
    let product = grpcurl_json(
        &inventory,
        &["-d", r#"{"sku":"KB-001"}"#],
        "sagaflow.inventory.v1.InventoryService/GetProduct",
    );
    assert_eq!(product["product"]["sku"], "KB-001", "{product}");
    // 10 000 once: the second seed restocked nothing (its keys are fixed).
    assert_eq!(product["product"]["stock"], "10000", "{product}");

    let (ok, out, err) = cli(&["demo", "--concurrency", "16"], addrs);
    assert!(ok, "demo failed: {out}{err}");
    assert!(out.contains("checks, all hold"), "{out}");
    assert!(!out.contains("starting an embedded system"), "{out}");

    let (ok, out, err) = cli(
        &["bench", "--count", "60", "--concurrency", "8", "--json"],
        addrs,
    );
    assert!(ok, "bench failed: {out}{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["finished"], 60, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["outcomes"]["COMPLETED"], 60, "{report}");

    // One of the demo's orders, found through the order service, is a saga at the orchestrator.
    let order = format!("127.0.0.1:{}", port("order"));
    let orders = grpcurl_json(
        &order,
        &["-d", &json!({ "user_id": "user-020" }).to_string()],
        "sagaflow.order.v1.OrderService/ListOrders",
    );
    let order_id = orders["orders"][0]["orderId"]
        .as_str()
        .unwrap_or_else(|| panic!("user-020 has no orders: {orders}"))
        .to_owned();
    let (ok, out, err) = cli(&["saga", "show", &order_id], addrs);
    assert!(ok, "saga show failed: {out}{err}");
    assert!(out.contains(&format!("saga {order_id}")), "{out}");

    // Browsing: the demo's out-of-stock orders, by reason, with the step that failed.
    let (ok, out, err) = cli(
        &[
            "saga",
            "list",
            "--json",
            "--reason",
            "out_of_stock",
            "--since",
            "1h",
            "--limit",
            "5",
        ],
        addrs,
    );
    assert!(ok, "saga list failed: {out}{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 5, "{out}");
    for row in &rows {
        assert_eq!(row["status"], "COMPENSATED", "{row}");
        assert_eq!(row["reason"], "OUT_OF_STOCK", "{row}");
        assert_eq!(row["step"], "deduct_inventory", "{row}");
    }
    let (ok, out, err) = cli(
        &[
            "saga",
            "list",
            "--step",
            "start_payment",
            "--status",
            "compensated",
        ],
        addrs,
    );
    assert!(ok, "saga list failed: {out}{err}");
    let declined = out
        .lines()
        .filter(|l| l.contains("PAYMENT_DECLINED"))
        .count();
    assert!(declined >= 1, "{out}");
    assert!(
        out.lines()
            .skip(1)
            .filter(|l| !l.starts_with('('))
            .all(|l| l.contains(" start_payment ")),
        "{out}"
    );
    // Nothing was created more than an hour ago.
    let (ok, out, err) = cli(&["saga", "list", "--json", "--before", "1h"], addrs);
    assert!(ok, "saga list failed: {out}{err}");
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&out).unwrap().len(),
        0,
        "{out}"
    );

    // Without the orchestrator's address, `saga` says where it asked instead of "not found"
    // from whatever answers: here the order service, which has no saga admin API.
    let (ok, out, err) = cli(
        &[
            "saga",
            "show",
            &order_id,
            "--addr",
            &format!("http://{order}"),
        ],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("does not serve the saga admin API"),
        "{out}{err}"
    );
}
