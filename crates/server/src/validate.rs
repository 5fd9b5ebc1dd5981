//! Request validation that names the offending field (DESIGN §6; issue "Domain services" item 5).
//!
//! Collect every problem, then fail once:
//!
//! ```
//! use sagaflow_server::validate::Validator;
//!
//! let mut v = Validator::new();
//! let order_id = v.uuid("order_id", "not-a-uuid");
//! v.positive_i32("lines[0].quantity", 0);
//! let err = v.finish().unwrap_err();
//! assert!(err.to_string().contains("order_id"));
//! assert!(err.to_string().contains("lines[0].quantity"));
//! assert!(order_id.is_none());
//! ```

use std::time::Duration;

use uuid::Uuid;

use crate::error::{ServiceError, Violation};

/// Longest accepted string field, in bytes.
pub const MAX_STRING_BYTES: usize = 256;
/// Most lines in one order or stock request.
pub const MAX_LINES: usize = 100;
/// Longest `wait` accepted by long-polling queries.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest page size of any list RPC; 0 means [`DEFAULT_PAGE_SIZE`].
pub const MAX_PAGE_SIZE: i32 = 1000;
/// Page size used when a request gives 0.
pub const DEFAULT_PAGE_SIZE: i32 = 50;

/// Accumulates field violations.
#[derive(Debug, Default)]
pub struct Validator {
    violations: Vec<Violation>,
}

impl Validator {
    /// An empty validator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push(Violation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records a violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// A required string of 1 to [`MAX_STRING_BYTES`] bytes.
    pub fn required(&mut self, field: &str, value: &str) -> bool {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
            false
        } else {
            self.max_len(field, value)
        }
    }

    /// An optional string of at most [`MAX_STRING_BYTES`] bytes.
    pub fn max_len(&mut self, field: &str, value: &str) -> bool {
        if value.len() > MAX_STRING_BYTES {
            self.add(field, format!("must be at most {MAX_STRING_BYTES} bytes"));
            false
        } else {
            true
        }
    }

    /// A UUID in its canonical text form.
    pub fn uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        if value.is_empty() {
            self.add(field, "must not be empty");
            return None;
        }
        match Uuid::parse_str(value) {
            Ok(id) => Some(id),
            Err(_) => {
                self.add(field, "must be a UUID");
                None
            }
        }
    }

    /// An `int32` of 1 or more.
    pub fn positive_i32(&mut self, field: &str, value: i32) -> bool {
        self.check(value > 0, field, "must be at least 1");
        value > 0
    }

    /// An `int64` of 1 or more.
    pub fn positive_i64(&mut self, field: &str, value: i64) -> bool {
        self.check(value > 0, field, "must be at least 1");
        value > 0
    }

    /// An `int64` of 0 or more.
    pub fn non_negative_i64(&mut self, field: &str, value: i64) -> bool {
        self.check(value >= 0, field, "must not be negative");
        value >= 0
    }

    /// A page size: 0 becomes [`DEFAULT_PAGE_SIZE`]; negative or above [`MAX_PAGE_SIZE`] is
    /// rejected.
    pub fn page_size(&mut self, field: &str, value: i32) -> i64 {
        if !(0..=MAX_PAGE_SIZE).contains(&value) {
            self.add(field, format!("must be between 0 and {MAX_PAGE_SIZE}"));
            return i64::from(DEFAULT_PAGE_SIZE);
        }
        i64::from(if value == 0 { DEFAULT_PAGE_SIZE } else { value })
    }

    /// An optional `wait` duration of at most [`MAX_WAIT`].
    pub fn wait(&mut self, field: &str, value: Option<&prost_types::Duration>) -> Option<Duration> {
        let value = value?;
        if value.seconds < 0 || value.nanos < 0 {
            self.add(field, "must not be negative");
            return None;
        }
        let wait = Duration::new(
            u64::try_from(value.seconds).unwrap_or(u64::MAX),
            u32::try_from(value.nanos).unwrap_or(0),
        );
        if wait > MAX_WAIT {
            self.add(field, "must be at most 60s");
            return None;
        }
        Some(wait)
    }

    /// Whether nothing was recorded so far.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else `InvalidArgument` with every violation.
    ///
    /// # Errors
    /// [`ServiceError::InvalidArgument`] listing every offending field.
    pub fn finish(self) -> Result<(), ServiceError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(self.violations))
        }
    }
}

/// Encodes an opaque page token from the last key of a page.
pub fn encode_page_token(last_key: &str) -> String {
    hex::encode(last_key.as_bytes())
}

/// Decodes a page token made by [`encode_page_token`]; empty means the first page.
///
/// # Errors
/// `InvalidArgument` naming `field` when the token is not one of ours.
pub fn decode_page_token(field: &str, token: &str) -> Result<Option<String>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    hex::decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| ServiceError::invalid(field, "is not a page token from a previous response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation() {
        let mut v = Validator::new();
        v.required("user_id", "");
        v.required("sku", &"x".repeat(MAX_STRING_BYTES + 1));
        v.positive_i32("quantity", -1);
        v.non_negative_i64("points", -5);
        assert!(v.uuid("order_id", "nope").is_none());
        let err = v.finish().unwrap_err();
        let ServiceError::InvalidArgument(vs) = err else {
            panic!("expected InvalidArgument");
        };
        let fields: Vec<_> = vs.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["user_id", "sku", "quantity", "points", "order_id"]);
    }

    #[test]
    fn wait_is_bounded() {
        let mut v = Validator::new();
        let ok = v.wait(
            "wait",
            Some(&prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
        );
        assert_eq!(ok, Some(Duration::from_secs(5)));
        assert!(
            v.wait(
                "wait",
                Some(&prost_types::Duration {
                    seconds: 61,
                    nanos: 0
                })
            )
            .is_none()
        );
        assert!(!v.is_ok());
    }

    #[test]
    fn page_tokens_round_trip() {
        let token = encode_page_token("KB-001");
        assert_eq!(
            decode_page_token("page_token", &token).unwrap().as_deref(),
            Some("KB-001")
        );
        assert!(decode_page_token("page_token", "zz").is_err());
        assert_eq!(decode_page_token("page_token", "").unwrap(), None);
    }
}
