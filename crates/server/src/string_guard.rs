//! The string-field guard: a tower layer that answers INVALID_ARGUMENT, before any handler runs,
//! to a request with a control character in any string field (the rule of
//! [`crate::validate::is_forbidden_in_text`]; the module docs of [`crate::validate`] say why).
//!
//! ```text
//!  request ─▶ path in the sagaflow descriptor set? ─no─▶ handler (health, reflection)
//!                 │ yes
//!                 ▼
//!  decode the body as the method's input message (prost-reflect)
//!     ├─ a string field, at any depth, holds a forbidden character
//!     │     ─▶ INVALID_ARGUMENT, google.rpc.BadRequest naming each field (`lines[0].sku`)
//!     └─ clean, or not decodable here ─▶ handler, with the body as it came
//! ```
//!
//! It covers every RPC of every service the process serves, the ones a handler checks field by
//! field and the ones it passes on without looking (an event's nested order), so no such value
//! reaches a database or another service, and a new RPC is covered without code. Identifiers are
//! held to the stricter rule by the handlers ([`crate::validate::Validator::required`]).
//!
//! A body that is not a well-formed uncompressed gRPC frame, or does not decode as the method's
//! message, is passed on untouched: the handler's codec answers it as it always did. A body over
//! the server's message limit (default and at most [`MAX_REQUEST_BYTES`]) is RESOURCE_EXHAUSTED
//! with an `ErrorInfo` reason `MESSAGE_TOO_LARGE` (gRPC's code for a message over the limit;
//! docs/operations.md, "Security"), and no handler runs.

use std::{
    collections::HashMap,
    sync::LazyLock,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tonic::{Status, body::Body};
use tonic_types::StatusExt as _;
use tower::{Layer, Service};

use crate::{ServiceError, untrusted::untrusted, validate::string_field_violations};

/// Largest request body the guard reads: tonic's default message limit (4 MiB) plus the 5-byte
/// frame header.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024 + 5;

/// The input message of every method in [`sagaflow_proto::FILE_DESCRIPTOR_SET`], by request path
/// (`/sagaflow.order.v1.OrderService/PlaceOrder`). Empty (and logged) if the set does not decode,
/// which would be a build problem: the guard then checks nothing and the handlers still do.
static INPUTS: LazyLock<HashMap<String, MessageDescriptor>> = LazyLock::new(|| {
    match DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET) {
        Ok(pool) => pool
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .map(|method| {
                let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
                (path, method.input())
            })
            .collect(),
        Err(err) => {
            tracing::error!(error = %err, "the descriptor set does not decode: string fields are not guarded");
            HashMap::new()
        }
    }
});

/// The input message descriptor of the RPC at `path`, if it is a sagaflow RPC.
pub fn input_message(path: &str) -> Option<MessageDescriptor> {
    INPUTS.get(path).cloned()
}

/// What the guard decides about one request body.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Pass the body on.
    Pass,
    /// Answer INVALID_ARGUMENT with these violations; the first refused value goes to the log
    /// line, escaped and truncated.
    Reject(Vec<crate::error::Violation>, String),
}

/// The first string of `message` (depth first, map keys included) holding a character no string
/// field may hold: the value the refusal's log line shows ([`crate::untrusted`]).
fn first_refused_value(message: &DynamicMessage) -> Option<String> {
    fn in_value(value: &prost_reflect::Value) -> Option<String> {
        use prost_reflect::{MapKey, Value};
        match value {
            Value::String(text) => text
                .chars()
                .any(crate::validate::is_forbidden_in_text)
                .then(|| text.clone()),
            Value::Message(message) => first_refused_value(message),
            Value::List(items) => items.iter().find_map(in_value),
            Value::Map(entries) => entries.iter().find_map(|(key, item)| match key {
                MapKey::String(k) if k.chars().any(crate::validate::is_forbidden_in_text) => {
                    Some(k.clone())
                }
                _ => in_value(item),
            }),
            _ => None,
        }
    }
    message.fields().find_map(|(_, value)| in_value(value))
}

/// Checks the gRPC frames of `body` (1-byte compression flag, 4-byte big-endian length, message)
/// as messages of `input`.
fn check_frames(input: &MessageDescriptor, mut body: &[u8]) -> Verdict {
    let mut violations = Vec::new();
    let mut refused = None;
    while !body.is_empty() {
        let Some((&[flag, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
            return Verdict::Pass;
        };
        let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
        if flag != 0 || rest.len() < len {
            // Compressed (our servers accept none) or truncated: the codec answers it.
            return Verdict::Pass;
        }
        let (message, rest) = rest.split_at(len);
        match DynamicMessage::decode(input.clone(), message) {
            Ok(message) => {
                let found = string_field_violations(&message);
                if !found.is_empty() && refused.is_none() {
                    refused = first_refused_value(&message);
                }
                violations.extend(found);
            }
            Err(_) => return Verdict::Pass,
        }
        body = rest;
    }
    if violations.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Reject(violations, refused.unwrap_or_default())
    }
}

/// Adds the string-field guard to a server (`Server::builder().layer(StringGuardLayer::default())`).
#[derive(Debug, Clone, Copy)]
pub struct StringGuardLayer {
    max_request_bytes: usize,
}

impl Default for StringGuardLayer {
    fn default() -> Self {
        Self {
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }
}

impl StringGuardLayer {
    /// A guard that also refuses a request message over `max_message_bytes` (at most 4 MiB,
    /// tonic's own decoding limit: a larger value is that) with RESOURCE_EXHAUSTED
    /// (docs/operations.md, "Security").
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_request_bytes: max_message_bytes.min(MAX_REQUEST_BYTES - 5) + 5,
        }
    }
}

impl<S> Layer<S> for StringGuardLayer {
    type Service = StringGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StringGuardService {
            service: inner,
            max_request_bytes: self.max_request_bytes,
        }
    }
}

/// The service made by [`StringGuardLayer`].
#[derive(Debug, Clone)]
pub struct StringGuardService<S> {
    service: S,
    max_request_bytes: usize,
}

impl<S> Service<http::Request<Body>> for StringGuardService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(input) = input_message(req.uri().path()) else {
            return Box::pin(self.service.call(req));
        };
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.service.clone();
        let mut service = std::mem::replace(&mut self.service, clone);
        let max = self.max_request_bytes;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, max).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    let status = if err.is::<http_body_util::LengthLimitError>() {
                        tracing::info!(path = parts.uri.path(), max, "request refused: too large");
                        Status::with_error_details(
                            tonic::Code::ResourceExhausted,
                            format!("the request is larger than {max} bytes"),
                            tonic_types::ErrorDetails::with_error_info(
                                "MESSAGE_TOO_LARGE",
                                crate::error::ERROR_DOMAIN,
                                std::collections::HashMap::from([(
                                    "max_bytes".to_owned(),
                                    max.to_string(),
                                )]),
                            ),
                        )
                    } else {
                        Status::from_error(err)
                    };
                    return Ok(status.into_http());
                }
            };
            match check_frames(&input, &bytes) {
                Verdict::Reject(violations, value) => {
                    // One line, whatever the request holds: the fields and the first refused
                    // value escaped and truncated (docs/operations.md, "Logs and traces from
                    // untrusted input").
                    let fields = violations
                        .iter()
                        .take(crate::error::MAX_REPORTED_VIOLATIONS)
                        .map(|v| v.field.as_str())
                        .collect::<Vec<_>>()
                        .join(",");
                    tracing::info!(
                        path = parts.uri.path(),
                        count = violations.len(),
                        fields = %untrusted(&fields),
                        value = %untrusted(&value),
                        "request refused: control characters in string fields"
                    );
                    Ok(Status::from(ServiceError::InvalidArgument(violations)).into_http())
                }
                Verdict::Pass => {
                    let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
                    service.call(req).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use sagaflow_proto::order::v1::{OrderLineRequest, PlaceOrderRequest};

    use super::*;

    fn frame(message: &impl prost::Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    fn place(user_id: &str, sku: &str) -> PlaceOrderRequest {
        PlaceOrderRequest {
            request_id: "r".into(),
            user_id: user_id.into(),
            lines: vec![
                OrderLineRequest {
                    sku: "KB-001".into(),
                    quantity: 1,
                },
                OrderLineRequest {
                    sku: sku.into(),
                    quantity: 1,
                },
            ],
            coupon_code: Some("C\u{7}".into()),
            points: 0,
            payment_method: "tok_ok".into(),
        }
    }

    #[test]
    fn every_method_of_every_service_is_known() {
        let input = input_message("/sagaflow.order.v1.OrderService/PlaceOrder").unwrap();
        assert_eq!(input.full_name(), "sagaflow.order.v1.PlaceOrderRequest");
        assert!(input_message("/sagaflow.workflow.v1.SagaAdminService/ResolveStep").is_some());
        assert!(input_message("/grpc.health.v1.Health/Check").is_none());
    }

    #[test]
    fn names_every_offending_field_by_its_path() {
        let input = input_message("/sagaflow.order.v1.OrderService/PlaceOrder").unwrap();
        let Verdict::Reject(violations, value) =
            check_frames(&input, &frame(&place("a\0b", "x\u{1b}")))
        else {
            panic!("expected a rejection");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["user_id", "lines[1].sku", "coupon_code"]);
        assert!(violations[0].description.contains("U+0000"));
        assert_eq!(value, "a\0b");
    }

    #[test]
    fn passes_clean_requests_whitespace_and_what_it_cannot_read() {
        let input = input_message("/sagaflow.order.v1.OrderService/PlaceOrder").unwrap();
        let mut clean = place("alice", "MS-002");
        clean.coupon_code = Some("tab\there\r\n".into());
        assert_eq!(check_frames(&input, &frame(&clean)), Verdict::Pass);
        assert_eq!(check_frames(&input, b""), Verdict::Pass);
        // Truncated, compressed and undecodable bodies are left to the codec.
        let bad = frame(&place("a\0b", "x"));
        assert_eq!(check_frames(&input, &bad[..bad.len() - 1]), Verdict::Pass);
        let mut compressed = bad;
        compressed[0] = 1;
        assert_eq!(check_frames(&input, &compressed), Verdict::Pass);
        assert_eq!(
            check_frames(&input, &[0, 0, 0, 0, 2, 0xff, 0xff]),
            Verdict::Pass
        );
    }
}
