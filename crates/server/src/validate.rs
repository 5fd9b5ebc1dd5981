//! Request validation that names the offending field (docs/architecture.md, "The service
//! contract").
//!
//! **Control characters.** No string field may hold a control character other than tab, line
//! feed and carriage return (U+0000–U+0008, U+000B, U+000C, U+000E–U+001F, U+007F–U+009F: Unicode
//! category Cc less `\t`, `\n`, `\r`); identifiers (ids, keys, codes, skus, tokens: every field
//! checked by [`Validator::required`], [`Validator::max_len`] or [`Validator::uuid`]) may hold
//! none at all. PostgreSQL cannot store U+0000 in `TEXT` while SQLite can, so without this rule
//! the same request would be INVALID_ARGUMENT on one store and accepted on the other. The first
//! rule holds for every string field of every request, nested and repeated ones included, before
//! any handler runs ([`string_field_violations`], applied by [`crate::string_guard`]); the second
//! one is the handlers' own, through this validator. Free text that is not an identifier (a
//! product name) goes through [`Validator::required_text`] or [`Validator::text`].
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

use prost_reflect::{DynamicMessage, MapKey, Value};
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

/// Most violations a [`Validator`] keeps; later ones are dropped (a status reports at most
/// [`crate::error::MAX_REPORTED_VIOLATIONS`] of them anyway). Requests reach a validator with
/// at most [`MAX_LINES`] elements per repeated field ([`crate::repeated`]), so this only bounds
/// the work of one that did not.
pub const MAX_KEPT_VIOLATIONS: usize = 1_000;

/// Accumulates field violations (at most [`MAX_KEPT_VIOLATIONS`]).
#[derive(Debug, Default)]
pub struct Validator {
    violations: Vec<Violation>,
}

impl Validator {
    /// An empty validator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field` (once: the same field and description again is ignored).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.violations.len() >= MAX_KEPT_VIOLATIONS {
            return;
        }
        let violation = Violation {
            field: field.into(),
            description: description.into(),
        };
        if !self.violations.contains(&violation) {
            self.violations.push(violation);
        }
    }

    /// Records a violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// A required identifier (an id, key, code, sku or token): not blank, at most
    /// [`MAX_STRING_BYTES`] bytes, no control character at all ([`is_forbidden_in_identifier`]).
    /// Records one violation of `field` and returns `false` otherwise.
    pub fn required(&mut self, field: &str, value: &str) -> bool {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
            false
        } else {
            self.max_len(field, value)
        }
    }

    /// An optional identifier: empty, or at most [`MAX_STRING_BYTES`] bytes without any control
    /// character ([`is_forbidden_in_identifier`]). Records one violation of `field` and returns
    /// `false` otherwise.
    pub fn max_len(&mut self, field: &str, value: &str) -> bool {
        self.string(field, value, is_forbidden_in_identifier)
    }

    /// Required free text (a product name): not blank, at most [`MAX_STRING_BYTES`] bytes, no
    /// control character other than tab, line feed and carriage return ([`is_forbidden_in_text`]).
    /// Records one violation of `field` and returns `false` otherwise.
    pub fn required_text(&mut self, field: &str, value: &str) -> bool {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
            false
        } else {
            self.text(field, value)
        }
    }

    /// Optional free text: empty, or at most [`MAX_STRING_BYTES`] bytes without a control
    /// character other than tab, line feed and carriage return ([`is_forbidden_in_text`]).
    /// Records one violation of `field` and returns `false` otherwise.
    pub fn text(&mut self, field: &str, value: &str) -> bool {
        self.string(field, value, is_forbidden_in_text)
    }

    fn string(&mut self, field: &str, value: &str, forbidden: fn(char) -> bool) -> bool {
        if value.len() > MAX_STRING_BYTES {
            self.add(field, format!("must be at most {MAX_STRING_BYTES} bytes"));
            false
        } else if let Some(c) = value.chars().find(|c| forbidden(*c)) {
            self.add(field, control_character_description(c));
            false
        } else {
            true
        }
    }

    /// A validator of a keyed command, `idempotency_key` already checked: present
    /// (docs/architecture.md, "The service contract").
    pub fn command(idempotency_key: &str) -> Self {
        let mut v = Self::new();
        v.required("idempotency_key", idempotency_key);
        v
    }

    /// Like [`Validator::uuid`], as canonical text (lower case, hyphenated); empty when invalid
    /// (then [`Validator::finish`] fails).
    pub fn uuid_text(&mut self, field: &str, value: &str) -> String {
        self.uuid(field, value)
            .map(|id| id.to_string())
            .unwrap_or_default()
    }

    /// A UUID in its canonical text form (which has no control characters).
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

/// Whether `c` may not appear in an identifier: every control character (Unicode category Cc:
/// U+0000–U+001F and U+007F–U+009F).
pub fn is_forbidden_in_identifier(c: char) -> bool {
    c.is_control()
}

/// Whether `c` may not appear in any string field, free text included: every control character
/// except tab, line feed and carriage return.
pub fn is_forbidden_in_text(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// The violation description for a forbidden character, naming its code point (`U+0000`).
fn control_character_description(c: char) -> String {
    format!(
        "must not contain control characters (found U+{:04X})",
        u32::from(c)
    )
}

/// The violations of the rule every string field obeys ([`is_forbidden_in_text`]), for every
/// string field of `message`, nested messages, repeated fields and map entries included, one per
/// offending field, named by its proto path as the handlers name fields (`lines[0].sku`,
/// `event.order.user_id`, `labels["k"]`). Empty when every string is clean.
pub fn string_field_violations(message: &DynamicMessage) -> Vec<Violation> {
    let mut out = Vec::new();
    collect_message(message, "", &mut out);
    out
}

fn collect_message(message: &DynamicMessage, prefix: &str, out: &mut Vec<Violation>) {
    for (field, value) in message.fields() {
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        collect_value(value, &path, out);
    }
}

fn collect_value(value: &Value, path: &str, out: &mut Vec<Violation>) {
    match value {
        Value::String(text) => {
            if let Some(c) = text.chars().find(|c| is_forbidden_in_text(*c)) {
                out.push(Violation {
                    field: path.to_owned(),
                    description: control_character_description(c),
                });
            }
        }
        Value::Message(message) => collect_message(message, path, out),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_value(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                let entry = match key {
                    MapKey::String(k) => format!("{path}[{k:?}]"),
                    MapKey::Bool(k) => format!("{path}[{k}]"),
                    MapKey::I32(k) => format!("{path}[{k}]"),
                    MapKey::I64(k) => format!("{path}[{k}]"),
                    MapKey::U32(k) => format!("{path}[{k}]"),
                    MapKey::U64(k) => format!("{path}[{k}]"),
                };
                if let MapKey::String(k) = key
                    && let Some(c) = k.chars().find(|c| is_forbidden_in_text(*c))
                {
                    out.push(Violation {
                        field: entry.clone(),
                        description: format!("key {}", control_character_description(c)),
                    });
                }
                collect_value(item, &entry, out);
            }
        }
        _ => {}
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
    // Our keys hold no control characters, so a token that decodes to one is not ours.
    hex::decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|key| !key.chars().any(is_forbidden_in_identifier))
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
    fn identifiers_refuse_every_control_character() {
        for bad in [
            "a\u{0}b",
            "\u{0}",
            "tab\there",
            "line\nfeed",
            "cr\r",
            "\u{1b}[0m",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            let mut v = Validator::new();
            assert!(!v.required("user_id", bad), "{bad:?}");
            assert!(!v.max_len("coupon_code", bad), "{bad:?}");
            assert!(v.uuid("order_id", bad).is_none(), "{bad:?}");
            let ServiceError::InvalidArgument(vs) = v.finish().unwrap_err() else {
                panic!("expected InvalidArgument");
            };
            let fields: Vec<_> = vs.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(fields, ["user_id", "coupon_code", "order_id"], "{bad:?}");
        }
        let mut v = Validator::new();
        v.required("sku", "a\u{0}b");
        let err = v.finish().unwrap_err().to_string();
        assert!(
            err.contains("sku: must not contain control characters (found U+0000)"),
            "{err}"
        );
        // Clean identifiers, spaces and non-ASCII letters included, pass.
        let mut v = Validator::new();
        assert!(v.required("user_id", "김 민수"));
        assert!(v.max_len("coupon_code", ""));
        assert!(v.max_len("coupon_code", "WELCOME-ALICE"));
        assert!(v.is_ok());
    }

    #[test]
    fn free_text_allows_tab_and_newlines_only() {
        let mut v = Validator::new();
        assert!(v.required_text("name", "Mechanical keyboard\tblack\r\nUS layout"));
        assert!(v.text("name", ""));
        assert!(v.is_ok());
        for bad in [
            "a\u{0}b",
            "bell\u{7}",
            "\u{1b}[31mred",
            "del\u{7f}",
            "\u{9b}",
        ] {
            let mut v = Validator::new();
            assert!(!v.required_text("name", bad), "{bad:?}");
            assert!(!v.text("name", bad), "{bad:?}");
            let ServiceError::InvalidArgument(vs) = v.finish().unwrap_err() else {
                panic!("expected InvalidArgument");
            };
            // The same violation twice is recorded once.
            assert_eq!(vs.len(), 1, "{bad:?}: {vs:?}");
            assert_eq!(vs[0].field, "name");
        }
        let mut v = Validator::new();
        assert!(!v.required_text("name", " \t\n"));
        assert!(!v.required_text("name", &"x".repeat(MAX_STRING_BYTES + 1)));
        assert!(v.text("name", &"x".repeat(MAX_STRING_BYTES)));
    }

    #[test]
    fn the_character_rules() {
        for c in [
            '\u{0}', '\u{1}', '\u{8}', '\u{b}', '\u{c}', '\u{e}', '\u{1f}', '\u{7f}', '\u{80}',
            '\u{9f}',
        ] {
            assert!(is_forbidden_in_text(c), "{c:?}");
            assert!(is_forbidden_in_identifier(c), "{c:?}");
        }
        for c in ['\t', '\n', '\r'] {
            assert!(!is_forbidden_in_text(c), "{c:?}");
            assert!(is_forbidden_in_identifier(c), "{c:?}");
        }
        for c in [' ', 'a', '\u{a0}', '\u{200b}', '한', '\u{fffd}'] {
            assert!(!is_forbidden_in_text(c), "{c:?}");
            assert!(!is_forbidden_in_identifier(c), "{c:?}");
        }
    }

    #[test]
    fn string_fields_of_nested_and_repeated_messages_are_named_by_path() {
        use prost::Message as _;
        use sagaflow_proto::order::v1::{Order, OrderCompletedEvent, OrderLine};
        let event = OrderCompletedEvent {
            order: Some(Order {
                order_id: "a\u{0}b".into(),
                user_id: "alice\n".into(),
                lines: vec![
                    OrderLine {
                        sku: "KB-001".into(),
                        quantity: 1,
                        unit_price: 1,
                    },
                    OrderLine {
                        sku: "\u{1b}".into(),
                        quantity: 1,
                        unit_price: 1,
                    },
                ],
                ..Order::default()
            }),
        };
        let pool =
            prost_reflect::DescriptorPool::decode(sagaflow_proto::FILE_DESCRIPTOR_SET).unwrap();
        let desc = pool
            .get_message_by_name("sagaflow.order.v1.OrderCompletedEvent")
            .unwrap();
        let message = DynamicMessage::decode(desc, event.encode_to_vec().as_slice()).unwrap();
        let fields: Vec<_> = string_field_violations(&message)
            .into_iter()
            .map(|v| v.field)
            .collect();
        // The line feed is allowed by the rule every field obeys (identifiers are the handlers').
        assert_eq!(fields, ["order.order_id", "order.lines[1].sku"]);
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
        // A token that decodes to a control character is not one of ours.
        assert!(decode_page_token("page_token", &encode_page_token("a\u{0}b")).is_err());
        assert!(decode_page_token("page_token", "a\u{0}b").is_err());
        assert_eq!(decode_page_token("page_token", "").unwrap(), None);
    }
}
