//! After the load: waiting (bounded) until every saga has ended, resuming the NEEDS_ATTENTION
//! sagas that an injected permanent fault explains, and the checks made directly in the
//! services' databases (each service owns its database; only this test reads them all).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Context as _;
use sagaflow_proto::workflow::v1::{
    GetSagaRequest, ListSagasRequest, RetrySagaRequest, Saga, SagaStatus,
    saga_admin_service_client::SagaAdminServiceClient,
};
use sagaflow_server::transport::Transport;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::time::Instant;

use super::{
    ChaosConfig, ChaosReport,
    cluster::{Cluster, Role},
    workload::Placements,
};

/// The step whose compensation gets the injected permanent faults (RestoreInventory).
const PERMANENT_FAULT_STEP: &str = "deduct_inventory";

pub(crate) async fn pool(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

fn url<'a>(urls: &'a BTreeMap<&'static str, String>, name: &str) -> anyhow::Result<&'a str> {
    urls.get(name)
        .map(String::as_str)
        .with_context(|| format!("no {name} database"))
}

/// Every saga with `status`, through the admin API.
async fn list_sagas(
    admin: &mut SagaAdminServiceClient<Transport>,
    status: SagaStatus,
) -> Result<Vec<Saga>, tonic::Status> {
    let mut sagas = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_sagas(ListSagasRequest {
                status: Some(status as i32),
                page_size: 1000,
                page_token: page_token.clone(),
                ..ListSagasRequest::default()
            })
            .await?
            .into_inner();
        sagas.extend(page.sagas);
        if page.next_page_token.is_empty() {
            return Ok(sagas);
        }
        page_token = page.next_page_token;
    }
}

/// Counts that tell whether the system is quiet.
#[derive(Debug, Default, PartialEq, Eq)]
struct Progress {
    active: usize,
    needs_attention: usize,
    sagas: i64,
    orders: i64,
    pending: i64,
    unsent: i64,
}

async fn progress(
    admin: &mut SagaAdminServiceClient<Transport>,
    order_db: &PgPool,
    workflow_db: &PgPool,
) -> anyhow::Result<Progress> {
    let mut p = Progress::default();
    for status in [SagaStatus::Running, SagaStatus::Compensating] {
        p.active += list_sagas(admin, status).await?.len();
    }
    p.needs_attention = list_sagas(admin, SagaStatus::NeedsAttention).await?.len();
    p.sagas = sqlx::query_scalar("SELECT COUNT(*) FROM sagas")
        .fetch_one(workflow_db)
        .await?;
    (p.orders, p.pending) =
        sqlx::query_as("SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'PENDING') FROM orders")
            .fetch_one(order_db)
            .await?;
    p.unsent = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(order_db)
        .await?;
    Ok(p)
}

/// Polls until no saga is RUNNING or COMPENSATING, every order has its saga and the outbox is
/// delivered — and, when `finished`, nothing is left PENDING or in NEEDS_ATTENTION — or `limit`
/// passes. Returns whether it got there.
async fn wait_quiet(
    admin: &mut SagaAdminServiceClient<Transport>,
    order_db: &PgPool,
    workflow_db: &PgPool,
    limit: Duration,
    finished: bool,
) -> anyhow::Result<(bool, Progress)> {
    let deadline = Instant::now() + limit;
    let mut last = Progress::default();
    loop {
        match progress(admin, order_db, workflow_db).await {
            Ok(p) => {
                let quiet = p.active == 0
                    && p.sagas == p.orders
                    && p.unsent == 0
                    && (!finished || (p.pending == 0 && p.needs_attention == 0));
                if quiet {
                    return Ok((true, p));
                }
                last = p;
            }
            Err(err) => eprintln!("chaos: progress poll failed: {err:#}"),
        }
        if Instant::now() >= deadline {
            return Ok((false, last));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A saga row as [`stuck`] shows it: id, status, phase, current step, last error.
type StuckRow = (String, String, String, Option<String>, Option<String>);

/// Lists the sagas still active, for a violation message.
async fn stuck(workflow_db: &PgPool) -> String {
    let rows: Vec<StuckRow> = sqlx::query_as(
        "SELECT id, status, phase, current_step, last_error FROM sagas \
         WHERE status NOT IN ('COMPLETED', 'COMPENSATED') ORDER BY created_at LIMIT 20",
    )
    .fetch_all(workflow_db)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|(id, status, phase, step, error)| format!("{id} {status} {phase} {step:?} {error:?}"))
        .collect::<Vec<_>>()
        .join("\n      ")
}

/// Whether the journal of a NEEDS_ATTENTION saga shows that an injected permanent fault parked
/// it: the compensation failure right before the last `saga_needs_attention` is a
/// FAILED_PRECONDITION "injected fault" answered to RestoreInventory.
fn explained(journal: &[sagaflow_proto::workflow::v1::JournalEntry]) -> Result<(), String> {
    let parked = journal
        .iter()
        .rposition(|e| e.event_type == "saga_needs_attention")
        .ok_or("no saga_needs_attention entry")?;
    let failure = journal[..parked]
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.event_type.as_str(),
                "compensation_failed" | "step_failed" | "finalizer_failed"
            )
        })
        .ok_or("no failure before saga_needs_attention")?;
    let detail: serde_json::Value =
        serde_json::from_str(&failure.detail_json).map_err(|e| e.to_string())?;
    let code = detail["error"]["code"].as_str().unwrap_or_default();
    let message = detail["error"]["message"].as_str().unwrap_or_default();
    if failure.event_type == "compensation_failed"
        && failure.step == PERMANENT_FAULT_STEP
        && code == "FAILED_PRECONDITION"
        && message.contains("injected fault")
    {
        Ok(())
    } else {
        Err(format!(
            "parked after {} of {:?}: {code} {message:?}",
            failure.event_type, failure.step
        ))
    }
}

/// Waits for every saga to end (faults are off), checks and resumes the NEEDS_ATTENTION ones,
/// and waits again; records violations for what does not finish in time.
///
/// # Errors
/// When the databases or the admin API cannot be reached at all.
pub(crate) async fn settle(
    cluster: &Cluster,
    config: &ChaosConfig,
    report: &mut ChaosReport,
    urls: &BTreeMap<&'static str, String>,
    placed: &Placements,
) -> anyhow::Result<()> {
    let order_db = pool(url(urls, "order")?).await?;
    let workflow_db = pool(url(urls, "workflow")?).await?;
    let mut admin = SagaAdminServiceClient::new(cluster.channel(Role::Orchestrator)?);

    let (quiet, last) = wait_quiet(
        &mut admin,
        &order_db,
        &workflow_db,
        config.settle_limit,
        false,
    )
    .await?;
    report.checks += 1;
    if !quiet {
        report.violations.push(format!(
            "sagas still active {:?} after {:?} without faults; e.g.\n      {}",
            last,
            config.settle_limit,
            stuck(&workflow_db).await
        ));
    }

    let parked = list_sagas(&mut admin, SagaStatus::NeedsAttention).await?;
    report.needs_attention = parked.len();
    for saga in &parked {
        let detail = admin
            .get_saga(GetSagaRequest {
                saga_id: saga.saga_id.clone(),
            })
            .await
            .with_context(|| format!("GetSaga {}", saga.saga_id))?
            .into_inner();
        report.checks += 1;
        match explained(&detail.journal) {
            Ok(()) => report.needs_attention_explained += 1,
            Err(why) => report.violations.push(format!(
                "saga {} (order {}) is NEEDS_ATTENTION without an injected permanent fault: {why}",
                saga.saga_id, saga.business_key
            )),
        }
        // The operator's move once the fault is gone (it is: faults are off now).
        admin
            .retry_saga(RetrySagaRequest {
                saga_id: saga.saga_id.clone(),
            })
            .await
            .with_context(|| format!("RetrySaga {}", saga.saga_id))?;
    }

    let (quiet, last) = wait_quiet(
        &mut admin,
        &order_db,
        &workflow_db,
        config.settle_limit,
        true,
    )
    .await?;
    report.checks += 1;
    if !quiet {
        report.violations.push(format!(
            "not every saga ended after RetrySaga {:?}; e.g.\n      {}",
            last,
            stuck(&workflow_db).await
        ));
    }
    for saga in &parked {
        let now = admin
            .get_saga(GetSagaRequest {
                saga_id: saga.saga_id.clone(),
            })
            .await?
            .into_inner()
            .saga
            .unwrap_or_default();
        report.checks += 1;
        // A compensation parked by a permanent fault finishes COMPENSATED; a pivot parked with
        // an unknown outcome (itself a violation above) may finish either way.
        if now.status == SagaStatus::Compensated as i32
            || now.status == SagaStatus::Completed as i32
        {
            report.retried_finished += 1;
        } else {
            report.violations.push(format!(
                "saga {} did not finish after RetrySaga: {:?}",
                saga.saga_id,
                SagaStatus::try_from(now.status).unwrap_or(SagaStatus::Unspecified)
            ));
        }
    }
    report.checks += 1;
    if placed.orders.is_empty() {
        report.violations.push("no order was placed".to_owned());
    }
    Ok(())
}

/// Collects checks and violations.
struct Checks<'r> {
    report: &'r mut ChaosReport,
}

impl Checks<'_> {
    fn expect(&mut self, ok: bool, violation: impl FnOnce() -> String) {
        self.report.checks += 1;
        if !ok {
            self.report.violations.push(violation());
        }
    }
}

/// An order as the order database has it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct OrderRow {
    order_id: String,
    request_id: String,
    coupon_code: Option<String>,
    points: i64,
    payable: i64,
    status: String,
}

/// The service and command that carry a saga step's action or compensation (docs/architecture.md,
/// "The order saga").
fn command_of(step: &str, compensation: bool) -> Option<(&'static str, &'static str)> {
    Some(match (step, compensation) {
        ("use_coupon", false) => ("coupon", "coupon.UseCoupon"),
        ("use_coupon", true) => ("coupon", "coupon.RestoreCoupon"),
        ("apply_coupon", false) => ("order", "order.ApplyCoupon"),
        ("deduct_inventory", false) => ("inventory", "inventory.DeductInventory"),
        ("deduct_inventory", true) => ("inventory", "inventory.RestoreInventory"),
        ("start_payment", false) => ("payment", "payment.StartPayment"),
        ("start_payment", true) => ("payment", "payment.CancelPayment"),
        ("deduct_points", false) => ("point", "point.DeductPoints"),
        ("deduct_points", true) => ("point", "point.RestorePoints"),
        ("complete_payment", false) => ("payment", "payment.CompletePayment"),
        ("complete_order", false) => ("order", "order.CompleteOrder"),
        ("finalize", false) => ("order", "order.FailOrder"),
        _ => return None,
    })
}

/// The key suffix (`<step>` or `<step>:compensate`) a saga command must carry.
fn suffix_of(command: &str) -> Option<&'static str> {
    Some(match command {
        "coupon.UseCoupon" => "use_coupon",
        "coupon.RestoreCoupon" => "use_coupon:compensate",
        "order.ApplyCoupon" => "apply_coupon",
        "order.CompleteOrder" => "complete_order",
        "order.FailOrder" => "finalize",
        "inventory.DeductInventory" => "deduct_inventory",
        "inventory.RestoreInventory" => "deduct_inventory:compensate",
        "payment.StartPayment" => "start_payment",
        "payment.CancelPayment" => "start_payment:compensate",
        "payment.CompletePayment" => "complete_payment",
        "point.DeductPoints" => "deduct_points",
        "point.RestorePoints" => "deduct_points:compensate",
        _ => return None,
    })
}

/// The checks made directly in the databases (see the module docs of `chaos`).
///
/// # Errors
/// When a database cannot be read.
pub(crate) async fn check_databases(
    urls: &BTreeMap<&'static str, String>,
    placed: &Placements,
    plan_request_ids: &BTreeSet<String>,
    report: &mut ChaosReport,
) -> anyhow::Result<()> {
    let order_db = pool(url(urls, "order")?).await?;
    let workflow_db = pool(url(urls, "workflow")?).await?;
    let inventory_db = pool(url(urls, "inventory")?).await?;
    let payment_db = pool(url(urls, "payment")?).await?;
    let point_db = pool(url(urls, "point")?).await?;
    let coupon_db = pool(url(urls, "coupon")?).await?;
    let ranking_db = pool(url(urls, "ranking")?).await?;
    let mut c = Checks { report };

    // ---- orders: every order the run caused is known, terminal, and its events delivered.
    let orders: Vec<OrderRow> = sqlx::query_as(
        "SELECT order_id, request_id, coupon_code, points, payable, status FROM orders",
    )
    .fetch_all(&order_db)
    .await?;
    let by_id: BTreeMap<&str, &OrderRow> =
        orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
    let placed_ids: BTreeSet<&str> = placed.orders.iter().map(|p| p.order_id.as_str()).collect();
    c.expect(placed_ids.len() == placed.orders.len(), || {
        "two placements returned the same order id".to_owned()
    });
    for o in &orders {
        c.expect(placed_ids.contains(o.order_id.as_str()), || {
            format!(
                "order {} ({}) was not returned to any client",
                o.order_id, o.request_id
            )
        });
        // The row keeps the request id scoped by its user (docs/operations.md, "End users"):
        // `<byte length of user>:<user>:<request_id>`.
        let request_id = unscoped_request_id(&o.request_id);
        c.expect(plan_request_ids.contains(request_id), || {
            format!(
                "order {} has an unknown request id {}",
                o.order_id, o.request_id
            )
        });
        c.expect(matches!(o.status.as_str(), "COMPLETED" | "FAILED"), || {
            format!("order {} is {}", o.order_id, o.status)
        });
    }
    for id in &placed_ids {
        c.expect(by_id.contains_key(id), || {
            format!("placed order {id} is missing from the order database")
        });
    }
    let completed: BTreeSet<&str> = orders
        .iter()
        .filter(|o| o.status == "COMPLETED")
        .map(|o| o.order_id.as_str())
        .collect();
    let events: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, COUNT(*), COUNT(sent_at) FROM outbox \
         GROUP BY aggregate_id, event_type",
    )
    .fetch_all(&order_db)
    .await?;
    let mut event_counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (order, kind, count, sent) in &events {
        c.expect(count == sent, || {
            format!(
                "order {order}: {} {kind} events not delivered",
                count - sent
            )
        });
        event_counts.insert((order.as_str(), kind.as_str()), *count);
    }
    for o in &orders {
        let count = |kind: &str| {
            event_counts
                .get(&(o.order_id.as_str(), kind))
                .copied()
                .unwrap_or(0)
        };
        let (done, failed) = match o.status.as_str() {
            "COMPLETED" => (1, 0),
            "FAILED" => (0, 1),
            _ => (0, 0),
        };
        c.expect(
            count("OrderCreated") == 1
                && count("OrderCompleted") == done
                && count("OrderFailed") == failed,
            || {
                format!(
                    "{} order {}: outbox has {} OrderCreated, {} OrderCompleted, {} OrderFailed",
                    o.status,
                    o.order_id,
                    count("OrderCreated"),
                    count("OrderCompleted"),
                    count("OrderFailed")
                )
            },
        );
    }
    let lines: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT order_id, sku, quantity FROM order_lines")
            .fetch_all(&order_db)
            .await?;
    let mut sold: BTreeMap<&str, i64> = BTreeMap::new();
    let mut sold_orders: BTreeMap<&str, i64> = BTreeMap::new();
    for (order, sku, quantity) in &lines {
        if completed.contains(order.as_str()) {
            *sold.entry(sku).or_default() += quantity;
            *sold_orders.entry(sku).or_default() += 1;
        }
    }

    // ---- workflow: one saga per order, ended the way its order did.
    let sagas: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, business_key, status FROM sagas")
            .fetch_all(&workflow_db)
            .await?;
    let mut saga_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut saga_ids: BTreeSet<&str> = BTreeSet::new();
    for (id, key, status) in &sagas {
        saga_ids.insert(id);
        c.expect(saga_of.insert(key, id).is_none(), || {
            format!("order {key} has two sagas")
        });
        let order_status = by_id.get(key.as_str()).map(|o| o.status.as_str());
        let expected = match order_status {
            Some("COMPLETED") => "COMPLETED",
            Some("FAILED") => "COMPENSATED",
            _ => "(no such order)",
        };
        c.expect(status == expected, || {
            format!("saga {id} of order {key} ({order_status:?}) is {status}, expected {expected}")
        });
    }
    for o in &orders {
        c.expect(saga_of.contains_key(o.order_id.as_str()), || {
            format!("order {} has no saga", o.order_id)
        });
    }

    // ---- inventory: stock never negative, and it moved by exactly the reserved units.
    let products: Vec<(String, i64)> = sqlx::query_as("SELECT sku, stock FROM products")
        .fetch_all(&inventory_db)
        .await?;
    let restocked: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT sku, SUM(quantity)::BIGINT FROM restocks GROUP BY sku",
    )
    .fetch_all(&inventory_db)
    .await?
    .into_iter()
    .collect();
    let reserved: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT l.sku, SUM(l.quantity)::BIGINT FROM reservation_lines l \
         JOIN reservations r ON r.order_id = l.order_id WHERE r.status = 'RESERVED' GROUP BY l.sku",
    )
    .fetch_all(&inventory_db)
    .await?
    .into_iter()
    .collect();
    for (sku, stock) in &products {
        c.expect(*stock >= 0, || format!("sku {sku}: negative stock {stock}"));
        let restocked = restocked.get(sku).copied().unwrap_or(0);
        let reserved = reserved.get(sku).copied().unwrap_or(0);
        let sold = sold.get(sku.as_str()).copied().unwrap_or(0);
        c.expect(restocked - stock == reserved, || {
            format!("sku {sku}: restocked {restocked} - stock {stock} != reserved {reserved}")
        });
        c.expect(reserved == sold, || {
            format!("sku {sku}: reserved {reserved} units, COMPLETED orders took {sold}")
        });
    }
    let reservations: BTreeMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT order_id, status FROM reservations")
            .fetch_all(&inventory_db)
            .await?
            .into_iter()
            .collect();
    for o in &orders {
        let status = reservations.get(&o.order_id).map(String::as_str);
        let ok = if o.status == "COMPLETED" {
            status == Some("RESERVED")
        } else {
            status != Some("RESERVED")
        };
        c.expect(ok, || {
            format!("{} order {}: reservation {status:?}", o.status, o.order_id)
        });
    }

    // ---- payment: one payment per order; captured exactly for the COMPLETED orders.
    let payments: Vec<(String, Option<i64>, String)> =
        sqlx::query_as("SELECT order_id, amount, status FROM payments")
            .fetch_all(&payment_db)
            .await?;
    let mut payment_of: BTreeMap<&str, (Option<i64>, &str)> = BTreeMap::new();
    for (order, amount, status) in &payments {
        c.expect(
            payment_of.insert(order, (*amount, status)).is_none(),
            || format!("order {order} has two payments"),
        );
        c.expect(status != "STARTED", || {
            format!("order {order}: payment left STARTED (authorization never voided)")
        });
    }
    for o in &orders {
        let payment = payment_of.get(o.order_id.as_str()).copied();
        if o.status == "COMPLETED" {
            c.expect(payment == Some((Some(o.payable), "COMPLETED")), || {
                format!(
                    "COMPLETED order {}: payment {payment:?}, payable {}",
                    o.order_id, o.payable
                )
            });
        } else {
            c.expect(
                matches!(payment, None | Some((_, "CANCELED" | "REFUNDED"))),
                || format!("{} order {}: payment {payment:?}", o.status, o.order_id),
            );
        }
    }

    // ---- point: no double deduction, balances are the ledger's fold, net deduction per order.
    let doubled: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT order_id, kind, COUNT(*) FROM point_ledger WHERE order_id IS NOT NULL \
         GROUP BY order_id, kind HAVING COUNT(*) > 1",
    )
    .fetch_all(&point_db)
    .await?;
    c.expect(doubled.is_empty(), || {
        format!("point ledger has repeated entries: {doubled:?}")
    });
    let folds: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT user_id, SUM(CASE kind WHEN 'DEDUCT' THEN -amount ELSE amount END)::BIGINT \
         FROM point_ledger GROUP BY user_id",
    )
    .fetch_all(&point_db)
    .await?
    .into_iter()
    .collect();
    let balances: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, balance FROM balances")
        .fetch_all(&point_db)
        .await?;
    for (user, balance) in &balances {
        let fold = folds.get(user).copied().unwrap_or(0);
        c.expect(*balance == fold && *balance >= 0, || {
            format!("user {user}: balance {balance}, ledger says {fold}")
        });
    }
    let ledger: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT order_id, kind, amount, idempotency_key FROM point_ledger \
         WHERE order_id IS NOT NULL",
    )
    .fetch_all(&point_db)
    .await?;
    let mut net: BTreeMap<&str, i64> = BTreeMap::new();
    for (order, kind, amount, key) in &ledger {
        *net.entry(order).or_default() += if kind == "DEDUCT" { *amount } else { -amount };
        let saga = saga_of.get(order.as_str()).copied().unwrap_or("?");
        let expected = if kind == "DEDUCT" {
            format!("{saga}:deduct_points")
        } else {
            format!("{saga}:deduct_points:compensate")
        };
        c.expect(*key == expected, || {
            format!("point ledger {kind} of order {order} has key {key}, expected {expected}")
        });
    }
    for o in &orders {
        let deducted = net.get(o.order_id.as_str()).copied().unwrap_or(0);
        let expected = if o.status == "COMPLETED" { o.points } else { 0 };
        c.expect(deducted == expected, || {
            format!(
                "{} order {}: net {deducted} points deducted, expected {expected}",
                o.status, o.order_id
            )
        });
    }

    // ---- coupon: USED exactly by the COMPLETED orders that carry it.
    let coupons: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT code, status, order_id FROM coupons")
            .fetch_all(&coupon_db)
            .await?;
    let holder: BTreeMap<&str, Option<&str>> = coupons
        .iter()
        .map(|(code, status, order)| {
            (
                code.as_str(),
                (status == "USED").then_some(order.as_deref()).flatten(),
            )
        })
        .collect();
    for (code, status, order) in &coupons {
        if status == "USED" {
            let ok = order
                .as_deref()
                .and_then(|id| by_id.get(id))
                .is_some_and(|o| {
                    o.status == "COMPLETED" && o.coupon_code.as_deref() == Some(code.as_str())
                });
            c.expect(ok, || {
                format!(
                    "coupon {code} is USED by {order:?}, which is not a COMPLETED order with it"
                )
            });
        }
    }
    for o in orders.iter().filter(|o| o.status == "COMPLETED") {
        if let Some(code) = &o.coupon_code {
            let held = holder.get(code.as_str()).copied().flatten();
            c.expect(held == Some(o.order_id.as_str()), || {
                format!(
                    "COMPLETED order {} used coupon {code}, which is held by {held:?}",
                    o.order_id
                )
            });
        }
    }

    // ---- ranking: every OrderCompleted counted exactly once.
    let sales: BTreeMap<String, (i64, i64)> = sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT sku, units_sold, orders FROM product_sales",
    )
    .fetch_all(&ranking_db)
    .await?
    .into_iter()
    .map(|(sku, units, orders)| (sku, (units, orders)))
    .collect();
    let skus: BTreeSet<&str> = sales
        .keys()
        .map(String::as_str)
        .chain(sold.keys().copied())
        .collect();
    for sku in skus {
        let ranked = sales.get(sku).copied().unwrap_or((0, 0));
        let expected = (
            sold.get(sku).copied().unwrap_or(0),
            sold_orders.get(sku).copied().unwrap_or(0),
        );
        c.expect(ranked == expected, || {
            format!("ranking of {sku}: (units, orders) {ranked:?}, expected {expected:?}")
        });
    }
    // The inbox: one row per event the producers' outboxes hold for Ranking — each order's
    // OrderCompleted and every Inventory event — and no other (a redelivery adds none). Only
    // OrderCompleted rows name an order.
    let inbox_rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT event_id, event_type, order_id FROM inbox")
            .fetch_all(&ranking_db)
            .await?;
    let inbox: BTreeSet<&str> = inbox_rows
        .iter()
        .filter_map(|(_, _, order)| order.as_deref())
        .collect();
    c.expect(inbox == completed, || {
        format!(
            "ranking inbox has {} orders, {} COMPLETED",
            inbox.len(),
            completed.len()
        )
    });
    let completed_events: BTreeSet<String> =
        sqlx::query_scalar("SELECT event_id FROM outbox WHERE event_type = 'OrderCompleted'")
            .fetch_all(&order_db)
            .await?
            .into_iter()
            .collect();
    let inventory_events: Vec<(String, String, String)> =
        sqlx::query_as("SELECT event_id, aggregate_id, event_type FROM outbox")
            .fetch_all(&inventory_db)
            .await?;
    let mut expected_inbox: BTreeMap<&str, &str> = completed_events
        .iter()
        .map(|id| (id.as_str(), "OrderCompleted"))
        .collect();
    let mut events_of_sku: BTreeMap<&str, i64> = BTreeMap::new();
    for (id, sku, kind) in &inventory_events {
        expected_inbox.insert(id, kind);
        *events_of_sku.entry(sku).or_default() += 1;
    }
    let got_inbox: BTreeMap<&str, &str> = inbox_rows
        .iter()
        .map(|(id, kind, _)| (id.as_str(), kind.as_str()))
        .collect();
    c.expect(got_inbox == expected_inbox, || {
        let missing = expected_inbox
            .keys()
            .filter(|id| !got_inbox.contains_key(*id))
            .count();
        let unknown = got_inbox
            .keys()
            .filter(|id| !expected_inbox.contains_key(*id))
            .count();
        format!(
            "ranking inbox: {} events, the outboxes {} ({missing} missing, {unknown} unknown)",
            got_inbox.len(),
            expected_inbox.len()
        )
    });
    let view_events: BTreeMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT sku, events FROM product_view")
            .fetch_all(&ranking_db)
            .await?
            .into_iter()
            .collect();
    let view_events: BTreeMap<&str, i64> =
        view_events.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    c.expect(view_events == events_of_sku, || {
        format!(
            "product view's event counts per sku {view_events:?}, Inventory's outbox \
             {events_of_sku:?}"
        )
    });
    let inventory_unsent: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&inventory_db)
            .await?;
    c.expect(inventory_unsent == 0, || {
        format!("Inventory's outbox has {inventory_unsent} events not published")
    });

    // ---- Inventory's events: all published, none dead-lettered, and Ranking's product view is
    // the stock and the units RESERVED orders hold (deducted minus restored), per sku.
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL OR dead_at IS NOT NULL",
    )
    .fetch_one(&inventory_db)
    .await?;
    c.expect(unpublished == 0, || {
        format!("inventory outbox: {unpublished} events unpublished or dead-lettered")
    });
    let held: BTreeMap<String, (i64, i64)> = sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT p.sku, p.stock, CAST(COALESCE((SELECT SUM(l.quantity) FROM reservation_lines l \
            JOIN reservations r ON r.order_id = l.order_id \
            WHERE l.sku = p.sku AND r.status = 'RESERVED'), 0) AS BIGINT) FROM products p",
    )
    .fetch_all(&inventory_db)
    .await?
    .into_iter()
    .map(|(sku, stock, held)| (sku, (stock, held)))
    .collect();
    let views: BTreeMap<String, (i64, i64)> =
        sqlx::query_as::<_, (String, i64, i64)>("SELECT sku, stock, units_sold FROM product_view")
            .fetch_all(&ranking_db)
            .await?
            .into_iter()
            .map(|(sku, stock, sold)| (sku, (stock, sold)))
            .collect();
    for (sku, view) in &views {
        let expected = held.get(sku).copied();
        c.expect(expected == Some(*view), || {
            format!("product view of {sku}: (stock, units sold) {view:?}, Inventory {expected:?}")
        });
    }

    // ---- idempotency keys: one key per saga and command, `<saga id>:<step>[:compensate]`, and
    // every step the journal says succeeded has its stored successful response in the service.
    let mut stored: BTreeMap<(&'static str, String), i64> = BTreeMap::new();
    for (service, db) in [
        ("coupon", &coupon_db),
        ("order", &order_db),
        ("inventory", &inventory_db),
        ("payment", &payment_db),
        ("point", &point_db),
    ] {
        let rows: Vec<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT idempotency_key, command, status_code FROM idempotency_keys")
                .fetch_all(db)
                .await?;
        let mut keys_per_command: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (key, command, status) in rows {
            let Some((saga, suffix)) = key.split_once(':') else {
                continue;
            };
            if uuid::Uuid::parse_str(saga).is_err() {
                // Seed keys (`seed:…`) and PlaceOrder's `PlaceOrder:<request id>`.
                continue;
            }
            // After the n-th operator retry a call carries `:retry-<n>` (a new key generation).
            let (suffix, generation) = match suffix.rsplit_once(":retry-") {
                Some((base, n)) => (base, n.to_owned()),
                None => (suffix, String::new()),
            };
            let expected = suffix_of(&command);
            c.expect(expected == Some(suffix), || {
                format!("{service}: key {key} carries {command}, expected suffix {expected:?}")
            });
            c.expect(saga_ids.contains(saga), || {
                format!("{service}: key {key} names no saga")
            });
            keys_per_command
                .entry((saga.to_owned(), format!("{command}{generation}")))
                .or_default()
                .insert(key.clone());
            stored.insert((service, key), status.unwrap_or(-1));
        }
        for ((saga, command), keys) in &keys_per_command {
            c.expect(keys.len() == 1, || {
                format!("{service}: saga {saga} sent {command} with keys {keys:?}")
            });
        }
    }
    let entries: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT saga_id, event_type, step FROM saga_journal WHERE event_type IN \
         ('step_succeeded', 'compensation_succeeded', 'finalizer_succeeded', 'operator_retry', \
         'operator_resolved') ORDER BY saga_id, seq",
    )
    .fetch_all(&workflow_db)
    .await?;
    // The key generation in force at each success: the operator retries before it.
    let mut generation: BTreeMap<String, u32> = BTreeMap::new();
    let mut resolved_next = false;
    let mut successes: Vec<(String, String, Option<String>, u32)> = Vec::new();
    for (saga, event, step) in entries {
        let n = generation.entry(saga.clone()).or_insert(0);
        match event.as_str() {
            "operator_retry" => *n += 1,
            // A success an operator settled by hand was never sent: nothing to find.
            "operator_resolved" => resolved_next = true,
            _ if resolved_next => resolved_next = false,
            _ => {
                let n = *n;
                successes.push((saga, event, step, n));
            }
        }
    }
    for (saga, event, step, generation) in &successes {
        let compensation = event == "compensation_succeeded";
        let step = if event == "finalizer_succeeded" {
            "finalize"
        } else {
            step.as_deref().unwrap_or_default()
        };
        let Some((service, command)) = command_of(step, compensation) else {
            c.expect(false, || {
                format!("saga {saga}: {event} of unknown step {step}")
            });
            continue;
        };
        let mut key = if compensation {
            format!("{saga}:{step}:compensate")
        } else {
            format!("{saga}:{step}")
        };
        // The pivot's action keeps its key across operator retries.
        if *generation > 0 && (compensation || step != "complete_payment") {
            key.push_str(&format!(":retry-{generation}"));
        }
        let status = stored.get(&(service, key.clone())).copied();
        c.expect(status == Some(0), || {
            format!(
                "saga {saga}: journal says {event} {step}, but {service} has {command} key {key} \
                 with status {status:?}"
            )
        });
    }
    // Effects tie back to the saga's keys.
    for (order, status) in &reservations {
        if status == "RESERVED" {
            let key = format!(
                "{}:deduct_inventory",
                saga_of.get(order.as_str()).unwrap_or(&"?")
            );
            c.expect(stored.get(&("inventory", key.clone())) == Some(&0), || {
                format!("order {order}: stock reserved without a successful {key}")
            });
        }
    }
    for (order, (amount, _)) in &payment_of {
        if amount.is_some() {
            let key = format!("{}:start_payment", saga_of.get(order).unwrap_or(&"?"));
            c.expect(stored.get(&("payment", key.clone())) == Some(&0), || {
                format!("order {order}: payment authorized without a successful {key}")
            });
        }
    }
    for (code, order) in &holder {
        if let Some(order) = order {
            let key = format!("{}:use_coupon", saga_of.get(order).unwrap_or(&"?"));
            c.expect(stored.get(&("coupon", key.clone())) == Some(&0), || {
                format!("coupon {code} used by {order} without a successful {key}")
            });
        }
    }
    for db in [
        order_db,
        workflow_db,
        inventory_db,
        payment_db,
        point_db,
        coupon_db,
        ranking_db,
    ] {
        db.close().await;
    }
    Ok(())
}

/// Drops the run's databases (after a passing run).
///
/// # Errors
/// When the server cannot be reached or a database cannot be dropped.
pub(crate) async fn drop_databases<'a>(
    urls: impl Iterator<Item = &'a String>,
) -> anyhow::Result<()> {
    let base = std::env::var("SAGAFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| sagaflow_testkit::DEFAULT_TEST_DATABASE_URL.to_owned());
    let server = pool(&base).await?;
    for url in urls {
        let name = url
            .split('?')
            .next()
            .and_then(|u| u.rsplit('/').next())
            .context("a database URL without a name")?;
        anyhow::ensure!(
            name.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
            "unexpected database name {name:?}"
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&server)
        .await
        .with_context(|| format!("dropping {name}"))?;
    }
    server.close().await;
    Ok(())
}

/// The client's request id of an order row's scoped `request_id`
/// (`<byte length of user>:<user>:<request_id>`, docs/operations.md, "End users"); the stored
/// value itself when it is not in that form, so the check above reports it.
fn unscoped_request_id(stored: &str) -> &str {
    stored
        .split_once(':')
        .and_then(|(len, rest)| {
            let len: usize = len.parse().ok()?;
            rest.get(len..)?.strip_prefix(':')
        })
        .unwrap_or(stored)
}

#[cfg(test)]
mod tests {
    use super::unscoped_request_id;

    #[test]
    fn scoped_request_ids_give_back_the_clients_id() {
        assert_eq!(unscoped_request_id("5:alice:chaos-1"), "chaos-1");
        assert_eq!(unscoped_request_id("4:éve:a:b"), "a:b");
        assert_eq!(unscoped_request_id("chaos-1"), "chaos-1");
        assert_eq!(unscoped_request_id("9:alice:x"), "9:alice:x");
    }
}
