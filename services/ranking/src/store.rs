//! The inbox, product_sales and product_view tables (sqlx `Any`, one SQL text for PostgreSQL
//! and SQLite).

use sagaflow_server::{ServiceError, db::now_ms};
use sqlx::AnyConnection;

use crate::domain::{CompletedOrder, InventoryChange, ProductSales, ProductView};

/// The inbox's `event_type` of OrderCompleted rows (the only ones with an `order_id`).
const ORDER_COMPLETED: &str = "OrderCompleted";

/// Records `order` under `event_id`: an inbox row, then each line added to its product's sales,
/// on the caller's transaction. Returns false (and changes nothing) when the order was already
/// counted.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn record_order(
    conn: &mut AnyConnection,
    event_id: &str,
    order: &CompletedOrder,
) -> Result<bool, ServiceError> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, event_type, order_id, recorded_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(ORDER_COMPLETED)
    .bind(&order.order_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    for line in &order.lines {
        sqlx::query(
            "INSERT INTO product_sales (sku, units_sold, orders, updated_at) \
             VALUES ($1, $2, 1, $3) \
             ON CONFLICT (sku) DO UPDATE SET \
                 units_sold = product_sales.units_sold + excluded.units_sold, \
                 orders = product_sales.orders + 1, \
                 updated_at = excluded.updated_at",
        )
        .bind(&line.sku)
        .bind(line.units)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

#[derive(Debug, sqlx::FromRow)]
struct SalesRow {
    sku: String,
    units_sold: i64,
    orders: i64,
}

/// The `limit` best-selling products in ranking order ([`crate::domain::rank`]).
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn top_products(
    pool: &sqlx::AnyPool,
    limit: i64,
) -> Result<Vec<ProductSales>, ServiceError> {
    let rows: Vec<SalesRow> = sqlx::query_as(
        "SELECT sku, units_sold, orders FROM product_sales \
         ORDER BY units_sold DESC, sku LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ProductSales {
            sku: r.sku,
            units_sold: r.units_sold,
            orders: r.orders,
        })
        .collect())
}

/// Records one Inventory event under `event_id` (`event_type` is its type name, for example
/// `InventoryDeducted`): an inbox row, then the sku's product view, on the caller's transaction
/// (the upsert is [`crate::domain::apply_change`] in SQL: the sums take every event, `stock` and
/// `last_sequence` only an event with a higher sequence). Returns false (and changes nothing)
/// when the event id was already recorded.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn record_inventory_change(
    conn: &mut AnyConnection,
    event_id: &str,
    event_type: &str,
    change: &InventoryChange,
) -> Result<bool, ServiceError> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, event_type, recorded_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(event_type)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    // SET expressions see the row as it was before the update (both backends), so `stock` and
    // `last_sequence` compare against the same stored `last_sequence`.
    sqlx::query(
        "INSERT INTO product_view (sku, stock, units_sold, events, last_sequence, updated_at) \
         VALUES ($1, $2, $3, 1, $4, $5) \
         ON CONFLICT (sku) DO UPDATE SET \
             units_sold = product_view.units_sold + excluded.units_sold, \
             events = product_view.events + 1, \
             stock = CASE WHEN excluded.last_sequence > product_view.last_sequence \
                 THEN excluded.stock ELSE product_view.stock END, \
             last_sequence = CASE WHEN excluded.last_sequence > product_view.last_sequence \
                 THEN excluded.last_sequence ELSE product_view.last_sequence END, \
             updated_at = excluded.updated_at",
    )
    .bind(&change.sku)
    .bind(change.stock_after)
    .bind(change.change.units_sold_delta())
    .bind(change.sequence)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

#[derive(Debug, sqlx::FromRow)]
struct ViewRow {
    sku: String,
    stock: i64,
    units_sold: i64,
    events: i64,
    last_sequence: i64,
    updated_at: i64,
}

impl From<ViewRow> for ProductView {
    fn from(r: ViewRow) -> Self {
        Self {
            sku: r.sku,
            stock: r.stock,
            units_sold: r.units_sold,
            events: r.events,
            last_sequence: r.last_sequence,
            updated_at: r.updated_at,
        }
    }
}

/// The product view of `sku`; `None` when no Inventory event was recorded for it.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn product_view(
    conn: &mut AnyConnection,
    sku: &str,
) -> Result<Option<ProductView>, ServiceError> {
    let row: Option<ViewRow> = sqlx::query_as(
        "SELECT sku, stock, units_sold, events, last_sequence, updated_at \
         FROM product_view WHERE sku = $1",
    )
    .bind(sku)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(ProductView::from))
}

/// Up to `limit` product views with a sku above `after` (byte-wise), by sku.
///
/// # Errors
/// `UNAVAILABLE` / `INTERNAL` when the database fails.
pub(crate) async fn list_product_views(
    conn: &mut AnyConnection,
    after: &str,
    limit: i64,
) -> Result<Vec<ProductView>, ServiceError> {
    let rows: Vec<ViewRow> = sqlx::query_as(
        "SELECT sku, stock, units_sold, events, last_sequence, updated_at \
         FROM product_view WHERE sku > $1 ORDER BY sku LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(ProductView::from).collect())
}
