//! What one request may cost, bounded before anything decodes it (docs/operations.md, "Request
//! limits"): a tower layer that reads the request body as it arrives and runs a small
//! wire-format pass over it, counting the elements of every repeated field of the method's input
//! message (nested messages included), and refuses
//!
//! - a repeated field with more elements than its limit ([`MAX_ELEMENTS`], else
//!   [`DEFAULT_MAX_ELEMENTS`]) with INVALID_ARGUMENT and a `google.rpc.BadRequest` naming the
//!   field by its proto path (`lines`, `event.order.lines`), as soon as the element over the
//!   limit arrives: the rest of the body is never read, nothing is decoded;
//! - a body that grows larger than its service's largest legitimate request ([`max_message_bytes`]:
//!   computed from the protos, the element limits and [`crate::validate::MAX_STRING_BYTES`]) or
//!   the server's `--max-message-bytes` with RESOURCE_EXHAUSTED, reason `MESSAGE_TOO_LARGE`.
//!
//! ```text
//!  body chunks ─▶ more than the limit read ─▶ RESOURCE_EXHAUSTED
//!       │
//!       ├─▶ gRPC frame header (5 bytes: flag, length)
//!       │               │
//!       │               ▼
//!       │         tag ─▶ field of the input message?
//!       │            ├─ repeated: count += 1 (packed: elements in the run) ── > limit ─▶ INVALID_ARGUMENT
//!       │            ├─ message that holds repeated fields: descend (counts per instance)
//!       │            └─ anything else: skip its bytes
//!       └─ all read, nothing over ─▶ the next layers and the handler, with the body as it came
//! ```
//!
//! The pass allocates nothing per element: a stack of the messages it is inside (bounded by the
//! nesting of the protos) and one counter per repeated field of each. A body it cannot read
//! (compressed, malformed) is passed on within the size limit and the codec answers it, as
//! [`crate::string_guard`] does. The layer sits before every layer that decodes a request
//! ([`crate::limits::KeyedRateLimitLayer`], [`crate::string_guard`]) and on both the TCP and the
//! in-process path ([`crate::stack`]).

use std::{
    collections::HashMap,
    sync::LazyLock,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use prost::bytes::{Bytes, BytesMut};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use tonic::{Status, body::Body};
use tonic_types::StatusExt as _;
use tower::{Layer, Service};

use crate::{
    ServiceError,
    error::{ERROR_DOMAIN, Violation},
    validate::{MAX_LINES, MAX_STRING_BYTES},
};

/// The element limit of a repeated field that [`MAX_ELEMENTS`] does not name.
pub const DEFAULT_MAX_ELEMENTS: u32 = 100;

/// Most elements per repeated field of a request message, by the field's full name
/// (`package.Message.field`), wherever the message appears. Each is the largest count a
/// legitimate request has: an order has at most [`MAX_LINES`] lines, so do the stock and pricing
/// requests the saga makes for it and the events that carry it. A unit test fails on a repeated
/// field of a request message that is not listed here.
pub const MAX_ELEMENTS: &[(&str, u32)] = &[
    (
        "sagaflow.order.v1.PlaceOrderRequest.lines",
        MAX_LINES as u32,
    ),
    ("sagaflow.order.v1.Order.lines", MAX_LINES as u32),
    (
        "sagaflow.inventory.v1.BatchGetProductsRequest.skus",
        MAX_LINES as u32,
    ),
    (
        "sagaflow.inventory.v1.DeductInventoryRequest.lines",
        MAX_LINES as u32,
    ),
];

/// Smallest per-service message limit, bytes (requests without repeated fields).
const MIN_MESSAGE_BYTES: usize = 16 * 1024;

/// Deepest nesting of messages the size bound and the pass follow (the protos nest 4 deep).
const MAX_DEPTH: usize = 32;

/// The element limit of `field_full_name`.
pub fn max_elements(field_full_name: &str) -> u32 {
    MAX_ELEMENTS
        .iter()
        .find(|(name, _)| *name == field_full_name)
        .map_or(DEFAULT_MAX_ELEMENTS, |(_, n)| *n)
}

/// How the pass treats one field of a message.
#[derive(Debug, Clone)]
enum FieldKind {
    /// A message field whose message holds repeated fields: descend into it (plan index).
    Message(usize),
    /// A packed run of varints (repeated int32, enum, bool, …).
    PackedVarint,
    /// A packed run of fixed-size values of this many bytes.
    PackedFixed(usize),
    /// Nothing to look at inside (strings, bytes, messages without repeated fields).
    Opaque,
}

#[derive(Debug, Clone)]
struct FieldPlan {
    name: String,
    /// Index of its counter in the message's counters, when repeated.
    slot: Option<usize>,
    limit: u32,
    kind: FieldKind,
}

/// The fields of one message type the pass must look at.
#[derive(Debug, Clone, Default)]
struct Plan {
    fields: HashMap<u32, FieldPlan>,
    slots: usize,
}

/// The plans of every message the pass reaches, and the root plan of every method.
#[derive(Debug, Default)]
struct Plans {
    plans: Vec<Plan>,
    /// Request path → (root plan, the service's largest legitimate message in bytes).
    methods: HashMap<String, (usize, usize)>,
    /// Service full name → its largest legitimate message in bytes.
    services: HashMap<String, usize>,
}

impl Plans {
    fn from_pool(pool: &DescriptorPool) -> Self {
        let mut plans = Plans::default();
        let mut by_name: HashMap<String, Option<usize>> = HashMap::new();
        for service in pool.services() {
            let roots: Vec<(String, usize)> = service
                .methods()
                .map(|method| {
                    let path = format!("/{}/{}", service.full_name(), method.name());
                    let root = plans.plan_of(&method.input(), &mut by_name, 0);
                    // A method with nothing to count still gets an (empty) plan: its size limit.
                    let root = root.unwrap_or_else(|| {
                        plans.plans.push(Plan::default());
                        plans.plans.len() - 1
                    });
                    (path, root)
                })
                .collect();
            let largest = service
                .methods()
                .map(|m| size_bound(&m.input(), 0))
                .max()
                .unwrap_or(0);
            let limit = largest
                .saturating_mul(2)
                .max(MIN_MESSAGE_BYTES)
                .checked_next_power_of_two()
                .unwrap_or(usize::MAX);
            for (path, root) in roots {
                plans.methods.insert(path, (root, limit));
            }
            plans.services.insert(service.full_name().to_owned(), limit);
        }
        plans
    }

    /// The plan of `message`, `None` when it holds no repeated field at any depth.
    fn plan_of(
        &mut self,
        message: &MessageDescriptor,
        by_name: &mut HashMap<String, Option<usize>>,
        depth: usize,
    ) -> Option<usize> {
        if let Some(known) = by_name.get(message.full_name()) {
            return *known;
        }
        if depth > MAX_DEPTH {
            return None;
        }
        // Reserve the index first (a message that contains itself then finds it).
        let index = self.plans.len();
        self.plans.push(Plan::default());
        by_name.insert(message.full_name().to_owned(), Some(index));
        let mut plan = Plan::default();
        for field in message.fields() {
            let repeated = field.is_list() || field.is_map();
            let kind = match field.kind() {
                Kind::Message(nested) => {
                    // A map's entries are messages on the wire; they are counted, not entered.
                    let child = if field.is_map() {
                        None
                    } else {
                        self.plan_of(&nested, by_name, depth + 1)
                    };
                    child.map_or(FieldKind::Opaque, FieldKind::Message)
                }
                Kind::String | Kind::Bytes => FieldKind::Opaque,
                Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => FieldKind::PackedFixed(4),
                Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => FieldKind::PackedFixed(8),
                _ => FieldKind::PackedVarint,
            };
            if repeated || matches!(kind, FieldKind::Message(_)) {
                let slot = repeated.then(|| {
                    plan.slots += 1;
                    plan.slots - 1
                });
                plan.fields.insert(
                    field.number(),
                    FieldPlan {
                        name: field.name().to_owned(),
                        slot,
                        limit: max_elements(field.full_name()),
                        kind,
                    },
                );
            }
        }
        if plan.fields.is_empty() {
            self.plans.pop();
            by_name.insert(message.full_name().to_owned(), None);
            return None;
        }
        self.plans[index] = plan;
        Some(index)
    }
}

/// An upper bound of the encoded size of a legitimate `message`: every field present, strings
/// and bytes of twice [`MAX_STRING_BYTES`] (page tokens are hex), repeated fields at their
/// element limits.
fn size_bound(message: &MessageDescriptor, depth: usize) -> usize {
    if depth > MAX_DEPTH {
        return 0;
    }
    message
        .fields()
        .map(|field| {
            let value = match field.kind() {
                Kind::String | Kind::Bytes => 3 + 2 * MAX_STRING_BYTES,
                Kind::Message(nested) => 5 + size_bound(&nested, depth + 1),
                Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => 4,
                Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => 8,
                _ => 10,
            };
            let count = if field.is_list() || field.is_map() {
                max_elements(field.full_name()) as usize
            } else {
                1
            };
            (3 + value).saturating_mul(count)
        })
        .fold(0usize, usize::saturating_add)
}

/// The plans of [`sagaflow_proto::FILE_DESCRIPTOR_SET`]; empty (and logged) if it does not
/// decode, a build problem: requests are then only size-limited by `--max-message-bytes`.
static PLANS: LazyLock<Plans> = LazyLock::new(|| {
    match DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET) {
        Ok(pool) => Plans::from_pool(&pool),
        Err(err) => {
            tracing::error!(error = %err, "the descriptor set does not decode: repeated fields are not counted");
            Plans::default()
        }
    }
});

/// The largest request message of the RPC at `path`, bytes: twice the largest legitimate
/// request of its service (every field present, strings at their limit, repeated fields at
/// theirs), rounded up to a power of two, at least 16 KiB; `None` for a path that is not a
/// sagaflow RPC (health, reflection).
pub fn max_message_bytes(path: &str) -> Option<usize> {
    PLANS.methods.get(path).map(|(_, limit)| *limit)
}

/// The `max_decoding_message_size` of the generated server of `service` (its full name,
/// `sagaflow.order.v1.OrderService`): the same per-service limit as [`max_message_bytes`], so
/// that tonic's codec holds it too (`XServiceServer::new(svc).max_decoding_message_size(..)`);
/// tonic's 4 MiB default for a name that is not a sagaflow service.
pub fn max_decoding_message_size(service: &str) -> usize {
    PLANS
        .services
        .get(service)
        .copied()
        .unwrap_or(crate::limits::DEFAULT_MAX_MESSAGE_BYTES)
}

/// Where the pass stands in one message it is inside.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Inside a message of plan `plan`, until byte `end` of the body; its counters start at
    /// `counts_at`; `via` is the field that led here and its element index.
    Message {
        plan: usize,
        end: usize,
        counts_at: usize,
        via: Option<(usize, u32, Option<u32>)>,
    },
    /// Inside a packed run of varints of field (`plan`, `number`), until `end`; counter
    /// `counter`.
    Packed {
        plan: usize,
        number: u32,
        end: usize,
        counter: usize,
    },
}

/// Why the pass stopped looking. (A message over the size limit is refused by the reader as
/// the bytes arrive, not from its declared length: a field over its limit found in the first
/// bytes of a huge message is INVALID_ARGUMENT naming the field, the more useful answer.)
#[derive(Debug, PartialEq)]
enum Stop {
    /// A field is over its limit.
    Over(Violation),
    /// The body is not something the pass reads (compressed, malformed): the codec answers it.
    Unreadable,
}

/// The wire-format pass over a body that arrives in pieces: [`Scanner::scan`] is given the whole
/// body read so far each time and resumes where it stopped.
#[derive(Debug)]
struct Scanner<'p> {
    plans: &'p Plans,
    root: usize,
    /// Next byte to read.
    pos: usize,
    stack: Vec<Frame>,
    counts: Vec<u32>,
}

/// Reads a varint at `buf[pos..]`: `Ok(Some((value, len)))`, `Ok(None)` when more bytes are
/// needed, `Err` when it is longer than 10 bytes.
fn varint(buf: &[u8], pos: usize) -> Result<Option<(u64, usize)>, Stop> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = buf.get(pos + i) else {
            return Ok(None);
        };
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(Stop::Unreadable)
}

impl<'p> Scanner<'p> {
    fn new(plans: &'p Plans, root: usize) -> Self {
        Self {
            plans,
            root,
            pos: 0,
            stack: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Counts what `buf` (the body read so far) adds; `Err` when the pass stops.
    fn scan(&mut self, buf: &[u8]) -> Result<(), Stop> {
        loop {
            let Some(frame) = self.stack.last().copied() else {
                // Between gRPC messages: a 5-byte header, then a message of the root plan.
                let Some(&[flag, a, b, c, d]) = buf.get(self.pos..self.pos + 5) else {
                    return Ok(());
                };
                let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
                if flag != 0 {
                    return Err(Stop::Unreadable);
                }
                self.pos += 5;
                self.enter(self.root, self.pos + len, None);
                continue;
            };
            match frame {
                Frame::Packed {
                    plan,
                    number,
                    end,
                    counter,
                } => {
                    let upto = end.min(buf.len());
                    if let Some(run) = buf.get(self.pos..upto) {
                        let n = run.iter().filter(|b| **b < 0x80).count();
                        self.pos = upto;
                        self.add(plan, number, counter, u32::try_from(n).unwrap_or(u32::MAX))?;
                    }
                    if self.pos < end {
                        return Ok(());
                    }
                    self.stack.pop();
                }
                Frame::Message {
                    plan,
                    end,
                    counts_at,
                    ..
                } => {
                    if self.pos == end {
                        self.stack.pop();
                        self.counts.truncate(counts_at);
                        continue;
                    }
                    if self.pos > end {
                        return Err(Stop::Unreadable);
                    }
                    if !self.field(buf, plan, end, counts_at)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Enters a message of `plan` that ends at `end`.
    fn enter(&mut self, plan: usize, end: usize, via: Option<(usize, u32, Option<u32>)>) {
        let counts_at = self.counts.len();
        let slots = self.plans.plans.get(plan).map_or(0, |p| p.slots);
        self.counts.resize(counts_at + slots, 0);
        self.stack.push(Frame::Message {
            plan,
            end,
            counts_at,
            via,
        });
    }

    /// Adds `n` elements to counter `counter` of field (`plan`, `number`).
    fn add(&mut self, plan: usize, number: u32, counter: usize, n: u32) -> Result<u32, Stop> {
        let Some(count) = self.counts.get_mut(counter) else {
            return Err(Stop::Unreadable);
        };
        let index = *count;
        *count = count.saturating_add(n);
        let total = *count;
        let field = &self.plans.plans[plan].fields[&number];
        if total > field.limit {
            return Err(Stop::Over(Violation {
                field: self.path(&field.name),
                description: format!("must have at most {} elements", field.limit),
            }));
        }
        Ok(index)
    }

    /// The proto path of field `name` of the innermost message (`event.order.lines`).
    fn path(&self, name: &str) -> String {
        let mut out = String::new();
        for frame in &self.stack {
            if let Frame::Message {
                via: Some((plan, number, index)),
                ..
            } = frame
            {
                let field = &self.plans.plans[*plan].fields[number];
                out.push_str(&field.name);
                if let Some(i) = index {
                    out.push_str(&format!("[{i}]"));
                }
                out.push('.');
            }
        }
        out.push_str(name);
        out
    }

    /// Reads one field of a message of `plan` (counters at `counts_at`) ending at `end`;
    /// `Ok(false)` when more bytes are needed.
    fn field(
        &mut self,
        buf: &[u8],
        plan: usize,
        end: usize,
        counts_at: usize,
    ) -> Result<bool, Stop> {
        let Some((tag, tag_len)) = varint(buf, self.pos)? else {
            return Ok(false);
        };
        let number = u32::try_from(tag >> 3).map_err(|_| Stop::Unreadable)?;
        let wire = tag & 7;
        let at = self.pos + tag_len;
        // The value's length on the wire (after the tag), and for length-delimited values where
        // their bytes start.
        let (value_start, value_len) = match wire {
            0 => match varint(buf, at)? {
                Some((_, n)) => (at, n),
                None => return Ok(false),
            },
            1 => (at, 8),
            5 => (at, 4),
            2 => match varint(buf, at)? {
                Some((len, n)) => (at + n, usize::try_from(len).map_err(|_| Stop::Unreadable)?),
                None => return Ok(false),
            },
            // Groups (deprecated, none in our protos) and invalid wire types.
            _ => return Err(Stop::Unreadable),
        };
        let value_end = value_start.checked_add(value_len).ok_or(Stop::Unreadable)?;
        if value_end > end {
            return Err(Stop::Unreadable);
        }
        if wire != 2 && value_end > buf.len() {
            return Ok(false);
        }
        let Some(field) = self.plans.plans[plan].fields.get(&number) else {
            self.pos = value_end;
            return Ok(true);
        };
        let counter = field.slot.map(|s| counts_at + s);
        let kind = field.kind.clone();
        match (wire, kind, counter) {
            // A packed run of scalars.
            (2, FieldKind::PackedVarint, Some(counter)) => {
                self.pos = value_start;
                self.stack.push(Frame::Packed {
                    plan,
                    number,
                    end: value_end,
                    counter,
                });
            }
            (2, FieldKind::PackedFixed(size), Some(counter)) => {
                self.add(
                    plan,
                    number,
                    counter,
                    u32::try_from(value_len / size).unwrap_or(u32::MAX),
                )?;
                self.pos = value_end;
            }
            // One element of a repeated message that holds repeated fields: count, enter.
            (2, FieldKind::Message(child), Some(counter)) => {
                let index = self.add(plan, number, counter, 1)?;
                self.pos = value_start;
                self.enter(child, value_end, Some((plan, number, Some(index))));
            }
            // A singular message that holds repeated fields: enter.
            (2, FieldKind::Message(child), None) => {
                self.pos = value_start;
                self.enter(child, value_end, Some((plan, number, None)));
            }
            // One element of any other repeated field (unpacked scalars included).
            (_, _, Some(counter)) => {
                self.add(plan, number, counter, 1)?;
                self.pos = value_end;
            }
            (_, _, None) => self.pos = value_end,
        }
        Ok(true)
    }
}

/// The answer to a field over its limit: INVALID_ARGUMENT with a `BadRequest` naming it.
fn over(violation: Violation) -> Status {
    Status::from(ServiceError::InvalidArgument(vec![violation]))
}

/// The answer to a message over `max` bytes: RESOURCE_EXHAUSTED, reason `MESSAGE_TOO_LARGE`.
pub(crate) fn too_large(max: usize) -> Status {
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!("the request message is larger than {max} bytes"),
        tonic_types::ErrorDetails::with_error_info(
            "MESSAGE_TOO_LARGE",
            ERROR_DOMAIN,
            HashMap::from([("max_bytes".to_owned(), max.to_string())]),
        ),
    )
}

/// Adds the count pass and the per-service message limit to a server
/// ([`crate::stack::layers`]).
#[derive(Debug, Clone, Copy)]
pub struct RepeatedLimitLayer {
    max_message_bytes: usize,
}

impl RepeatedLimitLayer {
    /// The pass, with messages also limited to `max_message_bytes` (the server's
    /// `--max-message-bytes`) where that is below the service's own limit.
    pub fn new(max_message_bytes: usize) -> Self {
        Self { max_message_bytes }
    }
}

impl<S> Layer<S> for RepeatedLimitLayer {
    type Service = RepeatedLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RepeatedLimit {
            inner,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

/// The service made by [`RepeatedLimitLayer`].
#[derive(Debug, Clone)]
pub struct RepeatedLimit<S> {
    inner: S,
    max_message_bytes: usize,
}

/// Reads `body` through the pass of `root`: the whole body when nothing stops it (or the pass
/// cannot read it, within `max` bytes of message), else the answer.
async fn read_counted(body: Body, root: usize, max: usize) -> Result<Bytes, Status> {
    let mut scanner = Scanner::new(&PLANS, root);
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut scanning = true;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // Read at most the limit (frame header included); the pass looks at what was read
        // before a body over it is refused, so the answer does not depend on how it arrived.
        let room = max.saturating_add(5).saturating_sub(buf.len());
        let over_limit = data.len() > room;
        buf.extend_from_slice(&data[..data.len().min(room)]);
        if scanning {
            match scanner.scan(&buf) {
                Ok(()) => {}
                Err(Stop::Over(violation)) => return Err(over(violation)),
                Err(Stop::Unreadable) => scanning = false,
            }
        }
        if over_limit {
            return Err(too_large(max));
        }
    }
    Ok(buf.freeze())
}

impl<S> Service<http::Request<Body>> for RepeatedLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(&(root, service_max)) = PLANS.methods.get(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        let max = service_max.min(self.max_message_bytes);
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            match read_counted(body, root, max).await {
                Ok(bytes) => {
                    let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
                    inner.call(req).await
                }
                Err(status) => {
                    tracing::info!(
                        path = parts.uri.path(),
                        code = ?status.code(),
                        fields = ?crate::error::violated_fields(&status),
                        "request refused before decoding"
                    );
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use sagaflow_proto::{
        inventory::v1::BatchGetProductsRequest,
        orchestrator::v1::StartOrderSagaRequest,
        order::v1::{Order, OrderCreatedEvent, OrderLine, OrderLineRequest, PlaceOrderRequest},
    };

    use super::*;

    const PLACE: &str = "/sagaflow.order.v1.OrderService/PlaceOrder";

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// Runs the pass of `path` over `body` fed in pieces of `step` bytes.
    fn scan(path: &str, body: &[u8], step: usize) -> Result<(), Stop> {
        let (root, _) = PLANS.methods[path];
        let mut scanner = Scanner::new(&PLANS, root);
        let mut end = 0;
        while end < body.len() {
            end = (end + step).min(body.len());
            scanner.scan(&body[..end])?;
        }
        Ok(())
    }

    fn lines(n: usize) -> PlaceOrderRequest {
        PlaceOrderRequest {
            request_id: "r".into(),
            user_id: "alice".into(),
            lines: (0..n)
                .map(|i| OrderLineRequest {
                    sku: format!("SKU-{i}"),
                    quantity: 1,
                })
                .collect(),
            ..PlaceOrderRequest::default()
        }
    }

    fn violation(result: Result<(), Stop>) -> Violation {
        match result {
            Err(Stop::Over(v)) => v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn every_repeated_field_of_every_request_has_a_declared_limit() {
        let pool = DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = Vec::new();
        fn walk(m: &MessageDescriptor, depth: usize, seen: &mut Vec<String>) {
            if depth > 8 {
                return;
            }
            for f in m.fields() {
                if (f.is_list() || f.is_map()) && !seen.contains(&f.full_name().to_owned()) {
                    seen.push(f.full_name().to_owned());
                }
                if let Kind::Message(n) = f.kind() {
                    walk(&n, depth + 1, seen);
                }
            }
        }
        for s in pool
            .services()
            .filter(|s| s.full_name().starts_with("sagaflow."))
        {
            for m in s.methods() {
                walk(&m.input(), 0, &mut seen);
            }
        }
        seen.sort();
        let mut declared: Vec<String> = MAX_ELEMENTS.iter().map(|(n, _)| (*n).to_owned()).collect();
        declared.sort();
        assert_eq!(seen, declared);
    }

    #[test]
    fn a_legitimate_request_passes_in_any_pieces() {
        let body = frame(&lines(MAX_LINES).encode_to_vec());
        for step in [1, 2, 3, 7, 64, body.len()] {
            assert_eq!(scan(PLACE, &body, step), Ok(()), "pieces of {step}");
        }
    }

    #[test]
    fn one_element_over_the_limit_is_named_however_the_body_arrives() {
        let body = frame(&lines(MAX_LINES + 1).encode_to_vec());
        for step in [1, 5, 4096] {
            let v = violation(scan(PLACE, &body, step));
            assert_eq!(v.field, "lines");
            assert_eq!(v.description, "must have at most 100 elements");
        }
    }

    #[test]
    fn two_million_empty_elements_stop_the_pass_at_the_limit() {
        // The message the issue measured: ~4 MB of empty lines (tag 0x1a, length 0).
        let mut message = PlaceOrderRequest {
            request_id: "r".into(),
            ..PlaceOrderRequest::default()
        }
        .encode_to_vec();
        message.extend(std::iter::repeat_n([0x1a, 0], 2_000_000).flatten());
        let mut body = vec![0];
        body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        // Only the first kilobyte arrives: the pass answers from it.
        body.extend_from_slice(&message[..1024]);
        let (root, _) = PLANS.methods[PLACE];
        let mut scanner = Scanner::new(&PLANS, root);
        assert_eq!(violation(scanner.scan(&body)).field, "lines");
        assert!(scanner.pos < 1024, "stopped at byte {}", scanner.pos);
    }

    #[test]
    fn nested_fields_are_counted_per_message_and_named_by_path() {
        let order = |n: usize| Order {
            order_id: "o".into(),
            lines: (0..n)
                .map(|i| OrderLine {
                    sku: format!("S{i}"),
                    quantity: 1,
                    unit_price: 1,
                })
                .collect(),
            ..Order::default()
        };
        let start = |n| StartOrderSagaRequest {
            event_id: "e".into(),
            event: Some(OrderCreatedEvent {
                order: Some(order(n)),
                payment_method: "tok_ok".into(),
                sealed_payment_method: String::new(),
            }),
        };
        let path = "/sagaflow.orchestrator.v1.OrchestratorService/StartOrderSaga";
        assert_eq!(scan(path, &frame(&start(100).encode_to_vec()), 3), Ok(()));
        let v = violation(scan(path, &frame(&start(101).encode_to_vec()), 3));
        assert_eq!(v.field, "event.order.lines");
    }

    #[test]
    fn repeated_strings_and_packed_scalars_are_counted() {
        let path = "/sagaflow.inventory.v1.InventoryService/BatchGetProducts";
        let skus = |n: usize| BatchGetProductsRequest {
            skus: (0..n).map(|i| format!("S{i}")).collect(),
        };
        assert_eq!(scan(path, &frame(&skus(100).encode_to_vec()), 1), Ok(()));
        assert_eq!(
            violation(scan(path, &frame(&skus(101).encode_to_vec()), 1)).field,
            "skus"
        );
        // A packed run of varints: counted element by element, across pieces.
        let mut plans = Plans::default();
        plans.plans.push(Plan {
            fields: HashMap::from([(
                1,
                FieldPlan {
                    name: "ids".into(),
                    slot: Some(0),
                    limit: 3,
                    kind: FieldKind::PackedVarint,
                },
            )]),
            slots: 1,
        });
        let packed = |values: &[u8]| {
            let mut m = vec![0x0a, u8::try_from(values.len()).unwrap()];
            m.extend_from_slice(values);
            frame(&m)
        };
        let run = |body: &[u8]| {
            let mut s = Scanner::new(&plans, 0);
            (1..=body.len()).try_for_each(|end| s.scan(&body[..end]))
        };
        assert_eq!(run(&packed(&[1, 0x80, 1, 2])), Ok(()));
        assert_eq!(violation(run(&packed(&[1, 2, 3, 4]))).field, "ids");
    }

    #[tokio::test]
    async fn sizes_and_unreadable_bodies() {
        let max = max_message_bytes(PLACE).unwrap();
        // The largest legitimate PlaceOrder fits, and the limit is far below tonic's 4 MiB.
        let mut big = lines(MAX_LINES);
        for line in &mut big.lines {
            line.sku = "x".repeat(MAX_STRING_BYTES);
        }
        assert!(big.encoded_len() < max, "{} >= {max}", big.encoded_len());
        assert!(max <= 256 * 1024, "{max}");
        assert_eq!(
            max_message_bytes("/sagaflow.point.v1.PointService/GetBalance"),
            Some(MIN_MESSAGE_BYTES)
        );
        assert_eq!(max_message_bytes("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            max_decoding_message_size("sagaflow.order.v1.OrderService"),
            128 * 1024
        );
        // The values docs/operations.md, "Request limits", gives.
        for (path, kib) in [
            (PLACE, 128),
            ("/sagaflow.inventory.v1.InventoryService/GetProduct", 128),
            (
                "/sagaflow.orchestrator.v1.OrchestratorService/StartOrderSaga",
                128,
            ),
            ("/sagaflow.ranking.v1.RankingService/TopProducts", 128),
            ("/sagaflow.coupon.v1.CouponService/GetCoupon", 16),
            ("/sagaflow.payment.v1.PaymentService/GetPayment", 16),
            ("/sagaflow.workflow.v1.SagaAdminService/GetSaga", 16),
            ("/sagaflow.order.v1.OutboxAdminService/ListDeadLetters", 16),
        ] {
            assert_eq!(max_message_bytes(path), Some(kib * 1024), "{path}");
        }
        // A body over the limit is refused as it arrives; one within passes whole; a field over
        // its limit in the first bytes of a huge message is named.
        let (root, _) = PLANS.methods[PLACE];
        let read = |body: Vec<u8>| read_counted(Body::new(Full::new(Bytes::from(body))), root, max);
        let mut huge = lines(1);
        huge.request_id = "r".repeat(max);
        let refused = read(frame(&huge.encode_to_vec())).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let body = frame(&big.encode_to_vec());
        assert_eq!(read(body.clone()).await.unwrap(), body);
        let mut many = lines(MAX_LINES + 1);
        many.request_id = "r".repeat(max);
        let refused = read(frame(&many.encode_to_vec())).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "request_id comes first"
        );
        many.request_id = "r".into();
        many.payment_method = "p".repeat(max);
        let refused = read(frame(&many.encode_to_vec())).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(crate::error::violated_fields(&refused), ["lines"]);
        // Compressed and malformed bodies are left to the codec.
        let mut compressed = frame(&lines(1).encode_to_vec());
        compressed[0] = 1;
        assert_eq!(scan(PLACE, &compressed, 64), Err(Stop::Unreadable));
        assert_eq!(scan(PLACE, &frame(&[0x1b, 0]), 64), Err(Stop::Unreadable));
        assert_eq!(
            scan(PLACE, &frame(&[0x1a, 9, 0]), 64),
            Err(Stop::Unreadable)
        );
    }
}
