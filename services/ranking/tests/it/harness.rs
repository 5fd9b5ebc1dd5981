//! A ranking server on a loopback port over a fresh database.

use sagaflow_proto::{
    order::v1::{Order, OrderCompletedEvent, OrderLine, OrderStatus},
    ranking::v1::{
        ProductSales, RecordOrderCompletedRequest, TopProductsRequest,
        ranking_service_client::RankingServiceClient,
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
