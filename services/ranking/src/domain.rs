//! Ranking rules, pure and tested without a server (docs/architecture.md, "Events").

use std::cmp::Ordering;

/// Products returned by TopProducts when the request's `limit` is 0.
pub const DEFAULT_LIMIT: i64 = 10;
/// Largest `limit` TopProducts accepts.
pub const MAX_LIMIT: i32 = 1000;

/// The effective TopProducts limit: 0 means [`DEFAULT_LIMIT`]; `None` when `limit` is negative
/// or above [`MAX_LIMIT`].
pub fn effective_limit(limit: i32) -> Option<i64> {
    match limit {
        0 => Some(DEFAULT_LIMIT),
        1..=MAX_LIMIT => Some(i64::from(limit)),
        _ => None,
    }
}

/// One line of a completed order: units of one sku.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleLine {
    /// Product sku.
    pub sku: String,
    /// Units sold, 1 or more.
    pub units: i64,
}

/// A completed order as the ranking counts it (skus are distinct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedOrder {
    /// UUID of the order.
    pub order_id: String,
    /// Its lines, each sku once.
    pub lines: Vec<SaleLine>,
}

/// Sales of one product over every counted order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSales {
    /// Product sku.
    pub sku: String,
    /// Units sold.
    pub units_sold: i64,
    /// Completed orders that contained the sku.
    pub orders: i64,
}

/// The ranking order: more units sold first, ties by sku (byte-wise ascending). The store's
/// `ORDER BY units_sold DESC, sku` implements it; this is its specification.
pub fn rank(a: &ProductSales, b: &ProductSales) -> Ordering {
    b.units_sold
        .cmp(&a.units_sold)
        .then_with(|| a.sku.as_bytes().cmp(b.sku.as_bytes()))
}

/// Adds one completed order to `sales` (one entry per sku), as the store does in SQL.
/// Saturates instead of overflowing.
pub fn add_order(sales: &mut Vec<ProductSales>, order: &CompletedOrder) {
    for line in &order.lines {
        match sales.iter_mut().find(|s| s.sku == line.sku) {
            Some(s) => {
                s.units_sold = s.units_sold.saturating_add(line.units);
                s.orders = s.orders.saturating_add(1);
            }
            None => sales.push(ProductSales {
                sku: line.sku.clone(),
                units_sold: line.units,
                orders: 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sales(sku: &str, units_sold: i64, orders: i64) -> ProductSales {
        ProductSales {
            sku: sku.into(),
            units_sold,
            orders,
        }
    }

    #[test]
    fn limits() {
        assert_eq!(effective_limit(0), Some(10));
        assert_eq!(effective_limit(1), Some(1));
        assert_eq!(effective_limit(1000), Some(1000));
        assert_eq!(effective_limit(1001), None);
        assert_eq!(effective_limit(-1), None);
        assert_eq!(effective_limit(i32::MIN), None);
    }

    #[test]
    fn ranks_by_units_then_sku() {
        let mut v = [
            sales("b", 5, 1),
            sales("a", 5, 3),
            sales("c", 9, 1),
            sales("B", 5, 1),
        ];
        v.sort_by(rank);
        let skus: Vec<_> = v.iter().map(|s| s.sku.as_str()).collect();
        assert_eq!(skus, ["c", "B", "a", "b"]);
    }

    #[test]
    fn adding_orders_counts_units_and_orders() {
        let mut v = Vec::new();
        let order = |lines: &[(&str, i64)]| CompletedOrder {
            order_id: "o".into(),
            lines: lines
                .iter()
                .map(|(sku, units)| SaleLine {
                    sku: (*sku).into(),
                    units: *units,
                })
                .collect(),
        };
        add_order(&mut v, &order(&[("a", 2), ("b", 1)]));
        add_order(&mut v, &order(&[("a", 3)]));
        assert_eq!(v, vec![sales("a", 5, 2), sales("b", 1, 1)]);
    }
}
