//! The command-contract suite of `sagaflow_testkit::contract` (docs/architecture.md, "The
//! service contract") on RecordOrderCompleted and RecordInventoryEvent, each keyed by its event
//! id through the idempotency executor (they have no compensation: only the idempotency part
//! applies). A repeat replays the stored response with `applied` false: it applied nothing this
//! time.

use std::{collections::HashMap, sync::Mutex};

use sagaflow_proto::{
    inventory::v1::InventoryDeductedEvent,
    ranking::v1::{
        RecordInventoryEventRequest, RecordInventoryEventResponse, RecordOrderCompletedResponse,
        record_inventory_event_request::Event,
    },
};
use sagaflow_testkit::{
    Kind,
    contract::{self, Answer, BoxFuture, Command},
};

use crate::harness::{TestRanking, completed, new_id};

struct RecordOrderCompleted {
    ranking: TestRanking,
    /// The event id standing for each key of the suite (event ids are UUIDs).
    event_ids: Mutex<HashMap<String, String>>,
}

impl RecordOrderCompleted {
    fn event_id(&self, key: &str) -> String {
        let mut ids = self.event_ids.lock().unwrap();
        ids.entry(key.to_owned()).or_insert_with(new_id).clone()
    }
}

impl Command for RecordOrderCompleted {
    /// (a sku no other subject sells, the completed order's id).
    type Subject = (String, String);
    type Reply = RecordOrderCompletedResponse;
    /// (units sold, orders) of the subject's sku; `None` before its first sale.
    type Effect = Option<(i64, i64)>;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async { (format!("SKU-{}", new_id()), new_id()) })
    }

    fn send(
        &self,
        (sku, order): &Self::Subject,
        key: &str,
        other: bool,
    ) -> Answer<'_, Self::Reply> {
        let mut req = completed(&[(sku.as_str(), if other { 3 } else { 2 })]);
        req.event_id = self.event_id(key);
        if let Some(o) = req.event.as_mut().and_then(|e| e.order.as_mut()) {
            o.order_id.clone_from(order);
        }
        let mut client = self.ranking.client.clone();
        Box::pin(async move {
            client
                .record_order_completed(req)
                .await
                .map(|r| r.into_inner())
        })
    }

    fn effect(&self, (sku, _): &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let sku = sku.clone();
        Box::pin(async move {
            self.ranking
                .row(
                    "SELECT units_sold, orders FROM product_sales WHERE sku = $1",
                    &sku,
                )
                .await
        })
    }

    fn repeat_of(&self, _first: &Self::Reply) -> Self::Reply {
        RecordOrderCompletedResponse { applied: false }
    }
}

async fn record_order_completed_keeps_the_command_contract(kind: Kind) {
    let ranking = TestRanking::start(kind, "rank_contract").await;
    contract::run_idempotent(RecordOrderCompleted {
        ranking,
        event_ids: Mutex::new(HashMap::new()),
    })
    .await;
}

struct RecordInventoryEvent {
    ranking: TestRanking,
    /// The event id standing for each key of the suite (event ids are UUIDs).
    event_ids: Mutex<HashMap<String, String>>,
}

impl Command for RecordInventoryEvent {
    /// (a sku no other subject's events touch, the deducting order's id).
    type Subject = (String, String);
    type Reply = RecordInventoryEventResponse;
    /// (stock, units sold, events, last sequence) of the subject's sku; `None` before its first
    /// event.
    type Effect = Option<(i64, i64, i64, i64)>;

    fn subject(&self) -> BoxFuture<'_, Self::Subject> {
        Box::pin(async { (format!("SKU-{}", new_id()), new_id()) })
    }

    fn send(
        &self,
        (sku, order): &Self::Subject,
        key: &str,
        other: bool,
    ) -> Answer<'_, Self::Reply> {
        let event_id = {
            let mut ids = self.event_ids.lock().unwrap();
            ids.entry(key.to_owned()).or_insert_with(new_id).clone()
        };
        let quantity = if other { 3 } else { 2 };
        let req = RecordInventoryEventRequest {
            event_id,
            sequence: 1,
            event: Some(Event::Deducted(InventoryDeductedEvent {
                sku: sku.clone(),
                order_id: order.clone(),
                quantity,
                stock_after: 10 - i64::from(quantity),
            })),
        };
        let mut client = self.ranking.client.clone();
        Box::pin(async move {
            client
                .record_inventory_event(req)
                .await
                .map(|r| r.into_inner())
        })
    }

    fn effect(&self, (sku, _): &Self::Subject) -> BoxFuture<'_, Self::Effect> {
        let sku = sku.clone();
        Box::pin(async move {
            self.ranking
                .row(
                    "SELECT stock, units_sold, events, last_sequence FROM product_view \
                     WHERE sku = $1",
                    &sku,
                )
                .await
        })
    }

    fn repeat_of(&self, _first: &Self::Reply) -> Self::Reply {
        RecordInventoryEventResponse { applied: false }
    }
}

async fn record_inventory_event_keeps_the_command_contract(kind: Kind) {
    let ranking = TestRanking::start(kind, "rank_inv_contract").await;
    contract::run_idempotent(RecordInventoryEvent {
        ranking,
        event_ids: Mutex::new(HashMap::new()),
    })
    .await;
}

sagaflow_testkit::both_backends!(
    record_order_completed_keeps_the_command_contract,
    record_inventory_event_keeps_the_command_contract,
);
