//! End users on the public RPCs (docs/operations.md, "End users"), against a real `sagaflow dev`
//! with its default end-user authentication, real tokens from `sagaflow token`, and tokens this
//! test signs itself (another key, a past `exp`, another issuer): alice cannot act as bob, cannot
//! read his order, payment, balance, orders or coupon (NOT_FOUND, worded like a missing one),
//! cannot spend his coupon; bad tokens are UNAUTHENTICATED and change nothing; dev's operator
//! token sees everything; `request_id` is scoped per user.

use std::path::Path;

use sagaflow_server::end_users::{DEV_ISSUER, DevKey};
use sagaflow_testkit::{grpcurl_json, grpcurl_output};
use serde_json::{Value, json};

const ORDER: &str = "sagaflow.order.v1.OrderService";
const POINT: &str = "sagaflow.point.v1.PointService";
const COUPON: &str = "sagaflow.coupon.v1.CouponService";
const PAYMENT: &str = "sagaflow.payment.v1.PaymentService";
const INVENTORY: &str = "sagaflow.inventory.v1.InventoryService";

/// A refusal as grpcurl prints it: the code name, the message, the ErrorInfo reason (if any).
#[derive(Debug)]
struct Refusal {
    code: String,
    message: String,
    reason: Option<String>,
}

/// Calls `method` with `body`, with `token` as bearer when given: the reply, or the refusal.
fn call(addr: &str, token: Option<&str>, method: &str, body: &Value) -> Result<Value, Refusal> {
    let header = token.map(|t| format!("authorization: Bearer {t}"));
    let mut args = Vec::new();
    if let Some(header) = &header {
        args.extend(["-H", header.as_str()]);
    }
    let body = body.to_string();
    args.extend(["-d", body.as_str()]);
    let out = grpcurl_output(addr, &args, Some(method));
    if out.status.success() {
        return Ok(serde_json::from_slice(&out.stdout).unwrap());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name} in {stderr}"))
    };
    let reason = stderr
        .split("\"reason\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned);
    Err(Refusal {
        code: field("Code:"),
        message: field("Message:"),
        reason,
    })
}

fn ok(addr: &str, token: &str, method: &str, body: Value) -> Value {
    call(addr, Some(token), method, &body)
        .unwrap_or_else(|r| panic!("{method} {body}: refused {r:?}"))
}

fn refused(addr: &str, token: Option<&str>, method: &str, body: Value) -> Refusal {
    match call(addr, token, method, &body) {
        Ok(reply) => panic!("{method} {body}: expected a refusal, got {reply}"),
        Err(refusal) => refusal,
    }
}

fn place(user: &str, request_id: &str, coupon: Option<&str>) -> Value {
    let mut body = json!({
        "request_id": request_id, "user_id": user,
        "lines": [{ "sku": "KB-001", "quantity": 1 }], "payment_method": "tok_ok"
    });
    if let Some(code) = coupon {
        body["coupon_code"] = json!(code);
    }
    body
}

fn wait(addr: &str, token: &str, order_id: &str) -> Value {
    ok(
        addr,
        token,
        &format!("{ORDER}/GetOrder"),
        json!({ "order_id": order_id, "wait": "30s" }),
    )["order"]
        .clone()
}

/// Every order of `user`, as the operator sees them.
fn orders_of(addr: &str, operator: &str, user: &str) -> Vec<String> {
    let reply = ok(
        addr,
        operator,
        &format!("{ORDER}/ListOrders"),
        json!({ "user_id": user, "page_size": 1000 }),
    );
    reply["orders"]
        .as_array()
        .map(|o| {
            o.iter()
                .map(|o| o["orderId"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn balance(addr: &str, token: &str, user: &str) -> String {
    ok(
        addr,
        token,
        &format!("{POINT}/GetBalance"),
        json!({ "user_id": user }),
    )["balance"]
        .as_str()
        .unwrap_or("0")
        .to_owned()
}

/// A token signed with `data`'s key with these claims.
fn signed(data: &Path, claims: &Value) -> String {
    DevKey::load(data).unwrap().sign(claims).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn users_act_and_read_only_as_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = sagaflow_tests::start_dev_authenticated("127.0.0.1:0", &data, &[], &[]);
    let addr = dev.addr();
    let alice = sagaflow_tests::dev_token(&data, "alice");
    let bob = sagaflow_tests::dev_token(&data, "bob");
    let operator = sagaflow_tests::dev_operator_token(&data);
    let place_order = format!("{ORDER}/PlaceOrder");

    // bob's order, without his coupon (it stays AVAILABLE for the coupon check below).
    let bobs = ok(addr, &bob, &place_order, place("bob", "same-id", None))["order"]["orderId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(wait(addr, &bob, &bobs)["status"], "ORDER_STATUS_COMPLETED");
    let bob_balance = balance(addr, &bob, "bob");
    assert_eq!(bob_balance, "20000");
    let bob_orders = orders_of(addr, &operator, "bob");
    assert_eq!(bob_orders, std::slice::from_ref(&bobs));

    // -- alice cannot place an order as bob: PERMISSION_DENIED, nothing written.
    let denied = refused(
        addr,
        Some(&alice),
        &place_order,
        place("bob", "as-bob", None),
    );
    assert_eq!(denied.code, "PermissionDenied", "{denied:?}");
    assert_eq!(
        denied.reason.as_deref(),
        Some("USER_MISMATCH"),
        "{denied:?}"
    );
    assert_eq!(orders_of(addr, &operator, "bob"), bob_orders);
    assert!(orders_of(addr, &operator, "alice").is_empty());

    // -- alice cannot read bob's order, payment, balance, orders or coupon: NOT_FOUND, worded
    //    exactly as for an id that does not exist.
    let missing = uuid::Uuid::now_v7().to_string();
    for (method, field, theirs) in [
        (format!("{ORDER}/GetOrder"), "order_id", &bobs),
        (format!("{PAYMENT}/GetPayment"), "order_id", &bobs),
    ] {
        let other = refused(addr, Some(&alice), &method, json!({ field: theirs }));
        let none = refused(addr, Some(&alice), &method, json!({ field: missing }));
        assert_eq!(other.code, "NotFound", "{method}: {other:?}");
        assert_eq!(
            other.message.replace(theirs.as_str(), "ID"),
            none.message.replace(missing.as_str(), "ID"),
            "{method}"
        );
        // bob and the operator see it.
        ok(addr, &bob, &method, json!({ field: theirs }));
        ok(addr, &operator, &method, json!({ field: theirs }));
    }
    // GetOrder's wait does not wait for someone else's order either.
    let started = std::time::Instant::now();
    let other = refused(
        addr,
        Some(&alice),
        &format!("{ORDER}/GetOrder"),
        json!({ "order_id": bobs, "wait": "5s" }),
    );
    assert_eq!(other.code, "NotFound");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    for user in ["bob", "nobody-at-all"] {
        let r = refused(
            addr,
            Some(&alice),
            &format!("{POINT}/GetBalance"),
            json!({ "user_id": user }),
        );
        assert_eq!(r.code, "NotFound", "{user}: {r:?}");
        let r = refused(
            addr,
            Some(&alice),
            &format!("{ORDER}/ListOrders"),
            json!({ "user_id": user }),
        );
        assert_eq!(r.code, "NotFound", "{user}: {r:?}");
    }
    let theirs = refused(
        addr,
        Some(&alice),
        &format!("{COUPON}/GetCoupon"),
        json!({ "code": "WELCOME-BOB" }),
    );
    let none = refused(
        addr,
        Some(&alice),
        &format!("{COUPON}/GetCoupon"),
        json!({ "code": "NO-SUCH-CODE" }),
    );
    assert_eq!(theirs.code, "NotFound");
    assert_eq!(
        theirs.message.replace("WELCOME-BOB", "C"),
        none.message.replace("NO-SUCH-CODE", "C")
    );
    // Her own, with or without naming herself.
    assert_eq!(balance(addr, &alice, "alice"), "50000");
    assert_eq!(
        ok(addr, &alice, &format!("{POINT}/GetBalance"), json!({}))["userId"],
        "alice"
    );
    assert_eq!(
        ok(
            addr,
            &alice,
            &format!("{COUPON}/GetCoupon"),
            json!({ "code": "WELCOME-ALICE" })
        )["coupon"]["status"],
        "COUPON_STATUS_AVAILABLE"
    );
    // The operator sees bob's balance and coupon.
    assert_eq!(balance(addr, &operator, "bob"), bob_balance);
    assert_eq!(
        ok(
            addr,
            &operator,
            &format!("{COUPON}/GetCoupon"),
            json!({ "code": "WELCOME-BOB" })
        )["coupon"]["userId"],
        "bob"
    );

    // -- alice cannot spend bob's coupon: her order fails COUPON_UNAVAILABLE, the coupon stays
    //    bob's and AVAILABLE.
    let spent = ok(
        addr,
        &alice,
        &place_order,
        place("alice", "bobs-coupon", Some("WELCOME-BOB")),
    )["order"]["orderId"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = wait(addr, &alice, &spent);
    assert_eq!(order["status"], "ORDER_STATUS_FAILED", "{order}");
    assert_eq!(order["failureReason"], "FAILURE_REASON_COUPON_UNAVAILABLE");
    assert_eq!(
        ok(
            addr,
            &bob,
            &format!("{COUPON}/GetCoupon"),
            json!({ "code": "WELCOME-BOB" })
        )["coupon"]["status"],
        "COUPON_STATUS_AVAILABLE"
    );

    // -- request_id is per user: alice's "same-id" is a new order, her retry the same one; an
    //    empty user_id is the caller's.
    let first = ok(addr, &alice, &place_order, place("", "same-id", None))["order"].clone();
    assert_eq!(first["userId"], "alice");
    let alices = first["orderId"].as_str().unwrap().to_owned();
    assert_ne!(alices, bobs);
    let retry = ok(addr, &alice, &place_order, place("alice", "same-id", None));
    assert_eq!(retry["order"]["orderId"], alices.as_str());
    let bob_retry = ok(addr, &bob, &place_order, place("bob", "same-id", None));
    assert_eq!(bob_retry["order"]["orderId"], bobs.as_str());
    assert_eq!(
        wait(addr, &alice, &alices)["status"],
        "ORDER_STATUS_COMPLETED"
    );
    let mut mine = orders_of(addr, &operator, "alice");
    mine.sort();
    let mut expect = vec![spent, alices.clone()];
    expect.sort();
    assert_eq!(mine, expect);
    let listed = ok(addr, &alice, &format!("{ORDER}/ListOrders"), json!({}));
    assert_eq!(listed["orders"].as_array().unwrap().len(), 2, "{listed}");

    // -- bad tokens: UNAUTHENTICATED with the reason, refused before anything is decoded or
    //    written (the order counts do not move).
    let other_dir = tempfile::tempdir().unwrap();
    let foreign_key = DevKey::load_or_create(other_dir.path()).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let claims = |iss: &str, exp: u64| json!({ "iss": iss, "sub": "alice", "exp": exp });
    let cases = [
        (
            "expired",
            Some(signed(&data, &claims(DEV_ISSUER, now() - 3600))),
            "TOKEN_EXPIRED",
        ),
        (
            "wrong key",
            Some(foreign_key.mint("alice", hour).unwrap()),
            "TOKEN_INVALID",
        ),
        (
            "wrong issuer",
            Some(signed(
                &data,
                &claims("https://issuer.example", now() + 3600),
            )),
            "TOKEN_INVALID",
        ),
        ("malformed", Some("not-a-jwt".to_owned()), "TOKEN_INVALID"),
        ("missing", None, "CREDENTIALS_MISSING"),
    ];
    for (what, token, reason) in &cases {
        for (method, body) in [
            (
                place_order.clone(),
                place("alice", &format!("bad-{what}"), None),
            ),
            (format!("{POINT}/GetBalance"), json!({ "user_id": "alice" })),
            (format!("{ORDER}/GetOrder"), json!({ "order_id": alices })),
            (format!("{INVENTORY}/ListProducts"), json!({})),
        ] {
            let r = refused(addr, token.as_deref(), &method, body);
            assert_eq!(r.code, "Unauthenticated", "{what} {method}: {r:?}");
            assert_eq!(r.reason.as_deref(), Some(*reason), "{what} {method}: {r:?}");
        }
    }
    assert_eq!(orders_of(addr, &operator, "alice").len(), 2);
    // Health and reflection need no token.
    let health = grpcurl_json(addr, &[], "grpc.health.v1.Health/Check");
    assert_eq!(health["status"], "SERVING");
    assert!(sagaflow_testkit::grpcurl(addr, &[], Some("list")).contains(ORDER));
}

#[test]
fn token_command_and_open_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // `sagaflow token` before any `dev`: makes the key (0600), which the later `dev` uses.
    let early = sagaflow_tests::dev_token(&data, "carol");
    let mode = std::fs::metadata(data.join("dev-signing-key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let dev = sagaflow_tests::start_dev_authenticated("127.0.0.1:0", &data, &["--no-seed"], &[]);
    let reply = ok(
        dev.addr(),
        &early,
        &format!("{POINT}/GetBalance"),
        json!({}),
    );
    assert_eq!(reply["userId"], "carol");
    let bad = std::process::Command::new(sagaflow_tests::sagaflow_bin())
        .args(["token", "", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    drop(dev);

    // `--open`: no token needed, any user readable; said in a warning.
    let open_dir = tempfile::tempdir().unwrap();
    let open = sagaflow_tests::start_dev("127.0.0.1:0", open_dir.path(), &[], &[]);
    let reply = call(
        open.addr(),
        None,
        &format!("{POINT}/GetBalance"),
        &json!({ "user_id": "bob" }),
    )
    .unwrap();
    assert_eq!(reply["balance"], "20000");
    let logs = open.logs();
    assert!(
        logs.contains("WARN") && logs.contains("end-user authentication is OFF"),
        "{logs}"
    );
}

/// A tiny HTTP server on 127.0.0.1 answering every request with `body` (JSON) on a thread of its
/// own; its URL and the count of requests it answered.
fn jwks_server(body: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::{
        io::{Read as _, Write as _},
        sync::{Arc, atomic::AtomicUsize},
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (url, count)
}

/// `sagaflow serve` with `--jwt-issuer` and `--jwt-jwks-url`: the issuer's keys are fetched from
/// the URL (once), a token of that issuer is the user, anything else UNAUTHENTICATED.
#[test]
fn serve_verifies_tokens_of_the_configured_issuer_from_a_jwks_url() {
    const ISSUER: &str = "https://id.example.test/";
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let (url, fetches) = jwks_server(serde_json::to_string(&key.jwks()).unwrap());
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", sagaflow_tests::free_port());
    let point = sagaflow_tests::Process::start(
        &[
            "serve",
            "point",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--jwt-issuer",
            ISSUER,
            "--jwt-jwks-url",
            &url,
        ],
        &[],
        std::time::Duration::from_secs(60),
    );
    let balance = format!("{POINT}/GetBalance");
    let token = key
        .sign(&json!({ "iss": ISSUER, "sub": "alice", "exp": now() + 3600 }))
        .unwrap();
    let reply = ok(point.addr(), &token, &balance, json!({}));
    assert_eq!(reply["userId"], "alice");
    let r = refused(
        point.addr(),
        Some(&token),
        &balance,
        json!({ "user_id": "bob" }),
    );
    assert_eq!(r.code, "NotFound", "{r:?}");
    let r = refused(point.addr(), None, &balance, json!({ "user_id": "alice" }));
    assert_eq!(r.reason.as_deref(), Some("CREDENTIALS_MISSING"), "{r:?}");
    // A token of `dev`'s issuer, signed by the same key: another issuer.
    let dev_token = key
        .mint("alice", std::time::Duration::from_secs(3600))
        .unwrap();
    let r = refused(point.addr(), Some(&dev_token), &balance, json!({}));
    assert_eq!(r.code, "Unauthenticated", "{r:?}");
    assert_eq!(r.reason.as_deref(), Some("TOKEN_INVALID"), "{r:?}");
    assert!(r.message.contains("issuer"), "{r:?}");
    let r = refused(
        point.addr(),
        Some(
            &key.sign(&json!({ "iss": ISSUER, "sub": "alice", "exp": now() - 3600 }))
                .unwrap(),
        ),
        &balance,
        json!({}),
    );
    assert_eq!(r.reason.as_deref(), Some("TOKEN_EXPIRED"), "{r:?}");
    // Fetched once (the refresh interval is 5 minutes; every token named the known kid).
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
}
