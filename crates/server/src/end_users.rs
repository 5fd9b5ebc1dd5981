//! End users on the public RPCs (docs/operations.md, "Security", "End users"): who the caller of a
//! public RPC is, from a bearer JWT, and the development key that lets `sagaflow dev` issue such
//! tokens without any set-up.
//!
//! ```text
//!  authorization: Bearer <JWT>
//!     │ header: alg, kid ─▶ key of the key set (JWKS file; by kid, else every key of that alg)
//!     │ signature (jsonwebtoken on ring) ─▶ exp (60 s leeway), iss == --jwt-issuer,
//!     │ aud ∋ --jwt-audience (when configured), sub non-empty without control characters
//!     ▼
//!  Identity::User(sub)      expired ─▶ TOKEN_EXPIRED     anything else ─▶ TOKEN_INVALID
//! ```
//!
//! Main types in order of use: [`UserVerifier`] (the key set, issuer and audience a server
//! trusts; [`UserVerifier::verify`] gives the subject), [`TokenError`] (why a token is refused),
//! [`DevKey`] (`sagaflow dev`'s Ed25519 key in its data directory: its verifier and
//! [`DevKey::mint`] for `sagaflow token`), [`dev_operator_token`] (`sagaflow dev`'s own operator
//! token, with which the client commands see every user's data).
//!
//! Only asymmetric keys are accepted (EdDSA, ES256/ES384, RS256–RS512, PS256–PS512): a shared
//! secret in a JWKS file would let whoever reads the file mint tokens. The algorithm comes from the
//! key (its `alg`, or its key type and curve), never from the token alone, so a token cannot pick a
//! weaker algorithm than its key's.

use std::{
    fmt,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use self::jwks_url::JwksUrl;
use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
        OctetKeyPairParameters, OctetKeyPairType,
    },
};
use ring::{
    rand::{SecureRandom as _, SystemRandom},
    signature::{Ed25519KeyPair, KeyPair as _},
};

pub mod jwks_url;

/// The issuer of the tokens `sagaflow dev` issues and accepts (`iss`).
pub const DEV_ISSUER: &str = "sagaflow-dev";

/// File of `sagaflow dev`'s signing key in its data directory: an Ed25519 key, PKCS#8 in PEM,
/// mode 0600.
pub const DEV_KEY_FILE: &str = "dev-signing-key.pem";

/// File of `sagaflow dev`'s operator token in its data directory (64 hex digits, mode 0600).
pub const DEV_OPERATOR_TOKEN_FILE: &str = "dev-operator-token";

/// The id (`kid`) of `sagaflow dev`'s key in its tokens and JWKS.
const DEV_KEY_ID: &str = "sagaflow-dev-1";

/// Why a bearer token is refused. Both are UNAUTHENTICATED; the reason tells a client whether to
/// get a fresh token ([`TokenError::Expired`]) or a right one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Its `exp` is past (beyond the 60 s leeway). `ErrorInfo` reason `TOKEN_EXPIRED`.
    #[error("the bearer token has expired")]
    Expired,
    /// Malformed, signed by no key of the key set, of another issuer or audience, not yet valid,
    /// or without a usable subject. `ErrorInfo` reason `TOKEN_INVALID`; the text says which.
    #[error("the bearer token is not valid: {0}")]
    Invalid(&'static str),
    /// The key set of a JWKS URL has never been fetched (the issuer's server does not answer):
    /// nothing can be verified, whatever the token. UNAVAILABLE, `ErrorInfo` reason
    /// `KEYS_UNAVAILABLE`: the caller may retry.
    #[error("the issuer's keys cannot be fetched: try again later")]
    KeysUnavailable,
}

impl TokenError {
    /// The `google.rpc.ErrorInfo` reason: `TOKEN_EXPIRED`, `TOKEN_INVALID` or
    /// `KEYS_UNAVAILABLE`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Expired => "TOKEN_EXPIRED",
            Self::Invalid(_) => "TOKEN_INVALID",
            Self::KeysUnavailable => "KEYS_UNAVAILABLE",
        }
    }

    /// The gRPC code of the refusal: UNAUTHENTICATED, or UNAVAILABLE for
    /// [`TokenError::KeysUnavailable`].
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Expired | Self::Invalid(_) => tonic::Code::Unauthenticated,
            Self::KeysUnavailable => tonic::Code::Unavailable,
        }
    }
}

/// A key set or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JWKS is not `{"keys": [...]}` of usable public keys, or a key file is not a key.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// One verification key: its id, the one algorithm it verifies, the key.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The claims read from a token; `exp`, `iss` and `sub` are required (`aud` is checked by the
/// validation when an audience is configured).
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies end users' bearer JWTs against one issuer, an optional audience and a key set
/// (docs/operations.md, "End users"). Cheap to clone behind an `Arc`; verification is
/// synchronous and does no I/O. A key set from a JWKS URL is fetched by
/// [`UserVerifier::refresh_if_needed`], which the access layer awaits before it verifies.
#[derive(Clone)]
pub struct UserVerifier {
    issuer: String,
    audience: Option<String>,
    /// The current keys; replaced whole by a refresh of a JWKS URL.
    keys: Arc<RwLock<Arc<Vec<VerifyingKey>>>>,
    /// Where the keys come from when it is a URL; `None`: fixed at start (a file, `dev`'s key).
    source: Option<Arc<JwksUrl>>,
}

impl fmt::Debug for UserVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .current_keys()
            .iter()
            .map(|k| format!("{:?}/{}", k.algorithm, k.kid.as_deref().unwrap_or("-")))
            .collect();
        f.debug_struct("UserVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &keys)
            .finish()
    }
}

impl UserVerifier {
    /// A verifier of tokens issued by `issuer` (the exact `iss`), for `audience` when given (then
    /// `aud` must contain it; without one, a token carrying any `aud` is refused, as RFC 7519
    /// §4.1.3 asks of a recipient that does not identify itself), signed by a key of `jwks`.
    ///
    /// # Errors
    /// [`KeySetError::Malformed`] (`path` names the source in the message) when the set has no
    /// key, or a key is symmetric (`oct`), of an unknown curve or algorithm, or does not decode.
    pub fn new(
        issuer: impl Into<String>,
        audience: Option<String>,
        jwks: &JwkSet,
        path: &str,
    ) -> Result<Self, KeySetError> {
        Ok(Self {
            issuer: issuer.into(),
            audience,
            keys: Arc::new(RwLock::new(Arc::new(keys_of(jwks, path)?))),
            source: None,
        })
    }

    /// A verifier whose key set is the JWKS at `url` (`http://` or `https://`; HTTPS trusts only
    /// the CA certificates of the PEM file `ca`: no public roots are built in), fetched on the
    /// first call that needs it and again every `refresh`, or when a token names an unknown `kid`
    /// (at most every [`jwks_url::MIN_REFETCH`]); a failed fetch keeps the keys it had (logged).
    ///
    /// # Errors
    /// [`KeySetError::Malformed`] for a URL of another scheme or without a host, HTTPS without
    /// `ca`; [`KeySetError::Io`] when `ca` cannot be read.
    pub fn from_jwks_url(
        issuer: impl Into<String>,
        audience: Option<String>,
        url: &str,
        ca: Option<&Path>,
        refresh: Duration,
    ) -> Result<Self, KeySetError> {
        Ok(Self {
            issuer: issuer.into(),
            audience,
            keys: Arc::new(RwLock::new(Arc::new(Vec::new()))),
            source: Some(Arc::new(JwksUrl::new(url, ca, refresh)?)),
        })
    }

    /// Whether [`UserVerifier::refresh_if_needed`] would fetch for `token` (cheap: no I/O).
    pub fn needs_refresh(&self, token: Option<&str>) -> bool {
        self.source
            .as_ref()
            .is_some_and(|source| source.due(self.names_unknown_kid(token)))
    }

    /// Fetches the JWKS of the URL when it is due (see [`UserVerifier::from_jwks_url`]); one
    /// fetch at a time (a call that finds one running goes on with the keys there are), bounded
    /// by [`jwks_url::FETCH_TIMEOUT`]. Nothing for a fixed key set.
    pub async fn refresh_if_needed(&self, token: Option<&str>) {
        let Some(source) = &self.source else {
            return;
        };
        let unknown = self.names_unknown_kid(token);
        match source.fetch_if_due(unknown).await {
            None => {}
            Some(Ok(jwks)) => match keys_of(&jwks, source.shown()) {
                Ok(keys) => {
                    tracing::info!(url = source.shown(), keys = keys.len(), "JWKS fetched");
                    *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "JWKS refused: keeping the keys there were");
                }
            },
            Some(Err(err)) => {
                tracing::warn!(url = source.shown(), error = %err, "JWKS fetch failed: keeping the keys there were");
            }
        }
    }

    /// Whether `token`'s header names a `kid` the current keys do not have.
    fn names_unknown_kid(&self, token: Option<&str>) -> bool {
        let Some(kid) = token
            .and_then(|t| jsonwebtoken::decode_header(t).ok())
            .and_then(|h| h.kid)
        else {
            return false;
        };
        !self
            .current_keys()
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid.as_str()))
    }

    fn current_keys(&self) -> Arc<Vec<VerifyingKey>> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads a JWKS file (`{"keys": [...]}`, RFC 7517 §5) and makes a verifier of it.
    ///
    /// # Errors
    /// [`KeySetError`] when the file cannot be read, is not a JWKS, or holds an unusable key.
    pub fn from_jwks_file(
        issuer: impl Into<String>,
        audience: Option<String>,
        path: &Path,
    ) -> Result<Self, KeySetError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeySetError::Io {
            path: shown.clone(),
            source,
        })?;
        let jwks: JwkSet = serde_json::from_str(&text).map_err(|err| KeySetError::Malformed {
            path: shown.clone(),
            reason: format!("not a JWKS (`{{\"keys\": [...]}}`): {err}"),
        })?;
        Self::new(issuer, audience, &jwks, &shown)
    }

    /// The issuer this verifier accepts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The subject (`sub`) of a valid `token`: the caller's user id.
    ///
    /// # Errors
    /// [`TokenError::Expired`] for a past `exp`; [`TokenError::Invalid`] for anything else
    /// wrong (see its docs).
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed (not a signed JWT)"))?;
        let keys = self.current_keys();
        if keys.is_empty() {
            return Err(TokenError::KeysUnavailable);
        }
        let candidates: Vec<&VerifyingKey> = match &header.kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect(),
            None => keys.iter().collect(),
        };
        let candidates: Vec<&VerifyingKey> = candidates
            .into_iter()
            .filter(|k| k.algorithm == header.alg)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::Invalid(
                "signed with a key or algorithm the key set does not have",
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Without a configured audience a token that names one is refused (jsonwebtoken's
        // default, RFC 7519 §4.1.3): it was meant for someone else.
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
        }
        let mut last = TokenError::Invalid("the signature does not verify");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return subject(data.claims.sub),
                Err(err) => {
                    last = match err.kind() {
                        ErrorKind::InvalidSignature => {
                            TokenError::Invalid("the signature does not verify")
                        }
                        // The signature verified: the claims decide, whatever another key says.
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::InvalidIssuer => {
                            return Err(TokenError::Invalid("issued by another issuer"));
                        }
                        ErrorKind::InvalidAudience => {
                            return Err(TokenError::Invalid("meant for another audience"));
                        }
                        ErrorKind::ImmatureSignature => {
                            return Err(TokenError::Invalid("not valid yet (nbf)"));
                        }
                        ErrorKind::MissingRequiredClaim(_) => {
                            return Err(TokenError::Invalid("exp, iss or sub is missing"));
                        }
                        _ => TokenError::Invalid("malformed"),
                    };
                }
            }
        }
        Err(last)
    }
}

/// The verification keys of `jwks` (`path` names its source in errors).
fn keys_of(jwks: &JwkSet, path: &str) -> Result<Vec<VerifyingKey>, KeySetError> {
    let malformed = |reason: String| KeySetError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let mut keys = Vec::with_capacity(jwks.keys.len());
    for (index, jwk) in jwks.keys.iter().enumerate() {
        let algorithm =
            key_algorithm(jwk).map_err(|why| malformed(format!("key {index}: {why}")))?;
        let key =
            DecodingKey::from_jwk(jwk).map_err(|err| malformed(format!("key {index}: {err}")))?;
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(malformed("the key set has no key".into()));
    }
    Ok(keys)
}

/// A subject usable as a user id: not empty, at most 256 bytes, no control characters (user ids
/// refuse them everywhere; docs/operations.md, "Security").
fn subject(sub: String) -> Result<String, TokenError> {
    if sub.is_empty() || sub.len() > 256 || sub.chars().any(char::is_control) {
        return Err(TokenError::Invalid(
            "the subject is empty, longer than 256 bytes or has control characters",
        ));
    }
    Ok(sub)
}

/// The one algorithm `jwk` verifies: its `alg`, or what its key type and curve imply.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted: anyone who can read the key set could mint tokens".into());
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKeyPair(_) => {
            return Err("only the Ed25519 curve is supported for OKP keys".into());
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("only P-256 and P-384 are supported for EC keys".into()),
        },
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
    };
    let Some(declared) = jwk.common.key_algorithm else {
        return Ok(implied);
    };
    let algorithm = match declared {
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        other => return Err(format!("algorithm {other:?} is not accepted")),
    };
    let family_matches = match implied {
        Algorithm::RS256 => matches!(
            algorithm,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        other => other == algorithm,
    };
    if !family_matches {
        return Err(format!("alg {algorithm:?} does not match the key type"));
    }
    Ok(algorithm)
}

/// `sagaflow dev`'s signing key (docs/operations.md, "End users"): an Ed25519 key made on the
/// first start in the data directory ([`DEV_KEY_FILE`], mode 0600). `dev` verifies tokens
/// against it ([`DevKey::verifier`], issuer [`DEV_ISSUER`]); `sagaflow token` signs with it
/// ([`DevKey::mint`]).
pub struct DevKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl fmt::Debug for DevKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevKey").finish_non_exhaustive()
    }
}

impl DevKey {
    /// The key of `data_dir`, made (and written with mode 0600) when there is none yet.
    ///
    /// # Errors
    /// [`KeySetError`] when the file cannot be read or written, or does not hold an Ed25519
    /// PKCS#8 key.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, KeySetError> {
        let path = data_dir.join(DEV_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Self::parse(&text, &path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io(&path, source)),
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
            KeySetError::Malformed {
                path: path.display().to_string(),
                reason: "the system random generator failed".into(),
            }
        })?;
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        match write_private(&path, pem.as_bytes()) {
            Ok(()) => Self::parse(&pem, &path),
            // Another process (`sagaflow token` beside a starting `dev`) made it first.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Self::load(data_dir),
            Err(source) => Err(io(&path, source)),
        }
    }

    /// The key of `data_dir`.
    ///
    /// # Errors
    /// [`KeySetError::Io`] when there is none (start `sagaflow dev` once) or it cannot be read;
    /// [`KeySetError::Malformed`] when it is not an Ed25519 PKCS#8 key.
    pub fn load(data_dir: &Path) -> Result<Self, KeySetError> {
        let path = data_dir.join(DEV_KEY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| io(&path, source))?;
        Self::parse(&text, &path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, KeySetError> {
        let malformed = |reason: &str| KeySetError::Malformed {
            path: path.display().to_string(),
            reason: reason.to_owned(),
        };
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| malformed("not a PEM private key"))?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| malformed("not an Ed25519 PKCS#8 key"))?;
        Ok(Self {
            public: pair.public_key().as_ref().to_vec(),
            pkcs8,
        })
    }

    /// The public key as a JWKS of one key (kid `sagaflow-dev-1`, alg EdDSA): what a deployment
    /// would publish; `dev` verifies against it.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![Jwk {
                common: CommonParameters {
                    key_algorithm: Some(KeyAlgorithm::EdDSA),
                    key_id: Some(DEV_KEY_ID.to_owned()),
                    ..CommonParameters::default()
                },
                algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public),
                }),
            }],
        }
    }

    /// The verifier `sagaflow dev` uses: issuer [`DEV_ISSUER`], no audience, this key.
    ///
    /// # Errors
    /// None in practice (the JWKS is this key's); [`KeySetError`] if it did not decode.
    pub fn verifier(&self) -> Result<UserVerifier, KeySetError> {
        UserVerifier::new(DEV_ISSUER, None, &self.jwks(), DEV_KEY_FILE)
    }

    /// A token with exactly `claims`, signed with this key (kid `sagaflow-dev-1`): for tools and
    /// tests that need a token [`DevKey::mint`] does not make (another issuer, a past `exp`).
    ///
    /// # Errors
    /// When signing fails (not expected for a key that parsed).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(DEV_KEY_ID.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8))
    }

    /// A token for `subject` valid for `ttl` from now, issued by [`DEV_ISSUER`] and signed with
    /// this key (what `sagaflow token` prints).
    ///
    /// # Errors
    /// When signing fails (a key ring refuses: not expected for a key that parsed).
    pub fn mint(
        &self,
        subject: &str,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": DEV_ISSUER,
            "sub": subject,
            "iat": now,
            "exp": now.saturating_add(ttl.as_secs()),
        });
        self.sign(&claims)
    }
}

/// `sagaflow dev`'s operator token (docs/operations.md, "End users"): made on the first start in
/// the data directory ([`DEV_OPERATOR_TOKEN_FILE`], 32 random bytes as hex, mode 0600). On the
/// public RPCs it is an operator's credential that sees every user's data: the client commands
/// (`demo`, `bench`, `seed`, `saga` against a running `dev`) send it.
///
/// # Errors
/// [`KeySetError::Io`] when the file cannot be read or written.
pub fn dev_operator_token(data_dir: &Path) -> Result<String, KeySetError> {
    let path = data_dir.join(DEV_OPERATOR_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io(&path, source)),
    }
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeySetError::Malformed {
            path: path.display().to_string(),
            reason: "the system random generator failed".into(),
        })?;
    let token = hex::encode(bytes);
    match write_private(&path, format!("{token}\n").as_bytes()) {
        Ok(()) => Ok(token),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_owned())
                .map_err(|source| io(&path, source))
        }
        Err(source) => Err(io(&path, source)),
    }
}

/// Writes a new file readable by its owner only (0600), failing if it exists.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn io(path: &Path, source: std::io::Error) -> KeySetError {
    KeySetError::Io {
        path: PathBuf::from(path).display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn sign(key: &DevKey, claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&key.pkcs8)).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn dev_key_is_made_once_private_and_verifies_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(DEV_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = DevKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.public, again.public, "the same key on the second start");
        let verifier = key.verifier().unwrap();
        let token = key.mint("alice", Duration::from_secs(3600)).unwrap();
        assert_eq!(verifier.verify(&token).unwrap(), "alice");
        assert_eq!(again.verifier().unwrap().verify(&token).unwrap(), "alice");
        let operator = dev_operator_token(dir.path()).unwrap();
        assert_eq!(operator.len(), 64);
        assert_eq!(dev_operator_token(dir.path()).unwrap(), operator);
        let mode = std::fs::metadata(dir.path().join(DEV_OPERATOR_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(dir.path()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = DevKey::load_or_create(other_dir.path()).unwrap();
        let verifier = key.verifier().unwrap();
        let claims =
            |iss: &str, exp: u64| serde_json::json!({"iss": iss, "sub": "bob", "exp": exp});
        let hour_later = now() + 3600;
        // Valid, with and without kid.
        let ok = sign(&key, &claims(DEV_ISSUER, hour_later), None);
        assert_eq!(verifier.verify(&ok).unwrap(), "bob");
        // Expired (past the 60 s leeway).
        let expired = sign(&key, &claims(DEV_ISSUER, now() - 3600), Some(DEV_KEY_ID));
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        assert_eq!(TokenError::Expired.reason(), "TOKEN_EXPIRED");
        // Signed by another key, with the same kid.
        let forged = sign(&other, &claims(DEV_ISSUER, hour_later), Some(DEV_KEY_ID));
        let err = verifier.verify(&forged).unwrap_err();
        assert_eq!(err.reason(), "TOKEN_INVALID");
        assert!(err.to_string().contains("signature"), "{err}");
        // An expired token of another key is invalid, not expired: the claims of an unverified
        // token say nothing.
        let forged_expired = sign(&other, &claims(DEV_ISSUER, now() - 3600), None);
        assert_eq!(
            verifier.verify(&forged_expired).unwrap_err().reason(),
            "TOKEN_INVALID"
        );
        // Another issuer.
        let foreign = sign(&key, &claims("https://elsewhere", hour_later), None);
        assert!(
            verifier
                .verify(&foreign)
                .unwrap_err()
                .to_string()
                .contains("issuer")
        );
        // An unknown kid; malformed; missing claims; bad subjects; an audience nobody asked for.
        let unknown = sign(&key, &claims(DEV_ISSUER, hour_later), Some("other"));
        assert_eq!(
            verifier.verify(&unknown).unwrap_err().reason(),
            "TOKEN_INVALID"
        );
        for junk in ["", "abc", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
            assert_eq!(
                verifier.verify(junk).unwrap_err().reason(),
                "TOKEN_INVALID",
                "{junk}"
            );
        }
        let no_exp = sign(
            &key,
            &serde_json::json!({"iss": DEV_ISSUER, "sub": "bob"}),
            None,
        );
        assert!(
            verifier
                .verify(&no_exp)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        for sub in ["", "bo\nb"] {
            let t = sign(
                &key,
                &serde_json::json!({"iss": DEV_ISSUER, "sub": sub, "exp": hour_later}),
                None,
            );
            assert_eq!(
                verifier.verify(&t).unwrap_err().reason(),
                "TOKEN_INVALID",
                "{sub:?}"
            );
        }
        let with_aud = sign(
            &key,
            &serde_json::json!({"iss": DEV_ISSUER, "sub": "bob", "exp": hour_later, "aud": "shop"}),
            None,
        );
        assert!(verifier.verify(&with_aud).is_err());
        // A configured audience is required to match.
        let shop = UserVerifier::new(DEV_ISSUER, Some("shop".into()), &key.jwks(), "t").unwrap();
        assert_eq!(shop.verify(&with_aud).unwrap(), "bob");
        let other_aud = sign(
            &key,
            &serde_json::json!({"iss": DEV_ISSUER, "sub": "bob", "exp": hour_later, "aud": "bank"}),
            None,
        );
        assert!(
            shop.verify(&other_aud)
                .unwrap_err()
                .to_string()
                .contains("audience")
        );
    }

    #[test]
    fn jwks_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, serde_json::to_string(&key.jwks()).unwrap()).unwrap();
        let verifier = UserVerifier::from_jwks_file("https://id.example", None, &path).unwrap();
        assert_eq!(verifier.issuer(), "https://id.example");
        for (text, expect) in [
            ("not json", "not a JWKS"),
            (r#"{"keys": []}"#, "no key"),
            (
                r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
                "symmetric",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = UserVerifier::from_jwks_file("i", None, &path)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
        let err = UserVerifier::from_jwks_file("i", None, Path::new("/nonexistent/jwks"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/jwks"), "{err}");
    }
}
