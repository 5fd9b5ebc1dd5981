//! The order saga of docs/architecture.md, "The order saga": its input, its steps as calls to the
//! services through the typed clients, and the mapping from the failed step to the order's
//! failure reason.
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
    coupon::v1::{
        RestoreCouponRequest, UseCouponRequest, coupon_service_client::CouponServiceClient,
    },
    inventory::v1::{
        DeductInventoryRequest, RestoreInventoryRequest, StockLine,
        inventory_service_client::InventoryServiceClient,
    },
    order::v1::{
        ApplyCouponRequest, CompleteOrderRequest, DiscountRule, FailOrderRequest, FailureReason,
        OrderCreatedEvent, order_service_client::OrderServiceClient,
    },
    payment::v1::{
        CancelPaymentRequest, CompletePaymentRequest, StartPaymentRequest,
        payment_service_client::PaymentServiceClient,
    },
    point::v1::{
        DeductPointsRequest, RestorePointsRequest, point_service_client::PointServiceClient,
    },
};
use sagaflow_telemetry::propagation::{TracedChannel, traced};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::{Status, transport::Channel};

/// The saga definition's name, recorded on every instance.
pub const DEFINITION_NAME: &str = "order";
/// The saga definition's version; an instance finishes on the version that started it.
pub const DEFINITION_VERSION: u32 = 1;

/// Step names, used verbatim in the journal and in idempotency keys.
pub mod step {
    /// Step 1: Coupon.UseCoupon.
    pub const USE_COUPON: &str = "use_coupon";
    /// Step 2: Order.ApplyCoupon.
    pub const APPLY_COUPON: &str = "apply_coupon";
    /// Step 3: Inventory.DeductInventory.
    pub const DEDUCT_INVENTORY: &str = "deduct_inventory";
    /// Step 4: Payment.StartPayment.
    pub const START_PAYMENT: &str = "start_payment";
    /// Step 5: Point.DeductPoints.
    pub const DEDUCT_POINTS: &str = "deduct_points";
    /// Step 6, the pivot: Payment.CompletePayment.
    pub const COMPLETE_PAYMENT: &str = "complete_payment";
    /// Step 7: Order.CompleteOrder.
    pub const COMPLETE_ORDER: &str = "complete_order";
}

/// One priced order line in the saga input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaLine {
    /// Product sku.
    pub sku: String,
    /// Units, ≥ 1.
    pub quantity: i32,
    /// KRW won per unit, as priced when the order was placed.
    pub unit_price: i64,
}

/// The saga input, taken from the OrderCreated event (stored as JSON in the saga row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSagaInput {
    /// The order id (UUID), also the saga's business key.
    pub order_id: String,
    /// The ordering user.
    pub user_id: String,
    /// Priced lines.
    pub lines: Vec<SagaLine>,
    /// Coupon code, if the order uses one.
    pub coupon_code: Option<String>,
    /// Σ unit price × quantity, KRW won.
    pub subtotal: i64,
    /// Points spent, KRW won.
    pub points: i64,
    /// Card token of the simulated gateway.
    pub payment_method: String,
}

impl OrderSagaInput {
    /// Builds the input from an OrderCreated event.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` naming `event.order` when the event carries no order.
    pub fn from_event(event: &OrderCreatedEvent) -> Result<Self, sagaflow_server::ServiceError> {
        let order = event
            .order
            .as_ref()
            .ok_or_else(|| sagaflow_server::ServiceError::invalid("event.order", "is required"))?;
        Ok(Self {
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            lines: order
                .lines
                .iter()
                .map(|l| SagaLine {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                })
                .collect(),
            coupon_code: Some(order.coupon_code.clone()).filter(|c| !c.is_empty()),
            subtotal: order.subtotal,
            points: order.points,
            payment_method: event.payment_method.clone(),
        })
    }

    /// Whether steps 1 and 2 run.
    pub fn has_coupon(&self) -> bool {
        self.coupon_code.is_some()
    }
}

/// The service a step's action, its compensation (or the finalizer, `finalize`) calls.
pub fn service_of(step_name: &str) -> &'static str {
    match step_name {
        step::USE_COUPON => "coupon",
        step::DEDUCT_INVENTORY => "inventory",
        step::START_PAYMENT | step::COMPLETE_PAYMENT => "payment",
        step::DEDUCT_POINTS => "point",
        // apply_coupon, complete_order and the finalizer (FailOrder).
        _ => "order",
    }
}

/// Typed clients of the services the saga calls, over traced channels (every call carries the
/// caller's `traceparent`), and the limits of the calls to each ([`crate::limits`]). Cloning is
/// cheap (shared HTTP/2 channels and limits).
#[derive(Debug, Clone)]
pub struct ServiceClients {
    /// Calls in flight and per second to each service ([`crate::limits::DEFAULT_LIMITS`]
    /// unless [`ServiceClients::with_limits`]).
    pub limits: crate::limits::DownstreamLimits,
    /// Order service.
    pub order: OrderServiceClient<TracedChannel>,
    /// Coupon service.
    pub coupon: CouponServiceClient<TracedChannel>,
    /// Inventory service.
    pub inventory: InventoryServiceClient<TracedChannel>,
    /// Payment service.
    pub payment: PaymentServiceClient<TracedChannel>,
    /// Point service.
    pub point: PointServiceClient<TracedChannel>,
}

impl ServiceClients {
    /// Clients over already-built channels (lazy channels connect on first use), each wrapped
    /// with [`traced`].
    pub fn new(
        order: Channel,
        coupon: Channel,
        inventory: Channel,
        payment: Channel,
        point: Channel,
    ) -> Self {
        Self {
            order: OrderServiceClient::new(traced(order)),
            coupon: CouponServiceClient::new(traced(coupon)),
            inventory: InventoryServiceClient::new(traced(inventory)),
            payment: PaymentServiceClient::new(traced(payment)),
            point: PointServiceClient::new(traced(point)),
            limits: crate::limits::DownstreamLimits::default(),
        }
    }

    /// The same clients under other per-service limits.
    pub fn with_limits(self, limits: crate::limits::DownstreamLimits) -> Self {
        Self { limits, ..self }
    }

    /// Clients that all talk to one address (the embedded `sagaflow dev` serves every service on
    /// one port).
    pub fn single(channel: Channel) -> Self {
        Self::new(
            channel.clone(),
            channel.clone(),
            channel.clone(),
            channel.clone(),
            channel,
        )
    }
}

/// Wraps a message with the per-attempt deadline as the gRPC timeout.
fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn coupon_code(input: &OrderSagaInput) -> Result<String, Status> {
    input
        .coupon_code
        .clone()
        .ok_or_else(|| Status::failed_precondition("the order has no coupon"))
}

/// The payable amount: ApplyCoupon's result when the order has a coupon, else subtotal − points.
fn payable(input: &OrderSagaInput, outputs: &Value) -> i64 {
    outputs
        .get(step::APPLY_COUPON)
        .and_then(|o| o.get("payable"))
        .and_then(Value::as_i64)
        .unwrap_or_else(|| input.subtotal.saturating_sub(input.points))
}

/// Runs the action of `step_name` and returns its JSON output (kept in the saga row).
///
/// # Errors
/// The service's status; the engine classifies it (docs/architecture.md, "The engine" (Retries)).
pub async fn run_action(
    clients: &ServiceClients,
    step_name: &str,
    input: &OrderSagaInput,
    outputs: &Value,
    idempotency_key: &str,
    timeout: Duration,
) -> Result<Value, Status> {
    let key = idempotency_key.to_owned();
    let order_id = input.order_id.clone();
    match step_name {
        step::USE_COUPON => {
            let coupon = clients
                .coupon
                .clone()
                .use_coupon(request(
                    UseCouponRequest {
                        idempotency_key: key,
                        code: coupon_code(input)?,
                        user_id: input.user_id.clone(),
                        order_id,
                        order_amount: input.subtotal,
                    },
                    timeout,
                ))
                .await?
                .into_inner()
                .coupon
                .ok_or_else(|| Status::internal("UseCoupon returned no coupon"))?;
            Ok(json!({
                "discount_amount": coupon.discount_amount,
                "discount_percent": coupon.discount_percent,
                "max_discount": coupon.max_discount,
            }))
        }
        step::APPLY_COUPON => {
            let rule = outputs.get(step::USE_COUPON);
            let int = |name: &str| rule.and_then(|r| r.get(name)).and_then(Value::as_i64);
            let rule = DiscountRule {
                discount_amount: int("discount_amount").unwrap_or(0),
                discount_percent: i32::try_from(int("discount_percent").unwrap_or(0)).unwrap_or(0),
                max_discount: int("max_discount").unwrap_or(0),
            };
            let order = clients
                .order
                .clone()
                .apply_coupon(request(
                    ApplyCouponRequest {
                        idempotency_key: key,
                        order_id,
                        rule: Some(rule),
                        discount: 0,
                    },
                    timeout,
                ))
                .await?
                .into_inner()
                .order
                .ok_or_else(|| Status::internal("ApplyCoupon returned no order"))?;
            Ok(json!({ "discount": order.discount, "payable": order.payable }))
        }
        step::DEDUCT_INVENTORY => {
            clients
                .inventory
                .clone()
                .deduct_inventory(request(
                    DeductInventoryRequest {
                        idempotency_key: key,
                        order_id,
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
            Ok(json!({}))
        }
        step::START_PAYMENT => {
            let payment = clients
                .payment
                .clone()
                .start_payment(request(
                    StartPaymentRequest {
                        idempotency_key: key,
                        order_id,
                        amount: payable(input, outputs),
                        payment_method: input.payment_method.clone(),
                    },
                    timeout,
                ))
                .await?
                .into_inner()
                .payment
                .ok_or_else(|| Status::internal("StartPayment returned no payment"))?;
            Ok(json!({ "payment_id": payment.payment_id, "amount": payment.amount }))
        }
        step::DEDUCT_POINTS => {
            let reply = clients
                .point
                .clone()
                .deduct_points(request(
                    DeductPointsRequest {
                        idempotency_key: key,
                        user_id: input.user_id.clone(),
                        order_id,
                        amount: input.points,
                    },
                    timeout,
                ))
                .await?
                .into_inner();
            Ok(json!({ "balance": reply.balance }))
        }
        step::COMPLETE_PAYMENT => {
            clients
                .payment
                .clone()
                .complete_payment(request(
                    CompletePaymentRequest {
                        idempotency_key: key,
                        order_id,
                    },
                    timeout,
                ))
                .await?;
            Ok(json!({}))
        }
        step::COMPLETE_ORDER => {
            clients
                .order
                .clone()
                .complete_order(request(
                    CompleteOrderRequest {
                        idempotency_key: key,
                        order_id,
                    },
                    timeout,
                ))
                .await?;
            Ok(json!({}))
        }
        other => Err(Status::internal(format!(
            "unknown order saga step {other:?}"
        ))),
    }
}

/// Runs the compensation of `step_name`.
///
/// # Errors
/// The service's status; the engine retries transient ones and parks the saga in
/// NEEDS_ATTENTION on a business failure.
pub async fn run_compensation(
    clients: &ServiceClients,
    step_name: &str,
    input: &OrderSagaInput,
    idempotency_key: &str,
    timeout: Duration,
) -> Result<Value, Status> {
    let key = idempotency_key.to_owned();
    let order_id = input.order_id.clone();
    match step_name {
        step::USE_COUPON => {
            clients
                .coupon
                .clone()
                .restore_coupon(request(
                    RestoreCouponRequest {
                        idempotency_key: key,
                        code: coupon_code(input)?,
                        order_id,
                    },
                    timeout,
                ))
                .await?;
        }
        step::DEDUCT_INVENTORY => {
            clients
                .inventory
                .clone()
                .restore_inventory(request(
                    RestoreInventoryRequest {
                        idempotency_key: key,
                        order_id,
                    },
                    timeout,
                ))
                .await?;
        }
        step::START_PAYMENT => {
            clients
                .payment
                .clone()
                .cancel_payment(request(
                    CancelPaymentRequest {
                        idempotency_key: key,
                        order_id,
                    },
                    timeout,
                ))
                .await?;
        }
        step::DEDUCT_POINTS => {
            clients
                .point
                .clone()
                .restore_points(request(
                    RestorePointsRequest {
                        idempotency_key: key,
                        user_id: input.user_id.clone(),
                        order_id,
                    },
                    timeout,
                ))
                .await?;
        }
        other => {
            return Err(Status::internal(format!(
                "order saga step {other:?} has no compensation"
            )));
        }
    }
    Ok(json!({}))
}

/// Marks the order FAILED with `reason` (the finalizer after the compensations).
///
/// # Errors
/// The Order service's status.
pub async fn fail_order(
    clients: &ServiceClients,
    input: &OrderSagaInput,
    reason: FailureReason,
    idempotency_key: &str,
    timeout: Duration,
) -> Result<Value, Status> {
    clients
        .order
        .clone()
        .fail_order(request(
            FailOrderRequest {
                idempotency_key: idempotency_key.to_owned(),
                order_id: input.order_id.clone(),
                reason: reason.into(),
            },
            timeout,
        ))
        .await?;
    Ok(json!({ "reason": reason.as_str_name() }))
}

/// The order failure reason for a business failure of `step_name`'s action (docs/architecture.md,
/// "The order saga"): coupon → COUPON_UNAVAILABLE, inventory → OUT_OF_STOCK, payment
/// authorization or capture → PAYMENT_DECLINED, points → INSUFFICIENT_POINTS, anything else →
/// INTERNAL.
pub fn business_failure_reason(step_name: &str) -> FailureReason {
    match step_name {
        step::USE_COUPON => FailureReason::CouponUnavailable,
        step::DEDUCT_INVENTORY => FailureReason::OutOfStock,
        step::START_PAYMENT | step::COMPLETE_PAYMENT => FailureReason::PaymentDeclined,
        step::DEDUCT_POINTS => FailureReason::InsufficientPoints,
        _ => FailureReason::Internal,
    }
}

/// The order failure reason for the saga's recorded failure reason: the name of a
/// [`FailureReason`] without its prefix (`OUT_OF_STOCK`, `DEADLINE_EXCEEDED`, `CANCELED`, …), as
/// the actions and the engine record it; anything else → INTERNAL.
pub fn reason_from_saga(failure_reason: Option<&str>) -> FailureReason {
    failure_reason
        .and_then(|r| FailureReason::from_str_name(&format!("FAILURE_REASON_{r}")))
        .filter(|r| *r != FailureReason::Unspecified)
        .unwrap_or(FailureReason::Internal)
}

/// The short name of a failure reason (`OUT_OF_STOCK`), as recorded on the saga.
pub fn reason_name(reason: FailureReason) -> &'static str {
    reason
        .as_str_name()
        .strip_prefix("FAILURE_REASON_")
        .unwrap_or("INTERNAL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_follow_the_failed_step() {
        assert_eq!(
            business_failure_reason(step::USE_COUPON),
            FailureReason::CouponUnavailable
        );
        assert_eq!(
            business_failure_reason(step::DEDUCT_INVENTORY),
            FailureReason::OutOfStock
        );
        assert_eq!(
            business_failure_reason(step::START_PAYMENT),
            FailureReason::PaymentDeclined
        );
        assert_eq!(
            business_failure_reason(step::COMPLETE_PAYMENT),
            FailureReason::PaymentDeclined
        );
        assert_eq!(
            business_failure_reason(step::DEDUCT_POINTS),
            FailureReason::InsufficientPoints
        );
        assert_eq!(
            business_failure_reason(step::APPLY_COUPON),
            FailureReason::Internal
        );
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
        };
        assert_eq!(payable(&input, &json!({})), 9_000);
        assert_eq!(
            payable(&input, &json!({ "apply_coupon": { "payable": 4_000 } })),
            4_000
        );
    }
}
