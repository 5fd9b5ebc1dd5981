//! Payment business rules, pure and tested without a server (docs/architecture.md: steps 4 and 6
//! of "The order saga", "The service contract").
//!
//! ```text
//!                 StartPayment            CompletePayment (pivot)     RefundPayment
//!   (none) ─────────────────▶ STARTED ─────────────────▶ COMPLETED ─────────────▶ REFUNDED
//!     │                          │
//!     │ CancelPayment            │ CancelPayment (void)
//!     ▼                          ▼
//!   CANCELED tombstone        CANCELED
//!   (no amount: a late StartPayment is rejected with COMPENSATED_BEFORE_ACTION)
//! ```
//!
//! Each command first asks a `decide_*` function what to do with the payment as stored; the
//! service then calls the gateway when told to, and decides again inside the recording
//! transaction (the row may have changed while the gateway answered).
//!
//! Before StartPayment calls the gateway's authorize it commits an authorization intent
//! ([`IntentStatus`]), so that an authorization made at the gateway is known to the database even
//! when the payment is never recorded (the recording fails, or the process dies):
//!
//! ```text
//!  StartPayment ──▶ AUTHORIZING ──recorded with the STARTED payment──────────────▶ RECORDED
//!                       │  └──────the gateway declined───────────────────────────▶ DECLINED
//!                       └──void_by_key (CancelPayment's tombstone path, or a
//!                          StartPayment that finds the tombstone)───────────────▶ VOIDED
//!  CancelPayment before any StartPayment claims the order ──────────────────────▶ VOIDED (no amount)
//! ```

use std::fmt;

/// Business rejection reasons (`google.rpc.ErrorInfo.reason`) of the payment service.
pub mod reason {
    /// The gateway declined the authorization.
    pub const PAYMENT_DECLINED: &str = "PAYMENT_DECLINED";
    /// CancelPayment for this order came before StartPayment (the late-action rule,
    /// docs/architecture.md, "The service contract"; defined once, in `sagaflow_server`).
    pub use sagaflow_server::idempotency::late_action::COMPENSATED_BEFORE_ACTION;
    /// CancelPayment of a captured payment.
    pub const PAYMENT_ALREADY_COMPLETED: &str = "PAYMENT_ALREADY_COMPLETED";
    /// The gateway declined the capture; the payment stays STARTED.
    pub const CAPTURE_DECLINED: &str = "CAPTURE_DECLINED";
    /// The payment was canceled.
    pub const PAYMENT_CANCELED: &str = "PAYMENT_CANCELED";
    /// RefundPayment of a payment that was not captured.
    pub const PAYMENT_NOT_COMPLETED: &str = "PAYMENT_NOT_COMPLETED";
    /// CompletePayment of a refunded payment.
    pub const PAYMENT_REFUNDED: &str = "PAYMENT_REFUNDED";
    /// StartPayment for an order that already has a payment of another amount or card token.
    pub const PAYMENT_ALREADY_EXISTS: &str = "PAYMENT_ALREADY_EXISTS";
}

/// Where a payment stands (the `payments.status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Authorized at the gateway, not captured.
    Started,
    /// Voided, or canceled before it started (tombstone).
    Canceled,
    /// Captured.
    Completed,
    /// Captured, then given back.
    Refunded,
}

impl PaymentStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Canceled => "CANCELED",
            Self::Completed => "COMPLETED",
            Self::Refunded => "REFUNDED",
        }
    }

    /// Parses a column value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "STARTED" => Some(Self::Started),
            "CANCELED" => Some(Self::Canceled),
            "COMPLETED" => Some(Self::Completed),
            "REFUNDED" => Some(Self::Refunded),
            _ => None,
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payment that was started (authorized at the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// UUID of the payment.
    pub payment_id: String,
    /// UUID of the order it pays.
    pub order_id: String,
    /// KRW won.
    pub amount: i64,
    /// The card token it was authorized with.
    pub payment_method: String,
    /// Current status.
    pub status: PaymentStatus,
    /// The gateway's authorization reference.
    pub authorization_ref: String,
}

/// What the payments table holds for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentRecord {
    /// CancelPayment came first: the order can never be paid (docs/architecture.md, "The service
    /// contract").
    Tombstone {
        /// UUID of the tombstone row.
        payment_id: String,
        /// UUID of the order.
        order_id: String,
    },
    /// A started payment in any later status.
    Payment(Payment),
}

/// A business rejection of a payment command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The gateway declined the authorization.
    Declined,
    /// CancelPayment came before this StartPayment.
    CompensatedBeforeAction,
    /// The payment was captured; it cannot be canceled.
    AlreadyCompleted,
    /// The gateway declined the capture.
    CaptureDeclined,
    /// The payment was canceled.
    Canceled,
    /// The payment was refunded.
    Refunded,
    /// Refund of a payment that was not captured.
    NotCompleted(PaymentStatus),
    /// The order already has a payment with another amount or card token.
    AlreadyExists,
    /// The order has no payment.
    NotFound,
}

impl Rejection {
    /// The `ErrorInfo` reason, or `None` for [`Rejection::NotFound`] (a NOT_FOUND status).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Declined => Some(reason::PAYMENT_DECLINED),
            Self::CompensatedBeforeAction => Some(reason::COMPENSATED_BEFORE_ACTION),
            Self::AlreadyCompleted => Some(reason::PAYMENT_ALREADY_COMPLETED),
            Self::CaptureDeclined => Some(reason::CAPTURE_DECLINED),
            Self::Canceled => Some(reason::PAYMENT_CANCELED),
            Self::Refunded => Some(reason::PAYMENT_REFUNDED),
            Self::NotCompleted(_) => Some(reason::PAYMENT_NOT_COMPLETED),
            Self::AlreadyExists => Some(reason::PAYMENT_ALREADY_EXISTS),
            Self::NotFound => None,
        }
    }

    /// A message for a person.
    pub fn message(&self, order_id: &str) -> String {
        match self {
            Self::Declined => format!("the payment of order {order_id} was declined"),
            Self::CompensatedBeforeAction => format!(
                "the payment of order {order_id} was canceled before it started; it cannot start now"
            ),
            Self::AlreadyCompleted => {
                format!("the payment of order {order_id} was captured; refund it instead")
            }
            Self::CaptureDeclined => {
                format!("the capture of the payment of order {order_id} was declined")
            }
            Self::Canceled => format!("the payment of order {order_id} was canceled"),
            Self::Refunded => format!("the payment of order {order_id} was refunded"),
            Self::NotCompleted(status) => {
                format!("the payment of order {order_id} is {status}, not COMPLETED")
            }
            Self::AlreadyExists => format!(
                "order {order_id} already has a payment with another amount or payment method"
            ),
            Self::NotFound => format!("payment of order {order_id}"),
        }
    }
}

/// What StartPayment does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// No payment yet: authorize at the gateway and store a STARTED payment.
    Authorize,
    /// The order already has this payment: return it unchanged.
    Existing(Payment),
    /// Reject.
    Reject(Rejection),
}

/// Decides StartPayment of `amount` with `payment_method` given what is stored.
pub fn decide_start(
    stored: Option<&PaymentRecord>,
    amount: i64,
    payment_method: &str,
) -> StartDecision {
    match stored {
        None => StartDecision::Authorize,
        Some(PaymentRecord::Tombstone { .. }) => {
            StartDecision::Reject(Rejection::CompensatedBeforeAction)
        }
        Some(PaymentRecord::Payment(p)) => {
            if p.amount != amount || p.payment_method != payment_method {
                StartDecision::Reject(Rejection::AlreadyExists)
            } else if p.status == PaymentStatus::Canceled {
                StartDecision::Reject(Rejection::Canceled)
            } else {
                StartDecision::Existing(p.clone())
            }
        }
    }
}

/// What CancelPayment (the compensation of StartPayment) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelDecision {
    /// Nothing started: record a tombstone so that a late StartPayment is rejected.
    RecordTombstone,
    /// A tombstone is already there: nothing to do (the response has no payment).
    AlreadyTombstoned,
    /// Void the authorization at the gateway, then mark the payment CANCELED.
    Void(Payment),
    /// No money is held (CANCELED already, or REFUNDED): return the payment unchanged.
    Done(Payment),
    /// Reject.
    Reject(Rejection),
}

/// Decides CancelPayment given what is stored.
pub fn decide_cancel(stored: Option<&PaymentRecord>) -> CancelDecision {
    match stored {
        None => CancelDecision::RecordTombstone,
        Some(PaymentRecord::Tombstone { .. }) => CancelDecision::AlreadyTombstoned,
        Some(PaymentRecord::Payment(p)) => match p.status {
            PaymentStatus::Started => CancelDecision::Void(p.clone()),
            PaymentStatus::Canceled | PaymentStatus::Refunded => CancelDecision::Done(p.clone()),
            PaymentStatus::Completed => CancelDecision::Reject(Rejection::AlreadyCompleted),
        },
    }
}

/// What CompletePayment (the pivot) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompleteDecision {
    /// Capture at the gateway, then mark the payment COMPLETED.
    Capture(Payment),
    /// Already COMPLETED: return it.
    Done(Payment),
    /// Reject.
    Reject(Rejection),
}

/// Decides CompletePayment given what is stored.
pub fn decide_complete(stored: Option<&PaymentRecord>) -> CompleteDecision {
    match stored {
        None => CompleteDecision::Reject(Rejection::NotFound),
        // Canceled before it started: the definite business answer for the pivot.
        Some(PaymentRecord::Tombstone { .. }) => CompleteDecision::Reject(Rejection::Canceled),
        Some(PaymentRecord::Payment(p)) => match p.status {
            PaymentStatus::Started => CompleteDecision::Capture(p.clone()),
            PaymentStatus::Completed => CompleteDecision::Done(p.clone()),
            PaymentStatus::Canceled => CompleteDecision::Reject(Rejection::Canceled),
            PaymentStatus::Refunded => CompleteDecision::Reject(Rejection::Refunded),
        },
    }
}

/// What RefundPayment does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundDecision {
    /// Refund at the gateway, then mark the payment REFUNDED.
    Refund(Payment),
    /// Already REFUNDED: return it.
    Done(Payment),
    /// Reject.
    Reject(Rejection),
}

/// Decides RefundPayment given what is stored.
pub fn decide_refund(stored: Option<&PaymentRecord>) -> RefundDecision {
    match stored {
        None | Some(PaymentRecord::Tombstone { .. }) => RefundDecision::Reject(Rejection::NotFound),
        Some(PaymentRecord::Payment(p)) => match p.status {
            PaymentStatus::Completed => RefundDecision::Refund(p.clone()),
            PaymentStatus::Refunded => RefundDecision::Done(p.clone()),
            status @ (PaymentStatus::Started | PaymentStatus::Canceled) => {
                RefundDecision::Reject(Rejection::NotCompleted(status))
            }
        },
    }
}

/// Where an order's authorization intent stands (the `payment_intents.status` column; see the
/// module docs for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentStatus {
    /// Committed before the gateway's authorize: the gateway may hold an authorization under the
    /// intent's key that no payment row owns yet.
    Authorizing,
    /// The authorization belongs to the STARTED payment (recorded in the same transaction).
    Recorded,
    /// The gateway declined under the key: nothing is or can be authorized under it.
    Declined,
    /// Released: voided at the gateway by key, or claimed by a CancelPayment that came before any
    /// StartPayment. Nothing is or can be authorized under the key any more.
    Voided,
}

impl IntentStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorizing => "AUTHORIZING",
            Self::Recorded => "RECORDED",
            Self::Declined => "DECLINED",
            Self::Voided => "VOIDED",
        }
    }

    /// Parses a column value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "AUTHORIZING" => Some(Self::Authorizing),
            "RECORDED" => Some(Self::Recorded),
            "DECLINED" => Some(Self::Declined),
            "VOIDED" => Some(Self::Voided),
            _ => None,
        }
    }

    /// True when the gateway may hold an authorization under the intent's key that no payment
    /// owns: a CancelPayment (or a StartPayment that finds the tombstone) voids it by key.
    pub fn may_hold_open_authorization(self) -> bool {
        self == Self::Authorizing
    }

    /// True when StartPayment may call the gateway's authorize: not once the authorization is
    /// recorded (a racing StartPayment did it) or the key is released (CancelPayment came).
    pub fn allows_authorize(self) -> bool {
        matches!(self, Self::Authorizing | Self::Declined)
    }
}

impl fmt::Display for IntentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// StartPayment's authorization intent for one order (one per order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// UUID of the order.
    pub order_id: String,
    /// The gateway idempotency key of the authorization: `gateway_key(order_id, "authorize")`.
    pub gateway_key: String,
    /// KRW won; `None` for the row a CancelPayment claimed before any StartPayment.
    pub amount: Option<i64>,
    /// The card token; `None` exactly when `amount` is.
    pub payment_method: Option<String>,
    /// Where it stands.
    pub status: IntentStatus,
    /// The gateway's void reference, when a void by key voided an authorization.
    pub void_ref: Option<String>,
}

/// What CancelPayment's tombstone transaction does with the order's intent, so that a tombstone
/// is never committed while the gateway may hold an authorization under the order's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TombstoneIntent {
    /// No intent: insert a VOIDED one without amount, so a StartPayment that comes later finds
    /// the order released and does not call the gateway.
    Claim,
    /// An open intent this CancelPayment voided by key before the transaction: mark it VOIDED.
    SettleVoided,
    /// Settled already (declined or released): nothing to do.
    Keep,
    /// An open intent this CancelPayment did not void (a StartPayment began meanwhile): roll back
    /// and answer `UNAVAILABLE`, so the retry voids it first.
    ChangedMeanwhile,
}

/// Decides [`TombstoneIntent`] given the stored intent's status and whether this CancelPayment
/// voided the order's authorization key before its transaction.
pub fn decide_tombstone_intent(
    intent: Option<IntentStatus>,
    voided_by_key: bool,
) -> TombstoneIntent {
    match intent {
        None => TombstoneIntent::Claim,
        Some(IntentStatus::Authorizing) if voided_by_key => TombstoneIntent::SettleVoided,
        Some(IntentStatus::Authorizing) => TombstoneIntent::ChangedMeanwhile,
        Some(IntentStatus::Recorded | IntentStatus::Declined | IntentStatus::Voided) => {
            TombstoneIntent::Keep
        }
    }
}

/// The gateway idempotency key of one operation on an order's payment. Derived from the order id
/// (one payment per order), so that every retry and every racing request for the order reaches
/// the same authorization, and a repeated compensation the same void.
pub fn gateway_key(order_id: &str, operation: &str) -> String {
    format!("payment:{order_id}:{operation}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: PaymentStatus) -> PaymentRecord {
        PaymentRecord::Payment(Payment {
            payment_id: "p".into(),
            order_id: "o".into(),
            amount: 1000,
            payment_method: "tok_ok".into(),
            status,
            authorization_ref: "a".into(),
        })
    }

    fn inner(record: &PaymentRecord) -> Payment {
        match record {
            PaymentRecord::Payment(p) => p.clone(),
            PaymentRecord::Tombstone { .. } => panic!("not a payment"),
        }
    }

    fn tombstone() -> PaymentRecord {
        PaymentRecord::Tombstone {
            payment_id: "t".into(),
            order_id: "o".into(),
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            PaymentStatus::Started,
            PaymentStatus::Canceled,
            PaymentStatus::Completed,
            PaymentStatus::Refunded,
        ] {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PaymentStatus::parse("started"), None);
    }

    #[test]
    fn start() {
        assert_eq!(decide_start(None, 1000, "tok_ok"), StartDecision::Authorize);
        assert_eq!(
            decide_start(Some(&tombstone()), 1000, "tok_ok"),
            StartDecision::Reject(Rejection::CompensatedBeforeAction)
        );
        let started = payment(PaymentStatus::Started);
        assert_eq!(
            decide_start(Some(&started), 1000, "tok_ok"),
            StartDecision::Existing(inner(&started))
        );
        assert_eq!(
            decide_start(Some(&started), 999, "tok_ok"),
            StartDecision::Reject(Rejection::AlreadyExists)
        );
        assert_eq!(
            decide_start(Some(&started), 1000, "tok_slow"),
            StartDecision::Reject(Rejection::AlreadyExists)
        );
        assert_eq!(
            decide_start(Some(&payment(PaymentStatus::Canceled)), 1000, "tok_ok"),
            StartDecision::Reject(Rejection::Canceled)
        );
        let completed = payment(PaymentStatus::Completed);
        assert_eq!(
            decide_start(Some(&completed), 1000, "tok_ok"),
            StartDecision::Existing(inner(&completed))
        );
    }

    #[test]
    fn cancel() {
        assert_eq!(decide_cancel(None), CancelDecision::RecordTombstone);
        assert_eq!(
            decide_cancel(Some(&tombstone())),
            CancelDecision::AlreadyTombstoned
        );
        let started = payment(PaymentStatus::Started);
        assert_eq!(
            decide_cancel(Some(&started)),
            CancelDecision::Void(inner(&started))
        );
        let canceled = payment(PaymentStatus::Canceled);
        assert_eq!(
            decide_cancel(Some(&canceled)),
            CancelDecision::Done(inner(&canceled))
        );
        let refunded = payment(PaymentStatus::Refunded);
        assert_eq!(
            decide_cancel(Some(&refunded)),
            CancelDecision::Done(inner(&refunded))
        );
        assert_eq!(
            decide_cancel(Some(&payment(PaymentStatus::Completed))),
            CancelDecision::Reject(Rejection::AlreadyCompleted)
        );
    }

    #[test]
    fn complete() {
        assert_eq!(
            decide_complete(None),
            CompleteDecision::Reject(Rejection::NotFound)
        );
        assert_eq!(
            decide_complete(Some(&tombstone())),
            CompleteDecision::Reject(Rejection::Canceled)
        );
        let started = payment(PaymentStatus::Started);
        assert_eq!(
            decide_complete(Some(&started)),
            CompleteDecision::Capture(inner(&started))
        );
        let completed = payment(PaymentStatus::Completed);
        assert_eq!(
            decide_complete(Some(&completed)),
            CompleteDecision::Done(inner(&completed))
        );
        assert_eq!(
            decide_complete(Some(&payment(PaymentStatus::Canceled))),
            CompleteDecision::Reject(Rejection::Canceled)
        );
        assert_eq!(
            decide_complete(Some(&payment(PaymentStatus::Refunded))),
            CompleteDecision::Reject(Rejection::Refunded)
        );
    }

    #[test]
    fn refund() {
        assert_eq!(
            decide_refund(None),
            RefundDecision::Reject(Rejection::NotFound)
        );
        assert_eq!(
            decide_refund(Some(&tombstone())),
            RefundDecision::Reject(Rejection::NotFound)
        );
        let completed = payment(PaymentStatus::Completed);
        assert_eq!(
            decide_refund(Some(&completed)),
            RefundDecision::Refund(inner(&completed))
        );
        let refunded = payment(PaymentStatus::Refunded);
        assert_eq!(
            decide_refund(Some(&refunded)),
            RefundDecision::Done(inner(&refunded))
        );
        for status in [PaymentStatus::Started, PaymentStatus::Canceled] {
            assert_eq!(
                decide_refund(Some(&payment(status))),
                RefundDecision::Reject(Rejection::NotCompleted(status))
            );
        }
    }

    #[test]
    fn every_rejection_but_not_found_has_a_reason() {
        for r in [
            Rejection::Declined,
            Rejection::CompensatedBeforeAction,
            Rejection::AlreadyCompleted,
            Rejection::CaptureDeclined,
            Rejection::Canceled,
            Rejection::Refunded,
            Rejection::NotCompleted(PaymentStatus::Started),
            Rejection::AlreadyExists,
        ] {
            assert!(r.reason().is_some(), "{r:?}");
            assert!(r.message("o").contains('o'));
        }
        assert_eq!(Rejection::NotFound.reason(), None);
    }

    #[test]
    fn intent_statuses() {
        use IntentStatus as I;
        for s in [I::Authorizing, I::Recorded, I::Declined, I::Voided] {
            assert_eq!(I::parse(s.as_str()), Some(s));
        }
        assert_eq!(I::parse("authorizing"), None);
        assert!(I::Authorizing.may_hold_open_authorization());
        for s in [I::Recorded, I::Declined, I::Voided] {
            assert!(!s.may_hold_open_authorization(), "{s}");
        }
        assert!(I::Authorizing.allows_authorize());
        assert!(
            I::Declined.allows_authorize(),
            "the gateway replays its decline"
        );
        assert!(!I::Recorded.allows_authorize());
        assert!(!I::Voided.allows_authorize());
    }

    #[test]
    fn tombstone_intent() {
        use IntentStatus as I;
        use TombstoneIntent as T;
        assert_eq!(decide_tombstone_intent(None, false), T::Claim);
        assert_eq!(
            decide_tombstone_intent(Some(I::Authorizing), true),
            T::SettleVoided
        );
        assert_eq!(
            decide_tombstone_intent(Some(I::Authorizing), false),
            T::ChangedMeanwhile
        );
        for s in [I::Recorded, I::Declined, I::Voided] {
            assert_eq!(decide_tombstone_intent(Some(s), false), T::Keep, "{s}");
        }
    }

    #[test]
    fn gateway_keys_are_per_order_and_operation() {
        assert_eq!(gateway_key("o1", "authorize"), "payment:o1:authorize");
        assert_ne!(gateway_key("o1", "void"), gateway_key("o2", "void"));
    }
}
