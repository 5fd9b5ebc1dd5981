//! The order saga of docs/architecture.md, "The order saga", as one typed module: its input
//! ([`OrderSagaInput`]), one type per step ([`UseCoupon`] … [`CompleteOrder`], each an
//! [`OrderStep`] with its action, and a [`Compensate`] impl where it has a compensation) calling
//! the services through the typed clients, a serde struct per step output (the JSON shapes stored
//! in saga rows and journals), and the mapping from the failed step to the order's failure reason.
//! [`typed`](crate::typed) turns the steps into engine actions; [`crate::definition`] puts them in order.
//!
//! | # | step               | action            | compensation      | kind                          |
//! |---|--------------------|-------------------|-------------------|-------------------------------|
//! | 1 | `use_coupon`       | UseCoupon         | RestoreCoupon     | compensatable (no coupon: skip)|
//! | 2 | `apply_coupon`     | ApplyCoupon       | — (FailOrder)     | compensatable (no coupon: skip)|
//! | 3 | `deduct_inventory` | DeductInventory   | RestoreInventory  | compensatable                 |
//! | 4 | `start_payment`    | StartPayment      | CancelPayment     | compensatable                 |
//! | 5 | `deduct_points`    | DeductPoints      | RestorePoints     | compensatable (0 points: skip)|
//! | 6 | `complete_payment` | CompletePayment   | —                 | pivot                         |
//! | 7 | `complete_order`   | CompleteOrder     | —                 | retriable                     |
//!
//! On failure, after the compensations, the finalizer runs `FailOrder` with the reason.
//! Every call carries the engine's idempotency key (`<saga id>:<step>`, `…:compensate`), the
//! step's per-attempt deadline as the gRPC timeout, and the `traceparent` of the engine's
//! `saga.step` span it runs in (the clients are built over traced channels), so each service's
//! server span is a child of its step's span.

use std::time::Duration;

use sagaflow_proto::{
    coupon::v1::{RestoreCouponRequest, UseCouponRequest},
    inventory::v1::{DeductInventoryRequest, RestoreInventoryRequest, StockLine},
    order::v1::{ApplyCouponRequest, CompleteOrderRequest, DiscountRule, FailureReason},
    payment::v1::{CancelPaymentRequest, CompletePaymentRequest, StartPaymentRequest},
    point::v1::{DeductPointsRequest, RestorePointsRequest},
};
use sagaflow_workflow_engine::StepKind;
use serde::{Deserialize, Serialize};
use tonic::Status;

pub use crate::calls::{
    DEFINITION_NAME, DEFINITION_VERSION, OrderSagaInput, SagaLine, ServiceClients,
    reason_from_saga, reason_name, step,
};
use crate::{
    calls::request,
    typed::{Compensate, Optional, OrderStep, Required, Skip},
};

fn coupon_code(input: &OrderSagaInput) -> Result<String, Status> {
    input
        .coupon_code
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Status::failed_precondition("the order has no coupon"))
}

/// Output of `use_coupon`: the coupon's discount rule and the discount UseCoupon computed on the
/// subtotal. Stored in the saga row: the field names are part of the stored format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseCouponOutput {
    /// Fixed discount of the coupon, KRW won (0 for a percentage).
    pub discount_amount: i64,
    /// Percentage 1..=100 (0 for a fixed amount).
    pub discount_percent: i32,
    /// Cap of a percentage discount, KRW won; 0 for none.
    pub max_discount: i64,
    /// The discount UseCoupon computed on the order's subtotal, KRW won
    /// (`UseCouponResponse.discount`; the coupon service owns the rule). Absent in the outputs
    /// of sagas that ran this step before UseCoupon reported it: read as 0.
    #[serde(default)]
    pub discount: i64,
}

/// Output of `apply_coupon`: the order's amounts after the discount, KRW won.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyCouponOutput {
    /// The discount the order took, KRW won.
    pub discount: i64,
    /// subtotal − discount − points, KRW won.
    pub payable: i64,
}

/// Output of `start_payment`: the authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartPaymentOutput {
    /// The payment's id (UUID).
    pub payment_id: String,
    /// The authorized amount, KRW won.
    pub amount: i64,
}

/// Output of `deduct_points`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeductPointsOutput {
    /// The user's balance after the deduction, KRW won.
    pub balance: i64,
}

/// The output of a step that returns nothing: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoOutput {}

/// Step 1, `use_coupon`: Coupon.UseCoupon, compensated by RestoreCoupon; skipped without a
/// coupon; a refusal fails the order with COUPON_UNAVAILABLE.
#[derive(Debug)]
pub struct UseCoupon;

impl OrderStep for UseCoupon {
    const NAME: &'static str = step::USE_COUPON;
    const SERVICE: &'static str = "coupon";
    const RPC: &'static str = "UseCoupon";
    const KIND: StepKind = StepKind::Compensatable;
    const SKIP: Skip = Skip::WithoutCoupon;
    const FAILURE_REASON: FailureReason = FailureReason::CouponUnavailable;
    type Deps = ();
    type Output = UseCouponOutput;

    async fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        (): &(),
        key: String,
        timeout: Duration,
    ) -> Result<UseCouponOutput, Status> {
        let reply = clients
            .coupon
            .clone()
            .use_coupon(request(
                UseCouponRequest {
                    idempotency_key: key,
                    code: coupon_code(input)?,
                    user_id: input.user_id.clone(),
                    order_id: input.order_id.clone(),
                    order_amount: input.subtotal,
                },
                timeout,
            ))
            .await?
            .into_inner();
        let coupon = reply
            .coupon
            .ok_or_else(|| Status::internal("UseCoupon returned no coupon"))?;
        Ok(UseCouponOutput {
            discount_amount: coupon.discount_amount,
            discount_percent: coupon.discount_percent,
            max_discount: coupon.max_discount,
            discount: reply.discount,
        })
    }
}

impl Compensate for UseCoupon {
    const COMPENSATION_RPC: &'static str = "RestoreCoupon";

    async fn compensate(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        key: String,
        timeout: Duration,
    ) -> Result<(), Status> {
        clients
            .coupon
            .clone()
            .restore_coupon(request(
                RestoreCouponRequest {
                    idempotency_key: key,
                    code: coupon_code(input)?,
                    order_id: input.order_id.clone(),
                },
                timeout,
            ))
            .await?;
        Ok(())
    }
}

/// Step 2, `apply_coupon`: Order.ApplyCoupon with UseCoupon's discount and the coupon's rule (for
/// the order's record); no compensation (FailOrder clears the discount); skipped without a coupon.
#[derive(Debug)]
pub struct ApplyCoupon;

impl OrderStep for ApplyCoupon {
    const NAME: &'static str = step::APPLY_COUPON;
    const SERVICE: &'static str = "order";
    const RPC: &'static str = "ApplyCoupon";
    const KIND: StepKind = StepKind::Compensatable;
    const SKIP: Skip = Skip::WithoutCoupon;
    const FAILURE_REASON: FailureReason = FailureReason::Internal;
    type Deps = Required<UseCoupon>;
    type Output = ApplyCouponOutput;

    async fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        coupon: &UseCouponOutput,
        key: String,
        timeout: Duration,
    ) -> Result<ApplyCouponOutput, Status> {
        let order = clients
            .order
            .clone()
            .apply_coupon(request(
                ApplyCouponRequest {
                    idempotency_key: key,
                    order_id: input.order_id.clone(),
                    rule: Some(DiscountRule {
                        discount_amount: coupon.discount_amount,
                        discount_percent: coupon.discount_percent,
                        max_discount: coupon.max_discount,
                    }),
                    discount: coupon.discount,
                },
                timeout,
            ))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("ApplyCoupon returned no order"))?;
        Ok(ApplyCouponOutput {
            discount: order.discount,
            payable: order.payable,
        })
    }
}

/// Step 3, `deduct_inventory`: Inventory.DeductInventory of every line, compensated by
/// RestoreInventory; a refusal fails the order with OUT_OF_STOCK.
#[derive(Debug)]
pub struct DeductInventory;

impl OrderStep for DeductInventory {
    const NAME: &'static str = step::DEDUCT_INVENTORY;
    const SERVICE: &'static str = "inventory";
    const RPC: &'static str = "DeductInventory";
    const KIND: StepKind = StepKind::Compensatable;
    const SKIP: Skip = Skip::Never;
    const FAILURE_REASON: FailureReason = FailureReason::OutOfStock;
    type Deps = ();
    type Output = NoOutput;

    async fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        (): &(),
        key: String,
        timeout: Duration,
    ) -> Result<NoOutput, Status> {
        clients
            .inventory
            .clone()
            .deduct_inventory(request(
                DeductInventoryRequest {
                    idempotency_key: key,
                    order_id: input.order_id.clone(),
                    lines: input
                        .lines
                        .iter()
                        .map(|l| StockLine {
                            sku: l.sku.clone(),
                            quantity: l.quantity,
                        })
                        .collect(),
                },
                timeout,
            ))
            .await?;
        Ok(NoOutput {})
    }
}

impl Compensate for DeductInventory {
    const COMPENSATION_RPC: &'static str = "RestoreInventory";

    async fn compensate(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        key: String,
        timeout: Duration,
    ) -> Result<(), Status> {
        clients
            .inventory
            .clone()
            .restore_inventory(request(
                RestoreInventoryRequest {
                    idempotency_key: key,
                    order_id: input.order_id.clone(),
                },
                timeout,
            ))
            .await?;
        Ok(())
    }
}

/// The payable amount, KRW won: ApplyCoupon's result when the order has a coupon, else
/// subtotal − points.
fn payable(input: &OrderSagaInput, applied: Option<&ApplyCouponOutput>) -> i64 {
    applied.map_or_else(
        || input.subtotal.saturating_sub(input.points),
        |a| a.payable,
    )
}

/// Step 4, `start_payment`: Payment.StartPayment (authorization) of the payable amount,
/// compensated by CancelPayment; a refusal fails the order with PAYMENT_DECLINED.
#[derive(Debug)]
pub struct StartPayment;

impl OrderStep for StartPayment {
    const NAME: &'static str = step::START_PAYMENT;
    const SERVICE: &'static str = "payment";
    const RPC: &'static str = "StartPayment";
    const KIND: StepKind = StepKind::Compensatable;
    const SKIP: Skip = Skip::Never;
    const FAILURE_REASON: FailureReason = FailureReason::PaymentDeclined;
    type Deps = Optional<ApplyCoupon>;
    type Output = StartPaymentOutput;

    async fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        applied: &Option<ApplyCouponOutput>,
        key: String,
        timeout: Duration,
    ) -> Result<StartPaymentOutput, Status> {
        let payment = clients
            .payment
            .clone()
            .start_payment(request(
                StartPaymentRequest {
                    idempotency_key: key,
                    order_id: input.order_id.clone(),
                    amount: payable(input, applied.as_ref()),
                    payment_method: input.payment_token().to_owned(),
                    user_id: input.user_id.clone(),
                },
                timeout,
            ))
            .await?
            .into_inner()
            .payment
            .ok_or_else(|| Status::internal("StartPayment returned no payment"))?;
        Ok(StartPaymentOutput {
            payment_id: payment.payment_id,
            amount: payment.amount,
        })
    }
}

impl Compensate for StartPayment {
    const COMPENSATION_RPC: &'static str = "CancelPayment";

    async fn compensate(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        key: String,
        timeout: Duration,
    ) -> Result<(), Status> {
        clients
            .payment
            .clone()
            .cancel_payment(request(
                CancelPaymentRequest {
                    idempotency_key: key,
                    order_id: input.order_id.clone(),
                },
                timeout,
            ))
            .await?;
        Ok(())
    }
}

/// Step 5, `deduct_points`: Point.DeductPoints of the points the order spends, compensated by
/// RestorePoints; skipped for 0 points; a refusal fails the order with INSUFFICIENT_POINTS.
#[derive(Debug)]
pub struct DeductPoints;

impl OrderStep for DeductPoints {
    const NAME: &'static str = step::DEDUCT_POINTS;
    const SERVICE: &'static str = "point";
    const RPC: &'static str = "DeductPoints";
    const KIND: StepKind = StepKind::Compensatable;
    const SKIP: Skip = Skip::WithoutPoints;
    const FAILURE_REASON: FailureReason = FailureReason::InsufficientPoints;
    type Deps = ();
    type Output = DeductPointsOutput;

    async fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        (): &(),
        key: String,
        timeout: Duration,
    ) -> Result<DeductPointsOutput, Status> {
        let reply = clients
            .point
            .clone()
            .deduct_points(request(
                DeductPointsRequest {
                    idempotency_key: key,
                    user_id: input.user_id.clone(),
                    order_id: input.order_id.clone(),
                    amount: input.points,
                },
                timeout,
            ))
            .await?
            .into_inner();
        Ok(DeductPointsOutput {
            balance: reply.balance,
        })
    }
}

impl Compensate for DeductPoints {
    const COMPENSATION_RPC: &'static str = "RestorePoints";

    async fn compensate(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        key: String,
        timeout: Duration,
    ) -> Result<(), Status> {
        clients
            .point
            .clone()
            .restore_points(request(
                RestorePointsRequest {
                    idempotency_key: key,
                    user_id: input.user_id.clone(),
                    order_id: input.order_id.clone(),
                },
                timeout,
            ))
            .await?;
        Ok(())
    }
}

/// Step 6, the pivot, `complete_payment`: Payment.CompletePayment (capture); never compensated;
/// a refusal fails the order with PAYMENT_DECLINED (and compensates steps 5..1).
#[derive(Debug)]
pub struct CompletePayment;

impl OrderStep for CompletePayment {
    const NAME: &'static str = step::COMPLETE_PAYMENT;
    const SERVICE: &'static str = "payment";
    const RPC: &'static str = "CompletePayment";
    const KIND: StepKind = StepKind::Pivot;
    const SKIP: Skip = Skip::Never;
    const FAILURE_REASON: FailureReason = FailureReason::PaymentDeclined;
    type Deps = ();
    type Output = NoOutput;

    async fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        (): &(),
        key: String,
        timeout: Duration,
    ) -> Result<NoOutput, Status> {
        clients
            .payment
            .clone()
            .complete_payment(request(
                CompletePaymentRequest {
                    idempotency_key: key,
                    order_id: input.order_id.clone(),
                },
                timeout,
            ))
            .await?;
        Ok(NoOutput {})
    }
}

/// Step 7, `complete_order`: Order.CompleteOrder; retried until it succeeds, never compensated.
#[derive(Debug)]
pub struct CompleteOrder;

impl OrderStep for CompleteOrder {
    const NAME: &'static str = step::COMPLETE_ORDER;
    const SERVICE: &'static str = "order";
    const RPC: &'static str = "CompleteOrder";
    const KIND: StepKind = StepKind::Retriable;
    const SKIP: Skip = Skip::Never;
    const FAILURE_REASON: FailureReason = FailureReason::Internal;
    type Deps = ();
    type Output = NoOutput;

    async fn action(
        clients: &ServiceClients,
        input: &OrderSagaInput,
        (): &(),
        key: String,
        timeout: Duration,
    ) -> Result<NoOutput, Status> {
        clients
            .order
            .clone()
            .complete_order(request(
                CompleteOrderRequest {
                    idempotency_key: key,
                    order_id: input.order_id.clone(),
                },
                timeout,
            ))
            .await?;
        Ok(NoOutput {})
    }
}

/// What a step of the order saga calls, for operators and generated tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCalls {
    /// The step's name.
    pub step: &'static str,
    /// The service called (`coupon`, `order`, `inventory`, `payment`, `point`).
    pub service: &'static str,
    /// The action's RPC (`UseCoupon`, …).
    pub rpc: &'static str,
    /// The compensation's RPC, if the step has one.
    pub compensation_rpc: Option<&'static str>,
    /// The order's failure reason when the service's handler refuses the action.
    pub failure_reason: FailureReason,
}

fn calls_of<S: OrderStep>(compensation_rpc: Option<&'static str>) -> StepCalls {
    StepCalls {
        step: S::NAME,
        service: S::SERVICE,
        rpc: S::RPC,
        compensation_rpc,
        failure_reason: S::FAILURE_REASON,
    }
}

/// What step `step_name` of the order saga calls; `None` for a name that is no step of it.
pub fn step_calls(step_name: &str) -> Option<StepCalls> {
    Some(match step_name {
        step::USE_COUPON => calls_of::<UseCoupon>(Some(UseCoupon::COMPENSATION_RPC)),
        step::APPLY_COUPON => calls_of::<ApplyCoupon>(None),
        step::DEDUCT_INVENTORY => {
            calls_of::<DeductInventory>(Some(DeductInventory::COMPENSATION_RPC))
        }
        step::START_PAYMENT => calls_of::<StartPayment>(Some(StartPayment::COMPENSATION_RPC)),
        step::DEDUCT_POINTS => calls_of::<DeductPoints>(Some(DeductPoints::COMPENSATION_RPC)),
        step::COMPLETE_PAYMENT => calls_of::<CompletePayment>(None),
        step::COMPLETE_ORDER => calls_of::<CompleteOrder>(None),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reason(step_name: &str) -> FailureReason {
        step_calls(step_name).unwrap().failure_reason
    }

    #[test]
    fn failure_reasons_follow_the_failed_step() {
        assert_eq!(reason(step::USE_COUPON), FailureReason::CouponUnavailable);
        assert_eq!(reason(step::DEDUCT_INVENTORY), FailureReason::OutOfStock);
        assert_eq!(reason(step::START_PAYMENT), FailureReason::PaymentDeclined);
        assert_eq!(
            reason(step::COMPLETE_PAYMENT),
            FailureReason::PaymentDeclined
        );
        assert_eq!(
            reason(step::DEDUCT_POINTS),
            FailureReason::InsufficientPoints
        );
        assert_eq!(reason(step::APPLY_COUPON), FailureReason::Internal);
        assert_eq!(reason(step::COMPLETE_ORDER), FailureReason::Internal);
        assert_eq!(step_calls("finalize"), None);
    }

    #[test]
    fn saga_reasons_round_trip() {
        for r in [
            FailureReason::CouponUnavailable,
            FailureReason::OutOfStock,
            FailureReason::PaymentDeclined,
            FailureReason::InsufficientPoints,
            FailureReason::DeadlineExceeded,
            FailureReason::Canceled,
            FailureReason::Internal,
        ] {
            assert_eq!(reason_from_saga(Some(reason_name(r))), r);
        }
        assert_eq!(reason_from_saga(Some("bogus")), FailureReason::Internal);
        assert_eq!(reason_from_saga(None), FailureReason::Internal);
    }

    #[test]
    fn payable_prefers_apply_coupon_output() {
        let input = OrderSagaInput {
            order_id: "o".into(),
            user_id: "u".into(),
            lines: vec![],
            coupon_code: None,
            subtotal: 10_000,
            points: 1_000,
            payment_method: "tok_ok".into(),
            sealed_payment_method: String::new(),
        };
        assert_eq!(payable(&input, None), 9_000);
        let applied = ApplyCouponOutput {
            discount: 5_000,
            payable: 4_000,
        };
        assert_eq!(payable(&input, Some(&applied)), 4_000);
    }

    /// The outputs keep the JSON shapes that journals of running sagas hold.
    #[test]
    fn outputs_keep_their_stored_shapes() {
        let old = json!({ "discount_amount": 1_000, "discount_percent": 0, "max_discount": 0 });
        let decoded: UseCouponOutput = serde_json::from_value(old).unwrap();
        assert_eq!(
            decoded,
            UseCouponOutput {
                discount_amount: 1_000,
                discount_percent: 0,
                max_discount: 0,
                discount: 0,
            }
        );
        let coupon = UseCouponOutput {
            discount: 700,
            ..decoded
        };
        assert_eq!(
            serde_json::to_value(coupon).unwrap(),
            json!({ "discount_amount": 1_000, "discount_percent": 0, "max_discount": 0, "discount": 700 })
        );
        assert_eq!(
            serde_json::to_value(ApplyCouponOutput {
                discount: 1,
                payable: 2
            })
            .unwrap(),
            json!({ "discount": 1, "payable": 2 })
        );
        assert_eq!(
            serde_json::to_value(StartPaymentOutput {
                payment_id: "p".into(),
                amount: 3
            })
            .unwrap(),
            json!({ "payment_id": "p", "amount": 3 })
        );
        assert_eq!(
            serde_json::to_value(DeductPointsOutput { balance: 4 }).unwrap(),
            json!({ "balance": 4 })
        );
        assert_eq!(serde_json::to_value(NoOutput {}).unwrap(), json!({}));
        // Old `{}` outputs decode, and so does anything an older build may have added.
        let _: NoOutput = serde_json::from_value(json!({})).unwrap();
    }
}
