//! `sagaflow.payment.v1.PaymentService` over tonic: validation, the call of each command's flow
//! (`crate::commands`) on a task of its own, and proto ↔ domain conversion. No business decision
//! is made here (the rule of `sagaflow_server`'s crate docs).

use std::{future::Future, sync::Arc};

use sagaflow_proto::payment::v1::{
    self as pb, payment_service_server::PaymentService as PaymentServiceApi,
};
use sagaflow_server::{ServiceError, access::identity_of, card_token, validate::Validator};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    PaymentService,
    commands::{cancel, complete, get, refund, start},
    convert::to_proto,
};

#[tonic::async_trait]
impl PaymentServiceApi for PaymentService {
    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let identity = identity_of(&request);
        let req = request.into_inner();
        let mut v = Validator::new();
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.finish()?;
        let payment = get(&self.db, &order_id, &identity).await?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(to_proto(&payment)),
        }))
    }

    async fn start_payment(
        &self,
        request: Request<pb::StartPaymentRequest>,
    ) -> Result<Response<pb::StartPaymentResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.non_negative_i64("amount", req.amount);
        if card_token::is_sealed(&req.payment_method) {
            // Sealed by the order service: longer than a card token (docs/architecture.md,
            // "Card tokens").
            v.check(
                req.payment_method.len() <= card_token::SEALED_MAX_BYTES,
                "payment_method",
                format!(
                    "a sealed card token is at most {} bytes",
                    card_token::SEALED_MAX_BYTES
                ),
            );
        } else {
            v.required("payment_method", &req.payment_method);
        }
        v.finish()?;
        let command = start(self.db.clone(), Arc::clone(&self.gateway), req, order_id);
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
    let mut v = Validator::command(key);
    let order_id = v.uuid_text("order_id", order_id);
    v.finish()?;
    Ok(order_id)
}
