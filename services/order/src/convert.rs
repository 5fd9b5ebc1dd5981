//! The proto form of an order, for responses and outbox events.

use sagaflow_proto::order::v1 as pb;
use sagaflow_server::db::timestamp_from_ms;

use crate::domain::{FailureReason, Order, OrderStatus};

pub(crate) fn status_to_proto(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Completed => pb::OrderStatus::Completed,
        OrderStatus::Failed => pb::OrderStatus::Failed,
    }
}

pub(crate) fn reason_from_proto(value: i32) -> Option<FailureReason> {
    match pb::FailureReason::try_from(value).ok()? {
        pb::FailureReason::Unspecified => None,
        pb::FailureReason::CouponUnavailable => Some(FailureReason::CouponUnavailable),
        pb::FailureReason::OutOfStock => Some(FailureReason::OutOfStock),
        pb::FailureReason::PaymentDeclined => Some(FailureReason::PaymentDeclined),
        pb::FailureReason::InsufficientPoints => Some(FailureReason::InsufficientPoints),
        pb::FailureReason::DeadlineExceeded => Some(FailureReason::DeadlineExceeded),
        pb::FailureReason::Canceled => Some(FailureReason::Canceled),
        pb::FailureReason::Internal => Some(FailureReason::Internal),
    }
}

pub(crate) fn reason_to_proto(reason: FailureReason) -> pb::FailureReason {
    match reason {
        FailureReason::CouponUnavailable => pb::FailureReason::CouponUnavailable,
        FailureReason::OutOfStock => pb::FailureReason::OutOfStock,
        FailureReason::PaymentDeclined => pb::FailureReason::PaymentDeclined,
        FailureReason::InsufficientPoints => pb::FailureReason::InsufficientPoints,
        FailureReason::DeadlineExceeded => pb::FailureReason::DeadlineExceeded,
        FailureReason::Canceled => pb::FailureReason::Canceled,
        FailureReason::Internal => pb::FailureReason::Internal,
    }
}

/// The proto form of an order (responses and outbox events carry it).
pub(crate) fn to_proto(order: &Order) -> pb::Order {
    pb::Order {
        order_id: order.order_id.clone(),
        user_id: order.user_id.clone(),
        lines: order
            .lines
            .iter()
            .map(|l| pb::OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        coupon_code: order.coupon_code.clone().unwrap_or_default(),
        subtotal: order.amounts.subtotal,
        discount: order.amounts.discount,
        points: order.amounts.points,
        payable: order.amounts.payable,
        status: status_to_proto(order.status).into(),
        failure_reason: order
            .failure_reason
            .map_or(pb::FailureReason::Unspecified, reason_to_proto)
            .into(),
        // The orchestrator runs each order's saga with the order id as the saga id.
        saga_id: order.order_id.clone(),
        created_at: Some(timestamp_from_ms(order.created_at_ms)),
        updated_at: Some(timestamp_from_ms(order.updated_at_ms)),
    }
}
