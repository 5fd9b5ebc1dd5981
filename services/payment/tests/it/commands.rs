//! Happy path, business rejections, idempotency and the late-action rule (docs/architecture.md,
//! "The order saga" and "The service contract").

use sagaflow_payment::AuthorizationState::{Authorized, Captured, Refunded, Voided};
use sagaflow_proto::payment::v1::{Payment, PaymentStatus};
use sagaflow_server::idempotency::late_action::COMPENSATED_BEFORE_ACTION as COMPENSATED;
use sagaflow_testkit::{Kind, service::assert_reason};
use tonic::Code;

use crate::harness::{self, order_id, start_req};

async fn happy_path_start_complete_refund(kind: Kind) {
    let t = harness::start(kind, "pay_happy").await;
    let order = order_id();
    let started = t.start("o:4", &order, 15_000, "tok_ok").await.unwrap();
    assert_eq!(started.order_id, order);
    assert_eq!(started.amount, 15_000);
    assert_eq!(started.status(), PaymentStatus::Started);
    uuid::Uuid::parse_str(&started.payment_id).unwrap();
    assert_eq!(t.gateway.authorizations_of(&order), [Authorized]);

    let got = t.get(&order).await.unwrap();
    assert_eq!(got, started);

    let completed = t.complete("o:6", &order).await.unwrap();
    assert_eq!(
        completed,
        Payment {
            status: PaymentStatus::Completed.into(),
            ..started.clone()
        }
    );
    assert_eq!(t.gateway.authorizations_of(&order), [Captured]);

    let refunded = t.refund("o:refund", &order).await.unwrap();
    assert_eq!(refunded.status(), PaymentStatus::Refunded);
    assert_eq!(refunded.payment_id, started.payment_id);
    assert_eq!(t.gateway.authorizations_of(&order), [Refunded]);
    let rows = t.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, Some(15_000));
    assert_eq!(rows[0].3, "REFUNDED");
    t.stop().await;
}

async fn declined_at_authorization(kind: Kind) {
    let t = harness::start(kind, "pay_decline").await;
    let order = order_id();
    let err = t
        .start("d:4", &order, 5_000, "tok_decline")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_DECLINED");
    assert!(
        t.rows().await.is_empty(),
        "a declined payment is not stored"
    );
    // The repeat gets the stored answer.
    let again = t
        .start("d:4", &order, 5_000, "tok_decline")
        .await
        .unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, "PAYMENT_DECLINED");
    assert_eq!(again.message(), err.message());
    let missing = t.get(&order).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // The saga compensates a failed step too: CancelPayment leaves a tombstone.
    let cancel = t.cancel("d:4:compensate", &order).await.unwrap();
    assert_eq!(cancel, None);
    t.stop().await;
}

async fn capture_declined_then_compensated(kind: Kind) {
    let t = harness::start(kind, "pay_capture_decline").await;
    let order = order_id();
    t.start("c:4", &order, 9_900, "tok_capture_decline")
        .await
        .unwrap();
    let err = t.complete("c:6", &order).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "CAPTURE_DECLINED");
    let payment = t.get(&order).await.unwrap();
    assert_eq!(
        payment.status(),
        PaymentStatus::Started,
        "capture decline leaves it STARTED"
    );

    let canceled = t.cancel("c:4:compensate", &order).await.unwrap().unwrap();
    assert_eq!(canceled.status(), PaymentStatus::Canceled);
    assert_eq!(canceled.amount, 9_900);
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);
    // The pivot retried (new key) after the cancel: PAYMENT_CANCELED.
    let err = t.complete("c:6:again", &order).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_CANCELED");
    // A new StartPayment for the canceled order: PAYMENT_CANCELED; with other terms:
    // PAYMENT_ALREADY_EXISTS.
    let err = t
        .start("c:4:new", &order, 9_900, "tok_capture_decline")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_CANCELED");
    let err = t.start("c:4:other", &order, 1, "tok_ok").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_ALREADY_EXISTS");
    t.stop().await;
}

async fn rejections_by_status(kind: Kind) {
    let t = harness::start(kind, "pay_rejections").await;
    let order = order_id();

    // Never started.
    let err = t.complete("r:6", &order).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = t.refund("r:refund0", &order).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // STARTED: not refundable.
    t.start("r:4", &order, 700, "tok_ok").await.unwrap();
    let err = t.refund("r:refund1", &order).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_NOT_COMPLETED");

    // COMPLETED: not cancelable.
    t.complete("r:6b", &order).await.unwrap();
    let err = t.cancel("r:4:compensate", &order).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_ALREADY_COMPLETED");
    assert_eq!(
        t.gateway.authorizations_of(&order),
        [Captured],
        "the rejected cancel did not void"
    );

    // REFUNDED: not completable again.
    t.refund("r:refund2", &order).await.unwrap();
    let err = t.complete("r:6c", &order).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_REFUNDED");
    t.stop().await;
}

async fn repeats_apply_once(kind: Kind) {
    let t = harness::start(kind, "pay_repeat").await;
    let order = order_id();
    let first = t.start("s:4", &order, 3_000, "tok_ok").await.unwrap();
    let again = t.start("s:4", &order, 3_000, "tok_ok").await.unwrap();
    assert_eq!(first, again);
    assert_eq!(t.gateway.authorizations_of(&order).len(), 1);
    assert_eq!(t.rows().await.len(), 1);

    // The compensation repeated (same key, then another key) applies once.
    let canceled = t.cancel("s:4:compensate", &order).await.unwrap();
    let rows_after_cancel = t.rows().await;
    let keys_after_cancel = t.key_rows().await;
    let repeat = t.cancel("s:4:compensate", &order).await.unwrap();
    assert_eq!(repeat, canceled);
    assert_eq!(t.rows().await, rows_after_cancel);
    assert_eq!(t.key_rows().await, keys_after_cancel);
    let other_key = t.cancel("s:4:compensate:operator", &order).await.unwrap();
    assert_eq!(other_key, canceled);
    assert_eq!(t.rows().await, rows_after_cancel);
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);

    // The pivot repeated.
    let order2 = order_id();
    t.start("s2:4", &order2, 10, "tok_ok").await.unwrap();
    let done = t.complete("s2:6", &order2).await.unwrap();
    let done_again = t.complete("s2:6", &order2).await.unwrap();
    assert_eq!(done, done_again);
    t.stop().await;
}

async fn same_key_other_request_is_already_exists(kind: Kind) {
    let t = harness::start(kind, "pay_key_reuse").await;
    let order = order_id();
    t.start("k:4", &order, 3_000, "tok_ok").await.unwrap();
    let before = t.rows().await;
    let err = t.start("k:4", &order, 3_001, "tok_ok").await.unwrap_err();
    assert_reason(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    // The key reused for another command.
    let err = t.complete("k:4", &order).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(t.rows().await, before);
    assert_eq!(t.gateway.authorizations_of(&order), [Authorized]);
    t.stop().await;
}

async fn compensation_first_then_action_is_rejected(kind: Kind) {
    let t = harness::start(kind, "pay_late_action").await;
    let order = order_id();
    let canceled = t.cancel("l:4:compensate", &order).await.unwrap();
    assert_eq!(canceled, None, "nothing had started");
    let tombstone = t.rows().await;
    assert_eq!(tombstone.len(), 1);
    assert_eq!(tombstone[0].1, None, "a tombstone has no amount");
    assert_eq!(tombstone[0].3, "CANCELED");

    let err = t.start("l:4", &order, 2_000, "tok_ok").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    assert!(
        t.gateway.authorizations_of(&order).is_empty(),
        "the late action never reached the gateway"
    );
    assert_eq!(t.rows().await, tombstone, "nothing changed");
    let err = t.get(&order).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The compensation repeated applies once.
    let again = t.cancel("l:4:compensate", &order).await.unwrap();
    assert_eq!(again, canceled);
    let other = t.cancel("l:4:compensate:2", &order).await.unwrap();
    assert_eq!(other, canceled);
    assert_eq!(t.rows().await, tombstone);
    // The pivot on a tombstoned order is a definite business failure.
    let err = t.complete("l:6", &order).await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_CANCELED");
    t.stop().await;
}

async fn racing_starts_with_one_key_authorize_once(kind: Kind) {
    let t = harness::start(kind, "pay_race").await;
    let order = order_id();
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut client = t.client.clone();
        let order = order.clone();
        calls.push(tokio::spawn(async move {
            client
                .start_payment(start_req("race:4", &order, 500, "tok_ok"))
                .await
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        let resp = call
            .await
            .unwrap()
            .expect("every racer gets the one payment");
        ids.push(resp.into_inner().payment.unwrap().payment_id);
    }
    assert_eq!(ids.len(), 10);
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(t.rows().await.len(), 1);
    assert_eq!(t.gateway.authorizations_of(&order).len(), 1);
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    happy_path_start_complete_refund,
    declined_at_authorization,
    capture_declined_then_compensated,
    rejections_by_status,
    repeats_apply_once,
    same_key_other_request_is_already_exists,
    compensation_first_then_action_is_rejected,
    racing_starts_with_one_key_authorize_once,
);
