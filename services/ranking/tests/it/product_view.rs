//! The product view built from Inventory's events (docs/architecture.md, "Events"): the right
//! stock and units sold, the same view whatever the redeliveries and the arrival order, event ids
//! that cannot be reused for another event, and GetProductView / ListProductViews.

use prost::Message as _;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use sagaflow_events::{Envelope, EventHandler, Family, HandleError, SCHEMA_VERSION};
use sagaflow_proto::ranking::v1::{ProductView, RecordInventoryEventRequest};
use sagaflow_ranking::{
    domain::{self, InventoryChange, StockChange},
    events::{self, InventoryEvent},
};
use sagaflow_server::{ServiceError, error::error_reason};
use sagaflow_testkit::Kind;
use tonic::Code;

use crate::harness::{self, TestRanking, deducted, restocked, restored, view};

async fn events_give_stock_and_units_sold(kind: Kind) {
    let mut t = TestRanking::start(kind, "rank_view").await;
    assert_eq!(t.view("KB-001").await, None, "no event yet: NOT_FOUND");
    let deliveries = [
        restocked("KB-001", 1, 10, 10),
        deducted("KB-001", 2, 3, 7),
        deducted("MS-002", 1, 1, 4),
        deducted("KB-001", 3, 2, 5),
        restored("KB-001", 4, 3, 8),
        restocked("KB-001", 5, -2, 6),
        restored("MS-002", 2, 1, 5),
    ];
    for event in deliveries {
        assert!(t.record(event).await);
    }
    // KB-001: 3 + 2 deducted, 3 restored; the last event left 6.
    assert_eq!(t.view("KB-001").await, Some(view("KB-001", 6, 2, 5, 5)));
    assert_eq!(t.view("MS-002").await, Some(view("MS-002", 5, 0, 2, 2)));
    assert_eq!(t.view("HD-003").await, None);
    assert_eq!(t.view_counts().await, [7, 2, 7]);
    // The product view and the sales ranking are separate: no OrderCompleted, no sales.
    assert!(t.top(0).await.is_empty());
    t.stop().await;
}

/// The events of one sku as Inventory would write them: a restock, then deductions, restores
/// of earlier deductions and restocks, with sequences 1, 2, … and the stock after each.
fn history(rng: &mut StdRng, sku: &str, len: usize) -> Vec<RecordInventoryEventRequest> {
    let mut stock = 20_i64;
    let mut out = vec![restocked(sku, 1, 20, 20)];
    let mut taken: Vec<i32> = Vec::new();
    for sequence in 2..=i64::try_from(len).unwrap() {
        let event = match rng.random_range(0..4) {
            0 if !taken.is_empty() => {
                let quantity = taken.swap_remove(rng.random_range(0..taken.len()));
                stock += i64::from(quantity);
                restored(sku, sequence, quantity, stock)
            }
            1 => {
                let delta = rng.random_range(1..10);
                stock += delta;
                restocked(sku, sequence, delta, stock)
            }
            _ if stock > 0 => {
                let quantity = rng.random_range(1..=stock.min(5));
                stock -= quantity;
                let quantity = i32::try_from(quantity).unwrap();
                taken.push(quantity);
                deducted(sku, sequence, quantity, stock)
            }
            _ => {
                stock += 5;
                restocked(sku, sequence, 5, stock)
            }
        };
        out.push(event);
    }
    out
}

/// What the view must be after `events`, by the domain's rule applied in sequence order.
fn expected_views(events: &[RecordInventoryEventRequest]) -> Vec<ProductView> {
    let mut views: Vec<domain::ProductView> = Vec::new();
    for event in events {
        let change = change_of(event);
        let i = views.iter().position(|v| v.sku == change.sku);
        let before = i.map(|i| views[i].clone());
        let after = domain::apply_change(before, &change, 0);
        match i {
            Some(i) => views[i] = after,
            None => views.push(after),
        }
    }
    views.sort_by(|a, b| a.sku.as_bytes().cmp(b.sku.as_bytes()));
    views
        .into_iter()
        .map(|v| view(&v.sku, v.stock, v.units_sold, v.events, v.last_sequence))
        .collect()
}

fn change_of(req: &RecordInventoryEventRequest) -> InventoryChange {
    let (sku, change, stock_after) = match InventoryEvent::from(req.event.clone().unwrap()) {
        InventoryEvent::Deducted(e) => (
            e.sku,
            StockChange::Deducted {
                quantity: i64::from(e.quantity),
            },
            e.stock_after,
        ),
        InventoryEvent::Restored(e) => (
            e.sku,
            StockChange::Restored {
                quantity: i64::from(e.quantity),
            },
            e.stock_after,
        ),
        InventoryEvent::Restocked(e) => (
            e.sku,
            StockChange::Restocked { delta: e.delta },
            e.stock_after,
        ),
    };
    InventoryChange {
        sku,
        sequence: req.sequence,
        change,
        stock_after,
    }
}

/// Delivers `req` over gRPC (`grpc`) or through the consumers' entry point, as a Kafka consumer
/// would: decoded from its type name and payload.
async fn deliver(t: &TestRanking, req: RecordInventoryEventRequest, grpc: bool) -> bool {
    if grpc {
        let mut client = t.client.clone();
        return client
            .record_inventory_event(req)
            .await
            .unwrap()
            .into_inner()
            .applied;
    }
    let event = InventoryEvent::from(req.event.unwrap());
    let payload = match &event {
        InventoryEvent::Deducted(e) => e.encode_to_vec(),
        InventoryEvent::Restored(e) => e.encode_to_vec(),
        InventoryEvent::Restocked(e) => e.encode_to_vec(),
    };
    let decoded = events::decode_inventory_event(event.event_type(), &payload).unwrap();
    events::record_inventory_event(&t.db, &req.event_id, req.sequence, decoded)
        .await
        .unwrap()
}

/// Every event delivered twice, in a shuffled order, some concurrently, half of the deliveries
/// over gRPC and half through the consumers' entry point: each event applies once, and the view
/// is the one of the events in sequence order.
async fn redelivered_and_shuffled_events_give_the_same_view(kind: Kind) {
    let mut t = TestRanking::start(kind, "rank_view_shuffle").await;
    let mut rng = StdRng::seed_from_u64(21);
    let mut events = Vec::new();
    for sku in ["KB-001", "MS-002", "hd-003"] {
        events.extend(history(&mut rng, sku, 15));
    }
    let expected = expected_views(&events);
    // The rule's sums, checked independently of the domain function.
    for sku in ["KB-001", "MS-002", "hd-003"] {
        let mine: Vec<_> = events
            .iter()
            .map(change_of)
            .filter(|c| c.sku == sku)
            .collect();
        let units: i64 = mine.iter().map(|c| c.change.units_sold_delta()).sum();
        let last = mine.iter().max_by_key(|c| c.sequence).unwrap();
        let v = expected.iter().find(|v| v.sku == sku).unwrap();
        assert_eq!(
            (v.units_sold, v.stock, v.events),
            (units, last.stock_after, 15)
        );
    }

    let mut deliveries: Vec<_> = events.iter().chain(&events).cloned().collect();
    deliveries.shuffle(&mut rng);
    let mut applied = 0;
    for (chunk_no, chunk) in deliveries.chunks(6).enumerate() {
        let calls: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, req)| deliver(&t, req.clone(), (chunk_no + i) % 2 == 0))
            .collect();
        for was_applied in futures::future::join_all(calls).await {
            applied += usize::from(was_applied);
        }
    }
    assert_eq!(applied, events.len(), "each event applied once");
    let (views, _) = t.all_views(0).await;
    assert_eq!(views, expected);
    assert_eq!(t.view_counts().await, [45, 3, 45]);

    // A third round of every event, in reverse order, changes nothing.
    for req in events.iter().rev() {
        assert!(!deliver(&t, req.clone(), true).await);
    }
    assert_eq!(t.all_views(0).await.0, expected);
    t.stop().await;
}

async fn event_id_reused_for_another_event_is_already_exists(kind: Kind) {
    let mut t = TestRanking::start(kind, "rank_view_reuse").await;
    let first = deducted("KB-001", 1, 2, 8);
    assert!(t.record(first.clone()).await);
    let before = (t.view("KB-001").await, t.view_counts().await);
    let mut other_quantity = deducted("KB-001", 1, 5, 5);
    other_quantity.event_id.clone_from(&first.event_id);
    let mut other_sequence = first.clone();
    other_sequence.sequence = 2;
    let mut other_kind = restored("KB-001", 1, 2, 8);
    other_kind.event_id.clone_from(&first.event_id);
    for (other, case) in [
        (other_quantity, "another quantity"),
        (other_sequence, "another sequence"),
        (other_kind, "another event type"),
    ] {
        let err = t
            .client
            .record_inventory_event(other.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{case}");
        assert_eq!(
            error_reason(&err).as_deref(),
            Some("IDEMPOTENCY_KEY_REUSED"),
            "{case}"
        );
        // The consumers' entry point refuses it the same way.
        let err = events::record_inventory_event(
            &t.db,
            &other.event_id,
            other.sequence,
            InventoryEvent::from(other.event.unwrap()),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                ServiceError::AlreadyExists {
                    reason: "IDEMPOTENCY_KEY_REUSED",
                    ..
                }
            ),
            "{case}: {err:?}"
        );
        assert_eq!(
            (t.view("KB-001").await, t.view_counts().await),
            before,
            "{case}: nothing changed"
        );
    }
    // The first event itself is still a redelivery.
    assert!(!t.record(first).await);
    assert_eq!((t.view("KB-001").await, t.view_counts().await), before);
    t.stop().await;
}

/// An event delivered over gRPC and again through the consumers' entry point (or the other way
/// round) is one command: the second delivery applies nothing. Also for OrderCompleted.
async fn grpc_and_consumer_deliveries_are_one_command(kind: Kind) {
    let mut t = TestRanking::start(kind, "rank_view_paths").await;
    let over_grpc = deducted("KB-001", 1, 2, 8);
    assert!(deliver(&t, over_grpc.clone(), true).await);
    assert!(!deliver(&t, over_grpc, false).await);
    let from_kafka = restocked("KB-001", 2, 4, 12);
    assert!(deliver(&t, from_kafka.clone(), false).await);
    assert!(!deliver(&t, from_kafka, true).await);
    assert_eq!(t.view("KB-001").await, Some(view("KB-001", 12, 2, 2, 2)));

    let order = harness::completed(&[("KB-001", 2)]);
    let event = order.event.clone().unwrap();
    let decoded =
        events::decode_order_completed(events::ORDER_COMPLETED, &event.encode_to_vec()).unwrap();
    assert!(
        events::record_order_completed(&t.db, &order.event_id, decoded.clone())
            .await
            .unwrap()
    );
    assert!(
        !events::record_order_completed(&t.db, &order.event_id, decoded)
            .await
            .unwrap()
    );
    let again = t
        .client
        .record_order_completed(order.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!again.applied);
    assert_eq!(t.top(0).await, vec![harness::sales("KB-001", 2, 1)]);
    // The entry point validates as the RPC does, naming the field.
    let mut pending = event;
    if let Some(o) = pending.order.as_mut() {
        o.status = sagaflow_proto::order::v1::OrderStatus::Pending.into();
    }
    let err = events::record_order_completed(&t.db, &harness::new_id(), pending)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::InvalidArgument(v) if v.len() == 1 && v[0].field == "event.order.status"),
        "{err:?}"
    );
    assert_eq!(t.top(0).await, vec![harness::sales("KB-001", 2, 1)]);
    t.stop().await;
}

async fn list_product_views_pages_by_sku(kind: Kind) {
    let mut t = TestRanking::start(kind, "rank_view_pages").await;
    assert_eq!(t.all_views(0).await, (Vec::new(), 1));
    // 101 skus, mixed case (byte order: upper case first), recorded in no particular order.
    let mut skus: Vec<String> = (0..101)
        .map(|i| {
            if i % 3 == 0 {
                format!("sku-{i:03}")
            } else {
                format!("SKU-{i:03}")
            }
        })
        .collect();
    skus.shuffle(&mut StdRng::seed_from_u64(7));
    for (i, sku) in skus.iter().enumerate() {
        let stock = i64::try_from(i).unwrap();
        assert!(deliver(&t, restocked(sku, 1, stock, stock), i % 2 == 0).await);
    }
    skus.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let listed = |views: &[ProductView]| views.iter().map(|v| v.sku.clone()).collect::<Vec<_>>();

    // 0 means 100: two pages.
    let first = t
        .client
        .list_product_views(sagaflow_proto::ranking::v1::ListProductViewsRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.views.len(), 100);
    assert!(!first.next_page_token.is_empty());
    let (all, pages) = t.all_views(0).await;
    assert_eq!((listed(&all), pages), (skus.clone(), 2));
    let (all, pages) = t.all_views(7).await;
    assert_eq!((listed(&all), pages), (skus.clone(), 15));
    // Exactly one full page: no token after it.
    let (all, pages) = t.all_views(101).await;
    assert_eq!((listed(&all), pages), (skus.clone(), 1));
    let (all, pages) = t.all_views(1000).await;
    assert_eq!((listed(&all), pages), (skus, 1));
    t.stop().await;
}

/// Ranking as the consumer of the event topics (docs/architecture.md, "Events"; Kafka consumer
/// group `sagaflow-ranking`): an inventory event is recorded once however often it is consumed,
/// the order's events other than OrderCompleted pass, and what can never be recorded is poison.
async fn the_consumer_records_each_event_once_and_refuses_poison(kind: Kind) {
    let mut t = TestRanking::start(kind, "rank_consumer").await;
    let consumer = sagaflow_ranking::RankingService::new(t.db.clone()).consumer();
    let request = deducted("KB-001", 1, 3, 7);
    let event = InventoryEvent::from(request.event.clone().unwrap());
    let envelope = Envelope {
        family: Family::Inventory,
        event_id: request.event_id.clone(),
        event_type: event.event_type().to_owned(),
        schema_version: SCHEMA_VERSION,
        aggregate_id: "KB-001".into(),
        sequence: 1,
        payload: event.encode(),
        traceparent: None,
    };
    for _ in 0..3 {
        assert_eq!(consumer.handle(envelope.clone()).await, Ok(()));
    }
    assert_eq!(t.view("KB-001").await, Some(view("KB-001", 7, 3, 1, 1)));

    let poison = |family, event_type: &str, payload: Vec<u8>| Envelope {
        family,
        event_type: event_type.to_owned(),
        event_id: uuid::Uuid::new_v4().to_string(),
        payload,
        ..envelope.clone()
    };
    for bad in [
        poison(Family::Inventory, "InventoryDeducted", vec![0xff, 0xff]),
        poison(Family::Inventory, "InventoryLost", Vec::new()),
        poison(Family::Order, "OrderCompleted", vec![0xff, 0xff]),
    ] {
        assert!(
            matches!(
                consumer.handle(bad.clone()).await,
                Err(HandleError::Poison(_))
            ),
            "{bad:?}"
        );
    }
    // Not Ranking's: passes, records nothing.
    assert_eq!(
        consumer
            .handle(poison(Family::Order, "OrderCreated", vec![0xff]))
            .await,
        Ok(())
    );
    assert_eq!(t.view_counts().await, [1, 1, 1]);
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    the_consumer_records_each_event_once_and_refuses_poison,
    events_give_stock_and_units_sold,
    redelivered_and_shuffled_events_give_the_same_view,
    event_id_reused_for_another_event_is_already_exists,
    grpc_and_consumer_deliveries_are_one_command,
    list_product_views_pages_by_sku,
);
