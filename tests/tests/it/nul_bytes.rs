//! A NUL byte in any string field of any request is INVALID_ARGUMENT naming that field, on
//! PostgreSQL exactly as on SQLite, and writes nothing (crates/server/src/validate.rs, "Control
//! characters").
//!
//! The whole system runs in-process twice, once on each store. The cases come from the
//! descriptor set, not from a list: every method of every `sagaflow.*` service, and for each,
//! every string field of its request message, nested and repeated ones included (the first
//! element of a list). Each request carries `"a\0b"` in that one field and a plausible valid value
//! in every other field, is sent as raw protobuf over a generic gRPC call, and must be answered
//! INVALID_ARGUMENT with a `google.rpc.BadRequest` naming the field by its proto path, on both
//! stores; the row count of every table of every service database must not move. A new RPC or
//! field is covered without touching this file.

use std::collections::BTreeMap;

use prost::{
    Message as _,
    bytes::{Buf as _, BufMut as _},
};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};
use sagaflow_cli::dev::{Embedded, EmbeddedConfig, Storage};
use sagaflow_server::error::violated_fields;
use sqlx::AnyPool;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

/// The value every case puts in its field.
const NUL: &str = "a\u{0}b";

/// The databases of the embedded system (`Embedded::start` opens these seven).
const DATABASES: [&str; 7] = [
    "order",
    "coupon",
    "inventory",
    "payment",
    "point",
    "ranking",
    "workflow",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_string_field_of_every_rpc_is_invalid_argument_on_both_stores() {
    let pool = DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET).unwrap();
    let cases = cases(&pool);
    let services: std::collections::BTreeSet<_> = cases
        .iter()
        .map(|c| c.method.parent_service().name().to_owned())
        .collect();
    // Sanity: the enumeration reaches every service (a broken walk must not pass vacuously).
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "CouponService",
            "InventoryService",
            "OrchestratorService",
            "OrderService",
            "OutboxAdminService",
            "PaymentService",
            "PointService",
            "RankingService",
            "SagaAdminService",
        ]
    );
    assert!(cases.len() >= 60, "only {} cases", cases.len());

    let postgres = System::start(true).await;
    let sqlite = System::start(false).await;
    let mut failures = Vec::new();
    for case in &cases {
        let path = format!(
            "/{}/{}",
            case.method.parent_service().full_name(),
            case.method.name()
        );
        let mut codes = Vec::new();
        for system in [&postgres, &sqlite] {
            let before = system.row_counts().await;
            let status = system.call(&path, case.request.encode_to_vec()).await;
            let after = system.row_counts().await;
            let fields = status
                .as_ref()
                .err()
                .map(violated_fields)
                .unwrap_or_default();
            let code = status.as_ref().err().map_or(Code::Ok, Status::code);
            let what = format!("{path} {} on {}", case.field, system.name);
            if code != Code::InvalidArgument || !fields.contains(&case.field) {
                failures.push(format!(
                    "{what}: expected INVALID_ARGUMENT naming {}, got {code:?} {fields:?} {:?}",
                    case.field,
                    status.err().map(|s| s.message().to_owned())
                ));
            }
            if before != after {
                let changed: Vec<_> = after
                    .iter()
                    .filter(|(table, n)| before.get(*table) != Some(*n))
                    .map(|(table, n)| format!("{table}: {:?} -> {n}", before.get(table)))
                    .collect();
                failures.push(format!("{what}: rows written: {changed:?}"));
            }
            codes.push(code);
        }
        if codes[0] != codes[1] {
            failures.push(format!(
                "{path} {}: PostgreSQL answered {:?}, SQLite {:?}",
                case.field, codes[0], codes[1]
            ));
        }
    }
    postgres.stop().await;
    sqlite.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// One request: `field` (a proto path such as `event.order.lines[0].sku`) holds [`NUL`].
struct Case {
    method: MethodDescriptor,
    field: String,
    request: DynamicMessage,
}

/// One step of a field path: the field, and the list index when it is repeated.
#[derive(Clone)]
struct Step {
    field: FieldDescriptor,
    index: Option<usize>,
}

fn path_text(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s.index {
            Some(i) => format!("{}[{i}]", s.field.name()),
            None => s.field.name().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Every (method, string field) of every `sagaflow.*` service in `pool`.
fn cases(pool: &DescriptorPool) -> Vec<Case> {
    let mut serial = 0;
    let mut out = Vec::new();
    for service in pool
        .services()
        .filter(|s| s.full_name().starts_with("sagaflow."))
    {
        for method in service.methods() {
            let mut paths = Vec::new();
            string_paths(&method.input(), &mut Vec::new(), &mut paths);
            for path in paths {
                let mut request = valid_message(&method.input(), 0, &mut serial);
                set_path(&mut request, &path, Value::String(NUL.to_owned()));
                out.push(Case {
                    method: method.clone(),
                    field: path_text(&path),
                    request,
                });
            }
        }
    }
    out
}

/// Collects the path of every string field under `message` (recursing into message fields,
/// the first element of repeated ones; maps have no entry in a valid request, so none here).
fn string_paths(message: &MessageDescriptor, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    if prefix.len() > 8 {
        return;
    }
    for field in message.fields() {
        if field.is_map() {
            continue;
        }
        prefix.push(Step {
            field: field.clone(),
            index: field.is_list().then_some(0),
        });
        match field.kind() {
            Kind::String => out.push(prefix.clone()),
            Kind::Message(nested) => string_paths(&nested, prefix, out),
            _ => {}
        }
        prefix.pop();
    }
}

/// A request in which every field holds a plausible valid value (so that the NUL is the only
/// thing wrong with it), fresh ids and keys from `serial`.
fn valid_message(message: &MessageDescriptor, depth: usize, serial: &mut u64) -> DynamicMessage {
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

/// Sets the field at `path` of `message` (which [`valid_message`] filled, lists included).
fn set_path(message: &mut DynamicMessage, path: &[Step], value: Value) {
    let Some((step, rest)) = path.split_first() else {
        return;
    };
    let slot = message.get_field_mut(&step.field);
    let slot = match step.index {
        Some(i) => &mut slot.as_list_mut().unwrap()[i],
        None => slot,
    };
    if rest.is_empty() {
        *slot = value;
    } else {
        set_path(slot.as_message_mut().unwrap(), rest, value);
    }
}

/// An embedded system on one store, and the databases to count rows in.
struct System {
    name: &'static str,
    _dir: tempfile::TempDir,
    system: Embedded,
    channel: Channel,
    databases: Vec<AnyPool>,
}

impl System {
    async fn start(postgres: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::demo(dir.path().to_path_buf());
        let urls: Vec<String> = if postgres {
            let server = sagaflow_testkit::TestDatabase::postgres("nul").url.clone();
            let prefix = sagaflow_testkit::unique_name("nul");
            config.storage = Storage::Postgres {
                url: server.clone(),
                prefix: prefix.clone(),
            };
            // The embedded system's naming: database `<prefix>_<service>` on the same server.
            let (base, query) = server.split_once('?').unwrap_or((&server, ""));
            let host = base.rsplit_once('/').map_or(base, |(host, _)| host);
            DATABASES
                .iter()
                .map(|db| format!("{host}/{prefix}_{db}?{query}"))
                .collect()
        } else {
            DATABASES
                .iter()
                .map(|db| format!("sqlite://{}", dir.path().join(format!("{db}.db")).display()))
                .collect()
        };
        let system = Embedded::start(config).await.unwrap();
        let channel = Channel::from_shared(system.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        sqlx::any::install_default_drivers();
        let mut databases = Vec::new();
        for url in urls {
            databases.push(
                sqlx::any::AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .unwrap(),
            );
        }
        Self {
            name: if postgres { "PostgreSQL" } else { "SQLite" },
            _dir: dir,
            system,
            channel,
            databases,
        }
    }

    /// Calls the RPC at `path` with an encoded request.
    async fn call(&self, path: &str, request: Vec<u8>) -> Result<Vec<u8>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(request),
            PathAndQuery::try_from(path).unwrap(),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
    }

    /// `database.table` → row count, for every table of every service database.
    async fn row_counts(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for (name, pool) in DATABASES.iter().zip(&self.databases) {
            let list = if self.name == "SQLite" {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            } else {
                "SELECT CAST(tablename AS TEXT) FROM pg_tables WHERE schemaname = 'public'"
            };
            let tables: Vec<String> = sqlx::query_scalar(list).fetch_all(pool).await.unwrap();
            assert!(!tables.is_empty(), "{name} has tables");
            for table in tables {
                let sql = format!("SELECT COUNT(*) FROM \"{table}\"");
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .unwrap();
                out.insert(format!("{name}.{table}"), n);
            }
        }
        out
    }

    async fn stop(self) {
        for pool in &self.databases {
            pool.close().await;
        }
        self.system.shutdown().await;
    }
}

/// A codec for already-encoded protobuf: requests go out as given, answers come back as bytes.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

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
