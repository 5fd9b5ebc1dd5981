//! The proto form of a payment, for the responses the commands store and the queries return.

use sagaflow_proto::payment::v1 as pb;

use crate::domain::{Payment, PaymentStatus};

/// The proto form of a payment (the responses the commands store carry it).
pub(crate) fn to_proto(payment: &Payment) -> pb::Payment {
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
