//! A ranking server on a loopback port over a fresh database.

use sagaflow_proto::{
    order::v1::{Order, OrderCompletedEvent, OrderLine, OrderStatus},
    ranking::v1::{
        ProductSales, RecordOrderCompletedRequest, TopProductsRequest,
        ranking_service_client::RankingServiceClient,
    },
};
use sagaflow_ranking::RankingService;
use sagaflow_server::{Db, grpc::ServerHandle};
use sagaflow_testkit::{Kind, TestDatabase};
use tonic::transport::Channel;

pub(crate) struct TestRanking {
    pub(crate) _tdb: TestDatabase,
    pub(crate) db: Db,
    pub(crate) server: ServerHandle,
    pub(crate) client: RankingServiceClient<Channel>,
}

pub(crate) async fn start(kind: Kind, name: &str) -> TestRanking {
    let tdb = TestDatabase::new(kind, name);
    let (db, server) = sagaflow_server::grpc::spawn_service(
        &tdb.url,
        sagaflow_ranking::migrations(),
        sagaflow_ranking::SERVICE_NAME,
        |db, routes| RankingService::new(db).register(routes),
    )
    .await
    .expect("start the service on its test database");
    let client = RankingServiceClient::connect(server.url()).await.unwrap();
    TestRanking {
        _tdb: tdb,
        db,
        server,
        client,
    }
}

impl TestRanking {
    pub(crate) async fn stop(self) {
        self.server.shutdown().await.unwrap();
        self.db.close().await;
    }

    pub(crate) async fn top(&mut self, limit: i32) -> Vec<ProductSales> {
        self.client
            .top_products(TopProductsRequest { limit })
            .await
            .unwrap()
            .into_inner()
            .products
    }

    /// Row counts of (inbox, product_sales, idempotency_keys).
    pub(crate) async fn counts(&self) -> (i64, i64, i64) {
        let count = |table: &'static str| async move {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(self.db.pool())
                .await
                .unwrap()
        };
        (
            count("inbox").await,
            count("product_sales").await,
            count("idempotency_keys").await,
        )
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
