//! The inbox and product_sales tables (sqlx `Any`, one SQL text for PostgreSQL and SQLite).

use sagaflow_server::{ServiceError, db::now_ms};
use sqlx::AnyConnection;

use crate::domain::{CompletedOrder, ProductSales};

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
        "INSERT INTO inbox (event_id, order_id, recorded_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
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
