//! The admin API `sagaflow.workflow.v1.SagaAdminService` (docs/architecture.md, "Operator
//! commands") over an [`Engine`]:
//! GetSaga (state row, per-step view, journal), ListSagas (filters, pagination), RetrySaga,
//! CancelSaga, ResolveStep. Errors go through `sagaflow_server::ServiceError`:
//!
//! | case                                   | code                | ErrorInfo reason             |
//! |----------------------------------------|---------------------|------------------------------|
//! | malformed id, page size, token, range  | INVALID_ARGUMENT    | — (BadRequest names field)   |
//! | no such saga                           | NOT_FOUND           | —                            |
//! | RetrySaga of a saga not parked         | FAILED_PRECONDITION | `SAGA_NOT_NEEDS_ATTENTION`   |
//! | CancelSaga at or after the pivot       | FAILED_PRECONDITION | `SAGA_PAST_PIVOT`            |
//! | CancelSaga of a finished saga          | FAILED_PRECONDITION | `SAGA_FINISHED`              |
//! | ResolveStep of a saga not parked       | FAILED_PRECONDITION | `SAGA_NOT_NEEDS_ATTENTION`   |
//! | ResolveStep NOT_APPLIED where it can't | FAILED_PRECONDITION | `RESOLUTION_NOT_APPLICABLE`  |
//! | database unavailable                   | UNAVAILABLE         | —                            |
//!
//! Serve it with `sagaflow_server::grpc::serve` and
//! `SagaAdminServiceServer::new(SagaAdmin::new(engine))`.

use sagaflow_proto::workflow::v1 as pb;
use sagaflow_server::{
    ServiceError,
    access::identity_of,
    db::{ms_from_timestamp, timestamp_from_ms},
    validate::{Validator, decode_page_token, encode_page_token},
};
use tonic::{Request, Response, Status};

use crate::{
    engine::{Engine, EngineError},
    journal::{self, JournalEntry},
    planner::Refusal,
    state::{SagaId, SagaState, SagaStatus},
    store::{ListFilter, StoreError},
};

/// The fully-qualified service name, for health reporting.
pub const SERVICE_NAME: &str = "sagaflow.workflow.v1.SagaAdminService";

/// `FAILED_PRECONDITION` reason of RetrySaga on a saga that is not NEEDS_ATTENTION.
pub const REASON_NOT_NEEDS_ATTENTION: &str = "SAGA_NOT_NEEDS_ATTENTION";
/// `FAILED_PRECONDITION` reason of CancelSaga at or after the pivot.
pub const REASON_PAST_PIVOT: &str = "SAGA_PAST_PIVOT";
/// `FAILED_PRECONDITION` reason of CancelSaga on a finished saga.
pub const REASON_FINISHED: &str = "SAGA_FINISHED";
/// `FAILED_PRECONDITION` reason of ResolveStep with NOT_APPLIED past the pivot or on a
/// compensation or finalizer.
pub const REASON_NOT_APPLICABLE: &str = "RESOLUTION_NOT_APPLICABLE";

/// The SagaAdminService implementation.
#[derive(Debug, Clone)]
pub struct SagaAdmin {
    engine: Engine,
}

impl SagaAdmin {
    /// The admin API over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> pb::saga_admin_service_server::SagaAdminServiceServer<Self> {
        pb::saga_admin_service_server::SagaAdminServiceServer::new(self)
    }
}

fn store_error(err: StoreError) -> ServiceError {
    if err.is_transient() {
        ServiceError::Unavailable(err.to_string())
    } else {
        ServiceError::Internal(anyhow::Error::new(err))
    }
}

fn engine_error(err: EngineError, id: SagaId) -> ServiceError {
    match err {
        EngineError::NotFound(_) => ServiceError::NotFound(format!("saga {id}")),
        EngineError::Refused(Refusal::NotNeedsAttention) => ServiceError::precondition(
            REASON_NOT_NEEDS_ATTENTION,
            format!("saga {id} is not in NEEDS_ATTENTION"),
        ),
        EngineError::Refused(Refusal::PastPivot) => ServiceError::precondition(
            REASON_PAST_PIVOT,
            format!("saga {id} is at or past its pivot and can no longer be canceled"),
        ),
        EngineError::Refused(Refusal::Finished) => {
            ServiceError::precondition(REASON_FINISHED, format!("saga {id} has finished"))
        }
        EngineError::Refused(refusal @ Refusal::NotApplicable) => {
            ServiceError::precondition(REASON_NOT_APPLICABLE, format!("saga {id}: {refusal}"))
        }
        EngineError::Store(err) => store_error(err),
        EngineError::ShuttingDown => {
            ServiceError::Unavailable("the engine is shutting down".into())
        }
        other @ (EngineError::UnknownDefinition { .. }
        | EngineError::DuplicateDefinition { .. }
        | EngineError::Timeout { .. }
        | EngineError::NoRuntime
        | EngineError::InvalidConfig(_)) => ServiceError::Internal(anyhow::Error::new(other)),
    }
}

fn parse_id(field: &str, value: &str) -> Result<SagaId, ServiceError> {
    let mut v = Validator::new();
    let id = v.uuid(field, value);
    v.finish()?;
    id.map(SagaId)
        .ok_or_else(|| ServiceError::invalid(field, "must be a UUID"))
}

fn status_to_pb(status: SagaStatus) -> pb::SagaStatus {
    match status {
        SagaStatus::Running => pb::SagaStatus::Running,
        SagaStatus::Compensating => pb::SagaStatus::Compensating,
        SagaStatus::Completed => pb::SagaStatus::Completed,
        SagaStatus::Compensated => pb::SagaStatus::Compensated,
        SagaStatus::NeedsAttention => pb::SagaStatus::NeedsAttention,
    }
}

fn status_from_pb(status: pb::SagaStatus) -> Option<SagaStatus> {
    match status {
        pb::SagaStatus::Unspecified => None,
        pb::SagaStatus::Running => Some(SagaStatus::Running),
        pb::SagaStatus::Compensating => Some(SagaStatus::Compensating),
        pb::SagaStatus::Completed => Some(SagaStatus::Completed),
        pb::SagaStatus::Compensated => Some(SagaStatus::Compensated),
        pb::SagaStatus::NeedsAttention => Some(SagaStatus::NeedsAttention),
    }
}

/// The admin API's view of a state row. Sealed card tokens in the input show as their mask
/// (docs/operations.md, "Secrets and card tokens").
pub fn saga_to_pb(s: &SagaState) -> pb::Saga {
    pb::Saga {
        saga_id: s.id.to_string(),
        definition_name: s.definition_name.clone(),
        definition_version: s.definition_version,
        business_key: s.business_key.clone(),
        status: status_to_pb(s.status()).into(),
        phase: s.phase().as_str().to_owned(),
        current_step: s.current_step().unwrap_or_default().to_owned(),
        attempt: s.attempt,
        input_json: sagaflow_server::card_token::mask_sealed_in_json(&s.input).to_string(),
        outputs_json: serde_json::Value::Object(s.outputs.clone()).to_string(),
        next_attempt_at: Some(timestamp_from_ms(s.next_attempt_at)),
        lease_owner: s.lease_owner.clone().unwrap_or_default(),
        lease_expires_at: s.lease_expires_at.map(timestamp_from_ms),
        fencing_token: s.fencing_token,
        deadline: s.deadline_at.map(timestamp_from_ms),
        last_error_json: s
            .last_error
            .as_ref()
            .and_then(|e| serde_json::to_string(e).ok())
            .unwrap_or_default(),
        failure_reason: s.failure_reason.clone().unwrap_or_default(),
        created_at: Some(timestamp_from_ms(s.created_at)),
        updated_at: Some(timestamp_from_ms(s.updated_at)),
    }
}

fn entry_to_pb(e: &JournalEntry) -> pb::JournalEntry {
    let encoded = journal::encode(&e.event);
    pb::JournalEntry {
        sequence: e.seq,
        at: Some(timestamp_from_ms(e.at)),
        event_type: encoded.event_type,
        step: encoded.step.unwrap_or_default(),
        attempt: encoded
            .attempt
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or_default(),
        detail_json: encoded.detail,
    }
}

impl SagaAdmin {
    fn steps(&self, state: &SagaState, entries: &[JournalEntry]) -> Vec<pb::SagaStep> {
        let named: Vec<(String, (String, bool))> = match self
            .engine
            .definition(&state.definition_name, state.definition_version)
        {
            Some(def) => def
                .steps()
                .iter()
                .map(|s| {
                    (
                        s.name().to_owned(),
                        (
                            s.kind().as_str().to_owned(),
                            s.compensation_action().is_some(),
                        ),
                    )
                })
                .collect(),
            None => {
                // Unknown definition here: list the steps its journal mentions.
                let mut names: Vec<(String, (String, bool))> = Vec::new();
                for e in entries {
                    if let Some(step) = journal::encode(&e.event).step
                        && !names.iter().any(|(n, _)| *n == step)
                    {
                        names.push((step, (String::new(), false)));
                    }
                }
                names
            }
        };
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        let progress = journal::step_progress(&names, entries);
        named
            .iter()
            .zip(progress)
            .map(
                |((name, (kind, compensated)), (state, attempts))| pb::SagaStep {
                    name: name.clone(),
                    kind: kind.clone(),
                    state: state.as_str().to_owned(),
                    attempts,
                    has_compensation: *compensated,
                },
            )
            .collect()
    }
}

#[tonic::async_trait]
impl pb::saga_admin_service_server::SagaAdminService for SagaAdmin {
    #[tracing::instrument(skip_all, fields(saga.id = tracing::field::Empty), err(level = "info"))]
    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::GetSagaResponse>, Status> {
        let id = parse_id("saga_id", &request.get_ref().saga_id)?;
        tracing::Span::current().record("saga.id", tracing::field::display(id));
        let state = self.engine.get(id).await.map_err(|e| engine_error(e, id))?;
        let entries = self
            .engine
            .journal(id)
            .await
            .map_err(|e| engine_error(e, id))?;
        Ok(Response::new(pb::GetSagaResponse {
            saga: Some(saga_to_pb(&state)),
            steps: self.steps(&state, &entries),
            journal: entries.iter().map(entry_to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let limit = v.page_size("page_size", req.page_size);
        v.max_len("definition_name", &req.definition_name);
        let status = match req.status {
            None => None,
            Some(raw) => match pb::SagaStatus::try_from(raw).ok().and_then(status_from_pb) {
                Some(s) => Some(s),
                None => {
                    v.add(
                        "status",
                        "must be a saga status other than SAGA_STATUS_UNSPECIFIED",
                    );
                    None
                }
            },
        };
        let created_after = req.created_after.as_ref().map(ms_from_timestamp);
        let created_before = req.created_before.as_ref().map(ms_from_timestamp);
        if let (Some(a), Some(b)) = (created_after, created_before) {
            v.check(b > a, "created_before", "must be after created_after");
        }
        v.finish()?;
        let after = match decode_page_token("page_token", &req.page_token)? {
            None => None,
            Some(token) => Some(
                token
                    .split_once('/')
                    .and_then(|(at, id)| {
                        Some((at.parse::<i64>().ok()?, id.parse::<SagaId>().ok()?))
                    })
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            "page_token",
                            "is not a page token from a previous response",
                        )
                    })?,
            ),
        };
        let limit = u32::try_from(limit).unwrap_or(50);
        let filter = ListFilter {
            status,
            definition_name: (!req.definition_name.is_empty()).then_some(req.definition_name),
            created_after,
            created_before,
            after,
            limit: limit + 1,
        };
        let mut sagas = self
            .engine
            .store()
            .list(&filter)
            .await
            .map_err(store_error)?;
        let next_page_token = if sagas.len() > limit as usize {
            sagas.truncate(limit as usize);
            sagas
                .last()
                .map(|s| encode_page_token(&format!("{}/{}", s.created_at, s.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSagasResponse {
            sagas: sagas.iter().map(saga_to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(saga.id = tracing::field::Empty), err(level = "info"))]
    async fn retry_saga(
        &self,
        request: Request<pb::RetrySagaRequest>,
    ) -> Result<Response<pb::RetrySagaResponse>, Status> {
        let id = parse_id("saga_id", &request.get_ref().saga_id)?;
        tracing::Span::current().record("saga.id", tracing::field::display(id));
        // Who asked, as the access layer established it: the journal keeps it (the audit).
        let operator = identity_of(&request).to_string();
        let state = self
            .engine
            .retry_by(id, Some(&operator))
            .await
            .map_err(|e| engine_error(e, id))?;
        Ok(Response::new(pb::RetrySagaResponse {
            saga: Some(saga_to_pb(&state)),
        }))
    }

    #[tracing::instrument(skip_all, fields(saga.id = tracing::field::Empty), err(level = "info"))]
    async fn resolve_step(
        &self,
        request: Request<pb::ResolveStepRequest>,
    ) -> Result<Response<pb::ResolveStepResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let id = v.uuid("saga_id", &req.saga_id);
        let resolution = match pb::Resolution::try_from(req.resolution) {
            Ok(pb::Resolution::Applied) => Some(journal::Resolution::Applied),
            Ok(pb::Resolution::NotApplied) => Some(journal::Resolution::NotApplied),
            Ok(pb::Resolution::Unspecified) | Err(_) => {
                v.add(
                    "resolution",
                    "must be RESOLUTION_APPLIED or RESOLUTION_NOT_APPLIED",
                );
                None
            }
        };
        v.required("operator", &req.operator);
        v.max_len("operator", &req.operator);
        v.required_text("reason", &req.reason);
        v.finish()?;
        sagaflow_server::untrusted::record("saga.id", &req.saga_id);
        let (Some(id), Some(resolution)) = (id.map(SagaId), resolution) else {
            return Err(ServiceError::invalid("saga_id", "must be a UUID").into());
        };
        let state = self
            .engine
            .resolve(id, resolution, &req.operator, &req.reason)
            .await
            .map_err(|e| engine_error(e, id))?;
        Ok(Response::new(pb::ResolveStepResponse {
            saga: Some(saga_to_pb(&state)),
        }))
    }

    #[tracing::instrument(skip_all, fields(saga.id = tracing::field::Empty), err(level = "info"))]
    async fn cancel_saga(
        &self,
        request: Request<pb::CancelSagaRequest>,
    ) -> Result<Response<pb::CancelSagaResponse>, Status> {
        let id = parse_id("saga_id", &request.get_ref().saga_id)?;
        tracing::Span::current().record("saga.id", tracing::field::display(id));
        let operator = identity_of(&request).to_string();
        let state = self
            .engine
            .cancel_by(id, Some(&operator))
            .await
            .map_err(|e| engine_error(e, id))?;
        Ok(Response::new(pb::CancelSagaResponse {
            saga: Some(saga_to_pb(&state)),
        }))
    }
}
