//! The order saga end to end (docs/architecture.md, "The order saga"): a real `sagaflow dev`
//! process driven with the real grpcurl through the README walkthrough, then one order per failure
//! reason, asserting the final status and every stock, balance, coupon and payment value. Every
//! public call carries the token of its user from `sagaflow token <user>`, as the README shows
//! (docs/operations.md, "End users").

use std::{cell::RefCell, collections::HashMap, fmt, path::PathBuf, time::Duration};

use sagaflow_testkit::{eventually_blocking, grpcurl_json, grpcurl_output};
use sagaflow_tests::Process;
use serde_json::{Value, json};

const ORDER: &str = "sagaflow.order.v1.OrderService";
const INVENTORY: &str = "sagaflow.inventory.v1.InventoryService";
const POINT: &str = "sagaflow.point.v1.PointService";
const COUPON: &str = "sagaflow.coupon.v1.CouponService";
const PAYMENT: &str = "sagaflow.payment.v1.PaymentService";
const RANKING: &str = "sagaflow.ranking.v1.RankingService";
const ADMIN: &str = "sagaflow.workflow.v1.SagaAdminService";

struct Dev {
    process: Process,
    data: PathBuf,
    tokens: RefCell<HashMap<String, String>>,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // With end-user authentication, as the README runs it.
        let process = sagaflow_tests::start_dev_authenticated(
            "127.0.0.1:0",
            &data,
            &[],
            // The debug line of GetOrder's long-poll tells the shutdown check it is in flight.
            &[("RUST_LOG", "info,sagaflow_order=debug")],
        );
        Self {
            process,
            data,
            tokens: RefCell::default(),
            _dir: dir,
        }
    }

    fn addr(&self) -> &str {
        self.process.addr()
    }

    /// `authorization: Bearer <token of user>`, the token from `sagaflow token <user>`.
    fn header(&self, user: &str) -> String {
        let mut tokens = self.tokens.borrow_mut();
        let token = tokens
            .entry(user.to_owned())
            .or_insert_with(|| sagaflow_tests::dev_token(&self.data, user));
        format!("authorization: Bearer {token}")
    }

    /// A public RPC as `user`.
    fn call_as(&self, user: &str, method: &str, body: Value) -> Value {
        let header = self.header(user);
        grpcurl_json(
            self.addr(),
            &["-H", &header, "-d", &body.to_string()],
            method,
        )
    }

    /// An admin RPC (open on `dev`: no token).
    fn call(&self, method: &str, body: Value) -> Value {
        grpcurl_json(self.addr(), &["-d", &body.to_string()], method)
    }

    fn stock(&self, sku: &str) -> i64 {
        as_i64(
            &self.call_as(
                "alice",
                &format!("{INVENTORY}/GetProduct"),
                json!({ "sku": sku }),
            )["product"]["stock"],
        )
    }

    fn balance(&self, user: &str) -> i64 {
        as_i64(
            &self.call_as(
                user,
                &format!("{POINT}/GetBalance"),
                json!({ "user_id": user }),
            )["balance"],
        )
    }

    fn coupon(&self, user: &str, code: &str) -> Value {
        self.call_as(
            user,
            &format!("{COUPON}/GetCoupon"),
            json!({ "code": code }),
        )["coupon"]
            .clone()
    }

    /// The order's payment, or None when it has none (NOT_FOUND).
    fn payment(&self, user: &str, order_id: &str) -> Option<Value> {
        let header = self.header(user);
        let out = grpcurl_output(
            self.addr(),
            &[
                "-H",
                &header,
                "-d",
                &json!({ "order_id": order_id }).to_string(),
            ],
            Some(&format!("{PAYMENT}/GetPayment")),
        );
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            Some(v["payment"].clone())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound"), "GetPayment failed: {err}");
            None
        }
    }

    /// PlaceOrder as the request's `user_id`.
    fn place(&self, body: Value) -> String {
        let user = body["user_id"].as_str().unwrap().to_owned();
        let reply = self.call_as(&user, &format!("{ORDER}/PlaceOrder"), body);
        assert_eq!(reply["order"]["status"], "ORDER_STATUS_PENDING", "{reply}");
        reply["order"]["orderId"].as_str().unwrap().to_owned()
    }

    /// GetOrder with `wait`, as the README shows.
    fn wait(&self, user: &str, order_id: &str) -> Value {
        let order = self.call_as(
            user,
            &format!("{ORDER}/GetOrder"),
            json!({ "order_id": order_id, "wait": "30s" }),
        )["order"]
            .clone();
        assert_ne!(
            order["status"], "ORDER_STATUS_PENDING",
            "still pending: {order}"
        );
        order
    }
}

/// grpcurl prints int64 fields as JSON strings (proto3 JSON mapping); absent means 0.
fn as_i64(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_i64().unwrap(),
        Value::Null => 0,
        other => panic!("not an integer: {other}"),
    }
}

#[test]
fn readme_walkthrough_and_every_failure_reason() {
    let dev = Dev::start();

    // -- list the services
    let listed = sagaflow_testkit::grpcurl(dev.addr(), &[], Some("list"));
    for service in [ORDER, INVENTORY, POINT, COUPON, PAYMENT, RANKING, ADMIN] {
        assert!(
            listed.contains(service),
            "{service} missing from:\n{listed}"
        );
    }

    // -- state before
    assert_eq!(dev.stock("KB-001"), 10_000);
    assert_eq!(dev.balance("alice"), 50_000);
    assert_eq!(
        dev.coupon("alice", "WELCOME-ALICE")["status"],
        "COUPON_STATUS_AVAILABLE"
    );

    // -- a successful order: 1 x KB-001 (89,000) - 10% coupon (8,900) - 5,000 points = 75,100
    let ok = dev.place(json!({
        "request_id": "walkthrough-1", "user_id": "alice",
        "lines": [{ "sku": "KB-001", "quantity": 1 }],
        "coupon_code": "WELCOME-ALICE", "points": 5000, "payment_method": "tok_ok"
    }));
    let order = dev.wait("alice", &ok);
    assert_eq!(order["status"], "ORDER_STATUS_COMPLETED", "{order}");
    assert_eq!(as_i64(&order["subtotal"]), 89_000);
    assert_eq!(as_i64(&order["discount"]), 8_900);
    assert_eq!(as_i64(&order["points"]), 5_000);
    assert_eq!(as_i64(&order["payable"]), 75_100);
    assert_eq!(dev.stock("KB-001"), 9_999);
    assert_eq!(dev.balance("alice"), 45_000);
    let coupon = dev.coupon("alice", "WELCOME-ALICE");
    assert_eq!(coupon["status"], "COUPON_STATUS_USED");
    assert_eq!(coupon["orderId"], ok.as_str());
    let payment = dev.payment("alice", &ok).expect("a payment");
    assert_eq!(payment["status"], "PAYMENT_STATUS_COMPLETED");
    assert_eq!(as_i64(&payment["amount"]), 75_100);
    // A repeat of the same request returns the same order.
    let again = dev.call_as(
        "alice",
        &format!("{ORDER}/PlaceOrder"),
        json!({
            "request_id": "walkthrough-1", "user_id": "alice",
            "lines": [{ "sku": "KB-001", "quantity": 1 }],
            "coupon_code": "WELCOME-ALICE", "points": 5000, "payment_method": "tok_ok"
        }),
    );
    assert_eq!(again["order"]["orderId"], ok.as_str());
    // ... as it is now, not the PENDING copy of the first reply (a new user's finding).
    assert_eq!(
        again["order"]["status"], "ORDER_STATUS_COMPLETED",
        "{again}"
    );
    assert_eq!(as_i64(&again["order"]["payable"]), 75_100);

    // -- a failing order: capture declined at the pivot, every step compensated
    let declined = dev.place(json!({
        "request_id": "walkthrough-2", "user_id": "bob",
        "lines": [{ "sku": "MS-001", "quantity": 1 }],
        "coupon_code": "WELCOME-BOB", "points": 1000, "payment_method": "tok_capture_decline"
    }));
    let order = dev.wait("bob", &declined);
    assert_eq!(order["status"], "ORDER_STATUS_FAILED", "{order}");
    assert_eq!(order["failureReason"], "FAILURE_REASON_PAYMENT_DECLINED");
    assert_eq!(
        as_i64(&order["discount"]),
        0,
        "FailOrder clears the discount"
    );
    assert_eq!(dev.stock("MS-001"), 10_000);
    assert_eq!(dev.balance("bob"), 20_000);
    assert_eq!(
        dev.coupon("bob", "WELCOME-BOB")["status"],
        "COUPON_STATUS_AVAILABLE"
    );
    let payment = dev
        .payment("bob", &declined)
        .expect("the authorization is recorded");
    assert_eq!(payment["status"], "PAYMENT_STATUS_CANCELED");

    // -- its saga journal: compensations in exact reverse order of the completed steps
    let saga_id = order["sagaId"].as_str().unwrap().to_owned();
    let saga = dev.call(&format!("{ADMIN}/GetSaga"), json!({ "saga_id": saga_id }));
    assert_eq!(saga["saga"]["status"], "SAGA_STATUS_COMPENSATED", "{saga}");
    let journal = saga["journal"].as_array().unwrap();
    let steps_of = |event: &str| -> Vec<String> {
        journal
            .iter()
            .filter(|e| e["eventType"] == event)
            .map(|e| e["step"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(
        steps_of("step_succeeded"),
        [
            "use_coupon",
            "apply_coupon",
            "deduct_inventory",
            "start_payment",
            "deduct_points"
        ]
    );
    assert_eq!(
        steps_of("compensation_succeeded"),
        [
            "deduct_points",
            "start_payment",
            "deduct_inventory",
            "use_coupon"
        ]
    );

    // -- the steps as GetSaga describes them: apply_coupon is before the pivot but has no
    //    compensation of its own (FailOrder undoes it), so it is not listed as compensated
    let described: Vec<(String, String, bool, String)> = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["kind"].as_str().unwrap().to_owned(),
                s["hasCompensation"].as_bool().unwrap_or(false),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("use_coupon", "compensatable", true, "compensated"),
        ("apply_coupon", "compensatable", false, "succeeded"),
        ("deduct_inventory", "compensatable", true, "compensated"),
        ("start_payment", "compensatable", true, "compensated"),
        ("deduct_points", "compensatable", true, "compensated"),
        ("complete_payment", "pivot", false, "failed"),
        ("complete_order", "retriable", false, "pending"),
    ];
    assert_eq!(
        described,
        expected.map(|(n, k, c, s)| (n.to_owned(), k.to_owned(), c, s.to_owned())),
        "{saga}"
    );

    // -- the same saga as `sagaflow saga show` prints it: one line per journal entry, no
    //    `compensatedx1` counters and no `step - attempt 0` for saga-level entries
    let show = std::process::Command::new(sagaflow_tests::sagaflow_bin())
        .args([
            "saga",
            "show",
            &saga_id,
            "--addr",
            &format!("http://{}", dev.addr()),
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{shown}");
    assert!(shown.contains(&format!("saga {saga_id}")), "{shown}");
    assert!(shown.contains("compensation_succeeded"), "{shown}");
    for wrong in ["compensatedx", "step - ", "attempt 0"] {
        assert!(!shown.contains(wrong), "{wrong:?} in:\n{shown}");
    }

    // -- ranking counts the completed order only
    let top = dev.call_as(
        "alice",
        &format!("{RANKING}/TopProducts"),
        json!({ "limit": 5 }),
    );
    let products = top["products"].as_array().unwrap();
    assert_eq!(products.len(), 1, "{top}");
    assert_eq!(products[0]["sku"], "KB-001");
    assert_eq!(as_i64(&products[0]["unitsSold"]), 1);

    // -- one order per remaining failure reason, placed together
    // (alice names bob's coupon: refused by the saga, the coupon is not hers)
    let placed: Vec<(&str, &str, String)> = vec![
        (
            "FAILURE_REASON_COUPON_UNAVAILABLE",
            "alice",
            dev.place(json!({
                "request_id": "reason-coupon", "user_id": "alice",
                "lines": [{ "sku": "HS-001", "quantity": 1 }],
                "coupon_code": "WELCOME-BOB", "payment_method": "tok_ok"
            })),
        ),
        (
            "FAILURE_REASON_OUT_OF_STOCK",
            "alice",
            dev.place(json!({
                "request_id": "reason-stock", "user_id": "alice",
                "lines": [{ "sku": "HS-001", "quantity": 1 }, { "sku": "SOLD-001", "quantity": 1 }],
                "payment_method": "tok_ok"
            })),
        ),
        (
            "FAILURE_REASON_PAYMENT_DECLINED",
            "alice",
            dev.place(json!({
                "request_id": "reason-declined", "user_id": "alice",
                "lines": [{ "sku": "HS-001", "quantity": 1 }],
                "payment_method": "tok_decline"
            })),
        ),
        (
            "FAILURE_REASON_INSUFFICIENT_POINTS",
            "user-poor",
            dev.place(json!({
                "request_id": "reason-points", "user_id": "user-poor",
                "lines": [{ "sku": "HS-001", "quantity": 1 }],
                "points": 5000, "payment_method": "tok_ok"
            })),
        ),
        (
            "FAILURE_REASON_DEADLINE_EXCEEDED",
            "alice",
            dev.place(json!({
                "request_id": "reason-slow", "user_id": "alice",
                "lines": [{ "sku": "HS-001", "quantity": 1 }],
                "payment_method": "tok_slow"
            })),
        ),
    ];
    // CANCELED: an operator cancels a saga stuck on the slow gateway, before its pivot.
    let canceled = dev.place(json!({
        "request_id": "reason-canceled", "user_id": "bob",
        "lines": [{ "sku": "HS-001", "quantity": 1 }],
        "payment_method": "tok_slow"
    }));
    // Refused until the saga exists (the relay has not delivered the event yet): try again.
    let refused = RefCell::new(String::new());
    let v: Value = eventually_blocking(
        fmt::from_fn(|f| {
            write!(
                f,
                "CancelSaga to find the saga (last answer: {})",
                refused.borrow()
            )
        }),
        Duration::from_secs(20),
        || {
            let out = grpcurl_output(
                dev.addr(),
                &["-d", &json!({ "saga_id": canceled }).to_string()],
                Some(&format!("{ADMIN}/CancelSaga")),
            );
            *refused.borrow_mut() = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status
                .success()
                .then(|| serde_json::from_slice(&out.stdout).unwrap())
        },
    );
    assert_eq!(v["saga"]["status"], "SAGA_STATUS_COMPENSATING", "{v}");

    let hs_before = 10_000;
    for (reason, user, id) in &placed {
        let order = dev.wait(user, id);
        assert_eq!(order["status"], "ORDER_STATUS_FAILED", "{reason}: {order}");
        assert_eq!(order["failureReason"], *reason, "{order}");
        let payment = dev.payment(user, id);
        assert!(
            payment
                .as_ref()
                .is_none_or(|p| p["status"] == "PAYMENT_STATUS_CANCELED"),
            "{reason}: payment {payment:?}"
        );
    }
    let order = dev.wait("bob", &canceled);
    assert_eq!(order["failureReason"], "FAILURE_REASON_CANCELED", "{order}");
    // Every failed order gave its stock, points and coupons back.
    assert_eq!(dev.stock("HS-001"), hs_before);
    assert_eq!(dev.stock("SOLD-001"), 0);
    assert_eq!(dev.balance("user-poor"), 1_000);
    assert_eq!(dev.balance("alice"), 45_000);
    assert_eq!(dev.balance("bob"), 20_000);
    assert_eq!(
        dev.coupon("bob", "WELCOME-BOB")["status"],
        "COUPON_STATUS_AVAILABLE"
    );

    // SIGTERM with a GetOrder long-poll in flight (a new user's finding: shutdown waited up to a
    // minute for it, while the engine, already cut off from the server, failed healthy sagas).
    let slow = dev.place(json!({
        "request_id": "shutdown-slow", "user_id": "alice",
        "lines": [{ "sku": "HS-001", "quantity": 1 }], "payment_method": "tok_slow"
    }));
    let waiting_before = dev.process.logs().matches("GetOrder is waiting").count();
    let poll = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-H",
            &dev.header("alice"),
            "-d",
            &json!({ "order_id": slow, "wait": "60s" }).to_string(),
        ])
        .arg(dev.addr())
        .arg(format!("{ORDER}/GetOrder"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut dev = dev;
    eventually_blocking("the long-poll to arrive", Duration::from_secs(10), || {
        (dev.process.logs().matches("GetOrder is waiting").count() > waiting_before).then_some(())
    });
    let started = std::time::Instant::now();
    assert_eq!(
        dev.process.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        dev.process.logs()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
    let polled = poll.wait_with_output().unwrap();
    assert!(
        polled.status.success(),
        "{}",
        String::from_utf8_lossy(&polled.stderr)
    );
    let order: Value = serde_json::from_slice(&polled.stdout).unwrap();
    assert_eq!(order["order"]["orderId"], slow.as_str());
}
