//! Database pools and migrations for PostgreSQL and SQLite, chosen by the URL
//! (docs/architecture.md, "Run modes").
//!
//! Every store in sagaflow is written once, against sqlx's `Any` driver, with `$1`-style
//! placeholders that both backends accept. The portable column types are:
//!
//! | Rust         | PostgreSQL | SQLite  | used for                                   |
//! |--------------|------------|---------|--------------------------------------------|
//! | `i64`        | `BIGINT`   | INTEGER | money (KRW won), counts, unix milliseconds |
//! | `String`     | `TEXT`     | TEXT    | UUIDs, codes, statuses, JSON documents     |
//! | `Vec<u8>`    | `BYTEA`    | BLOB    | encoded protobuf responses                 |
//!
//! (`Any` cannot decode PostgreSQL `UUID`, `JSONB`, `INT4` or `TIMESTAMPTZ`, so migrations avoid
//! them.) Dialect differences live in the migrations (one folder per dialect, same versions) and,
//! where a statement must differ, in a `match db.backend()`.
//!
//! SQLite runs in WAL mode with a busy timeout and foreign keys on. Write transactions begin with
//! `BEGIN IMMEDIATE` ([`Db::begin`]) so that two writers never deadlock on a lock upgrade.
//! A PostgreSQL database named in the URL is created when missing.
//!
//! Keyed commands ([`crate::idempotency::execute`]) do not take a transaction each: the [`Db`]'s
//! group commit runs the commands that arrive together in one transaction, each in its own
//! savepoint (docs/architecture.md, "The service contract", "Group commit"). [`Db::commits`]
//! counts the COMMITs of both kinds of write transaction.

use std::{
    ops::{Deref, DerefMut},
    str::FromStr,
    sync::{
        Arc, Once,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    AnyConnection, AnyPool, ConnectOptions, Connection, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
};

use crate::group_commit::GroupCommit;

/// Which database server a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (production; `postgres://` or `postgresql://` URLs).
    Postgres,
    /// SQLite (the embedded default; `sqlite://` or `sqlite:` URLs).
    Sqlite,
}

impl Backend {
    /// Picks the backend from a database URL.
    ///
    /// # Errors
    /// [`DbError::UnsupportedUrl`] for any other scheme.
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(DbError::UnsupportedUrl(redact(url)))
        }
    }
}

/// The migrations of one database, one embedded [`Migrator`] per dialect
/// (`migrations/<db>/{postgres,sqlite}/`; docs/architecture.md, "Layers").
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
    /// Migrations for SQLite (same versions as `postgres`).
    pub sqlite: &'static Migrator,
}

/// Declares a service's `pub fn migrations() -> Migrations`: its database's migrations, one
/// embedded [`Migrator`] per dialect, read at build time from the two folders given relative to
/// the service crate (`"../../migrations/<db>/postgres"`, `"../../migrations/<db>/sqlite"`, as
/// `sqlx::migrate!` reads them). The calling crate needs `sqlx` (feature `migrate`).
///
/// ```ignore
/// sagaflow_server::service_migrations!(
///     /// The point database's migrations (`migrations/point/{postgres,sqlite}`).
///     postgres: "../../migrations/point/postgres",
///     sqlite: "../../migrations/point/sqlite",
/// );
/// ```
#[macro_export]
macro_rules! service_migrations {
    ($(#[$meta:meta])* postgres: $postgres:literal, sqlite: $sqlite:literal $(,)?) => {
        $(#[$meta])*
        pub fn migrations() -> $crate::Migrations {
            static POSTGRES: ::sqlx::migrate::Migrator = ::sqlx::migrate!($postgres);
            static SQLITE: ::sqlx::migrate::Migrator = ::sqlx::migrate!($sqlite);
            $crate::Migrations {
                postgres: &POSTGRES,
                sqlite: &SQLITE,
            }
        }
    };
}

/// How much of each SQLite file is memory-mapped (`PRAGMA mmap_size`): 256 MiB.
const SQLITE_MMAP_BYTES: u64 = 256 * 1024 * 1024;

/// Pool settings. Defaults work on a laptop.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most open connections. Default 16 for PostgreSQL; SQLite uses at most this many, default 4
    /// (writes are serialized by SQLite anyway).
    pub max_connections: Option<u32>,
    /// How long a caller waits for a free connection, milliseconds. Default 10000.
    pub acquire_timeout_ms: u64,
    /// SQLite busy timeout, milliseconds. Default 10000.
    pub sqlite_busy_timeout_ms: u64,
    /// SQLite `synchronous` pragma: `FULL` (default: every commit is on disk) or `NORMAL`
    /// (a commit survives a process crash but may be lost on power loss).
    pub sqlite_synchronous: SqliteSynchronous,
    /// Group commit: most keyed commands in one transaction (docs/architecture.md, "Group
    /// commit"). Default [`DEFAULT_GROUP_COMMIT_MAX_BATCH`] (64); 0 counts as 1. A batch never
    /// waits to fill up: it takes what is queued when the previous one ends.
    pub group_commit_max_batch: usize,
    /// Group commit: how many writers run batches side by side, each on one connection of the
    /// pool it holds. Default 1 on both backends. More than one lets PostgreSQL commit batches
    /// in parallel (a key always goes to the same writer), at the price of row locks held
    /// across batches: two batches that lock the same rows in opposite orders deadlock until
    /// PostgreSQL aborts one command (UNAVAILABLE, retried by its caller). On SQLite more than
    /// one only queue on the write lock. At most `max_connections − 1` (each writer holds a
    /// connection between batches; one is left for reads; with `max_connections` 1 the one
    /// writer takes it for each batch and gives it back).
    pub group_commit_writers: Option<usize>,
}

/// The default of [`PoolConfig::group_commit_max_batch`]: most commands in one transaction.
pub const DEFAULT_GROUP_COMMIT_MAX_BATCH: usize = 64;

/// SQLite durability setting (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    /// fsync the WAL on every commit.
    #[default]
    Full,
    /// fsync only at checkpoints: crash-safe for the process, not for power loss.
    Normal,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout_ms: 10_000,
            sqlite_busy_timeout_ms: 10_000,
            sqlite_synchronous: SqliteSynchronous::Full,
            group_commit_max_batch: DEFAULT_GROUP_COMMIT_MAX_BATCH,
            group_commit_writers: None,
        }
    }
}

/// Errors opening or migrating a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL's scheme is neither PostgreSQL nor SQLite.
    #[error("unsupported database URL {0:?}: use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The server could not be reached or refused the connection, or the SQLite file cannot be
    /// opened as a database. One line: the cause once (not the driver's chain of the same text)
    /// and what to do.
    #[error("cannot open {url}: {message}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// The cause and a hint.
        message: String,
    },
    /// A migration failed.
    #[error("migrating {url} failed: {source}")]
    Migrate {
        /// The URL with any password removed.
        url: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// A connection pool to one service's database plus the backend it talks to, its group commit
/// of keyed commands and its commit counter.
///
/// Cloning is cheap (the pool, the group commit and the counter are reference-counted).
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    commits: Arc<AtomicU64>,
    group_commit: Arc<GroupCommit>,
}

/// A write transaction on a [`Db`] ([`Db::begin`]). Use it as the connection (`&mut *tx`, or
/// `&mut tx` where a `&mut AnyConnection` is expected); [`Tx::commit`] commits it (counted in
/// [`Db::commits`]); dropping it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Any>,
    commits: Arc<AtomicU64>,
}

impl Tx {
    /// Commits the transaction and counts the commit in [`Db::commits`].
    ///
    /// # Errors
    /// The driver's error; the transaction is then rolled back (on a lost connection its fate
    /// is unknown).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Rolls the transaction back.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.inner
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }
}

static INSTALL_DRIVERS: Once = Once::new();

impl Db {
    /// Opens a pool to `url`, creating the database (PostgreSQL) or file (SQLite) when missing,
    /// and runs the migrations for its dialect.
    ///
    /// # Errors
    /// [`DbError::UnsupportedUrl`], [`DbError::Connect`] when the server is unreachable,
    /// [`DbError::Migrate`] when a migration fails or the database holds a newer schema.
    pub async fn connect(
        url: &str,
        migrations: Migrations,
        config: &PoolConfig,
    ) -> Result<Self, DbError> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::from_url(url)?;
        let connect_err = |error: sqlx::Error| DbError::Connect {
            url: redact(url),
            message: describe_open_error(backend, &error),
        };
        let url = match backend {
            Backend::Postgres => {
                create_postgres_database_if_missing(url)
                    .await
                    .map_err(connect_err)?;
                url.to_owned()
            }
            Backend::Sqlite => {
                // Owner-only from the first byte (docs/operations.md, "Files and permissions"):
                // the file is made 0600 before SQLite opens it, and SQLite gives its `-wal` and
                // `-shm` files the database file's mode.
                restrict_sqlite_files(url).map_err(|err| connect_err(sqlx::Error::Io(err)))?;
                sqlite_url_with_create(url)
            }
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(connect_err)?
            .disable_statement_logging();
        let busy = config.sqlite_busy_timeout_ms;
        let synchronous = match config.sqlite_synchronous {
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Normal => "NORMAL",
        };
        let max = config.max_connections.unwrap_or(match backend {
            Backend::Postgres => 16,
            Backend::Sqlite => 4,
        });
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(max.max(1))
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms));
        if backend == Backend::Sqlite {
            pool_options = pool_options.after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // mmap: pages are read from the mapping instead of by a read system call
                    // each (measured with `sagaflow bench`, docs/operations.md, "Performance");
                    // only the pages touched count in the resident set.
                    let pragmas = format!(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {busy}; \
                         PRAGMA foreign_keys = ON; PRAGMA synchronous = {synchronous}; \
                         PRAGMA mmap_size = {SQLITE_MMAP_BYTES};"
                    );
                    conn.execute(sqlx::AssertSqlSafe(pragmas)).await?;
                    Ok(())
                })
            });
        }
        if backend == Backend::Sqlite {
            // One connection first, with the same pragmas: a file that is not a database, or
            // cannot be created, fails here at once instead of in the pool's retry loop until
            // the acquire timeout.
            let mut probe = sqlx::AnyConnection::connect_with(&options)
                .await
                .map_err(connect_err)?;
            let pragmas = format!(
                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {busy}; \
                 PRAGMA foreign_keys = ON; PRAGMA synchronous = {synchronous};"
            );
            probe
                .execute(sqlx::AssertSqlSafe(pragmas))
                .await
                .map_err(connect_err)?;
            probe.close().await.map_err(connect_err)?;
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        if backend == Backend::Sqlite {
            // `-wal`/`-shm` left by an older version with a wider mode.
            restrict_sqlite_files(&url).map_err(|err| connect_err(sqlx::Error::Io(err)))?;
        }
        let migrator = match backend {
            Backend::Postgres => migrations.postgres,
            Backend::Sqlite => migrations.sqlite,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| DbError::Migrate {
                url: redact(&url),
                source,
            })?;
        let commits = Arc::new(AtomicU64::new(0));
        let group_commit = Arc::new(GroupCommit::new(
            pool.clone(),
            backend,
            commits.clone(),
            config.group_commit_max_batch,
            // Each writer holds a connection: leave at least one for reads and plain
            // transactions (a pool of one lends it to the writer per batch only).
            config
                .group_commit_writers
                .unwrap_or(1)
                .min(usize::try_from(max.saturating_sub(1)).unwrap_or(1)),
            max > 1,
        ));
        Ok(Self {
            pool,
            backend,
            commits,
            group_commit,
        })
    }

    /// The backend this pool talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for reads outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A connection of the pool, for a read outside a transaction (a query RPC).
    ///
    /// # Errors
    /// The driver's error as a [`crate::ServiceError`] (UNAVAILABLE when no connection is free
    /// within the acquire timeout or the server is gone).
    pub async fn connection(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, crate::ServiceError> {
        Ok(self.pool.acquire().await?)
    }

    /// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite (takes the write lock at once, so
    /// read-then-write transactions cannot deadlock), `BEGIN` on PostgreSQL.
    ///
    /// # Errors
    /// The driver's error when no connection is free within the acquire timeout or the server
    /// is gone.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let inner = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx {
            inner,
            commits: self.commits.clone(),
        })
    }

    /// How many write transactions committed on this database through this process's
    /// plumbing: the [`Tx`]s of [`Db::begin`] and the batches of the group commit (one per
    /// batch, however many commands it holds). Statements run outside a transaction (on
    /// [`Db::pool`]) are not counted. A benchmark divides it by the orders it placed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// How many keyed commands wait for the group commit right now (queued, not yet taken into
    /// a batch).
    pub fn queued_commands(&self) -> usize {
        self.group_commit.queued()
    }

    /// The group commit of keyed commands ([`crate::idempotency`]).
    pub(crate) fn group_commit(&self) -> &GroupCommit {
        &self.group_commit
    }

    /// Closes the pool, waiting for connections in use to be returned (the group commit ends
    /// the batch it runs, returns its connection and refuses later commands with UNAVAILABLE).
    pub async fn close(&self) {
        // Marked closed at once, so no batch takes another connection; then the group
        // commit's connections come back once their batches end.
        let closing = self.pool.close();
        self.group_commit.release().await;
        closing.await;
    }
}

/// Current wall-clock time as unix milliseconds (the portable timestamp column type).
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Converts unix milliseconds to a protobuf timestamp.
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to unix milliseconds (saturating).
pub fn ms_from_timestamp(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// Whether an sqlx error is a unique-constraint violation (both backends).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db
                    .code()
                    .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
        }
        _ => false,
    }
}

/// For an error the database raised because of a value the request carried, a description of it
/// for the client (naming no SQL, no value); `None` for any other error.
///
/// - PostgreSQL: every data exception, SQLSTATE class 22 (22021 `character_not_in_repertoire`,
///   the U+0000 of a `TEXT` value; 22P05 `untranslatable_character`; 22001
///   `string_data_right_truncation`; 22003 `numeric_value_out_of_range`; 22P02
///   `invalid_text_representation`; …);
/// - SQLite: `SQLITE_TOOBIG` (18), a string or blob over the size limit.
///
/// Constraint violations (class 23) are not here: a handler that expects one maps it itself,
/// and an unexpected one is a bug.
pub fn bad_data_description(err: &sqlx::Error) -> Option<&'static str> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code = db.code()?;
    // SQLSTATEs are five characters; SQLite's result codes are at most four digits.
    match code.as_ref() {
        "22021" | "22P05" => Some("contains a character the database cannot store"),
        "22001" | "18" => Some("holds a value too long to store"),
        "22003" => Some("holds a number out of the stored range"),
        c if c.len() == 5 && c.starts_with("22") => Some("holds a value the database cannot store"),
        _ => None,
    }
}

/// Whether an sqlx error is worth retrying (pool timeout, I/O, lock contention, serialization
/// failure, server shutting down) rather than a bug.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // PostgreSQL: serialization failure, deadlock, admin shutdown, cannot connect now.
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
            matches!(
                code,
                "40001" | "40P01" | "57P01" | "57P03" | "5" | "6" | "517" | "262"
            ) || db.message().contains("database is locked")
        }
        _ => false,
    }
}

/// What stands in for a removed password in [`redact`]'s output.
const REDACTED: &str = "***";

/// Removes every password from a database URL for logs, errors and printed output
/// (docs/operations.md, "Secrets and card tokens"). Each form libpq and sqlx accept:
///
/// | form                                   | becomes                              |
/// |----------------------------------------|--------------------------------------|
/// | `postgres://u:pw@h/db`                 | `postgres://u:***@h/db`              |
/// | `postgres://u@h/db?password=pw&x=1`    | `postgres://u@h/db?password=***&x=1` |
/// | `…&sslpassword=pw` (any key naming a password, also percent-encoded: `pass%77ord`) | `…&sslpassword=***` |
/// | `host=h user=u password='p w'` (key=value conninfo, quoted or not) | `host=h user=u password=***` |
/// | `sqlite:…`                             | unchanged (no credentials)            |
///
/// The password itself is never parsed for meaning: in the userinfo everything between the
/// first `:` and the last `@` before the path goes (a raw `@` or `%40` in it included).
pub fn redact(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.to_owned();
    }
    let Some(scheme_end) = url.find("://") else {
        return redact_conninfo(url);
    };
    let rest_start = scheme_end + 3;
    // The authority ends at the first `/`, `?` or `#` after the last `@` (a password may hold
    // `/`, `?` or `#` only percent-encoded, but a raw `@` is tolerated by the parsers).
    let rest = &url[rest_start..];
    let query_start = rest.find('?');
    let authority_scope = &rest[..query_start.unwrap_or(rest.len())];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    let after_userinfo = match authority_scope.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            at
        }
        None => 0,
    };
    match query_start {
        Some(q) => {
            out.push_str(&rest[after_userinfo..=q]);
            let (query, fragment) = match rest[q + 1..].split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (&rest[q + 1..], None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if names_a_password(key) => format!("{key}={REDACTED}"),
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        None => out.push_str(&rest[after_userinfo..]),
    }
    out
}

/// Whether a URL query key or conninfo keyword (percent-decoded, any case) names a password:
/// `password`, `sslpassword` and any other key containing the word.
fn names_a_password(key: &str) -> bool {
    let decoded = percent_decode_lossy(key.trim());
    decoded.to_ascii_lowercase().contains("password")
}

/// `%XX` sequences decoded (`+` kept: libpq does not read it as a space in keys); an invalid
/// sequence is kept as written.
fn percent_decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(hi), Some(lo)) = (hex(hi), hex(lo))
        {
            // Two hex digits: at most 255.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The key=value (libpq "conninfo") form: `host=h password=pw`, values quoted with `'…'` and
/// `\'` / `\\` escapes or bare up to the next blank; blanks around `=` allowed. Any text that
/// is not in that shape is kept, but a value after a password keyword is always replaced.
fn redact_conninfo(conninfo: &str) -> String {
    let chars: Vec<char> = conninfo.chars().collect();
    let mut out = String::with_capacity(conninfo.len());
    let mut i = 0;
    while i < chars.len() {
        // Blanks between pairs.
        if chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The keyword.
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        out.push_str(&key);
        // Blanks and the `=`.
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        if j >= chars.len() || chars[j] != '=' {
            // Not a pair: keep what was read and go on.
            continue;
        }
        out.extend(&chars[i..=j]);
        i = j + 1;
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        // The value.
        let value_start = i;
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = i.min(chars.len());
        }
        if names_a_password(&key) {
            out.push_str(REDACTED);
        } else {
            out.extend(&chars[value_start..i]);
        }
    }
    out
}

/// The cause of a failed open, once, with what to do: the driver's own message (its error chain
/// repeats the same text), and a hint for the causes a user can fix.
fn describe_open_error(backend: Backend, error: &sqlx::Error) -> String {
    let (cause, code) = match error {
        sqlx::Error::Database(db) => (
            db.message().to_owned(),
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
        ),
        sqlx::Error::Io(io) => (io.to_string(), String::new()),
        other => {
            // The innermost cause carries the text; the outer ones repeat it.
            let mut deepest: &dyn std::error::Error = other;
            while let Some(inner) = deepest.source() {
                deepest = inner;
            }
            (deepest.to_string(), String::new())
        }
    };
    let hint = match backend {
        // SQLite result codes: 26 NOTADB, 14 CANTOPEN, 8 READONLY, 10 IOERR, 11 CORRUPT.
        Backend::Sqlite if code == "26" || code == "11" => {
            "the file is not a SQLite database (corrupt, or another kind of file): move it away, \
             or pass another --data-dir"
        }
        Backend::Sqlite if code == "14" => {
            "the file cannot be created or opened: check that its directory exists and is \
             writable (--data-dir)"
        }
        Backend::Sqlite if code == "8" || code == "10" => {
            "the file or its directory is read-only: pass a writable --data-dir"
        }
        Backend::Sqlite => "check --data-dir / --database-url",
        Backend::Postgres if matches!(error, sqlx::Error::Io(_)) => {
            "is PostgreSQL running and reachable at that address? check --database-url"
        }
        Backend::Postgres => "check --database-url (host, port, user, password, database)",
    };
    format!("{cause}; {hint}")
}

/// Creates a missing SQLite file of `url` with mode 0600 and tightens the file and its `-wal` and
/// `-shm` to 0600 (`crate::files`).
fn restrict_sqlite_files(url: &str) -> std::io::Result<()> {
    let Some([db, wal, shm]) = crate::files::sqlite_files(url) else {
        return Ok(());
    };
    // A file that cannot be created here (a missing or read-only directory) is left to SQLite,
    // whose error says what is wrong; the mode is checked once it opened.
    if crate::files::create_private(&db).is_err() {
        return Ok(());
    }
    crate::files::tighten(&wal)?;
    crate::files::tighten(&shm)
}

fn sqlite_url_with_create(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Connects to the server's `postgres` database and creates the URL's database when missing.
/// Two processes racing to create it are fine: "already exists" counts as success.
async fn create_postgres_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options
        .database("postgres")
        .disable_statement_logging()
        .connect()
        .await?;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await?;
    if exists.is_none() {
        let quoted = name.replace('"', "\"\"");
        let create = format!("CREATE DATABASE \"{quoted}\"");
        match admin.execute(sqlx::AssertSqlSafe(create)).await {
            Ok(_) => {}
            // 42P04 duplicate_database; 23505 when two creators race on pg_database's index.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() {
        assert_eq!(
            Backend::from_url("postgres://x/y").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("sqlite://a.db").ok(),
            Some(Backend::Sqlite)
        );
        assert!(Backend::from_url("mysql://x").is_err());
    }

    #[test]
    fn redact_hides_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn redact_userinfo_forms() {
        assert_eq!(
            redact("postgresql://u:secret@h:5432/db?sslmode=disable"),
            "postgresql://u:***@h:5432/db?sslmode=disable"
        );
        // Percent-encoded, and a raw `@` inside the password.
        assert_eq!(
            redact("postgres://u:p%40ss%3Aw@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        // Empty user; no database part; a user with no password stays as is.
        assert_eq!(redact("postgres://:secret@h"), "postgres://:***@h");
        assert_eq!(redact("postgres://h/db?x=1"), "postgres://h/db?x=1");
        // An `@` in the query is not the userinfo's.
        assert_eq!(
            redact("postgres://h/db?application_name=a@b&password=secret"),
            "postgres://h/db?application_name=a@b&password=***"
        );
    }

    #[test]
    fn redact_query_forms() {
        assert_eq!(
            redact("postgres://u@h/db?password=secret"),
            "postgres://u@h/db?password=***"
        );
        assert_eq!(
            redact("postgres://u@h/db?sslmode=disable&password=secret&x=1"),
            "postgres://u@h/db?sslmode=disable&password=***&x=1"
        );
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&sslpassword=secret"),
            "postgres://u@h/db?sslmode=require&sslpassword=***"
        );
        // Percent-encoded key (`%77` is `w`), any case, and a fragment kept.
        assert_eq!(
            redact("postgres://u@h/db?pass%77ord=secret#f"),
            "postgres://u@h/db?pass%77ord=***#f"
        );
        assert_eq!(
            redact("postgres://u@h/db?PASSWORD=secret"),
            "postgres://u@h/db?PASSWORD=***"
        );
        // Both places at once.
        assert_eq!(
            redact("postgres://u:one@h/db?password=two"),
            "postgres://u:***@h/db?password=***"
        );
    }

    #[test]
    fn redact_conninfo_forms() {
        assert_eq!(
            redact("host=h user=u password=secret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            redact("host=h password = 'se cr\\'et' dbname=d"),
            "host=h password = *** dbname=d"
        );
        assert_eq!(redact("password=secret"), "password=***");
        assert_eq!(redact("mysql-ish thing"), "mysql-ish thing");
    }

    #[test]
    fn redact_leaves_sqlite_alone() {
        for url in [
            "sqlite:a.db",
            "sqlite://data/order.db?mode=rwc",
            "sqlite::memory:",
        ] {
            assert_eq!(redact(url), url);
        }
        for url in [
            "postgres://u:secret@h/db?password=secret",
            "host=h password='secret'",
            "postgres://u:secret@h/db?%70assword=secret",
        ] {
            assert!(!redact(url).contains("secret"), "{url} -> {}", redact(url));
        }
    }

    #[test]
    fn timestamps_round_trip() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(ms_from_timestamp(&timestamp_from_ms(ms)), ms);
        }
    }
}
