//! Authorization intents (docs/architecture.md, "The service contract"): an authorization made
//! at the gateway never stays open without a payment to void it. StartPayment commits its intent
//! before it calls the gateway, so when its recording fails after the gateway authorized, or the
//! command dies between the two, CancelPayment finds the intent and voids the authorization by
//! key; a later StartPayment leaves nothing authorized either.
//!
//! The failures are real ones, injected by a gateway in front of the simulated one that acts
//! right after the simulated gateway authorized: the payment database goes away, the command
//! dies, a CancelPayment comes through the real RPC, or a tombstone transaction commits while
//! the recording's insert waits for it.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sagaflow_payment::{
    AuthorizationState::{self, Authorized, Captured, Voided},
    AuthorizeRequest, GatewayError, GatewayReference, OperationRequest, PaymentGateway,
    SimulatedGateway, VoidByKeyRequest,
};
use sagaflow_proto::payment::v1::{PaymentStatus, payment_service_client::PaymentServiceClient};
use sagaflow_server::{Db, idempotency::late_action::COMPENSATED_BEFORE_ACTION as COMPENSATED};
use sagaflow_testkit::{Kind, service::assert_reason};
use tonic::{Code, transport::Channel};

use crate::harness::{self, TestPayment, cancel_req, order_id};

/// What happens right after the simulated gateway authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// The payment database goes away (the service's pool is closed): the recording fails.
    ClosePool,
    /// The command dies right there (a panic): nothing after the gateway call runs.
    Crash,
    /// A CancelPayment of the order comes through the real RPC before the answer arrives.
    Cancel,
    /// Another writer's tombstone transaction for the order is open when the answer arrives and
    /// commits once the recording waits for it (on PostgreSQL the recording's
    /// insert waits on the row and then inserts nothing). The tombstone is written directly, as
    /// a CancelPayment of the previous release did: without voiding anything.
    ConcurrentTombstone,
}

/// Shared between a test and its gateway.
#[derive(Debug, Default)]
struct Probe {
    /// A client of the service, for [`Then::Cancel`].
    client: OnceLock<PaymentServiceClient<Channel>>,
    /// The gateway's state of the order right after the CancelPayment of [`Then::Cancel`]
    /// answered (before StartPayment records anything).
    after_cancel: Mutex<Option<Vec<AuthorizationState>>>,
}

/// A gateway in front of the simulated one that does [`Then`] once, right after the first
/// authorization.
#[derive(Debug)]
struct AfterAuthorize {
    inner: Arc<SimulatedGateway>,
    then: Then,
    db: Db,
    probe: Arc<Probe>,
    armed: AtomicBool,
}

#[tonic::async_trait]
impl PaymentGateway for AfterAuthorize {
    async fn authorize(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<GatewayReference, GatewayError> {
        let answer = self.inner.authorize(request).await;
        if answer.is_err() || !self.armed.swap(false, Ordering::SeqCst) {
            return answer;
        }
        match self.then {
            Then::ClosePool => self.db.close().await,
            Then::Crash => panic!("simulated crash after the gateway authorized"),
            Then::Cancel => {
                let mut client = self.probe.client.get().expect("probe client set").clone();
                let canceled = client
                    .cancel_payment(cancel_req("during:4:compensate", &request.order_id))
                    .await
                    .expect("CancelPayment while the authorization is in flight")
                    .into_inner();
                assert_eq!(canceled.payment, None, "no payment yet: tombstone");
                *self.probe.after_cancel.lock().unwrap() =
                    Some(self.inner.authorizations_of(&request.order_id));
            }
            Then::ConcurrentTombstone => {
                let mut tx = self.db.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO payments (payment_id, order_id, status, created_at, updated_at) \
                     VALUES ($1, $2, 'CANCELED', 0, 0)",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(&request.order_id)
                .execute(&mut *tx)
                .await
                .unwrap();
                let db = self.db.clone();
                tokio::spawn(async move {
                    // On PostgreSQL, commit once the recording's insert is blocked on the row
                    // (a lock of this database that is not granted). On SQLite the recording's
                    // BEGIN IMMEDIATE waits for this write lock, or comes after the commit: it
                    // finds the tombstone either way, and there is no lock table to wait on.
                    if db.backend() == sagaflow_server::Backend::Postgres {
                        sagaflow_testkit::eventually(
                            "the recording to wait on the tombstone's row",
                            Duration::from_secs(10),
                            || async {
                                let waiting: i64 = sqlx::query_scalar(
                                    "SELECT COUNT(*) FROM pg_locks l \
                                     JOIN pg_stat_activity a ON a.pid = l.pid \
                                     WHERE NOT l.granted AND a.datname = current_database()",
                                )
                                .fetch_one(db.pool())
                                .await
                                .unwrap();
                                (waiting > 0).then_some(())
                            },
                        )
                        .await;
                    }
                    tx.commit().await.unwrap();
                });
            }
        }
        answer
    }

    async fn void(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.inner.void(request).await
    }

    async fn void_by_key(
        &self,
        request: &VoidByKeyRequest,
    ) -> Result<Option<GatewayReference>, GatewayError> {
        self.inner.void_by_key(request).await
    }

    async fn capture(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.inner.capture(request).await
    }

    async fn refund(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.inner.refund(request).await
    }
}

async fn start_after_authorize(kind: Kind, name: &str, then: Then) -> (TestPayment, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let shared = Arc::clone(&probe);
    let t = harness::start_wrapped(kind, name, move |db, inner| {
        Arc::new(AfterAuthorize {
            inner,
            then,
            db,
            probe: shared,
            armed: AtomicBool::new(true),
        })
    })
    .await;
    probe.client.set(t.client.clone()).unwrap();
    (t, probe)
}

fn authorize_key(order: &str) -> String {
    format!("payment:{order}:authorize")
}

/// After the gateway authorized and nothing was recorded: the intent is open and the gateway
/// holds the money.
async fn assert_open_and_unrecorded(t: &TestPayment, order: &str, key: &str, amount: i64) {
    assert_eq!(
        t.gateway.authorizations_of(order),
        [Authorized],
        "the customer's money is held"
    );
    assert!(t.rows().await.is_empty(), "no payment was recorded");
    assert_eq!(t.stored_code(key).await, None, "no outcome was recorded");
    assert_eq!(
        t.intent(order).await,
        Some((
            order.to_owned(),
            authorize_key(order),
            Some(amount),
            Some("tok_ok".to_owned()),
            "AUTHORIZING".to_owned(),
            None
        )),
        "the intent committed before the gateway call survived"
    );
}

/// CancelPayment then a StartPayment retry with the same key: the authorization is voided, the
/// order has a CANCELED tombstone and a VOIDED intent, and nothing is authorized again.
async fn assert_cancel_voids_and_retry_authorizes_nothing(
    t: &mut TestPayment,
    order: &str,
    key: &str,
    amount: i64,
) {
    let canceled = t.cancel(&format!("{key}:compensate"), order).await.unwrap();
    assert_eq!(canceled, None, "no payment was recorded: tombstone");
    assert_eq!(
        t.gateway.authorizations_of(order),
        [Voided],
        "CancelPayment voided the authorization at the gateway"
    );
    assert_eq!(
        t.gateway.authorization_under_key(&authorize_key(order)),
        Some(AuthorizationState::Voided)
    );
    let tombstone = t.rows().await;
    assert_eq!(tombstone.len(), 1);
    assert_eq!(
        (
            tombstone[0].1,
            tombstone[0].3.as_str(),
            tombstone[0].4.as_deref()
        ),
        (None, "CANCELED", None),
        "a tombstone"
    );
    let intent = t.intent(order).await.unwrap();
    assert_eq!(intent.4, "VOIDED");
    assert!(intent.5.is_some(), "the void's gateway reference is kept");

    let err = t.start(key, order, amount, "tok_ok").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    assert_eq!(
        t.gateway.authorizations_of(order),
        [Voided],
        "the retry left nothing authorized"
    );
    assert_eq!(t.rows().await, tombstone);
    assert_eq!(t.get(order).await.unwrap_err().code(), Code::NotFound);
}

/// The payment database goes away after the gateway authorized: StartPayment's recording fails
/// (UNAVAILABLE). After the service is back, CancelPayment voids the authorization.
async fn recording_fails_after_authorization_then_cancel_voids(kind: Kind) {
    let (t, _) = start_after_authorize(kind, "pay_intent_pool", Then::ClosePool).await;
    let order = order_id();
    let err = t
        .start("pool:4", &order, 6_000, "tok_ok")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let mut t = t.restart().await;
    assert_open_and_unrecorded(&t, &order, "pool:4", 6_000).await;
    assert_cancel_voids_and_retry_authorizes_nothing(&mut t, &order, "pool:4", 6_000).await;
    t.stop().await;
}

/// The command dies between the gateway's authorization and the recording; the service
/// restarts. CancelPayment voids the authorization; on another order, a StartPayment retry
/// instead adopts the authorization (recorded STARTED, one authorization), and CancelPayment
/// voids it through the payment.
async fn crash_between_authorize_and_record_then_cancel_voids(kind: Kind) {
    let (t, _) = start_after_authorize(kind, "pay_intent_crash", Then::Crash).await;
    let order = order_id();
    let err = t
        .start("crash:4", &order, 7_000, "tok_ok")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "the command died: {err:?}");
    let mut t = t.restart().await;
    assert_open_and_unrecorded(&t, &order, "crash:4", 7_000).await;
    assert_cancel_voids_and_retry_authorizes_nothing(&mut t, &order, "crash:4", 7_000).await;
    t.stop().await;

    // The same crash, then the saga retries the action instead of compensating.
    let (t, _) = start_after_authorize(kind, "pay_intent_crash_retry", Then::Crash).await;
    let order = order_id();
    t.start("crash2:4", &order, 7_500, "tok_ok")
        .await
        .unwrap_err();
    let t = t.restart().await;
    assert_open_and_unrecorded(&t, &order, "crash2:4", 7_500).await;
    let payment = t.start("crash2:4", &order, 7_500, "tok_ok").await.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Started);
    assert_eq!(
        t.gateway.authorizations_of(&order),
        [Authorized],
        "the retry got the same authorization"
    );
    assert_eq!(t.intent(&order).await.unwrap().4, "RECORDED");
    let canceled = t
        .cancel("crash2:4:compensate", &order)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(canceled.status(), PaymentStatus::Canceled);
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);
    t.stop().await;
}

/// CancelPayment comes while the authorization's answer is on its way: it voids the
/// authorization itself, before StartPayment records anything; StartPayment then answers
/// COMPENSATED_BEFORE_ACTION and nothing stays authorized.
async fn cancel_while_authorizing_voids_before_start_records(kind: Kind) {
    let (t, probe) = start_after_authorize(kind, "pay_intent_during", Then::Cancel).await;
    let order = order_id();
    let err = t
        .start("during:4", &order, 5_500, "tok_ok")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    assert_eq!(
        *probe.after_cancel.lock().unwrap(),
        Some(vec![Voided]),
        "CancelPayment voided the authorization before StartPayment recorded"
    );
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);
    let intent = t.intent(&order).await.unwrap();
    assert_eq!((intent.2, intent.4.as_str()), (Some(5_500), "VOIDED"));
    // Repeats change nothing.
    let err = t
        .start("during:4", &order, 5_500, "tok_ok")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    let again = t.cancel("during:4:compensate", &order).await.unwrap();
    assert_eq!(again, None);
    assert_eq!(t.rows().await.len(), 1);
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);
    t.stop().await;
}

/// A tombstone committed while StartPayment records (on PostgreSQL the interleaving is: the
/// insert waits on the tombstone, then inserts nothing and finds the tombstone; on SQLite the
/// recording waits for the write lock and then finds the tombstone): StartPayment answers
/// COMPENSATED_BEFORE_ACTION on both, voids its authorization by key, and a CancelPayment and a retry change nothing.
async fn tombstone_committed_during_recording_voids_the_authorization(kind: Kind) {
    let (t, _) = start_after_authorize(kind, "pay_intent_race", Then::ConcurrentTombstone).await;
    let order = order_id();
    let err = t
        .start("race:4", &order, 4_400, "tok_ok")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    assert_eq!(
        t.gateway.authorizations_of(&order),
        [Voided],
        "StartPayment voided the authorization the tombstone orphaned"
    );
    let intent = t.intent(&order).await.unwrap();
    assert_eq!(intent.4, "VOIDED");
    assert!(intent.5.is_some());

    let canceled = t.cancel("race:4:compensate", &order).await.unwrap();
    assert_eq!(canceled, None);
    let err = t
        .start("race:4", &order, 4_400, "tok_ok")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    let rows = t.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].1, rows[0].3.as_str()), (None, "CANCELED"));
    assert_eq!(t.gateway.authorizations_of(&order), [Voided]);
    t.stop().await;
}

/// The normal paths are unchanged and settle the intent: StartPayment records it RECORDED with
/// the payment; CancelPayment voids once; CompletePayment captures; repeats are replayed; a
/// decline settles it DECLINED; a CancelPayment before any StartPayment claims the order
/// (VOIDED, no amount) so that StartPayment never reaches the gateway.
async fn normal_paths_settle_the_intent(kind: Kind) {
    let t = harness::start(kind, "pay_intent_normal").await;

    // Start, repeat, cancel, repeat.
    let order = order_id();
    let started = t.start("n:4", &order, 3_000, "tok_ok").await.unwrap();
    let intent = t.intent(&order).await.unwrap();
    assert_eq!(
        intent,
        (
            order.clone(),
            authorize_key(&order),
            Some(3_000),
            Some("tok_ok".to_owned()),
            "RECORDED".to_owned(),
            None
        )
    );
    let repeat = t.start("n:4", &order, 3_000, "tok_ok").await.unwrap();
    assert_eq!(repeat, started);
    assert_eq!(t.gateway.authorizations_of(&order), [Authorized]);
    let canceled = t.cancel("n:4:compensate", &order).await.unwrap().unwrap();
    assert_eq!(canceled.status(), PaymentStatus::Canceled);
    let again = t.cancel("n:4:compensate", &order).await.unwrap().unwrap();
    assert_eq!(again, canceled);
    assert_eq!(t.gateway.authorizations_of(&order), [Voided], "voided once");
    assert_eq!(t.intent(&order).await, Some(intent), "the payment owns it");

    // Start, complete, repeat.
    let order2 = order_id();
    t.start("n2:4", &order2, 10, "tok_ok").await.unwrap();
    let done = t.complete("n2:6", &order2).await.unwrap();
    assert_eq!(done.status(), PaymentStatus::Completed);
    let done_again = t.complete("n2:6", &order2).await.unwrap();
    assert_eq!(done_again, done);
    assert_eq!(t.gateway.authorizations_of(&order2), [Captured]);
    assert_eq!(t.intent(&order2).await.unwrap().4, "RECORDED");

    // Declined: settled DECLINED; the compensation's tombstone keeps it.
    let order3 = order_id();
    let err = t
        .start("n3:4", &order3, 20, "tok_decline")
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "PAYMENT_DECLINED");
    assert_eq!(t.intent(&order3).await.unwrap().4, "DECLINED");
    t.cancel("n3:4:compensate", &order3).await.unwrap();
    assert_eq!(t.intent(&order3).await.unwrap().4, "DECLINED");
    assert!(t.gateway.authorizations_of(&order3).is_empty());

    // CancelPayment first: the order is claimed; StartPayment never reaches the gateway.
    let order4 = order_id();
    t.cancel("n4:4:compensate", &order4).await.unwrap();
    assert_eq!(
        t.intent(&order4).await,
        Some((
            order4.clone(),
            authorize_key(&order4),
            None,
            None,
            "VOIDED".to_owned(),
            None
        ))
    );
    let err = t.start("n4:4", &order4, 30, "tok_ok").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, COMPENSATED);
    assert!(t.gateway.authorizations_of(&order4).is_empty());
    assert_eq!(
        t.gateway.authorization_under_key(&authorize_key(&order4)),
        None
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    recording_fails_after_authorization_then_cancel_voids,
    crash_between_authorize_and_record_then_cancel_voids,
    cancel_while_authorizing_voids_before_start_records,
    tombstone_committed_during_recording_voids_the_authorization,
    normal_paths_settle_the_intent,
);
