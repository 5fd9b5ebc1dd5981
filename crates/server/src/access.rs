//! Who may call which RPC (docs/operations.md, "Security"): every sagaflow RPC carries its class
//! in the protos (`option (sagaflow.options.v1.rpc_class)`), and one tower layer in front of every
//! server's routes enforces it from the descriptor set, so a new RPC is classified where other
//! teams see it and cannot be left open by a forgotten check in a handler.
//!
//! ```text
//!  request ─▶ class of the path (descriptor set)
//!     │  health, reflection, any non-sagaflow path: public
//!     ▼
//!  public, without end-user auth ──────────────────────────────────────▶ handler (anonymous)
//!  public, with end-user auth (--jwt-issuer, or `sagaflow dev` without --open):
//!     │  `authorization: Bearer <token>`:
//!     │    an operator token (admin tokens file; `dev`'s own) ─────────────▶ handler (token:<id>)
//!     │    a JWT of the configured issuer and key set (crate::end_users) ─▶ handler (user:<sub>)
//!     │    expired ─▶ UNAUTHENTICATED  TOKEN_EXPIRED;  anything else ─▶ UNAUTHENTICATED  TOKEN_INVALID
//!     │    (a JWKS URL never fetched ─▶ UNAVAILABLE  KEYS_UNAVAILABLE)
//!     ├─ no token, an allowed service certificate ─────────────────────────▶ handler (service:<name>)
//!     └─ nothing ─▶ UNAUTHENTICATED  CREDENTIALS_MISSING
//!  internal ─ client certificate (mTLS, verified against --tls-ca by rustls)
//!     │         whose SAN/CN is an allowed service identity ──────────▶ handler (service:<name>)
//!     ├─ a valid operator token instead ─▶ PERMISSION_DENIED  WRONG_CLASS
//!     ├─ a certificate of another identity ─▶ PERMISSION_DENIED  PEER_NOT_ALLOWED
//!     └─ no certificate ─▶ UNAUTHENTICATED  CLIENT_CERTIFICATE_REQUIRED
//!  admin ─── `authorization: Bearer <token>` whose SHA-256 is in --admin-tokens-file
//!     │         (constant-time comparison) ─────────────────────────────▶ handler (token:<id>)
//!     ├─ a token that matches none ─▶ UNAUTHENTICATED  TOKEN_INVALID
//!     ├─ only a service certificate ─▶ PERMISSION_DENIED  WRONG_CLASS
//!     └─ nothing ─▶ UNAUTHENTICATED  CREDENTIALS_MISSING
//!  unclassified sagaflow RPC ─▶ PERMISSION_DENIED  RPC_UNCLASSIFIED (a test keeps it from happening)
//! ```
//!
//! Every refusal is answered before any other layer or handler runs (nothing is decoded, faulted
//! or written) with a `google.rpc.ErrorInfo` (domain `sagaflow`, metadata `rpc` and `class`). The
//! caller's [`Identity`] goes into the request's extensions for the handlers that record who
//! acted (the audit of admin actions).
//!
//! What an end user may see is decided in the handlers by one rule, written here once
//! ([`Identity::acting_user`], [`Identity::reading_user`], [`Identity::may_see`]): a user acts and
//! reads as themself only, another user's record is NOT_FOUND exactly like a missing one;
//! operators, services and the process itself see everything (docs/operations.md, "End users").
//!
//! Calls this process makes to itself through the in-process transport (the embedded system,
//! [`crate::transport::InProcess`]) are the process's own and pass as [`Identity::InProcess`]:
//! they never crossed a socket. An [`AccessPolicy::open`] policy (`sagaflow dev`, loopback
//! `serve` without credentials, `--insecure`) lets every call through.

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use prost_reflect::{DescriptorPool, Value};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tonic::{
    Code, Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Layer, Service};

use crate::{end_users::UserVerifier, error::ERROR_DOMAIN};

/// The full name of the method option that classifies an RPC (`proto/sagaflow/options/v1`).
pub const RPC_CLASS_OPTION: &str = "sagaflow.options.v1.rpc_class";

/// Who may call an RPC: the `sagaflow.options.v1.RpcClass` of its proto definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcClass {
    /// Anyone who reaches the port; an end user's bearer JWT when end-user authentication is on
    /// (docs/operations.md, "End users").
    Public,
    /// Another sagaflow service: a client certificate of an allowed identity.
    Internal,
    /// An operator: a bearer token from the admin tokens file.
    Admin,
}

impl RpcClass {
    /// `public`, `internal` or `admin`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Internal => "internal",
            Self::Admin => "admin",
        }
    }
}

/// The class of every sagaflow RPC by request path (`/sagaflow.point.v1.PointService/GrantPoints`);
/// `None` for an RPC without the option. Empty (and logged) if the descriptor set does not
/// decode, a build problem: every sagaflow path is then unclassified and refused by an enforcing
/// policy, never let through.
static CLASSES: LazyLock<HashMap<String, Option<RpcClass>>> = LazyLock::new(|| {
    match DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET) {
        Ok(pool) => classes_in(&pool),
        Err(err) => {
            tracing::error!(error = %err, "the descriptor set does not decode: every sagaflow RPC is unclassified");
            HashMap::new()
        }
    }
});

/// The classes of the `sagaflow.*` RPCs of `pool`.
fn classes_in(pool: &DescriptorPool) -> HashMap<String, Option<RpcClass>> {
    let option = pool.get_extension_by_name(RPC_CLASS_OPTION);
    let mut out = HashMap::new();
    for service in pool
        .services()
        .filter(|s| s.full_name().starts_with("sagaflow."))
    {
        for method in service.methods() {
            let class = option.as_ref().and_then(|option| {
                let options = method.options();
                if !options.has_extension(option) {
                    return None;
                }
                match *options.get_extension(option) {
                    Value::EnumNumber(1) => Some(RpcClass::Public),
                    Value::EnumNumber(2) => Some(RpcClass::Internal),
                    Value::EnumNumber(3) => Some(RpcClass::Admin),
                    _ => None,
                }
            });
            out.insert(format!("/{}/{}", service.full_name(), method.name()), class);
        }
    }
    out
}

/// The class of the RPC at `path`: `Some(None)` for a sagaflow RPC without a class, `None` for a
/// path that is not a sagaflow RPC (health, reflection, unknown paths: the routes answer those).
pub fn class_of(path: &str) -> Option<Option<RpcClass>> {
    CLASSES.get(path).copied()
}

/// Every sagaflow RPC path with its class (`None`: unclassified), sorted by path; the test that
/// no RPC is left unclassified reads it.
pub fn all_classes() -> Vec<(String, Option<RpcClass>)> {
    let mut all: Vec<_> = CLASSES.iter().map(|(p, c)| (p.clone(), *c)).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Who made a call, as the access layer established it; in the request's extensions of every
/// call that passed it (`request.extensions().get::<Identity>()` in a handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credential was needed or checked (a public RPC, or an open policy).
    Anonymous,
    /// This very process, through its in-process transport.
    InProcess,
    /// A sagaflow service, by the name in its client certificate.
    Service(String),
    /// An operator, by the id of their token in the admin tokens file.
    Operator(String),
    /// An end user, by the subject of their verified bearer JWT ([`crate::end_users`]).
    User(String),
}

/// `google.rpc.ErrorInfo` reason of a PlaceOrder (or any command acting for a user) whose
/// `user_id` is not the authenticated caller's.
pub const USER_MISMATCH: &str = "USER_MISMATCH";

impl Identity {
    /// The end user this caller is, if it is one; `None` for operators, services, the process
    /// itself and anonymous callers (no end-user auth), who see every user's data.
    pub fn end_user(&self) -> Option<&str> {
        match self {
            Self::User(subject) => Some(subject),
            Self::Anonymous | Self::InProcess | Self::Service(_) | Self::Operator(_) => None,
        }
    }

    /// The user a command such as PlaceOrder acts for (docs/operations.md, "End users"): an end
    /// user acts as themself (an empty `requested` means them); everyone else names the user in
    /// `requested`, returned as is (its validation is the handler's).
    ///
    /// # Errors
    /// PERMISSION_DENIED with `ErrorInfo` reason [`USER_MISMATCH`] (metadata `field`) when an end
    /// user names another user in `field`.
    pub fn acting_user(&self, field: &str, requested: &str) -> Result<String, Status> {
        match self.end_user() {
            None => Ok(requested.to_owned()),
            Some(user) if requested.is_empty() || requested == user => Ok(user.to_owned()),
            Some(_) => Err(Status::with_error_details(
                Code::PermissionDenied,
                format!("{field} must be the authenticated caller's user id (or empty)"),
                ErrorDetails::with_error_info(
                    USER_MISMATCH,
                    ERROR_DOMAIN,
                    HashMap::from([("field".to_owned(), field.to_owned())]),
                ),
            )),
        }
    }

    /// The user whose data a read such as ListOrders or GetBalance returns: an end user reads
    /// their own (an empty `requested` means them); everyone else the one in `requested`.
    /// `Err(())` when an end user names another user: the handler answers NOT_FOUND, the same
    /// for every other user, existing or not, so users cannot be probed.
    #[expect(
        clippy::result_unit_err,
        reason = "the handler makes its own NOT_FOUND"
    )]
    pub fn reading_user(&self, requested: &str) -> Result<String, ()> {
        match self.end_user() {
            None => Ok(requested.to_owned()),
            Some(user) if requested.is_empty() || requested == user => Ok(user.to_owned()),
            Some(_) => Err(()),
        }
    }

    /// Whether this caller may see a record owned by `owner` (an order, a payment, a coupon).
    /// A handler treats a record it may not see exactly as a missing one (same NOT_FOUND, same
    /// message), so ids cannot be probed.
    pub fn may_see(&self, owner: &str) -> bool {
        self.end_user().is_none_or(|user| user == owner)
    }

    /// `found` when this caller may see it ([`Identity::may_see`] of its `owner`), else `None`:
    /// the one way a handler reads a user's record.
    pub fn visible<T>(&self, found: Option<T>, owner: impl FnOnce(&T) -> &str) -> Option<T> {
        found.filter(|record| self.may_see(owner(record)))
    }
}

impl fmt::Display for Identity {
    /// `anonymous`, `in-process`, `service:<name>`, `token:<id>`, `user:<sub>`: the form audit
    /// records keep.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous"),
            Self::InProcess => f.write_str("in-process"),
            Self::Service(name) => write!(f, "service:{name}"),
            Self::Operator(id) => write!(f, "token:{id}"),
            Self::User(subject) => write!(f, "user:{subject}"),
        }
    }
}

/// The identity of a request handed to a handler (`Anonymous` when the access layer did not run,
/// as in unit tests that call handlers directly).
pub fn identity_of<T>(request: &tonic::Request<T>) -> Identity {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or(Identity::Anonymous)
}

/// Marks a request that came through this process's in-process transport (set by
/// [`crate::transport::InProcess`] after it clears the caller's extensions, so no client can
/// forge it: extensions never cross a socket).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InProcessCall(());

impl InProcessCall {
    pub(crate) fn mark() -> Self {
        Self(())
    }
}

/// A line of the admin tokens file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("admin tokens file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `<id> <sha256 hex>`.
    #[error("admin tokens file, line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The operators' tokens: token ids and the SHA-256 of each token, never the tokens themselves
/// (the file can be read without giving anyone a credential).
///
/// File format (`--admin-tokens-file`, `SAGAFLOW_ADMIN_TOKENS_FILE`; `scripts/gen-certs.sh`
/// writes one): one token a line, `<id> <sha256 of the token, 64 hex digits>`; blank lines and
/// lines starting with `#` are ignored. The id is what audit records name; it may not contain
/// whitespace.
#[derive(Clone, Default)]
pub struct AdminTokens {
    entries: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.entries.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("AdminTokens").field("ids", &ids).finish()
    }
}

impl AdminTokens {
    /// Parses the file format above.
    ///
    /// # Errors
    /// [`TokenFileError::Malformed`] naming the first bad line (a missing or non-hex hash, a
    /// hash of another length, a repeated id).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<(String, [u8; 32])> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: &str| TokenFileError::Malformed {
                line: index + 1,
                reason: reason.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let (Some(id), Some(hash), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(malformed("expected `<token id> <sha256 hex>`"));
            };
            let hash = hash.strip_prefix("sha256:").unwrap_or(hash);
            let bytes = hex::decode(hash).map_err(|_| malformed("the hash is not hex"))?;
            let digest: [u8; 32] = bytes
                .try_into()
                .map_err(|_| malformed("the hash is not 32 bytes (64 hex digits)"))?;
            if entries.iter().any(|(known, _)| known == id) {
                return Err(malformed(&format!("token id {id:?} appears twice")));
            }
            entries.push((id.to_owned(), digest));
        }
        Ok(Self { entries })
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// [`TokenFileError`] when it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The line of the tokens file for `token` under `id`: `<id> <sha256 hex>`.
    pub fn line_for(id: &str, token: &str) -> String {
        format!("{id} {}", hex::encode(Sha256::digest(token.as_bytes())))
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (an enforcing server then refuses every admin call).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The id of the token `presented` is, if any. The hash of `presented` is compared with
    /// every entry in constant time (`subtle`), all of them whatever matched, so the time taken
    /// says nothing about which bytes or which entry matched.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (id, expected) in &self.entries {
            if bool::from(expected.ct_eq(&digest)) {
                found = Some(id.as_str());
            }
        }
        found
    }
}

/// The service identities allowed to call internal RPCs by default: the names sagaflow's
/// services have in their certificates (`scripts/gen-certs.sh`; compose's host names).
pub const DEFAULT_INTERNAL_IDENTITIES: [&str; 7] = [
    "order",
    "coupon",
    "inventory",
    "payment",
    "point",
    "ranking",
    "orchestrator",
];

/// What the access layer enforces (docs/operations.md, "Security"): the admin class when the
/// server has admin tokens, the internal class when it verifies client certificates; each
/// independently, so a loopback server may enforce one without the other.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Admin RPCs need one of these tokens; `None`: admin RPCs are open.
    admin: Option<Arc<AdminTokens>>,
    /// Internal RPCs need a client certificate naming one of these; `None`: internal RPCs are
    /// open.
    internal: Option<Arc<Vec<String>>>,
    /// Public sagaflow RPCs need an end user's JWT this verifies (or an operator token, or a
    /// service certificate); `None`: public RPCs are anonymous.
    users: Option<Arc<UserVerifier>>,
    /// Operator tokens accepted on the public RPCs besides the admin tokens: `sagaflow dev`'s
    /// own ([`crate::end_users::dev_operator_token`]), whose admin RPCs are open.
    public_operators: Option<Arc<AdminTokens>>,
}

impl AccessPolicy {
    /// Every call passes (`sagaflow dev`, tests, `serve` on loopback without credentials or with
    /// `--insecure`).
    pub fn open() -> Self {
        Self::default()
    }

    /// Both classes enforced: admin RPCs need one of `tokens`, internal RPCs a client
    /// certificate (verified by TLS against the deployment's CA) naming one of
    /// `internal_identities` in a DNS or URI SAN or its subject CN.
    pub fn enforced(tokens: AdminTokens, internal_identities: Vec<String>) -> Self {
        Self::new(Some(tokens), Some(internal_identities))
    }

    /// Admin RPCs enforced when `tokens` is given (an empty set refuses every admin call);
    /// internal RPCs when `internal_identities` is given (the server must then verify client
    /// certificates: `--tls-ca`).
    pub fn new(tokens: Option<AdminTokens>, internal_identities: Option<Vec<String>>) -> Self {
        Self {
            admin: tokens.map(Arc::new),
            internal: internal_identities.map(Arc::new),
            users: None,
            public_operators: None,
        }
    }

    /// This policy with end-user authentication on the public RPCs (docs/operations.md, "End
    /// users"): a bearer JWT `verifier` accepts, an operator token (of the admin tokens, or
    /// `operators`), or a service certificate of the internal identities.
    #[must_use]
    pub fn with_end_users(
        mut self,
        verifier: UserVerifier,
        operators: Option<AdminTokens>,
    ) -> Self {
        self.users = Some(Arc::new(verifier));
        self.public_operators = operators.map(Arc::new);
        self
    }

    /// Whether public RPCs need an end user's (or operator's) credential.
    pub fn authenticates_users(&self) -> bool {
        self.users.is_some()
    }

    /// The end users' verifier, when public RPCs need one.
    pub fn users(&self) -> Option<&Arc<UserVerifier>> {
        self.users.as_ref()
    }

    /// Whether any class is enforced.
    pub fn is_enforced(&self) -> bool {
        self.admin.is_some() || self.internal.is_some() || self.users.is_some()
    }

    /// Decides a call to `path` with `credentials` (see the module docs): the caller's identity,
    /// or the refusal.
    ///
    /// # Errors
    /// UNAUTHENTICATED or PERMISSION_DENIED with an `ErrorInfo`, as in the module docs.
    pub fn decide(&self, path: &str, credentials: &Credentials<'_>) -> Result<Identity, Status> {
        let unchecked = if credentials.in_process {
            Identity::InProcess
        } else {
            Identity::Anonymous
        };
        if !self.is_enforced() {
            return Ok(unchecked);
        }
        let class = match class_of(path) {
            None => return Ok(Identity::Anonymous),
            Some(Some(RpcClass::Public)) if self.users.is_none() => return Ok(Identity::Anonymous),
            Some(None) => {
                return Err(refusal(
                    Code::PermissionDenied,
                    "RPC_UNCLASSIFIED",
                    path,
                    None,
                    "this RPC has no class (sagaflow.options.v1.rpc_class) and is refused",
                ));
            }
            Some(Some(class)) => class,
        };
        if credentials.in_process {
            return Ok(Identity::InProcess);
        }
        let token = credentials
            .bearer
            .map(|t| self.admin.as_ref().and_then(|tokens| tokens.verify(t)));
        match class {
            RpcClass::Public => match &self.users {
                Some(verifier) => self.public_decision(path, credentials, verifier),
                None => Ok(Identity::Anonymous),
            },
            RpcClass::Internal => {
                let Some(identities) = &self.internal else {
                    return Ok(unchecked);
                };
                let service = credentials
                    .certificate_names
                    .as_ref()
                    .and_then(|names| names.iter().find(|n| identities.iter().any(|i| i == *n)));
                self.internal_decision(path, credentials, service, token)
            }
            RpcClass::Admin => {
                if self.admin.is_none() {
                    return Ok(unchecked);
                }
                Self::admin_decision(path, credentials, token)
            }
        }
    }

    fn public_decision(
        &self,
        path: &str,
        credentials: &Credentials<'_>,
        verifier: &UserVerifier,
    ) -> Result<Identity, Status> {
        let class = Some(RpcClass::Public);
        if let Some(bearer) = credentials.bearer {
            let operator = [&self.admin, &self.public_operators]
                .into_iter()
                .flatten()
                .find_map(|tokens| tokens.verify(bearer));
            if let Some(id) = operator {
                return Ok(Identity::Operator(id.to_owned()));
            }
            return match verifier.verify(bearer) {
                Ok(subject) => Ok(Identity::User(subject)),
                Err(err) => Err(refusal(
                    err.code(),
                    err.reason(),
                    path,
                    class,
                    &format!("public RPC: {err}"),
                )),
            };
        }
        let service = match (&self.internal, &credentials.certificate_names) {
            (Some(identities), Some(names)) => {
                names.iter().find(|n| identities.iter().any(|i| i == *n))
            }
            _ => None,
        };
        match service {
            Some(name) => Ok(Identity::Service(name.clone())),
            None => Err(refusal(
                Code::Unauthenticated,
                "CREDENTIALS_MISSING",
                path,
                class,
                "public RPC: a user's bearer token (`authorization: Bearer <JWT>`) is required",
            )),
        }
    }

    fn internal_decision(
        &self,
        path: &str,
        credentials: &Credentials<'_>,
        service: Option<&String>,
        token: Option<Option<&str>>,
    ) -> Result<Identity, Status> {
        let class = RpcClass::Internal;
        match (service, &credentials.certificate_names, token) {
            (Some(name), _, _) => Ok(Identity::Service(name.clone())),
            (None, Some(names), _) => Err(refusal(
                Code::PermissionDenied,
                "PEER_NOT_ALLOWED",
                path,
                Some(class),
                &format!(
                    "the client certificate ({}) names no sagaflow service allowed to call \
                         internal RPCs",
                    names.join(", ")
                ),
            )),
            (None, None, Some(Some(_))) => Err(refusal(
                Code::PermissionDenied,
                "WRONG_CLASS",
                path,
                Some(class),
                "an operator token does not authorize internal RPCs: they need a service's \
                     client certificate",
            )),
            (None, None, _) => Err(refusal(
                Code::Unauthenticated,
                "CLIENT_CERTIFICATE_REQUIRED",
                path,
                Some(class),
                "internal RPC: a client certificate signed by the deployment's CA is required",
            )),
        }
    }

    fn admin_decision(
        path: &str,
        credentials: &Credentials<'_>,
        token: Option<Option<&str>>,
    ) -> Result<Identity, Status> {
        let class = RpcClass::Admin;
        match token {
            Some(Some(id)) => Ok(Identity::Operator(id.to_owned())),
            Some(None) => Err(refusal(
                Code::Unauthenticated,
                "TOKEN_INVALID",
                path,
                Some(class),
                "admin RPC: the bearer token is not valid",
            )),
            None if credentials.certificate_names.is_some() => Err(refusal(
                Code::PermissionDenied,
                "WRONG_CLASS",
                path,
                Some(class),
                "a service certificate does not authorize admin RPCs: they need an \
                     operator's bearer token",
            )),
            None => Err(refusal(
                Code::Unauthenticated,
                "CREDENTIALS_MISSING",
                path,
                Some(class),
                "admin RPC: an operator's bearer token (`authorization: Bearer …`) is required",
            )),
        }
    }
}

/// A refusal status with its `ErrorInfo` (metadata `rpc`, and `class` when known).
fn refusal(code: Code, reason: &str, path: &str, class: Option<RpcClass>, message: &str) -> Status {
    let mut metadata = HashMap::from([("rpc".to_owned(), path.to_owned())]);
    if let Some(class) = class {
        metadata.insert("class".to_owned(), class.name().to_owned());
    }
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// What a call presented: whether it is this process's own, the names of its verified client
/// certificate, its bearer token.
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    /// Came through the in-process transport.
    pub in_process: bool,
    /// DNS and URI SANs and subject CNs of the client certificate (TLS verified it against the
    /// CA); `None` without one.
    pub certificate_names: Option<Vec<String>>,
    /// The token of an `authorization: Bearer <token>` header.
    pub bearer: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// The credentials of `request`.
    pub fn of(request: &'a http::Request<Body>) -> Self {
        let certificate_names = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|certs| certs.first().map(|leaf| certificate_names(leaf.as_ref())));
        Self {
            in_process: request.extensions().get::<InProcessCall>().is_some(),
            certificate_names,
            bearer: bearer_of(request),
        }
    }
}

/// The token of `request`'s `authorization: Bearer <token>` header, if it has one.
fn bearer_of(request: &http::Request<Body>) -> Option<&str> {
    request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
}

/// The DNS and URI SANs and the subject CNs of a DER certificate (empty if it does not parse: a
/// certificate rustls accepted parses).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_owned());
        }
    }
    names
}

/// Adds the access checks of `policy` to a server.
#[derive(Debug, Clone, Default)]
pub struct AccessLayer {
    policy: AccessPolicy,
}

impl AccessLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: AccessPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            policy: self.policy.clone(),
            inner,
        }
    }
}

/// The service made by [`AccessLayer`].
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    policy: AccessPolicy,
    inner: S,
}

impl<S> Service<http::Request<Body>> for AccessService<S>
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

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // Nothing to check (an open policy, a public RPC, health, reflection): no certificate is
        // parsed, no header read.
        let class = class_of(req.uri().path());
        if !self.policy.is_enforced()
            || class.is_none()
            || (class == Some(Some(RpcClass::Public)) && !self.policy.authenticates_users())
        {
            let identity = if req.extensions().get::<InProcessCall>().is_some() {
                Identity::InProcess
            } else {
                Identity::Anonymous
            };
            req.extensions_mut().insert(identity);
            return Box::pin(self.inner.call(req));
        }
        // A key set from a JWKS URL that is due for a fetch: fetch first (at most one call at a
        // time waits for it; crate::end_users::jwks_url), then decide as below.
        if class == Some(Some(RpcClass::Public))
            && let Some(users) = self.policy.users().cloned()
        {
            let bearer = bearer_of(&req).map(str::to_owned);
            if users.needs_refresh(bearer.as_deref()) {
                let policy = self.policy.clone();
                // Take the service that was driven to readiness; leave a fresh clone in its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                return Box::pin(async move {
                    users.refresh_if_needed(bearer.as_deref()).await;
                    match policy.decide(req.uri().path(), &Credentials::of(&req)) {
                        Ok(identity) => {
                            req.extensions_mut().insert(identity);
                            inner.call(req).await
                        }
                        Err(status) => Ok(status.into_http()),
                    }
                });
            }
        }
        let decided = self.policy.decide(req.uri().path(), &Credentials::of(&req));
        match decided {
            Ok(identity) => {
                req.extensions_mut().insert(identity);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::info!(
                    path = req.uri().path(),
                    code = ?status.code(),
                    reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default(),
                    "call refused by the access layer"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANT: &str = "/sagaflow.point.v1.PointService/GrantPoints";
    const DEDUCT: &str = "/sagaflow.point.v1.PointService/DeductPoints";
    const BALANCE: &str = "/sagaflow.point.v1.PointService/GetBalance";

    fn policy() -> AccessPolicy {
        let tokens = AdminTokens::parse(&format!(
            "# operators\n{}\n\n{}\n",
            AdminTokens::line_for("kim", "secret-kim"),
            AdminTokens::line_for("lee", "secret-lee")
        ))
        .unwrap();
        AccessPolicy::enforced(
            tokens,
            DEFAULT_INTERNAL_IDENTITIES.map(String::from).to_vec(),
        )
    }

    fn reason(result: Result<Identity, Status>) -> (Code, String) {
        let status = result.unwrap_err();
        let reason = status.get_details_error_info().unwrap().reason;
        (status.code(), reason)
    }

    #[test]
    fn every_sagaflow_rpc_has_a_class() {
        let all = all_classes();
        assert!(all.len() >= 35, "only {} RPCs", all.len());
        let unclassified: Vec<_> = all.iter().filter(|(_, c)| c.is_none()).collect();
        assert!(unclassified.is_empty(), "unclassified: {unclassified:?}");
        assert_eq!(class_of(GRANT), Some(Some(RpcClass::Admin)));
        assert_eq!(class_of(DEDUCT), Some(Some(RpcClass::Internal)));
        assert_eq!(class_of(BALANCE), Some(Some(RpcClass::Public)));
        assert_eq!(class_of("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn the_issue_lists_are_the_classes() {
        let expect = |class: RpcClass, names: &[&str]| {
            for name in names {
                let found: Vec<_> = all_classes()
                    .into_iter()
                    .filter(|(p, _)| p.ends_with(&format!("/{name}")))
                    .collect();
                assert_eq!(found.len(), 1, "{name}");
                assert_eq!(found[0].1, Some(class), "{name}");
            }
        };
        expect(
            RpcClass::Public,
            &[
                "PlaceOrder",
                "GetOrder",
                "ListOrders",
                "GetProduct",
                "ListProducts",
                "GetCoupon",
                "GetBalance",
                "GetPayment",
                "TopProducts",
            ],
        );
        expect(
            RpcClass::Admin,
            &[
                "UpsertProduct",
                "Restock",
                "IssueCoupon",
                "GrantPoints",
                "RetrySaga",
                "CancelSaga",
                "ResolveStep",
                "GetSaga",
                "ListSagas",
            ],
        );
        expect(
            RpcClass::Internal,
            &[
                "StartOrderSaga",
                "UseCoupon",
                "RestoreCoupon",
                "DeductInventory",
                "RestoreInventory",
                "StartPayment",
                "CancelPayment",
                "CompletePayment",
                "DeductPoints",
                "RestorePoints",
                "ApplyCoupon",
                "CompleteOrder",
                "FailOrder",
                "RecordOrderCompleted",
            ],
        );
    }

    #[test]
    fn tokens_file_is_parsed_and_checked() {
        let policy = policy();
        let tokens = policy.admin.unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.verify("secret-lee"), Some("lee"));
        assert_eq!(tokens.verify("secret-kim"), Some("kim"));
        assert_eq!(tokens.verify("secret"), None);
        assert_eq!(tokens.verify(""), None);
        assert!(format!("{tokens:?}").contains("kim"));
        for bad in ["kim", "kim zz", "kim abcd", "kim a b"] {
            assert!(AdminTokens::parse(bad).is_err(), "{bad}");
        }
        let twice = format!(
            "{}\n{}",
            AdminTokens::line_for("kim", "a"),
            AdminTokens::line_for("kim", "b")
        );
        assert!(AdminTokens::parse(&twice).is_err());
        let prefixed = format!("kim sha256:{}", hex::encode(Sha256::digest(b"secret-kim")));
        assert_eq!(
            AdminTokens::parse(&prefixed).unwrap().verify("secret-kim"),
            Some("kim")
        );
    }

    #[test]
    fn decisions_follow_the_class() {
        let p = policy();
        let none = Credentials::default();
        let service = Credentials {
            certificate_names: Some(vec!["localhost".into(), "orchestrator".into()]),
            ..Credentials::default()
        };
        let stranger = Credentials {
            certificate_names: Some(vec!["mallory".into()]),
            ..Credentials::default()
        };
        let kim = Credentials {
            bearer: Some("secret-kim"),
            ..Credentials::default()
        };
        let wrong = Credentials {
            bearer: Some("guess"),
            ..Credentials::default()
        };
        let local = Credentials {
            in_process: true,
            ..Credentials::default()
        };
        // Public: anyone.
        for c in [&none, &service, &kim, &wrong] {
            assert_eq!(p.decide(BALANCE, c).unwrap(), Identity::Anonymous);
        }
        assert_eq!(
            p.decide("/grpc.health.v1.Health/Check", &none).unwrap(),
            Identity::Anonymous
        );
        // Internal.
        assert_eq!(
            p.decide(DEDUCT, &service).unwrap(),
            Identity::Service("orchestrator".into())
        );
        assert_eq!(
            reason(p.decide(DEDUCT, &none)),
            (Code::Unauthenticated, "CLIENT_CERTIFICATE_REQUIRED".into())
        );
        assert_eq!(
            reason(p.decide(DEDUCT, &wrong)),
            (Code::Unauthenticated, "CLIENT_CERTIFICATE_REQUIRED".into())
        );
        assert_eq!(
            reason(p.decide(DEDUCT, &kim)),
            (Code::PermissionDenied, "WRONG_CLASS".into())
        );
        assert_eq!(
            reason(p.decide(DEDUCT, &stranger)),
            (Code::PermissionDenied, "PEER_NOT_ALLOWED".into())
        );
        // Admin.
        assert_eq!(
            p.decide(GRANT, &kim).unwrap(),
            Identity::Operator("kim".into())
        );
        assert_eq!(
            reason(p.decide(GRANT, &none)),
            (Code::Unauthenticated, "CREDENTIALS_MISSING".into())
        );
        assert_eq!(
            reason(p.decide(GRANT, &wrong)),
            (Code::Unauthenticated, "TOKEN_INVALID".into())
        );
        assert_eq!(
            reason(p.decide(GRANT, &service)),
            (Code::PermissionDenied, "WRONG_CLASS".into())
        );
        // The process's own calls, and an open policy.
        assert_eq!(p.decide(GRANT, &local).unwrap(), Identity::InProcess);
        assert_eq!(p.decide(DEDUCT, &local).unwrap(), Identity::InProcess);
        let open = AccessPolicy::open();
        assert_eq!(open.decide(GRANT, &none).unwrap(), Identity::Anonymous);
        assert_eq!(open.decide(DEDUCT, &local).unwrap(), Identity::InProcess);
        // One class enforced, the other open.
        let admin_only = AccessPolicy::new(AdminTokens::parse("").ok(), None);
        assert_eq!(
            admin_only.decide(DEDUCT, &none).unwrap(),
            Identity::Anonymous
        );
        assert_eq!(
            reason(admin_only.decide(GRANT, &kim)),
            (Code::Unauthenticated, "TOKEN_INVALID".into())
        );
        let internal_only = AccessPolicy::new(None, Some(vec!["order".into()]));
        assert_eq!(
            internal_only.decide(GRANT, &none).unwrap(),
            Identity::Anonymous
        );
        assert_eq!(
            reason(internal_only.decide(DEDUCT, &service)),
            (Code::PermissionDenied, "PEER_NOT_ALLOWED".into())
        );
        assert_eq!(Identity::Operator("kim".into()).to_string(), "token:kim");
        assert_eq!(Identity::User("alice".into()).to_string(), "user:alice");
        assert_eq!(
            Identity::Service("order".into()).to_string(),
            "service:order"
        );
    }

    #[test]
    fn end_users_on_public_rpcs() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::end_users::DevKey::load_or_create(dir.path()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = crate::end_users::DevKey::load_or_create(other_dir.path()).unwrap();
        let p = policy().with_end_users(
            key.verifier().unwrap(),
            Some(AdminTokens::parse(&AdminTokens::line_for("dev", "dev-secret")).unwrap()),
        );
        let hour = std::time::Duration::from_secs(3600);
        let alice = key.mint("alice", hour).unwrap();
        let forged = other.mint("alice", hour).unwrap();
        let with = |bearer| Credentials {
            bearer: Some(bearer),
            ..Credentials::default()
        };
        assert_eq!(
            p.decide(BALANCE, &with(&alice)).unwrap(),
            Identity::User("alice".into())
        );
        assert_eq!(
            reason(p.decide(BALANCE, &with(&forged))),
            (Code::Unauthenticated, "TOKEN_INVALID".into())
        );
        assert_eq!(
            reason(p.decide(BALANCE, &Credentials::default())),
            (Code::Unauthenticated, "CREDENTIALS_MISSING".into())
        );
        // Operators: the admin tokens and the extra public ones.
        assert_eq!(
            p.decide(BALANCE, &with("secret-kim")).unwrap(),
            Identity::Operator("kim".into())
        );
        assert_eq!(
            p.decide(BALANCE, &with("dev-secret")).unwrap(),
            Identity::Operator("dev".into())
        );
        // A service certificate, the process itself; health stays open.
        let service = Credentials {
            certificate_names: Some(vec!["order".into()]),
            ..Credentials::default()
        };
        assert_eq!(
            p.decide(BALANCE, &service).unwrap(),
            Identity::Service("order".into())
        );
        let local = Credentials {
            in_process: true,
            ..Credentials::default()
        };
        assert_eq!(p.decide(BALANCE, &local).unwrap(), Identity::InProcess);
        assert_eq!(
            p.decide("/grpc.health.v1.Health/Check", &Credentials::default())
                .unwrap(),
            Identity::Anonymous
        );
        // A user's JWT is no admin credential.
        assert_eq!(
            reason(p.decide(GRANT, &with(&alice))),
            (Code::Unauthenticated, "TOKEN_INVALID".into())
        );
        // The dev policy: end users only, admin and internal open.
        let dev = AccessPolicy::open().with_end_users(key.verifier().unwrap(), None);
        assert_eq!(
            dev.decide(GRANT, &Credentials::default()).unwrap(),
            Identity::Anonymous
        );
        assert_eq!(
            reason(dev.decide(BALANCE, &Credentials::default())),
            (Code::Unauthenticated, "CREDENTIALS_MISSING".into())
        );
    }

    #[test]
    fn ownership_rule() {
        let alice = Identity::User("alice".into());
        assert_eq!(alice.acting_user("user_id", "").unwrap(), "alice");
        assert_eq!(alice.acting_user("user_id", "alice").unwrap(), "alice");
        let denied = alice.acting_user("user_id", "bob").unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(
            denied.get_details_error_info().unwrap().reason,
            USER_MISMATCH
        );
        assert_eq!(alice.reading_user("").unwrap(), "alice");
        assert!(alice.reading_user("bob").is_err());
        assert!(alice.may_see("alice") && !alice.may_see("bob"));
        assert_eq!(alice.visible(Some(("bob", 1)), |r| r.0), None);
        assert_eq!(
            alice.visible(Some(("alice", 1)), |r| r.0),
            Some(("alice", 1))
        );
        for everyone in [
            Identity::Anonymous,
            Identity::InProcess,
            Identity::Service("order".into()),
            Identity::Operator("kim".into()),
        ] {
            assert_eq!(everyone.acting_user("user_id", "bob").unwrap(), "bob");
            assert_eq!(everyone.reading_user("bob").unwrap(), "bob");
            assert!(everyone.may_see("bob"));
        }
    }
}
