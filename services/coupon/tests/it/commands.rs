//! The coupon commands and queries: happy paths, every business rejection with its ErrorInfo
//! reason, idempotent repeats, and the late-action rule (docs/architecture.md, step 1 of "The
//! order saga" and "The service contract").

use sagaflow_proto::coupon::v1::{
    CouponStatus, GetCouponRequest, IssueCouponRequest, RestoreCouponRequest, UseCouponRequest,
};
use sagaflow_server::db::{now_ms, timestamp_from_ms};
use sagaflow_testkit::{Kind, service::assert_reason};
use tonic::Code;

use crate::harness::{Harness, fixed, order_id, percent};

fn use_req(key: &str, code: &str, user: &str, order: &str, amount: i64) -> UseCouponRequest {
    UseCouponRequest {
        idempotency_key: key.into(),
        code: code.into(),
        user_id: user.into(),
        order_id: order.into(),
        order_amount: amount,
    }
}

fn restore_req(key: &str, code: &str, order: &str) -> RestoreCouponRequest {
    RestoreCouponRequest {
        idempotency_key: key.into(),
        code: code.into(),
        order_id: order.into(),
    }
}

async fn issue_use_restore_and_use_again(kind: Kind) {
    let h = Harness::start(kind, "cpn_happy").await;
    let issued = h.issue(fixed("FLAT5K", "alice")).await;
    assert_eq!(issued.status(), CouponStatus::Available);
    assert_eq!(issued.order_id, "");
    assert_eq!(issued.discount_amount, 5_000);
    let mut c = h.client.clone();
    let fetched = c
        .get_coupon(GetCouponRequest {
            code: "FLAT5K".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(fetched, issued);

    let order = order_id();
    let used = c
        .use_coupon(use_req("saga:use", "FLAT5K", "alice", &order, 30_000))
        .await
        .unwrap()
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(used.status(), CouponStatus::Used);
    assert_eq!(used.order_id, order);
    // The response carries the discount rule.
    assert_eq!(
        (
            used.discount_amount,
            used.discount_percent,
            used.max_discount
        ),
        (5_000, 0, 0)
    );
    assert_eq!(
        h.holder("FLAT5K").await,
        ("USED".into(), Some(order.clone()))
    );

    let restored = c
        .restore_coupon(restore_req("saga:use:compensate", "FLAT5K", &order))
        .await
        .unwrap()
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(restored.status(), CouponStatus::Available);
    assert_eq!(restored.order_id, "");
    assert_eq!(h.holder("FLAT5K").await, ("AVAILABLE".into(), None));

    // AVAILABLE again: another order of the owner can use it.
    let next = order_id();
    let used = c
        .use_coupon(use_req("saga2:use", "FLAT5K", "alice", &next, 10_000))
        .await
        .unwrap()
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(used.order_id, next);
    h.0.stop().await;
}

async fn issue_is_idempotent_and_other_terms_already_exist(kind: Kind) {
    let h = Harness::start(kind, "cpn_issue").await;
    let req = percent("PCT10", "alice");
    let first = h.issue(req.clone()).await;
    assert_eq!(
        (first.discount_percent, first.max_discount, first.expires_at),
        (10, 20_000, req.expires_at)
    );
    let again = h.issue(req.clone()).await;
    assert_eq!(again, first);
    let before = h.snapshot().await;
    let mut c = h.client.clone();
    for other in [
        IssueCouponRequest {
            user_id: "bob".into(),
            ..req.clone()
        },
        IssueCouponRequest {
            discount_percent: 20,
            ..req.clone()
        },
        IssueCouponRequest {
            max_discount: 0,
            ..req.clone()
        },
        IssueCouponRequest {
            min_order_amount: 1,
            ..req.clone()
        },
        IssueCouponRequest {
            expires_at: Some(timestamp_from_ms(now_ms() + 2 * crate::harness::DAY_MS)),
            ..req.clone()
        },
    ] {
        let err = c.issue_coupon(other.clone()).await.unwrap_err();
        assert_reason(&err, Code::AlreadyExists, "COUPON_EXISTS");
    }
    assert_eq!(h.snapshot().await, before);

    // Issuing a used coupon again returns it as it is now.
    let order = order_id();
    c.use_coupon(use_req("k", "PCT10", "alice", &order, 1_000))
        .await
        .unwrap();
    let used = h.issue(req).await;
    assert_eq!(used.status(), CouponStatus::Used);
    assert_eq!(used.order_id, order);
}

async fn every_use_rejection_has_its_reason_and_changes_nothing(kind: Kind) {
    let h = Harness::start(kind, "cpn_reject").await;
    h.issue(fixed("FLAT", "alice")).await;
    h.issue(IssueCouponRequest {
        expires_at: Some(timestamp_from_ms(now_ms() - 1_000)),
        ..fixed("OLD", "alice")
    })
    .await;
    h.issue(fixed("TAKEN", "alice")).await;
    let mut c = h.client.clone();
    let holder = order_id();
    c.use_coupon(use_req("first", "TAKEN", "alice", &holder, 50_000))
        .await
        .unwrap();
    let before = h.snapshot().await;

    let cases = [
        (
            use_req("k1", "FLAT", "bob", &order_id(), 50_000),
            "COUPON_NOT_OWNED",
        ),
        (
            use_req("k2", "OLD", "alice", &order_id(), 50_000),
            "COUPON_EXPIRED",
        ),
        (
            use_req("k3", "TAKEN", "alice", &order_id(), 50_000),
            "COUPON_ALREADY_USED",
        ),
        (
            use_req("k4", "FLAT", "alice", &order_id(), 9_999),
            "COUPON_MIN_ORDER_NOT_MET",
        ),
    ];
    for (req, reason) in cases {
        let err = c.use_coupon(req.clone()).await.unwrap_err();
        assert_reason(&err, Code::FailedPrecondition, reason);
        // The repeat replays the stored rejection.
        let again = c.use_coupon(req).await.unwrap_err();
        assert_reason(&again, Code::FailedPrecondition, reason);
    }
    let err = c
        .use_coupon(use_req("k5", "NOPE", "alice", &order_id(), 50_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c
        .get_coupon(GetCouponRequest {
            code: "NOPE".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let after = h.snapshot().await;
    assert_eq!(after.coupons, before.coupons);
    assert_eq!(after.compensations, before.compensations);
    assert_eq!(h.holder("TAKEN").await, ("USED".into(), Some(holder)));
}

async fn use_repeated_applies_once(kind: Kind) {
    let h = Harness::start(kind, "cpn_repeat").await;
    h.issue(fixed("FLAT", "alice")).await;
    let mut c = h.client.clone();
    let order = order_id();
    let req = use_req("saga:use_coupon", "FLAT", "alice", &order, 20_000);
    let first = c.use_coupon(req.clone()).await.unwrap().into_inner();
    let second = c.use_coupon(req.clone()).await.unwrap().into_inner();
    assert_eq!(first, second);
    let rows = h.snapshot().await;

    // Same key, other request.
    let err = c
        .use_coupon(UseCouponRequest {
            order_amount: 20_001,
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Same order under another key: it already holds the coupon, so this is a repeat too.
    let other_key = c
        .use_coupon(UseCouponRequest {
            idempotency_key: "operator".into(),
            ..req
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other_key.coupon, first.coupon);
    assert_eq!(h.snapshot().await.coupons, rows.coupons);
    assert_eq!(h.holder("FLAT").await, ("USED".into(), Some(order)));
}

async fn restore_repeated_applies_once(kind: Kind) {
    let h = Harness::start(kind, "cpn_restore_repeat").await;
    h.issue(fixed("FLAT", "alice")).await;
    let mut c = h.client.clone();
    let first_order = order_id();
    c.use_coupon(use_req("u1", "FLAT", "alice", &first_order, 20_000))
        .await
        .unwrap();
    let restore = restore_req("u1:compensate", "FLAT", &first_order);
    let first = c
        .restore_coupon(restore.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.coupon.as_ref().unwrap().status(),
        CouponStatus::Available
    );

    // Another order takes the coupon meanwhile.
    let second_order = order_id();
    c.use_coupon(use_req("u2", "FLAT", "alice", &second_order, 20_000))
        .await
        .unwrap();
    // The repeated compensation of the first order (same key, or another key) does not free it.
    let again = c.restore_coupon(restore).await.unwrap().into_inner();
    assert_eq!(again, first);
    let other_key = c
        .restore_coupon(restore_req("operator", "FLAT", &first_order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other_key.coupon.as_ref().unwrap().order_id, second_order);
    assert_eq!(
        h.holder("FLAT").await,
        ("USED".into(), Some(second_order.clone()))
    );
    // And the first order cannot take it back later.
    let err = c
        .use_coupon(use_req("u1-late", "FLAT", "alice", &first_order, 20_000))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
}

async fn restore_before_use_rejects_the_late_use(kind: Kind) {
    let h = Harness::start(kind, "cpn_late").await;
    h.issue(fixed("FLAT", "alice")).await;
    let mut c = h.client.clone();
    let order = order_id();
    let restored = c
        .restore_coupon(restore_req("saga:use:compensate", "FLAT", &order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        restored.coupon.as_ref().unwrap().status(),
        CouponStatus::Available
    );
    let before = h.snapshot().await;
    assert_eq!(before.compensations, [(order.clone(), "FLAT".to_owned())]);

    let err = c
        .use_coupon(use_req("saga:use", "FLAT", "alice", &order, 20_000))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
    let after = h.snapshot().await;
    assert_eq!(after.coupons, before.coupons);
    assert_eq!(after.compensations, before.compensations);
    assert_eq!(h.holder("FLAT").await, ("AVAILABLE".into(), None));

    // Other orders are not affected.
    c.use_coupon(use_req("other", "FLAT", "alice", &order_id(), 20_000))
        .await
        .unwrap();

    // A compensation for an unknown code is safe too, and blocks a late use after issuing it.
    let ghost_order = order_id();
    let ghost = c
        .restore_coupon(restore_req("ghost:compensate", "GHOST", &ghost_order))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ghost.coupon, None);
    h.issue(fixed("GHOST", "alice")).await;
    let err = c
        .use_coupon(use_req("ghost", "GHOST", "alice", &ghost_order, 20_000))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
    assert_eq!(h.holder("GHOST").await, ("AVAILABLE".into(), None));
}

async fn concurrent_orders_race_for_one_coupon(kind: Kind) {
    let h = Harness::start(kind, "cpn_race").await;
    h.issue(percent("PCT", "alice")).await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut c = h.client.clone();
        calls.push(tokio::spawn(async move {
            let order = order_id();
            let result = c
                .use_coupon(use_req(&format!("k{i}"), "PCT", "alice", &order, 50_000))
                .await;
            (order, result)
        }));
    }
    let mut winners = Vec::new();
    for call in calls {
        let (order, result) = call.await.unwrap();
        match result {
            Ok(_) => winners.push(order),
            Err(err) => assert_reason(&err, Code::FailedPrecondition, "COUPON_ALREADY_USED"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one order holds the coupon");
    assert_eq!(
        h.holder("PCT").await,
        ("USED".into(), Some(winners[0].clone()))
    );
}

sagaflow_testkit::both_backends!(
    issue_use_restore_and_use_again,
    issue_is_idempotent_and_other_terms_already_exist,
    every_use_rejection_has_its_reason_and_changes_nothing,
    use_repeated_applies_once,
    restore_repeated_applies_once,
    restore_before_use_rejects_the_late_use,
    concurrent_orders_race_for_one_coupon,
);
