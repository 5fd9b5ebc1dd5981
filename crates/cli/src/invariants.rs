//! The invariants of docs/architecture.md, "Invariants", checked from outside through the public
//! query APIs, for a set of orders placed by one run (`sagaflow demo`, the acceptance and chaos
//! tests).
//!
//! Take a [`Snapshot`] of the catalog, the users' balances and the coupons before placing orders;
//! when every order is terminal, [`check`] compares the snapshot taken after with the one before:
//!
//! - every order is terminal (COMPLETED or FAILED) and payable = subtotal − discount − points ≥ 0;
//! - per sku: stock before − stock after = units of the run's COMPLETED orders; stock ≥ 0;
//! - per user: balance before − balance after = points of the run's COMPLETED orders;
//! - the coupon of a COMPLETED order is USED by it; the coupon of a FAILED order is AVAILABLE
//!   again, unless another COMPLETED order of the run holds it;
//! - each COMPLETED order has one COMPLETED payment of its payable amount; each FAILED order has
//!   none, or a CANCELED or REFUNDED one.
//!
//! - Ranking's read models (eventually consistent, docs/architecture.md, "Events"): per sku the
//!   product view's stock is the Inventory stock, and the view's units sold and the sales
//!   ranking's units each grew by the units of the run's COMPLETED orders ([`settled`] waits
//!   for them to catch up).
//!
//! These deltas assume nobody else changes the same products, users or coupons meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use sagaflow_proto::{
    coupon::v1::{CouponStatus, GetCouponRequest, coupon_service_client::CouponServiceClient},
    inventory::v1::{ListProductsRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{Order, OrderStatus},
    payment::v1::{GetPaymentRequest, PaymentStatus, payment_service_client::PaymentServiceClient},
    point::v1::{GetBalanceRequest, point_service_client::PointServiceClient},
    ranking::v1::{
        ListProductViewsRequest, TopProductsRequest, ranking_service_client::RankingServiceClient,
    },
};
use sagaflow_server::transport::Transport;
use tonic::Code;

/// Stock, balances and coupon holders at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// sku → units in stock.
    pub stock: BTreeMap<String, i64>,
    /// user → point balance, KRW won.
    pub balances: BTreeMap<String, i64>,
    /// coupon code → order holding it (`None` when AVAILABLE).
    pub coupons: BTreeMap<String, Option<String>>,
    /// sku → Ranking's product view: (stock, units sold); skus without a view are absent.
    pub views: BTreeMap<String, (i64, i64)>,
    /// sku → units sold in Ranking's sales ranking (its top 1000 skus).
    pub sales: BTreeMap<String, i64>,
}

/// Transports to the services whose state is checked (one channel for the embedded system).
#[derive(Debug, Clone)]
pub struct Services {
    /// Inventory.
    pub inventory: Transport,
    /// Point.
    pub point: Transport,
    /// Coupon.
    pub coupon: Transport,
    /// Payment.
    pub payment: Transport,
    /// Ranking.
    pub ranking: Transport,
}

impl Services {
    /// Every service behind one transport.
    pub fn single(transport: impl Into<Transport>) -> Self {
        let transport = transport.into();
        Self {
            inventory: transport.clone(),
            point: transport.clone(),
            coupon: transport.clone(),
            payment: transport.clone(),
            ranking: transport,
        }
    }
}

/// Reads stock of every product, the balances of `users` and the holders of `coupons`.
///
/// # Errors
/// The first query that fails.
pub async fn snapshot(
    services: &Services,
    users: &BTreeSet<String>,
    coupons: &BTreeSet<String>,
) -> Result<Snapshot, tonic::Status> {
    let mut snap = Snapshot::default();
    let mut inventory = InventoryServiceClient::new(services.inventory.clone());
    let mut page_token = String::new();
    loop {
        let page = inventory
            .list_products(ListProductsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        for p in page.products {
            snap.stock.insert(p.sku, p.stock);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut point = PointServiceClient::new(services.point.clone());
    for user in users {
        let balance = point
            .get_balance(GetBalanceRequest {
                user_id: user.clone(),
            })
            .await?
            .into_inner()
            .balance;
        snap.balances.insert(user.clone(), balance);
    }
    let mut coupon = CouponServiceClient::new(services.coupon.clone());
    for code in coupons {
        match coupon
            .get_coupon(GetCouponRequest { code: code.clone() })
            .await
        {
            Ok(reply) => {
                let c = reply.into_inner().coupon.unwrap_or_default();
                let holder = (c.status == CouponStatus::Used as i32).then_some(c.order_id);
                snap.coupons.insert(code.clone(), holder);
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(status),
        }
    }
    let mut ranking = RankingServiceClient::new(services.ranking.clone());
    let mut page_token = String::new();
    loop {
        let page = ranking
            .list_product_views(ListProductViewsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        for v in page.views {
            snap.views.insert(v.sku, (v.stock, v.units_sold));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let top = ranking
        .top_products(TopProductsRequest { limit: 1000 })
        .await?
        .into_inner();
    for p in top.products {
        snap.sales.insert(p.sku, p.units_sold);
    }
    Ok(snap)
}

/// Takes the snapshot after the run and [`check`]s it, again every 200 ms while a check fails or
/// a query fails, for at most `patience`: Ranking's read models are eventually consistent, so
/// right after the last order ended its events may still be on their way, and a service under
/// load may answer a query UNAVAILABLE once. Returns the last snapshot and report.
///
/// # Errors
/// The last query that failed, when none succeeded in `patience`.
pub async fn settled(
    services: &Services,
    orders: &[Order],
    before: &Snapshot,
    users: &BTreeSet<String>,
    coupons: &BTreeSet<String>,
    patience: std::time::Duration,
) -> Result<(Snapshot, Report), tonic::Status> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let checked = match snapshot(services, users, coupons).await {
            Ok(after) => check(services, orders, before, &after)
                .await
                .map(|report| (after, report)),
            Err(status) => Err(status),
        };
        let out_of_time = tokio::time::Instant::now() >= deadline;
        match checked {
            Ok((after, report)) if report.violations.is_empty() || out_of_time => {
                return Ok((after, report));
            }
            Err(status) if out_of_time => return Err(status),
            Ok(_) => {}
            Err(status) => {
                tracing::debug!(%status, "a query of the invariant check failed; trying again");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Number of individual checks made.
    pub checks: usize,
    /// One line per violated invariant (empty when all hold).
    pub violations: Vec<String>,
}

impl Report {
    fn expect(&mut self, ok: bool, violation: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.violations.push(violation());
        }
    }
}

/// Checks the invariants for `orders` (as read after they finished) between `before` and `after`.
///
/// # Errors
/// A payment query that fails with anything but NOT_FOUND.
pub async fn check(
    services: &Services,
    orders: &[Order],
    before: &Snapshot,
    after: &Snapshot,
) -> Result<Report, tonic::Status> {
    let mut report = Report::default();
    let mut units: BTreeMap<&str, i64> = BTreeMap::new();
    let mut points: BTreeMap<&str, i64> = BTreeMap::new();
    let mut coupon_winner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut payment = PaymentServiceClient::new(services.payment.clone());

    for order in orders {
        let status = OrderStatus::try_from(order.status).unwrap_or(OrderStatus::Unspecified);
        let id = &order.order_id;
        report.expect(
            matches!(status, OrderStatus::Completed | OrderStatus::Failed),
            || format!("order {id} is not terminal: {}", status.as_str_name()),
        );
        report.expect(
            order.payable == order.subtotal - order.discount - order.points && order.payable >= 0,
            || {
                format!(
                    "order {id}: payable {} != subtotal {} - discount {} - points {}",
                    order.payable, order.subtotal, order.discount, order.points
                )
            },
        );
        let paid = match payment
            .get_payment(GetPaymentRequest {
                order_id: id.clone(),
            })
            .await
        {
            Ok(reply) => reply.into_inner().payment,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(s),
        };
        let paid_status = paid
            .as_ref()
            .map(|p| PaymentStatus::try_from(p.status).unwrap_or(PaymentStatus::Unspecified));
        if status == OrderStatus::Completed {
            for line in &order.lines {
                *units.entry(&line.sku).or_default() += i64::from(line.quantity);
            }
            *points.entry(&order.user_id).or_default() += order.points;
            if !order.coupon_code.is_empty() {
                coupon_winner.insert(&order.coupon_code, id);
            }
            report.expect(
                paid_status == Some(PaymentStatus::Completed)
                    && paid.as_ref().map(|p| p.amount) == Some(order.payable),
                || {
                    format!(
                        "COMPLETED order {id}: payment {paid:?}, payable {}",
                        order.payable
                    )
                },
            );
        } else if status == OrderStatus::Failed {
            report.expect(
                matches!(
                    paid_status,
                    None | Some(PaymentStatus::Canceled) | Some(PaymentStatus::Refunded)
                ),
                || format!("FAILED order {id} has payment {paid:?}"),
            );
        }
    }

    for (sku, stock_after) in &after.stock {
        report.expect(*stock_after >= 0, || {
            format!("sku {sku}: negative stock {stock_after}")
        });
        let stock_before = before.stock.get(sku).copied().unwrap_or(0);
        let sold = units.get(sku.as_str()).copied().unwrap_or(0);
        report.expect(stock_before - stock_after == sold, || {
            format!("sku {sku}: stock went {stock_before} -> {stock_after}, but COMPLETED orders took {sold}")
        });
        // Ranking's read models (a sku the run did not touch may predate Inventory's events).
        if sold > 0 || after.views.contains_key(sku) {
            let (view_stock, view_sold) = after.views.get(sku).copied().unwrap_or_default();
            let view_sold_before = before.views.get(sku).map_or(0, |v| v.1);
            report.expect(view_stock == *stock_after, || {
                format!(
                    "sku {sku}: the product view says stock {view_stock}, Inventory {stock_after}"
                )
            });
            report.expect(view_sold - view_sold_before == sold, || {
                format!("sku {sku}: the product view's units sold went {view_sold_before} -> {view_sold}, but COMPLETED orders took {sold}")
            });
        }
        let sales_before = before.sales.get(sku).copied().unwrap_or(0);
        let sales_after = after.sales.get(sku).copied().unwrap_or(0);
        report.expect(sales_after - sales_before == sold, || {
            format!("sku {sku}: the sales ranking went {sales_before} -> {sales_after}, but COMPLETED orders took {sold}")
        });
    }
    for (user, balance_after) in &after.balances {
        let balance_before = before.balances.get(user).copied().unwrap_or(0);
        let spent = points.get(user.as_str()).copied().unwrap_or(0);
        report.expect(balance_before - balance_after == spent, || {
            format!("user {user}: balance went {balance_before} -> {balance_after}, but COMPLETED orders spent {spent}")
        });
    }
    for order in orders.iter().filter(|o| !o.coupon_code.is_empty()) {
        let code = order.coupon_code.as_str();
        let holder = after.coupons.get(code).cloned().flatten();
        let winner = coupon_winner.get(code).copied();
        let expected = match winner {
            Some(w) => Some(w.to_owned()),
            // No order of this run completed with it: as it was before the run.
            None => before.coupons.get(code).cloned().flatten(),
        };
        report.expect(holder == expected, || {
            format!(
                "coupon {code} (order {} {}): held by {holder:?}, expected {expected:?}",
                order.order_id,
                OrderStatus::try_from(order.status)
                    .unwrap_or(OrderStatus::Unspecified)
                    .as_str_name()
            )
        });
    }
    Ok(report)
}
