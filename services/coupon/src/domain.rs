//! Pure coupon rules (docs/architecture.md: steps 1–2 of "The order saga", "The service
//! contract"): the discount a coupon grants, and the decisions of IssueCoupon, UseCoupon and
//! RestoreCoupon, whose refusals are typed ([`UseRejection`], [`IssueRejection`]) for the store
//! to map to their status. No I/O here; every rule is unit-tested without a database or a
//! server.
//!
//! [`discount`] is the one discount rule of sagaflow: UseCoupon reports the amount it gives
//! (`UseCouponResponse.discount`) and the saga passes that amount to the Order service's
//! ApplyCoupon, so no other service computes it. The late-action rule (RestoreCoupon first) is
//! `sagaflow_server::idempotency::late_action`'s.

/// `ErrorInfo.reason`: the coupon belongs to another user.
pub const COUPON_NOT_OWNED: &str = "COUPON_NOT_OWNED";
/// `ErrorInfo.reason`: the coupon's expiry time has passed.
pub const COUPON_EXPIRED: &str = "COUPON_EXPIRED";
/// `ErrorInfo.reason`: another order holds the coupon.
pub const COUPON_ALREADY_USED: &str = "COUPON_ALREADY_USED";
/// `ErrorInfo.reason`: the order's subtotal is below the coupon's minimum order amount.
pub const COUPON_MIN_ORDER_NOT_MET: &str = "COUPON_MIN_ORDER_NOT_MET";
/// `ErrorInfo.reason` of the ALREADY_EXISTS answer to IssueCoupon when the code exists with
/// other terms.
pub const COUPON_EXISTS: &str = "COUPON_EXISTS";

/// The discount, in KRW won, that a coupon rule grants on an order `subtotal` (KRW won).
///
/// The rule is given as plain integers, as carried by the `Coupon` and `DiscountRule` messages:
///
/// - a **percentage** when `discount_percent > 0`: `subtotal × discount_percent / 100`, rounded
///   down, then capped by `max_discount` when `max_discount > 0` (`discount_amount` is ignored);
/// - otherwise a **fixed amount**: `discount_amount` (`max_discount` is ignored).
///
/// The result is never negative and never above the subtotal, so the payable amount
/// `subtotal − discount` never goes below zero (docs/architecture.md, "The order saga"). The
/// function is total: negative inputs count as 0, a percentage above 100 counts as 100, and
/// nothing overflows (the product is computed in 128 bits).
///
/// ```
/// use sagaflow_coupon::domain::discount;
///
/// assert_eq!(discount(5_000, 0, 0, 30_000), 5_000); // fixed 5 000 won
/// assert_eq!(discount(5_000, 0, 0, 3_000), 3_000); // never above the subtotal
/// assert_eq!(discount(0, 10, 0, 12_345), 1_234); // 10 %, rounded down
/// assert_eq!(discount(0, 10, 20_000, 500_000), 20_000); // capped by max_discount
/// ```
pub fn discount(
    discount_amount: i64,
    discount_percent: i32,
    max_discount: i64,
    subtotal: i64,
) -> i64 {
    let subtotal = subtotal.max(0);
    let raw = if discount_percent > 0 {
        let percent = i128::from(discount_percent.min(100));
        let by_percent = i128::from(subtotal) * percent / 100;
        // by_percent <= subtotal, so it fits i64.
        let by_percent = i64::try_from(by_percent).unwrap_or(subtotal);
        if max_discount > 0 {
            by_percent.min(max_discount)
        } else {
            by_percent
        }
    } else {
        discount_amount.max(0)
    };
    raw.clamp(0, subtotal)
}

/// Whether a coupon is free or held by an order (the `coupons.status` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Free to be used by its owner.
    Available,
    /// Held by the order in `order_id`.
    Used,
}

impl Status {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "AVAILABLE",
            Self::Used => "USED",
        }
    }

    /// Parses a column value; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "AVAILABLE" => Some(Self::Available),
            "USED" => Some(Self::Used),
            _ => None,
        }
    }
}

/// The terms a coupon is issued with; they never change afterwards. Amounts are KRW won,
/// `expires_at` unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    /// The code (primary key).
    pub code: String,
    /// The owner.
    pub user_id: String,
    /// Fixed discount, or 0 for a percentage coupon.
    pub discount_amount: i64,
    /// Percentage 1..=100, or 0 for a fixed coupon.
    pub discount_percent: i32,
    /// Smallest subtotal the coupon applies to.
    pub min_order_amount: i64,
    /// Cap of a percentage discount; 0 for none.
    pub max_discount: i64,
    /// When the coupon stops being usable (unix ms): it is expired from this instant on.
    pub expires_at: i64,
}

/// A coupon: its terms and who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coupon {
    /// The terms.
    pub terms: Terms,
    /// AVAILABLE or USED.
    pub status: Status,
    /// The order holding it when USED.
    pub order_id: Option<String>,
}

impl Coupon {
    /// The discount (KRW won) this coupon gives on an order of `order_amount` KRW won: the one
    /// rule, [`discount`].
    pub fn discount_on(&self, order_amount: i64) -> i64 {
        let t = &self.terms;
        discount(
            t.discount_amount,
            t.discount_percent,
            t.max_discount,
            order_amount,
        )
    }

    /// Whether `order_id` holds this coupon.
    pub fn is_held_by(&self, order_id: &str) -> bool {
        self.status == Status::Used && self.order_id.as_deref() == Some(order_id)
    }
}

/// What UseCoupon asks for.
#[derive(Clone, Copy, Debug)]
pub struct UseAttempt<'a> {
    /// The user placing the order.
    pub user_id: &'a str,
    /// The order.
    pub order_id: &'a str,
    /// The order's subtotal, KRW won.
    pub order_amount: i64,
    /// The current time, unix ms.
    pub now_ms: i64,
}

/// A successful UseCoupon decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseDecision {
    /// Mark the coupon USED by the order.
    Take,
    /// The order already holds it (a repeat under another key): change nothing, succeed.
    AlreadyHeld,
}

/// Why UseCoupon is rejected (each maps to a FAILED_PRECONDITION reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseRejection {
    /// The coupon belongs to another user.
    NotOwned,
    /// Another order holds the coupon.
    AlreadyUsed,
    /// The coupon expired.
    Expired,
    /// The subtotal is below the minimum order amount.
    MinOrderNotMet,
}

impl UseRejection {
    /// The `ErrorInfo.reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotOwned => COUPON_NOT_OWNED,
            Self::AlreadyUsed => COUPON_ALREADY_USED,
            Self::Expired => COUPON_EXPIRED,
            Self::MinOrderNotMet => COUPON_MIN_ORDER_NOT_MET,
        }
    }

    /// A sentence for a person.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotOwned => "the coupon belongs to another user",
            Self::AlreadyUsed => "the coupon is used by another order",
            Self::Expired => "the coupon has expired",
            Self::MinOrderNotMet => "the order amount is below the coupon's minimum order amount",
        }
    }
}

/// UseCoupon's decision (after the late-action check of the store), checked in this order:
/// ownership, the order already holding it (idempotent repeat: the later checks passed when it
/// took it), another order holding it, expiry, minimum order.
///
/// # Errors
/// The first [`UseRejection`] that applies.
pub fn decide_use(coupon: &Coupon, attempt: &UseAttempt<'_>) -> Result<UseDecision, UseRejection> {
    if coupon.terms.user_id != attempt.user_id {
        return Err(UseRejection::NotOwned);
    }
    if coupon.is_held_by(attempt.order_id) {
        return Ok(UseDecision::AlreadyHeld);
    }
    if coupon.status == Status::Used {
        return Err(UseRejection::AlreadyUsed);
    }
    if attempt.now_ms >= coupon.terms.expires_at {
        return Err(UseRejection::Expired);
    }
    if attempt.order_amount < coupon.terms.min_order_amount {
        return Err(UseRejection::MinOrderNotMet);
    }
    Ok(UseDecision::Take)
}

/// Why IssueCoupon is refused (ALREADY_EXISTS with [`IssueRejection::reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueRejection {
    /// A coupon with this code exists with other terms.
    OtherTerms,
}

impl IssueRejection {
    /// The `ErrorInfo.reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::OtherTerms => COUPON_EXISTS,
        }
    }

    /// A sentence for a person about the coupon `code`.
    pub fn message(self, code: &str) -> String {
        match self {
            Self::OtherTerms => format!("coupon {code:?} already exists with other terms"),
        }
    }
}

/// IssueCoupon's decision once a coupon with the code is stored (inserted now, or found):
/// the same terms are the same coupon (a repeat), other terms are refused.
///
/// # Errors
/// [`IssueRejection::OtherTerms`] when the stored terms differ from `requested`.
pub fn decide_issue(stored: &Terms, requested: &Terms) -> Result<(), IssueRejection> {
    if stored == requested {
        Ok(())
    } else {
        Err(IssueRejection::OtherTerms)
    }
}

/// What RestoreCoupon does to the coupon (it always records the compensation too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreDecision {
    /// The order holds it: make it AVAILABLE again.
    MakeAvailable,
    /// The order does not hold it (never took it, already restored, unknown code, or another
    /// order holds it now): leave it alone.
    LeaveAlone,
}

/// RestoreCoupon's decision for `order_id` and the coupon (`None`: unknown code).
pub fn decide_restore(coupon: Option<&Coupon>, order_id: &str) -> RestoreDecision {
    match coupon {
        Some(c) if c.is_held_by(order_id) => RestoreDecision::MakeAvailable,
        _ => RestoreDecision::LeaveAlone,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fixed_discount_is_capped_by_the_subtotal() {
        assert_eq!(discount(5_000, 0, 0, 30_000), 5_000);
        assert_eq!(discount(5_000, 0, 0, 5_000), 5_000);
        assert_eq!(discount(5_000, 0, 0, 4_999), 4_999);
        assert_eq!(discount(5_000, 0, 0, 0), 0);
        // max_discount does not apply to fixed coupons.
        assert_eq!(discount(5_000, 0, 1_000, 30_000), 5_000);
    }

    #[test]
    fn percent_discount_rounds_down_and_respects_the_cap() {
        assert_eq!(discount(0, 10, 0, 12_345), 1_234);
        assert_eq!(discount(0, 10, 20_000, 150_000), 15_000);
        assert_eq!(discount(0, 10, 20_000, 500_000), 20_000);
        assert_eq!(discount(0, 100, 0, 7_777), 7_777);
        assert_eq!(discount(0, 33, 0, 1), 0);
        assert_eq!(discount(0, 1, 0, i64::MAX), i64::MAX / 100);
        // A percentage ignores discount_amount.
        assert_eq!(discount(9_999, 10, 0, 1_000), 100);
    }

    #[test]
    fn odd_inputs_never_panic_or_escape_the_bounds() {
        assert_eq!(discount(-5, 0, 0, 100), 0);
        assert_eq!(discount(0, 250, 0, 100), 100);
        assert_eq!(discount(0, -3, 0, 100), 0);
        assert_eq!(discount(50, 0, 0, -100), 0);
        assert_eq!(discount(0, 50, -1, 100), 50);
        assert_eq!(discount(i64::MAX, 0, 0, i64::MAX), i64::MAX);
        assert_eq!(discount(0, 100, 0, i64::MAX), i64::MAX);
    }

    proptest! {
        #[test]
        fn discount_stays_between_zero_and_the_subtotal(
            amount in any::<i64>(),
            percent in any::<i32>(),
            cap in any::<i64>(),
            subtotal in any::<i64>(),
        ) {
            let d = discount(amount, percent, cap, subtotal);
            prop_assert!(d >= 0);
            prop_assert!(d <= subtotal.max(0));
            if percent > 0 && cap > 0 {
                prop_assert!(d <= cap);
            }
        }

        #[test]
        fn percent_discount_is_monotonic_in_the_subtotal(
            percent in 1..=100_i32,
            a in 0..=1_000_000_000_i64,
            b in 0..=1_000_000_000_i64,
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(discount(0, percent, 0, lo) <= discount(0, percent, 0, hi));
        }
    }

    fn coupon(status: Status, order_id: Option<&str>) -> Coupon {
        Coupon {
            terms: Terms {
                code: "C".into(),
                user_id: "alice".into(),
                discount_amount: 1_000,
                discount_percent: 0,
                min_order_amount: 10_000,
                max_discount: 0,
                expires_at: 2_000,
            },
            status,
            order_id: order_id.map(str::to_owned),
        }
    }

    fn attempt(order_amount: i64, now_ms: i64) -> UseAttempt<'static> {
        UseAttempt {
            user_id: "alice",
            order_id: "o1",
            order_amount,
            now_ms,
        }
    }

    #[test]
    fn use_takes_an_available_coupon() {
        let c = coupon(Status::Available, None);
        assert_eq!(
            decide_use(&c, &attempt(10_000, 1_999)),
            Ok(UseDecision::Take)
        );
    }

    #[test]
    fn use_rejections_in_order() {
        let available = coupon(Status::Available, None);
        let bob = UseAttempt {
            user_id: "bob",
            ..attempt(10_000, 0)
        };
        assert_eq!(decide_use(&available, &bob), Err(UseRejection::NotOwned));
        assert_eq!(
            decide_use(&coupon(Status::Used, Some("o2")), &attempt(10_000, 0)),
            Err(UseRejection::AlreadyUsed)
        );
        assert_eq!(
            decide_use(&available, &attempt(10_000, 2_000)),
            Err(UseRejection::Expired)
        );
        assert_eq!(
            decide_use(&available, &attempt(9_999, 0)),
            Err(UseRejection::MinOrderNotMet)
        );
        // Expiry is checked before the minimum order.
        assert_eq!(
            decide_use(&available, &attempt(0, 5_000)),
            Err(UseRejection::Expired)
        );
    }

    #[test]
    fn use_by_the_holding_order_is_an_idempotent_repeat() {
        let held = coupon(Status::Used, Some("o1"));
        // Even once expired or with another amount: it was valid when the order took it.
        assert_eq!(
            decide_use(&held, &attempt(0, 9_999)),
            Ok(UseDecision::AlreadyHeld)
        );
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            UseRejection::NotOwned,
            UseRejection::AlreadyUsed,
            UseRejection::Expired,
            UseRejection::MinOrderNotMet,
        ];
        let mut reasons: Vec<_> = all.iter().map(|r| r.reason()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
    }

    #[test]
    fn issue_refuses_other_terms_of_a_stored_code() {
        let stored = coupon(Status::Used, Some("o1")).terms;
        assert_eq!(decide_issue(&stored, &stored.clone()), Ok(()));
        let other = Terms {
            discount_amount: 2_000,
            ..stored.clone()
        };
        let refused = decide_issue(&stored, &other).unwrap_err();
        assert_eq!(refused.reason(), COUPON_EXISTS);
        assert_eq!(
            refused.message("C"),
            "coupon \"C\" already exists with other terms"
        );
    }

    #[test]
    fn restore_frees_only_the_holding_order() {
        assert_eq!(
            decide_restore(Some(&coupon(Status::Used, Some("o1"))), "o1"),
            RestoreDecision::MakeAvailable
        );
        assert_eq!(
            decide_restore(Some(&coupon(Status::Used, Some("o2"))), "o1"),
            RestoreDecision::LeaveAlone
        );
        assert_eq!(
            decide_restore(Some(&coupon(Status::Available, None)), "o1"),
            RestoreDecision::LeaveAlone
        );
        assert_eq!(decide_restore(None, "o1"), RestoreDecision::LeaveAlone);
    }

    #[test]
    fn status_round_trips() {
        for s in [Status::Available, Status::Used] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("used"), None);
    }
}
