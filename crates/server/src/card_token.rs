//! Card tokens (PlaceOrder's `payment_method`) outside the payment service: masked wherever
//! they are shown, sealed wherever they are stored or travel (docs/operations.md, "Secrets and
//! card tokens"; docs/architecture.md, "Card tokens").
//!
//! - [`mask`] is the one display rule: the token's scheme prefix (`tok_`), `…`, and its last four
//!   characters only when the token is at least [`MASK_MIN_LEN_FOR_LAST4`] long, so no more than
//!   a third of a short token is ever shown: `tok_ok` → `tok_…`, `tok_capture_decline` →
//!   `tok_…line`, `tok_1N3T00LkdIwHu7ixt44h1F8k` → `tok_…1F8k`.
//! - [`CardTokenKey::seal`] encrypts a token for one order (AES-256-GCM, the order id as
//!   associated data, a random 96-bit nonce): `sealed:v1:<hex(nonce ‖ ciphertext ‖ tag)>`. The
//!   order service seals at PlaceOrder; the event, the saga input and the payment rows carry the
//!   sealed form; only the payment service opens it ([`CardTokenKey::open`]), right before a
//!   gateway call. A sealed token is bound to its order: opened for another order id it fails.
//!
//! The key is 32 random bytes, hex in a file ([`CardTokenKey::load`]); every order and payment
//! process of a deployment needs the same one.

use std::{fmt, io::Write as _, path::Path};

use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};

/// A masked token shows its last four characters only from this length on (characters).
pub const MASK_MIN_LEN_FOR_LAST4: usize = 12;

/// What every sealed token starts with (the format's version included).
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// Name of the key file in a data directory, the default key of `sagaflow dev` and of `sagaflow
/// serve order|payment` without `--card-token-key-file`.
pub const DEFAULT_KEY_FILE_NAME: &str = "card-token.key";

/// Longest sealed token, bytes: the sealed form of the longest card token PlaceOrder accepts
/// ([`crate::validate::MAX_STRING_BYTES`]): prefix, hex of nonce ‖ token ‖ 16-byte tag.
pub const SEALED_MAX_BYTES: usize =
    SEALED_PREFIX.len() + 2 * (NONCE_LEN + crate::validate::MAX_STRING_BYTES + 16);

/// Length of a key, bytes (AES-256).
const KEY_LEN: usize = 32;

/// The display form of a card token (see the module doc for the rule). A sealed token shows as
/// `sealed:v1:…`; an empty one stays empty.
pub fn mask(token: &str) -> String {
    if token.is_empty() {
        return String::new();
    }
    if token.starts_with(SEALED_PREFIX) {
        return format!("{SEALED_PREFIX}…");
    }
    // The scheme prefix (`tok_`, `pm_`, `card_`): not secret; at most 8 characters.
    let prefix = match token.char_indices().take(8).find(|(_, c)| *c == '_') {
        Some((at, _)) => &token[..=at],
        None => "",
    };
    let chars = token.chars().count();
    if chars >= MASK_MIN_LEN_FOR_LAST4 {
        let last4: String = token.chars().skip(chars - 4).collect();
        format!("{prefix}…{last4}")
    } else {
        format!("{prefix}…")
    }
}

/// `value` with every string in it that is a sealed card token replaced by its mask
/// (`sealed:v1:…`): what admin views show of a document that carries one (a saga input), so
/// that they show masked forms only, not even the ciphertext.
pub fn mask_sealed_in_json(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::String(s) if is_sealed(s) => serde_json::Value::String(mask(s)),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(mask_sealed_in_json).collect())
        }
        serde_json::Value::Object(fields) => serde_json::Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), mask_sealed_in_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether `value` is a sealed card token ([`SEALED_PREFIX`]).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// Why a card-token key or a sealed token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CardTokenError {
    /// The key file cannot be read, written or is not 64 hex digits.
    #[error("card-token key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The value is not a sealed token, was sealed with another key or for another order, or
    /// was altered.
    #[error(
        "the sealed card token cannot be opened (another deployment's key, another order, or altered)"
    )]
    Unopenable,
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
}

/// The deployment's card-token key (AES-256-GCM). `Debug` never shows it. Cloning is cheap
/// enough (the expanded key is copied).
#[derive(Clone)]
pub struct CardTokenKey {
    raw: [u8; KEY_LEN],
}

impl fmt::Debug for CardTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardTokenKey(..)")
    }
}

impl CardTokenKey {
    /// A fresh random key (tests, and [`CardTokenKey::load_or_create`]).
    ///
    /// # Errors
    /// [`CardTokenError::Random`] when the system random source fails.
    pub fn generate() -> Result<Self, CardTokenError> {
        let mut raw = [0_u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| CardTokenError::Random)?;
        Ok(Self { raw })
    }

    /// Reads the key from `path`: 64 hex digits, surrounding blanks ignored. The file's mode is
    /// left alone: an operator's file (a mounted secret) may not even be ours to change.
    ///
    /// # Errors
    /// [`CardTokenError::KeyFile`] when it is missing, unreadable or not 64 hex digits.
    pub fn load(path: &Path) -> Result<Self, CardTokenError> {
        let key_err = |reason: String| CardTokenError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|err| {
            key_err(format!(
                "{err}; make one with `openssl rand -hex 32 > FILE` (every order and payment \
                 process needs the same key)"
            ))
        })?;
        let bytes = hex::decode(text.trim())
            .map_err(|err| key_err(format!("not hex ({err}): expected 64 hex digits")))?;
        let raw: [u8; KEY_LEN] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            key_err(format!(
                "{} bytes, expected {KEY_LEN} (64 hex digits)",
                bytes.len()
            ))
        })?;
        Ok(Self { raw })
    }

    /// [`CardTokenKey::load`]s `path`, first writing a fresh random key there (mode 0600) when
    /// the file does not exist (the default key in a data directory). Processes starting together
    /// agree on one key: the new key is written to a temporary file and linked to `path` only if
    /// nothing is there yet (a link never replaces a file), so a reader never sees a half-written
    /// key and the loser of a race loads the winner's.
    ///
    /// # Errors
    /// [`CardTokenError::KeyFile`] when it cannot be created or read.
    pub fn load_or_create(path: &Path) -> Result<Self, CardTokenError> {
        use std::os::unix::fs::OpenOptionsExt as _;

        if path.exists() {
            // Ours (in the data directory): owner-only like every file there.
            crate::files::tighten(path).map_err(|err| CardTokenError::KeyFile {
                path: path.display().to_string(),
                reason: format!("cannot restrict it to its owner: {err}"),
            })?;
            return Self::load(path);
        }
        let key_err = |reason: String| CardTokenError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let key = Self::generate()?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::files::PRIVATE_FILE_MODE)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(format!("{}\n", hex::encode(key.raw)).as_bytes())?;
                file.sync_all()
            });
        if let Err(err) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(key_err(format!("cannot write a new key: {err}")));
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(file = %path.display(), "created a card-token key");
                Ok(key)
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(err) => Err(key_err(format!("cannot create it: {err}"))),
        }
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is always a valid AES-256 key.
        #[expect(clippy::expect_used, reason = "KEY_LEN is AES-256's key length")]
        let unbound = UnboundKey::new(&AES_256_GCM, &self.raw).expect("a 32-byte AES-256 key");
        LessSafeKey::new(unbound)
    }

    /// Seals `token` for the order `order_id` (the module doc gives the format).
    ///
    /// # Errors
    /// [`CardTokenError::Random`] when no nonce can be drawn.
    pub fn seal(&self, token: &str, order_id: &str) -> Result<String, CardTokenError> {
        let mut nonce = [0_u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CardTokenError::Random)?;
        let mut sealed = token.as_bytes().to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(order_id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| CardTokenError::Unopenable)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", hex::encode(out)))
    }

    /// Opens a token sealed by [`CardTokenKey::seal`] for `order_id`.
    ///
    /// # Errors
    /// [`CardTokenError::Unopenable`] when `sealed` is not a sealed token, was sealed with
    /// another key or for another order, or was altered.
    pub fn open(&self, sealed: &str, order_id: &str) -> Result<String, CardTokenError> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .ok_or(CardTokenError::Unopenable)?;
        if bytes.len() < NONCE_LEN {
            return Err(CardTokenError::Unopenable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CardTokenError::Unopenable)?;
        let mut buf = ciphertext.to_vec();
        let clear = self
            .aead()
            .open_in_place(nonce, Aad::from(order_id.as_bytes()), &mut buf)
            .map_err(|_| CardTokenError::Unopenable)?;
        String::from_utf8(clear.to_vec()).map_err(|_| CardTokenError::Unopenable)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn mask_rule() {
        assert_eq!(mask("tok_ok"), "tok_…");
        assert_eq!(mask("tok_visa"), "tok_…");
        assert_eq!(mask("tok_decline"), "tok_…");
        assert_eq!(mask("tok_capture_decline"), "tok_…line");
        assert_eq!(mask("tok_1N3T00LkdIwHu7ixt44h1F8k"), "tok_…1F8k");
        assert_eq!(mask("4242424242424242"), "…4242");
        assert_eq!(mask("abc"), "…");
        assert_eq!(mask(""), "");
        assert_eq!(mask("tok_ünïcødé_tøkéñ"), "tok_…økéñ");
        assert_eq!(mask("sealed:v1:00aa"), "sealed:v1:…");
        for token in ["tok_ok", "tok_capture_decline", "tok_slow"] {
            assert_ne!(mask(token), token);
        }
    }

    #[test]
    fn sealed_strings_in_json_are_masked() {
        let key = CardTokenKey::generate().unwrap();
        let input = serde_json::json!({
            "payment_method": "tok_…",
            "sealed_payment_method": key.seal("tok_ok", "o").unwrap(),
            "lines": [{"sku": "KB-001"}, key.seal("tok_ok", "o").unwrap()],
            "points": 5,
        });
        assert_eq!(
            mask_sealed_in_json(&input),
            serde_json::json!({
                "payment_method": "tok_…",
                "sealed_payment_method": "sealed:v1:…",
                "lines": [{"sku": "KB-001"}, "sealed:v1:…"],
                "points": 5,
            })
        );
    }

    #[test]
    fn the_longest_token_seals_within_the_bound() {
        let key = CardTokenKey::generate().unwrap();
        let longest = "x".repeat(crate::validate::MAX_STRING_BYTES);
        assert_eq!(key.seal(&longest, "o").unwrap().len(), SEALED_MAX_BYTES);
    }

    #[test]
    fn seal_and_open() {
        let key = CardTokenKey::generate().unwrap();
        let order = "0199a0e5-0000-7000-8000-000000000001";
        let sealed = key.seal("tok_capture_decline", order).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("tok_capture_decline"));
        assert_eq!(key.open(&sealed, order).unwrap(), "tok_capture_decline");
        // Random nonces: two seals differ.
        assert_ne!(
            key.seal("tok_ok", order).unwrap(),
            key.seal("tok_ok", order).unwrap()
        );
        // Another order, another key, an altered byte, not sealed at all.
        assert!(key.open(&sealed, "another").is_err());
        assert!(
            CardTokenKey::generate()
                .unwrap()
                .open(&sealed, order)
                .is_err()
        );
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        assert!(
            key.open(&String::from_utf8(altered).unwrap(), order)
                .is_err()
        );
        assert!(key.open("tok_ok", order).is_err());
        assert!(key.open("sealed:v1:zz", order).is_err());
        assert!(key.open("sealed:v1:", order).is_err());
    }

    #[test]
    fn key_file_created_private_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card-token.key");
        let created = CardTokenKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = CardTokenKey::load_or_create(&path).unwrap();
        let sealed = created.seal("tok_ok", "o").unwrap();
        assert_eq!(loaded.open(&sealed, "o").unwrap(), "tok_ok");
        std::fs::write(&path, "not hex").unwrap();
        assert!(CardTokenKey::load(&path).is_err());
        assert!(CardTokenKey::load(&dir.path().join("missing")).is_err());
    }
}
