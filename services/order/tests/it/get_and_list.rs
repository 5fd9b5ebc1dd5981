//! GetOrder with `wait` (woken by this replica's change notices, or by re-reading when another
//! replica made the change) and ListOrders pagination (`proto/sagaflow/order/v1/order.proto`).

use std::time::Duration;

use sagaflow_proto::order::v1::{
    FailureReason, GetOrderRequest, ListOrdersRequest, Order, OrderStatus,
    order_service_client::OrderServiceClient,
};
use sagaflow_testkit::Kind;
use tonic::transport::Channel;

use crate::harness::{self, fail_req, place_req};

fn wait_for(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(ms / 1000).unwrap(),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap(),
    })
}

fn get(
    client: &OrderServiceClient<Channel>,
    order_id: &str,
    wait_ms: u64,
) -> tokio::task::JoinHandle<(Order, Duration)> {
    let mut client = client.clone();
    let req = GetOrderRequest {
        order_id: order_id.into(),
        wait: wait_for(wait_ms),
    };
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let order = client
            .get_order(req)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        (order, started.elapsed())
    })
}

async fn get_order_waits_for_a_terminal_status(kind: Kind) {
    let t = harness::start(kind, "ord_wait").await;
    let order = t
        .place(place_req("w-1", "alice", &[("KB-001", 1)], None, 0))
        .await;

    // A short wait on a PENDING order returns it PENDING when the wait is over.
    let (pending, elapsed) = get(&t.client, &order.order_id, 300).await.unwrap();
    assert_eq!(pending.status(), OrderStatus::Pending);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");

    // A long wait returns as soon as the order completes, well before the wait is over.
    let waiter = get(&t.client, &order.order_id, 30_000);
    // The waiter has reached the server (it would also see the change by re-reading).
    t.until_waiting(&order.order_id).await;
    t.complete("w:7", &order.order_id).await.unwrap();
    let (done, elapsed) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter returns once the order completes")
        .unwrap();
    assert_eq!(done.status(), OrderStatus::Completed);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // A terminal order is returned at once, whatever the wait.
    let (again, elapsed) = get(&t.client, &order.order_id, 60_000).await.unwrap();
    assert_eq!(again, done);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    t.stop().await;
}

async fn get_order_wait_sees_changes_made_by_another_replica(kind: Kind) {
    let t = harness::start(kind, "ord_wait_replica").await;
    let order = t
        .place(place_req("r-1", "alice", &[("KB-001", 1)], None, 0))
        .await;
    let (replica, mut replica_client) = t.replica().await;
    let waiter = get(&t.client, &order.order_id, 30_000);
    t.until_waiting(&order.order_id).await;
    replica_client
        .fail_order(fail_req(
            "r:fail",
            &order.order_id,
            FailureReason::PaymentDeclined,
        ))
        .await
        .unwrap();
    let (failed, _) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter re-reads and sees the other replica's change")
        .unwrap();
    assert_eq!(failed.status(), OrderStatus::Failed);
    assert_eq!(failed.failure_reason(), FailureReason::PaymentDeclined);
    replica.shutdown().await.unwrap();
    t.stop().await;
}

async fn list_orders_pages_newest_first(kind: Kind) {
    let mut t = harness::start(kind, "ord_list").await;
    let mut placed = Vec::new();
    for i in 0..5 {
        let order = t
            .place(place_req(
                &format!("l-{i}"),
                "alice",
                &[("MS-002", i + 1)],
                None,
                0,
            ))
            .await;
        placed.push(order);
    }
    t.place(place_req("bob-1", "bob", &[("KB-001", 1)], None, 0))
        .await;
    for order in &placed[1..3] {
        t.complete(&format!("{}:7", order.order_id), &order.order_id)
            .await
            .unwrap();
    }

    // Newest first: by created_at, then order id (UUID v7, increasing), both descending.
    let mut expected: Vec<String> = placed.iter().map(|o| o.order_id.clone()).collect();
    expected.reverse();
    let mut seen = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        assert!(page < 10, "pagination must end");
        let resp = t
            .client
            .list_orders(ListOrdersRequest {
                user_id: "alice".into(),
                status: None,
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.orders.len() <= 2);
        assert!(resp.orders.iter().all(|o| o.user_id == "alice"));
        seen.extend(resp.orders.iter().map(|o| o.order_id.clone()));
        if resp.next_page_token.is_empty() {
            break;
        }
        token = resp.next_page_token;
    }
    assert_eq!(seen, expected);

    let completed = t
        .client
        .list_orders(ListOrdersRequest {
            user_id: "alice".into(),
            status: Some(OrderStatus::Completed.into()),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = completed
        .orders
        .iter()
        .map(|o| o.order_id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![placed[2].order_id.clone(), placed[1].order_id.clone()]
    );
    assert!(completed.next_page_token.is_empty());
    // Lines come with each listed order.
    assert_eq!(completed.orders[0].lines.len(), 1);
    assert_eq!(completed.orders[0].lines[0].quantity, 3);

    let bob = t
        .client
        .list_orders(ListOrdersRequest {
            user_id: "bob".into(),
            status: None,
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob.orders.len(), 1);
    let nobody = t
        .client
        .list_orders(ListOrdersRequest {
            user_id: "carol".into(),
            status: None,
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nobody.orders.is_empty() && nobody.next_page_token.is_empty());
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    get_order_waits_for_a_terminal_status,
    get_order_wait_sees_changes_made_by_another_replica,
    list_orders_pages_newest_first,
);
