//! The outbox relay end to end (docs/architecture.md, "Events"): the real relay over real gRPC
//! against a real tonic server that stands in for the orchestrator and Ranking and refuses or
//! fails the events of chosen users, on both stores.
//!
//! - 300 events the orchestrator refuses definitely at the head of the outbox do not block the
//!   orders placed after them; they end dead-lettered (listed by OutboxAdminService, counted),
//!   their orders FAILED with reason INTERNAL; an order's OrderCompleted is never delivered
//!   before its OrderCreated;
//! - deliveries in doubt (UNAVAILABLE from the handler) are retried with growing gaps past the
//!   attempt limit and never dead-lettered, nor is an unreachable orchestrator a reason to give
//!   up;
//! - delivered rows past the retention window are pruned in bounded batches.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sagaflow_order::{
    outbox,
    relay::{self, OutboxRelay, RelayWaker, RetryPolicy},
};
use sagaflow_proto::{
    orchestrator::v1::{
        StartOrderSagaRequest, StartOrderSagaResponse,
        orchestrator_service_server::{OrchestratorService, OrchestratorServiceServer},
    },
    order::v1::{
        FailureReason, ListDeadLettersRequest, ListOrdersRequest, OrderStatus,
        outbox_admin_service_client::OutboxAdminServiceClient,
    },
    ranking::v1::{
        RecordOrderCompletedRequest, RecordOrderCompletedResponse, TopProductsRequest,
        TopProductsResponse,
        ranking_service_server::{RankingService, RankingServiceServer},
    },
};
use sagaflow_server::{ServiceError, db::now_ms, faults::FaultConfig, grpc::ServerHandle};
use sagaflow_testkit::Kind;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::Endpoint};

use crate::harness::{self, TestOrder, place_req};

/// Users whose OrderCreated the stub orchestrator refuses with INVALID_ARGUMENT, every time.
const REFUSED: &str = "refused-user";
/// Users whose OrderCreated fails with UNAVAILABLE (from the handler: in doubt) 3 times, then
/// starts the saga.
const FLAKY: &str = "flaky-user";
/// Users whose OrderCreated fails with UNAVAILABLE for as long as `fail_in_doubt` is set.
const IN_DOUBT: &str = "doubt-user";
/// Users whose OrderCreated fails with UNAVAILABLE once, then is refused with INVALID_ARGUMENT.
const DOUBT_THEN_REFUSED: &str = "doubt-then-refused-user";
/// Users whose OrderCreated is answered only once the test opens `slow_gate`.
const SLOW: &str = "slow-user";

#[derive(Debug, Default)]
struct StubState {
    /// Every StartOrderSaga call: (order id, when).
    calls: Vec<(String, Instant)>,
    /// Order ids whose saga "started", in order (a redelivery is not added again).
    started: Vec<String>,
    /// Order ids whose OrderCompleted Ranking recorded.
    completed: Vec<String>,
    /// OrderCompleted deliveries that came before their order's OrderCreated was accepted.
    out_of_order: Vec<String>,
    /// While set, IN_DOUBT's deliveries fail.
    fail_in_doubt: bool,
    /// SLOW's deliveries wait for this to be notified before they answer.
    slow_gate: Option<Arc<tokio::sync::Notify>>,
}

/// A real tonic server implementing the orchestrator's and Ranking's event consumers.
#[derive(Debug, Clone, Default)]
struct Stub(Arc<Mutex<StubState>>);

impl Stub {
    fn state(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.0.lock().unwrap()
    }

    fn calls_of(&self, order_id: &str) -> Vec<Instant> {
        self.state()
            .calls
            .iter()
            .filter(|(id, _)| id == order_id)
            .map(|(_, at)| *at)
            .collect()
    }

    async fn spawn(&self) -> ServerHandle {
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(OrchestratorServiceServer::new(self.clone()));
        routes.add_service(RankingServiceServer::new(self.clone()));
        sagaflow_server::grpc::spawn(
            "127.0.0.1:0".parse().unwrap(),
            routes,
            &[],
            FaultConfig::default(),
        )
        .await
        .unwrap()
    }
}

#[tonic::async_trait]
impl OrchestratorService for Stub {
    async fn start_order_saga(
        &self,
        request: Request<StartOrderSagaRequest>,
    ) -> Result<Response<StartOrderSagaResponse>, Status> {
        let order = request
            .into_inner()
            .event
            .and_then(|e| e.order)
            .ok_or_else(|| Status::invalid_argument("no order"))?;
        if order.user_id == SLOW {
            self.state()
                .calls
                .push((order.order_id.clone(), Instant::now()));
            let gate = self.state().slow_gate.clone();
            if let Some(gate) = gate {
                gate.notified().await;
            }
        }
        let mut state = self.state();
        if order.user_id != SLOW {
            state.calls.push((order.order_id.clone(), Instant::now()));
        }
        let calls = state
            .calls
            .iter()
            .filter(|(id, _)| *id == order.order_id)
            .count();
        let refused = || -> Status {
            ServiceError::invalid("event.order.user_id", "refused by the test orchestrator").into()
        };
        let unavailable = || Status::unavailable("saga store: the test orchestrator is failing");
        match order.user_id.as_str() {
            REFUSED => return Err(refused()),
            FLAKY if calls <= 3 => return Err(unavailable()),
            IN_DOUBT if state.fail_in_doubt => return Err(unavailable()),
            DOUBT_THEN_REFUSED if calls == 1 => return Err(unavailable()),
            DOUBT_THEN_REFUSED => return Err(refused()),
            _ => {}
        }
        let created = !state.started.contains(&order.order_id);
        if created {
            state.started.push(order.order_id.clone());
        }
        Ok(Response::new(StartOrderSagaResponse {
            saga_id: order.order_id,
            created,
        }))
    }
}

#[tonic::async_trait]
impl RankingService for Stub {
    async fn top_products(
        &self,
        _request: Request<TopProductsRequest>,
    ) -> Result<Response<TopProductsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn record_order_completed(
        &self,
        request: Request<RecordOrderCompletedRequest>,
    ) -> Result<Response<RecordOrderCompletedResponse>, Status> {
        let order_id = request
            .into_inner()
            .event
            .and_then(|e| e.order)
            .map(|o| o.order_id)
            .unwrap_or_default();
        let mut state = self.state();
        if !state.started.contains(&order_id) {
            state.out_of_order.push(order_id.clone());
        }
        state.completed.push(order_id);
        Ok(Response::new(RecordOrderCompletedResponse {
            applied: true,
        }))
    }

    // Inventory's events and the product view are not this test's: the relay here delivers the
    // order's events only.
    async fn record_inventory_event(
        &self,
        _request: Request<sagaflow_proto::ranking::v1::RecordInventoryEventRequest>,
    ) -> Result<Response<sagaflow_proto::ranking::v1::RecordInventoryEventResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_product_view(
        &self,
        _request: Request<sagaflow_proto::ranking::v1::GetProductViewRequest>,
    ) -> Result<Response<sagaflow_proto::ranking::v1::GetProductViewResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_product_views(
        &self,
        _request: Request<sagaflow_proto::ranking::v1::ListProductViewsRequest>,
    ) -> Result<Response<sagaflow_proto::ranking::v1::ListProductViewsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// The Prometheus recorder of this test process (installed once).
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).unwrap();
        handle
    })
}

/// The value of the counter sample `name{labels}` (0 when absent).
fn counter(name_and_labels: &str) -> f64 {
    metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A relay over the test's order database, delivering to `url`, polling every `poll`.
fn relay_to(t: &TestOrder, url: &str, poll: Duration, retry: RetryPolicy) -> OutboxRelay {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy();
    relay::grpc_relay(
        t.db.clone(),
        channel.clone(),
        channel,
        RelayWaker::default(),
        poll,
    )
    .with_retry(retry)
}

/// Waits up to `timeout` for `done`, re-checking every 20 ms.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    sagaflow_testkit::eventually(what, timeout, || {
        let check = done();
        async move { check.await.then_some(()) }
    })
    .await;
}

/// Places `n` orders of `user`, up to 16 at a time; returns their ids in placement order.
async fn place_many(t: &TestOrder, user: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let mut client = t.client.clone();
            let req = place_req(&format!("{user}-{i}"), user, &[("MS-002", 1)], None, 0);
            set.spawn(async move {
                let order = client.place_order(req).await.unwrap().into_inner().order;
                (i, order.unwrap().order_id)
            });
        }
        let mut placed = set.join_all().await;
        placed.sort();
        ids.extend(placed.into_iter().map(|(_, id)| id));
    }
    ids
}

/// Every dead letter, read through OutboxAdminService/ListDeadLetters page by page.
async fn list_dead_letters(t: &TestOrder) -> Vec<sagaflow_proto::order::v1::DeadLetter> {
    let mut admin = OutboxAdminServiceClient::connect(t.server.url())
        .await
        .unwrap();
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let page = admin
            .list_dead_letters(ListDeadLettersRequest {
                page_size: 128,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.dead_letters);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

async fn status_of(t: &TestOrder, order_id: &str) -> (OrderStatus, FailureReason) {
    let order = t.get(order_id).await;
    (order.status(), order.failure_reason())
}

/// Failing events at the head of the outbox do not stall the relay (docs/architecture.md,
/// "Events").
async fn refused_events_at_the_head_do_not_block_new_orders(kind: Kind) {
    let t = harness::start(kind, "ord_relay_head").await;
    let stub = Stub::default();
    let stub_server = stub.spawn().await;
    let dead_before = counter(r#"sagaflow_outbox_dead_lettered_total{event_type="OrderCreated"}"#);

    // 300 OrderCreated events the orchestrator refuses, at the head of the outbox; then new
    // orders behind them, and one whose OrderCreated fails in doubt a few times and that the
    // "saga" completes at once, so that its OrderCompleted waits behind a failing OrderCreated.
    let refused = place_many(&t, REFUSED, 300).await;
    let early = place_many(&t, "alice", 10).await;
    let flaky = place_many(&t, FLAKY, 1).await.remove(0);
    t.complete("flaky:complete", &flaky).await.unwrap();

    // Dead-lettering takes 1 s + 2 s + 2 s of backoff: the new orders must get through long
    // before that.
    let retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(2),
        full_jitter: false,
    };
    let relay = relay_to(&t, &stub_server.url(), Duration::from_millis(50), retry);
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    let late = place_many(&t, "bob", 10).await;
    let new_orders: Vec<String> = early.iter().chain(&late).cloned().collect();

    eventually(
        "the new orders' OrderCreated delivered",
        Duration::from_secs(4),
        || async {
            let started = &stub.state().started;
            new_orders.iter().all(|id| started.contains(id))
        },
    )
    .await;
    assert!(
        outbox::dead_letters(&t.db, 1_000).await.unwrap().is_empty(),
        "the new orders were delivered while the refused ones were still being retried"
    );
    // The "saga" of each new order completes it: its OrderCompleted follows.
    for id in &new_orders {
        t.complete(&format!("{id}:complete"), id).await.unwrap();
    }

    eventually(
        "the 300 refused events dead-lettered",
        Duration::from_secs(30),
        || async { outbox::dead_letters(&t.db, 1_000).await.unwrap().len() == 300 },
    )
    .await;
    eventually(
        "every other event delivered (the failed orders' OrderFailed too)",
        Duration::from_secs(15),
        || async { outbox::backlog(&t.db).await.unwrap().pending == 0 },
    )
    .await;
    stop.cancel();
    running.await.unwrap();

    // Listed by the admin RPC, with the reason; counted.
    let dead = list_dead_letters(&t).await;
    assert_eq!(dead.len(), 300);
    let dead_orders: HashSet<&str> = dead.iter().map(|d| d.order_id.as_str()).collect();
    assert_eq!(dead_orders, refused.iter().map(String::as_str).collect());
    for d in &dead {
        assert_eq!(d.event_type, "OrderCreated");
        assert_eq!(d.attempts, 4, "{d:?}");
        assert!(d.last_error.contains("InvalidArgument"), "{d:?}");
        assert!(d.last_error.contains("refused by the consumer"), "{d:?}");
        assert!(d.dead_at.is_some() && d.created_at.is_some());
    }
    assert!(dead.windows(2).all(|w| w[0].event_id != w[1].event_id));
    assert!(
        counter(r#"sagaflow_outbox_dead_lettered_total{event_type="OrderCreated"}"#)
            >= dead_before + 300.0
    );
    // Each refused event was tried exactly max_attempts times, never after it was set aside.
    let calls: HashMap<String, usize> =
        stub.state()
            .calls
            .iter()
            .fold(HashMap::new(), |mut acc, (id, _)| {
                *acc.entry(id.clone()).or_default() += 1;
                acc
            });
    assert!(refused.iter().all(|id| calls.get(id) == Some(&4)));

    // Their orders failed visibly, reason INTERNAL, with the status history to show it.
    let failed = t
        .client
        .clone()
        .list_orders(ListOrdersRequest {
            user_id: REFUSED.into(),
            status: Some(OrderStatus::Failed.into()),
            page_size: 1_000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(failed.len(), 300);
    assert!(
        failed
            .iter()
            .all(|o| o.failure_reason() == FailureReason::Internal)
    );
    assert_eq!(
        t.history(&refused[0]).await,
        vec![
            ("PENDING".to_owned(), None),
            ("FAILED".to_owned(), Some("INTERNAL".to_owned()))
        ]
    );
    let events = outbox::events_of(&t.db, &refused[0]).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1].event_type,
        outbox::EventType::OrderFailed.as_str()
    );
    assert!(events[1].sent_at_ms.is_some());

    // The others completed; per-order order was kept, the flaky one's included.
    for id in new_orders.iter().chain([&flaky]) {
        assert_eq!(
            status_of(&t, id).await,
            (OrderStatus::Completed, FailureReason::Unspecified)
        );
    }
    {
        let state = stub.state();
        assert_eq!(
            state.calls_count(&flaky),
            4,
            "3 failures in doubt, then started"
        );
        assert!(state.out_of_order.is_empty(), "{:?}", state.out_of_order);
        for id in new_orders.iter().chain([&flaky]) {
            assert!(state.completed.contains(id), "{id}");
        }
    }
    stub_server.shutdown().await.unwrap();
    t.stop().await;
}

impl StubState {
    fn calls_count(&self, order_id: &str) -> usize {
        self.calls.iter().filter(|(id, _)| id == order_id).count()
    }
}

/// Deliveries that may have reached the orchestrator's handler (UNAVAILABLE from it) are
/// retried past the attempt limit with growing gaps and never dead-lettered: the saga may exist,
/// so the order must not be failed. An in-doubt event later refused is still not given up. A
/// lost reply resolved, the event is delivered and the order left to its saga.
async fn deliveries_in_doubt_are_retried_and_never_dead_lettered(kind: Kind) {
    let t = harness::start(kind, "ord_relay_doubt").await;
    let stub = Stub::default();
    stub.state().fail_in_doubt = true;
    let stub_server = stub.spawn().await;
    let doubt = place_many(&t, IN_DOUBT, 1).await.remove(0);
    let then_refused = place_many(&t, DOUBT_THEN_REFUSED, 1).await.remove(0);

    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(40),
        max_delay: Duration::from_millis(320),
        full_jitter: false,
    };
    // A long poll interval: only the relay's own retry times can explain the attempts' spacing.
    let relay = relay_to(&t, &stub_server.url(), Duration::from_secs(5), retry);
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    eventually(
        "7 attempts of the in-doubt event",
        Duration::from_secs(10),
        || async { stub.calls_of(&doubt).len() >= 7 },
    )
    .await;

    // Growing gaps: each at least its backoff cap (40, 80, 160, 320, 320 … ms), and driven by
    // the retry time, not by the 5 s poll.
    let calls = stub.calls_of(&doubt);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let cap = retry.cap(i as i64 + 1);
        assert!(
            *gap + Duration::from_millis(5) >= cap && *gap < cap + Duration::from_millis(900),
            "gap {i}: {gap:?}, cap {cap:?}; gaps {gaps:?}"
        );
    }
    assert!(gaps[3] >= gaps[0] + Duration::from_millis(150), "{gaps:?}");

    for id in [&doubt, &then_refused] {
        let event = &outbox::events_of(&t.db, id).await.unwrap()[0];
        assert!(event.in_doubt, "{event:?}");
        assert!(event.sent_at_ms.is_none());
        assert_eq!(
            status_of(&t, id).await,
            (OrderStatus::Pending, FailureReason::Unspecified)
        );
    }
    assert!(
        stub.calls_of(&then_refused).len() > 3,
        "refused past the limit"
    );
    let doubt_event = &outbox::events_of(&t.db, &doubt).await.unwrap()[0];
    assert!(doubt_event.attempts >= 6, "{doubt_event:?}");
    assert!(doubt_event.next_attempt_at_ms > 0);
    assert!(outbox::dead_letters(&t.db, 100).await.unwrap().is_empty());
    assert!(list_dead_letters(&t).await.is_empty());

    // The orchestrator answers again: the next retry delivers the event; the order stays with
    // its saga (PENDING).
    stub.state().fail_in_doubt = false;
    eventually(
        "the in-doubt event delivered",
        Duration::from_secs(5),
        || async {
            outbox::events_of(&t.db, &doubt).await.unwrap()[0]
                .sent_at_ms
                .is_some()
        },
    )
    .await;
    assert!(stub.state().started.contains(&doubt));
    assert_eq!(status_of(&t, &doubt).await.0, OrderStatus::Pending);
    stop.cancel();
    running.await.unwrap();
    stub_server.shutdown().await.unwrap();
    t.stop().await;
}

/// A relay whose orchestrator refuses connections (nothing listens) retries without the
/// deliveries counting as in doubt, and does not give up on them: an outage is not a verdict.
async fn an_unreachable_orchestrator_is_retried_not_given_up(kind: Kind) {
    let t = harness::start(kind, "ord_relay_unreachable").await;
    let order = place_many(&t, "carol", 1).await.remove(0);
    let retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        full_jitter: false,
    };
    // Port 1 on loopback: connection refused.
    let relay = relay_to(&t, "http://127.0.0.1:1", Duration::from_secs(5), retry);
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    eventually("5 failed attempts", Duration::from_secs(10), || async {
        outbox::events_of(&t.db, &order).await.unwrap()[0].attempts >= 5
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    let event = &outbox::events_of(&t.db, &order).await.unwrap()[0];
    assert!(
        !event.in_doubt,
        "a refused connection never reached a handler"
    );
    assert!(event.sent_at_ms.is_none());
    assert!(outbox::dead_letters(&t.db, 100).await.unwrap().is_empty());
    assert_eq!(
        status_of(&t, &order).await,
        (OrderStatus::Pending, FailureReason::Unspecified)
    );
    t.stop().await;
}

/// Delivered rows sent longer ago than the retention window are deleted in bounded batches,
/// counted; recent, undelivered and dead-lettered rows stay, and so do the rows of an order that
/// is still PENDING (its next event numbers its `sequence` from them).
async fn delivered_rows_past_retention_are_pruned(kind: Kind) {
    let t = harness::start(kind, "ord_relay_prune").await;
    let completed = place_many(&t, "dave", 1).await.remove(0);
    t.complete("dave:complete", &completed).await.unwrap();
    let pending_order = place_many(&t, "erin", 1).await.remove(0);
    let recent = place_many(&t, "frank", 1).await.remove(0);
    let undelivered = place_many(&t, "grace", 1).await.remove(0);
    // 2,500 delivered rows of orders this database does not hold (an old history).
    let mut tx = t.db.begin().await.unwrap();
    for i in 0..2_500 {
        sqlx::query(
            "INSERT INTO outbox (event_id, aggregate_id, sequence, event_type, payload, \
             created_at, sent_at) VALUES ($1, $2, 1, 'OrderFailed', $3, 0, 1)",
        )
        .bind(format!("00000000-0000-4000-8000-{i:012}"))
        .bind(format!("old-order-{i}"))
        .bind(Vec::<u8>::new())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    // Everything but grace's event delivered; all but frank's two hours ago.
    let mut delivered = Vec::new();
    for id in [&completed, &pending_order, &recent] {
        for event in outbox::events_of(&t.db, id).await.unwrap() {
            delivered.push(event.event_id);
        }
    }
    assert_eq!(outbox::mark_sent(&t.db, &delivered).await.unwrap(), 4);
    let two_hours_ago = now_ms() - 2 * 3_600_000;
    sqlx::query("UPDATE outbox SET sent_at = $1 WHERE sent_at IS NOT NULL AND aggregate_id <> $2")
        .bind(two_hours_ago)
        .bind(&recent)
        .execute(t.db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET created_at = 0 WHERE aggregate_id = $1")
        .bind(&undelivered)
        .execute(t.db.pool())
        .await
        .unwrap();
    let total = |db: sagaflow_server::Db| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox")
            .fetch_one(db.pool())
            .await
            .unwrap()
    };
    assert_eq!(total(t.db.clone()).await, 2_505);

    // Bounded batches: one statement deletes at most its limit, oldest first.
    let an_hour_ago = now_ms() - 3_600_000;
    assert_eq!(
        outbox::prune_sent(&t.db, an_hour_ago, 1_000).await.unwrap(),
        1_000
    );
    assert_eq!(total(t.db.clone()).await, 1_505);

    // The relay prunes at its start, then every minute: the rest of the old rows go.
    let pruned_before = counter("sagaflow_outbox_pruned_total");
    let relay = relay_to(
        &t,
        "http://127.0.0.1:1",
        Duration::from_secs(5),
        RetryPolicy::default(),
    )
    .with_sent_retention(Some(Duration::from_secs(3_600)));
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    eventually("the old rows pruned", Duration::from_secs(10), || async {
        total(t.db.clone()).await == 3
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    assert!(counter("sagaflow_outbox_pruned_total") >= pruned_before + 1_502.0);
    // Kept: frank's recent row, erin's row (her order is PENDING), grace's undelivered row.
    assert!(
        outbox::events_of(&t.db, &completed)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        outbox::events_of(&t.db, &pending_order)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(outbox::events_of(&t.db, &recent).await.unwrap().len(), 1);
    assert_eq!(
        outbox::events_of(&t.db, &undelivered).await.unwrap().len(),
        1
    );

    // Without a window nothing is pruned.
    let keep_all = relay_to(
        &t,
        "http://127.0.0.1:1",
        Duration::from_secs(5),
        RetryPolicy::default(),
    )
    .with_sent_retention(None);
    assert_eq!(keep_all.prune_sent().await.unwrap(), 0);
    assert_eq!(total(t.db.clone()).await, 3);
    t.stop().await;
}

/// An OrderCreated committed while a round's delivery is in flight is delivered at once by the
/// hand-off lane, not after that round (docs/architecture.md, "Events").
async fn a_new_order_does_not_wait_for_a_round_in_flight(kind: Kind) {
    let t = harness::start(kind, "ord_relay_lane").await;
    let stub = Stub::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    stub.state().slow_gate = Some(Arc::clone(&gate));
    let stub_server = stub.spawn().await;

    // An order whose OrderCreated is only in the outbox (its server has no relay attached): the
    // relay's first round reads it and waits on the stub until the gate opens.
    let slow = place_many(&t, SLOW, 1).await.remove(0);
    let waker = RelayWaker::default();
    let channel = Endpoint::from_shared(stub_server.url())
        .unwrap()
        .connect_lazy();
    // Polls only once a minute: nothing but the first round and the hand-off lane delivers.
    let relay = relay::grpc_relay(
        t.db.clone(),
        channel.clone(),
        channel,
        waker.clone(),
        Duration::from_secs(60),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    eventually(
        "the round to deliver the slow order",
        Duration::from_secs(10),
        || async { !stub.calls_of(&slow).is_empty() },
    )
    .await;

    // A new order through a server that hands its events to this relay.
    let (replica, mut client) = t.replica_with(Some(waker)).await;
    let fast = client
        .place_order(place_req("fast-1", "alice", &[("MS-002", 1)], None, 0))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .order_id;
    eventually(
        "the new order's saga started while the round still waits",
        Duration::from_secs(5),
        || async { stub.state().started.contains(&fast) },
    )
    .await;
    assert!(
        !stub.state().started.contains(&slow),
        "the round's delivery was still in flight"
    );
    eventually(
        "the handed-over event marked sent",
        Duration::from_secs(5),
        || async { outbox::backlog(&t.db).await.unwrap().pending == 1 },
    )
    .await;

    gate.notify_one();
    eventually(
        "both delivered and marked sent",
        Duration::from_secs(10),
        || async { outbox::backlog(&t.db).await.unwrap().pending == 0 },
    )
    .await;
    let started = stub.state().started.clone();
    assert_eq!(started, [fast.clone(), slow.clone()]);
    // Each was delivered once: the round skipped nothing it should have delivered, the lane
    // delivered nothing twice.
    assert_eq!(stub.calls_of(&fast).len(), 1);
    assert_eq!(stub.calls_of(&slow).len(), 1);

    stop.cancel();
    running.await.unwrap();
    replica.shutdown().await.unwrap();
    stub_server.shutdown().await.unwrap();
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    a_new_order_does_not_wait_for_a_round_in_flight,
    refused_events_at_the_head_do_not_block_new_orders,
    deliveries_in_doubt_are_retried_and_never_dead_lettered,
    an_unreachable_orchestrator_is_retried_not_given_up,
    delivered_rows_past_retention_are_pruned
);
