//! What every call of the order saga shares (docs/architecture.md, "The order saga"): the saga's
//! input, the typed clients, the per-attempt request, the failure finalizer and the failure
//! reason names. The steps ([`crate::order_saga`]) and the adapter that turns them into engine
//! actions ([`crate::typed`]) both build on it.

use std::time::Duration;

use sagaflow_proto::{
    coupon::v1::coupon_service_client::CouponServiceClient,
    inventory::v1::inventory_service_client::InventoryServiceClient,
    order::v1::{
        FailOrderRequest, FailureReason, OrderCreatedEvent,
        order_service_client::OrderServiceClient,
    },
    payment::v1::payment_service_client::PaymentServiceClient,
    point::v1::point_service_client::PointServiceClient,
};
use sagaflow_server::transport::{TracedTransport, Transport, traced};
use serde::{Deserialize, Serialize};
use tonic::Status;

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
    /// The card token, masked for display (`tok_…line`; docs/architecture.md, "Card tokens").
    /// Inputs of sagas started before card tokens were sealed hold the token itself here.
    pub payment_method: String,
    /// The card token sealed for this order (`sealed:v1:…`), passed to StartPayment as it is:
    /// only the payment service opens it. Empty in inputs written before it existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sealed_payment_method: String,
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
            sealed_payment_method: event.sealed_payment_method.clone(),
        })
    }

    /// What StartPayment's `payment_method` carries: the sealed card token, or for an input
    /// written before tokens were sealed, the token it holds.
    pub fn payment_token(&self) -> &str {
        if self.sealed_payment_method.is_empty() {
            &self.payment_method
        } else {
            &self.sealed_payment_method
        }
    }

    /// Whether steps 1 and 2 run: the order names a coupon.
    pub fn has_coupon(&self) -> bool {
        self.coupon_code.as_deref().is_some_and(|c| !c.is_empty())
    }
}

/// Typed clients of the services the saga calls, over traced transports (every call carries the
/// caller's `traceparent`), and the limits of the calls to each ([`crate::limits`]). Cloning is
/// cheap (shared HTTP/2 channels, or the in-process transport, and limits).
#[derive(Debug, Clone)]
pub struct ServiceClients {
    /// Calls in flight and per second to each service ([`crate::limits::DEFAULT_LIMITS`]
    /// unless [`ServiceClients::with_limits`]).
    pub limits: crate::limits::DownstreamLimits,
    /// Order service.
    pub order: OrderServiceClient<TracedTransport>,
    /// Coupon service.
    pub coupon: CouponServiceClient<TracedTransport>,
    /// Inventory service.
    pub inventory: InventoryServiceClient<TracedTransport>,
    /// Payment service.
    pub payment: PaymentServiceClient<TracedTransport>,
    /// Point service.
    pub point: PointServiceClient<TracedTransport>,
}

impl ServiceClients {
    /// Clients over already-built transports (lazy channels connect on first use; the embedded
    /// system passes its in-process transport), each wrapped with [`traced`].
    pub fn new(
        order: impl Into<Transport>,
        coupon: impl Into<Transport>,
        inventory: impl Into<Transport>,
        payment: impl Into<Transport>,
        point: impl Into<Transport>,
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

    /// Clients that all talk to one server (the embedded `sagaflow dev` serves every service on
    /// one port, and in-process).
    pub fn single(transport: impl Into<Transport>) -> Self {
        let transport = transport.into();
        Self::new(
            transport.clone(),
            transport.clone(),
            transport.clone(),
            transport.clone(),
            transport,
        )
    }
}

/// Wraps a message with the per-attempt deadline as the gRPC timeout.
pub(crate) fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Marks the order FAILED with `reason` (the finalizer after the compensations).
///
/// # Errors
/// The Order service's status.
pub(crate) async fn fail_order(
    clients: &ServiceClients,
    input: &OrderSagaInput,
    reason: FailureReason,
    key: String,
    timeout: Duration,
) -> Result<(), Status> {
    clients
        .order
        .clone()
        .fail_order(request(
            FailOrderRequest {
                idempotency_key: key,
                order_id: input.order_id.clone(),
                reason: reason.into(),
            },
            timeout,
        ))
        .await?;
    Ok(())
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
