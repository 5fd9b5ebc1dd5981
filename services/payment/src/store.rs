//! The payments and payment_intents tables (sqlx `Any`, one SQL text for PostgreSQL and SQLite;
//! `sagaflow_server::db`).
//!
//! Writes take the connection of an [`sagaflow_server::idempotency::execute`] effect, so that each
//! change commits with its idempotency key (a store never begins its own transaction). Status
//! changes are conditional (`WHERE status = 'STARTED'`): a write that finds the row changed by a
//! concurrent command affects no row, and the caller answers `UNAVAILABLE` so that the command is
//! retried and decided again.
//!
//! The intent writes StartPayment makes around its gateway call ([`open_intent`],
//! [`settle_intent_now`], [`forget_intent`]) commit on their own, outside any idempotency key:
//! the intent must be durable before the gateway is called, whatever happens to the recording.

use sagaflow_server::{
    Backend, Db, ServiceError,
    db::now_ms,
    idempotency::late_action::{self, ActionClaim, RestorePlan, TombstoneTable, Value},
};
use sqlx::{Any, AnyConnection, Executor};
use uuid::Uuid;

use crate::domain::{Intent, IntentStatus, Payment, PaymentRecord, PaymentStatus, Rejection};

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
/// Records that the payment of `order_id` belongs to `user_id` (the first StartPayment's user;
/// a repeat changes nothing).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn record_owner(
    conn: &mut AnyConnection,
    order_id: &str,
    user_id: &str,
) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO payment_owners (order_id, user_id) VALUES ($1, $2) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The user the payment of `order_id` belongs to; `None` when StartPayment recorded none.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn owner<'e, E>(
    executor: E,
    order_id: &str,
) -> Result<Option<String>, ServiceError>
where
    E: Executor<'e, Database = Any>,
{
    let owner: Option<(String,)> =
        sqlx::query_as("SELECT user_id FROM payment_owners WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(executor)
            .await?;
    Ok(owner.map(|(user,)| user))
}

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

/// The order's payment row: StartPayment's STARTED payment, or CancelPayment's CANCELED
/// tombstone without amount (the late-action rule of docs/architecture.md, "The service
/// contract", through [`late_action`]).
const PAYMENTS: TombstoneTable = TombstoneTable {
    table: "payments",
    subject: &["order_id"],
    tombstone_when: "amount IS NULL",
    timestamps: &["created_at", "updated_at"],
};

/// Stores a STARTED payment. Returns `None` when the order got a payment meanwhile (a concurrent
/// StartPayment won).
///
/// # Errors
/// FAILED_PRECONDITION `COMPENSATED_BEFORE_ACTION` when the order has a tombstone (a
/// CancelPayment committed meanwhile); `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn insert_started(
    conn: &mut AnyConnection,
    backend: Backend,
    order_id: &str,
    amount: i64,
    payment_method: &str,
    authorization_ref: &str,
) -> Result<Option<Payment>, ServiceError> {
    let payment_id = Uuid::now_v7().to_string();
    let claim = late_action::claim_action(
        conn,
        backend,
        &PAYMENTS,
        &[order_id],
        &[
            ("payment_id", Value::Text(&payment_id)),
            ("amount", Value::Int(amount)),
            ("payment_method", Value::Text(payment_method)),
            ("status", Value::Text(PaymentStatus::Started.as_str())),
            ("authorization_ref", Value::Text(authorization_ref)),
        ],
        || Rejection::CompensatedBeforeAction.message(order_id),
    )
    .await?;
    Ok((claim == ActionClaim::Inserted).then(|| Payment {
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
    backend: Backend,
    order_id: &str,
) -> Result<bool, ServiceError> {
    let plan = late_action::record(
        conn,
        backend,
        &PAYMENTS,
        &[order_id],
        &[
            ("payment_id", Value::Text(&Uuid::now_v7().to_string())),
            ("status", Value::Text(PaymentStatus::Canceled.as_str())),
        ],
    )
    .await?;
    Ok(plan == RestorePlan::Tombstone)
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

#[derive(Debug, sqlx::FromRow)]
struct IntentRow {
    order_id: String,
    gateway_key: String,
    amount: Option<i64>,
    payment_method: Option<String>,
    status: String,
    void_ref: Option<String>,
}

impl IntentRow {
    fn into_intent(self) -> Result<Intent, ServiceError> {
        let status = IntentStatus::parse(&self.status).ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!(
                "payment intent of order {} has unknown status {:?}",
                self.order_id,
                self.status
            ))
        })?;
        Ok(Intent {
            order_id: self.order_id,
            gateway_key: self.gateway_key,
            amount: self.amount,
            payment_method: self.payment_method,
            status,
            void_ref: self.void_ref,
        })
    }
}

/// The authorization intent of `order_id`, if any.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn find_intent<'e, E>(
    executor: E,
    order_id: &str,
) -> Result<Option<Intent>, ServiceError>
where
    E: Executor<'e, Database = Any>,
{
    let row: Option<IntentRow> = sqlx::query_as(
        "SELECT order_id, gateway_key, amount, payment_method, status, void_ref \
         FROM payment_intents WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(executor)
    .await?;
    row.map(IntentRow::into_intent).transpose()
}

/// Commits, in a transaction of its own, an AUTHORIZING intent to authorize `amount` (KRW won)
/// with `payment_method` under the gateway key `gateway_key`, unless the order has an intent
/// already; returns the order's intent as stored after that (ours, or the earlier one: a racing
/// StartPayment's, a settled one, or the VOIDED claim of a CancelPayment that came first).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails (then the gateway must not be called).
pub(crate) async fn open_intent(
    db: &Db,
    order_id: &str,
    gateway_key: &str,
    amount: i64,
    payment_method: &str,
) -> Result<Intent, ServiceError> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO payment_intents (order_id, gateway_key, amount, payment_method, status, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, 'AUTHORIZING', $5, $6) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(gateway_key)
    .bind(amount)
    .bind(payment_method)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let intent = find_intent(&mut *tx, order_id).await?.ok_or_else(|| {
        ServiceError::Internal(anyhow::anyhow!(
            "the payment intent of order {order_id} is missing right after its insert"
        ))
    })?;
    tx.commit().await?;
    Ok(intent)
}

/// Moves the AUTHORIZING intent of `order_id` to `to` (with the gateway's void reference for
/// VOIDED, if something was voided). Returns false when there is no open intent (settled
/// already, or none).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn settle_intent(
    conn: &mut AnyConnection,
    order_id: &str,
    to: IntentStatus,
    void_ref: Option<&str>,
) -> Result<bool, ServiceError> {
    let updated = sqlx::query(
        "UPDATE payment_intents SET status = $1, void_ref = $2, updated_at = $3 \
         WHERE order_id = $4 AND status = 'AUTHORIZING'",
    )
    .bind(to.as_str())
    .bind(void_ref)
    .bind(now_ms())
    .bind(order_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// [`settle_intent`] in a transaction of its own.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn settle_intent_now(
    db: &Db,
    order_id: &str,
    to: IntentStatus,
    void_ref: Option<&str>,
) -> Result<bool, ServiceError> {
    let mut tx = db.begin().await?;
    let settled = settle_intent(&mut tx, order_id, to, void_ref).await?;
    tx.commit().await?;
    Ok(settled)
}

/// Stores the VOIDED intent, without amount, of an order that has none: the claim of a
/// CancelPayment that came before any StartPayment. Returns false when the order got an intent
/// meanwhile (a StartPayment committed one).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn claim_intent(
    conn: &mut AnyConnection,
    order_id: &str,
    gateway_key: &str,
) -> Result<bool, ServiceError> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO payment_intents (order_id, gateway_key, status, created_at, updated_at) \
         VALUES ($1, $2, 'VOIDED', $3, $4) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(gateway_key)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Deletes, in a transaction of its own, the AUTHORIZING intent of `order_id` with these terms
/// (`amount` in KRW won), after the gateway refused the request without authorizing anything
/// (an unknown card token): an invalid request leaves nothing behind. Returns whether it was
/// deleted.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn forget_intent(
    db: &Db,
    order_id: &str,
    amount: i64,
    payment_method: &str,
) -> Result<bool, ServiceError> {
    let mut tx = db.begin().await?;
    let deleted = sqlx::query(
        "DELETE FROM payment_intents WHERE order_id = $1 AND status = 'AUTHORIZING' \
         AND amount = $2 AND payment_method = $3",
    )
    .bind(order_id)
    .bind(amount)
    .bind(payment_method)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(deleted == 1)
}
