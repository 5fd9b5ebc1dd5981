//! The audit of admin actions (docs/operations.md, "Security"): every admin command that takes
//! effect writes one `admin_audit` row **in its own transaction** — who did it (the access
//! layer's identity: `token:<id>`, `in-process`, `anonymous`), the RPC, what it acted on, its
//! arguments as JSON text and its idempotency key — and each service lists its rows with its
//! admin `ListAdminActions` RPC (message `sagaflow.audit.v1.AdminAction`). One table shape and
//! one implementation for every service that records (point, coupon, inventory).

use sagaflow_proto::audit::v1::AdminAction;
use sqlx::AnyConnection;

use crate::{
    Db, ServiceError,
    db::{now_ms, timestamp_from_ms},
    validate::Validator,
};

/// One admin action to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Who did it, as the access layer established it (`access::identity_of`).
    pub actor: &'a str,
    /// The RPC, e.g. `Restock`.
    pub action: &'a str,
    /// What it acted on: the user id, the coupon code, the sku.
    pub subject: &'a str,
    /// Its arguments as JSON text, e.g. `{"quantity":5}`.
    pub detail_json: String,
    /// The command's idempotency key; empty for a naturally idempotent command.
    pub idempotency_key: &'a str,
}

/// Appends `entry` to `admin_audit` on the caller's transaction (the effect and its audit row
/// commit together, or neither does).
///
/// # Errors
/// The database error.
pub async fn record(conn: &mut AnyConnection, entry: &Entry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_audit (at, actor, action, subject, detail, idempotency_key) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_ms())
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.subject)
    .bind(entry.detail_json.as_str())
    .bind(entry.idempotency_key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    entry_id: i64,
    at: i64,
    actor: String,
    action: String,
    subject: String,
    detail: String,
    idempotency_key: String,
}

/// The newest `limit` audit rows of `db`, newest first: what `ListAdminActions` answers.
/// `limit` 0 means 100.
///
/// # Errors
/// INVALID_ARGUMENT naming `limit` (negative or over 1000); UNAVAILABLE when the database cannot
/// be reached.
pub async fn list(db: &Db, limit: i32) -> Result<Vec<AdminAction>, ServiceError> {
    let mut v = Validator::new();
    let limit = if limit == 0 {
        100
    } else {
        v.page_size("limit", limit)
    };
    v.finish()?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT entry_id, at, actor, action, subject, detail, idempotency_key \
         FROM admin_audit ORDER BY entry_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| AdminAction {
            entry_id: r.entry_id,
            at: Some(timestamp_from_ms(r.at)),
            actor: r.actor,
            action: r.action,
            subject: r.subject,
            detail_json: r.detail,
            idempotency_key: r.idempotency_key,
        })
        .collect())
}
