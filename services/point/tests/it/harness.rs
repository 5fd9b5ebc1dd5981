//! Starts a point server on a fresh database and reads the database directly, so tests can check
//! what changed (and what did not).

use sagaflow_point::PointService;
use sagaflow_proto::point::v1::{GrantPointsRequest, point_service_client::PointServiceClient};
use tonic::transport::Channel;

sagaflow_testkit::service_harness!(
    /// A running point server with its database and a connected client.
    pub(crate) struct Harness(PointServiceClient<Channel>), sagaflow_point, PointService
);

impl Harness {
    /// Grants `amount` points to `user` under the key `grant:<user>:<amount>`.
    pub(crate) async fn grant(&self, user: &str, amount: i64) -> i64 {
        self.client
            .clone()
            .grant_points(GrantPointsRequest {
                user_id: user.into(),
                amount,
                idempotency_key: format!("grant:{user}:{amount}"),
            })
            .await
            .unwrap()
            .into_inner()
            .balance
    }

    /// The balance column (`None`: no row).
    pub(crate) async fn balance(&self, user: &str) -> Option<i64> {
        let sql = "SELECT balance FROM balances WHERE user_id = $1";
        self.value(sql, user).await
    }

    /// (user_id, amount, status) of the order's deduction row.
    pub(crate) async fn deduction(&self, order_id: &str) -> Option<(String, i64, String)> {
        let sql = "SELECT user_id, amount, status FROM deductions WHERE order_id = $1";
        self.row(sql, order_id).await
    }

    /// Every row of every point table (except timestamps), for "nothing changed" checks.
    pub(crate) async fn snapshot(&self) -> Snapshot {
        Snapshot {
            balances: self
                .rows("SELECT user_id, balance FROM balances ORDER BY user_id")
                .await,
            deductions: self
                .rows("SELECT order_id, user_id, amount, status FROM deductions ORDER BY order_id")
                .await,
            ledger: self
                .rows(
                    "SELECT user_id, kind, amount, order_id, idempotency_key FROM point_ledger \
                     ORDER BY entry_id",
                )
                .await,
            idempotency_keys: self.idempotency_keys().await,
        }
    }

    /// The ledger invariant: every balance equals the fold of its ledger (GRANT + RESTORE −
    /// DEDUCT), and the points held by DEDUCTED orders equal their DEDUCT rows minus nothing
    /// restored.
    pub(crate) async fn assert_ledger_invariant(&self) {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT b.user_id, b.balance, CAST(COALESCE((SELECT SUM(CASE l.kind \
                 WHEN 'DEDUCT' THEN -l.amount ELSE l.amount END) \
                 FROM point_ledger l WHERE l.user_id = b.user_id), 0) AS BIGINT) \
             FROM balances b ORDER BY b.user_id",
        )
        .fetch_all(self.db.pool())
        .await
        .unwrap();
        for (user, balance, folded) in rows {
            assert!(balance >= 0, "{user}: negative balance");
            assert_eq!(balance, folded, "{user}: balance != ledger fold");
        }
        let (held, deducted_rows): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE((SELECT SUM(amount) FROM deductions WHERE status = 'DEDUCTED'), 0) AS BIGINT), \
                    CAST(COALESCE((SELECT SUM(l.amount) FROM point_ledger l WHERE l.kind = 'DEDUCT' \
                        AND NOT EXISTS (SELECT 1 FROM point_ledger r WHERE r.kind = 'RESTORE' \
                            AND r.order_id = l.order_id)), 0) AS BIGINT)",
        )
        .fetch_one(self.db.pool())
        .await
        .unwrap();
        assert_eq!(held, deducted_rows, "held points != unrestored DEDUCT rows");
    }
}

type LedgerRow = (String, String, i64, Option<String>, String);

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) balances: Vec<(String, i64)>,
    pub(crate) deductions: Vec<(String, String, i64, String)>,
    pub(crate) ledger: Vec<LedgerRow>,
    pub(crate) idempotency_keys: Vec<String>,
}

pub(crate) fn order_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
