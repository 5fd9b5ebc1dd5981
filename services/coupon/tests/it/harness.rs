//! Starts a coupon server on a fresh database and reads the database directly, so tests can
//! check what changed (and what did not).

use sagaflow_coupon::CouponService;
use sagaflow_proto::coupon::v1::{
    Coupon, IssueCouponRequest, coupon_service_client::CouponServiceClient,
};
use sagaflow_server::db::{now_ms, timestamp_from_ms};
use tonic::transport::Channel;

/// One day, milliseconds.
pub(crate) const DAY_MS: i64 = 86_400_000;

sagaflow_testkit::service_harness!(
    /// A running coupon server with its database and a connected client.
    pub(crate) struct Harness(CouponServiceClient<Channel>), sagaflow_coupon, CouponService
);

impl Harness {
    /// Issues `req` and returns the coupon.
    pub(crate) async fn issue(&self, req: IssueCouponRequest) -> Coupon {
        self.client
            .clone()
            .issue_coupon(req)
            .await
            .unwrap()
            .into_inner()
            .coupon
            .unwrap()
    }

    /// (status, order_id) of the coupon row.
    pub(crate) async fn holder(&self, code: &str) -> (String, Option<String>) {
        let sql = "SELECT status, order_id FROM coupons WHERE code = $1";
        self.row(sql, code).await.unwrap()
    }

    /// Every row of every coupon table (except timestamps), for "nothing changed" checks.
    pub(crate) async fn snapshot(&self) -> Snapshot {
        Snapshot {
            coupons: self
                .rows(
                    "SELECT code, user_id, discount_amount, discount_percent, min_order_amount, \
                     max_discount, expires_at, status, order_id FROM coupons ORDER BY code",
                )
                .await,
            compensations: self
                .rows("SELECT order_id, code FROM coupon_compensations ORDER BY order_id, code")
                .await,
            idempotency_keys: self.idempotency_keys().await,
        }
    }
}

type CouponRow = (
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    Option<String>,
);

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) coupons: Vec<CouponRow>,
    pub(crate) compensations: Vec<(String, String)>,
    pub(crate) idempotency_keys: Vec<String>,
}

/// A fixed 5 000 won coupon of `user` for orders of 10 000 won or more, valid for a day.
pub(crate) fn fixed(code: &str, user: &str) -> IssueCouponRequest {
    IssueCouponRequest {
        code: code.into(),
        user_id: user.into(),
        discount_amount: 5_000,
        discount_percent: 0,
        min_order_amount: 10_000,
        max_discount: 0,
        expires_at: Some(timestamp_from_ms(now_ms() / 1000 * 1000 + DAY_MS)),
    }
}

/// A 10 % coupon of `user`, capped at 20 000 won, no minimum, valid for a day.
pub(crate) fn percent(code: &str, user: &str) -> IssueCouponRequest {
    IssueCouponRequest {
        code: code.into(),
        user_id: user.into(),
        discount_amount: 0,
        discount_percent: 10,
        min_order_amount: 0,
        max_discount: 20_000,
        expires_at: Some(timestamp_from_ms(now_ms() / 1000 * 1000 + DAY_MS)),
    }
}

pub(crate) fn order_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
