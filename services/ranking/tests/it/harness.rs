//! A ranking server on a loopback port over a fresh database.

use sagaflow_proto::{
    inventory::v1::{InventoryDeductedEvent, InventoryRestockedEvent, InventoryRestoredEvent},
    order::v1::{Order, OrderCompletedEvent, OrderLine, OrderStatus},
    ranking::v1::{
        GetProductViewRequest, ListProductViewsRequest, ProductSales, ProductView,
        RecordInventoryEventRequest, RecordOrderCompletedRequest, TopProductsRequest,
        ranking_service_client::RankingServiceClient, record_inventory_event_request::Event,
    },
};
use sagaflow_ranking::RankingService;
use tonic::transport::Channel;

sagaflow_testkit::service_harness!(
    /// A running ranking server with its database and a connected client.
    pub(crate) struct TestRanking(RankingServiceClient<Channel>), sagaflow_ranking, RankingService
);

impl TestRanking {
    pub(crate) async fn top(&mut self, limit: i32) -> Vec<ProductSales> {
        self.client
            .top_products(TopProductsRequest { limit })
            .await
            .unwrap()
            .into_inner()
            .products
    }

    /// Row counts of [inbox, product_sales, idempotency_keys].
    pub(crate) async fn counts(&self) -> [i64; 3] {
        self.table_counts(["inbox", "product_sales", "idempotency_keys"])
            .await
    }

    /// Row counts of [inbox, product_view, idempotency_keys].
    pub(crate) async fn view_counts(&self) -> [i64; 3] {
        self.table_counts(["inbox", "product_view", "idempotency_keys"])
            .await
    }

    /// Records `event` over gRPC and returns `applied`.
    pub(crate) async fn record(&mut self, event: RecordInventoryEventRequest) -> bool {
        self.client
            .record_inventory_event(event)
            .await
            .unwrap()
            .into_inner()
            .applied
    }

    /// The product view of `sku`, without its recording time; `None` when NOT_FOUND.
    pub(crate) async fn view(&mut self, sku: &str) -> Option<ProductView> {
        match self
            .client
            .get_product_view(GetProductViewRequest { sku: sku.into() })
            .await
        {
            Ok(resp) => {
                let view = resp.into_inner().view.unwrap();
                assert!(view.updated_at.is_some(), "{view:?}");
                Some(ProductView {
                    updated_at: None,
                    ..view
                })
            }
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => panic!("GetProductView {sku}: {status:?}"),
        }
    }

    /// Every product view, page by page (`page_size` each), without their recording times;
    /// also returns the number of pages.
    pub(crate) async fn all_views(&mut self, page_size: i32) -> (Vec<ProductView>, usize) {
        let (mut views, mut pages, mut page_token) = (Vec::new(), 0, String::new());
        loop {
            let page = self
                .client
                .list_product_views(ListProductViewsRequest {
                    page_size,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            views.extend(page.views.into_iter().map(|v| ProductView {
                updated_at: None,
                ..v
            }));
            if page.next_page_token.is_empty() {
                return (views, pages);
            }
            page_token = page.next_page_token;
        }
    }
}

/// A product view as GetProductView returns it, without its recording time.
pub(crate) fn view(
    sku: &str,
    stock: i64,
    units_sold: i64,
    events: i64,
    last_sequence: i64,
) -> ProductView {
    ProductView {
        sku: sku.into(),
        stock,
        units_sold,
        events,
        last_sequence,
        updated_at: None,
    }
}

fn inventory_event(sequence: i64, event: Event) -> RecordInventoryEventRequest {
    RecordInventoryEventRequest {
        event_id: new_id(),
        sequence,
        event: Some(event),
    }
}

/// An InventoryDeducted delivery under a new event id: a new order took `quantity` units of
/// `sku`, leaving `stock_after`.
pub(crate) fn deducted(
    sku: &str,
    sequence: i64,
    quantity: i32,
    stock_after: i64,
) -> RecordInventoryEventRequest {
    inventory_event(
        sequence,
        Event::Deducted(InventoryDeductedEvent {
            sku: sku.into(),
            order_id: new_id(),
            quantity,
            stock_after,
        }),
    )
}

/// An InventoryRestored delivery under a new event id.
pub(crate) fn restored(
    sku: &str,
    sequence: i64,
    quantity: i32,
    stock_after: i64,
) -> RecordInventoryEventRequest {
    inventory_event(
        sequence,
        Event::Restored(InventoryRestoredEvent {
            sku: sku.into(),
            order_id: new_id(),
            quantity,
            stock_after,
        }),
    )
}

/// An InventoryRestocked delivery under a new event id.
pub(crate) fn restocked(
    sku: &str,
    sequence: i64,
    delta: i64,
    stock_after: i64,
) -> RecordInventoryEventRequest {
    inventory_event(
        sequence,
        Event::Restocked(InventoryRestockedEvent {
            sku: sku.into(),
            delta,
            stock_after,
        }),
    )
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An OrderCompleted event for a new order with `lines` of (sku, quantity).
pub(crate) fn completed(lines: &[(&str, i32)]) -> RecordOrderCompletedRequest {
    RecordOrderCompletedRequest {
        event_id: new_id(),
        event: Some(OrderCompletedEvent {
            order: Some(Order {
                order_id: new_id(),
                user_id: "alice".into(),
                lines: lines
                    .iter()
                    .map(|(sku, quantity)| OrderLine {
                        sku: (*sku).into(),
                        quantity: *quantity,
                        unit_price: 1_000,
                    })
                    .collect(),
                status: OrderStatus::Completed.into(),
                ..Order::default()
            }),
        }),
    }
}

pub(crate) fn sales(sku: &str, units_sold: i64, orders: i64) -> ProductSales {
    ProductSales {
        sku: sku.into(),
        units_sold,
        orders,
    }
}
