//! The order commands' effects, with every business decision and rejection (the rule of
//! `sagaflow_server`'s crate docs): the domain's `decide_*` functions decide, this module applies
//! the decision to the store and builds the [`ServiceError`]s; `grpc` only validates, runs these
//! inside the idempotency executor's transaction, and maps to proto.

use std::collections::HashMap;

use sagaflow_proto::order::v1 as pb;
use sagaflow_server::{ServiceError, db::now_ms};
use sqlx::AnyConnection;

use crate::{
    convert::to_proto,
    domain::{
        Decision, FailureReason, Order, OrderStatus, Rejection, decide_apply_coupon,
        decide_complete, decide_fail,
    },
    events::OrderEvent,
    store,
};

/// The order `order_id`.
///
/// # Errors
/// `NOT_FOUND` when there is none; `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn load_existing(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<Order, ServiceError> {
    store::load(conn, order_id)
        .await?
        .ok_or_else(|| order_not_found(order_id))
}

/// The NOT_FOUND of a missing order, and of another user's (docs/operations.md, "End users"):
/// one message for both, so order ids cannot be probed.
pub(crate) fn order_not_found(order_id: &str) -> ServiceError {
    ServiceError::NotFound(format!("order {order_id}"))
}

/// ApplyCoupon's effect (saga step 2): takes `discount` (KRW won, as the Coupon service's
/// UseCoupon computed it: the coupon service owns the rule) off the order, capped so that the
/// payable amount never goes below zero (points are taken first). Returns the order afterwards.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `discount` when it is above the order's subtotal; `NOT_FOUND` for
/// an unknown order; FAILED_PRECONDITION `ORDER_NOT_PENDING` / `ORDER_HAS_NO_COUPON`;
/// `UNAVAILABLE` when the order changed concurrently (retry).
pub(crate) async fn apply_coupon(
    conn: &mut AnyConnection,
    order_id: &str,
    discount: i64,
) -> Result<Order, ServiceError> {
    let mut order = load_existing(conn, order_id).await?;
    if !(0..=order.amounts.subtotal).contains(&discount) {
        return Err(ServiceError::invalid(
            "discount",
            format!(
                "must be between 0 and the order's subtotal ({} KRW)",
                order.amounts.subtotal
            ),
        ));
    }
    match decide_apply_coupon(&order) {
        Decision::Apply => {
            let amounts = order.amounts.with_discount(discount);
            let now = now_ms();
            if !store::update_amounts(conn, order_id, amounts, now).await? {
                return Err(changed_meanwhile(order_id));
            }
            order.amounts = amounts;
            order.updated_at_ms = now;
        }
        Decision::Unchanged => {}
        Decision::Reject(rejection) => return Err(rejected(order_id, rejection)),
    }
    Ok(order)
}

/// CompleteOrder's (`reason` None) or FailOrder's (`reason` Some) effect: the status, its history
/// row and the OrderCompleted / OrderFailed outbox event. Returns the order afterwards.
///
/// # Errors
/// `NOT_FOUND` for an unknown order; FAILED_PRECONDITION `ORDER_ALREADY_FAILED` /
/// `ORDER_ALREADY_COMPLETED`; `UNAVAILABLE` when the order changed concurrently (retry).
pub(crate) async fn finish(
    conn: &mut AnyConnection,
    order_id: &str,
    reason: Option<FailureReason>,
) -> Result<Order, ServiceError> {
    let mut order = load_existing(conn, order_id).await?;
    let decision = match reason {
        None => decide_complete(order.status),
        Some(_) => decide_fail(order.status),
    };
    match decision {
        Decision::Apply => end(conn, &mut order, reason).await?,
        Decision::Unchanged => {}
        Decision::Reject(rejection) => return Err(rejected(order_id, rejection)),
    }
    Ok(order)
}

/// Fails the order `order_id` because its OrderCreated event was dead-lettered without any
/// saga being possible for it (docs/architecture.md, "Events"): a PENDING order becomes FAILED
/// with reason INTERNAL, its discount cleared, with its status history row and OrderFailed
/// outbox event, on `conn` (the caller's transaction, which also dead-letters the event).
/// Returns the status the order had (`Some(Pending)`: failed now; a terminal status: left as it
/// is), or `None` when there is no such order.
///
/// # Errors
/// `UNAVAILABLE` when the database fails transiently; `INTERNAL` when the order row cannot be
/// read (a value this version does not know) or the database fails otherwise.
pub(crate) async fn fail_undeliverable(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<Option<OrderStatus>, ServiceError> {
    let Some(mut order) = store::load(conn, order_id).await? else {
        return Ok(None);
    };
    let was = order.status;
    if decide_fail(was) == Decision::Apply {
        end(conn, &mut order, Some(FailureReason::Internal)).await?;
    }
    Ok(Some(was))
}

/// Moves a PENDING `order` to COMPLETED (`reason` None) or FAILED with `reason` (the coupon was
/// given back: no discount any more), with its history row and outbox event.
async fn end(
    conn: &mut AnyConnection,
    order: &mut Order,
    reason: Option<FailureReason>,
) -> Result<(), ServiceError> {
    order.updated_at_ms = now_ms();
    let event = match reason {
        None => {
            order.status = OrderStatus::Completed;
            OrderEvent::Completed(pb::OrderCompletedEvent {
                order: Some(to_proto(order)),
            })
        }
        Some(reason) => {
            order.status = OrderStatus::Failed;
            order.failure_reason = Some(reason);
            order.amounts = order.amounts.without_discount();
            OrderEvent::Failed(pb::OrderFailedEvent {
                order: Some(to_proto(order)),
            })
        }
    };
    if store::finish(conn, order, &event).await? {
        Ok(())
    } else {
        Err(changed_meanwhile(&order.order_id))
    }
}

/// A domain rejection as FAILED_PRECONDITION with its reason and the order id in the ErrorInfo
/// metadata.
fn rejected(order_id: &str, rejection: Rejection) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: rejection.reason(),
        message: rejection.message(order_id),
        metadata: HashMap::from([("order_id".to_owned(), order_id.to_owned())]),
    }
}

fn changed_meanwhile(order_id: &str) -> ServiceError {
    ServiceError::Unavailable(format!("order {order_id} changed concurrently; retry"))
}
