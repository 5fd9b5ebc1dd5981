//! Requests for any RPC, built from the descriptor set, and a raw gRPC call: what the tests that
//! enumerate every RPC share (`nul_bytes`, `security`), so that a new RPC or field is covered by
//! them without touching them.

use prost::bytes::{Buf as _, BufMut as _};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
};

/// A request in which every field holds a plausible valid value (so that the NUL is the only
/// thing wrong with it), fresh ids and keys from `serial`.
pub(crate) fn valid_message(
    message: &MessageDescriptor,
    depth: usize,
    serial: &mut u64,
) -> DynamicMessage {
    let mut out = DynamicMessage::new(message.clone());
    match message.full_name() {
        "google.protobuf.Timestamp" => {
            let in_a_day = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 86_400
                // Distinct times, in the order they are made (`created_after` < `created_before`).
                + *serial;
            *serial += 1;
            out.set_field_by_name("seconds", Value::I64(i64::try_from(in_a_day).unwrap()));
            return out;
        }
        "google.protobuf.Duration" => return out,
        _ => {}
    }
    if depth > 8 {
        return out;
    }
    for field in message.fields() {
        if field.is_map() {
            continue;
        }
        let value = valid_value(&field, depth, serial);
        let value = if field.is_list() {
            Value::List(vec![value])
        } else {
            value
        };
        out.set_field(&field, value);
    }
    out
}

fn valid_value(field: &FieldDescriptor, depth: usize, serial: &mut u64) -> Value {
    match field.kind() {
        Kind::String => Value::String(valid_string(field.name(), serial)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(1),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(1),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(1),
        Kind::Bool => Value::Bool(false),
        Kind::Double => Value::F64(1.0),
        Kind::Float => Value::F32(1.0),
        Kind::Bytes => Value::Bytes(Default::default()),
        // A *_COMPLETED status where there is one (a completed order is what RecordOrderCompleted
        // takes), else the first value other than *_UNSPECIFIED.
        Kind::Enum(e) => Value::EnumNumber(
            e.values()
                .find(|v| v.name().ends_with("_COMPLETED"))
                .or_else(|| e.values().find(|v| v.number() != 0))
                .map_or(0, |v| v.number()),
        ),
        Kind::Message(nested) => Value::Message(valid_message(&nested, depth + 1, serial)),
    }
}

/// A valid value for a string field, chosen by its name (the demo seed's data where one exists).
fn valid_string(name: &str, serial: &mut u64) -> String {
    *serial += 1;
    match name {
        n if n.ends_with("_id") && n != "user_id" && n != "request_id" => {
            uuid::Uuid::new_v4().to_string()
        }
        "idempotency_key" | "request_id" => format!("nul-bytes-{serial}"),
        "user_id" => "alice".into(),
        "sku" | "skus" => "KB-001".into(),
        "code" | "coupon_code" => "WELCOME-ALICE".into(),
        "payment_method" => "tok_ok".into(),
        "page_token" => String::new(),
        "definition_name" => "order".into(),
        "operator" => "kim".into(),
        "reason" => "checked".into(),
        "name" => "Keyboard".into(),
        _ => "x".into(),
    }
}

/// Calls the RPC at `path` over `transport` with an encoded request; the answer's bytes.
pub(crate) async fn call<T>(transport: T, path: &str, request: Vec<u8>) -> Result<Vec<u8>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = prost::bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(transport);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))?;
    grpc.unary(
        tonic::Request::new(request),
        PathAndQuery::try_from(path).unwrap(),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A codec for already-encoded protobuf: requests go out as given, answers come back as bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}
