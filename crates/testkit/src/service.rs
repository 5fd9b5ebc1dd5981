//! One service under test: its tonic server on `127.0.0.1:0` over a fresh [`TestDatabase`], the
//! database handle (to check what changed, and what did not) and a connected client. Every
//! service's integration tests start through [`ServiceHarness::start`].

use sagaflow_server::{Db, Migrations, grpc::ServerHandle};
use tonic::{service::RoutesBuilder, transport::Channel};

use crate::{Kind, TestDatabase};

/// A running service with its database and a client of type `C`.
#[derive(Debug)]
pub struct ServiceHarness<C> {
    /// The service's database (migrated).
    pub db: Db,
    /// The server; stop it with [`ServiceHarness::stop`].
    pub server: ServerHandle,
    /// A client connected to the server.
    pub client: C,
    tdb: TestDatabase,
}

impl<C> ServiceHarness<C> {
    /// Opens a fresh `kind` database named after `name` with `migrations`, lets `register` add
    /// the service built on it (named `service_name` for health and reflection), serves it on a
    /// free loopback port and connects a client with `client` (for example
    /// `PointServiceClient::new`).
    ///
    /// # Panics
    /// When the database, the server or the connection cannot be set up.
    pub async fn start(
        kind: Kind,
        name: &str,
        migrations: Migrations,
        service_name: &str,
        register: impl FnOnce(Db, &mut RoutesBuilder),
        client: impl FnOnce(Channel) -> C,
    ) -> Self {
        let tdb = TestDatabase::new(kind, name);
        let (db, server) =
            sagaflow_server::grpc::spawn_service(&tdb.url, migrations, service_name, register)
                .await
                .expect("start the service on its test database");
        let channel = Channel::from_shared(server.url())
            .expect("a valid server url")
            .connect()
            .await
            .expect("connect to the server");
        Self {
            db,
            server,
            client: client(channel),
            tdb,
        }
    }

    /// The backend of the database.
    pub fn kind(&self) -> Kind {
        self.tdb.kind
    }

    /// The test database (its URL, and its temp dir on SQLite).
    pub fn database(&self) -> &TestDatabase {
        &self.tdb
    }

    /// `127.0.0.1:PORT` of the server, for grpcurl.
    pub fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    /// Stops the server (in-flight calls finish) and closes the pool.
    ///
    /// # Panics
    /// When the server failed while running.
    pub async fn stop(self) {
        self.server.shutdown().await.expect("server stops cleanly");
        self.db.close().await;
    }
}

/// Opens the migrated database `kind` twice with `migrations`: the second run applies nothing and
/// leaves every table usable (the migrations test of every service database).
///
/// # Panics
/// When a migration fails or the second run changes the applied set.
pub async fn migrations_run_twice(kind: Kind, name: &str, migrations: Migrations) {
    let tdb = TestDatabase::new(kind, name);
    let config = sagaflow_server::PoolConfig::default();
    let first = Db::connect(&tdb.url, migrations, &config)
        .await
        .expect("first migration run");
    let versions = applied(&first).await;
    first.close().await;
    let second = Db::connect(&tdb.url, migrations, &config)
        .await
        .expect("second migration run");
    assert_eq!(
        applied(&second).await,
        versions,
        "the second run applies nothing"
    );
    assert!(!versions.is_empty(), "migrations were applied");
    // Every service database has the idempotency store, empty after migrating.
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
        .fetch_one(second.pool())
        .await
        .expect("the idempotency_keys table");
    assert_eq!(keys, 0);
    second.close().await;
}

async fn applied(db: &Db) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(db.pool())
        .await
        .expect("read the applied migrations")
}

/// Asserts that `result` is INVALID_ARGUMENT whose `BadRequest` names exactly `field` (`case`
/// says which input it was, in the failure message).
///
/// # Panics
/// When it is not.
pub fn assert_invalid<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    field: &str,
    case: &str,
) {
    let status = result.expect_err(case);
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{case}: {status:?}"
    );
    assert_eq!(
        sagaflow_server::error::violated_fields(&status),
        vec![field.to_owned()],
        "{case}"
    );
}

/// Asserts that `status` has `code` and the `ErrorInfo` reason `reason`.
///
/// # Panics
/// When it does not.
pub fn assert_reason(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        sagaflow_server::error::error_reason(status).as_deref(),
        Some(reason),
        "{status:?}"
    );
}

/// Runs the real grpcurl (see [`crate::grpcurl_json`]) off the async runtime with
/// `-emit-defaults -d BODY` against `addr` and `method` (`package.Service/Method`), and returns
/// the JSON answer.
///
/// # Panics
/// When grpcurl fails or does not answer JSON.
pub async fn grpcurl_call(addr: &str, method: &str, body: &serde_json::Value) -> serde_json::Value {
    let (addr, method, body) = (addr.to_owned(), method.to_owned(), body.to_string());
    tokio::task::spawn_blocking(move || {
        crate::grpcurl_json(&addr, &["-emit-defaults", "-d", &body], &method)
    })
    .await
    .expect("grpcurl task")
}

/// Declares a service's test harness type: a newtype over [`ServiceHarness`] with client type
/// `$client`, dereferencing to it (so `h.client`, `h.db`, `h.addr()` work), with
/// `start(kind, name)` serving the service that `|db| expr` builds (it must have
/// `register(self, &mut RoutesBuilder)`) over `migrations`, named `service_name`. The service's
/// tests add their own helpers in an `impl` block.
///
/// ```ignore
/// sagaflow_testkit::service_harness!(
///     pub(crate) struct Harness(PointServiceClient<Channel>),
///     |db| PointService::new(db), sagaflow_point::migrations(), sagaflow_point::SERVICE_NAME
/// );
/// ```
#[macro_export]
macro_rules! service_harness {
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident($client:ty),
        |$db:ident| $service:expr, $migrations:expr, $service_name:expr $(,)?
    ) => {
        $(#[$meta])*
        $vis struct $name($vis $crate::service::ServiceHarness<$client>);

        impl $name {
            /// Starts the service on a fresh `kind` database named after `name`.
            $vis async fn start(kind: $crate::Kind, name: &str) -> Self {
                Self(
                    $crate::service::ServiceHarness::start(
                        kind,
                        name,
                        $migrations,
                        $service_name,
                        |$db, routes| $service.register(routes),
                        <$client>::new,
                    )
                    .await,
                )
            }
        }

        impl ::std::ops::Deref for $name {
            type Target = $crate::service::ServiceHarness<$client>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl ::std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }
    };
}
