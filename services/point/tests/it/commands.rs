//! The point commands and queries: happy paths, business rejections with their ErrorInfo reasons,
//! idempotent repeats, the late-action rule, and concurrent deductions (docs/architecture.md, step
//! 5 of "The order saga" and "The service contract").

use sagaflow_proto::point::v1::{
    DeductPointsRequest, DeductPointsResponse, GetBalanceRequest, GrantPointsRequest,
    RestorePointsRequest, RestorePointsResponse,
};
use sagaflow_server::error::violated_fields;
use sagaflow_testkit::{Kind, service::assert_reason};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Harness, order_id};

fn deduct(key: &str, user: &str, order: &str, amount: i64) -> DeductPointsRequest {
    DeductPointsRequest {
        idempotency_key: key.into(),
        user_id: user.into(),
        order_id: order.into(),
        amount,
    }
}

fn restore(key: &str, user: &str, order: &str) -> RestorePointsRequest {
    RestorePointsRequest {
        idempotency_key: key.into(),
        user_id: user.into(),
        order_id: order.into(),
    }
}

async fn grant_deduct_restore(kind: Kind) {
    let h = Harness::start(kind, "pt_happy").await;
    assert_eq!(h.grant("alice", 30_000).await, 30_000);
    let mut c = h.client.clone();
    let order = order_id();
    let deducted = c
        .deduct_points(deduct("saga:deduct_points", "alice", &order, 12_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deducted,
        DeductPointsResponse {
            user_id: "alice".into(),
            balance: 18_000
        }
    );
    assert_eq!(
        h.deduction(&order).await,
        Some(("alice".into(), 12_000, "DEDUCTED".into()))
    );
    h.assert_ledger_invariant().await;

    let restored = c
        .restore_points(restore("saga:deduct_points:compensate", "alice", &order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        restored,
        RestorePointsResponse {
            user_id: "alice".into(),
            balance: 30_000,
            restored: 12_000
        }
    );
    assert_eq!(
        h.deduction(&order).await,
        Some(("alice".into(), 12_000, "RESTORED".into()))
    );
    let ledger: Vec<(String, i64)> = h
        .snapshot()
        .await
        .ledger
        .into_iter()
        .map(|(_, kind, amount, _, _)| (kind, amount))
        .collect();
    assert_eq!(
        ledger,
        [
            ("GRANT".to_owned(), 30_000),
            ("DEDUCT".to_owned(), 12_000),
            ("RESTORE".to_owned(), 12_000)
        ]
    );
    let balance = c
        .get_balance(GetBalanceRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (balance.user_id.as_str(), balance.balance),
        ("alice", 30_000)
    );
    h.assert_ledger_invariant().await;
    h.0.stop().await;
}

async fn unknown_user_has_zero(kind: Kind) {
    let h = Harness::start(kind, "pt_unknown").await;
    let balance = h
        .client
        .clone()
        .get_balance(GetBalanceRequest {
            user_id: "nobody".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((balance.user_id.as_str(), balance.balance), ("nobody", 0));
    assert_eq!(h.balance("nobody").await, None);
}

async fn insufficient_points_change_nothing(kind: Kind) {
    let h = Harness::start(kind, "pt_insufficient").await;
    h.grant("alice", 1_000).await;
    let before = h.snapshot().await;
    let mut c = h.client.clone();
    let order = order_id();
    let err = c
        .deduct_points(deduct("k1", "alice", &order, 1_001))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "INSUFFICIENT_POINTS");
    let info = err.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("balance").map(String::as_str),
        Some("1000")
    );
    assert_eq!(
        info.metadata.get("requested").map(String::as_str),
        Some("1001")
    );
    // A user without any balance too.
    let err = c
        .deduct_points(deduct("k2", "bob", &order_id(), 1))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "INSUFFICIENT_POINTS");
    let after = h.snapshot().await;
    assert_eq!(after.balances, before.balances);
    assert_eq!(after.deductions, before.deductions);
    assert_eq!(after.ledger, before.ledger);
    // The rejection left no deduction record: the order may deduct less under a new key.
    c.deduct_points(deduct("k3", "alice", &order, 1_000))
        .await
        .unwrap();
    assert_eq!(h.balance("alice").await, Some(0));
    h.assert_ledger_invariant().await;
}

async fn deduct_repeated_applies_once(kind: Kind) {
    let h = Harness::start(kind, "pt_repeat").await;
    h.grant("alice", 10_000).await;
    let mut c = h.client.clone();
    let order = order_id();
    let req = deduct("saga:deduct_points", "alice", &order, 3_000);
    let first = c.deduct_points(req.clone()).await.unwrap().into_inner();
    let second = c.deduct_points(req.clone()).await.unwrap().into_inner();
    assert_eq!(first, second);
    assert_eq!(h.balance("alice").await, Some(7_000));

    let err = c
        .deduct_points(DeductPointsRequest {
            amount: 4_000,
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let err = c
        .deduct_points(DeductPointsRequest {
            idempotency_key: "another-key".into(),
            ..req
        })
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "ORDER_ALREADY_DEDUCTED");
    assert_eq!(h.balance("alice").await, Some(7_000));
    h.assert_ledger_invariant().await;
}

async fn restore_repeated_applies_once(kind: Kind) {
    let h = Harness::start(kind, "pt_restore_repeat").await;
    h.grant("alice", 10_000).await;
    let mut c = h.client.clone();
    let order = order_id();
    c.deduct_points(deduct("d", "alice", &order, 3_000))
        .await
        .unwrap();
    let req = restore("d:compensate", "alice", &order);
    let first = c.restore_points(req.clone()).await.unwrap().into_inner();
    assert_eq!((first.balance, first.restored), (10_000, 3_000));
    let again = c.restore_points(req).await.unwrap().into_inner();
    assert_eq!(again, first);
    let other = c
        .restore_points(restore("operator", "alice", &order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((other.balance, other.restored), (10_000, 0));
    assert_eq!(h.balance("alice").await, Some(10_000));
    // A late action under a new key after the compensation is rejected.
    let err = c
        .deduct_points(deduct("d-again", "alice", &order, 3_000))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
    assert_eq!(h.balance("alice").await, Some(10_000));
    h.assert_ledger_invariant().await;
}

async fn restore_before_deduct_rejects_the_late_deduct(kind: Kind) {
    let h = Harness::start(kind, "pt_late").await;
    h.grant("alice", 10_000).await;
    let mut c = h.client.clone();
    let order = order_id();
    let restored = c
        .restore_points(restore("saga:deduct_points:compensate", "alice", &order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        restored,
        RestorePointsResponse {
            user_id: "alice".into(),
            balance: 10_000,
            restored: 0
        }
    );
    assert_eq!(
        h.deduction(&order).await,
        Some(("alice".into(), 0, "RESTORED".into()))
    );
    let before = h.snapshot().await;
    let err = c
        .deduct_points(deduct("saga:deduct_points", "alice", &order, 2_000))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
    let after = h.snapshot().await;
    assert_eq!(after.balances, before.balances);
    assert_eq!(after.deductions, before.deductions);
    assert_eq!(after.ledger, before.ledger);
    h.assert_ledger_invariant().await;
}

async fn restore_for_another_user_is_rejected(kind: Kind) {
    let h = Harness::start(kind, "pt_mismatch").await;
    h.grant("alice", 10_000).await;
    let mut c = h.client.clone();
    let order = order_id();
    c.deduct_points(deduct("d", "alice", &order, 3_000))
        .await
        .unwrap();
    let before = h.snapshot().await;
    let err = c
        .restore_points(restore("r", "mallory", &order))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "USER_MISMATCH");
    let after = h.snapshot().await;
    assert_eq!(after.balances, before.balances);
    assert_eq!(after.deductions, before.deductions);
}

async fn grant_is_idempotent_and_overflow_checked(kind: Kind) {
    let h = Harness::start(kind, "pt_grant").await;
    let mut c = h.client.clone();
    let req = GrantPointsRequest {
        user_id: "alice".into(),
        amount: 5_000,
        idempotency_key: "welcome:alice".into(),
    };
    let first = c.grant_points(req.clone()).await.unwrap().into_inner();
    let again = c.grant_points(req.clone()).await.unwrap().into_inner();
    assert_eq!(again, first);
    assert_eq!(first.balance, 5_000);
    assert_eq!(h.balance("alice").await, Some(5_000));
    let err = c
        .grant_points(GrantPointsRequest {
            amount: 6_000,
            ..req
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(h.balance("alice").await, Some(5_000));

    // Up to i64::MAX counting the points held by orders; one more is INVALID_ARGUMENT(amount).
    let order = order_id();
    c.deduct_points(deduct("d", "alice", &order, 1_000))
        .await
        .unwrap();
    let top = c
        .grant_points(GrantPointsRequest {
            user_id: "alice".into(),
            amount: i64::MAX - 5_000,
            idempotency_key: "top".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.balance, i64::MAX - 1_000);
    let before = h.snapshot().await;
    let err = c
        .grant_points(GrantPointsRequest {
            user_id: "alice".into(),
            amount: 1,
            idempotency_key: "one-more".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["amount"]);
    let after = h.snapshot().await;
    assert_eq!(after.balances, before.balances);
    assert_eq!(after.ledger, before.ledger);
    // The held points can still be given back without overflow.
    let restored = c
        .restore_points(restore("d:compensate", "alice", &order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.balance, i64::MAX);
}

async fn concurrent_deducts_never_overdraw(kind: Kind) {
    let h = Harness::start(kind, "pt_race").await;
    h.grant("alice", 1_000).await;
    // Concurrent grants to a new user all count.
    let mut grants = Vec::new();
    for i in 0..10 {
        let mut c = h.client.clone();
        grants.push(tokio::spawn(async move {
            c.grant_points(GrantPointsRequest {
                user_id: "bob".into(),
                amount: 100,
                idempotency_key: format!("bob-{i}"),
            })
            .await
        }));
    }
    for g in grants {
        g.await.unwrap().unwrap();
    }
    assert_eq!(h.balance("bob").await, Some(1_000));

    let mut calls = Vec::new();
    for i in 0..30 {
        let mut c = h.client.clone();
        calls.push(tokio::spawn(async move {
            c.deduct_points(deduct(&format!("k{i}"), "alice", &order_id(), 100))
                .await
        }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(err) => assert_reason(&err, Code::FailedPrecondition, "INSUFFICIENT_POINTS"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(h.balance("alice").await, Some(0));
    h.assert_ledger_invariant().await;
}

async fn ledger_is_append_only(kind: Kind) {
    let h = Harness::start(kind, "pt_append_only").await;
    h.grant("alice", 1_000).await;
    let update = sqlx::query("UPDATE point_ledger SET amount = 1")
        .execute(h.db.pool())
        .await;
    assert!(update.is_err(), "the ledger must refuse updates");
    let delete = sqlx::query("DELETE FROM point_ledger")
        .execute(h.db.pool())
        .await;
    assert!(delete.is_err(), "the ledger must refuse deletes");
    assert_eq!(h.snapshot().await.ledger.len(), 1);
}

sagaflow_testkit::both_backends!(
    grant_deduct_restore,
    unknown_user_has_zero,
    insufficient_points_change_nothing,
    deduct_repeated_applies_once,
    restore_repeated_applies_once,
    restore_before_deduct_rejects_the_late_deduct,
    restore_for_another_user_is_rejected,
    grant_is_idempotent_and_overflow_checked,
    concurrent_deducts_never_overdraw,
    ledger_is_append_only,
);
