//! The payments table (sqlx `Any`, one SQL text for PostgreSQL and SQLite; `sagaflow_server::db`).
//!
//! Writes take the connection of an [`sagaflow_server::idempotency::execute`] effect, so that each
//! change commits with its idempotency key (STYLE rule 24). Status changes are conditional
//! (`WHERE status = 'STARTED'`): a write that finds the row changed by a concurrent command
//! affects no row, and the caller answers `UNAVAILABLE` so that the command is retried and decided
//! again.

use sagaflow_server::{ServiceError, db::now_ms};
use sqlx::{Any, AnyConnection, Executor};
use uuid::Uuid;

use crate::domain::{Payment, PaymentRecord, PaymentStatus};

#[derive(Debug, sqlx::FromRow)]
struct PaymentRow {
    payment_id: String,
    order_id: String,
    amount: Option<i64>,
    payment_method: Option<String>,
    status: String,
    authorization_ref: Option<String>,
}

impl PaymentRow {
    fn into_record(self) -> Result<PaymentRecord, ServiceError> {
        let status = PaymentStatus::parse(&self.status).ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!(
                "payment {} has unknown status {:?}",
                self.payment_id,
                self.status
            ))
        })?;
        match (self.amount, self.payment_method, self.authorization_ref) {
            (None, _, _) => Ok(PaymentRecord::Tombstone {
                payment_id: self.payment_id,
                order_id: self.order_id,
            }),
            (Some(amount), Some(payment_method), Some(authorization_ref)) => {
                Ok(PaymentRecord::Payment(Payment {
                    payment_id: self.payment_id,
                    order_id: self.order_id,
                    amount,
                    payment_method,
                    status,
                    authorization_ref,
                }))
            }
            _ => Err(ServiceError::Internal(anyhow::anyhow!(
                "payment {} has an amount but no method or authorization",
                self.payment_id
            ))),
        }
    }
}

/// The payment record of `order_id`, if any.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn find<'e, E>(
    executor: E,
    order_id: &str,
) -> Result<Option<PaymentRecord>, ServiceError>
where
    E: Executor<'e, Database = Any>,
{
    let row: Option<PaymentRow> = sqlx::query_as(
        "SELECT payment_id, order_id, amount, payment_method, status, authorization_ref \
         FROM payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(executor)
    .await?;
    row.map(PaymentRow::into_record).transpose()
}

/// Stores a STARTED payment. Returns `None` when the order got a payment row meanwhile (a
/// concurrent StartPayment or CancelPayment won).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn insert_started(
    conn: &mut AnyConnection,
    order_id: &str,
    amount: i64,
    payment_method: &str,
    authorization_ref: &str,
) -> Result<Option<Payment>, ServiceError> {
    let payment_id = Uuid::now_v7().to_string();
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO payments (payment_id, order_id, amount, payment_method, status, \
         authorization_ref, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'STARTED', $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&payment_id)
    .bind(order_id)
    .bind(amount)
    .bind(payment_method)
    .bind(authorization_ref)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((inserted == 1).then(|| Payment {
        payment_id,
        order_id: order_id.to_owned(),
        amount,
        payment_method: payment_method.to_owned(),
        status: PaymentStatus::Started,
        authorization_ref: authorization_ref.to_owned(),
    }))
}

/// Stores the CANCELED tombstone of an order that has no payment. Returns false when the order
/// got a payment row meanwhile.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn insert_tombstone(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<bool, ServiceError> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO payments (payment_id, order_id, status, created_at, updated_at) \
         VALUES ($1, $2, 'CANCELED', $3, $4) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(order_id)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A status change of a started payment, with the gateway reference of the operation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transition<'a> {
    /// STARTED → CANCELED (voided).
    Void(&'a str),
    /// STARTED → COMPLETED (captured).
    Capture(&'a str),
    /// COMPLETED → REFUNDED.
    Refund(&'a str),
}

/// Applies `transition` to the payment of `order_id` if it is still in the source status.
/// Returns the updated payment, or `None` when the row was changed meanwhile.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn transition(
    conn: &mut AnyConnection,
    payment: &Payment,
    transition: Transition<'_>,
) -> Result<Option<Payment>, ServiceError> {
    let (sql, reference, to) = match transition {
        Transition::Void(r) => (
            "UPDATE payments SET status = 'CANCELED', void_ref = $1, updated_at = $2 \
             WHERE order_id = $3 AND status = 'STARTED'",
            r,
            PaymentStatus::Canceled,
        ),
        Transition::Capture(r) => (
            "UPDATE payments SET status = 'COMPLETED', capture_ref = $1, updated_at = $2 \
             WHERE order_id = $3 AND status = 'STARTED'",
            r,
            PaymentStatus::Completed,
        ),
        Transition::Refund(r) => (
            "UPDATE payments SET status = 'REFUNDED', refund_ref = $1, updated_at = $2 \
             WHERE order_id = $3 AND status = 'COMPLETED'",
            r,
            PaymentStatus::Refunded,
        ),
    };
    let updated = sqlx::query(sql)
        .bind(reference)
        .bind(now_ms())
        .bind(&payment.order_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok((updated == 1).then(|| Payment {
        status: to,
        ..payment.clone()
    }))
}
