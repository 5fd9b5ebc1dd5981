//! The orders, order_lines and order_status_history tables (sqlx `Any`, one SQL text for
//! PostgreSQL and SQLite; `sagaflow_server::db`).
//!
//! Writes run on the connection of an [`sagaflow_server::idempotency::execute`] effect, so an
//! order change, its status history row, its outbox event and the idempotency key commit
//! together (a store never begins its own transaction; docs/architecture.md, "Events"). Status
//! changes are conditional (`WHERE status = 'PENDING'`); the first statement of each is the
//! `UPDATE` of the order row, which also orders concurrent writers of one order on PostgreSQL.

use std::collections::HashMap;

use sagaflow_server::{ServiceError, db::now_ms};
use sqlx::AnyConnection;

use crate::{
    domain::{Amounts, FailureReason, Order, OrderLine, OrderStatus},
    events::{self, OrderEvent},
};

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    order_id: String,
    user_id: String,
    coupon_code: Option<String>,
    subtotal: i64,
    discount: i64,
    points: i64,
    payable: i64,
    status: String,
    failure_reason: Option<String>,
    payment_method: String,
    created_at: i64,
    updated_at: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct LineRow {
    order_id: String,
    sku: String,
    quantity: i64,
    unit_price: i64,
}

const ORDER_COLUMNS: &str = "order_id, user_id, coupon_code, subtotal, discount, points, \
     payable, status, failure_reason, payment_method, created_at, updated_at";

fn corrupt(order_id: &str, what: &str) -> ServiceError {
    ServiceError::Internal(anyhow::anyhow!("order {order_id}: {what}"))
}

impl OrderRow {
    fn into_order(self, lines: Vec<OrderLine>) -> Result<Order, ServiceError> {
        let status = OrderStatus::parse(&self.status)
            .ok_or_else(|| corrupt(&self.order_id, "unknown status"))?;
        let failure_reason = match self.failure_reason.as_deref() {
            None => None,
            Some(r) => Some(
                FailureReason::parse(r)
                    .ok_or_else(|| corrupt(&self.order_id, "unknown failure reason"))?,
            ),
        };
        Ok(Order {
            order_id: self.order_id,
            user_id: self.user_id,
            lines,
            coupon_code: self.coupon_code,
            amounts: Amounts {
                subtotal: self.subtotal,
                discount: self.discount,
                points: self.points,
                payable: self.payable,
            },
            status,
            failure_reason,
            payment_method: self.payment_method,
            created_at_ms: self.created_at,
            updated_at_ms: self.updated_at,
        })
    }
}

impl LineRow {
    fn into_line(self) -> Result<OrderLine, ServiceError> {
        let quantity =
            i32::try_from(self.quantity).map_err(|_| corrupt(&self.order_id, "quantity"))?;
        Ok(OrderLine {
            sku: self.sku,
            quantity,
            unit_price: self.unit_price,
        })
    }
}

/// The order `order_id` with its lines, if it exists.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn load(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<Option<Order>, ServiceError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1");
    let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let lines: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, sku, quantity, unit_price FROM order_lines \
         WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let lines = lines
        .into_iter()
        .map(LineRow::into_line)
        .collect::<Result<_, _>>()?;
    row.into_order(lines).map(Some)
}

/// Stores a new PENDING order placed under `request_id`, its lines, its first status history
/// row and its OrderCreated outbox event (id `event_id`, sequence 1: the order's first).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails (a duplicate `request_id` is a unique
/// violation: the idempotency store prevents it before this runs).
pub(crate) async fn insert_order(
    conn: &mut AnyConnection,
    request_id: &str,
    order: &Order,
    created: &OrderEvent,
    event_id: &str,
) -> Result<(), ServiceError> {
    let sql = format!(
        "INSERT INTO orders (request_id, {ORDER_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    );
    let a = order.amounts;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(request_id)
        .bind(&order.order_id)
        .bind(&order.user_id)
        .bind(order.coupon_code.as_deref())
        .bind(a.subtotal)
        .bind(a.discount)
        .bind(a.points)
        .bind(a.payable)
        .bind(order.status.as_str())
        .bind(order.failure_reason.map(FailureReason::as_str))
        .bind(&order.payment_method)
        .bind(order.created_at_ms)
        .bind(order.updated_at_ms)
        .execute(&mut *conn)
        .await?;
    for (line_no, line) in order.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&order.order_id)
        .bind(i64::try_from(line_no).unwrap_or(i64::MAX))
        .bind(&line.sku)
        .bind(i64::from(line.quantity))
        .bind(line.unit_price)
        .execute(&mut *conn)
        .await?;
    }
    append_history(conn, order).await?;
    events::append_as(conn, event_id, &order.order_id, created).await?;
    Ok(())
}

/// Stores new amounts of a PENDING order. Returns false when the order is no longer PENDING.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn update_amounts(
    conn: &mut AnyConnection,
    order_id: &str,
    amounts: Amounts,
    now: i64,
) -> Result<bool, ServiceError> {
    let updated = sqlx::query(
        "UPDATE orders SET discount = $1, payable = $2, updated_at = $3 \
         WHERE order_id = $4 AND status = 'PENDING'",
    )
    .bind(amounts.discount)
    .bind(amounts.payable)
    .bind(now)
    .bind(order_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Moves a PENDING order to `order`'s (terminal) status, amounts and failure reason, appends the
/// status history row and the outbox `event`. Returns false when the order is no longer
/// PENDING (nothing written).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn finish(
    conn: &mut AnyConnection,
    order: &Order,
    event: &OrderEvent,
) -> Result<bool, ServiceError> {
    let updated = sqlx::query(
        "UPDATE orders SET status = $1, failure_reason = $2, discount = $3, payable = $4, \
         updated_at = $5 WHERE order_id = $6 AND status = 'PENDING'",
    )
    .bind(order.status.as_str())
    .bind(order.failure_reason.map(FailureReason::as_str))
    .bind(order.amounts.discount)
    .bind(order.amounts.payable)
    .bind(order.updated_at_ms)
    .bind(&order.order_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated != 1 {
        return Ok(false);
    }
    append_history(conn, order).await?;
    events::append(conn, &order.order_id, event).await?;
    Ok(true)
}

async fn append_history(conn: &mut AnyConnection, order: &Order) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO order_status_history (order_id, seq, status, failure_reason, changed_at) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 \
         FROM order_status_history WHERE order_id = $5",
    )
    .bind(&order.order_id)
    .bind(order.status.as_str())
    .bind(order.failure_reason.map(FailureReason::as_str))
    .bind(now_ms())
    .bind(&order.order_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The position after which a page of ListOrders starts: the last order of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) created_at_ms: i64,
    pub(crate) order_id: String,
}

/// Up to `limit` orders of `user_id`, newest first (`created_at` desc, then `order_id` desc),
/// optionally of one status, after `after`.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn list(
    conn: &mut AnyConnection,
    user_id: &str,
    status: Option<OrderStatus>,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<Order>, ServiceError> {
    // No cursor: start above every real order (created_at < i64::MAX).
    let (created_at, order_id) =
        after.map_or((i64::MAX, ""), |c| (c.created_at_ms, c.order_id.as_str()));
    let status = status.map_or("", OrderStatus::as_str);
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND ($2 = '' OR status = $2) \
         AND (created_at < $3 OR (created_at = $3 AND order_id < $4)) \
         ORDER BY created_at DESC, order_id DESC LIMIT $5"
    );
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(status)
        .bind(created_at)
        .bind(order_id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The lines of exactly these orders (the page may hold up to 1000: one query, not one per
    // order). The statement is built from placeholders only.
    let placeholders = (1..=rows.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let lines_sql = format!(
        "SELECT order_id, sku, quantity, unit_price FROM order_lines \
         WHERE order_id IN ({placeholders}) ORDER BY order_id, line_no"
    );
    let mut lines_query = sqlx::query_as::<_, LineRow>(sqlx::AssertSqlSafe(lines_sql));
    for row in &rows {
        lines_query = lines_query.bind(row.order_id.clone());
    }
    let line_rows = lines_query.fetch_all(&mut *conn).await?;
    let mut lines: HashMap<String, Vec<OrderLine>> = HashMap::new();
    for row in line_rows {
        let order_id = row.order_id.clone();
        lines.entry(order_id).or_default().push(row.into_line()?);
    }
    rows.into_iter()
        .map(|row| {
            let order_lines = lines.remove(&row.order_id).unwrap_or_default();
            row.into_order(order_lines)
        })
        .collect()
}
