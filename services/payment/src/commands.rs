//! The flow of each payment command (see the crate docs: read, gateway call, record), with every
//! business decision and rejection: the domain's `decide_*` functions decide, this module
//! sequences the gateway and the store and builds the [`ServiceError`]s; `grpc` only validates
//! and maps (the rule of `sagaflow_server`'s crate docs).

use std::{collections::HashMap, sync::Arc};

use sagaflow_proto::payment::v1 as pb;
use sagaflow_server::{Db, ServiceError, access::Identity, idempotency};
use tonic::Status;

use crate::{
    convert::to_proto,
    domain::{
        CancelDecision, CompleteDecision, IntentStatus, Payment, PaymentRecord, RefundDecision,
        Rejection, StartDecision, TombstoneIntent, decide_cancel, decide_complete, decide_refund,
        decide_start, decide_tombstone_intent, gateway_key,
    },
    gateway::{
        AuthorizeRequest, GatewayError, GatewayReference, OperationRequest, PaymentGateway,
        VoidByKeyRequest,
    },
    store::{self, Transition},
};

const START: &str = "payment.StartPayment";
const CANCEL: &str = "payment.CancelPayment";
const COMPLETE: &str = "payment.CompletePayment";
const REFUND: &str = "payment.RefundPayment";

/// GetPayment: the payment of `order_id`.
///
/// # Errors
/// `NOT_FOUND` when the order has no payment (a tombstone is not a payment: the order was never
/// charged); `UNAVAILABLE` / `INTERNAL` when the database fails.
///
/// An end user sees only a payment StartPayment recorded as theirs (docs/operations.md, "End
/// users"); another user's is the same NOT_FOUND as a missing one.
pub(crate) async fn get(
    db: &Db,
    order_id: &str,
    identity: &Identity,
) -> Result<Payment, ServiceError> {
    if identity.end_user().is_some() {
        let owner = store::owner(db.pool(), order_id).await?;
        if !owner.is_some_and(|owner| identity.may_see(&owner)) {
            return Err(rejected(order_id, Rejection::NotFound));
        }
    }
    match store::find(db.pool(), order_id).await? {
        Some(PaymentRecord::Payment(p)) => Ok(p),
        Some(PaymentRecord::Tombstone { .. }) | None => {
            Err(rejected(order_id, Rejection::NotFound))
        }
    }
}

/// What the gateway said to an authorization, carried into the recording transaction.
#[derive(Debug)]
enum Authorization {
    /// No gateway call: the decision needed none, or the order's intent was settled meanwhile
    /// (recorded by a racing StartPayment, or released by a CancelPayment).
    NotCalled,
    Approved(GatewayReference),
    Declined,
    /// The gateway refused the key: a CancelPayment voided it by key first.
    KeyClosed,
}

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "debug"))]
pub(crate) async fn start(
    db: Db,
    gateway: Arc<dyn PaymentGateway>,
    req: pb::StartPaymentRequest,
    order_id: String,
) -> Result<pb::StartPaymentResponse, Status> {
    let key = req.idempotency_key.clone();
    // The user is a function of the order, so it stays out of the request's hash: a step
    // retried across an upgrade (without user_id before) is the same request.
    let owner = req.user_id.clone();
    let req = pb::StartPaymentRequest {
        user_id: String::new(),
        ..req
    };
    if let Some(stored) = idempotency::lookup(&db, START, &key, &req).await? {
        return Ok(stored);
    }
    let stored = store::find(db.pool(), &order_id).await?;
    let authorization = match decide_start(stored.as_ref(), req.amount, &req.payment_method) {
        StartDecision::Authorize => authorize(&db, gateway.as_ref(), &req, &order_id).await?,
        StartDecision::Existing(_) | StartDecision::Reject(_) => Authorization::NotCalled,
    };
    let approved = matches!(authorization, Authorization::Approved(_));
    let (amount, method, id) = (req.amount, req.payment_method.clone(), order_id.clone());
    let backend = db.backend();
    let result = idempotency::execute(&db, START, &key, &req, move |conn| {
        Box::pin(async move {
            if !owner.is_empty() {
                store::record_owner(conn, &id, &owner).await?;
            }
            let stored = store::find(&mut *conn, &id).await?;
            let payment = match (
                decide_start(stored.as_ref(), amount, &method),
                authorization,
            ) {
                (StartDecision::Reject(rejection), _) => return Err(rejected(&id, rejection)),
                (StartDecision::Existing(p), _) => p,
                (StartDecision::Authorize, Authorization::Approved(reference)) => {
                    let payment =
                        store::insert_started(conn, backend, &id, amount, &method, &reference)
                            .await?
                            .ok_or_else(|| changed_meanwhile(&id))?;
                    // From now on the payment row owns the authorization.
                    store::settle_intent(conn, &id, IntentStatus::Recorded, None).await?;
                    payment
                }
                (StartDecision::Authorize, Authorization::Declined) => {
                    return Err(rejected(&id, Rejection::Declined));
                }
                (StartDecision::Authorize, Authorization::NotCalled | Authorization::KeyClosed) => {
                    return Err(changed_meanwhile(&id));
                }
            };
            Ok(pb::StartPaymentResponse {
                payment: Some(to_proto(&payment)),
            })
        })
    })
    .await;
    if result.is_err() {
        // No payment was recorded (COMPENSATED_BEFORE_ACTION, a tombstone committed while the
        // insert waited, or a failed recording): if the order is tombstoned, whatever the
        // gateway authorized under the order's key belongs to no payment.
        release_if_tombstoned(&db, gateway.as_ref(), &order_id, approved).await;
    }
    result
}

/// Commits the order's authorization intent, then asks the gateway to authorize (unless the
/// intent says the order was recorded or released meanwhile).
///
/// # Errors
/// `INVALID_ARGUMENT` naming `payment_method` for a card token the gateway does not know;
/// `UNAVAILABLE` when the database or the gateway fails (retry with the same key).
async fn authorize(
    db: &Db,
    gateway: &dyn PaymentGateway,
    req: &pb::StartPaymentRequest,
    order_id: &str,
) -> Result<Authorization, Status> {
    let call = AuthorizeRequest {
        idempotency_key: gateway_key(order_id, "authorize"),
        order_id: order_id.to_owned(),
        amount: req.amount,
        card_token: req.payment_method.clone(),
    };
    // Durable before the gateway is called: whatever happens to the recording (or the process)
    // afterwards, a CancelPayment finds the intent and voids the authorization by key.
    let intent = store::open_intent(
        db,
        order_id,
        &call.idempotency_key,
        req.amount,
        &req.payment_method,
    )
    .await?;
    if !intent.status.allows_authorize() {
        return Ok(Authorization::NotCalled);
    }
    match gateway.authorize(&call).await {
        Ok(reference) => Ok(Authorization::Approved(reference)),
        Err(GatewayError::AuthorizationDeclined(message)) => {
            tracing::debug!(%message, "authorization declined");
            // Nothing is or can be authorized under the key. If this fails the intent stays
            // AUTHORIZING, which is safe: a void by key finds nothing.
            if let Err(err) =
                store::settle_intent_now(db, order_id, IntentStatus::Declined, None).await
            {
                tracing::warn!(error = %err, "cannot mark the declined intent");
            }
            Ok(Authorization::Declined)
        }
        Err(GatewayError::UnknownCardToken(token)) => {
            // The gateway did nothing: an invalid request leaves no intent behind.
            if let Err(err) =
                store::forget_intent(db, order_id, req.amount, &req.payment_method).await
            {
                tracing::warn!(error = %err, "cannot delete the intent of an unknown card token");
            }
            Err(
                // `token` is masked already (GatewayError::UnknownCardToken).
                ServiceError::invalid("payment_method", format!("unknown card token {token}"))
                    .into(),
            )
        }
        Err(GatewayError::Conflict(message)) => {
            tracing::debug!(%message, "authorization key closed by a CancelPayment");
            Ok(Authorization::KeyClosed)
        }
        Err(other) => Err(gateway_failure(other).into()),
    }
}

/// After a StartPayment that recorded no payment: when the order has a tombstone, voids at the
/// gateway, by key, whatever was authorized under the order's authorization key (when the
/// intent is still open, or `approved` says this StartPayment got an authorization), and settles
/// the intent VOIDED.
///
/// A failure is only logged: the intent stays AUTHORIZING, and the order's next CancelPayment or
/// StartPayment voids it.
async fn release_if_tombstoned(
    db: &Db,
    gateway: &dyn PaymentGateway,
    order_id: &str,
    approved: bool,
) {
    let released = async {
        let Some(PaymentRecord::Tombstone { .. }) = store::find(db.pool(), order_id).await? else {
            return Ok(None);
        };
        let open = store::find_intent(db.pool(), order_id)
            .await?
            .is_some_and(|intent| intent.status.may_hold_open_authorization());
        if !(open || approved) {
            return Ok(None);
        }
        let void_ref = void_by_key(gateway, order_id)
            .await
            .map_err(gateway_failure)?;
        store::settle_intent_now(db, order_id, IntentStatus::Voided, void_ref.as_deref()).await?;
        Ok::<_, ServiceError>(Some(void_ref))
    }
    .await;
    match released {
        Ok(Some(Some(reference))) => tracing::debug!(%reference, "late authorization voided"),
        Ok(Some(None)) => {
            tracing::debug!("nothing was authorized under the tombstoned order's key")
        }
        Ok(None) => {}
        // Shutting down: the database is closed under the late reply. Nothing is lost (the
        // intent stays open), so this is not a warning.
        Err(err) if db.pool().is_closed() => tracing::debug!(
            error = %err,
            "late authorization left for the next CancelPayment or StartPayment (shutting down)"
        ),
        Err(err) => tracing::warn!(
            error = %err,
            "cannot void a late authorization now; the order's next CancelPayment or \
             StartPayment voids it"
        ),
    }
}

/// Voids at the gateway whatever was authorized under the order's authorization key, and closes
/// the key. `Ok(None)` when nothing was authorized under it.
async fn void_by_key(
    gateway: &dyn PaymentGateway,
    order_id: &str,
) -> Result<Option<GatewayReference>, GatewayError> {
    gateway
        .void_by_key(&VoidByKeyRequest {
            idempotency_key: gateway_key(order_id, "void"),
            authorization_key: gateway_key(order_id, "authorize"),
            order_id: order_id.to_owned(),
        })
        .await
}

/// In CancelPayment's tombstone transaction: makes sure no authorization can be open under the
/// order's key once the tombstone commits (see [`decide_tombstone_intent`]). `released` holds
/// the void by key this CancelPayment made before the transaction, if it made one.
///
/// # Errors
/// `UNAVAILABLE` when a StartPayment committed an intent meanwhile (the retry voids it), or the
/// database fails.
async fn settle_for_tombstone(
    conn: &mut sqlx::AnyConnection,
    order_id: &str,
    released: Option<&Option<GatewayReference>>,
) -> Result<(), ServiceError> {
    let intent = store::find_intent(&mut *conn, order_id).await?;
    match decide_tombstone_intent(intent.map(|i| i.status), released.is_some()) {
        TombstoneIntent::Claim => {
            let key = gateway_key(order_id, "authorize");
            if !store::claim_intent(conn, order_id, &key).await? {
                return Err(changed_meanwhile(order_id));
            }
        }
        TombstoneIntent::SettleVoided => {
            let void_ref = released.and_then(Option::as_deref);
            if !store::settle_intent(conn, order_id, IntentStatus::Voided, void_ref).await? {
                return Err(changed_meanwhile(order_id));
            }
        }
        TombstoneIntent::Keep => {}
        TombstoneIntent::ChangedMeanwhile => return Err(changed_meanwhile(order_id)),
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "debug"))]
pub(crate) async fn cancel(
    db: Db,
    gateway: Arc<dyn PaymentGateway>,
    req: pb::CancelPaymentRequest,
    order_id: String,
) -> Result<pb::CancelPaymentResponse, Status> {
    let key = req.idempotency_key.clone();
    if let Some(stored) = idempotency::lookup(&db, CANCEL, &key, &req).await? {
        return Ok(stored);
    }
    let stored = store::find(db.pool(), &order_id).await?;
    let (voided, released) = match decide_cancel(stored.as_ref()) {
        CancelDecision::Void(payment) => (
            Some(
                gateway
                    .void(&operation(&payment, "void"))
                    .await
                    .map_err(gateway_failure)?,
            ),
            None,
        ),
        // No payment owns the order's authorization key, but a StartPayment may have asked the
        // gateway under it (its intent is open: in flight, or its recording failed or crashed):
        // void by key before the tombstone is recorded.
        CancelDecision::RecordTombstone | CancelDecision::AlreadyTombstoned => {
            let open = store::find_intent(db.pool(), &order_id)
                .await?
                .is_some_and(|intent| intent.status.may_hold_open_authorization());
            let released = if open {
                Some(
                    void_by_key(gateway.as_ref(), &order_id)
                        .await
                        .map_err(gateway_failure)?,
                )
            } else {
                None
            };
            (None, released)
        }
        CancelDecision::Done(_) | CancelDecision::Reject(_) => (None, None),
    };
    let id = order_id.clone();
    let backend = db.backend();
    idempotency::execute(&db, CANCEL, &key, &req, move |conn| {
        Box::pin(async move {
            let stored = store::find(&mut *conn, &id).await?;
            let payment = match decide_cancel(stored.as_ref()) {
                CancelDecision::RecordTombstone => {
                    if !store::insert_tombstone(conn, backend, &id).await? {
                        return Err(changed_meanwhile(&id));
                    }
                    settle_for_tombstone(conn, &id, released.as_ref()).await?;
                    None
                }
                CancelDecision::AlreadyTombstoned => {
                    settle_for_tombstone(conn, &id, released.as_ref()).await?;
                    None
                }
                CancelDecision::Done(p) => Some(p),
                CancelDecision::Void(p) => {
                    let reference = voided.ok_or_else(|| changed_meanwhile(&id))?;
                    let updated = store::transition(conn, &p, Transition::Void(&reference))
                        .await?
                        .ok_or_else(|| changed_meanwhile(&id))?;
                    Some(updated)
                }
                CancelDecision::Reject(rejection) => return Err(rejected(&id, rejection)),
            };
            Ok(pb::CancelPaymentResponse {
                payment: payment.as_ref().map(to_proto),
            })
        })
    })
    .await
}

/// What the gateway said to a capture.
#[derive(Debug)]
enum Capture {
    NotCalled,
    Captured(GatewayReference),
    Declined,
}

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "debug"))]
pub(crate) async fn complete(
    db: Db,
    gateway: Arc<dyn PaymentGateway>,
    req: pb::CompletePaymentRequest,
    order_id: String,
) -> Result<pb::CompletePaymentResponse, Status> {
    let key = req.idempotency_key.clone();
    if let Some(stored) = idempotency::lookup(&db, COMPLETE, &key, &req).await? {
        return Ok(stored);
    }
    let stored = store::find(db.pool(), &order_id).await?;
    let capture = match decide_complete(stored.as_ref()) {
        CompleteDecision::Capture(payment) => {
            match gateway.capture(&operation(&payment, "capture")).await {
                Ok(reference) => Capture::Captured(reference),
                Err(GatewayError::CaptureDeclined(message)) => {
                    tracing::debug!(%message, "capture declined");
                    Capture::Declined
                }
                Err(other) => return Err(gateway_failure(other).into()),
            }
        }
        CompleteDecision::Done(_) | CompleteDecision::Reject(_) => Capture::NotCalled,
    };
    let id = order_id.clone();
    idempotency::execute(&db, COMPLETE, &key, &req, move |conn| {
        Box::pin(async move {
            let stored = store::find(&mut *conn, &id).await?;
            let payment = match (decide_complete(stored.as_ref()), capture) {
                (CompleteDecision::Capture(p), Capture::Captured(reference)) => {
                    store::transition(conn, &p, Transition::Capture(&reference))
                        .await?
                        .ok_or_else(|| changed_meanwhile(&id))?
                }
                // The payment stays STARTED; the saga compensates with CancelPayment.
                (CompleteDecision::Capture(_), Capture::Declined) => {
                    return Err(rejected(&id, Rejection::CaptureDeclined));
                }
                (CompleteDecision::Capture(_), Capture::NotCalled) => {
                    return Err(changed_meanwhile(&id));
                }
                (CompleteDecision::Done(p), _) => p,
                (CompleteDecision::Reject(rejection), _) => return Err(rejected(&id, rejection)),
            };
            Ok(pb::CompletePaymentResponse {
                payment: Some(to_proto(&payment)),
            })
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "debug"))]
pub(crate) async fn refund(
    db: Db,
    gateway: Arc<dyn PaymentGateway>,
    req: pb::RefundPaymentRequest,
    order_id: String,
) -> Result<pb::RefundPaymentResponse, Status> {
    let key = req.idempotency_key.clone();
    if let Some(stored) = idempotency::lookup(&db, REFUND, &key, &req).await? {
        return Ok(stored);
    }
    let stored = store::find(db.pool(), &order_id).await?;
    let refunded = match decide_refund(stored.as_ref()) {
        RefundDecision::Refund(payment) => Some(
            gateway
                .refund(&operation(&payment, "refund"))
                .await
                .map_err(gateway_failure)?,
        ),
        RefundDecision::Done(_) | RefundDecision::Reject(_) => None,
    };
    let id = order_id.clone();
    idempotency::execute(&db, REFUND, &key, &req, move |conn| {
        Box::pin(async move {
            let stored = store::find(&mut *conn, &id).await?;
            let payment = match decide_refund(stored.as_ref()) {
                RefundDecision::Refund(p) => {
                    let reference = refunded.ok_or_else(|| changed_meanwhile(&id))?;
                    store::transition(conn, &p, Transition::Refund(&reference))
                        .await?
                        .ok_or_else(|| changed_meanwhile(&id))?
                }
                RefundDecision::Done(p) => p,
                RefundDecision::Reject(rejection) => return Err(rejected(&id, rejection)),
            };
            Ok(pb::RefundPaymentResponse {
                payment: Some(to_proto(&payment)),
            })
        })
    })
    .await
}

/// The gateway call for `operation` on a started payment.
fn operation(payment: &Payment, operation: &str) -> OperationRequest {
    OperationRequest {
        idempotency_key: gateway_key(&payment.order_id, operation),
        authorization: payment.authorization_ref.clone(),
        order_id: payment.order_id.clone(),
        amount: payment.amount,
        card_token: payment.payment_method.clone(),
    }
}

/// Maps a gateway failure that is not the business answer the caller handles itself.
fn gateway_failure(err: GatewayError) -> ServiceError {
    match err {
        GatewayError::Fault(message) => {
            ServiceError::Unavailable(format!("payment gateway: {message}"))
        }
        // Another command on the same payment is between its gateway call and its record;
        // a retry sees the recorded outcome and decides again.
        GatewayError::Conflict(message) => ServiceError::Unavailable(format!(
            "payment gateway: {message}; another command on this payment is in flight, retry"
        )),
        err @ (GatewayError::AuthorizationDeclined(_)
        | GatewayError::CaptureDeclined(_)
        | GatewayError::UnknownCardToken(_)) => ServiceError::Internal(
            anyhow::Error::new(err).context("unexpected payment gateway answer"),
        ),
    }
}

/// Maps a domain rejection to its status: NOT_FOUND, or FAILED_PRECONDITION with the reason
/// and the order id in the ErrorInfo metadata.
pub(crate) fn rejected(order_id: &str, rejection: Rejection) -> ServiceError {
    let message = rejection.message(order_id);
    match rejection.reason() {
        None => ServiceError::NotFound(message),
        Some(reason) => ServiceError::FailedPrecondition {
            reason,
            message,
            metadata: HashMap::from([("order_id".to_owned(), order_id.to_owned())]),
        },
    }
}

pub(crate) fn changed_meanwhile(order_id: &str) -> ServiceError {
    ServiceError::Unavailable(format!(
        "the payment of order {order_id} changed while the gateway answered; retry"
    ))
}
