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
    service_name: String,
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
        Self::start_on(tdb, migrations, service_name, register, client).await
    }

    /// Like [`ServiceHarness::start`] over an existing database `tdb` (for example the one a
    /// stopped harness gave back with [`ServiceHarness::into_database`]: the service's restart).
    ///
    /// # Panics
    /// When the database, the server or the connection cannot be set up.
    pub async fn start_on(
        tdb: TestDatabase,
        migrations: Migrations,
        service_name: &str,
        register: impl FnOnce(Db, &mut RoutesBuilder),
        client: impl FnOnce(Channel) -> C,
    ) -> Self {
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
            service_name: service_name.to_owned(),
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

    /// Calls `method` of the service (`"GetCoupon"`) through the real grpcurl with
    /// `-emit-defaults -d BODY` ([`grpcurl_call`]) and returns the JSON answer.
    ///
    /// # Panics
    /// When grpcurl fails or does not answer JSON.
    pub async fn grpcurl(&self, method: &str, body: serde_json::Value) -> serde_json::Value {
        let method = format!("{}/{method}", self.service_name);
        grpcurl_call(&self.addr(), &method, &body).await
    }

    /// Stops the server (in-flight calls finish) and closes the pool.
    ///
    /// # Panics
    /// When the server failed while running.
    pub async fn stop(self) {
        drop(self.into_database().await);
    }

    /// Stops the server and closes the pool like [`ServiceHarness::stop`], and gives back the
    /// database, to start the service again over it with [`ServiceHarness::start_on`].
    ///
    /// # Panics
    /// When the server failed while running.
    pub async fn into_database(self) -> TestDatabase {
        self.server.shutdown().await.expect("server stops cleanly");
        self.db.close().await;
        self.tdb
    }

    /// Every row `sql` selects (no parameters), for snapshots of a table.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn rows<T>(&self, sql: &'static str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        sqlx::query_as(sql)
            .fetch_all(self.db.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The row `sql` selects with `$1` bound to `key`, if any.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn row<T>(&self, sql: &'static str, key: &str) -> Option<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        sqlx::query_as(sql)
            .bind(key)
            .fetch_optional(self.db.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one value `sql` selects with `$1` bound to `key`, if there is a row.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn value<T>(&self, sql: &'static str, key: &str) -> Option<T>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + Unpin,
    {
        self.row::<(T,)>(sql, key).await.map(|(value,)| value)
    }

    /// The number of rows of each of `tables`, in that order.
    ///
    /// # Panics
    /// When a query fails.
    pub async fn table_counts<const N: usize>(&self, tables: [&'static str; N]) -> [i64; N] {
        let mut out = [0; N];
        for (count, table) in out.iter_mut().zip(tables) {
            *count = count_rows(&self.db, table).await;
        }
        out
    }

    /// Every stored idempotency key, in order (the table every service database has).
    pub async fn idempotency_keys(&self) -> Vec<String> {
        self.rows::<(String,)>(
            "SELECT idempotency_key FROM idempotency_keys ORDER BY idempotency_key",
        )
        .await
        .into_iter()
        .map(|(key,)| key)
        .collect()
    }
}

/// The number of rows of `table` in `db`.
///
/// # Panics
/// When the query fails.
pub async fn count_rows(db: &Db, table: &'static str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
        .fetch_one(db.pool())
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
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

/// Asserts that `result` is INVALID_ARGUMENT whose `BadRequest` names exactly `fields` (one
/// field, `"sku"`, or several in order, `&["a", "b"][..]`; `case` says which input it was, in the
/// failure message).
///
/// # Panics
/// When it is not.
pub fn assert_invalid<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    fields: impl Fields,
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
        fields.fields(),
        "{case}"
    );
}

/// The fields an invalid request must name: one (`"sku"`) or several (`&["a", "b"]`).
pub trait Fields {
    /// The field paths, in the order the rejection lists them.
    fn fields(&self) -> Vec<String>;
}

impl Fields for &str {
    fn fields(&self) -> Vec<String> {
        vec![(*self).to_owned()]
    }
}

impl Fields for &[&str] {
    fn fields(&self) -> Vec<String> {
        self.iter().map(|f| (*f).to_owned()).collect()
    }
}

impl Fields for Vec<&str> {
    fn fields(&self) -> Vec<String> {
        self.as_slice().fields()
    }
}

/// Sends every request of `cases` with `send` and asserts that each is INVALID_ARGUMENT whose
/// `BadRequest` names exactly its fields, and that `snapshot` (every row the service keeps) is
/// the same after each as before the first: an invalid input writes nothing
/// (docs/architecture.md, "The service contract").
///
/// # Panics
/// When a request is accepted, rejected otherwise, names other fields or changes a row.
pub async fn assert_each_invalid<R, F, S, Call, CallFut, Snap, SnapFut>(
    cases: Vec<(R, F)>,
    mut send: Call,
    mut snapshot: Snap,
) where
    R: std::fmt::Debug,
    F: Fields,
    S: PartialEq + std::fmt::Debug,
    Call: FnMut(R) -> CallFut,
    CallFut: std::future::Future<Output = Result<(), tonic::Status>>,
    Snap: FnMut() -> SnapFut,
    SnapFut: std::future::Future<Output = S>,
{
    let before = snapshot().await;
    for (request, fields) in cases {
        let case = format!("{request:?}");
        let status = send(request)
            .await
            .expect_err(&format!("{case} must be rejected"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{case}: {status:?}"
        );
        assert_eq!(
            sagaflow_server::error::violated_fields(&status),
            fields.fields(),
            "{case}: {status:?}"
        );
        assert_eq!(snapshot().await, before, "{case} changed a row");
    }
}

/// Declares `enum $name`, one variant per request type of a service's client `$client`, with
/// `async fn send(self, &$client) -> Result<(), tonic::Status>` calling the named method on a
/// clone of the client (the answer dropped): the list of calls [`assert_each_invalid`] sends.
/// The calling crate needs `tonic`.
///
/// ```ignore
/// sagaflow_testkit::rpc_calls!(enum Call on PointServiceClient<Channel> {
///     Get(GetBalanceRequest) => get_balance, Grant(GrantPointsRequest) => grant_points,
/// });
/// ```
#[macro_export]
macro_rules! rpc_calls {
    (
        $(#[$meta:meta])* $vis:vis enum $name:ident on $client:ty {
            $($variant:ident($request:ty) => $method:ident),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis enum $name {
            $($variant($request)),+
        }

        impl $name {
            /// Sends the request on a clone of `client` and drops the answer.
            $vis async fn send(self, client: &$client) -> Result<(), ::tonic::Status> {
                let mut client = client.clone();
                match self {
                    $(Self::$variant(request) => client.$method(request).await.map(drop)),+
                }
            }
        }
    };
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
/// `start(kind, name)` serving `$service::new(db)` (it must have
/// `register(self, &mut RoutesBuilder)`) over the service crate's `migrations()`, named its
/// `SERVICE_NAME`. The service's tests add their own helpers in an `impl` block.
///
/// ```ignore
/// sagaflow_testkit::service_harness!(
///     pub(crate) struct Harness(PointServiceClient<Channel>), sagaflow_point, PointService
/// );
/// ```
#[macro_export]
macro_rules! service_harness {
    (
        $(#[$meta:meta])* $vis:vis struct $name:ident($client:ty), $krate:ident, $service:ident $(,)?
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
                        $krate::migrations(),
                        $krate::SERVICE_NAME,
                        |db, routes| $service::new(db).register(routes),
                        <$client>::new,
                    )
                    .await,
                )
            }

            /// Stops the server and closes the pool ([`ServiceHarness::stop`]).
            #[allow(dead_code)]
            $vis async fn stop(self) {
                self.0.stop().await
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
