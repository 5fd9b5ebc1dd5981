//! Pure point rules (docs/architecture.md: step 5 of "The order saga", "The service contract"):
//! balance arithmetic (checked, never negative), the per-order deduction states, and the business
//! decisions of DeductPoints and RestorePoints, which return a typed [`Rejection`] that the store
//! maps to its status (the late-action rule and the restore plan are
//! `sagaflow_server::idempotency::late_action`'s). No I/O here; every rule is unit-tested without
//! a database or a server.
//!
//! Points are KRW won. A user's points are either in the balance or **held** by an order (a
//! DEDUCTED deduction); RestorePoints moves held points back. GrantPoints keeps
//! `balance + held` within `i64`, so giving held points back can never overflow.

use std::collections::HashMap;

use sagaflow_server::idempotency::late_action::ActionClaim;

/// `ErrorInfo.reason`: the balance is smaller than the amount to deduct (metadata `balance`,
/// `requested`).
pub const INSUFFICIENT_POINTS: &str = "INSUFFICIENT_POINTS";
/// `ErrorInfo.reason`: the order already deducted points under another idempotency key.
pub const ORDER_ALREADY_DEDUCTED: &str = "ORDER_ALREADY_DEDUCTED";
/// `ErrorInfo.reason`: RestorePoints names another user than the order's deduction.
pub const USER_MISMATCH: &str = "USER_MISMATCH";

/// Why DeductPoints or RestorePoints is refused: a business rejection (FAILED_PRECONDITION with
/// [`Rejection::reason`] and [`Rejection::metadata`] in its `ErrorInfo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The order already deducted points under another idempotency key.
    AlreadyDeducted,
    /// The balance is smaller than the amount to deduct.
    InsufficientPoints {
        /// The user's balance.
        balance: i64,
        /// The amount asked for.
        requested: i64,
    },
    /// RestorePoints names another user than the one the order's points were deducted from.
    UserMismatch,
}

impl Rejection {
    /// The `ErrorInfo.reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AlreadyDeducted => ORDER_ALREADY_DEDUCTED,
            Self::InsufficientPoints { .. } => INSUFFICIENT_POINTS,
            Self::UserMismatch => USER_MISMATCH,
        }
    }

    /// A sentence for a person about the command of `user_id` for order `order_id`.
    pub fn message(self, order_id: &str, user_id: &str) -> String {
        match self {
            Self::AlreadyDeducted => {
                format!("order {order_id} already deducted points under another key")
            }
            Self::InsufficientPoints { balance, requested } => {
                format!("user {user_id:?} has {balance} points, the order needs {requested}")
            }
            Self::UserMismatch => {
                format!("order {order_id} belongs to another user than {user_id:?}")
            }
        }
    }

    /// The `ErrorInfo.metadata`: `balance` and `requested` for
    /// [`Rejection::InsufficientPoints`].
    pub fn metadata(self) -> HashMap<String, String> {
        match self {
            Self::InsufficientPoints { balance, requested } => HashMap::from([
                ("balance".to_owned(), balance.to_string()),
                ("requested".to_owned(), requested.to_string()),
            ]),
            Self::AlreadyDeducted | Self::UserMismatch => HashMap::new(),
        }
    }
}

/// DeductPoints' decision on what the late-action claim of the order's deduction found (a
/// compensation that came first is refused before this, by the claim itself): a new deduction
/// goes on; one that exists already was made under another idempotency key.
///
/// # Errors
/// [`Rejection::AlreadyDeducted`] for an existing deduction.
pub fn decide_deduct(claim: ActionClaim) -> Result<(), Rejection> {
    match claim {
        ActionClaim::Inserted => Ok(()),
        ActionClaim::Existing => Err(Rejection::AlreadyDeducted),
    }
}

/// The balance after DeductPoints takes `amount` from `balance` ([`deduct`]).
///
/// # Errors
/// [`Rejection::InsufficientPoints`] when the balance is smaller than the amount.
pub fn take_points(balance: i64, amount: i64) -> Result<i64, Rejection> {
    deduct(balance, amount).ok_or(Rejection::InsufficientPoints {
        balance,
        requested: amount,
    })
}

/// RestorePoints' decision when the order's points were deducted from `owner` and the command
/// names `user_id`.
///
/// # Errors
/// [`Rejection::UserMismatch`] when they differ.
pub fn decide_restore(owner: &str, user_id: &str) -> Result<(), Rejection> {
    if owner == user_id {
        Ok(())
    } else {
        Err(Rejection::UserMismatch)
    }
}

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
    fn decisions_reject_with_their_reason_and_metadata() {
        assert_eq!(decide_deduct(ActionClaim::Inserted), Ok(()));
        assert_eq!(
            decide_deduct(ActionClaim::Existing),
            Err(Rejection::AlreadyDeducted)
        );
        assert_eq!(take_points(1_000, 300), Ok(700));
        let short = take_points(200, 300).unwrap_err();
        assert_eq!(
            short,
            Rejection::InsufficientPoints {
                balance: 200,
                requested: 300
            }
        );
        assert_eq!(short.reason(), INSUFFICIENT_POINTS);
        assert_eq!(
            short.message("o-1", "alice"),
            "user \"alice\" has 200 points, the order needs 300"
        );
        assert_eq!(
            short.metadata(),
            HashMap::from([
                ("balance".to_owned(), "200".to_owned()),
                ("requested".to_owned(), "300".to_owned()),
            ])
        );
        assert_eq!(decide_restore("alice", "alice"), Ok(()));
        let other = decide_restore("alice", "bob").unwrap_err();
        assert_eq!(other.reason(), USER_MISMATCH);
        assert_eq!(
            other.message("o-1", "bob"),
            "order o-1 belongs to another user than \"bob\""
        );
        assert!(other.metadata().is_empty());
        assert_eq!(Rejection::AlreadyDeducted.reason(), ORDER_ALREADY_DEDUCTED);
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
