//! `sagaflow.order.v1.OutboxAdminService` over tonic: the dead-lettered outbox events, for
//! operators (docs/architecture.md, "Events").

use sagaflow_proto::order::v1::{
    self as pb,
    outbox_admin_service_server::{OutboxAdminService as OutboxAdminApi, OutboxAdminServiceServer},
};
use sagaflow_server::{
    Db, ServiceError,
    db::timestamp_from_ms,
    validate::{Validator, decode_page_token, encode_page_token},
};
use tonic::{Request, Response, Status};

use crate::outbox::{self, DeadLetter, OutboxError};

/// The outbox admin service over the order database. Cloning is cheap.
#[derive(Debug, Clone)]
pub(crate) struct OutboxAdmin {
    db: Db,
}

impl OutboxAdmin {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    pub(crate) fn into_server(self) -> OutboxAdminServiceServer<Self> {
        OutboxAdminServiceServer::new(self).max_decoding_message_size(
            sagaflow_server::repeated::max_decoding_message_size(crate::OUTBOX_ADMIN_SERVICE_NAME),
        )
    }
}

#[tonic::async_trait]
impl OutboxAdminApi for OutboxAdmin {
    /// A page of dead letters, oldest first.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `page_size` (negative or over 1000) or `page_token` (not one of
    /// ours); UNAVAILABLE when the database cannot be reached.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Validator::new();
        let page_size = v.page_size("page_size", req.page_size);
        // The token is the last position of the previous page; none: from the start.
        let after = match decode_page_token("page_token", &req.page_token) {
            Ok(None) => Some(0),
            Ok(Some(text)) => text.parse::<i64>().ok().filter(|position| *position > 0),
            Err(_) => None,
        };
        v.check(
            after.is_some(),
            "page_token",
            "is not a page token from a previous response",
        );
        v.finish()?;
        // One extra row tells whether another page follows.
        let mut rows = outbox::dead_letters_after(
            &self.db,
            after.unwrap_or_default(),
            page_size.saturating_add(1),
        )
        .await
        .map_err(database)?;
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > page_size;
        rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match rows.last() {
            Some(last) if more => encode_page_token(&last.position.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}

fn database(err: OutboxError) -> ServiceError {
    match err {
        OutboxError::Database(err) => err.into(),
        other => ServiceError::Internal(other.into()),
    }
}

fn to_proto(d: DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        event_id: d.event_id,
        order_id: d.aggregate_id,
        event_type: d.event_type,
        sequence: d.sequence,
        attempts: d.attempts,
        last_error: d.reason,
        created_at: Some(timestamp_from_ms(d.created_at_ms)),
        dead_at: Some(timestamp_from_ms(d.dead_at_ms)),
    }
}
