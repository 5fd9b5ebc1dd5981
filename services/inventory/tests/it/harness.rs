//! Starts an inventory server on a fresh database and reads the database directly, so tests can
//! check what changed (and what did not).

use sagaflow_inventory::{InventoryService, events::InventoryEvent};
use sagaflow_proto::inventory::v1::{
    Product, RestockRequest, UpsertProductRequest, inventory_service_client::InventoryServiceClient,
};
use tonic::transport::Channel;

sagaflow_testkit::service_harness!(
    /// A running inventory server with its database and a connected client.
    pub(crate) struct Harness(InventoryServiceClient<Channel>), sagaflow_inventory, InventoryService
);

impl Harness {
    /// Creates `sku` (price 1000 KRW) and restocks it to `stock` units.
    pub(crate) async fn product(&self, sku: &str, stock: i32) -> Product {
        let mut client = self.client.clone();
        let mut product = client
            .upsert_product(UpsertProductRequest {
                sku: sku.into(),
                name: format!("product {sku}"),
                unit_price: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap();
        if stock > 0 {
            product = client
                .restock(RestockRequest {
                    sku: sku.into(),
                    quantity: stock,
                    idempotency_key: format!("initial-{sku}"),
                })
                .await
                .unwrap()
                .into_inner()
                .product
                .unwrap();
        }
        product
    }

    /// The stock column of `sku`.
    pub(crate) async fn stock(&self, sku: &str) -> i64 {
        let sql = "SELECT stock FROM products WHERE sku = $1";
        self.value(sql, sku).await.unwrap()
    }

    /// The status of the order's reservation (`None`: no row).
    pub(crate) async fn reservation(&self, order_id: &str) -> Option<String> {
        let sql = "SELECT status FROM reservations WHERE order_id = $1";
        self.value(sql, order_id).await
    }

    /// Every row of every inventory table (except timestamps), for "nothing changed" checks.
    pub(crate) async fn snapshot(&self) -> Snapshot {
        Snapshot {
            products: self
                .rows("SELECT sku, name, unit_price, stock FROM products ORDER BY sku")
                .await,
            reservations: self
                .rows("SELECT order_id, status FROM reservations ORDER BY order_id")
                .await,
            reservation_lines: self
                .rows(
                    "SELECT order_id, sku, quantity FROM reservation_lines ORDER BY order_id, sku",
                )
                .await,
            restocks: self
                .rows(
                    "SELECT idempotency_key, sku, quantity FROM restocks ORDER BY idempotency_key",
                )
                .await,
            idempotency_keys: self.idempotency_keys().await,
            outbox: self
                .rows("SELECT aggregate_id, sequence, event_type FROM outbox ORDER BY position")
                .await,
        }
    }

    /// Every outbox event of `sku`, decoded, with its sequence, in sequence order.
    pub(crate) async fn events(&self, sku: &str) -> Vec<(i64, InventoryEvent)> {
        sagaflow_server::outbox::events_of(&self.db, sku)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                let event = InventoryEvent::decode(&e.event_type, &e.payload).unwrap();
                (e.sequence, event)
            })
            .collect()
    }

    /// The stock invariant (docs/architecture.md, "Invariants") for every product: restocks -
    /// stock = units held by RESERVED orders (products start at stock 0, so restocks are all the
    /// stock that ever arrived).
    pub(crate) async fn assert_stock_invariant(&self) {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT p.sku, p.stock, \
                CAST(COALESCE((SELECT SUM(r.quantity) FROM restocks r WHERE r.sku = p.sku), 0) AS BIGINT), \
                CAST(COALESCE((SELECT SUM(l.quantity) FROM reservation_lines l \
                    JOIN reservations s ON s.order_id = l.order_id \
                    WHERE l.sku = p.sku AND s.status = 'RESERVED'), 0) AS BIGINT) \
             FROM products p ORDER BY p.sku",
        )
        .fetch_all(self.db.pool())
        .await
        .unwrap();
        for (sku, stock, restocked, reserved) in rows {
            assert!(stock >= 0, "{sku}: negative stock {stock}");
            assert_eq!(
                restocked - stock,
                reserved,
                "{sku}: restocked {restocked}, stock {stock}, reserved {reserved}"
            );
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) products: Vec<(String, String, i64, i64)>,
    pub(crate) reservations: Vec<(String, String)>,
    pub(crate) reservation_lines: Vec<(String, String, i64)>,
    pub(crate) restocks: Vec<(String, String, i64)>,
    pub(crate) idempotency_keys: Vec<String>,
    /// Outbox rows: sku, sequence, event type.
    pub(crate) outbox: Vec<(String, i64, String)>,
}

pub(crate) fn order_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
