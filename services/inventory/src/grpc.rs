//! The tonic implementation of `sagaflow.inventory.v1.InventoryService`: request validation
//! (every invalid field is named, nothing is written), proto ↔ domain mapping, and the
//! idempotency store around every keyed command (docs/architecture.md, "The service contract").

use std::collections::HashMap;

use sagaflow_proto::inventory::v1::{
    BatchGetProductsRequest, BatchGetProductsResponse, DeductInventoryRequest,
    DeductInventoryResponse, GetProductRequest, GetProductResponse, ListAdminActionsRequest,
    ListAdminActionsResponse, ListProductsRequest, ListProductsResponse, Product, RestockRequest,
    RestockResponse, RestoreInventoryRequest, RestoreInventoryResponse,
    StockLine as ProtoStockLine, UpsertProductRequest, UpsertProductResponse,
    inventory_service_server,
};
use sagaflow_server::{
    ServiceError,
    access::identity_of,
    audit,
    idempotency::respond,
    validate::{MAX_LINES, Validator, decode_page_token, encode_page_token},
};
use tonic::{Request, Response, Status};

use crate::{InventoryService, domain::StockLine, store};

impl From<store::ProductRow> for Product {
    fn from(row: store::ProductRow) -> Self {
        Self {
            sku: row.sku,
            name: row.name,
            unit_price: row.unit_price,
            stock: row.stock,
        }
    }
}

fn to_proto_lines(lines: Vec<StockLine>) -> Vec<ProtoStockLine> {
    lines
        .into_iter()
        .map(|l| ProtoStockLine {
            sku: l.sku,
            // Quantities are stored from int32 requests, so they always fit.
            quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
        })
        .collect()
}

/// Checks a repeated field of 1 to [`MAX_LINES`] elements.
fn check_count(v: &mut Validator, field: &str, len: usize) {
    if len == 0 {
        v.add(field, "must not be empty");
    } else if len > MAX_LINES {
        v.add(field, format!("must have at most {MAX_LINES} elements"));
    }
}

/// Checks that every sku is present at most once, naming each repeated element
/// (`lines[3].sku`).
fn check_unique_skus<'a>(
    v: &mut Validator,
    skus: impl IntoIterator<Item = &'a str>,
    field: impl Fn(usize) -> String,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, sku) in skus.into_iter().enumerate() {
        if let Some(first) = seen.insert(sku, i) {
            v.add(field(i), format!("duplicates {}", field(first)));
        }
    }
}

/// Validates the lines of a DeductInventory request.
fn validate_lines(v: &mut Validator, lines: &[ProtoStockLine]) -> Vec<StockLine> {
    check_count(v, "lines", lines.len());
    for (i, line) in lines.iter().enumerate() {
        v.required(&format!("lines[{i}].sku"), &line.sku);
        v.positive_i32(&format!("lines[{i}].quantity"), line.quantity);
    }
    check_unique_skus(v, lines.iter().map(|l| l.sku.as_str()), |i| {
        format!("lines[{i}].sku")
    });
    lines
        .iter()
        .map(|l| StockLine {
            sku: l.sku.clone(),
            quantity: i64::from(l.quantity),
        })
        .collect()
}

#[tonic::async_trait]
impl inventory_service_server::InventoryService for InventoryService {
    #[tracing::instrument(skip_all, fields(sku = tracing::field::Empty))]
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<GetProductResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        v.required("sku", &req.sku);
        v.finish()?;
        sagaflow_server::untrusted::record("sku", &req.sku);
        let product = store::get_product(&mut *self.db.connection().await?, &req.sku)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("product {:?}", req.sku)))?;
        Ok(Response::new(GetProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(skus = request.get_ref().skus.len()))]
    async fn batch_get_products(
        &self,
        request: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        check_count(&mut v, "skus", req.skus.len());
        for (i, sku) in req.skus.iter().enumerate() {
            v.required(&format!("skus[{i}]"), sku);
        }
        check_unique_skus(&mut v, req.skus.iter().map(String::as_str), |i| {
            format!("skus[{i}]")
        });
        v.finish()?;
        let products = store::get_products(&mut *self.db.connection().await?, &req.skus)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(BatchGetProductsResponse {
            products: products.into_iter().map(Product::from).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let page_size = v.page_size("page_size", req.page_size);
        v.finish()?;
        let after = decode_page_token("page_token", &req.page_token)?.unwrap_or_default();
        // One extra row tells whether another page follows.
        let mut products = store::list_products(
            &mut *self.db.connection().await?,
            &after,
            page_size.saturating_add(1),
        )
        .await
        .map_err(ServiceError::from)?;
        let more = i64::try_from(products.len()).unwrap_or(i64::MAX) > page_size;
        products.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match products.last() {
            Some(last) if more => encode_page_token(&last.sku),
            _ => String::new(),
        };
        Ok(Response::new(ListProductsResponse {
            products: products.into_iter().map(Product::from).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(sku = tracing::field::Empty))]
    async fn upsert_product(
        &self,
        request: Request<UpsertProductRequest>,
    ) -> Result<Response<UpsertProductResponse>, Status> {
        // Who changes the catalog, for the audit row written with the change.
        let actor = identity_of(&request).to_string();
        let req = request.into_inner();
        let mut v = Validator::new();
        v.required("sku", &req.sku);
        // Free text: tab and line breaks are fine in a name, other control characters are not.
        v.required_text("name", &req.name);
        v.non_negative_i64("unit_price", req.unit_price);
        v.finish()?;
        sagaflow_server::untrusted::record("sku", &req.sku);
        // Naturally idempotent: the same request leaves the same row, so it needs no key. The
        // row and its audit entry commit together.
        let mut tx = self.db.begin().await.map_err(ServiceError::from)?;
        let product = store::upsert_product(&mut tx, &req.sku, &req.name, req.unit_price, &actor)
            .await
            .map_err(ServiceError::from)?;
        tx.commit().await.map_err(ServiceError::from)?;
        Ok(Response::new(UpsertProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_admin_actions(
        &self,
        request: Request<ListAdminActionsRequest>,
    ) -> Result<Response<ListAdminActionsResponse>, Status> {
        let actions = audit::list(&self.db, request.get_ref().limit).await?;
        Ok(Response::new(ListAdminActionsResponse { actions }))
    }

    #[tracing::instrument(skip_all, fields(sku = tracing::field::Empty))]
    async fn restock(
        &self,
        request: Request<RestockRequest>,
    ) -> Result<Response<RestockResponse>, Status> {
        // Who restocks, for the audit row written with the restock.
        let actor = identity_of(&request).to_string();
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        v.required("sku", &req.sku);
        v.positive_i32("quantity", req.quantity);
        v.finish()?;
        sagaflow_server::untrusted::record("sku", &req.sku);
        let backend = self.db.backend();
        let (key, sku, quantity) = (
            req.idempotency_key.clone(),
            req.sku.clone(),
            i64::from(req.quantity),
        );
        let response = respond(
            &self.db,
            "inventory.Restock",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let product =
                        store::restock(conn, backend, &key, &sku, quantity, &actor).await?;
                    Ok(RestockResponse {
                        product: Some(product.into()),
                    })
                })
            },
        )
        .await?;
        self.wake_relay();
        Ok(response)
    }

    #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty))]
    async fn deduct_inventory(
        &self,
        request: Request<DeductInventoryRequest>,
    ) -> Result<Response<DeductInventoryResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        let order_id = v.uuid_text("order_id", &req.order_id);
        let lines = validate_lines(&mut v, &req.lines);
        v.finish()?;
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let backend = self.db.backend();
        let taken = req.lines.clone();
        let response = respond(
            &self.db,
            "inventory.DeductInventory",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    store::deduct(conn, backend, &order_id, &lines).await?;
                    Ok(DeductInventoryResponse { lines: taken })
                })
            },
        )
        .await?;
        self.wake_relay();
        Ok(response)
    }

    #[tracing::instrument(skip_all, fields(order_id = tracing::field::Empty))]
    async fn restore_inventory(
        &self,
        request: Request<RestoreInventoryRequest>,
    ) -> Result<Response<RestoreInventoryResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.finish()?;
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let backend = self.db.backend();
        let response = respond(
            &self.db,
            "inventory.RestoreInventory",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let lines = store::restore(conn, backend, &order_id).await?;
                    Ok(RestoreInventoryResponse {
                        lines: to_proto_lines(lines),
                    })
                })
            },
        )
        .await?;
        self.wake_relay();
        Ok(response)
    }
}
