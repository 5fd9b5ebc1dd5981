//! Pure inventory rules (docs/architecture.md: step 3 of "The order saga", "The service
//! contract"): reservation states, stock arithmetic, and DeductInventory's business decisions,
//! which return a typed [`Rejection`] that the store maps to its status (the late-action rule and
//! the restore plan are `sagaflow_server::idempotency::late_action`'s). No I/O here; every rule
//! is unit-tested without a database or a server.

use std::collections::HashMap;

use sagaflow_server::idempotency::late_action::ActionClaim;

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

/// Why DeductInventory is refused: a business rejection (FAILED_PRECONDITION with
/// [`Rejection::reason`] and [`Rejection::metadata`] in its `ErrorInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The order already holds stock from a DeductInventory under another idempotency key.
    AlreadyDeducted,
    /// A line asks for more units than its product has.
    OutOfStock {
        /// The line's sku.
        sku: String,
        /// Units the line asks for.
        requested: i64,
        /// Units in stock.
        available: i64,
    },
}

impl Rejection {
    /// The `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AlreadyDeducted => ORDER_ALREADY_DEDUCTED,
            Self::OutOfStock { .. } => OUT_OF_STOCK,
        }
    }

    /// A sentence for a person about order `order_id`.
    pub fn message(&self, order_id: &str) -> String {
        match self {
            Self::AlreadyDeducted => {
                format!("order {order_id} already holds stock from another DeductInventory")
            }
            Self::OutOfStock {
                sku,
                requested,
                available,
            } => format!("sku {sku:?} has {available} units in stock, the order needs {requested}"),
        }
    }

    /// The `ErrorInfo.metadata`: `sku`, `requested` and `available` for [`Rejection::OutOfStock`].
    pub fn metadata(&self) -> HashMap<String, String> {
        match self {
            Self::AlreadyDeducted => HashMap::new(),
            Self::OutOfStock {
                sku,
                requested,
                available,
            } => HashMap::from([
                ("sku".to_owned(), sku.clone()),
                ("requested".to_owned(), requested.to_string()),
                ("available".to_owned(), available.to_string()),
            ]),
        }
    }
}

/// DeductInventory's decision on what the late-action claim of the order's reservation found
/// (a compensation that came first is refused before this, by the claim itself): a new
/// reservation goes on; one that exists already was made under another idempotency key (a
/// repeat under the same key never gets here: the idempotency store answers it).
///
/// # Errors
/// [`Rejection::AlreadyDeducted`] for an existing reservation.
pub fn decide_deduct(claim: ActionClaim) -> Result<(), Rejection> {
    match claim {
        ActionClaim::Inserted => Ok(()),
        ActionClaim::Existing => Err(Rejection::AlreadyDeducted),
    }
}

/// The stock left after taking `line` from the `stock` of its product ([`take`]).
///
/// # Errors
/// [`Rejection::OutOfStock`] when the product has fewer units than the line asks for.
pub fn take_line(stock: i64, line: &StockLine) -> Result<i64, Rejection> {
    take(stock, line.quantity).ok_or_else(|| Rejection::OutOfStock {
        sku: line.sku.clone(),
        requested: line.quantity,
        available: stock,
    })
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
    fn deduct_decisions_reject_with_their_reason_and_metadata() {
        assert_eq!(decide_deduct(ActionClaim::Inserted), Ok(()));
        let existing = decide_deduct(ActionClaim::Existing).unwrap_err();
        assert_eq!(existing.reason(), ORDER_ALREADY_DEDUCTED);
        assert!(existing.metadata().is_empty());
        assert_eq!(
            existing.message("o-1"),
            "order o-1 already holds stock from another DeductInventory"
        );
        assert_eq!(take_line(10, &line("KB", 10)), Ok(0));
        let short = take_line(3, &line("KB", 4)).unwrap_err();
        assert_eq!(
            short,
            Rejection::OutOfStock {
                sku: "KB".into(),
                requested: 4,
                available: 3
            }
        );
        assert_eq!(short.reason(), OUT_OF_STOCK);
        assert_eq!(
            short.message("o-1"),
            "sku \"KB\" has 3 units in stock, the order needs 4"
        );
        assert_eq!(
            short.metadata(),
            HashMap::from([
                ("sku".to_owned(), "KB".to_owned()),
                ("requested".to_owned(), "4".to_owned()),
                ("available".to_owned(), "3".to_owned()),
            ])
        );
    }

    #[test]
    fn add_checks_overflow() {
        assert_eq!(add(1, 2), Some(3));
        assert_eq!(add(i64::MAX, 1), None);
        assert_eq!(add(i64::MAX - 1, 1), Some(i64::MAX));
        assert_eq!(add(1, -1), None);
    }
}
