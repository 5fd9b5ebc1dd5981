//! Configuration shared by every process: clap flags, each with a `SAGAFLOW_*` environment variable
//! (12-factor; docs/operations.md, "Running") and a default that works on a laptop.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    access::{AccessPolicy, AdminTokens, DEFAULT_INTERNAL_IDENTITIES},
    db::{PoolConfig, SqliteSynchronous},
    end_users::UserVerifier,
    faults::FaultConfig,
    limits::LimitArgs,
    retention::{
        DEFAULT_IDEMPOTENCY_MS, DEFAULT_INBOX_MS, DEFAULT_INTERVAL_MS, DEFAULT_SAGAS_MS,
        MAX_BATCH_ROWS, RetentionConfig,
    },
    tls::{Tls, TlsArgs},
};

/// Where a server listens.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to bind; loopback unless told otherwise.
    #[arg(long, env = "SAGAFLOW_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
}

/// Database connection settings. Its `Debug` shows the URL with any password removed
/// ([`crate::db::redact`]).
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: `postgres://user@host:5432/db` or `sqlite://path/to/file.db`. Default: a
    /// SQLite file named after the service under the data directory.
    #[arg(long, env = "SAGAFLOW_DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL only: a file holding the password of the URL's user (one line; a trailing
    /// newline is ignored), so that the password is in neither the URL nor the environment (a
    /// compose or Kubernetes secret; docs/operations.md, "Secrets and card tokens"). It replaces
    /// any password the URL has.
    #[arg(long, env = "SAGAFLOW_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<std::path::PathBuf>,
    /// Most pooled connections (default 16 on PostgreSQL, 4 on SQLite).
    #[arg(long, env = "SAGAFLOW_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// SQLite durability: `full` fsyncs every commit; `normal` survives a process crash but not
    /// a power loss.
    #[arg(long, env = "SAGAFLOW_SQLITE_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Full)]
    pub sqlite_synchronous: Synchronous,
    /// Group commit (docs/architecture.md, "Group commit"): writers that run batches of keyed
    /// commands side by side, each holding one pooled connection, 1 to 64 (at most
    /// --db-max-connections − 1 are used). Default 1. More than one suits PostgreSQL when
    /// commands rarely lock the same rows: two batches locking shared rows in opposite orders
    /// deadlock until PostgreSQL aborts one command (answered UNAVAILABLE, retried).
    #[arg(
        long,
        env = "SAGAFLOW_DB_GROUP_COMMIT_WRITERS",
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    pub db_group_commit_writers: Option<u16>,
}

impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field(
                "database_url",
                &self.database_url.as_deref().map(crate::db::redact),
            )
            .field("database_password_file", &self.database_password_file)
            .field("db_max_connections", &self.db_max_connections)
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .field("db_group_commit_writers", &self.db_group_commit_writers)
            .finish()
    }
}

impl DatabaseArgs {
    /// `url` with the password of `--database-password-file` (if given) added as its
    /// `password` query parameter, percent-encoded (the parameter wins over a password in the
    /// URL's user part).
    ///
    /// # Errors
    /// A one-line message naming the flag: the file cannot be read or is empty, or `url` is not a
    /// PostgreSQL URL.
    pub fn url_with_password(&self, url: &str) -> Result<String, String> {
        let Some(path) = &self.database_password_file else {
            return Ok(url.to_owned());
        };
        if !matches!(crate::Backend::from_url(url), Ok(crate::Backend::Postgres)) {
            return Err(format!(
                "--database-password-file is for PostgreSQL URLs only, not {}",
                crate::db::redact(url)
            ));
        }
        let password = std::fs::read_to_string(path).map_err(|err| {
            format!(
                "--database-password-file {}: {err}; pass a readable file",
                path.display()
            )
        })?;
        let password = password.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(format!(
                "--database-password-file {} is empty",
                path.display()
            ));
        }
        let encoded: String = password
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (base, fragment) = url
            .split_once('#')
            .map_or((url, None), |(b, f)| (b, Some(f)));
        let separator = if base.contains('?') { '&' } else { '?' };
        let mut out = format!("{base}{separator}password={encoded}");
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
        Ok(out)
    }
}

/// `PRAGMA synchronous` choices exposed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged.
    Full,
    /// Commits survive a process crash; a power loss may lose the last ones.
    Normal,
}

impl DatabaseArgs {
    /// The pool settings these flags describe.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            max_connections: self.db_max_connections,
            sqlite_synchronous: match self.sqlite_synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            },
            group_commit_writers: self.db_group_commit_writers.map(usize::from),
            ..PoolConfig::default()
        }
    }
}

/// Fault injection (chaos tests only; off by default).
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// Faults to inject, for example `StartPayment=error:unavailable:0.2;*=lost_reply:0.05`
    /// (rules `METHOD=FAULT[,FAULT…]` separated by `;`; faults `error:CODE:P`, `latency:MS[-MAX]`,
    /// `lost_reply:P`; see docs/operations.md, "Fault injection"). Empty: none.
    #[arg(long, env = "SAGAFLOW_FAULTS", default_value = "")]
    pub faults: FaultConfig,
}

/// Whose trace context a server continues (docs/operations.md, "Logs and traces from untrusted
/// input").
#[derive(Debug, Clone, Default, Args)]
pub struct TraceArgs {
    /// Continue the trace named by any caller's `traceparent`, public RPCs included: only where
    /// every client is trusted (a gateway in front that sets it). Default off: a public or admin
    /// call starts a new trace linked to the caller's; internal RPCs, which only sagaflow
    /// services call, always continue theirs.
    #[arg(long, env = "SAGAFLOW_TRUST_TRACEPARENT")]
    pub trust_traceparent: bool,
}

/// Security of a server (docs/operations.md, "Security"): TLS, who may call admin and internal
/// RPCs, limits, and the safe-default rule for non-loopback addresses.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Operators' tokens, one `<token id> <sha256 hex of the token>` a line (`#` comments):
    /// admin RPCs then need `authorization: Bearer <token>`. Without it, admin RPCs are open
    /// (allowed only on a loopback address, or with --insecure).
    #[arg(long, env = "SAGAFLOW_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,
    /// Client-certificate identities (a DNS or URI SAN, or the subject CN) allowed to call
    /// internal RPCs, comma-separated; enforced when --tls-ca is given. Default: the seven
    /// service names (order, coupon, inventory, payment, point, ranking, orchestrator).
    #[arg(
        long,
        env = "SAGAFLOW_INTERNAL_IDENTITIES",
        value_delimiter = ',',
        default_values_t = DEFAULT_INTERNAL_IDENTITIES.map(String::from)
    )]
    pub internal_identities: Vec<String>,
    /// Serve a non-loopback address without TLS, client-certificate checks and admin tokens.
    /// Only on a network where every host that can reach the port is trusted.
    #[arg(long, env = "SAGAFLOW_INSECURE")]
    pub insecure: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub end_users: EndUserArgs,
}

/// End-user authentication on the public RPCs (docs/operations.md, "End users"): with an issuer
/// and a key set, every public sagaflow RPC needs `authorization: Bearer <JWT>` (or an operator
/// token); the user is the token's subject. Without them, public RPCs are anonymous.
#[derive(Debug, Clone, Default, Args)]
pub struct EndUserArgs {
    /// Issuer (`iss`) of the end users' bearer JWTs, e.g. `https://id.example.com/`; needs
    /// --jwt-jwks-file. Unset: public RPCs are anonymous.
    #[arg(long, env = "SAGAFLOW_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Audience the tokens must name in `aud`. Unset: a token that names any audience is refused.
    #[arg(long, env = "SAGAFLOW_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The issuer's public keys, a JWKS file (`{"keys": [...]}`; EdDSA, ES256/384, RS/PS keys;
    /// symmetric keys refused). Read at start. Or --jwt-jwks-url.
    #[arg(long, env = "SAGAFLOW_JWT_JWKS_FILE", conflicts_with = "jwt_jwks_url")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// The issuer's public keys at a URL (`http://` or `https://`), fetched on the first call
    /// that needs them, again every --jwt-jwks-refresh-ms and when a token names an unknown key
    /// id (at most every 10 s); a failed fetch keeps the keys there were.
    #[arg(long, env = "SAGAFLOW_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// CA certificates (PEM) an `https://` --jwt-jwks-url is verified against (required for
    /// https: no public roots are built in).
    #[arg(long, env = "SAGAFLOW_JWT_JWKS_CA")]
    pub jwt_jwks_ca: Option<PathBuf>,
    /// How often the keys of --jwt-jwks-url are fetched again, milliseconds. Default 300000.
    #[arg(long, env = "SAGAFLOW_JWT_JWKS_REFRESH_MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u64).range(1000..))]
    pub jwt_jwks_refresh_ms: u64,
}

impl EndUserArgs {
    /// The verifier these flags describe; `None` without an issuer.
    ///
    /// # Errors
    /// [`SecurityError::EndUsers`] for an issuer without a key set (or the reverse), an
    /// audience without an issuer; [`SecurityError::KeySet`] when the file cannot be used.
    pub fn verifier(&self) -> Result<Option<UserVerifier>, SecurityError> {
        match (&self.jwt_issuer, &self.jwt_jwks_file, &self.jwt_jwks_url) {
            (None, None, None) if self.jwt_audience.is_none() => Ok(None),
            (Some(issuer), Some(path), _) => Ok(Some(UserVerifier::from_jwks_file(
                issuer.clone(),
                self.jwt_audience.clone(),
                path,
            )?)),
            (Some(issuer), None, Some(url)) => Ok(Some(UserVerifier::from_jwks_url(
                issuer.clone(),
                self.jwt_audience.clone(),
                url,
                self.jwt_jwks_ca.as_deref(),
                std::time::Duration::from_millis(self.jwt_jwks_refresh_ms),
            )?)),
            (Some(_), None, None) => Err(SecurityError::EndUsers(
                "--jwt-issuer needs --jwt-jwks-file or --jwt-jwks-url (the issuer's public keys)",
            )),
            (None, ..) => Err(SecurityError::EndUsers(
                "--jwt-jwks-file, --jwt-jwks-url and --jwt-audience need --jwt-issuer",
            )),
        }
    }
}

/// A server's security, resolved from [`SecurityArgs`].
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS material (listener and clients).
    pub tls: Tls,
    /// What the access layer enforces.
    pub access: AccessPolicy,
}

/// Security flags that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A non-loopback address without TLS and credentials, and no `--insecure`.
    #[error(
        "refusing to listen on {listen} without {missing}: anyone who reaches the port could \
         call the internal RPCs (the saga's commands) and the admin RPCs. Give --tls-cert, \
         --tls-key, --tls-ca and --admin-tokens-file (scripts/gen-certs.sh makes a set), listen \
         on 127.0.0.1, or add --insecure on a network you trust (docs/operations.md, \"Security\")"
    )]
    Unsafe {
        /// The address.
        listen: SocketAddr,
        /// What is missing, for a person.
        missing: String,
    },
    /// `--tls-cert` without `--tls-ca`: the process could not verify its peers' certificates
    /// (no public roots are built in: a deployment has its own CA).
    #[error(
        "--tls-cert needs --tls-ca: the services' certificates are verified against the deployment's CA"
    )]
    CertWithoutCa,
    /// `--tls-ca` without `--tls-cert`: a server cannot check client certificates over
    /// plaintext.
    #[error(
        "--tls-ca needs --tls-cert and --tls-key on a server: client certificates are checked during the TLS handshake"
    )]
    CaWithoutCert,
    /// A file cannot be read.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The tokens file cannot be read.
    #[error(transparent)]
    Tokens(#[from] crate::access::TokenFileError),
    /// End-user flags that do not go together.
    #[error("{0}")]
    EndUsers(&'static str),
    /// The end users' key set cannot be read or used.
    #[error("--jwt-jwks-file / --jwt-jwks-url {0}")]
    KeySet(#[from] crate::end_users::KeySetError),
}

impl SecurityArgs {
    /// The security of a server listening on `listen`: TLS when `--tls-cert` is given; admin
    /// RPCs enforced with `--admin-tokens-file`; internal RPCs enforced with `--tls-ca`.
    ///
    /// # Errors
    /// [`SecurityError::Unsafe`] for a non-loopback `listen` without all of TLS, a CA and admin
    /// tokens, unless `--insecure`; a file that cannot be read.
    pub fn resolve(&self, listen: SocketAddr) -> Result<Security, SecurityError> {
        let tls = self.tls.load()?;
        if tls.has_ca() && !tls.has_identity() {
            return Err(SecurityError::CaWithoutCert);
        }
        if tls.has_identity() && !tls.has_ca() {
            return Err(SecurityError::CertWithoutCa);
        }
        let tokens = match &self.admin_tokens_file {
            Some(path) => Some(AdminTokens::load(path)?),
            None => None,
        };
        if !listen.ip().is_loopback() && !self.insecure {
            let missing: Vec<&str> = [
                (!tls.has_identity()).then_some("TLS (--tls-cert, --tls-key)"),
                (!tls.has_ca()).then_some("client-certificate checks (--tls-ca)"),
                tokens
                    .is_none()
                    .then_some("admin tokens (--admin-tokens-file)"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !missing.is_empty() {
                return Err(SecurityError::Unsafe {
                    listen,
                    missing: missing.join(", "),
                });
            }
        }
        let internal = tls.has_ca().then(|| self.internal_identities.clone());
        let mut access = AccessPolicy::new(tokens, internal);
        if let Some(verifier) = self.end_users.verifier()? {
            access = access.with_end_users(verifier, None);
        }
        Ok(Security { access, tls })
    }
}

/// Retention of idempotency records, finished sagas and inbox rows (docs/operations.md,
/// "Retention"). Every window is in milliseconds and must be at least 1.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Retention: how often this process deletes expired records, milliseconds (the first round
    /// runs 10 s after start). 0 turns retention off: nothing is ever deleted. Default 300000
    /// (5 minutes).
    #[arg(long, env = "SAGAFLOW_RETENTION_INTERVAL_MS", default_value_t = DEFAULT_INTERVAL_MS)]
    pub retention_interval_ms: u64,
    /// Retention: most rows deleted in one transaction, 1 to 1000 (a saga is deleted with its
    /// whole journal, each entry a row). Default 1000.
    #[arg(
        long,
        env = "SAGAFLOW_RETENTION_BATCH_ROWS",
        default_value_t = MAX_BATCH_ROWS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH_ROWS))
    )]
    pub retention_batch_rows: u32,
    /// Retention: idempotency records (`idempotency_keys` of every service) are kept this long
    /// after the command first ran, milliseconds. Default 604800000 (7 days): a saga retries a
    /// step only until its deadline (--saga-deadline-ms, 60 s by default), but an operator's
    /// RetrySaga of a parked saga re-sends its pivot under the original key days later. Must
    /// exceed --saga-deadline-ms.
    #[arg(
        long,
        env = "SAGAFLOW_RETENTION_IDEMPOTENCY_MS",
        default_value_t = DEFAULT_IDEMPOTENCY_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub retention_idempotency_ms: u64,
    /// Retention: finished sagas (COMPLETED or COMPENSATED only; never RUNNING, COMPENSATING or
    /// NEEDS_ATTENTION) are deleted with their journals this long after they finished,
    /// milliseconds. Default 2592000000 (30 days).
    #[arg(
        long,
        env = "SAGAFLOW_RETENTION_SAGAS_MS",
        default_value_t = DEFAULT_SAGAS_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub retention_sagas_ms: u64,
    /// Retention: ranking's processed-event inbox rows are kept this long after the event was
    /// counted, milliseconds. Default 604800000 (7 days): longer than any redelivery of the
    /// outbox relay, which redelivers within seconds.
    #[arg(
        long,
        env = "SAGAFLOW_RETENTION_INBOX_MS",
        default_value_t = DEFAULT_INBOX_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub retention_inbox_ms: u64,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        Self {
            retention_interval_ms: DEFAULT_INTERVAL_MS,
            retention_batch_rows: MAX_BATCH_ROWS,
            retention_idempotency_ms: DEFAULT_IDEMPOTENCY_MS,
            retention_sagas_ms: DEFAULT_SAGAS_MS,
            retention_inbox_ms: DEFAULT_INBOX_MS,
        }
    }
}

/// A retention setting that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRetention(String);

impl RetentionArgs {
    /// The retention these flags describe, for a process whose sagas have a deadline of
    /// `saga_deadline_ms` milliseconds.
    ///
    /// # Errors
    /// [`InvalidRetention`] when the idempotency window does not exceed the saga deadline (a
    /// step's retries would find their key gone), or a window or the batch size is 0.
    pub fn config(&self, saga_deadline_ms: u64) -> Result<RetentionConfig, InvalidRetention> {
        if self.retention_batch_rows == 0 || self.retention_batch_rows > MAX_BATCH_ROWS {
            return Err(InvalidRetention(format!(
                "--retention-batch-rows must be between 1 and {MAX_BATCH_ROWS}"
            )));
        }
        if self.retention_idempotency_ms == 0
            || self.retention_sagas_ms == 0
            || self.retention_inbox_ms == 0
        {
            return Err(InvalidRetention(
                "--retention-idempotency-ms, --retention-sagas-ms and --retention-inbox-ms must \
                 be positive"
                    .into(),
            ));
        }
        if self.retention_idempotency_ms <= saga_deadline_ms {
            return Err(InvalidRetention(format!(
                "--retention-idempotency-ms ({}) must exceed --saga-deadline-ms ({saga_deadline_ms}): \
                 a step is retried until the deadline and needs its idempotency record until then",
                self.retention_idempotency_ms
            )));
        }
        Ok(RetentionConfig {
            interval: (self.retention_interval_ms > 0)
                .then(|| Duration::from_millis(self.retention_interval_ms)),
            batch_rows: self.retention_batch_rows,
            idempotency: Duration::from_millis(self.retention_idempotency_ms),
            sagas: Duration::from_millis(self.retention_sagas_ms),
            inbox: Duration::from_millis(self.retention_inbox_ms),
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn password_file_goes_into_the_query_encoded() {
        use clap::Parser as _;

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            db: DatabaseArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "p@ss w+rd/&=\n").unwrap();
        let args = Cli::parse_from(["x", "--database-password-file", file.to_str().unwrap()]).db;
        let url = args
            .url_with_password("postgres://order@postgres:5432/sagaflow_order?sslmode=disable")
            .unwrap();
        assert_eq!(
            url,
            "postgres://order@postgres:5432/sagaflow_order?sslmode=disable\
             &password=p%40ss%20w%2Brd%2F%26%3D"
        );
        // What sqlx reads from it is the password itself.
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        assert_eq!(options.get_username(), "order");
        assert!(!crate::db::redact(&url).contains("p%40ss"));
        assert_eq!(
            args.url_with_password("postgres://h/db").unwrap(),
            "postgres://h/db?password=p%40ss%20w%2Brd%2F%26%3D"
        );
        assert!(args.url_with_password("sqlite://a.db").is_err());
        std::fs::write(&file, "\n").unwrap();
        assert!(args.url_with_password("postgres://h/db").is_err());
        let none = Cli::parse_from(["x"]).db;
        assert_eq!(
            none.url_with_password("sqlite://a.db").unwrap(),
            "sqlite://a.db"
        );
    }

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        database: DatabaseArgs,
    }

    #[derive(Debug, Parser)]
    struct SecurityCli {
        #[command(flatten)]
        security: SecurityArgs,
    }

    fn resolve(args: &[&str], listen: &str) -> Result<Security, SecurityError> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        SecurityCli::try_parse_from(all)
            .unwrap()
            .security
            .resolve(listen.parse().unwrap())
    }

    #[test]
    fn a_public_address_needs_tls_a_ca_and_tokens_or_insecure() {
        // Loopback: whatever is given, here nothing: every class open.
        let open = resolve(&[], "127.0.0.1:50061").unwrap();
        assert!(!open.access.is_enforced());
        assert!(open.tls.server_config().is_none());
        // Elsewhere: refused, naming everything that is missing, unless --insecure.
        let err = resolve(&[], "0.0.0.0:50061").unwrap_err().to_string();
        assert!(err.contains("refusing to listen on 0.0.0.0:50061"), "{err}");
        for missing in [
            "--tls-cert",
            "--tls-ca",
            "--admin-tokens-file",
            "--insecure",
        ] {
            assert!(err.contains(missing), "{missing}: {err}");
        }
        assert!(resolve(&["--insecure"], "0.0.0.0:50061").is_ok());

        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, AdminTokens::line_for("kim", "t")).unwrap();
        let tokens = tokens.to_str().unwrap();
        // Tokens alone on a public address: still refused (no TLS: the token would travel in
        // clear text).
        let err = resolve(&["--admin-tokens-file", tokens], "10.0.0.5:50061")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-cert") && !err.contains("admin tokens ("),
            "{err}"
        );
        // Tokens on loopback: the admin class is enforced, the internal one open.
        let admin = resolve(&["--admin-tokens-file", tokens], "127.0.0.1:1").unwrap();
        assert!(admin.access.is_enforced());
        // A CA without a certificate of its own cannot check client certificates.
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not read yet").unwrap();
        assert!(matches!(
            resolve(&["--tls-ca", ca.to_str().unwrap()], "127.0.0.1:1"),
            Err(SecurityError::CaWithoutCert)
        ));
        // Unreadable files name their flag.
        let err = resolve(
            &["--admin-tokens-file", "/nonexistent/tokens"],
            "127.0.0.1:1",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/tokens"), "{err}");
        let err = resolve(
            &[
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            "127.0.0.1:1",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--tls-cert"), "{err}");
    }

    #[test]
    fn end_user_flags_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::end_users::DevKey::load_or_create(dir.path()).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, serde_json::to_string(&key.jwks()).unwrap()).unwrap();
        let jwks = jwks.to_str().unwrap();
        let on = resolve(
            &["--jwt-issuer", "sagaflow-dev", "--jwt-jwks-file", jwks],
            "127.0.0.1:1",
        )
        .unwrap();
        assert!(on.access.authenticates_users());
        assert!(
            !resolve(&[], "127.0.0.1:1")
                .unwrap()
                .access
                .authenticates_users()
        );
        for args in [
            vec!["--jwt-issuer", "x"],
            vec!["--jwt-jwks-file", jwks],
            vec!["--jwt-audience", "shop"],
        ] {
            assert!(
                matches!(
                    resolve(&args, "127.0.0.1:1"),
                    Err(SecurityError::EndUsers(_))
                ),
                "{args:?}"
            );
        }
        let err = resolve(
            &["--jwt-issuer", "x", "--jwt-jwks-file", "/nonexistent/jwks"],
            "127.0.0.1:1",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/jwks"), "{err}");
        let url = resolve(
            &[
                "--jwt-issuer",
                "x",
                "--jwt-jwks-url",
                "http://127.0.0.1:9/jwks",
            ],
            "127.0.0.1:1",
        )
        .unwrap();
        assert!(url.access.authenticates_users());
        assert!(matches!(
            resolve(
                &["--jwt-jwks-url", "http://127.0.0.1:9/jwks"],
                "127.0.0.1:1"
            ),
            Err(SecurityError::EndUsers(_))
        ));
    }

    #[test]
    fn group_commit_writers_flag() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.database.pool_config().group_commit_writers, None);
        let two = Cli::try_parse_from(["x", "--db-group-commit-writers", "2"]).unwrap();
        assert_eq!(two.database.pool_config().group_commit_writers, Some(2));
        assert!(Cli::try_parse_from(["x", "--db-group-commit-writers", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--db-group-commit-writers", "65"]).is_err());
    }

    #[test]
    fn retention_defaults_and_validation() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(
            cli.retention.config(60_000).unwrap(),
            RetentionConfig::default()
        );
        assert_eq!(
            RetentionArgs::default().config(60_000).unwrap(),
            RetentionConfig::default()
        );
        let off = Cli::try_parse_from(["x", "--retention-interval-ms", "0"]).unwrap();
        assert_eq!(off.retention.config(60_000).unwrap().interval, None);
        let short = Cli::try_parse_from(["x", "--retention-idempotency-ms", "60000"]).unwrap();
        assert!(short.retention.config(60_000).is_err());
        assert!(short.retention.config(59_999).is_ok());
        assert!(Cli::try_parse_from(["x", "--retention-batch-rows", "1001"]).is_err());
        assert!(Cli::try_parse_from(["x", "--retention-batch-rows", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--retention-sagas-ms", "0"]).is_err());
    }
}
