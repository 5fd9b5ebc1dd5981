//! Order business rules, pure and tested without a server (docs/architecture.md, "The order
//! saga").
//!
//! ```text
//!  PlaceOrder ──▶ PENDING ──ApplyCoupon (discount)──▶ PENDING
//!                    │
//!                    ├── CompleteOrder ──▶ COMPLETED   (OrderCompleted event)
//!                    └── FailOrder ──────▶ FAILED      (discount cleared; OrderFailed event)
//! ```
//!
//! Amounts are KRW won: `subtotal = Σ unit_price × quantity`, `points ≤ subtotal`,
//! `discount ≤ subtotal − points`, `payable = subtotal − discount − points ≥ 0`. Every sum and
//! product is checked: an order whose amounts would overflow `i64` is rejected.

use std::{collections::HashMap, fmt};

/// Business rejection reasons (`google.rpc.ErrorInfo.reason`) of the order service.
pub mod reason {
    /// ApplyCoupon on an order that is no longer PENDING.
    pub const ORDER_NOT_PENDING: &str = "ORDER_NOT_PENDING";
    /// CompleteOrder on a FAILED order.
    pub const ORDER_ALREADY_FAILED: &str = "ORDER_ALREADY_FAILED";
    /// FailOrder on a COMPLETED order.
    pub const ORDER_ALREADY_COMPLETED: &str = "ORDER_ALREADY_COMPLETED";
    /// ApplyCoupon on an order placed without a coupon code.
    pub const ORDER_HAS_NO_COUPON: &str = "ORDER_HAS_NO_COUPON";
}

/// Lifecycle of an order (the `orders.status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// The saga is running.
    Pending,
    /// Every step succeeded.
    Completed,
    /// The saga failed and was compensated.
    Failed,
}

impl OrderStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    /// Parses a column value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "PENDING" => Some(Self::Pending),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }

    /// Whether the order will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order failed (docs/architecture.md, "The order saga"; the `orders.failure_reason`
/// column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The coupon could not be used.
    CouponUnavailable,
    /// A line's stock was short.
    OutOfStock,
    /// The payment was declined (at authorization or capture).
    PaymentDeclined,
    /// The user's point balance was short.
    InsufficientPoints,
    /// A step's outcome stayed unknown, or the saga passed its deadline.
    DeadlineExceeded,
    /// An operator canceled the saga before its pivot.
    Canceled,
    /// Anything else.
    Internal,
}

impl FailureReason {
    /// Every reason, for exhaustive tests and mappings.
    pub const ALL: [Self; 7] = [
        Self::CouponUnavailable,
        Self::OutOfStock,
        Self::PaymentDeclined,
        Self::InsufficientPoints,
        Self::DeadlineExceeded,
        Self::Canceled,
        Self::Internal,
    ];

    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CouponUnavailable => "COUPON_UNAVAILABLE",
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::InsufficientPoints => "INSUFFICIENT_POINTS",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Canceled => "CANCELED",
            Self::Internal => "INTERNAL",
        }
    }

    /// Parses a column value.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// Product sku.
    pub sku: String,
    /// Units, 1 or more.
    pub quantity: i32,
    /// KRW won per unit, read from Inventory when the order was placed.
    pub unit_price: i64,
}

/// The amounts of an order, KRW won. Built only through [`Amounts::placed`] and the
/// transitions below, so `payable = subtotal − discount − points ≥ 0` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amounts {
    /// Σ unit price × quantity.
    pub subtotal: i64,
    /// The coupon discount (0 until ApplyCoupon).
    pub discount: i64,
    /// Points spent.
    pub points: i64,
    /// What the payment charges.
    pub payable: i64,
}

impl Amounts {
    /// The amounts of a newly placed order: no discount yet. `None` when `points` is negative or
    /// above `subtotal`.
    pub fn placed(subtotal: i64, points: i64) -> Option<Self> {
        if subtotal < 0 || !(0..=subtotal).contains(&points) {
            return None;
        }
        Some(Self {
            subtotal,
            discount: 0,
            points,
            payable: subtotal - points,
        })
    }

    /// The amounts with the coupon's `discount` (KRW won, as the Coupon service computed it)
    /// applied (saga step 2), capped so that the payable amount never goes below zero (points
    /// are taken first); a negative discount counts as 0.
    pub fn with_discount(self, discount: i64) -> Self {
        let room = self.subtotal - self.points;
        let discount = discount.clamp(0, room.max(0));
        Self {
            discount,
            payable: room - discount,
            ..self
        }
    }

    /// The amounts with the discount cleared (FailOrder: the coupon was given back).
    pub fn without_discount(self) -> Self {
        Self {
            discount: 0,
            payable: self.subtotal - self.points,
            ..self
        }
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// UUID of the order (also its saga's id).
    pub order_id: String,
    /// Who placed it.
    pub user_id: String,
    /// Its lines, in request order.
    pub lines: Vec<OrderLine>,
    /// The coupon code, if any.
    pub coupon_code: Option<String>,
    /// The amounts.
    pub amounts: Amounts,
    /// Current status.
    pub status: OrderStatus,
    /// Set when FAILED.
    pub failure_reason: Option<FailureReason>,
    /// The card token the payment step charges, masked (`sagaflow_server::card_token::mask`):
    /// the token itself is only in the OrderCreated event, sealed (docs/architecture.md, "Card
    /// tokens").
    pub payment_method: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds.
    pub updated_at_ms: i64,
}

/// Why a list of lines cannot be priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricingError {
    /// Inventory does not know the sku of line `index`.
    UnknownSku {
        /// Position of the line in the request.
        index: usize,
    },
    /// The line total or the subtotal would overflow `i64` at line `index`.
    Overflow {
        /// Position of the line in the request.
        index: usize,
    },
}

/// Prices `lines` of (sku, quantity) with `prices` (sku → KRW won per unit) and returns the
/// priced lines and the subtotal, with checked arithmetic.
///
/// # Errors
/// [`PricingError::UnknownSku`] for the first sku without a price, [`PricingError::Overflow`]
/// when a line total or the subtotal does not fit `i64`.
pub fn price_lines(
    lines: &[(String, i32)],
    prices: &HashMap<String, i64>,
) -> Result<(Vec<OrderLine>, i64), PricingError> {
    let mut priced = Vec::with_capacity(lines.len());
    let mut subtotal: i64 = 0;
    for (index, (sku, quantity)) in lines.iter().enumerate() {
        let unit_price = *prices.get(sku).ok_or(PricingError::UnknownSku { index })?;
        subtotal = unit_price
            .checked_mul(i64::from(*quantity))
            .and_then(|total| subtotal.checked_add(total))
            .ok_or(PricingError::Overflow { index })?;
        priced.push(OrderLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_price,
        });
    }
    Ok((priced, subtotal))
}

/// A business rejection of an order command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// ApplyCoupon after the order left PENDING.
    NotPending(OrderStatus),
    /// CompleteOrder of a FAILED order.
    AlreadyFailed,
    /// FailOrder of a COMPLETED order.
    AlreadyCompleted,
    /// ApplyCoupon on an order without a coupon.
    NoCoupon,
}

impl Rejection {
    /// The `ErrorInfo` reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotPending(_) => reason::ORDER_NOT_PENDING,
            Self::AlreadyFailed => reason::ORDER_ALREADY_FAILED,
            Self::AlreadyCompleted => reason::ORDER_ALREADY_COMPLETED,
            Self::NoCoupon => reason::ORDER_HAS_NO_COUPON,
        }
    }

    /// A message for a person.
    pub fn message(self, order_id: &str) -> String {
        match self {
            Self::NotPending(status) => format!("order {order_id} is {status}, not PENDING"),
            Self::AlreadyFailed => format!("order {order_id} already FAILED"),
            Self::AlreadyCompleted => format!("order {order_id} already COMPLETED"),
            Self::NoCoupon => format!("order {order_id} was placed without a coupon"),
        }
    }
}

/// What a status command does to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Change the order.
    Apply,
    /// The order already is where the command would put it: return it unchanged.
    Unchanged,
    /// Reject.
    Reject(Rejection),
}

/// Decides ApplyCoupon (saga step 2).
pub fn decide_apply_coupon(order: &Order) -> Decision {
    if order.status != OrderStatus::Pending {
        Decision::Reject(Rejection::NotPending(order.status))
    } else if order.coupon_code.is_none() {
        Decision::Reject(Rejection::NoCoupon)
    } else {
        Decision::Apply
    }
}

/// Decides CompleteOrder (saga step 7).
pub fn decide_complete(status: OrderStatus) -> Decision {
    match status {
        OrderStatus::Pending => Decision::Apply,
        OrderStatus::Completed => Decision::Unchanged,
        OrderStatus::Failed => Decision::Reject(Rejection::AlreadyFailed),
    }
}

/// Decides FailOrder (the end of a compensated saga). A FAILED order stays as it is, with its
/// first reason.
pub fn decide_fail(status: OrderStatus) -> Decision {
    match status {
        OrderStatus::Pending => Decision::Apply,
        OrderStatus::Failed => Decision::Unchanged,
        OrderStatus::Completed => Decision::Reject(Rejection::AlreadyCompleted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(entries: &[(&str, i64)]) -> HashMap<String, i64> {
        entries.iter().map(|(s, p)| ((*s).to_owned(), *p)).collect()
    }

    fn lines(entries: &[(&str, i32)]) -> Vec<(String, i32)> {
        entries.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect()
    }

    #[test]
    fn prices_lines_and_subtotal() {
        let (priced, subtotal) = price_lines(
            &lines(&[("KB", 2), ("MS", 3)]),
            &prices(&[("KB", 45_000), ("MS", 12_000)]),
        )
        .unwrap();
        assert_eq!(subtotal, 126_000);
        assert_eq!(
            priced[1],
            OrderLine {
                sku: "MS".into(),
                quantity: 3,
                unit_price: 12_000
            }
        );
    }

    #[test]
    fn unknown_sku_and_overflow_name_the_line() {
        assert_eq!(
            price_lines(&lines(&[("KB", 1), ("??", 1)]), &prices(&[("KB", 1)])),
            Err(PricingError::UnknownSku { index: 1 })
        );
        assert_eq!(
            price_lines(&lines(&[("KB", 2)]), &prices(&[("KB", i64::MAX)])),
            Err(PricingError::Overflow { index: 0 })
        );
        assert_eq!(
            price_lines(
                &lines(&[("A", 1), ("B", 1)]),
                &prices(&[("A", i64::MAX), ("B", 1)])
            ),
            Err(PricingError::Overflow { index: 1 })
        );
    }

    #[test]
    fn placed_amounts_check_points() {
        assert_eq!(
            Amounts::placed(10_000, 3_000),
            Some(Amounts {
                subtotal: 10_000,
                discount: 0,
                points: 3_000,
                payable: 7_000
            })
        );
        assert!(Amounts::placed(10_000, 10_000).is_some());
        assert_eq!(Amounts::placed(10_000, 10_001), None);
        assert_eq!(Amounts::placed(10_000, -1), None);
    }

    #[test]
    fn coupon_discount_is_capped_so_payable_stays_non_negative() {
        let placed = Amounts::placed(10_000, 3_000).unwrap();
        let applied = placed.with_discount(5_000);
        assert_eq!((applied.discount, applied.payable), (5_000, 2_000));
        // Above subtotal − points: capped.
        let applied = placed.with_discount(9_000);
        assert_eq!((applied.discount, applied.payable), (7_000, 0));
        assert_eq!(placed.with_discount(-1), placed);
        // Applying twice gives the same amounts.
        let applied = placed.with_discount(500);
        assert_eq!(applied.with_discount(500), applied);
        assert_eq!(applied.without_discount(), placed);
    }

    #[test]
    fn amounts_invariant_holds_for_many_inputs() {
        for subtotal in [0, 1, 999, 10_000, i64::MAX] {
            for points in [0, 1, subtotal / 2, subtotal] {
                let Some(placed) = Amounts::placed(subtotal, points) else {
                    continue;
                };
                for discount in [i64::MIN, -1, 0, 1, subtotal / 3, subtotal, i64::MAX] {
                    let a = placed.with_discount(discount);
                    assert!(a.discount >= 0 && a.payable >= 0, "{a:?}");
                    assert_eq!(a.payable, a.subtotal - a.discount - a.points, "{a:?}");
                }
            }
        }
    }

    #[test]
    fn status_decisions() {
        use OrderStatus::*;
        assert_eq!(decide_complete(Pending), Decision::Apply);
        assert_eq!(decide_complete(Completed), Decision::Unchanged);
        assert_eq!(
            decide_complete(Failed),
            Decision::Reject(Rejection::AlreadyFailed)
        );
        assert_eq!(decide_fail(Pending), Decision::Apply);
        assert_eq!(decide_fail(Failed), Decision::Unchanged);
        assert_eq!(
            decide_fail(Completed),
            Decision::Reject(Rejection::AlreadyCompleted)
        );
        assert!(Completed.is_terminal() && Failed.is_terminal() && !Pending.is_terminal());
    }

    #[test]
    fn apply_coupon_decision() {
        let mut order = Order {
            order_id: "o".into(),
            user_id: "u".into(),
            lines: vec![],
            coupon_code: Some("WELCOME".into()),
            amounts: Amounts::placed(100, 0).unwrap(),
            status: OrderStatus::Pending,
            failure_reason: None,
            payment_method: "tok_ok".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert_eq!(decide_apply_coupon(&order), Decision::Apply);
        order.coupon_code = None;
        assert_eq!(
            decide_apply_coupon(&order),
            Decision::Reject(Rejection::NoCoupon)
        );
        order.status = OrderStatus::Completed;
        assert_eq!(
            decide_apply_coupon(&order),
            Decision::Reject(Rejection::NotPending(OrderStatus::Completed))
        );
    }

    #[test]
    fn columns_round_trip() {
        for r in FailureReason::ALL {
            assert_eq!(FailureReason::parse(r.as_str()), Some(r));
        }
        for s in [
            OrderStatus::Pending,
            OrderStatus::Completed,
            OrderStatus::Failed,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(FailureReason::parse("nope"), None);
    }
}
