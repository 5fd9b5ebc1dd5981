//! The orchestrator as a consumer of the order events (docs/architecture.md, "Events"; Kafka
//! consumer group `sagaflow-orchestrator`): an OrderCreated starts its order's saga through
//! StartOrderSaga's own code, a redelivery finds the same saga, the order's other events pass,
//! and what can never start a saga is poison.

use std::time::Duration;

use prost::Message as _;
use sagaflow_events::{Envelope, EventHandler, Family, HandleError, SCHEMA_VERSION};
use sagaflow_orchestrator::{OrchestratorService, order_saga};
use sagaflow_proto::order::v1::OrderCreatedEvent;
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{EngineError, SagaStatus};
use uuid::Uuid;

use crate::harness::{Fixture, System, policies, saga_id};

fn envelope(order_id: &str, event_type: &str, payload: Vec<u8>) -> Envelope {
    Envelope {
        family: Family::Order,
        event_id: Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        schema_version: SCHEMA_VERSION,
        aggregate_id: order_id.to_owned(),
        sequence: 1,
        payload,
        traceparent: None,
    }
}

async fn an_order_created_starts_one_saga_however_often_it_is_consumed(kind: Kind) {
    let sys = System::start(kind, "", |clients| order_saga(clients, policies()).unwrap()).await;
    let consumer = OrchestratorService::new(sys.engine.clone(), Duration::from_secs(60)).consumer();
    let f = Fixture::new("consumer");
    let order = sys.place_order(&f).await;
    let order_id = order.order_id.clone();
    let created = envelope(
        &order_id,
        "OrderCreated",
        OrderCreatedEvent {
            order: Some(order),
            payment_method: f.payment_method.to_owned(),
            sealed_payment_method: String::new(),
        }
        .encode_to_vec(),
    );
    // Delivered three times, two of them at once (a rebalance hands the record to a second
    // member while the first still runs it).
    let (a, b) = tokio::join!(
        consumer.handle(created.clone()),
        consumer.handle(created.clone())
    );
    assert_eq!((a, b), (Ok(()), Ok(())));
    let rested = sys.rested(&order_id).await;
    assert_eq!(rested.status(), SagaStatus::Completed);
    let journal_before = sys.trace(&order_id).await;
    assert_eq!(consumer.handle(created).await, Ok(()));
    assert_eq!(sys.rested(&order_id).await.status(), SagaStatus::Completed);
    assert_eq!(
        sys.trace(&order_id).await,
        journal_before,
        "a redelivery after the end changes nothing"
    );
    sys.stop().await;
}

async fn what_can_never_start_a_saga_is_poison_and_other_events_pass(kind: Kind) {
    let sys = System::start(kind, "", |clients| order_saga(clients, policies()).unwrap()).await;
    let consumer = OrchestratorService::new(sys.engine.clone(), Duration::from_secs(60)).consumer();
    let order_id = Uuid::new_v4().to_string();

    let garbage = envelope(&order_id, "OrderCreated", vec![0xff, 0xff, 0xff]);
    assert!(
        matches!(consumer.handle(garbage).await, Err(HandleError::Poison(reason)) if reason.contains("does not decode")),
    );
    // Decodes, but StartOrderSaga refuses it (INVALID_ARGUMENT naming the field).
    let empty = envelope(
        &order_id,
        "OrderCreated",
        OrderCreatedEvent::default().encode_to_vec(),
    );
    assert!(
        matches!(consumer.handle(empty).await, Err(HandleError::Poison(reason)) if reason.contains("event.order.order_id")),
    );
    let mut inventory = envelope("SKU-1", "InventoryDeducted", Vec::new());
    inventory.family = Family::Inventory;
    assert!(matches!(
        consumer.handle(inventory).await,
        Err(HandleError::Poison(_))
    ));
    // Not the orchestrator's: passes, starts nothing.
    for event_type in ["OrderCompleted", "OrderFailed"] {
        assert_eq!(
            consumer
                .handle(envelope(&order_id, event_type, vec![0xff]))
                .await,
            Ok(())
        );
    }
    assert!(
        matches!(
            sys.engine.get(saga_id(&order_id)).await,
            Err(EngineError::NotFound(_))
        ),
        "no saga was started"
    );
    sys.stop().await;
}

sagaflow_testkit::both_backends!(
    an_order_created_starts_one_saga_however_often_it_is_consumed,
    what_can_never_start_a_saga_is_poison_and_other_events_pass,
);
