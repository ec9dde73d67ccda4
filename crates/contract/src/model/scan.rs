//! A fast path for the device objects producers actually send: keys without escapes, the
//! named fields plain strings, booleans or null, the other fields any JSON without `\u`
//! escapes, exponents or deep nesting. One pass over the bytes gives exactly what the serde
//! visitor gives for such a document, in about a third of the instructions (serde_json's
//! visitor machinery was a quarter of the daemon's CPU).
//!
//! It never judges: at anything outside that shape — an escape where the visitor would
//! unescape, a duplicate named field, a number or an array where a string belongs, or any
//! syntax error — it gives up, and serde_json reads the document from the start. So
//! serde_json stays the only judge of what is valid and the author of every error message,
//! and this only has to agree with it on the documents it accepts (a property test checks
//! that against serde_json on valid, mutated and hostile documents).

use std::borrow::Cow;

use super::raw::{Extra, Named, RawDevice};

/// Deepest nesting accepted here; deeper documents go to serde_json, which has its own
/// limit (128) and its own message for it.
const MAX_DEPTH: usize = 32;

/// The top-level device object of `text`, or `None` for serde_json to read.
pub(super) fn device_object(text: &str) -> Option<RawDevice<'_>> {
    let mut s = Scanner { text, i: 0 };
    let mut raw = RawDevice {
        additional: Vec::with_capacity(8),
        ..RawDevice::default()
    };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        let mut position = 0;
        loop {
            s.eat(b'"')?;
            let key = s.plain_string()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            position += 1;
            let slot = match key {
                "device_id" => Some(&mut raw.device_id),
                "datatype_id" => Some(&mut raw.datatype_id),
                "datatype_name" => Some(&mut raw.datatype_name),
                "datatype_unit" => Some(&mut raw.datatype_unit),
                "persist" => Some(&mut raw.persist),
                "last_updated" => Some(&mut raw.last_updated),
                _ => None,
            };
            match slot {
                // The visitor notes the duplicate and reads on; let it.
                Some(Some(_)) => return None,
                Some(slot) => *slot = Some(s.named()?),
                None => {
                    let start = s.i;
                    s.value(1)?;
                    raw.additional.push(Extra {
                        name: Cow::Borrowed(key),
                        value: text.get(start..s.i)?,
                        position,
                    });
                }
            }
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.i == text.len()).then_some(raw)
}

/// Where the first byte at or after `from` that ends a string's plain run is: a quote, a
/// backslash or a control character (`bytes.len()` if none). Eight bytes at a time, as
/// serde_json does it: strings are most of a document.
fn special_from(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = from;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_ne_bytes(w);
        // The bit tricks for "some byte is below 0x20" and "some byte is zero" (after the
        // XORs: equal to `"` or `\`): never wrong about whether the word holds one; the
        // byte loop below then finds which.
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let found = (w.wrapping_sub(ONES * 0x20) & !w
            | quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash)
            & HIGH;
        if found != 0 {
            break;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

struct Scanner<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's four whitespace characters, as serde_json skips them.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.i += 1;
        }
    }

    /// The rest of a string (the opening quote eaten) that has no escape, which serde_json
    /// hands out borrowed, as the visitor keeps it.
    fn plain_string(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.i = special_from(self.bytes(), start);
        match self.next()? {
            b'"' => self.text.get(start..self.i - 1),
            _ => None,
        }
    }

    /// The rest of a string inside a carried-over value: escapes are fine there (the text
    /// is kept as it came), but not `\u`, which the decoder checks with serde_json anyway.
    fn string(&mut self) -> Option<()> {
        loop {
            self.i = special_from(self.bytes(), self.i);
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    _ => return None,
                },
                0x00..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// A named field's value, as the visitor's `Named` reads it; other types give up (the
    /// visitor's message names them).
    fn named(&mut self) -> Option<Named<'a>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                Some(Named::Str(Cow::Borrowed(self.plain_string()?)))
            }
            b't' => self.word("true").map(|()| Named::Bool(true)),
            b'f' => self.word("false").map(|()| Named::Bool(false)),
            b'n' => self.word("null").map(|()| Named::Null),
            _ => None,
        }
    }

    fn word(&mut self, word: &str) -> Option<()> {
        let rest = self.bytes().get(self.i..)?;
        rest.starts_with(word.as_bytes())
            .then(|| self.i += word.len())
    }

    /// Skips one well-formed value; `depth` counts the containers around it.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string()
            }
            b't' => self.word("true"),
            b'f' => self.word("false"),
            b'n' => self.word("null"),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                self.items(b']', depth + 1, Self::value)
            }
            b'{' if depth < MAX_DEPTH => {
                self.i += 1;
                self.items(b'}', depth + 1, Self::member)
            }
            _ => None,
        }
    }

    /// The rest of an array or object after its opening bracket: `item`s separated by
    /// commas, up to `close`.
    fn items(
        &mut self,
        close: u8,
        depth: usize,
        item: fn(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self, depth)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b if b == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// One `"key": value` of a nested object.
    fn member(&mut self, depth: usize) -> Option<()> {
        self.eat(b'"')?;
        self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        self.value(depth)
    }

    /// JSON's number grammar without the exponent (those the decoder checks with
    /// serde_json anyway): `-? (0 | [1-9][0-9]*) (. [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::raw::read_with_serde;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const TYPICAL: &str = r#"{"device_id":"dev-42","datatype_id":"dt-7","datatype_name":"temperature","datatype_unit":"C","persist":true,"last_updated":"2026-11-22T10:00:00.123Z","site":"plant-3","line":"assembly-4","firmware":"4.2.9","tags":["benchmark","1"],"nested":{"a":[1,-2.5,0,{"b":null}],"c":false,"d":"x\"y\\z\n"}}"#;

    /// What the fast path gives must be what serde_json gives.
    fn agrees(text: &str) -> bool {
        match device_object(text) {
            Some(fast) => {
                assert_eq!(Ok(&fast), read_with_serde(text).as_ref(), "{text:?}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn the_usual_shapes_take_the_fast_path_and_read_as_serde_reads_them() {
        for text in [
            TYPICAL,
            "{}",
            " \t\n{ }\r\n",
            r#"{"device_id":null,"persist":false,"x":[]}"#,
            r#"{ "site" : "a" , "site" : "b" , "" : 0 }"#,
            r#"{"é":"ü","datatype_unit":"°C"}"#,
        ] {
            assert!(agrees(text), "{text:?} should take the fast path");
        }
    }

    #[test]
    fn the_word_scan_finds_the_first_special_byte_wherever_it_is() {
        for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for len in 0..24 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    // Bytes just around the special ones, and UTF-8, must not count.
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = [b'a', 0x20, b'#', b'[', 0xc3, 0xa9, 0x7f, b'!'][i % 8];
                    }
                    bytes[at] = special;
                    for from in 0..=at {
                        assert_eq!(special_from(&bytes, from), at, "{bytes:?} from {from}");
                    }
                }
                let plain = vec![b'x'; len];
                assert_eq!(special_from(&plain, 0), len);
            }
        }
    }

    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(40), "]".repeat(40));
        for text in [
            // Escapes the visitor would unescape, and `\u` anywhere.
            r#"{"dev\u0069ce_id":"a"}"#,
            r#"{"device_id":"a\"b"}"#,
            r#"{"site":"\u00e9"}"#,
            // A duplicate named field, a named field of another type.
            r#"{"persist":true,"persist":false}"#,
            r#"{"persist":1}"#,
            r#"{"device_id":["a"]}"#,
            // Exponents, deep nesting.
            r#"{"x":1e3}"#,
            &deep,
            // Syntax errors of every kind.
            r#"{"x":1,}"#,
            r#"{"x":[1,]}"#,
            r#"{"x":01}"#,
            r#"{"x":-}"#,
            r#"{"x":1.}"#,
            r#"{"x":tru}"#,
            r#"{"x":"a"}x"#,
            r#"{"x":"a	b"}"#,
            r#"{"x" "a"}"#,
            r#"{"x":{"a"}}"#,
            r#"{"x":"\q"}"#,
            "[]",
            "\u{feff}{}",
            "{",
            "",
        ] {
            assert!(!agrees(text), "{text:?} should be left to serde_json");
        }
    }

    /// Documents shaped like devices: the named fields with plausible and wrong values,
    /// other fields with any JSON, sometimes pretty-printed.
    fn document() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            2 => any::<i64>().prop_map(Value::from),
            2 => (-1.0e6f64..1.0e6).prop_map(|f| json!((f * 8.0).round() / 8.0)),
            1 => any::<f64>().prop_map(|f| json!(f)),
            1 => any::<String>().prop_map(Value::String),
            4 => "[a-z0-9 \"\\\\/-]{0,12}".prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        let name = prop_oneof![
            2 => prop::sample::select(vec![
                "device_id", "datatype_id", "datatype_name", "datatype_unit", "persist",
                "last_updated",
            ])
            .prop_map(str::to_owned),
            4 => "[a-z_]{0,8}",
            1 => any::<String>(),
        ];
        (prop::collection::vec((name, value), 0..8), any::<bool>()).prop_map(|(fields, pretty)| {
            // Written by hand, so that repeated names stay repeated.
            let mut out = String::from("{");
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(if pretty { ",\n  " } else { "," });
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(if pretty { ": " } else { ":" });
                let v = if pretty {
                    serde_json::to_string_pretty(v)
                } else {
                    serde_json::to_string(v)
                };
                out.push_str(&v.unwrap_or_default());
            }
            out.push('}');
            out
        })
    }

    /// Characters that make or break JSON, for mutations.
    fn breaker() -> impl Strategy<Value = char> {
        prop::sample::select(vec![
            '{', '}', '[', ']', '"', '\\', ',', ':', '0', '1', '-', '.', 'e', 't', 'n', 'u', ' ',
            '\t', '\n', '\u{1}', 'é', 'x',
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

        #[test]
        fn the_fast_path_agrees_with_serde_json(doc in document()) {
            agrees(&doc);
        }

        #[test]
        fn mutated_documents_too(
            doc in document(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, breaker()), 1..4),
        ) {
            let mut chars: Vec<char> = doc.chars().collect();
            for (at, op, c) in edits {
                let i = at.index(chars.len() + 1);
                match op {
                    0 => chars.insert(i, c),
                    1 if i < chars.len() => chars[i] = c,
                    _ if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ => {}
                }
            }
            agrees(&chars.into_iter().collect::<String>());
        }
    }

    #[test]
    fn most_generated_documents_take_the_fast_path() {
        // Otherwise the properties above would prove little. Most generated documents are
        // meant for serde_json (escapes, exponents, wrong types); a quarter or so is plenty.
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = document();
        let fast = (0..1_000)
            .filter(|_| {
                let doc = strategy.new_tree(&mut runner).map(|t| t.current());
                doc.is_ok_and(|d| agrees(&d))
            })
            .count();
        assert!(fast > 150, "only {fast} of 1000 took the fast path");
    }
}
