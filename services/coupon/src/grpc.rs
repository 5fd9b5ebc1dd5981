//! The tonic implementation of `sagaflow.coupon.v1.CouponService`: request validation (every
//! invalid field is named, nothing is written), proto ↔ domain mapping, and the idempotency store
//! around the saga commands (docs/architecture.md, "The service contract").

use sagaflow_proto::coupon::v1::{
    Coupon as ProtoCoupon, CouponStatus, GetCouponRequest, GetCouponResponse, IssueCouponRequest,
    IssueCouponResponse, ListAdminActionsRequest, ListAdminActionsResponse, RestoreCouponRequest,
    RestoreCouponResponse, UseCouponRequest, UseCouponResponse, coupon_service_server,
};
use sagaflow_server::{
    ServiceError,
    access::identity_of,
    audit,
    db::{ms_from_timestamp, timestamp_from_ms},
    idempotency::respond,
    validate::Validator,
};
use tonic::{Request, Response, Status};

use crate::{
    CouponService,
    domain::{self, Coupon, Terms},
    store,
};

/// Earliest valid `google.protobuf.Timestamp` (0001-01-01T00:00:00Z), seconds.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Latest valid `google.protobuf.Timestamp` (9999-12-31T23:59:59Z), seconds.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

impl From<Coupon> for ProtoCoupon {
    fn from(c: Coupon) -> Self {
        let status = match c.status {
            domain::Status::Available => CouponStatus::Available,
            domain::Status::Used => CouponStatus::Used,
        };
        Self {
            code: c.terms.code,
            user_id: c.terms.user_id,
            status: status.into(),
            order_id: c.order_id.unwrap_or_default(),
            discount_amount: c.terms.discount_amount,
            discount_percent: c.terms.discount_percent,
            min_order_amount: c.terms.min_order_amount,
            max_discount: c.terms.max_discount,
            expires_at: Some(timestamp_from_ms(c.terms.expires_at)),
        }
    }
}

/// A required, valid timestamp, as unix milliseconds (sub-millisecond precision is dropped).
fn required_timestamp(
    v: &mut Validator,
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> i64 {
    let Some(ts) = value else {
        v.add(field, "must be set");
        return 0;
    };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        v.add(field, "nanos must be between 0 and 999999999");
        return 0;
    }
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds) {
        v.add(field, "must be between 0001-01-01 and 9999-12-31");
        return 0;
    }
    ms_from_timestamp(ts)
}

fn validate_issue(req: &IssueCouponRequest) -> Result<Terms, ServiceError> {
    let mut v = Validator::new();
    v.required("code", &req.code);
    v.required("user_id", &req.user_id);
    let amount_ok = v.non_negative_i64("discount_amount", req.discount_amount);
    let percent_ok = (0..=100).contains(&req.discount_percent);
    v.check(
        percent_ok,
        "discount_percent",
        "must be between 0 and 100 (1 to 100 for a percentage coupon)",
    );
    if amount_ok && percent_ok {
        let (fixed, percent) = (req.discount_amount > 0, req.discount_percent > 0);
        if fixed == percent {
            let why = "exactly one of discount_amount and discount_percent must be set";
            v.add("discount_amount", why);
            v.add("discount_percent", why);
        }
    }
    v.non_negative_i64("min_order_amount", req.min_order_amount);
    if v.non_negative_i64("max_discount", req.max_discount) && percent_ok {
        v.check(
            req.max_discount == 0 || req.discount_percent > 0,
            "max_discount",
            "applies only to a percentage coupon; must be 0 with discount_amount",
        );
    }
    let expires_at = required_timestamp(&mut v, "expires_at", req.expires_at.as_ref());
    v.finish()?;
    Ok(Terms {
        code: req.code.clone(),
        user_id: req.user_id.clone(),
        discount_amount: req.discount_amount,
        discount_percent: req.discount_percent,
        min_order_amount: req.min_order_amount,
        max_discount: req.max_discount,
        expires_at,
    })
}

#[tonic::async_trait]
impl coupon_service_server::CouponService for CouponService {
    #[tracing::instrument(skip_all, fields(code = tracing::field::Empty))]
    async fn get_coupon(
        &self,
        request: Request<GetCouponRequest>,
    ) -> Result<Response<GetCouponResponse>, Status> {
        let identity = identity_of(&request);
        let req = request.into_inner();
        let mut v = Validator::new();
        v.required("code", &req.code);
        v.finish()?;
        sagaflow_server::untrusted::record("code", &req.code);
        // Another user's coupon is NOT_FOUND like a missing code (docs/operations.md, "End
        // users"): codes cannot be probed.
        let found = store::get_coupon(&mut *self.db.connection().await?, &req.code).await?;
        let coupon = identity
            .visible(found, |c| c.terms.user_id.as_str())
            .ok_or_else(|| ServiceError::NotFound(format!("coupon {:?}", req.code)))?;
        Ok(Response::new(GetCouponResponse {
            coupon: Some(coupon.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(code = tracing::field::Empty))]
    async fn issue_coupon(
        &self,
        request: Request<IssueCouponRequest>,
    ) -> Result<Response<IssueCouponResponse>, Status> {
        let terms = validate_issue(request.get_ref())?;
        sagaflow_server::untrusted::record("code", &request.get_ref().code);
        let actor = identity_of(&request).to_string();
        // Naturally idempotent: an identical coupon is returned as it is, so it needs no key.
        let coupon = store::issue(&mut *self.db.connection().await?, &terms, &actor).await?;
        Ok(Response::new(IssueCouponResponse {
            coupon: Some(coupon.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_admin_actions(
        &self,
        request: Request<ListAdminActionsRequest>,
    ) -> Result<Response<ListAdminActionsResponse>, Status> {
        let actions = audit::list(&self.db, request.get_ref().limit).await?;
        Ok(Response::new(ListAdminActionsResponse { actions }))
    }

    #[tracing::instrument(
        skip_all,
        fields(code = tracing::field::Empty, order_id = tracing::field::Empty)
    )]
    async fn use_coupon(
        &self,
        request: Request<UseCouponRequest>,
    ) -> Result<Response<UseCouponResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        v.required("code", &req.code);
        v.required("user_id", &req.user_id);
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.non_negative_i64("order_amount", req.order_amount);
        v.finish()?;
        sagaflow_server::untrusted::record("code", &req.code);
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let backend = self.db.backend();
        let (code, user_id, amount) = (req.code.clone(), req.user_id.clone(), req.order_amount);
        respond(
            &self.db,
            "coupon.UseCoupon",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let coupon =
                        store::use_coupon(conn, backend, &code, &user_id, &order_id, amount)
                            .await?;
                    let discount = coupon.discount_on(amount);
                    Ok(UseCouponResponse {
                        coupon: Some(coupon.into()),
                        discount,
                    })
                })
            },
        )
        .await
    }

    #[tracing::instrument(
        skip_all,
        fields(code = tracing::field::Empty, order_id = tracing::field::Empty)
    )]
    async fn restore_coupon(
        &self,
        request: Request<RestoreCouponRequest>,
    ) -> Result<Response<RestoreCouponResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        v.required("code", &req.code);
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.finish()?;
        sagaflow_server::untrusted::record("code", &req.code);
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let backend = self.db.backend();
        let code = req.code.clone();
        respond(
            &self.db,
            "coupon.RestoreCoupon",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let coupon = store::restore_coupon(conn, backend, &code, &order_id).await?;
                    Ok(RestoreCouponResponse {
                        coupon: coupon.map(ProtoCoupon::from),
                    })
                })
            },
        )
        .await
    }
}
