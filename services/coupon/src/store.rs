//! The coupon database (sqlx `Any`, one SQL text for PostgreSQL and SQLite except the row lock).
//! Schema: `migrations/coupon/{postgres,sqlite}/0001_init.sql`.
//!
//! The saga commands take the connection of the transaction begun by
//! [`sagaflow_server::idempotency::execute`] (a store never begins its own transaction). Both
//! lock the coupon row first (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` serializes
//! writers) and only then read or write the compensation record, so a UseCoupon and a
//! RestoreCoupon of the same coupon are serialized and a late UseCoupon always sees the
//! compensation.

use sagaflow_server::{
    Backend, ServiceError, audit,
    db::now_ms,
    idempotency::late_action::{self, TombstoneTable},
};
use sqlx::AnyConnection;

use crate::domain::{self, Coupon, RestoreDecision, Status, Terms, UseAttempt, UseDecision};

/// A `coupons` row.
#[derive(Debug, sqlx::FromRow)]
struct CouponRow {
    code: String,
    user_id: String,
    discount_amount: i64,
    discount_percent: i64,
    min_order_amount: i64,
    max_discount: i64,
    expires_at: i64,
    status: String,
    order_id: Option<String>,
}

impl TryFrom<CouponRow> for Coupon {
    type Error = ServiceError;

    fn try_from(row: CouponRow) -> Result<Self, ServiceError> {
        let corrupt = |what: &str| {
            ServiceError::Internal(anyhow::anyhow!("coupon {:?} has {what}", row.code))
        };
        let status = Status::parse(&row.status)
            .ok_or_else(|| corrupt(&format!("unknown status {:?}", row.status)))?;
        let discount_percent = i32::try_from(row.discount_percent)
            .map_err(|_| corrupt("a discount_percent out of range"))?;
        Ok(Self {
            terms: Terms {
                code: row.code,
                user_id: row.user_id,
                discount_amount: row.discount_amount,
                discount_percent,
                min_order_amount: row.min_order_amount,
                max_discount: row.max_discount,
                expires_at: row.expires_at,
            },
            status,
            order_id: row.order_id,
        })
    }
}

const SELECT_COUPON: &str = "SELECT code, user_id, discount_amount, discount_percent, \
     min_order_amount, max_discount, expires_at, status, order_id FROM coupons WHERE code = $1";
const SELECT_COUPON_FOR_UPDATE: &str = "SELECT code, user_id, discount_amount, discount_percent, \
     min_order_amount, max_discount, expires_at, status, order_id FROM coupons WHERE code = $1 \
     FOR UPDATE";

/// The coupon `code`, if it exists.
pub(crate) async fn get_coupon(
    conn: &mut AnyConnection,
    code: &str,
) -> Result<Option<Coupon>, ServiceError> {
    let row: Option<CouponRow> = sqlx::query_as(SELECT_COUPON)
        .bind(code)
        .fetch_optional(conn)
        .await?;
    row.map(Coupon::try_from).transpose()
}

/// Reads the coupon for update: locked until the transaction ends on PostgreSQL.
async fn lock_coupon(
    conn: &mut AnyConnection,
    backend: Backend,
    code: &str,
) -> Result<Option<Coupon>, ServiceError> {
    let sql = match backend {
        Backend::Postgres => SELECT_COUPON_FOR_UPDATE,
        Backend::Sqlite => SELECT_COUPON,
    };
    let row: Option<CouponRow> = sqlx::query_as(sql).bind(code).fetch_optional(conn).await?;
    row.map(Coupon::try_from).transpose()
}

/// IssueCoupon by `actor` (the access layer's identity): creates an AVAILABLE coupon with
/// `terms` and its `admin_audit` row in one transaction, or returns the existing coupon when
/// one with identical terms exists (in whatever state it is now).
///
/// # Errors
/// `ALREADY_EXISTS` (reason `COUPON_EXISTS`) when the code exists with other terms
/// ([`domain::decide_issue`]).
pub(crate) async fn issue(
    conn: &mut AnyConnection,
    terms: &Terms,
    actor: &str,
) -> Result<Coupon, ServiceError> {
    let now = now_ms();
    // The coupon and its audit row commit together: a coupon is never issued unaudited.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let inserted = sqlx::query(
        "INSERT INTO coupons (code, user_id, discount_amount, discount_percent, \
             min_order_amount, max_discount, expires_at, status, order_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $9) ON CONFLICT (code) DO NOTHING",
    )
    .bind(terms.code.as_str())
    .bind(terms.user_id.as_str())
    .bind(terms.discount_amount)
    .bind(i64::from(terms.discount_percent))
    .bind(terms.min_order_amount)
    .bind(terms.max_discount)
    .bind(terms.expires_at)
    .bind(Status::Available.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        let entry = audit::Entry {
            actor,
            action: "IssueCoupon",
            subject: terms.code.as_str(),
            detail_json: serde_json::json!({ "user_id": terms.user_id }).to_string(),
            idempotency_key: "",
        };
        audit::record(&mut tx, &entry).await?;
    }
    tx.commit().await?;
    let coupon = get_coupon(conn, &terms.code).await?.ok_or_else(|| {
        ServiceError::Internal(anyhow::anyhow!(
            "coupon {:?} vanished after its insert",
            terms.code
        ))
    })?;
    domain::decide_issue(&coupon.terms, terms).map_err(|why| ServiceError::AlreadyExists {
        reason: why.reason(),
        message: why.message(&terms.code),
    })?;
    Ok(coupon)
}

/// The compensation records of (order, code): RestoreCoupon writes one, whatever the coupon's
/// state, and a later UseCoupon of that order and code is refused (the late-action rule of
/// docs/architecture.md, "The service contract", through [`late_action`]).
const COMPENSATIONS: TombstoneTable = TombstoneTable {
    table: "coupon_compensations",
    subject: &["order_id", "code"],
    tombstone_when: "TRUE",
    timestamps: &["created_at"],
};

async fn set_holder(
    conn: &mut AnyConnection,
    code: &str,
    from: Status,
    to: Status,
    order_id: Option<&str>,
) -> Result<(), ServiceError> {
    let updated = sqlx::query(
        "UPDATE coupons SET status = $1, order_id = $2, updated_at = $3 \
         WHERE code = $4 AND status = $5",
    )
    .bind(to.as_str())
    .bind(order_id)
    .bind(now_ms())
    .bind(code)
    .bind(from.as_str())
    .execute(conn)
    .await?
    .rows_affected();
    if updated == 1 {
        Ok(())
    } else {
        // Impossible while the row is locked; a retry re-reads the coupon.
        Err(ServiceError::Unavailable(format!(
            "coupon {code:?} changed concurrently; retry"
        )))
    }
}

/// UseCoupon's effect: marks the coupon USED by `order_id` after the checks of
/// [`domain::decide_use`]; returns the coupon as it is afterwards.
///
/// # Errors
/// `NOT_FOUND` for an unknown code (unless the compensation came first:
/// `COMPENSATED_BEFORE_ACTION`); `FAILED_PRECONDITION` with the [`domain::UseRejection`] reason.
pub(crate) async fn use_coupon(
    conn: &mut AnyConnection,
    backend: Backend,
    code: &str,
    user_id: &str,
    order_id: &str,
    order_amount: i64,
) -> Result<Coupon, ServiceError> {
    let coupon = lock_coupon(conn, backend, code).await?;
    late_action::check(conn, backend, &COMPENSATIONS, &[order_id, code], || {
        format!(
            "coupon {code:?}: RestoreCoupon for this order came first; its UseCoupon is rejected"
        )
    })
    .await?;
    let Some(mut coupon) = coupon else {
        return Err(ServiceError::NotFound(format!("coupon {code:?}")));
    };
    let attempt = UseAttempt {
        user_id,
        order_id,
        order_amount,
        now_ms: now_ms(),
    };
    match domain::decide_use(&coupon, &attempt) {
        Ok(UseDecision::AlreadyHeld) => Ok(coupon),
        Ok(UseDecision::Take) => {
            set_holder(conn, code, Status::Available, Status::Used, Some(order_id)).await?;
            coupon.status = Status::Used;
            coupon.order_id = Some(order_id.to_owned());
            Ok(coupon)
        }
        Err(why) => Err(rejected(why, code)),
    }
}

/// A domain rejection of UseCoupon of `code` as FAILED_PRECONDITION with its reason.
fn rejected(why: domain::UseRejection, code: &str) -> ServiceError {
    ServiceError::precondition(why.reason(), format!("coupon {code:?}: {}", why.describe()))
}

/// RestoreCoupon's effect: records the compensation of (`order_id`, `code`) and makes the
/// coupon AVAILABLE again if that order holds it. Returns the coupon as it is afterwards, or
/// `None` for an unknown code (the compensation is recorded anyway, so it is safe when UseCoupon
/// never happened).
///
/// # Errors
/// The database's error.
pub(crate) async fn restore_coupon(
    conn: &mut AnyConnection,
    backend: Backend,
    code: &str,
    order_id: &str,
) -> Result<Option<Coupon>, ServiceError> {
    let coupon = lock_coupon(conn, backend, code).await?;
    // Recorded whatever the coupon's state (the restore plan is the coupon's own, below).
    late_action::record(conn, backend, &COMPENSATIONS, &[order_id, code], &[]).await?;
    let Some(mut coupon) = coupon else {
        return Ok(None);
    };
    match domain::decide_restore(Some(&coupon), order_id) {
        RestoreDecision::MakeAvailable => {
            set_holder(conn, code, Status::Used, Status::Available, None).await?;
            coupon.status = Status::Available;
            coupon.order_id = None;
        }
        RestoreDecision::LeaveAlone => {}
    }
    Ok(Some(coupon))
}
