//! `sagaflow.ranking.v1.RankingService` over tonic: validation, proto ↔ domain conversion.

use std::collections::HashSet;

use sagaflow_proto::{
    order::v1::{Order, OrderStatus},
    ranking::v1::{self as pb, ranking_service_server::RankingService as RankingServiceApi},
};
use sagaflow_server::{
    ServiceError, idempotency,
    validate::{MAX_LINES, Validator},
};
use tonic::{Request, Response, Status};

use crate::{
    RankingService,
    domain::{CompletedOrder, MAX_LIMIT, ProductSales, SaleLine, effective_limit},
    store,
};

const RECORD: &str = "ranking.RecordOrderCompleted";

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

    #[tracing::instrument(skip_all, fields(event_id = %request.get_ref().event_id), err(level = "debug"))]
    async fn record_order_completed(
        &self,
        request: Request<pb::RecordOrderCompletedRequest>,
    ) -> Result<Response<pb::RecordOrderCompletedResponse>, Status> {
        let req = request.into_inner();
        let order = validate_event(&req)?;
        let event_id = req.event_id.clone();
        let executed =
            idempotency::execute_detailed(&self.db, RECORD, &req.event_id, &req, |conn| {
                Box::pin(async move {
                    let applied = store::record_order(conn, &event_id, &order).await?;
                    Ok(pb::RecordOrderCompletedResponse { applied })
                })
            })
            .await?;
        // A redelivery replays the first response; it applied nothing this time.
        let applied = executed.response.applied && !executed.replayed;
        Ok(Response::new(pb::RecordOrderCompletedResponse { applied }))
    }
}

/// Checks every field of the event and converts it to the domain's completed order.
fn validate_event(req: &pb::RecordOrderCompletedRequest) -> Result<CompletedOrder, ServiceError> {
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
