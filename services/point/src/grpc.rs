//! The tonic implementation of `sagaflow.point.v1.PointService`: request validation (every
//! invalid field is named, nothing is written) and the idempotency store around every mutating
//! command (docs/architecture.md, "The service contract").

use sagaflow_proto::point::v1::{
    DeductPointsRequest, DeductPointsResponse, GetBalanceRequest, GetBalanceResponse,
    GrantPointsRequest, GrantPointsResponse, ListAdminActionsRequest, ListAdminActionsResponse,
    RestorePointsRequest, RestorePointsResponse, point_service_server,
};
use sagaflow_server::{
    ServiceError, access::identity_of, audit, idempotency::respond, validate::Validator,
};
use tonic::{Request, Response, Status};

use crate::{PointService, store};

#[tonic::async_trait]
impl point_service_server::PointService for PointService {
    #[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<GetBalanceResponse>, Status> {
        let identity = identity_of(&request);
        let mut req = request.into_inner();
        // An end user reads their own balance; another user's is NOT_FOUND, whoever they are
        // (docs/operations.md, "End users").
        req.user_id = identity
            .reading_user(&req.user_id)
            .map_err(|()| ServiceError::NotFound(format!("balance of user {:?}", req.user_id)))?;
        let mut v = Validator::new();
        v.required("user_id", &req.user_id);
        v.finish()?;
        sagaflow_server::untrusted::record("user_id", &req.user_id);
        let mut conn = self.db.connection().await?;
        let balance = store::balance(&mut conn, &req.user_id)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(GetBalanceResponse {
            user_id: req.user_id,
            balance,
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
    async fn grant_points(
        &self,
        request: Request<GrantPointsRequest>,
    ) -> Result<Response<GrantPointsResponse>, Status> {
        // Who grants, for the audit row written with the grant.
        let actor = identity_of(&request).to_string();
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        v.required("user_id", &req.user_id);
        v.positive_i64("amount", req.amount);
        v.finish()?;
        sagaflow_server::untrusted::record("user_id", &req.user_id);
        let backend = self.db.backend();
        let (key, user_id, amount) = (req.idempotency_key.clone(), req.user_id.clone(), req.amount);
        respond(
            &self.db,
            "point.GrantPoints",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let balance =
                        store::grant(conn, backend, &key, &user_id, amount, &actor).await?;
                    Ok(GrantPointsResponse { user_id, balance })
                })
            },
        )
        .await
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
        fields(user_id = tracing::field::Empty, order_id = tracing::field::Empty)
    )]
    async fn deduct_points(
        &self,
        request: Request<DeductPointsRequest>,
    ) -> Result<Response<DeductPointsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        v.required("user_id", &req.user_id);
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.positive_i64("amount", req.amount);
        v.finish()?;
        sagaflow_server::untrusted::record("user_id", &req.user_id);
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let backend = self.db.backend();
        let (key, user_id, amount) = (req.idempotency_key.clone(), req.user_id.clone(), req.amount);
        respond(
            &self.db,
            "point.DeductPoints",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let balance =
                        store::deduct(conn, backend, &key, &user_id, &order_id, amount).await?;
                    Ok(DeductPointsResponse { user_id, balance })
                })
            },
        )
        .await
    }

    #[tracing::instrument(
        skip_all,
        fields(user_id = tracing::field::Empty, order_id = tracing::field::Empty)
    )]
    async fn restore_points(
        &self,
        request: Request<RestorePointsRequest>,
    ) -> Result<Response<RestorePointsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::command(&req.idempotency_key);
        v.required("user_id", &req.user_id);
        let order_id = v.uuid_text("order_id", &req.order_id);
        v.finish()?;
        sagaflow_server::untrusted::record("user_id", &req.user_id);
        sagaflow_server::untrusted::record("order_id", &req.order_id);
        let backend = self.db.backend();
        let (key, user_id) = (req.idempotency_key.clone(), req.user_id.clone());
        respond(
            &self.db,
            "point.RestorePoints",
            &req.idempotency_key,
            &req,
            move |conn| {
                Box::pin(async move {
                    let (balance, restored) =
                        store::restore(conn, backend, &key, &user_id, &order_id).await?;
                    Ok(RestorePointsResponse {
                        user_id,
                        balance,
                        restored,
                    })
                })
            },
        )
        .await
    }
}
