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

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};
use sagaflow_cli::dev::{Embedded, EmbeddedConfig, Storage};
use sagaflow_server::error::violated_fields;
use sqlx::AnyPool;
use tonic::{Code, Status, transport::Channel};

use crate::rpc::valid_message;

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
        crate::rpc::call(self.channel.clone(), path, request).await
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
