//! The consuming side of the event-transport seam (docs/architecture.md, "Events"): how a
//! service's [`sagaflow_events::EventHandler`] runs a consumed event through the same handler its
//! gRPC delivery RPC runs (StartOrderSaga, RecordOrderCompleted, RecordInventoryEvent), so the
//! validation, the inbox and the effect are one code path whatever carried the event.
//!
//! - [`span`]: the `event.consume` span, a child of the span that wrote the event (the
//!   envelope's `traceparent`), so one order stays one trace through a broker;
//! - [`request`]: the handler's request, carrying that `traceparent` as gRPC metadata;
//! - [`handle_error`]: the handler's status as the consumer acts on it: a definite refusal is
//!   poison (dead-lettered), anything else is tried again.

use sagaflow_events::{Envelope, HandleError};
use sagaflow_telemetry::{propagation, semconv};
use tonic::metadata::MetadataValue;

use crate::relay::{FailureKind, classify};

/// The `event.consume` span of `envelope` (kind `consumer`), parented on the span that wrote it.
pub fn span(envelope: &Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "event.consume",
        { semconv::OTEL_KIND } = "consumer",
        { semconv::OUTBOX_EVENT_ID } = %envelope.event_id,
        { semconv::OUTBOX_EVENT_TYPE } = envelope.event_type.as_str(),
        { semconv::OUTBOX_AGGREGATE_ID } = %envelope.aggregate_id,
    );
    if let Some(tp) = &envelope.traceparent {
        propagation::set_parent_from_traceparent(&span, tp);
    }
    span
}

/// `message` as a request to a local handler, with the envelope's `traceparent` as metadata (a
/// handler that stores the trace context reads the current span's first, then this).
pub fn request<T>(message: T, envelope: &Envelope) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = envelope
        .traceparent
        .as_deref()
        .and_then(|tp| MetadataValue::try_from(tp).ok())
    {
        request
            .metadata_mut()
            .insert(propagation::TRACEPARENT, value);
    }
    request
}

/// A handler's error status as the consumer acts on it: [`HandleError::Poison`] for a definite
/// refusal ([`classify`]: INVALID_ARGUMENT, FAILED_PRECONDITION with a reason — it is refused the
/// same way every time), [`HandleError::Transient`] for anything else (an unavailable database, a
/// shutting-down engine).
pub fn handle_error(status: &tonic::Status) -> HandleError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match classify(status) {
        FailureKind::Refused => HandleError::Poison(message),
        FailureKind::NotDelivered | FailureKind::InDoubt => HandleError::Transient(message),
    }
}

/// An undecodable payload, as poison.
pub fn undecodable(envelope: &Envelope, err: &impl std::fmt::Display) -> HandleError {
    HandleError::Poison(format!(
        "{} payload of event {} does not decode: {err}",
        envelope.event_type, envelope.event_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceError;

    #[test]
    fn refusals_are_poison_and_the_rest_transient() {
        let refused: tonic::Status = ServiceError::invalid("event_id", "must be a UUID").into();
        assert!(matches!(handle_error(&refused), HandleError::Poison(m) if m.contains("event_id")));
        assert!(matches!(
            handle_error(&tonic::Status::unavailable("saga store: down")),
            HandleError::Transient(_)
        ));
    }
}
