//! Ranking rules, pure and tested without a server (docs/architecture.md, "Events"): the
//! product sales of completed orders and the TopProducts order, then the product view built from
//! Inventory's events and the rule that makes it independent of redeliveries and arrival order.

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

/// Product views returned by ListProductViews when the request's `page_size` is 0.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
/// Largest `page_size` ListProductViews accepts.
pub const MAX_PAGE_SIZE: i32 = 1000;

/// The effective ListProductViews page size: 0 means [`DEFAULT_PAGE_SIZE`]; `None` when
/// `page_size` is negative or above [`MAX_PAGE_SIZE`].
pub fn effective_page_size(page_size: i32) -> Option<i64> {
    match page_size {
        0 => Some(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Some(i64::from(page_size)),
        _ => None,
    }
}

/// What one Inventory event did to its sku's stock (the `sagaflow.inventory.v1` events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockChange {
    /// InventoryDeducted: an order took `quantity` units (1 or more).
    Deducted {
        /// Units taken.
        quantity: i64,
    },
    /// InventoryRestored: a compensation gave back the `quantity` units an order had taken.
    Restored {
        /// Units given back.
        quantity: i64,
    },
    /// InventoryRestocked: an operator added units (or, negative, set a lower stock).
    Restocked {
        /// Units added.
        delta: i64,
    },
}

impl StockChange {
    /// How the change moves the product's net units sold: `+quantity` for a deduction,
    /// `-quantity` for a restore, 0 for a restock.
    pub fn units_sold_delta(self) -> i64 {
        match self {
            Self::Deducted { quantity } => quantity,
            Self::Restored { quantity } => quantity.saturating_neg(),
            Self::Restocked { .. } => 0,
        }
    }
}

/// One validated Inventory event as the product view records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryChange {
    /// The sku whose stock changed.
    pub sku: String,
    /// The event's outbox sequence for its sku (1, 2, …): the later change has the higher one.
    pub sequence: i64,
    /// What the change was.
    pub change: StockChange,
    /// Units on hand after the change (0 or more).
    pub stock_after: i64,
}

/// The read-optimised view of one product (docs/architecture.md, "Events").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductView {
    /// Product sku.
    pub sku: String,
    /// Units on hand after the recorded event with the highest sequence.
    pub stock: i64,
    /// Units deducted minus units restored over every recorded event (negative for a while
    /// when a restore is recorded before its deduction).
    pub units_sold: i64,
    /// Inventory events recorded for the sku.
    pub events: i64,
    /// The highest outbox sequence recorded for the sku.
    pub last_sequence: i64,
    /// When the latest event was recorded, unix ms.
    pub updated_at: i64,
}

/// Applies one recorded (not redelivered: the inbox filters those out first) event to the
/// sku's view, `None` before its first event; the store's upsert implements the same rule in
/// SQL, this is its specification. Sums (`units_sold`, `events`) take every event, in any
/// order; `stock` and `last_sequence` move only when the event's sequence is above the stored
/// `last_sequence`, so an event that arrives late never puts an older stock back: the view
/// after a set of events is the same whatever order they were recorded in. Saturates instead
/// of overflowing.
pub fn apply_change(
    view: Option<ProductView>,
    change: &InventoryChange,
    now_ms: i64,
) -> ProductView {
    let units = change.change.units_sold_delta();
    match view {
        None => ProductView {
            sku: change.sku.clone(),
            stock: change.stock_after,
            units_sold: units,
            events: 1,
            last_sequence: change.sequence,
            updated_at: now_ms,
        },
        Some(view) => {
            let newer = change.sequence > view.last_sequence;
            ProductView {
                units_sold: view.units_sold.saturating_add(units),
                events: view.events.saturating_add(1),
                stock: if newer {
                    change.stock_after
                } else {
                    view.stock
                },
                last_sequence: if newer {
                    change.sequence
                } else {
                    view.last_sequence
                },
                updated_at: now_ms,
                sku: view.sku,
            }
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

    fn change(sequence: i64, change: StockChange, stock_after: i64) -> InventoryChange {
        InventoryChange {
            sku: "KB-001".into(),
            sequence,
            change,
            stock_after,
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(effective_page_size(0), Some(100));
        assert_eq!(effective_page_size(1), Some(1));
        assert_eq!(effective_page_size(1000), Some(1000));
        assert_eq!(effective_page_size(1001), None);
        assert_eq!(effective_page_size(-1), None);
    }

    #[test]
    fn units_sold_moves_with_deductions_and_restores_only() {
        assert_eq!(StockChange::Deducted { quantity: 3 }.units_sold_delta(), 3);
        assert_eq!(StockChange::Restored { quantity: 2 }.units_sold_delta(), -2);
        assert_eq!(StockChange::Restocked { delta: 50 }.units_sold_delta(), 0);
        assert_eq!(StockChange::Restocked { delta: -5 }.units_sold_delta(), 0);
    }

    /// Every order of the same events gives the same view (but for the recording time).
    #[test]
    fn the_view_does_not_depend_on_the_arrival_order() {
        let events = [
            change(1, StockChange::Restocked { delta: 10 }, 10),
            change(2, StockChange::Deducted { quantity: 3 }, 7),
            change(3, StockChange::Deducted { quantity: 2 }, 5),
            change(4, StockChange::Restored { quantity: 3 }, 8),
        ];
        let expected = ProductView {
            sku: "KB-001".into(),
            stock: 8,
            units_sold: 2,
            events: 4,
            last_sequence: 4,
            updated_at: 0,
        };
        // All 24 permutations of the four events (Heap's algorithm).
        let mut order = [0_usize, 1, 2, 3];
        let mut c = [0_usize; 4];
        let mut seen = 0;
        let mut check = |order: &[usize; 4]| {
            let view = order
                .iter()
                .fold(None, |view, &i| Some(apply_change(view, &events[i], 0)));
            assert_eq!(view.as_ref(), Some(&expected), "order {order:?}");
            seen += 1;
        };
        check(&order);
        let mut i = 1;
        while i < 4 {
            if c[i] < i {
                order.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                check(&order);
                c[i] += 1;
                i = 1;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        assert_eq!(seen, 24);
    }

    #[test]
    fn a_late_event_moves_the_sums_but_not_the_stock() {
        let newest = apply_change(
            None,
            &change(5, StockChange::Deducted { quantity: 1 }, 4),
            7,
        );
        let late = apply_change(
            Some(newest),
            &change(3, StockChange::Restored { quantity: 2 }, 9),
            8,
        );
        assert_eq!(
            late,
            ProductView {
                sku: "KB-001".into(),
                stock: 4,
                units_sold: -1,
                events: 2,
                last_sequence: 5,
                updated_at: 8,
            }
        );
    }
}
