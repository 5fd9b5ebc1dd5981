//! Pure point rules (docs/architecture.md: step 5 of "The order saga", "The service contract"):
//! balance arithmetic (checked, never negative), the per-order deduction states and the error reasons (the late-action rule and the restore plan
//! are `sagaflow_server::idempotency::late_action`'s). No I/O here; every rule is
//! unit-tested without a database or a server.
//!
//! Points are KRW won. A user's points are either in the balance or **held** by an order (a
//! DEDUCTED deduction); RestorePoints moves held points back. GrantPoints keeps
//! `balance + held` within `i64`, so giving held points back can never overflow.

/// `ErrorInfo.reason`: the balance is smaller than the amount to deduct (metadata `balance`,
/// `requested`).
pub const INSUFFICIENT_POINTS: &str = "INSUFFICIENT_POINTS";
/// `ErrorInfo.reason`: the order already deducted points under another idempotency key.
pub const ORDER_ALREADY_DEDUCTED: &str = "ORDER_ALREADY_DEDUCTED";
/// `ErrorInfo.reason`: RestorePoints names another user than the order's deduction.
pub const USER_MISMATCH: &str = "USER_MISMATCH";

/// The state of an order's deduction (the `deductions.status` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeductionStatus {
    /// The order holds its deducted points.
    Deducted,
    /// The points were given back, or RestorePoints came first (a tombstone of amount 0).
    Restored,
}

impl DeductionStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deducted => "DEDUCTED",
            Self::Restored => "RESTORED",
        }
    }

    /// Parses a column value; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "DEDUCTED" => Some(Self::Deducted),
            "RESTORED" => Some(Self::Restored),
            _ => None,
        }
    }
}

/// The kind of a point ledger row (the `point_ledger.kind` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerKind {
    /// GrantPoints added points (keyed by its idempotency key).
    Grant,
    /// DeductPoints took points for an order.
    Deduct,
    /// RestorePoints gave an order's points back.
    Restore,
}

impl LedgerKind {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "GRANT",
            Self::Deduct => "DEDUCT",
            Self::Restore => "RESTORE",
        }
    }
}

/// The balance after deducting `amount`, or `None` when the balance is too small (or the amount
/// is not positive).
pub fn deduct(balance: i64, amount: i64) -> Option<i64> {
    if amount <= 0 || balance < amount {
        None
    } else {
        balance.checked_sub(amount)
    }
}

/// The balance after granting `amount`, or `None` when `balance + held + amount` would overflow
/// `i64` (`held`: points currently held by orders of the user) or the amount is not positive.
pub fn grant(balance: i64, held: i64, amount: i64) -> Option<i64> {
    if amount <= 0 || held < 0 {
        return None;
    }
    balance.checked_add(held)?.checked_add(amount)?;
    balance.checked_add(amount)
}

/// The balance after giving back `amount` held points, or `None` on overflow (prevented by
/// [`grant`]).
pub fn give_back(balance: i64, amount: i64) -> Option<i64> {
    if amount < 0 {
        None
    } else {
        balance.checked_add(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduct_never_goes_negative() {
        assert_eq!(deduct(1_000, 300), Some(700));
        assert_eq!(deduct(1_000, 1_000), Some(0));
        assert_eq!(deduct(1_000, 1_001), None);
        assert_eq!(deduct(0, 1), None);
        assert_eq!(deduct(1_000, 0), None);
        assert_eq!(deduct(1_000, -5), None);
    }

    #[test]
    fn grant_keeps_balance_plus_held_within_i64() {
        assert_eq!(grant(0, 0, 5), Some(5));
        assert_eq!(grant(i64::MAX - 5, 0, 5), Some(i64::MAX));
        assert_eq!(grant(i64::MAX - 5, 0, 6), None);
        // Held points count: giving them back later must not overflow.
        assert_eq!(grant(i64::MAX - 10, 5, 5), Some(i64::MAX - 5));
        assert_eq!(grant(i64::MAX - 10, 6, 5), None);
        assert_eq!(grant(0, 0, 0), None);
        assert_eq!(grant(0, 0, -1), None);
        assert_eq!(grant(0, -1, 1), None);
    }

    #[test]
    fn give_back_is_checked() {
        assert_eq!(give_back(10, 5), Some(15));
        assert_eq!(give_back(i64::MAX, 1), None);
        assert_eq!(give_back(10, -1), None);
    }

    #[test]
    fn column_values_round_trip() {
        for s in [DeductionStatus::Deducted, DeductionStatus::Restored] {
            assert_eq!(DeductionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeductionStatus::parse("x"), None);
        let kinds = [LedgerKind::Grant, LedgerKind::Deduct, LedgerKind::Restore];
        let names: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["GRANT", "DEDUCT", "RESTORE"]);
    }
}
