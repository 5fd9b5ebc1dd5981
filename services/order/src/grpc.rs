//! `sagaflow.order.v1.OrderService` over tonic: validation (every invalid field named, nothing
//! written), pricing through Inventory, the idempotency executor around the commands' effects
//! (`crate::commands`, where every business decision is made), GetOrder's wait, and proto ↔
//! domain conversion.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use sagaflow_proto::{
    inventory::v1::BatchGetProductsRequest,
    order::v1::{self as pb, order_service_server::OrderService as OrderServiceApi},
};
use sagaflow_server::{
    ServiceError,
    access::identity_of,
    card_token,
    db::now_ms,
    idempotency,
    validate::{MAX_LINES, Validator, decode_page_token, encode_page_token},
};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    INVENTORY_TIMEOUT, OrderService, WAIT_POLL_INTERVAL,
    commands::{self, load_existing, order_not_found},
    convert::{reason_from_proto, to_proto},
    domain::{Amounts, FailureReason, Order, OrderStatus, PricingError, price_lines},
    events::OrderEvent,
    outbox::OutboxEvent,
    store::{self, Cursor},
};

const PLACE: &str = "order.PlaceOrder";
const APPLY_COUPON: &str = "order.ApplyCoupon";
const COMPLETE: &str = "order.CompleteOrder";
const FAIL: &str = "order.FailOrder";

#[tonic::async_trait]
impl OrderServiceApi for OrderService {
    #[tracing::instrument(skip_all, fields(request_id = tracing::field::Empty), err(level = "debug"))]
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        // The order's user is the caller (docs/operations.md, "End users"): an end user's empty
        // `user_id` is theirs, another user's is PERMISSION_DENIED.
        let identity = identity_of(&request);
        let mut req = request.into_inner();
        req.user_id = identity.acting_user("user_id", &req.user_id)?;
        let lines = validate_place(&req, self.payment_methods.as_deref())?;
        sagaflow_server::untrusted::record("request_id", &req.request_id);
        // `request_id` is scoped per user: two users' equal ids are two orders.
        let scoped_request_id = scoped_request_id(&req.user_id, &req.request_id);
        let key = format!("PlaceOrder:{scoped_request_id}");
        // A repeat is answered from the idempotency store, without asking Inventory.
        if let Some(stored) = idempotency::lookup(&self.db, PLACE, &key, &req).await? {
            return Ok(Response::new(self.current(stored).await?));
        }
        let prices = self.prices(&lines).await?;
        let (lines, subtotal) = price_lines(&lines, &prices).map_err(|err| match err {
            PricingError::UnknownSku { index } => ServiceError::invalid(
                format!("lines[{index}].sku"),
                format!(
                    "unknown sku {:?}",
                    lines.get(index).map_or("", |l| l.0.as_str())
                ),
            ),
            PricingError::Overflow { index } => ServiceError::invalid(
                format!("lines[{index}].quantity"),
                "the order total does not fit a 64-bit amount",
            ),
        })?;
        let amounts = Amounts::placed(subtotal, req.points).ok_or_else(|| {
            ServiceError::invalid(
                "points",
                format!("must be at most the subtotal ({subtotal} KRW)"),
            )
        })?;
        let now = now_ms();
        let order_id = Uuid::now_v7().to_string();
        // The card token in clear goes no further than this: sealed for the payment service,
        // masked for everything else (docs/architecture.md, "Card tokens").
        let card_token_key = self.card_token_key.as_ref().ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!(
                "this order service has no card-token key (OrderService::with_card_token_key)"
            ))
        })?;
        let sealed_payment_method = card_token_key
            .seal(&req.payment_method, &order_id)
            .map_err(|err| ServiceError::Internal(err.into()))?;
        let order = Order {
            order_id,
            user_id: req.user_id.clone(),
            lines,
            coupon_code: req.coupon_code.clone().filter(|c| !c.is_empty()),
            amounts,
            status: OrderStatus::Pending,
            failure_reason: None,
            payment_method: card_token::mask(&req.payment_method),
            created_at_ms: now,
            updated_at_ms: now,
        };
        let created = OrderEvent::Created(pb::OrderCreatedEvent {
            order: Some(to_proto(&order)),
            payment_method: order.payment_method.clone(),
            sealed_payment_method,
        });
        let request_id = scoped_request_id;
        let event_id = Uuid::new_v4().to_string();
        // What the relay needs to deliver the event without reading it back.
        let handed = self.relay.as_ref().map(|_| {
            OutboxEvent::first(
                &event_id,
                &order.order_id,
                created.event_type().as_str(),
                created.encode(),
            )
        });
        let stored_event_id = event_id.clone();
        let executed = idempotency::execute_detailed(&self.db, PLACE, &key, &req, move |conn| {
            Box::pin(async move {
                store::insert_order(conn, &request_id, &order, &created, &stored_event_id).await?;
                Ok(pb::PlaceOrderResponse {
                    order: Some(to_proto(&order)),
                })
            })
        })
        .await?;
        if executed.replayed {
            return Ok(Response::new(self.current(executed.response).await?));
        }
        // Committed: the OrderCreated goes to the relay's hand-off lane at once
        // (docs/architecture.md, "Events"), not to its next round.
        if let (Some(relay), Some(event)) = (&self.relay, handed) {
            relay.hand_over(event);
        }
        Ok(Response::new(executed.response))
    }

    #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty), err(level = "debug"))]
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let identity = identity_of(&request);
        let req = request.into_inner();
        let mut v = Validator::new();
        let order_id = v.uuid_text("order_id", &req.order_id);
        let wait = v.wait("wait", req.wait.as_ref()).unwrap_or_default();
        v.finish()?;
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        // Another user's order is NOT_FOUND like a missing one, and answered at once: waiting for
        // it would tell that it exists (docs/operations.md, "End users").
        let mut conn = self.db.connection().await?;
        let first = identity
            .visible(store::load(&mut conn, &order_id).await?, |o| {
                o.user_id.as_str()
            })
            .ok_or_else(|| order_not_found(&order_id))?;
        drop(conn);
        let order = if first.status.is_terminal() || wait.is_zero() {
            first
        } else {
            self.wait_for_terminal(&order_id, wait).await?
        };
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(to_proto(&order)),
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty), err(level = "debug"))]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let identity = identity_of(&request);
        let mut req = request.into_inner();
        // An end user lists their own orders; another user's list is NOT_FOUND, whoever they
        // are (docs/operations.md, "End users").
        req.user_id = identity
            .reading_user(&req.user_id)
            .map_err(|()| ServiceError::NotFound(format!("orders of user {:?}", req.user_id)))?;
        let mut v = Validator::new();
        v.required("user_id", &req.user_id);
        let page_size = v.page_size("page_size", req.page_size);
        let status = match req.status {
            None => None,
            Some(value) => {
                let status = status_from_proto(value);
                v.check(
                    status.is_some(),
                    "status",
                    "must be ORDER_STATUS_PENDING, _COMPLETED or _FAILED",
                );
                status
            }
        };
        let after = decode_cursor(&req.page_token);
        v.check(
            after.is_ok(),
            "page_token",
            "is not a page token from a previous response",
        );
        v.finish()?;
        sagaflow_server::untrusted::record("user_id", &req.user_id);
        let after = after.ok().flatten();
        let mut conn = self.db.connection().await?;
        // One extra row tells whether another page follows.
        let mut orders = store::list(
            &mut conn,
            &req.user_id,
            status,
            after.as_ref(),
            page_size.saturating_add(1),
        )
        .await?;
        let more = i64::try_from(orders.len()).unwrap_or(i64::MAX) > page_size;
        orders.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match orders.last() {
            Some(last) if more => encode_cursor(&Cursor {
                created_at_ms: last.created_at_ms,
                order_id: last.order_id.clone(),
            }),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty), err(level = "debug"))]
    async fn apply_coupon(
        &self,
        request: Request<pb::ApplyCouponRequest>,
    ) -> Result<Response<pb::ApplyCouponResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        let order_id = v.uuid_text("order_id", &req.order_id);
        validate_rule(&mut v, req.rule.as_ref());
        v.non_negative_i64("discount", req.discount);
        v.finish()?;
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let (id, discount) = (order_id, req.discount);
        idempotency::respond(
            &self.db,
            APPLY_COUPON,
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let order = commands::apply_coupon(conn, &id, discount).await?;
                    Ok(pb::ApplyCouponResponse {
                        order: Some(to_proto(&order)),
                    })
                })
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty), err(level = "debug"))]
    async fn complete_order(
        &self,
        request: Request<pb::CompleteOrderRequest>,
    ) -> Result<Response<pb::CompleteOrderResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.finish()?;
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let order = self
            .finish(COMPLETE, &req.idempotency_key, &req, order_id, None)
            .await?;
        Ok(Response::new(pb::CompleteOrderResponse { order }))
    }

    #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty), err(level = "debug"))]
    async fn fail_order(
        &self,
        request: Request<pb::FailOrderRequest>,
    ) -> Result<Response<pb::FailOrderResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        let order_id = v.uuid_text("order_id", &req.order_id);
        let reason = reason_from_proto(req.reason);
        v.check(
            reason.is_some(),
            "reason",
            "must be a FAILURE_REASON_* value other than UNSPECIFIED",
        );
        v.finish()?;
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let order = self
            .finish(FAIL, &req.idempotency_key, &req, order_id, reason)
            .await?;
        Ok(Response::new(pb::FailOrderResponse { order }))
    }
}

impl OrderService {
    /// A repeated PlaceOrder answers with the order as it is now (its saga may have finished
    /// since), not the PENDING copy stored with the idempotency key.
    async fn current(
        &self,
        stored: pb::PlaceOrderResponse,
    ) -> Result<pb::PlaceOrderResponse, Status> {
        let Some(order) = stored.order else {
            return Ok(stored);
        };
        let mut conn = self.db.connection().await?;
        let order = load_existing(&mut conn, &order.order_id).await?;
        Ok(pb::PlaceOrderResponse {
            order: Some(to_proto(&order)),
        })
    }

    /// Wakes the outbox relay, if one is attached, after a commit that may have written an event.
    fn wake_relay(&self) {
        if let Some(relay) = &self.relay {
            relay.wake();
        }
    }

    /// Unit prices (KRW won) of `lines`' skus, from one `BatchGetProducts` call; unknown skus are
    /// absent.
    async fn prices(&self, lines: &[(String, i32)]) -> Result<HashMap<String, i64>, ServiceError> {
        let mut request = Request::new(BatchGetProductsRequest {
            skus: lines.iter().map(|(sku, _)| sku.clone()).collect(),
        });
        // The header lets Inventory stop working for us; the local timeout bounds our wait even
        // when Inventory's host does not answer at all (tonic does not enforce the header
        // on the client side).
        request.set_timeout(INVENTORY_TIMEOUT);
        let mut inventory = self.inventory.clone();
        let products =
            tokio::time::timeout(INVENTORY_TIMEOUT, inventory.batch_get_products(request))
                .await
                .map_err(|_| {
                    ServiceError::Unavailable(format!(
                        "inventory did not answer within {} ms",
                        INVENTORY_TIMEOUT.as_millis()
                    ))
                })?
                .map_err(|status| match status.code() {
                    // We validated the skus, so Inventory rejecting them is a bug on one side.
                    Code::InvalidArgument => ServiceError::Internal(anyhow::anyhow!(
                        "inventory rejected a validated BatchGetProducts: {status}"
                    )),
                    _ => ServiceError::Unavailable(format!(
                        "inventory cannot price the order: {}",
                        status.message()
                    )),
                })?
                .into_inner()
                .products;
        Ok(products
            .into_iter()
            .map(|p| (p.sku, p.unit_price))
            .collect())
    }

    /// CompleteOrder (`reason` None) or FailOrder (`reason` Some): one transaction with the
    /// status, history row and outbox event; then a change notice for waiting GetOrder callers.
    ///
    /// The stored response is a `GetOrderResponse`: `CompleteOrderResponse`,
    /// `FailOrderResponse` and it are the same message on the wire (`Order order = 1`).
    async fn finish<Req: prost::Message>(
        &self,
        command: &'static str,
        key: &str,
        req: &Req,
        id: String,
        reason: Option<FailureReason>,
    ) -> Result<Option<pb::Order>, Status> {
        let notice_id = id.clone();
        let response = idempotency::execute(&self.db, command, key, req, move |conn| {
            Box::pin(async move {
                let order = commands::finish(conn, &id, reason).await?;
                Ok(pb::GetOrderResponse {
                    order: Some(to_proto(&order)),
                })
            })
        })
        .await?;
        self.wake_relay();
        self.waiters.announce(&notice_id);
        Ok(response.order)
    }

    /// The order, once it is terminal or `wait` has passed (at once when `wait` is zero).
    /// Woken by the notice of this order (this process's CompleteOrder and FailOrder, and the
    /// shared poll for changes made elsewhere; `crate::waiters`): it reads the order when it
    /// starts and when woken, not on a timer. Bounded by `wait` (at most 60 s, validated).
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED, reason `TOO_MANY_WAITERS`, when the process already keeps its cap of
    /// waiting callers (`--max-order-waiters`); NOT_FOUND for an unknown order.
    async fn wait_for_terminal(&self, order_id: &str, wait: Duration) -> Result<Order, Status> {
        if wait.is_zero() {
            let mut conn = self.db.connection().await?;
            return Ok(load_existing(&mut conn, order_id).await?);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let waiting = self.waiters.wait_for(order_id).map_err(too_many_waiters)?;
        tracing::debug!(
            order_id,
            wait_ms = wait.as_millis() as u64,
            "GetOrder is waiting for a terminal status"
        );
        // Without the shared poll (a service built in a test), re-read on a timer instead.
        let polled = self.waiters.is_polled();
        loop {
            // Listen before the read, so a change between the read and the wait is seen.
            let notified = waiting.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut conn = self.db.connection().await?;
            let order = load_existing(&mut conn, order_id).await?;
            drop(conn);
            let now = tokio::time::Instant::now();
            if order.status.is_terminal() || now >= deadline {
                return Ok(order);
            }
            let nap = if polled {
                deadline - now
            } else {
                WAIT_POLL_INTERVAL.min(deadline - now)
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(nap) => {}
                () = self.shutdown.cancelled() => return Ok(order),
            }
        }
    }
}

/// RESOURCE_EXHAUSTED for a GetOrder wait over the process's cap.
fn too_many_waiters(err: crate::waiters::TooManyWaiters) -> Status {
    use tonic_types::StatusExt as _;
    tracing::info!(max = err.max, "GetOrder wait refused: too many waiters");
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "this server already keeps {} GetOrder calls waiting: retry later, or without `wait`",
            err.max
        ),
        tonic_types::ErrorDetails::with_error_info(
            "TOO_MANY_WAITERS",
            sagaflow_server::error::ERROR_DOMAIN,
            HashMap::from([("max_waiters".to_owned(), err.max.to_string())]),
        ),
    )
}

/// The stored form of a PlaceOrder `request_id`, scoped by its user (docs/operations.md, "End
/// users"): `<byte length of user_id>:<user_id>:<request_id>`, unambiguous whatever either
/// contains. The idempotency key is `PlaceOrder:` and this; migration 0007 rewrote the rows placed
/// before.
pub(crate) fn scoped_request_id(user_id: &str, request_id: &str) -> String {
    format!("{}:{user_id}:{request_id}", user_id.len())
}

/// Checks every field of PlaceOrder (each invalid one named in the INVALID_ARGUMENT) and returns
/// the lines as (sku, quantity).
/// `payment_methods`, when given, are the only accepted `payment_method` values.
fn validate_place(
    req: &pb::PlaceOrderRequest,
    payment_methods: Option<&BTreeSet<String>>,
) -> Result<Vec<(String, i32)>, ServiceError> {
    let mut v = Validator::new();
    v.required("request_id", &req.request_id);
    v.required("user_id", &req.user_id);
    if req.lines.is_empty() || req.lines.len() > MAX_LINES {
        v.add("lines", format!("must have 1 to {MAX_LINES} lines"));
    }
    let mut seen = HashSet::new();
    for (i, line) in req.lines.iter().enumerate() {
        let sku_field = format!("lines[{i}].sku");
        if v.required(&sku_field, &line.sku) && !seen.insert(line.sku.as_str()) {
            v.add(&sku_field, "duplicate sku in one order");
        }
        v.positive_i32(&format!("lines[{i}].quantity"), line.quantity);
    }
    if let Some(code) = req.coupon_code.as_deref().filter(|c| !c.is_empty()) {
        v.required("coupon_code", code);
    }
    v.non_negative_i64("points", req.points);
    if v.required("payment_method", &req.payment_method)
        && let Some(accepted) = payment_methods
        && !accepted.contains(&req.payment_method)
    {
        v.add(
            "payment_method",
            format!(
                "is not an accepted payment method (accepted: {})",
                accepted
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    v.finish()?;
    Ok(req
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.quantity))
        .collect())
}

/// Checks ApplyCoupon's rule (carried for the record; the amount taken off is `discount`):
/// present, amounts not negative, percentage 0..=100, not both a fixed amount and a percentage.
fn validate_rule(v: &mut Validator, rule: Option<&pb::DiscountRule>) {
    let Some(rule) = rule else {
        v.add("rule", "must be set");
        return;
    };
    v.non_negative_i64("rule.discount_amount", rule.discount_amount);
    v.check(
        (0..=100).contains(&rule.discount_percent),
        "rule.discount_percent",
        "must be between 0 and 100",
    );
    v.non_negative_i64("rule.max_discount", rule.max_discount);
    v.check(
        !(rule.discount_amount > 0 && rule.discount_percent > 0),
        "rule",
        "must be a fixed amount or a percentage, not both",
    );
}

fn encode_cursor(cursor: &Cursor) -> String {
    encode_page_token(&format!("{}:{}", cursor.created_at_ms, cursor.order_id))
}

/// `Ok(None)` for the first page; `Err(())` for a token that is not ours.
fn decode_cursor(token: &str) -> Result<Option<Cursor>, ()> {
    let Some(text) = decode_page_token("page_token", token).map_err(|_| ())? else {
        return Ok(None);
    };
    let (created_at, order_id) = text.split_once(':').ok_or(())?;
    let created_at_ms = created_at.parse::<i64>().map_err(|_| ())?;
    let order_id = Uuid::parse_str(order_id).map_err(|_| ())?.to_string();
    Ok(Some(Cursor {
        created_at_ms,
        order_id,
    }))
}

fn status_from_proto(value: i32) -> Option<OrderStatus> {
    match pb::OrderStatus::try_from(value).ok()? {
        pb::OrderStatus::Unspecified => None,
        pb::OrderStatus::Pending => Some(OrderStatus::Pending),
        pb::OrderStatus::Completed => Some(OrderStatus::Completed),
        pb::OrderStatus::Failed => Some(OrderStatus::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{reason_to_proto, status_to_proto};

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            created_at_ms: 1_700_000_000_123,
            order_id: Uuid::now_v7().to_string(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Ok(Some(cursor)));
        assert_eq!(decode_cursor(""), Ok(None));
        for bad in ["zz", &encode_page_token("x"), &encode_page_token("12:nope")] {
            assert_eq!(decode_cursor(bad), Err(()), "{bad}");
        }
    }

    #[test]
    fn enums_map_both_ways() {
        for reason in FailureReason::ALL {
            assert_eq!(
                reason_from_proto(reason_to_proto(reason).into()),
                Some(reason)
            );
        }
        assert_eq!(reason_from_proto(0), None);
        assert_eq!(reason_from_proto(99), None);
        for status in [
            OrderStatus::Pending,
            OrderStatus::Completed,
            OrderStatus::Failed,
        ] {
            assert_eq!(
                status_from_proto(status_to_proto(status).into()),
                Some(status)
            );
        }
        assert_eq!(status_from_proto(0), None);
        assert_eq!(status_from_proto(-4), None);
    }
}
