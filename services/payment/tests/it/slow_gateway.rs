//! The slow gateway (`tok_slow`): the caller's deadline passes before the gateway answers, so the
//! caller cannot know the outcome (an attempt in doubt, docs/architecture.md, "Attempts in
//! doubt"). The service still finishes the authorization and records it, without blocking other
//! commands, and the late-action rule holds when the compensation comes while the authorization
//! is in flight.

use std::time::Duration;

use sagaflow_payment::{
    AuthorizationState::{Authorized, Voided},
    SimulatedGatewayConfig,
};
use sagaflow_proto::payment::v1::PaymentStatus;
use sagaflow_server::idempotency::late_action::COMPENSATED_BEFORE_ACTION as COMPENSATED;
use sagaflow_testkit::{Kind, service::assert_reason};
use tonic::{Code, IntoRequest};

use crate::harness::{self, order_id, start_req};

/// Slower than the caller's deadline by a wide margin, so that the test's next call surely comes
/// while the authorization is in flight.
const SLOW_MS: u64 = 2_000;
const DEADLINE: Duration = Duration::from_millis(200);
const LIMIT: Duration = Duration::from_secs(20);

fn slow_config() -> SimulatedGatewayConfig {
    SimulatedGatewayConfig {
        latency_ms: 0,
        slow_ms: SLOW_MS,
        ..SimulatedGatewayConfig::default()
    }
}

fn assert_gave_up(status: &tonic::Status) {
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "the caller sees its deadline pass: {status:?}"
    );
}

/// Deadline passes; CancelPayment arrives while the authorization is in flight (it finds no
/// payment and leaves a tombstone); the authorization then finishes, finds the tombstone, is
/// voided at the gateway and recorded as COMPENSATED_BEFORE_ACTION. A late retry of StartPayment
/// (same key or another) is rejected and nothing is charged.
async fn deadline_then_compensation_voids_the_late_authorization(kind: Kind) {
    let mut t = harness::start_with(kind, "pay_slow_cancel", slow_config()).await;
    let order = order_id();
    let mut request = start_req("slow:4", &order, 8_000, "tok_slow").into_request();
    request.set_timeout(DEADLINE);
    let err = t.client.start_payment(request).await.unwrap_err();
    assert_gave_up(&err);
    // The gateway has the authorization; the service has recorded nothing yet.
    assert_eq!(t.gateway.authorizations_of(&order), [Authorized]);
    assert_eq!(t.stored_code("slow:4").await, None);
    assert!(t.rows().await.is_empty());

    // The saga compensates the unknown outcome.
    let canceled = t.cancel("slow:4:compensate", &order).await.unwrap();
    assert_eq!(canceled, None, "no payment was recorded yet: tombstone");

    // The in-flight StartPayment finishes: it finds the tombstone and voids its authorization.
    sagaflow_testkit::eventually("the late authorization to be voided", LIMIT, || async {
        (t.gateway.authorizations_of(&order) == [Voided]).then_some(())
    })
    .await;
    let stored =
        sagaflow_testkit::eventually("StartPayment's outcome to be recorded", LIMIT, || async {
            t.stored_code("slow:4").await
        })
        .await;
    assert_eq!(stored, i64::from(i32::from(Code::FailedPrecondition)));

    // Late retries of the action are rejected and change nothing.
    let tombstone = t.rows().await;
    assert_eq!(tombstone.len(), 1);
    assert_eq!(
        (tombstone[0].1, tombstone[0].3.as_str()),
        (None, "CANCELED")
    );
    for key in ["slow:4", "slow:4:operator-retry"] {
        let err = t.start(key, &order, 8_000, "tok_slow").await.unwrap_err();
        assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    }
    assert_eq!(t.rows().await, tombstone);
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);
    assert_eq!(t.get(&order).await.unwrap_err().code(), Code::NotFound);
    t.stop().await;
}

/// Deadline passes and nobody compensates: the authorization finishes and is recorded STARTED
/// (the retry with the same key gets it at once), other payments were served meanwhile, and a
/// later CancelPayment voids it; StartPayment after that is rejected.
async fn deadline_then_outcome_is_recorded(kind: Kind) {
    let mut t = harness::start_with(kind, "pay_slow_record", slow_config()).await;
    let order = order_id();
    let mut request = start_req("rec:4", &order, 4_200, "tok_slow").into_request();
    request.set_timeout(DEADLINE);
    assert_gave_up(&t.client.start_payment(request).await.unwrap_err());

    // While the slow authorization is in flight, the service answers other orders: no
    // transaction is held across the gateway call.
    let other = order_id();
    let fast = t.start("fast:4", &other, 100, "tok_ok").await.unwrap();
    assert_eq!(fast.status(), PaymentStatus::Started);
    assert_eq!(
        t.get(&order).await.unwrap_err().code(),
        Code::NotFound,
        "the slow authorization is still in flight"
    );

    let payment =
        sagaflow_testkit::eventually("the slow payment to be recorded", LIMIT, || async {
            t.get(&order).await.ok()
        })
        .await;
    assert_eq!(payment.status(), PaymentStatus::Started);
    assert_eq!(payment.amount, 4_200);

    // The saga's retry with the same key gets the recorded outcome (no second authorization).
    let retried = t.start("rec:4", &order, 4_200, "tok_slow").await.unwrap();
    assert_eq!(retried, payment);
    assert_eq!(t.gateway.authorizations_of(&order).len(), 1);

    // Compensation after the action: voided and CANCELED; a late StartPayment changes nothing.
    let canceled = t.cancel("rec:4:compensate", &order).await.unwrap().unwrap();
    assert_eq!(canceled.status(), PaymentStatus::Canceled);
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);
    let err = t
        .start("rec:4:late", &order, 4_200, "tok_slow")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_CANCELED");
    let after = t.get(&order).await.unwrap();
    assert_eq!(after, canceled);
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    deadline_then_compensation_voids_the_late_authorization,
    deadline_then_outcome_is_recorded,
);
