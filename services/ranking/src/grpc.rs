//! `sagaflow.ranking.v1.RankingService` over tonic: validation, proto ↔ domain conversion. The
//! two recording commands are also what [`crate::events`] runs for a consumer without gRPC.

use std::collections::HashSet;

use sagaflow_proto::{
    order::v1::{Order, OrderStatus},
    ranking::v1::{
        self as pb, ranking_service_server::RankingService as RankingServiceApi,
        record_inventory_event_request::Event,
    },
};
use sagaflow_server::{
    Db, ServiceError,
    db::timestamp_from_ms,
    idempotency,
    validate::{MAX_LINES, Validator, decode_page_token, encode_page_token},
};
use tonic::{Request, Response, Status};

use crate::{
    RankingService,
    domain::{
        CompletedOrder, InventoryChange, MAX_LIMIT, MAX_PAGE_SIZE, ProductSales, ProductView,
        SaleLine, StockChange, effective_limit, effective_page_size,
    },
    events::{INVENTORY_DEDUCTED, INVENTORY_RESTOCKED, INVENTORY_RESTORED},
    store,
};

const RECORD: &str = "ranking.RecordOrderCompleted";
const RECORD_INVENTORY: &str = "ranking.RecordInventoryEvent";

#[tonic::async_trait]
impl RankingServiceApi for RankingService {
    #[tracing::instrument(skip_all, fields(limit = request.get_ref().limit), err(level = "debug"))]
    async fn top_products(
        &self,
        request: Request<pb::TopProductsRequest>,
    ) -> Result<Response<pb::TopProductsResponse>, Status> {
        let limit = effective_limit(request.get_ref().limit).ok_or_else(|| {
            ServiceError::invalid("limit", format!("must be between 0 and {MAX_LIMIT}"))
        })?;
        let products = store::top_products(self.db.pool(), limit)
            .await?
            .into_iter()
            .map(to_proto)
            .collect();
        Ok(Response::new(pb::TopProductsResponse { products }))
    }

    #[tracing::instrument(skip_all, fields(event_id = tracing::field::Empty), err(level = "debug"))]
    async fn record_order_completed(
        &self,
        request: Request<pb::RecordOrderCompletedRequest>,
    ) -> Result<Response<pb::RecordOrderCompletedResponse>, Status> {
        let req = request.into_inner();
        let order = validate_event(&req)?;
        sagaflow_server::untrusted::record("event_id", &req.event_id);
        let applied = record_order_completed(&self.db, req, order).await?;
        Ok(Response::new(pb::RecordOrderCompletedResponse { applied }))
    }

    #[tracing::instrument(
        skip_all,
        fields(event_id = tracing::field::Empty, sequence = request.get_ref().sequence),
        err(level = "debug")
    )]
    async fn record_inventory_event(
        &self,
        request: Request<pb::RecordInventoryEventRequest>,
    ) -> Result<Response<pb::RecordInventoryEventResponse>, Status> {
        let req = request.into_inner();
        let change = validate_inventory_event(&req)?;
        sagaflow_server::untrusted::record("event_id", &req.event_id);
        let applied = record_inventory_event(&self.db, req, change).await?;
        Ok(Response::new(pb::RecordInventoryEventResponse { applied }))
    }

    #[tracing::instrument(skip_all, fields(sku = tracing::field::Empty), err(level = "debug"))]
    async fn get_product_view(
        &self,
        request: Request<pb::GetProductViewRequest>,
    ) -> Result<Response<pb::GetProductViewResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        v.required("sku", &req.sku);
        v.finish()?;
        sagaflow_server::untrusted::record("sku", &req.sku);
        let view = store::product_view(&mut *self.db.connection().await?, &req.sku)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("product view of sku {:?}", req.sku)))?;
        Ok(Response::new(pb::GetProductViewResponse {
            view: Some(view_to_proto(view)),
        }))
    }

    #[tracing::instrument(skip_all, fields(page_size = request.get_ref().page_size), err(level = "debug"))]
    async fn list_product_views(
        &self,
        request: Request<pb::ListProductViewsRequest>,
    ) -> Result<Response<pb::ListProductViewsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let page_size = effective_page_size(req.page_size);
        if page_size.is_none() {
            v.add(
                "page_size",
                format!("must be between 0 and {MAX_PAGE_SIZE}"),
            );
        }
        let after = match decode_page_token("page_token", &req.page_token) {
            Ok(after) => after.unwrap_or_default(),
            Err(_) => {
                v.add("page_token", "is not a page token from a previous response");
                String::new()
            }
        };
        v.finish()?;
        let page_size = page_size.unwrap_or(crate::domain::DEFAULT_PAGE_SIZE);
        // One extra row tells whether another page follows.
        let mut views = store::list_product_views(
            &mut *self.db.connection().await?,
            &after,
            page_size.saturating_add(1),
        )
        .await?;
        let more = i64::try_from(views.len()).unwrap_or(i64::MAX) > page_size;
        views.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match views.last() {
            Some(last) if more => encode_page_token(&last.sku),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListProductViewsResponse {
            views: views.into_iter().map(view_to_proto).collect(),
            next_page_token,
        }))
    }
}

/// Runs a validated RecordOrderCompleted (`order` is [`validate_event`] of `req`) through the
/// idempotency store keyed by its event id: true when the order was counted now.
///
/// # Errors
/// ALREADY_EXISTS (`IDEMPOTENCY_KEY_REUSED`) when the event id was used for another event;
/// INVALID_ARGUMENT when the database refused a value; UNAVAILABLE / INTERNAL when it fails.
pub(crate) async fn record_order_completed(
    db: &Db,
    req: pb::RecordOrderCompletedRequest,
    order: CompletedOrder,
) -> Result<bool, Status> {
    let event_id = req.event_id.clone();
    let executed = idempotency::execute_detailed(db, RECORD, &req.event_id, &req, |conn| {
        Box::pin(async move {
            let applied = store::record_order(conn, &event_id, &order).await?;
            Ok(pb::RecordOrderCompletedResponse { applied })
        })
    })
    .await?;
    // A redelivery replays the first response; it applied nothing this time.
    Ok(executed.response.applied && !executed.replayed)
}

/// Runs a validated RecordInventoryEvent (`change` is [`validate_inventory_event`] of `req`)
/// through the idempotency store keyed by its event id (the request hash covers the sequence
/// and the whole event): the inbox row and the view's upsert in one transaction. True when the
/// event was applied now.
///
/// # Errors
/// ALREADY_EXISTS (`IDEMPOTENCY_KEY_REUSED`) when the event id was used for another event;
/// INVALID_ARGUMENT when the database refused a value; UNAVAILABLE / INTERNAL when it fails.
pub(crate) async fn record_inventory_event(
    db: &Db,
    req: pb::RecordInventoryEventRequest,
    change: InventoryChange,
) -> Result<bool, Status> {
    let event_id = req.event_id.clone();
    let event_type = match change.change {
        StockChange::Deducted { .. } => INVENTORY_DEDUCTED,
        StockChange::Restored { .. } => INVENTORY_RESTORED,
        StockChange::Restocked { .. } => INVENTORY_RESTOCKED,
    };
    let executed =
        idempotency::execute_detailed(db, RECORD_INVENTORY, &req.event_id, &req, move |conn| {
            Box::pin(async move {
                let applied =
                    store::record_inventory_change(conn, &event_id, event_type, &change).await?;
                Ok(pb::RecordInventoryEventResponse { applied })
            })
        })
        .await?;
    // A redelivery replays the first response; it applied nothing this time.
    Ok(executed.response.applied && !executed.replayed)
}

/// Checks every field of an Inventory event's delivery and converts it to the view's change.
/// Fields are named by their proto paths (`event_id`, `sequence`, `event` when no event is set,
/// `deducted.sku`, `restored.quantity`, `restocked.stock_after`, …).
///
/// # Errors
/// INVALID_ARGUMENT listing every offending field.
pub(crate) fn validate_inventory_event(
    req: &pb::RecordInventoryEventRequest,
) -> Result<InventoryChange, ServiceError> {
    let mut v = Validator::new();
    v.uuid("event_id", &req.event_id);
    v.positive_i64("sequence", req.sequence);
    let (sku, change, stock_after) = match &req.event {
        None => {
            v.add("event", "must be set");
            (String::new(), StockChange::Restocked { delta: 0 }, 0)
        }
        Some(Event::Deducted(e)) => {
            let quantity = taken_or_given(&mut v, "deducted", &e.order_id, e.quantity);
            (
                e.sku.clone(),
                StockChange::Deducted { quantity },
                e.stock_after,
            )
        }
        Some(Event::Restored(e)) => {
            let quantity = taken_or_given(&mut v, "restored", &e.order_id, e.quantity);
            (
                e.sku.clone(),
                StockChange::Restored { quantity },
                e.stock_after,
            )
        }
        Some(Event::Restocked(e)) => (
            e.sku.clone(),
            StockChange::Restocked { delta: e.delta },
            e.stock_after,
        ),
    };
    if let Some(event) = &req.event {
        let name = match event {
            Event::Deducted(_) => "deducted",
            Event::Restored(_) => "restored",
            Event::Restocked(_) => "restocked",
        };
        v.required(&format!("{name}.sku"), &sku);
        v.non_negative_i64(&format!("{name}.stock_after"), stock_after);
    }
    v.finish()?;
    Ok(InventoryChange {
        sku,
        sequence: req.sequence,
        change,
        stock_after,
    })
}

/// The order id and quantity of a deduction or restore (`name` is the oneof field).
fn taken_or_given(v: &mut Validator, name: &str, order_id: &str, quantity: i32) -> i64 {
    v.uuid(&format!("{name}.order_id"), order_id);
    v.positive_i32(&format!("{name}.quantity"), quantity);
    i64::from(quantity)
}

/// Checks every field of the event and converts it to the domain's completed order.
///
/// # Errors
/// INVALID_ARGUMENT listing every offending field.
pub(crate) fn validate_event(
    req: &pb::RecordOrderCompletedRequest,
) -> Result<CompletedOrder, ServiceError> {
    let mut v = Validator::new();
    v.uuid("event_id", &req.event_id);
    let order = match req.event.as_ref().map(|e| e.order.as_ref()) {
        None => {
            v.add("event", "must be set");
            None
        }
        Some(None) => {
            v.add("event.order", "must be set");
            None
        }
        Some(Some(order)) => Some(order),
    };
    let mut order_id = String::new();
    let mut lines = Vec::new();
    if let Some(order) = order {
        order_id = v.uuid_text("event.order.order_id", &order.order_id);
        v.check(
            order.status() == OrderStatus::Completed,
            "event.order.status",
            "must be ORDER_STATUS_COMPLETED",
        );
        lines = validate_lines(&mut v, order);
    }
    v.finish()?;
    Ok(CompletedOrder { order_id, lines })
}

fn validate_lines(v: &mut Validator, order: &Order) -> Vec<SaleLine> {
    if order.lines.is_empty() || order.lines.len() > MAX_LINES {
        v.add(
            "event.order.lines",
            format!("must have 1 to {MAX_LINES} lines"),
        );
    }
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(order.lines.len());
    for (i, line) in order.lines.iter().enumerate() {
        let sku_field = format!("event.order.lines[{i}].sku");
        if v.required(&sku_field, &line.sku) && !seen.insert(line.sku.as_str()) {
            v.add(&sku_field, "duplicate sku in one order");
        }
        v.positive_i32(&format!("event.order.lines[{i}].quantity"), line.quantity);
        lines.push(SaleLine {
            sku: line.sku.clone(),
            units: i64::from(line.quantity),
        });
    }
    lines
}

fn to_proto(sales: ProductSales) -> pb::ProductSales {
    pb::ProductSales {
        sku: sales.sku,
        units_sold: sales.units_sold,
        orders: sales.orders,
    }
}

fn view_to_proto(view: ProductView) -> pb::ProductView {
    pb::ProductView {
        sku: view.sku,
        stock: view.stock,
        units_sold: view.units_sold,
        events: view.events,
        last_sequence: view.last_sequence,
        updated_at: Some(timestamp_from_ms(view.updated_at)),
    }
}
