//! The inventory database (sqlx `Any`, one SQL text for PostgreSQL and SQLite except the row
//! locks). Schema: `migrations/inventory/{postgres,sqlite}/0001_init.sql`.
//!
//! Every function takes the connection of a transaction begun by its caller (a store never begins
//! its own): the commands run inside [`sagaflow_server::idempotency::execute`]'s transaction, so
//! the effect and the stored response commit together. Rows are locked with `FOR UPDATE` on
//! PostgreSQL; on SQLite the transaction is `BEGIN IMMEDIATE`, which already serializes writers.

use std::collections::HashMap;

use sagaflow_server::{
    Backend, ServiceError, audit,
    db::now_ms,
    idempotency::late_action::{self, RestorePlan, TombstoneTable, Value},
};
use sqlx::AnyConnection;

use sagaflow_proto::inventory::v1::{
    InventoryDeductedEvent, InventoryRestockedEvent, InventoryRestoredEvent,
};

use crate::{
    domain::{self, Rejection, ReservationStatus, StockLine},
    events::{self, InventoryEvent},
};

/// A `products` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct ProductRow {
    pub(crate) sku: String,
    pub(crate) name: String,
    /// KRW won per unit.
    pub(crate) unit_price: i64,
    /// Units on hand.
    pub(crate) stock: i64,
}

const PRODUCT_COLUMNS_BY_SKU: &str =
    "SELECT sku, name, unit_price, stock FROM products WHERE sku = $1";

/// The product `sku`, if it exists.
pub(crate) async fn get_product(
    conn: &mut AnyConnection,
    sku: &str,
) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as(PRODUCT_COLUMNS_BY_SKU)
        .bind(sku)
        .fetch_optional(conn)
        .await
}

/// The products among `skus` that exist, in the order of `skus` (at most 100 skus: the
/// statement has one placeholder per sku).
pub(crate) async fn get_products(
    conn: &mut AnyConnection,
    skus: &[String],
) -> Result<Vec<ProductRow>, sqlx::Error> {
    if skus.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders = (1..=skus.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Only placeholders are formatted into the statement; the skus are bound.
    let sql =
        format!("SELECT sku, name, unit_price, stock FROM products WHERE sku IN ({placeholders})");
    let mut query = sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(sql));
    for sku in skus {
        query = query.bind(sku.as_str());
    }
    let mut found: HashMap<String, ProductRow> = query
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|p| (p.sku.clone(), p))
        .collect();
    Ok(skus.iter().filter_map(|s| found.remove(s)).collect())
}

/// Up to `limit` products with an sku after `after` (empty: from the start), by sku.
pub(crate) async fn list_products(
    conn: &mut AnyConnection,
    after: &str,
    limit: i64,
) -> Result<Vec<ProductRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, name, unit_price, stock FROM products WHERE sku > $1 ORDER BY sku LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Creates the product with stock 0, or updates its name and price (stock unchanged), with the
/// `admin_audit` row naming `actor`, on the caller's transaction.
pub(crate) async fn upsert_product(
    conn: &mut AnyConnection,
    sku: &str,
    name: &str,
    unit_price: i64,
    actor: &str,
) -> Result<ProductRow, sqlx::Error> {
    let entry = audit::Entry {
        actor,
        action: "UpsertProduct",
        subject: sku,
        detail_json: serde_json::json!({ "name": name, "unit_price": unit_price }).to_string(),
        idempotency_key: "",
    };
    audit::record(conn, &entry).await?;
    sqlx::query_as(
        "INSERT INTO products (sku, name, unit_price, stock, created_at, updated_at) \
         VALUES ($1, $2, $3, 0, $4, $4) \
         ON CONFLICT (sku) DO UPDATE SET name = excluded.name, \
             unit_price = excluded.unit_price, updated_at = excluded.updated_at \
         RETURNING sku, name, unit_price, stock",
    )
    .bind(sku)
    .bind(name)
    .bind(unit_price)
    .bind(now_ms())
    .fetch_one(conn)
    .await
}

/// Reads the product row `sku` for update: locked until the transaction ends on PostgreSQL.
async fn lock_product(
    conn: &mut AnyConnection,
    backend: Backend,
    sku: &str,
) -> Result<Option<ProductRow>, sqlx::Error> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT sku, name, unit_price, stock FROM products WHERE sku = $1 FOR UPDATE"
        }
        Backend::Sqlite => PRODUCT_COLUMNS_BY_SKU,
    };
    sqlx::query_as(sql).bind(sku).fetch_optional(conn).await
}

async fn set_stock(conn: &mut AnyConnection, sku: &str, stock: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE products SET stock = $1, updated_at = $2 WHERE sku = $3")
        .bind(stock)
        .bind(now_ms())
        .bind(sku)
        .execute(conn)
        .await?;
    Ok(())
}

/// Restock's effect: adds `quantity` units to `sku`, records the restock in the ledger under
/// `key`, appends its InventoryRestocked event to the outbox and its `admin_audit` row naming
/// `actor`.
///
/// # Errors
/// `NOT_FOUND` for an unknown sku; `INVALID_ARGUMENT` naming `quantity` when the stock would
/// overflow `i64`; the database's error otherwise.
pub(crate) async fn restock(
    conn: &mut AnyConnection,
    backend: Backend,
    key: &str,
    sku: &str,
    quantity: i64,
    actor: &str,
) -> Result<ProductRow, ServiceError> {
    let Some(mut product) = lock_product(conn, backend, sku).await? else {
        return Err(ServiceError::NotFound(format!("product {sku:?}")));
    };
    let Some(stock) = domain::add(product.stock, quantity) else {
        return Err(ServiceError::invalid(
            "quantity",
            "the stock would exceed the largest int64",
        ));
    };
    set_stock(conn, sku, stock).await?;
    sqlx::query(
        "INSERT INTO restocks (idempotency_key, sku, quantity, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(key)
    .bind(sku)
    .bind(quantity)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    let event = InventoryEvent::Restocked(InventoryRestockedEvent {
        sku: sku.to_owned(),
        delta: quantity,
        stock_after: stock,
    });
    events::append(conn, &event).await?;
    let entry = audit::Entry {
        actor,
        action: "Restock",
        subject: sku,
        detail_json: format!("{{\"quantity\":{quantity}}}"),
        idempotency_key: key,
    };
    audit::record(conn, &entry).await?;
    product.stock = stock;
    Ok(product)
}

/// The order's reservation row, claimed by DeductInventory (RESERVED) and RestoreInventory
/// (RELEASED; a tombstone when it has no lines): the late-action rule of docs/architecture.md,
/// "The service contract", through [`late_action`].
const RESERVATIONS: TombstoneTable = TombstoneTable {
    table: "reservations",
    subject: &["order_id"],
    tombstone_when: "status = 'RELEASED'",
    timestamps: &["created_at", "updated_at"],
};

fn reservation(status: ReservationStatus) -> [(&'static str, Value<'static>); 1] {
    [("status", Value::Text(status.as_str()))]
}

/// DeductInventory's effect: takes every line for `order_id`, or none.
///
/// Locks the product rows in sku order ([`domain::lock_order`]), checks every line, then takes
/// the stock and records the reservation with its lines and an InventoryDeducted event per line.
///
/// # Errors
/// `FAILED_PRECONDITION` `COMPENSATED_BEFORE_ACTION` / `ORDER_ALREADY_DEDUCTED` when the order
/// already has a reservation; `NOT_FOUND` for an unknown sku; `FAILED_PRECONDITION`
/// `OUT_OF_STOCK` (metadata `sku`, `requested`, `available`) for the first line, in sku order,
/// that lacks stock. On any error the caller discards the savepoint, so nothing changes.
pub(crate) async fn deduct(
    conn: &mut AnyConnection,
    backend: Backend,
    order_id: &str,
    lines: &[StockLine],
) -> Result<(), ServiceError> {
    let claim = late_action::claim_action(
        conn,
        backend,
        &RESERVATIONS,
        &[order_id],
        &reservation(ReservationStatus::Reserved),
        || {
            format!(
                "RestoreInventory for order {order_id} came first; its DeductInventory is rejected"
            )
        },
    )
    .await?;
    domain::decide_deduct(claim).map_err(|r| rejected(order_id, &r))?;
    let ordered = domain::lock_order(lines);
    let mut remaining = Vec::with_capacity(ordered.len());
    for line in &ordered {
        let Some(product) = lock_product(conn, backend, &line.sku).await? else {
            return Err(ServiceError::NotFound(format!("product {:?}", line.sku)));
        };
        remaining.push(domain::take_line(product.stock, line).map_err(|r| rejected(order_id, &r))?);
    }
    for (line, left) in ordered.iter().zip(remaining) {
        set_stock(conn, &line.sku, left).await?;
        sqlx::query("INSERT INTO reservation_lines (order_id, sku, quantity) VALUES ($1, $2, $3)")
            .bind(order_id)
            .bind(line.sku.as_str())
            .bind(line.quantity)
            .execute(&mut *conn)
            .await?;
        let event = InventoryEvent::Deducted(InventoryDeductedEvent {
            sku: line.sku.clone(),
            order_id: order_id.to_owned(),
            quantity: units(line.quantity)?,
            stock_after: left,
        });
        events::append(conn, &event).await?;
    }
    Ok(())
}

/// A line's units as the events carry them (requests take `int32` quantities, so a stored line
/// always fits).
fn units(quantity: i64) -> Result<i32, ServiceError> {
    i32::try_from(quantity)
        .map_err(|_| ServiceError::Internal(anyhow::anyhow!("a stock line of {quantity} units")))
}

/// A domain rejection of a command for `order_id` as FAILED_PRECONDITION with its reason and
/// metadata.
fn rejected(order_id: &str, rejection: &Rejection) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: rejection.reason(),
        message: rejection.message(order_id),
        metadata: rejection.metadata(),
    }
}

/// RestoreInventory's effect: gives back exactly what `order_id` took (an InventoryRestored
/// event per line) and marks its reservation RELEASED; records a RELEASED tombstone when the order took nothing. Returns the lines given
/// back by this call (empty for a tombstone or an already released reservation).
///
/// # Errors
/// The database's error; `INTERNAL` if giving the stock back would overflow `i64` (impossible
/// unless a product was restocked to nearly 2^63 units meanwhile).
pub(crate) async fn restore(
    conn: &mut AnyConnection,
    backend: Backend,
    order_id: &str,
) -> Result<Vec<StockLine>, ServiceError> {
    let plan = late_action::record(
        conn,
        backend,
        &RESERVATIONS,
        &[order_id],
        &reservation(ReservationStatus::Released),
    )
    .await?;
    match plan {
        RestorePlan::Tombstone | RestorePlan::Nothing => return Ok(Vec::new()),
        RestorePlan::GiveBack => {}
    }
    let lines: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let lines = domain::lock_order(
        &lines
            .into_iter()
            .map(|(sku, quantity)| StockLine { sku, quantity })
            .collect::<Vec<_>>(),
    );
    for line in &lines {
        let Some(product) = lock_product(conn, backend, &line.sku).await? else {
            return Err(ServiceError::Internal(anyhow::anyhow!(
                "product {:?} of order {order_id}'s reservation is gone",
                line.sku
            )));
        };
        let Some(stock) = domain::add(product.stock, line.quantity) else {
            return Err(ServiceError::Internal(anyhow::anyhow!(
                "giving back {} units of {:?} would overflow the stock",
                line.quantity,
                line.sku
            )));
        };
        set_stock(conn, &line.sku, stock).await?;
        let event = InventoryEvent::Restored(InventoryRestoredEvent {
            sku: line.sku.clone(),
            order_id: order_id.to_owned(),
            quantity: units(line.quantity)?,
            stock_after: stock,
        });
        events::append(conn, &event).await?;
    }
    sqlx::query("UPDATE reservations SET status = $1, updated_at = $2 WHERE order_id = $3")
        .bind(ReservationStatus::Released.as_str())
        .bind(now_ms())
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    Ok(lines)
}
