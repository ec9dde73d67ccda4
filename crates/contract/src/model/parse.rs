//! Helpers both topic decoders share: the payload gate, field-name keys that borrow from the
//! input, and the id rules. Kept apart so device and metric decoding reject the same input
//! the same way.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::Value;

use super::{Limits, Reject, RejectReason};

/// Longest slice of a hostile value echoed back in a message; dead-letter headers and logs
/// should not grow with the payload.
const PREVIEW_CHARS: usize = 64;

/// Size, UTF-8 and emptiness checks, in the order that costs least on hostile input.
pub(super) fn payload_str<'a>(payload: &'a [u8], limits: &Limits) -> Result<&'a str, Reject> {
    if payload.len() > limits.max_message_bytes {
        return Err(Reject::new(
            RejectReason::TooLarge,
            None,
            format!(
                "payload is {} bytes, expected at most {} (limits.max_message_bytes)",
                payload.len(),
                limits.max_message_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        Reject::new(
            RejectReason::InvalidUtf8,
            None,
            format!("payload is not UTF-8: {e}"),
        )
    })?;
    if text.is_empty() {
        return Err(Reject::new(
            RejectReason::InvalidJson,
            None,
            "payload is empty, expected a JSON object (a tombstone is a null value, not an empty one)",
        ));
    }
    Ok(text)
}

/// Runs `visitor` over the top-level object of `text` and insists nothing follows it.
///
/// `from_str` after our own UTF-8 check: serde_json then skips re-validating every string.
pub(super) fn parse_object<'de, V>(text: &'de str, visitor: V) -> Result<V::Value, Reject>
where
    V: Visitor<'de>,
{
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de.deserialize_map(visitor).map_err(json_reject)?;
    de.end().map_err(json_reject)?;
    Ok(value)
}

fn json_reject(e: serde_json::Error) -> Reject {
    Reject::new(RejectReason::InvalidJson, None, e.to_string())
}

/// An object key, borrowed from the input unless it had escapes.
pub(super) struct FieldKey<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldKey<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = FieldKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldKey(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldKey(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(FieldKey(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The JSON type name used in "expected ..., got ..." messages.
pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(super) fn wrong_type(field: &str, expected: &str, got: &Value) -> Reject {
    wrong_type_named(field, expected, json_type(got))
}

/// As [`wrong_type`], for a value known only by its JSON type's name.
pub(super) fn wrong_type_named(field: &str, expected: &str, got: &str) -> Reject {
    Reject::new(
        RejectReason::WrongType,
        Some(field),
        format!("expected {expected}, got {got}"),
    )
}

pub(super) fn missing(field: &str, expected: &str, got_null: bool) -> Reject {
    let what = if got_null { "null" } else { "nothing" };
    Reject::new(
        RejectReason::MissingField,
        Some(field),
        format!("required field: expected {expected}, got {what}"),
    )
}

pub(super) fn duplicate(field: &str) -> Reject {
    // An empty name is still a name: spelled as JSON, so the header is not blank.
    let field = if field.is_empty() { "\"\"" } else { field };
    Reject::new(
        RejectReason::DuplicateField,
        Some(field),
        "field appears more than once; expected it exactly once",
    )
}

/// A string for humans: quoted, escaped, and cut short.
pub(super) fn preview(s: &str) -> String {
    match s.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// Length and control-character rules shared by ids, names and units. Control characters
/// would corrupt logs, Redis keys shown in redis-cli, and line-based tooling.
pub(super) fn check_text(
    field: &str,
    value: &str,
    limits: &Limits,
    allow_empty: bool,
) -> Result<(), Reject> {
    if value.is_empty() && !allow_empty {
        return Err(Reject::new(
            RejectReason::InvalidValue,
            Some(field),
            "expected a non-empty string, got \"\"",
        ));
    }
    if value.len() > limits.max_id_bytes {
        return Err(Reject::new(
            RejectReason::InvalidValue,
            Some(field),
            format!(
                "expected at most {} bytes (limits.max_id_bytes), got {} bytes",
                limits.max_id_bytes,
                value.len()
            ),
        ));
    }
    // Printable ASCII has no control or invisible characters; only other text needs the
    // char walk.
    let printable_ascii = value.bytes().all(|b| (0x20..0x7f).contains(&b));
    if let Some((at, c)) = (!printable_ascii)
        .then(|| {
            value
                .char_indices()
                .find(|&(_, c)| c.is_control() || invisible(c))
        })
        .flatten()
    {
        let what = if c.is_control() {
            "control characters"
        } else {
            "invisible or text-direction characters"
        };
        return Err(Reject::new(
            RejectReason::InvalidValue,
            Some(field),
            format!(
                "expected no {what}, got U+{:04X} at byte {at} in {}",
                u32::from(c),
                preview(value)
            ),
        ));
    }
    // " dev-42" prints as "dev-42" does: a reader could not tell them apart.
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(Reject::new(
            RejectReason::InvalidValue,
            Some(field),
            format!(
                "expected no whitespace at either end, got {}",
                preview(value)
            ),
        ));
    }
    Ok(())
}

/// Characters that print as nothing or reorder the text around them, so two ids that
/// differ only in them look the same (`h-\u{200b}` and `h-`), or one looks like another
/// (`h-\u{202e}live` prints as `h-evil`): Unicode's format characters (category Cf: zero
/// widths and joiners, direction marks, embeddings, overrides and isolates, the BOM, the
/// soft hyphen, tags), the line and paragraph separators, and the filler characters.
/// Variation selectors stay allowed: they only pick a glyph (an emoji's colour form).
/// Written out rather than taken from a Unicode crate: the Cf list is short and stable.
pub(super) fn invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0x3164
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// A Kafka key as text: `None` for no key or an empty one (both mean "not given").
pub(super) fn key_str(key: Option<&[u8]>) -> Result<Option<&str>, Reject> {
    match key {
        None | Some([]) => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes).map(Some).map_err(|e| {
            Reject::new(
                RejectReason::InvalidUtf8,
                Some("key"),
                format!("Kafka key is not UTF-8: {e}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_cuts_long_values_on_a_char_boundary() {
        let long = "é".repeat(100);
        let p = preview(&long);
        assert_eq!(p, format!("{:?}...", "é".repeat(PREVIEW_CHARS)));
        assert_eq!(preview("a\"b"), r#""a\"b""#);
    }

    #[test]
    fn a_duplicate_empty_name_is_named_as_json() {
        assert_eq!(duplicate("").field.as_deref(), Some("\"\""));
        assert_eq!(duplicate("site").field.as_deref(), Some("site"));
    }

    #[test]
    fn ids_that_print_invisibly_or_misleadingly_are_refused() {
        let limits = Limits::default();
        for (id, why) in [
            (" ", "whitespace at either end"),
            (" dev-42", "whitespace at either end"),
            ("dev-42\u{a0}", "whitespace at either end"),
            ("h-\u{202e}evil", "U+202E"),
            ("h-\u{200b}", "U+200B"),
            ("\u{feff}h", "U+FEFF"),
            ("a\u{2066}b", "U+2066"),
            ("a\u{e0041}", "U+E0041"),
        ] {
            let r = check_text("device_id", id, &limits, false).expect_err(id);
            assert_eq!(r.reason, RejectReason::InvalidValue);
            assert!(r.message.contains(why), "{id:?}: {}", r.message);
        }
        for id in ["plant 3:dev#42", "ünï — ok", "日本語", "a b", "emoji 🙂"] {
            assert!(check_text("device_id", id, &limits, false).is_ok(), "{id}");
        }
    }

    #[test]
    fn check_text_reports_the_control_character() {
        let limits = Limits::default();
        let r = check_text("f", "ab\u{7f}", &limits, false).unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidValue);
        assert_eq!(r.field.as_deref(), Some("f"));
        assert!(r.message.contains("U+007F at byte 2"), "{}", r.message);
        assert!(check_text("f", "", &limits, true).is_ok());
    }
}
