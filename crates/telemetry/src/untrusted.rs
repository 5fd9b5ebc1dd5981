//! Client-supplied strings in logs and spans (docs/operations.md, "Logs and traces from untrusted
//! input"): the one function every log line and span field that holds a value a caller chose
//! goes through — a request id, a user id, a coupon code, a payment method, a request path.
//!
//! [`untrusted`] wraps the value in a [`Display`](fmt::Display) that
//!
//! - **escapes** what could forge or hide output: control characters (`\n`, `\r`, `\t` as
//!   such, others as `\u{1b}`: an ANSI escape sequence cannot reach a terminal), the Unicode
//!   format characters that reorder or hide text (bidi overrides and isolates, zero-width
//!   characters, the byte-order mark), and the backslash itself (`\\`), so an escape in the
//!   output always means the value held that character;
//! - **truncates** to the first [`MAX_CHARS`] characters and then says how long the value was:
//!   `…[truncated, 4194304 bytes]`, so one field never costs more than a few hundred bytes
//!   of log, whatever the request size limit.
//!
//! It allocates nothing: the escaping happens while the log line or the span field is written.
//!
//! ```
//! use sagaflow_telemetry::untrusted::untrusted;
//!
//! let forged = "r-1\n2026-01-01T00:00:00Z  INFO forged line\u{1b}[2J";
//! assert_eq!(
//!     untrusted(forged).to_string(),
//!     r"r-1\n2026-01-01T00:00:00Z  INFO forged line\u{1b}[2J"
//! );
//! let long = "x".repeat(1000);
//! assert!(untrusted(&long).to_string().ends_with("…[truncated, 1000 bytes]"));
//! ```

use std::fmt::{self, Write as _};

/// The most characters of a value that are written; the rest is replaced by the marker
/// `…[truncated, N bytes]` (N: the whole value's length in bytes).
pub const MAX_CHARS: usize = 128;

/// A client-supplied string, written escaped and truncated (see the module docs). Make one with
/// [`untrusted`].
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(&'a str);

/// `value`, to be written to a log line or a span field escaped and truncated to [`MAX_CHARS`]
/// characters: `tracing::info!(request_id = %untrusted(&req.request_id), …)`.
pub fn untrusted(value: &str) -> Untrusted<'_> {
    Untrusted(value)
}

/// Records `value` escaped and truncated ([`untrusted`]) as field `field` of the current span
/// (declared `field = tracing::field::Empty`). Handlers call it once the request is validated, so
/// that a span never holds a value the service refused to read.
pub fn record(field: &str, value: &str) {
    tracing::Span::current().record(field, tracing::field::display(untrusted(value)));
}

/// Whether `c` is written escaped: a control character, or a format character that reorders or
/// hides text (bidi embeddings, overrides and isolates, zero-width characters, the BOM).
pub fn is_escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{061c}'
        )
}

/// Writes `c` as it appears in the output.
fn write_char(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if is_escaped(c) => write!(f, "\\u{{{:x}}}", u32::from(c)),
        c => f.write_char(c),
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(MAX_CHARS) {
            write_char(f, c)?;
        }
        if chars.next().is_some() {
            write!(f, "…[truncated, {} bytes]", self.0.len())?;
        }
        Ok(())
    }
}

/// `text` with every [`is_escaped`] character escaped (as [`untrusted`] does) but not truncated,
/// for text the process wrote itself that may quote a client's value (an error's message); the
/// pretty log format passes every field through it, so no field value can break a log line.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_ansi_bidi_and_backslashes() {
        assert_eq!(untrusted("plain-id_1").to_string(), "plain-id_1");
        assert_eq!(untrusted("a\nb\r\tc").to_string(), r"a\nb\r\tc");
        assert_eq!(untrusted("\u{1b}[31mred").to_string(), r"\u{1b}[31mred");
        assert_eq!(
            untrusted("\0\u{7f}\u{85}").to_string(),
            r"\u{0}\u{7f}\u{85}"
        );
        assert_eq!(untrusted("ab\u{202e}cd").to_string(), r"ab\u{202e}cd");
        assert_eq!(
            untrusted("zero\u{200b}width").to_string(),
            r"zero\u{200b}width"
        );
        assert_eq!(untrusted(r"a\nb").to_string(), r"a\\nb");
        assert_eq!(untrusted("쿠폰-é").to_string(), "쿠폰-é");
        assert!(!untrusted("x\ny").to_string().contains('\n'));
    }

    #[test]
    fn truncates_by_characters_and_says_how_long_it_was() {
        let exact = "y".repeat(MAX_CHARS);
        assert_eq!(untrusted(&exact).to_string(), exact);
        let long = "é".repeat(MAX_CHARS + 1);
        let shown = untrusted(&long).to_string();
        assert_eq!(
            shown,
            format!(
                "{}…[truncated, {} bytes]",
                "é".repeat(MAX_CHARS),
                long.len()
            )
        );
        let huge = "\n".repeat(4 << 20);
        let shown = untrusted(&huge).to_string();
        assert!(shown.len() < 300, "{}", shown.len());
        assert!(shown.ends_with("…[truncated, 4194304 bytes]"));
    }

    #[test]
    fn escape_keeps_clean_text_borrowed() {
        assert!(matches!(escape("fine"), std::borrow::Cow::Borrowed("fine")));
        assert_eq!(escape("a\nb\u{1b}"), r"a\nb\u{1b}");
        // Unlike `untrusted`, a backslash stays (the process's own text uses them).
        assert_eq!(escape(r"C:\x"), r"C:\x");
    }
}
