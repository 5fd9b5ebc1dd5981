//! Recovery without waiting (docs/architecture.md, "Recovery"): the embedded system owns its data
//! directory exclusively, so after a SIGKILL the restarted `sagaflow dev` takes over the leases
//! its predecessor left at once — the sagas resume with no new traffic, long before their old
//! leases would have expired — and a second `sagaflow dev` on the same directory is refused.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sagaflow_proto::{
    inventory::v1::{
        RestockRequest, UpsertProductRequest, inventory_service_client::InventoryServiceClient,
    },
    order::v1::{
        OrderLineRequest, OrderStatus, PlaceOrderRequest, order_service_client::OrderServiceClient,
    },
    workflow::v1::{GetSagaRequest, saga_admin_service_client::SagaAdminServiceClient},
};
use sagaflow_tests::{Process, free_port, sagaflow_bin, start_dev};
use serde_json::Value;
use tonic::transport::Channel;

/// Far longer than the test may take: a saga that waited for its old lease would fail it.
const LEASE_MS: i64 = 120_000;
const ORDERS: usize = 40;

fn dev(data: &std::path::Path, listen: &str) -> Process {
    let lease = LEASE_MS.to_string();
    start_dev(listen, data, &["--lease-ms", lease.as_str()], &[])
}

async fn channel(url: String) -> Channel {
    Channel::from_shared(url).unwrap().connect().await.unwrap()
}

#[test]
fn sagas_resume_after_sigkill_before_their_old_lease_would_expire() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut first = dev(&data, &listen);
    let ids: Vec<String> = runtime.block_on(async {
        let ch = channel(first.url()).await;
        let mut inventory = InventoryServiceClient::new(ch.clone());
        inventory
            .upsert_product(UpsertProductRequest {
                sku: "REC-1".into(),
                name: "Recovery widget".into(),
                unit_price: 1_000,
            })
            .await
            .unwrap();
        inventory
            .restock(RestockRequest {
                sku: "REC-1".into(),
                quantity: 1_000,
                idempotency_key: "recovery-test:restock".into(),
            })
            .await
            .unwrap();
        let placed = (0..ORDERS).map(|i| {
            let mut orders = OrderServiceClient::new(ch.clone());
            async move {
                orders
                    .place_order(PlaceOrderRequest {
                        request_id: format!("recovery-{i}"),
                        user_id: format!("recovery-user-{i}"),
                        lines: vec![OrderLineRequest {
                            sku: "REC-1".into(),
                            quantity: 1,
                        }],
                        coupon_code: None,
                        points: 0,
                        payment_method: "tok_ok".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .order
                    .unwrap()
                    .order_id
            }
        });
        futures::future::join_all(placed).await
    });
    // Crash with the sagas in flight; start again on the same directory; place nothing new.
    first.kill();
    let restarted = Instant::now();
    let second = dev(&data, &listen);
    runtime.block_on(async {
        let ch = channel(second.url()).await;
        let mut orders = OrderServiceClient::new(ch.clone());
        let mut admin = SagaAdminServiceClient::new(ch);
        let mut resumed = 0;
        for id in &ids {
            let order = orders
                .get_order(sagaflow_tests::wait_for_order(id))
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap();
            assert_eq!(order.status(), OrderStatus::Completed, "order {id}");
            let journal = admin
                .get_saga(GetSagaRequest {
                    saga_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .journal;
            // A saga that was running at the kill was recovered: before the lease its crashed
            // holder had taken would have expired.
            let Some(recovered) = journal.iter().position(|e| e.event_type == "recovered") else {
                continue;
            };
            resumed += 1;
            let old_lease = journal[..recovered]
                .iter()
                .rev()
                .find(|e| e.event_type == "lease_acquired")
                .expect("a lease before the recovery");
            let detail: Value = serde_json::from_str(&old_lease.detail_json).unwrap();
            let old_expiry = detail["lease_expires_at"].as_i64().unwrap();
            let at = journal[recovered].at.as_ref().unwrap();
            let recovered_ms = at.seconds * 1_000 + i64::from(at.nanos) / 1_000_000;
            assert!(
                recovered_ms < old_expiry,
                "saga {id} recovered at {recovered_ms}, its old lease ran to {old_expiry}"
            );
        }
        assert!(resumed > 0, "some sagas were in flight at the kill");
    });
    assert!(
        restarted.elapsed() < Duration::from_millis(u64::try_from(LEASE_MS / 2).unwrap()),
        "every order finished long before a lease could expire"
    );
}

#[test]
fn a_second_dev_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut first = dev(&data, &listen);
    let snapshot = || {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .filter(|(name, _)| !name.ends_with("-shm") && !name.ends_with("-wal"))
            .collect();
        files.sort();
        files
    };
    let before = snapshot();
    let lock_before = std::fs::read_to_string(data.join("LOCK")).unwrap();
    let started = Instant::now();
    let out = Command::new(sagaflow_bin())
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success(), "the second dev must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(data.to_str().unwrap()),
        "names the directory: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", lock_before.trim())),
        "names the running process: {stderr}"
    );
    assert_eq!(snapshot(), before, "nothing in the data directory changed");
    // Nor may a `serve` on the same SQLite files run an engine beside it.
    let out = Command::new(sagaflow_bin())
        .args([
            "serve",
            "orchestrator",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve beside dev must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(data.to_str().unwrap()) && stderr.contains("in use"),
        "names the directory: {stderr}"
    );
    assert_eq!(snapshot(), before, "nothing in the data directory changed");
    assert_eq!(
        std::fs::read_to_string(data.join("LOCK")).unwrap(),
        lock_before
    );
    // A dev on a port in use fails before it creates any database file.
    let other = dir.path().join("other");
    let out = Command::new(sagaflow_bin())
        .args([
            "dev",
            "--listen",
            listen.as_str(),
            "--data-dir",
            other.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let created: Vec<String> = std::fs::read_dir(&other)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".db"))
                .collect()
        })
        .unwrap_or_default();
    assert!(created.is_empty(), "no database was created: {created:?}");
    // The first one still serves.
    assert_eq!(first.terminate(Duration::from_secs(30)), Some(0));
}
