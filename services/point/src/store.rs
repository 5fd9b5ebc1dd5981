//! The point database (sqlx `Any`, one SQL text for PostgreSQL and SQLite except the row locks).
//! Schema: `migrations/point/{postgres,sqlite}/0001_init.sql`.
//!
//! Every command takes the connection of the transaction begun by
//! [`sagaflow_server::idempotency::execute`] (a store never begins its own transaction), so the
//! balance, the per-order deduction, the ledger row and the stored response commit together. Rows
//! are locked in one order — the order's deduction row, then the balance row — with `FOR UPDATE`
//! on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already serializes writers.

use sagaflow_server::{
    Backend, ServiceError, audit,
    db::now_ms,
    idempotency::late_action::{self, RestorePlan, TombstoneTable, Value},
};
use sqlx::AnyConnection;

use crate::domain::{self, DeductionStatus, LedgerKind, Rejection};

/// The balance of `user_id` in KRW won (0 for an unknown user).
pub(crate) async fn balance(conn: &mut AnyConnection, user_id: &str) -> Result<i64, sqlx::Error> {
    let balance: Option<i64> =
        sqlx::query_scalar("SELECT balance FROM balances WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(balance.unwrap_or(0))
}

/// The balance row of `user_id`, locked on PostgreSQL; `None` when the user has none.
async fn lock_balance(
    conn: &mut AnyConnection,
    backend: Backend,
    user_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let sql = match backend {
        Backend::Postgres => "SELECT balance FROM balances WHERE user_id = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT balance FROM balances WHERE user_id = $1",
    };
    sqlx::query_scalar(sql)
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

async fn set_balance(
    conn: &mut AnyConnection,
    user_id: &str,
    balance: i64,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO balances (user_id, balance, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET balance = excluded.balance, \
             updated_at = excluded.updated_at",
    )
    .bind(user_id)
    .bind(balance)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

async fn append_ledger(
    conn: &mut AnyConnection,
    user_id: &str,
    kind: LedgerKind,
    amount: i64,
    order_id: Option<&str>,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO point_ledger (user_id, kind, amount, order_id, idempotency_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user_id)
    .bind(kind.as_str())
    .bind(amount)
    .bind(order_id)
    .bind(key)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// GrantPoints' effect: adds `amount` to the balance of `user_id` (creating it), appends a
/// GRANT ledger row under `key` and an `admin_audit` row naming `actor` (who granted, as the
/// access layer established it; docs/operations.md, "Security"). Returns the new balance.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `amount` when the balance plus the points held by the user's orders
/// would overflow `i64`.
pub(crate) async fn grant(
    conn: &mut AnyConnection,
    backend: Backend,
    key: &str,
    user_id: &str,
    amount: i64,
    actor: &str,
) -> Result<i64, ServiceError> {
    // Create the row first, so that two grants to a new user serialize on its lock instead of
    // both starting from 0.
    sqlx::query(
        "INSERT INTO balances (user_id, balance, updated_at) VALUES ($1, 0, $2) \
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    let current = lock_balance(conn, backend, user_id).await?.unwrap_or(0);
    let held: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM deductions \
         WHERE user_id = $1 AND status = $2",
    )
    .bind(user_id)
    .bind(DeductionStatus::Deducted.as_str())
    .fetch_one(&mut *conn)
    .await?;
    let Some(balance) = domain::grant(current, held, amount) else {
        return Err(ServiceError::invalid(
            "amount",
            "the balance would exceed the largest int64",
        ));
    };
    set_balance(conn, user_id, balance).await?;
    append_ledger(conn, user_id, LedgerKind::Grant, amount, None, key).await?;
    let entry = audit::Entry {
        actor,
        action: "GrantPoints",
        subject: user_id,
        detail_json: format!("{{\"amount\":{amount}}}"),
        idempotency_key: key,
    };
    audit::record(conn, &entry).await?;
    Ok(balance)
}

/// The order's deduction row, claimed by DeductPoints (DEDUCTED) and RestorePoints (RESTORED; a
/// tombstone of amount 0 when nothing was deducted): the late-action rule of
/// docs/architecture.md, "The service contract", through [`late_action`].
const DEDUCTIONS: TombstoneTable = TombstoneTable {
    table: "deductions",
    subject: &["order_id"],
    tombstone_when: "status = 'RESTORED'",
    timestamps: &["created_at", "updated_at"],
};

fn deduction<'a>(
    user_id: &'a str,
    amount: i64,
    status: DeductionStatus,
) -> [(&'static str, Value<'a>); 3] {
    [
        ("user_id", Value::Text(user_id)),
        ("amount", Value::Int(amount)),
        ("status", Value::Text(status.as_str())),
    ]
}

/// The user and amount (KRW won) of the order's deduction row (locked by the claim that found
/// it).
async fn existing_deduction(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<(String, i64), ServiceError> {
    Ok(
        sqlx::query_as("SELECT user_id, amount FROM deductions WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// DeductPoints' effect: takes `amount` from the balance of `user_id` for `order_id`, records
/// the order's deduction and appends a DEDUCT ledger row under `key`. Returns the new balance.
///
/// # Errors
/// `FAILED_PRECONDITION` `COMPENSATED_BEFORE_ACTION` / `ORDER_ALREADY_DEDUCTED` when the order
/// already has a deduction row; `INSUFFICIENT_POINTS` (metadata `balance`, `requested`) when
/// the balance is smaller than `amount`. On any error the caller discards the savepoint, so
/// nothing changes.
pub(crate) async fn deduct(
    conn: &mut AnyConnection,
    backend: Backend,
    key: &str,
    user_id: &str,
    order_id: &str,
    amount: i64,
) -> Result<i64, ServiceError> {
    let claim = late_action::claim_action(
        conn,
        backend,
        &DEDUCTIONS,
        &[order_id],
        &deduction(user_id, amount, DeductionStatus::Deducted),
        || format!("RestorePoints for order {order_id} came first; its DeductPoints is rejected"),
    )
    .await?;
    let reject = |r| rejected(r, order_id, user_id);
    domain::decide_deduct(claim).map_err(reject)?;
    let current = lock_balance(conn, backend, user_id).await?.unwrap_or(0);
    let balance = domain::take_points(current, amount).map_err(reject)?;
    set_balance(conn, user_id, balance).await?;
    append_ledger(
        conn,
        user_id,
        LedgerKind::Deduct,
        amount,
        Some(order_id),
        key,
    )
    .await?;
    Ok(balance)
}

/// A domain rejection of `user_id`'s command for `order_id` as FAILED_PRECONDITION with its
/// reason and metadata.
fn rejected(rejection: Rejection, order_id: &str, user_id: &str) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: rejection.reason(),
        message: rejection.message(order_id, user_id),
        metadata: rejection.metadata(),
    }
}

/// RestorePoints' effect: gives back exactly what `order_id` deducted and marks its deduction
/// RESTORED (appending a RESTORE ledger row under `key`); records a RESTORED tombstone when the
/// order deducted nothing. Returns (balance of `user_id`, points given back by this call).
///
/// # Errors
/// `FAILED_PRECONDITION` `USER_MISMATCH` when the order's deduction belongs to another user.
pub(crate) async fn restore(
    conn: &mut AnyConnection,
    backend: Backend,
    key: &str,
    user_id: &str,
    order_id: &str,
) -> Result<(i64, i64), ServiceError> {
    let plan = late_action::record(
        conn,
        backend,
        &DEDUCTIONS,
        &[order_id],
        &deduction(user_id, 0, DeductionStatus::Restored),
    )
    .await?;
    let amount = match plan {
        RestorePlan::Tombstone => 0,
        RestorePlan::GiveBack | RestorePlan::Nothing => {
            let (owner, amount) = existing_deduction(conn, order_id).await?;
            domain::decide_restore(&owner, user_id).map_err(|r| rejected(r, order_id, user_id))?;
            amount
        }
    };
    match plan {
        RestorePlan::Tombstone | RestorePlan::Nothing => Ok((balance(conn, user_id).await?, 0)),
        RestorePlan::GiveBack => {
            let current = lock_balance(conn, backend, user_id).await?.unwrap_or(0);
            let Some(balance) = domain::give_back(current, amount) else {
                return Err(ServiceError::Internal(anyhow::anyhow!(
                    "giving back {amount} points to {user_id:?} would overflow the balance"
                )));
            };
            set_balance(conn, user_id, balance).await?;
            sqlx::query("UPDATE deductions SET status = $1, updated_at = $2 WHERE order_id = $3")
                .bind(DeductionStatus::Restored.as_str())
                .bind(now_ms())
                .bind(order_id)
                .execute(&mut *conn)
                .await?;
            append_ledger(
                conn,
                user_id,
                LedgerKind::Restore,
                amount,
                Some(order_id),
                key,
            )
            .await?;
            Ok((balance, amount))
        }
    }
}
