//! Pure inventory rules (docs/architecture.md: step 3 of "The order saga", "The service
//! contract"): reservation states, stock arithmetic and the error reasons (the late-action rule and the restore
//! plan are `sagaflow_server::idempotency::late_action`'s). No I/O here;
//! every rule is unit-tested without a database or a server.

/// `ErrorInfo.reason` when a line asks for more units than are in stock (metadata `sku`,
/// `requested`, `available`).
pub const OUT_OF_STOCK: &str = "OUT_OF_STOCK";
/// `ErrorInfo.reason` when the order already holds stock from a DeductInventory with another
/// idempotency key.
pub const ORDER_ALREADY_DEDUCTED: &str = "ORDER_ALREADY_DEDUCTED";

/// The state of an order's stock reservation (the `reservations.status` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationStatus {
    /// The order holds the stock of its lines.
    Reserved,
    /// The stock was given back, or RestoreInventory came first (a tombstone without lines).
    Released,
}

impl ReservationStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Released => "RELEASED",
        }
    }

    /// Parses a column value; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "RESERVED" => Some(Self::Reserved),
            "RELEASED" => Some(Self::Released),
            _ => None,
        }
    }
}

/// One line of a stock command: units of one sku.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockLine {
    /// Product sku.
    pub sku: String,
    /// Units, 1 or more.
    pub quantity: i64,
}

/// The lines in the order in which their product rows are locked: by sku (byte order). Every
/// command that locks more than one product row uses this order, so two orders sharing skus
/// cannot deadlock on PostgreSQL.
pub fn lock_order(lines: &[StockLine]) -> Vec<StockLine> {
    let mut sorted = lines.to_vec();
    sorted.sort_by(|a, b| a.sku.as_bytes().cmp(b.sku.as_bytes()));
    sorted
}

/// The stock left after taking `quantity` units from `stock`, or `None` when there are not
/// enough (stock never goes negative).
pub fn take(stock: i64, quantity: i64) -> Option<i64> {
    if quantity < 0 || stock < quantity {
        None
    } else {
        stock.checked_sub(quantity)
    }
}

/// The stock after adding `quantity` units, or `None` when it would overflow `i64`.
pub fn add(stock: i64, quantity: i64) -> Option<i64> {
    if quantity < 0 {
        None
    } else {
        stock.checked_add(quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i64) -> StockLine {
        StockLine {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn status_round_trips() {
        for s in [ReservationStatus::Reserved, ReservationStatus::Released] {
            assert_eq!(ReservationStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReservationStatus::parse("reserved"), None);
    }

    #[test]
    fn lock_order_sorts_by_sku_bytes() {
        let sorted = lock_order(&[line("b", 1), line("B", 2), line("a", 3)]);
        let skus: Vec<_> = sorted.iter().map(|l| l.sku.as_str()).collect();
        assert_eq!(skus, ["B", "a", "b"]);
    }

    #[test]
    fn take_never_goes_negative() {
        assert_eq!(take(10, 1), Some(9));
        assert_eq!(take(10, 10), Some(0));
        assert_eq!(take(10, 11), None);
        assert_eq!(take(0, 1), None);
        assert_eq!(take(5, -1), None);
    }

    #[test]
    fn add_checks_overflow() {
        assert_eq!(add(1, 2), Some(3));
        assert_eq!(add(i64::MAX, 1), None);
        assert_eq!(add(i64::MAX - 1, 1), Some(i64::MAX));
        assert_eq!(add(1, -1), None);
    }
}
