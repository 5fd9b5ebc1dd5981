//! `sagaflow.payment.v1.PaymentService` over tonic: validation, the read / gateway call / record
//! sequence of each command (see the crate docs), and proto ↔ domain conversion.

use std::{collections::HashMap, future::Future, sync::Arc};

use sagaflow_proto::payment::v1::{
    self as pb, payment_service_server::PaymentService as PaymentServiceApi,
};
use sagaflow_server::{Db, ServiceError, error::error_reason, idempotency, validate::Validator};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    PaymentService,
    domain::{
        CancelDecision, CompleteDecision, Payment, PaymentRecord, PaymentStatus, RefundDecision,
        Rejection, StartDecision, decide_cancel, decide_complete, decide_refund, decide_start,
        gateway_key, reason,
    },
    gateway::{AuthorizeRequest, GatewayError, GatewayReference, OperationRequest, PaymentGateway},
    store::{self, Transition},
};

const START: &str = "payment.StartPayment";
const CANCEL: &str = "payment.CancelPayment";
const COMPLETE: &str = "payment.CompletePayment";
const REFUND: &str = "payment.RefundPayment";

#[tonic::async_trait]
impl PaymentServiceApi for PaymentService {
    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let order_id = v.uuid("order_id", &req.order_id);
        v.finish()?;
        let order_id = canonical(order_id);
        match store::find(self.db.pool(), &order_id).await? {
            Some(PaymentRecord::Payment(p)) => Ok(Response::new(pb::GetPaymentResponse {
                payment: Some(to_proto(&p)),
            })),
            // A tombstone is not a payment: the order was never charged.
            Some(PaymentRecord::Tombstone { .. }) | None => {
                Err(ServiceError::NotFound(format!("payment of order {order_id}")).into())
            }
        }
    }

    async fn start_payment(
        &self,
        request: Request<pb::StartPaymentRequest>,
    ) -> Result<Response<pb::StartPaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        v.required("idempotency_key", &req.idempotency_key);
        let order_id = v.uuid("order_id", &req.order_id);
        v.non_negative_i64("amount", req.amount);
        v.required("payment_method", &req.payment_method);
        v.finish()?;
        let command = start(
            self.db.clone(),
            Arc::clone(&self.gateway),
            req,
            canonical(order_id),
        );
        run_to_completion(command).await.map(Response::new)
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Result<Response<pb::CancelPaymentResponse>, Status> {
        let req = request.into_inner();
        let order_id = validate_key_and_order(&req.idempotency_key, &req.order_id)?;
        let command = cancel(self.db.clone(), Arc::clone(&self.gateway), req, order_id);
        run_to_completion(command).await.map(Response::new)
    }

    async fn complete_payment(
        &self,
        request: Request<pb::CompletePaymentRequest>,
    ) -> Result<Response<pb::CompletePaymentResponse>, Status> {
        let req = request.into_inner();
        let order_id = validate_key_and_order(&req.idempotency_key, &req.order_id)?;
        let command = complete(self.db.clone(), Arc::clone(&self.gateway), req, order_id);
        run_to_completion(command).await.map(Response::new)
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::RefundPaymentResponse>, Status> {
        let req = request.into_inner();
        let order_id = validate_key_and_order(&req.idempotency_key, &req.order_id)?;
        let command = refund(self.db.clone(), Arc::clone(&self.gateway), req, order_id);
        run_to_completion(command).await.map(Response::new)
    }
}

/// Runs a command on its own task and waits for it.
///
/// When the caller's deadline passes, tonic drops the handler; the command task keeps going
/// until its gateway answer is recorded (bounded by the gateway's own answer time), so a gateway
/// call is never left unrecorded just because the caller gave up. Dropping the handle does not
/// stop the task; a process exit does, which is the crash case the design already covers.
async fn run_to_completion<T: Send + 'static>(
    command: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(command.in_current_span())
        .await
        .map_err(|join| {
            Status::from(ServiceError::Internal(
                anyhow::Error::new(join).context("payment command task"),
            ))
        })?
}

fn validate_key_and_order(key: &str, order_id: &str) -> Result<String, ServiceError> {
    let mut v = Validator::new();
    v.required("idempotency_key", key);
    let order_id = v.uuid("order_id", order_id);
    v.finish()?;
    Ok(canonical(order_id))
}

/// The canonical (lower-case, hyphenated) text of a validated order id.
fn canonical(order_id: Option<uuid::Uuid>) -> String {
    order_id.map(|id| id.to_string()).unwrap_or_default()
}

/// What the gateway said to an authorization, carried into the recording transaction.
#[derive(Debug)]
enum Authorization {
    /// The decision needed no gateway call.
    NotCalled,
    Approved(GatewayReference),
    Declined,
}

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "info"))]
async fn start(
    db: Db,
    gateway: Arc<dyn PaymentGateway>,
    req: pb::StartPaymentRequest,
    order_id: String,
) -> Result<pb::StartPaymentResponse, Status> {
    let key = req.idempotency_key.clone();
    if let Some(stored) = idempotency::lookup(&db, START, &key, &req).await? {
        return Ok(stored);
    }
    let stored = store::find(db.pool(), &order_id).await?;
    let authorization = match decide_start(stored.as_ref(), req.amount, &req.payment_method) {
        StartDecision::Authorize => {
            let call = AuthorizeRequest {
                idempotency_key: gateway_key(&order_id, "authorize"),
                order_id: order_id.clone(),
                amount: req.amount,
                card_token: req.payment_method.clone(),
            };
            match gateway.authorize(&call).await {
                Ok(reference) => Authorization::Approved(reference),
                Err(GatewayError::AuthorizationDeclined(message)) => {
                    tracing::info!(%message, "authorization declined");
                    Authorization::Declined
                }
                Err(GatewayError::UnknownCardToken(token)) => {
                    return Err(ServiceError::invalid(
                        "payment_method",
                        format!("unknown card token {token:?}"),
                    )
                    .into());
                }
                Err(other) => return Err(gateway_failure(other).into()),
            }
        }
        StartDecision::Existing(_) | StartDecision::Reject(_) => Authorization::NotCalled,
    };
    let late_authorization = match &authorization {
        Authorization::Approved(reference) => Some(reference.clone()),
        Authorization::NotCalled | Authorization::Declined => None,
    };
    let (amount, method, id) = (req.amount, req.payment_method.clone(), order_id.clone());
    let result = idempotency::execute(&db, START, &key, &req, move |conn| {
        Box::pin(async move {
            let stored = store::find(&mut *conn, &id).await?;
            let payment = match (
                decide_start(stored.as_ref(), amount, &method),
                authorization,
            ) {
                (StartDecision::Reject(rejection), _) => return Err(rejected(&id, rejection)),
                (StartDecision::Existing(p), _) => p,
                (StartDecision::Authorize, Authorization::Approved(reference)) => {
                    store::insert_started(conn, &id, amount, &method, &reference)
                        .await?
                        .ok_or_else(|| changed_meanwhile(&id))?
                }
                (StartDecision::Authorize, Authorization::Declined) => {
                    return Err(rejected(&id, Rejection::Declined));
                }
                (StartDecision::Authorize, Authorization::NotCalled) => {
                    return Err(changed_meanwhile(&id));
                }
            };
            Ok(pb::StartPaymentResponse {
                payment: Some(to_proto(&payment)),
            })
        })
    })
    .await;
    if let (Err(status), Some(reference)) = (&result, late_authorization)
        && error_reason(status).as_deref() == Some(reason::COMPENSATED_BEFORE_ACTION)
    {
        // CancelPayment came while the gateway was authorizing: the authorization is not
        // attached to any payment (the tombstone holds the order's row), so release it.
        void_late_authorization(gateway.as_ref(), &order_id, &req, reference).await;
    }
    result
}

/// Voids an authorization that a tombstone made late. A failure is only logged: the payment
/// record is already final, and an authorization that is never captured expires at the gateway.
// TODO-robustness: a crash between the record and this void leaves the authorization to expire;
// a sweeper could void authorizations of tombstoned orders.
async fn void_late_authorization(
    gateway: &dyn PaymentGateway,
    order_id: &str,
    req: &pb::StartPaymentRequest,
    authorization: GatewayReference,
) {
    let call = OperationRequest {
        idempotency_key: gateway_key(order_id, "void"),
        authorization,
        order_id: order_id.to_owned(),
        amount: req.amount,
        card_token: req.payment_method.clone(),
    };
    match gateway.void(&call).await {
        Ok(reference) => tracing::info!(%reference, "late authorization voided"),
        Err(err) => {
            tracing::warn!(error = %err, "cannot void a late authorization; it will expire")
        }
    }
}

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "info"))]
async fn cancel(
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
    let voided = match decide_cancel(stored.as_ref()) {
        CancelDecision::Void(payment) => Some(
            gateway
                .void(&operation(&payment, "void"))
                .await
                .map_err(gateway_failure)?,
        ),
        _ => None,
    };
    let id = order_id.clone();
    idempotency::execute(&db, CANCEL, &key, &req, move |conn| {
        Box::pin(async move {
            let stored = store::find(&mut *conn, &id).await?;
            let payment = match decide_cancel(stored.as_ref()) {
                CancelDecision::RecordTombstone => {
                    if !store::insert_tombstone(conn, &id).await? {
                        return Err(changed_meanwhile(&id));
                    }
                    None
                }
                CancelDecision::AlreadyTombstoned => None,
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

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "info"))]
async fn complete(
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
                    tracing::info!(%message, "capture declined");
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

#[tracing::instrument(skip_all, fields(order_id = %order_id), err(level = "info"))]
async fn refund(
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
fn rejected(order_id: &str, rejection: Rejection) -> ServiceError {
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

fn changed_meanwhile(order_id: &str) -> ServiceError {
    ServiceError::Unavailable(format!(
        "the payment of order {order_id} changed while the gateway answered; retry"
    ))
}

fn to_proto(payment: &Payment) -> pb::Payment {
    let status = match payment.status {
        PaymentStatus::Started => pb::PaymentStatus::Started,
        PaymentStatus::Canceled => pb::PaymentStatus::Canceled,
        PaymentStatus::Completed => pb::PaymentStatus::Completed,
        PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
    };
    pb::Payment {
        payment_id: payment.payment_id.clone(),
        order_id: payment.order_id.clone(),
        amount: payment.amount,
        status: status.into(),
    }
}
