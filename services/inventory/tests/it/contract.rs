//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on DeductInventory and its compensation RestoreInventory.

use sagaflow_proto::inventory::v1::{
    DeductInventoryRequest, DeductInventoryResponse, RestoreInventoryRequest, StockLine,
};
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command, Compensatable},
};

use crate::harness::{Harness, order_id};

struct DeductInventory(Harness);

fn deduct(sku: &str, order: &str, key: &str, quantity: i32) -> DeductInventoryRequest {
    DeductInventoryRequest {
        idempotency_key: key.into(),
        order_id: order.into(),
        lines: vec![StockLine {
            sku: sku.into(),
            quantity,
        }],
    }
}

impl Command for DeductInventory {
    /// (sku with 10 units, order id).
    type Subject = (String, String);
    type Reply = DeductInventoryResponse;
    /// (stock of the sku, the order's reservation status).
    type Effect = (i64, Option<String>);

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async move {
            let sku = format!("SKU-{}", uuid::Uuid::new_v4());
            self.0.product(&sku, 10).await;
            (sku, order_id())
        })
    }

    fn send(
        &self,
        (sku, order): &Self::Subject,
        key: &str,
        other: bool,
    ) -> Answer<'_, Self::Reply> {
        let req = deduct(sku, order, key, if other { 3 } else { 2 });
        let mut client = self.0.client.clone();
        Box::pin(async move { client.deduct_inventory(req).await.map(|r| r.into_inner()) })
    }

    fn effect(&self, (sku, order): &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let (sku, order) = (sku.clone(), order.clone());
        Box::pin(async move { (self.0.stock(&sku).await, self.0.reservation(&order).await) })
    }
}

impl Compensatable for DeductInventory {
    fn compensate(&self, (_, order): &Self::Subject, key: &str) -> Answer<'_, ()> {
        let req = RestoreInventoryRequest {
            idempotency_key: key.into(),
            order_id: order.clone(),
        };
        let mut client = self.0.client.clone();
        Box::pin(async move { client.restore_inventory(req).await.map(drop) })
    }
}

async fn deduct_inventory_keeps_the_command_contract(kind: Kind) {
    contract::run(DeductInventory(Harness::start(kind, "inv_contract").await)).await;
}

sagaflow_testkit::both_backends!(deduct_inventory_keeps_the_command_contract);
