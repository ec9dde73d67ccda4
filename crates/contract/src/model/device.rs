//! Device metadata: decoding, validation and the normalized JSON stored in Redis.
//!
//! Decoding builds the stored form directly: the named fields are checked and written in
//! a fixed order, and the fields the schema does not name are carried over as the JSON
//! text they came as (whitespace removed, sorted by name), never built into a tree and
//! serialized again. That was two fifths of the daemon's CPU per event. The typed view,
//! [`DeviceMetadata`], is for readers and producers, who build a tree anyway.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::parse;
use super::raw::{read_with_serde, Extra, Named};
use super::{Event, Limits, Reject, RejectReason};

/// The named fields, in the order the normalized JSON writes them.
const KNOWN_FIELDS: [&str; 6] = [
    "device_id",
    "datatype_id",
    "datatype_name",
    "datatype_unit",
    "persist",
    "last_updated",
];

/// 9999-12-31T23:59:59.999Z: the last instant the fixed-width form can show.
const MAX_MS: i128 = 253_402_300_799_999;

/// Deepest nesting of one additional property: serde_json, which most readers use, refuses
/// a document nested deeper than 127 levels, and the device object is one of them.
const MAX_VALUE_DEPTH: usize = 126;

/// One device's metadata after validation: the typed view of what is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMetadata {
    pub device_id: String,
    pub datatype_id: String,
    pub datatype_name: String,
    pub datatype_unit: Option<String>,
    pub persist: bool,
    /// `last_updated` as milliseconds since the Unix epoch (UTC). This is the `devices`
    /// score and the stale-guard's comparison key.
    pub last_updated_ms: i64,
    /// Fields the schema does not name, kept as they came.
    pub additional_properties: Map<String, Value>,
}

impl DeviceMetadata {
    /// `last_updated` in the fixed-width UTC form `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    ///
    /// Fixed width so that string order is time order: the Redis stale guard compares
    /// these lexicographically. (Only decoded values are guaranteed to be in 1970..=9999.)
    pub fn last_updated_rfc3339(&self) -> String {
        UtcMillis(self.last_updated_ms).to_string()
    }

    /// The JSON stored under `device:{id}`.
    ///
    /// The named fields come first and `last_updated` precedes every additional property:
    /// the Lua stale guard reads the first `"last_updated":"` it finds.
    pub fn to_normalized_json(&self) -> String {
        let named = self.device_id.len()
            + self.datatype_id.len()
            + self.datatype_name.len()
            + self.datatype_unit.as_ref().map_or(0, String::len);
        let mut buf = Vec::with_capacity(160 + named + 48 * self.additional_properties.len());
        serde_json::to_writer(&mut buf, &Normalized(self))
            .expect("strings and serde_json values always serialize");
        String::from_utf8(buf).expect("serde_json writes UTF-8")
    }

    /// Reads back what [`to_normalized_json`](Self::to_normalized_json) wrote.
    ///
    /// No size limits: the cache only holds what the writer already validated, possibly
    /// under larger limits than the reader's defaults.
    pub fn from_normalized_json(json: &str) -> Result<DeviceMetadata, Reject> {
        let unbounded = Limits {
            max_message_bytes: usize::MAX,
            max_id_bytes: usize::MAX,
            max_metric_names: usize::MAX,
        };
        let text = parse::payload_str(json.as_bytes(), &unbounded)?;
        parse_device(text, &unbounded)?.into_metadata()
    }
}

/// A validated device upsert as the writer applies it: the id, the instant, and the
/// normalized JSON to store, built once while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUpsert {
    /// The id, held apart only when escaping changed it in the JSON; otherwise it is the
    /// JSON's text right after `{"device_id":"`, `id_len` bytes (one allocation per
    /// event fewer).
    escaped_id: Option<Box<str>>,
    id_len: usize,
    last_updated_ms: i64,
    json: String,
}

/// How every stored form begins.
const JSON_ID_AT: &str = "{\"device_id\":\"";

impl DeviceUpsert {
    fn new(device_id: &str, last_updated_ms: i64, json: String) -> Self {
        let verbatim = json.starts_with(JSON_ID_AT)
            && json.get(JSON_ID_AT.len()..JSON_ID_AT.len() + device_id.len()) == Some(device_id);
        DeviceUpsert {
            escaped_id: (!verbatim).then(|| device_id.into()),
            id_len: device_id.len(),
            last_updated_ms,
            json,
        }
    }

    pub fn device_id(&self) -> &str {
        match &self.escaped_id {
            Some(id) => id,
            None => &self.json[JSON_ID_AT.len()..JSON_ID_AT.len() + self.id_len],
        }
    }

    /// `last_updated` in epoch milliseconds: the `devices` score.
    pub fn last_updated_ms(&self) -> i64 {
        self.last_updated_ms
    }

    /// The JSON stored under `device:{id}`.
    pub fn normalized_json(&self) -> &str {
        &self.json
    }

    /// `last_updated` in the fixed-width UTC form the stale guard compares.
    pub fn last_updated_utc(&self) -> impl fmt::Display {
        UtcMillis(self.last_updated_ms)
    }

    /// The typed view.
    pub fn metadata(&self) -> Result<DeviceMetadata, Reject> {
        DeviceMetadata::from_normalized_json(&self.json)
    }
}

impl From<&DeviceMetadata> for DeviceUpsert {
    fn from(d: &DeviceMetadata) -> Self {
        DeviceUpsert::new(&d.device_id, d.last_updated_ms, d.to_normalized_json())
    }
}

impl From<DeviceMetadata> for DeviceUpsert {
    fn from(d: DeviceMetadata) -> Self {
        DeviceUpsert::from(&d)
    }
}

pub(super) fn decode(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    limits: &Limits,
) -> Result<Event, Reject> {
    let Some(payload) = payload else {
        return decode_tombstone(key, limits);
    };
    let text = parse::payload_str(payload, limits)?;
    let key = parse::key_str(key)?;
    let device = parse_device(text, limits)?;
    if let Some(key) = key {
        if key != device.device_id {
            return Err(Reject::new(
                RejectReason::KeyMismatch,
                Some("device_id"),
                format!(
                    "expected the Kafka key to equal device_id, got key {} and device_id {}",
                    parse::preview(key),
                    parse::preview(&device.device_id)
                ),
            ));
        }
    }
    Ok(Event::DeviceUpsert(device.into_upsert(text.len())))
}

fn decode_tombstone(key: Option<&[u8]>, limits: &Limits) -> Result<Event, Reject> {
    let Some(device_id) = parse::key_str(key)? else {
        return Err(Reject::new(
            RejectReason::MissingKey,
            None,
            "tombstone without a Kafka key: expected the device id as the key",
        ));
    };
    parse::check_text("key", device_id, limits, false)?;
    Ok(Event::DeviceDelete {
        device_id: device_id.to_owned(),
    })
}

/// A device object that passed every check, borrowing from the input where it can.
struct ParsedDevice<'a> {
    device_id: Cow<'a, str>,
    datatype_id: Cow<'a, str>,
    datatype_name: Cow<'a, str>,
    datatype_unit: Option<Cow<'a, str>>,
    persist: bool,
    last_updated_ms: i64,
    /// The other fields, sorted by name, as the text they came as.
    additional: Vec<Extra<'a>>,
}

impl ParsedDevice<'_> {
    /// The stored form. `hint` is the input's length, about the output's.
    fn into_upsert(self, hint: usize) -> DeviceUpsert {
        let mut out = String::with_capacity(hint + 32);
        out.push_str("{\"device_id\":");
        push_json_str(&mut out, &self.device_id);
        out.push_str(",\"datatype_id\":");
        push_json_str(&mut out, &self.datatype_id);
        out.push_str(",\"datatype_name\":");
        push_json_str(&mut out, &self.datatype_name);
        out.push_str(",\"datatype_unit\":");
        match &self.datatype_unit {
            Some(unit) => push_json_str(&mut out, unit),
            None => out.push_str("null"),
        }
        out.push_str(if self.persist {
            ",\"persist\":true,\"last_updated\":\""
        } else {
            ",\"persist\":false,\"last_updated\":\""
        });
        // All ASCII digits and separators, so it is always UTF-8.
        if let Ok(utc) = std::str::from_utf8(&utc_millis(self.last_updated_ms)) {
            out.push_str(utc);
        }
        out.push('"');
        for extra in &self.additional {
            out.push(',');
            push_json_str(&mut out, &extra.name);
            out.push(':');
            push_compact(&mut out, extra.value);
        }
        out.push('}');
        DeviceUpsert::new(&self.device_id, self.last_updated_ms, out)
    }

    fn into_metadata(self) -> Result<DeviceMetadata, Reject> {
        let mut additional_properties = Map::new();
        for extra in self.additional {
            let value: Value = serde_json::from_str(extra.value)
                .map_err(|e| Reject::new(RejectReason::InvalidJson, None, e.to_string()))?;
            additional_properties.insert(extra.name.into_owned(), value);
        }
        Ok(DeviceMetadata {
            device_id: self.device_id.into_owned(),
            datatype_id: self.datatype_id.into_owned(),
            datatype_name: self.datatype_name.into_owned(),
            datatype_unit: self.datatype_unit.map(Cow::into_owned),
            persist: self.persist,
            last_updated_ms: self.last_updated_ms,
            additional_properties,
        })
    }
}

/// Parses and checks one device object: syntax first (a syntax error anywhere wins over a
/// field error), then duplicates, then each named field in schema order.
fn parse_device<'a>(text: &'a str, limits: &Limits) -> Result<ParsedDevice<'a>, Reject> {
    let mut raw = match super::scan::device_object(text) {
        Some(raw) => raw,
        None => read_with_serde(text)?,
    };

    raw.additional
        .sort_by(|a, b| (&*a.name, a.position).cmp(&(&*b.name, b.position)));
    // The field whose second appearance comes first, named or not.
    let mut duplicate = raw.duplicate.take();
    for pair in raw.additional.windows(2) {
        if pair[0].name == pair[1].name && duplicate.as_ref().is_none_or(|d| pair[1].position < d.0)
        {
            duplicate = Some((pair[1].position, pair[1].name.to_string()));
        }
    }
    if let Some((_, field)) = duplicate {
        return Err(parse::duplicate(&field));
    }
    for extra in &raw.additional {
        let raw_text = extra.value;
        let shape = inspect(raw_text);
        if shape.depth > MAX_VALUE_DEPTH {
            return Err(Reject::new(
                RejectReason::InvalidJson,
                None,
                format!(
                    "recursion limit exceeded: field {} nests deeper than {MAX_VALUE_DEPTH} levels",
                    parse::preview(&extra.name)
                ),
            ));
        }
        // One rule for the whole document: a name twice in any object is refused, since
        // readers disagree on which one wins (serde_json and Python keep the last, others
        // the first) and the stored text keeps both.
        if shape.objects {
            if let Some(path) = nested_duplicate(&extra.name, raw_text) {
                return Err(parse::duplicate(&path));
            }
        }
        // Capturing the text only checks its syntax; a JSON reader also refuses lone
        // surrogates in `\u` escapes and numbers out of range. Check the few values that
        // could hold either, as a reader would.
        if shape.suspect {
            serde_json::from_str::<Checked>(raw_text).map_err(|e| {
                Reject::new(
                    RejectReason::InvalidJson,
                    None,
                    format!("field {}: {e}", parse::preview(&extra.name)),
                )
            })?;
        }
    }

    let device_id = required_string("device_id", raw.device_id)?;
    parse::check_text("device_id", &device_id, limits, false)?;
    let datatype_id = required_string("datatype_id", raw.datatype_id)?;
    parse::check_text("datatype_id", &datatype_id, limits, false)?;
    let datatype_name = required_string("datatype_name", raw.datatype_name)?;
    parse::check_text("datatype_name", &datatype_name, limits, false)?;
    let datatype_unit = match raw.datatype_unit {
        None | Some(Named::Null) => None,
        Some(Named::Str(unit)) => {
            parse::check_text("datatype_unit", &unit, limits, true)?;
            Some(unit)
        }
        Some(other) => {
            return Err(parse::wrong_type_named(
                "datatype_unit",
                "a string or null",
                other.type_name(),
            ))
        }
    };
    let persist = match raw.persist {
        Some(Named::Bool(b)) => b,
        Some(Named::Null) => return Err(parse::missing("persist", "a boolean", true)),
        None => return Err(parse::missing("persist", "a boolean", false)),
        Some(other) => {
            return Err(parse::wrong_type_named(
                "persist",
                "a boolean",
                other.type_name(),
            ))
        }
    };
    let last_updated = required_string("last_updated", raw.last_updated)?;
    let last_updated_ms = parse_last_updated(&last_updated)?;

    Ok(ParsedDevice {
        device_id,
        datatype_id,
        datatype_name,
        datatype_unit,
        persist,
        last_updated_ms,
        additional: raw.additional,
    })
}

/// A required string field: absent or null is missing, anything else but a string is the
/// wrong type.
fn required_string<'a>(field: &str, value: Option<Named<'a>>) -> Result<Cow<'a, str>, Reject> {
    match value {
        Some(Named::Str(s)) => Ok(s),
        Some(Named::Null) => Err(parse::missing(field, "a string", true)),
        None => Err(parse::missing(field, "a string", false)),
        Some(other) => Err(parse::wrong_type_named(
            field,
            "a string",
            other.type_name(),
        )),
    }
}

/// RFC 3339 with an offset -> epoch milliseconds, sub-millisecond digits truncated.
fn parse_last_updated(s: &str) -> Result<i64, Reject> {
    let bad = |why: &dyn fmt::Display| {
        Reject::new(
            RejectReason::InvalidTimestamp,
            Some("last_updated"),
            format!(
                "expected an RFC 3339 timestamp with an offset, e.g. 2026-11-22T10:00:00Z, got {}: {why}",
                parse::preview(s)
            ),
        )
    };
    let parsed = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| bad(&e))?;
    // The `time` parser accepts any byte between date and time; RFC 3339 allows only
    // `T` (any case) or, by its note, a space.
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return Err(bad(&"date and time must be separated by `T` or a space"));
    }
    // unix_timestamp_nanos never converts to a UTC date, so a year-9999 local time west
    // of UTC (year 10000 in UTC) is rejected here instead of overflowing `time`'s range.
    let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
    if !(0..=MAX_MS).contains(&ms) {
        return Err(Reject::new(
            RejectReason::InvalidTimestamp,
            Some("last_updated"),
            format!(
                "expected a time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, got {}",
                parse::preview(s)
            ),
        ));
    }
    Ok(ms as i64)
}

/// `s` as a JSON string, escaped exactly as serde_json escapes it (`"`, `\\` and the
/// control characters below U+0020), so that both ways of writing the stored form agree
/// byte for byte.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Most strings need no escape; this test has no early exit, so it vectorizes.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both cuts fall on character boundaries.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends one JSON value (already validated) without insignificant whitespace.
fn push_compact(out: &mut String, raw: &str) {
    let bytes = raw.as_bytes();
    let composite = matches!(bytes.first(), Some(b'{' | b'['));
    if !composite
        || !bytes
            .iter()
            .any(|b| matches!(b, b' ' | b'\n' | b'\t' | b'\r'))
    {
        out.push_str(raw);
        return;
    }
    let (mut in_string, mut escaped, mut run) = (false, false, 0);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
            // Whitespace is ASCII: the cut falls on a character boundary.
            out.push_str(&raw[run..i]);
            run = i + 1;
        }
    }
    out.push_str(&raw[run..]);
}

/// What one pass over a (syntactically valid) JSON value tells.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    /// 0 for a scalar, 1 for a flat array or object.
    depth: usize,
    /// It has a `\u` escape or a number with an exponent or of 300+ characters: the only
    /// places a syntactically valid value can still be refused by a reader.
    suspect: bool,
    /// It holds an object, which may name a key twice.
    objects: bool,
}

fn inspect(raw: &str) -> Shape {
    let (mut depth, mut deepest, mut suspect, mut objects) = (0usize, 0usize, false, false);
    let (mut in_string, mut escaped, mut number_len) = (false, false, 0usize);
    for &b in raw.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
                suspect |= b == b'u';
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'0'..=b'9' | b'-' | b'+' | b'.' => number_len += 1,
            // An exponent; `e` outside a number is in `true` or `false`.
            b'e' | b'E' if number_len > 0 => suspect = true,
            _ => number_len = 0,
        }
        suspect |= number_len >= 300;
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                objects |= b == b'{';
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Shape {
        depth: deepest,
        suspect,
        objects,
    }
}

/// Where a container stands while [`nested_duplicate`] walks it.
enum Frame {
    Object {
        keys: Vec<String>,
        expecting_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The first name that appears twice in one object anywhere in `raw` (a syntactically
/// valid JSON value of field `field`), as a path such as `meta.a` or `list[2].b`. Names
/// are compared unescaped, as a reader compares them.
fn nested_duplicate(field: &str, raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Frame::Object {
                keys: Vec::new(),
                expecting_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object {
                    keys,
                    expecting_key: expecting @ true,
                }) = stack.last_mut()
                {
                    *expecting = false;
                    let quoted = raw.get(start..=i)?;
                    let key = if quoted.contains('\\') {
                        serde_json::from_str::<String>(quoted).ok()?
                    } else {
                        quoted[1..quoted.len() - 1].to_owned()
                    };
                    if keys.contains(&key) {
                        return Some(path_of(field, &stack, &key));
                    }
                    keys.push(key);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `field`, then each container's current key or index, then `last`.
fn path_of(field: &str, stack: &[Frame], last: &str) -> String {
    let mut path = field.to_owned();
    for (depth, frame) in stack.iter().enumerate() {
        match frame {
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
            // The innermost object's current key is the duplicate itself.
            Frame::Object { keys, .. } if depth + 1 < stack.len() => {
                path.push('.');
                path.push_str(keys.last().map_or("", String::as_str));
            }
            Frame::Object { .. } => {}
        }
    }
    path.push('.');
    path.push_str(last);
    path
}

/// Reads a JSON value the way a reader building a tree would, keeping nothing: strings
/// are unescaped (so lone surrogates fail) and numbers parsed (so out-of-range ones fail).
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

struct Normalized<'a>(&'a DeviceMetadata);

impl Serialize for Normalized<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("device_id", &d.device_id)?;
        map.serialize_entry("datatype_id", &d.datatype_id)?;
        map.serialize_entry("datatype_name", &d.datatype_name)?;
        map.serialize_entry("datatype_unit", &d.datatype_unit)?;
        map.serialize_entry("persist", &d.persist)?;
        map.serialize_entry("last_updated", &UtcMillis(d.last_updated_ms))?;
        for (name, value) in &d.additional_properties {
            // Decoding never puts a named field here, but the fields are public: a repeated
            // name would make the stored JSON ambiguous.
            if !KNOWN_FIELDS.contains(&name.as_str()) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of epoch milliseconds in 1970..=9999, digit by digit.
fn utc_millis(ms: i64) -> [u8; 24] {
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999));
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, secs / 3600);
    put(14, 2, secs / 60 % 60);
    put(17, 2, secs % 60);
    put(20, 3, ms_of_day % 1000);
    out
}

/// Epoch milliseconds shown as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
struct UtcMillis(i64);

impl fmt::Display for UtcMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (0..=MAX_MS as i64).contains(&self.0) {
            let digits = utc_millis(self.0);
            return f.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?);
        }
        // Hand-built values outside the decodable range: the general (slower) form.
        let days = self.0.div_euclid(86_400_000);
        let ms_of_day = self.0.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            ms_of_day % 1000
        )
    }
}

impl Serialize for UtcMillis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Days since 1970-01-01 -> proleptic Gregorian (year, month, day); H. Hinnant's
/// `civil_from_days`. Plain arithmetic, so no input can make it panic.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const EXAMPLE: &str = r#"{"device_id": "dev-42", "datatype_id": "dt-7", "datatype_name": "temperature",
 "datatype_unit": "C", "persist": true, "last_updated": "2026-11-22T10:00:00Z",
 "site": "plant-3"}"#;

    /// 2026-11-22T10:00:00Z
    const EXAMPLE_MS: i64 = 1_795_341_600_000;

    fn limits() -> Limits {
        Limits::default()
    }

    fn upsert(key: Option<&str>, payload: &str) -> DeviceUpsert {
        match decode(key.map(str::as_bytes), Some(payload.as_bytes()), &limits()) {
            Ok(Event::DeviceUpsert(d)) => d,
            other => panic!("expected an upsert, got {other:?}"),
        }
    }

    /// The typed view of what decoding stores; also checks that the stored form is what
    /// the typed view writes, where the input was already in normal form.
    fn ok_with_key(key: Option<&str>, payload: &str) -> DeviceMetadata {
        let stored = upsert(key, payload);
        let d = stored.metadata().expect("the stored form reads back");
        assert_eq!(d.device_id, stored.device_id());
        assert_eq!(d.last_updated_ms, stored.last_updated_ms());
        // Normalizing is a fixed point.
        assert_eq!(upsert(None, stored.normalized_json()), stored);
        d
    }

    fn ok(payload: &str) -> DeviceMetadata {
        ok_with_key(None, payload)
    }

    fn err_with(key: Option<&[u8]>, payload: Option<&[u8]>, limits: &Limits) -> Reject {
        match decode(key, payload, limits) {
            Err(r) => r,
            Ok(e) => panic!("expected a reject, got {e:?}"),
        }
    }

    fn err(payload: &str) -> Reject {
        err_with(None, Some(payload.as_bytes()), &limits())
    }

    /// The example with one field replaced (or removed, for `None`).
    fn with(field: &str, value: Option<Value>) -> String {
        let mut v: Map<String, Value> = serde_json::from_str(EXAMPLE).unwrap();
        match value {
            Some(value) => v.insert(field.to_owned(), value),
            None => v.remove(field),
        };
        serde_json::to_string(&v).unwrap()
    }

    fn assert_reject(r: &Reject, reason: RejectReason, field: Option<&str>, needle: &str) {
        assert_eq!(r.reason, reason, "{r}");
        assert_eq!(r.field.as_deref(), field, "{r}");
        assert!(r.message.contains(needle), "{r:?} lacks {needle:?}");
    }

    fn device(ms: i64) -> DeviceMetadata {
        DeviceMetadata {
            device_id: "dev-42".into(),
            datatype_id: "dt-7".into(),
            datatype_name: "temperature".into(),
            datatype_unit: Some("C".into()),
            persist: true,
            last_updated_ms: ms,
            additional_properties: Map::new(),
        }
    }

    #[test]
    fn design_example_decodes() {
        let d = ok_with_key(Some("dev-42"), EXAMPLE);
        let mut expected = device(EXAMPLE_MS);
        expected
            .additional_properties
            .insert("site".into(), json!("plant-3"));
        assert_eq!(d, expected);
        assert_eq!(d.last_updated_rfc3339(), "2026-11-22T10:00:00.000Z");
    }

    #[test]
    fn unknown_fields_are_kept_as_they_came() {
        let d = ok(&with(
            "extra",
            Some(json!({"nested": [1, 2.5, null, "x"], "last_updated": "no"})),
        ));
        assert_eq!(d.additional_properties.len(), 2);
        assert_eq!(d.additional_properties["site"], json!("plant-3"));
        assert_eq!(
            d.additional_properties["extra"],
            json!({"nested": [1, 2.5, null, "x"], "last_updated": "no"})
        );
    }

    #[test]
    fn datatype_unit_may_be_null_or_absent() {
        assert_eq!(
            ok(&with("datatype_unit", Some(Value::Null))).datatype_unit,
            None
        );
        assert_eq!(ok(&with("datatype_unit", None)).datatype_unit, None);
        assert_eq!(
            ok(&with("datatype_unit", Some(json!("")))).datatype_unit,
            Some(String::new())
        );
        let r = err(&with("datatype_unit", Some(json!(3))));
        assert_reject(
            &r,
            RejectReason::WrongType,
            Some("datatype_unit"),
            "expected a string or null, got number",
        );
    }

    #[test]
    fn offset_is_converted_to_utc() {
        let d = ok(&with(
            "last_updated",
            Some(json!("2026-11-22T12:00:00+02:00")),
        ));
        assert_eq!(d.last_updated_ms, EXAMPLE_MS);
        assert_eq!(d.last_updated_rfc3339(), "2026-11-22T10:00:00.000Z");
        let d = ok(&with(
            "last_updated",
            Some(json!("2026-11-21T23:30:00-10:30")),
        ));
        assert_eq!(d.last_updated_rfc3339(), "2026-11-22T10:00:00.000Z");
    }

    #[test]
    fn fractional_seconds_truncate_to_milliseconds() {
        let cases = [
            (
                "2026-11-22T10:00:00.5Z",
                EXAMPLE_MS + 500,
                "2026-11-22T10:00:00.500Z",
            ),
            (
                "2026-11-22T10:00:00.1239Z",
                EXAMPLE_MS + 123,
                "2026-11-22T10:00:00.123Z",
            ),
            (
                "2026-11-22T10:00:00.999999999999Z",
                EXAMPLE_MS + 999,
                "2026-11-22T10:00:00.999Z",
            ),
            (
                "2026-11-22t10:00:00.007z",
                EXAMPLE_MS + 7,
                "2026-11-22T10:00:00.007Z",
            ),
            (
                "2026-11-22 10:00:00Z",
                EXAMPLE_MS,
                "2026-11-22T10:00:00.000Z",
            ),
        ];
        for (input, ms, normal) in cases {
            let d = ok(&with("last_updated", Some(json!(input))));
            assert_eq!(d.last_updated_ms, ms, "{input}");
            assert_eq!(d.last_updated_rfc3339(), normal, "{input}");
        }
    }

    #[test]
    fn timestamp_range_is_1970_to_9999_utc() {
        let d = ok(&with("last_updated", Some(json!("1970-01-01T00:00:00Z"))));
        assert_eq!(d.last_updated_ms, 0);
        assert_eq!(d.last_updated_rfc3339(), "1970-01-01T00:00:00.000Z");
        let d = ok(&with(
            "last_updated",
            Some(json!("9999-12-31T23:59:59.999Z")),
        ));
        assert_eq!(d.last_updated_ms, 253_402_300_799_999);
        assert_eq!(d.last_updated_rfc3339(), "9999-12-31T23:59:59.999Z");
        for late in [
            "1969-12-31T23:59:59.999Z",
            "1970-01-01T00:30:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0000-01-01T00:00:00Z",
        ] {
            let r = err(&with("last_updated", Some(json!(late))));
            assert_reject(
                &r,
                RejectReason::InvalidTimestamp,
                Some("last_updated"),
                "expected a time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z",
            );
        }
    }

    #[test]
    fn a_leap_second_is_stored_as_the_last_millisecond_before_the_next_minute() {
        // RFC 3339 allows second 60; Unix time has no such second. Refusing it would
        // dead-letter a valid event, so it becomes 23:59:59.999, which still orders after
        // every earlier instant of that minute and before the next one.
        for leap in [
            "2016-12-31T23:59:60Z",
            "2016-12-31T23:59:60.5Z",
            "2017-01-01T00:59:60+01:00",
        ] {
            let d = ok(&with("last_updated", Some(json!(leap))));
            assert_eq!(
                d.last_updated_rfc3339(),
                "2016-12-31T23:59:59.999Z",
                "{leap}"
            );
        }
        let before = ok(&with(
            "last_updated",
            Some(json!("2016-12-31T23:59:59.998Z")),
        ));
        let after = ok(&with("last_updated", Some(json!("2017-01-01T00:00:00Z"))));
        let leap = ok(&with("last_updated", Some(json!("2016-12-31T23:59:60Z"))));
        assert!(before.last_updated_ms < leap.last_updated_ms);
        assert!(leap.last_updated_ms < after.last_updated_ms);
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for bad in [
            "2026-11-22T10:00:00",
            "2026-11-22",
            "2026-11-22X10:00:00Z",
            "2026-13-22T10:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-11-22T10:00:00+24:00",
            "2026-11-22T10:00:00Z ",
            "yesterday",
            "",
        ] {
            let r = err(&with("last_updated", Some(json!(bad))));
            assert_reject(
                &r,
                RejectReason::InvalidTimestamp,
                Some("last_updated"),
                "expected an RFC 3339 timestamp with an offset",
            );
        }
        let r = err(&with("last_updated", Some(json!(1_795_341_600))));
        assert_reject(
            &r,
            RejectReason::WrongType,
            Some("last_updated"),
            "expected a string, got number",
        );
    }

    #[test]
    fn fixed_width_form_sorts_like_time() {
        let mut ms = vec![0, 1, 999, 1000, 86_399_999, 951_782_400_000, EXAMPLE_MS];
        ms.push(253_402_300_799_999);
        let strings: Vec<String> = ms
            .iter()
            .map(|&m| device(m).last_updated_rfc3339())
            .collect();
        assert!(strings.iter().all(|s| s.len() == 24), "{strings:?}");
        assert!(strings.windows(2).all(|w| w[0] < w[1]), "{strings:?}");
        // Leap day, checked against the `time` crate.
        let leap = OffsetDateTime::parse("2000-02-29T23:59:59.123Z", &Rfc3339).unwrap();
        let ms = (leap.unix_timestamp_nanos() / 1_000_000) as i64;
        assert_eq!(
            device(ms).last_updated_rfc3339(),
            "2000-02-29T23:59:59.123Z"
        );
    }

    #[test]
    fn key_must_match_device_id() {
        assert_eq!(ok_with_key(Some(""), EXAMPLE).device_id, "dev-42");
        let r = err_with(Some(b"dev-43"), Some(EXAMPLE.as_bytes()), &limits());
        assert_reject(
            &r,
            RejectReason::KeyMismatch,
            Some("device_id"),
            r#"got key "dev-43" and device_id "dev-42""#,
        );
        let r = err_with(Some(b"\xff"), Some(EXAMPLE.as_bytes()), &limits());
        assert_reject(&r, RejectReason::InvalidUtf8, Some("key"), "not UTF-8");
    }

    #[test]
    fn tombstones_delete_by_key() {
        assert_eq!(
            decode(Some(b"dev-42"), None, &limits()),
            Ok(Event::DeviceDelete {
                device_id: "dev-42".into()
            })
        );
        let r = err_with(None, None, &limits());
        assert_reject(&r, RejectReason::MissingKey, None, "expected the device id");
        let r = err_with(Some(b""), None, &limits());
        assert_eq!(r.reason, RejectReason::MissingKey);
        let r = err_with(Some(b"\xc3\x28"), None, &limits());
        assert_reject(&r, RejectReason::InvalidUtf8, Some("key"), "not UTF-8");
        let r = err_with(Some(b"dev\n42"), None, &limits());
        assert_reject(&r, RejectReason::InvalidValue, Some("key"), "U+000A");
        let long = "k".repeat(257);
        let r = err_with(Some(long.as_bytes()), None, &limits());
        assert_reject(
            &r,
            RejectReason::InvalidValue,
            Some("key"),
            "at most 256 bytes",
        );
    }

    #[test]
    fn required_fields() {
        for (field, expected) in [
            ("device_id", "a string"),
            ("datatype_id", "a string"),
            ("datatype_name", "a string"),
            ("persist", "a boolean"),
            ("last_updated", "a string"),
        ] {
            let r = err(&with(field, None));
            assert_reject(
                &r,
                RejectReason::MissingField,
                Some(field),
                &format!("expected {expected}, got nothing"),
            );
            let r = err(&with(field, Some(Value::Null)));
            assert_reject(
                &r,
                RejectReason::MissingField,
                Some(field),
                &format!("expected {expected}, got null"),
            );
        }
    }

    #[test]
    fn wrong_types() {
        let cases = [
            ("device_id", json!(42), "expected a string, got number"),
            ("datatype_id", json!(["x"]), "expected a string, got array"),
            ("datatype_name", json!({}), "expected a string, got object"),
            ("persist", json!("true"), "expected a boolean, got string"),
            ("persist", json!(1), "expected a boolean, got number"),
            (
                "last_updated",
                json!(false),
                "expected a string, got boolean",
            ),
        ];
        for (field, value, message) in cases {
            let r = err(&with(field, Some(value)));
            assert_reject(&r, RejectReason::WrongType, Some(field), message);
        }
    }

    #[test]
    fn id_rules() {
        for field in ["device_id", "datatype_id", "datatype_name"] {
            let r = err(&with(field, Some(json!(""))));
            assert_reject(&r, RejectReason::InvalidValue, Some(field), "non-empty");
            let r = err(&with(field, Some(json!("a".repeat(257)))));
            assert_reject(&r, RejectReason::InvalidValue, Some(field), "got 257 bytes");
            let r = err(&with(field, Some(json!("tab\there"))));
            assert_reject(
                &r,
                RejectReason::InvalidValue,
                Some(field),
                "U+0009 at byte 3",
            );
            // C1 controls are control characters too.
            let r = err(&with(field, Some(json!("x\u{85}"))));
            assert_reject(&r, RejectReason::InvalidValue, Some(field), "U+0085");
        }
        let r = err(&with("datatype_unit", Some(json!("°\u{0}C"))));
        assert_reject(
            &r,
            RejectReason::InvalidValue,
            Some("datatype_unit"),
            "U+0000",
        );
        let r = err(&with("datatype_unit", Some(json!("u".repeat(257)))));
        assert_reject(&r, RejectReason::InvalidValue, Some("datatype_unit"), "257");
        // Exactly at the limit, counted in bytes, not chars: 128 two-byte chars.
        let d = ok(&with("device_id", Some(json!("é".repeat(128)))));
        assert_eq!(d.device_id.len(), 256);
        let r = err(&with(
            "device_id",
            Some(json!(format!("{}x", "é".repeat(128)))),
        ));
        assert_reject(
            &r,
            RejectReason::InvalidValue,
            Some("device_id"),
            "got 257 bytes",
        );
        // Spaces, unicode, `#` and `:` are fine.
        let d = ok(&with("device_id", Some(json!("plant 3:dev#42 — ünï"))));
        assert_eq!(d.device_id, "plant 3:dev#42 — ünï");
    }

    #[test]
    fn duplicate_names_inside_nested_objects_are_rejected_too() {
        for (nested, field) in [
            (r#"{"a":1,"a":2}"#, "meta.a"),
            (r#"{"a":1,"\u0061":2}"#, "meta.a"),
            (r#"{"x":{"y":[1,{"k":1,"j":{},"k":2}]}}"#, "meta.x.y[1].k"),
            (r#"[{"a":1},{"b":1,"c":[],"b":2}]"#, "meta[1].b"),
        ] {
            let r = err(&EXAMPLE.replace(r#""site": "plant-3""#, &format!(r#""meta": {nested}"#)));
            assert_reject(
                &r,
                RejectReason::DuplicateField,
                Some(field),
                "more than once",
            );
        }
        // The same name in sibling objects, or as a string value, is no duplicate.
        for nested in [
            r#"{"a":{"a":1},"b":{"a":1}}"#,
            r#"[{"a":1},{"a":2}]"#,
            r#"{"a":"a","b":"a,\"a\":"}"#,
        ] {
            ok(&EXAMPLE.replace(r#""site": "plant-3""#, &format!(r#""meta": {nested}"#)));
        }
    }

    #[test]
    fn duplicate_fields_are_rejected() {
        let r = err(
            r#"{"device_id":"a","device_id":"b","datatype_id":"d","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#,
        );
        assert_reject(
            &r,
            RejectReason::DuplicateField,
            Some("device_id"),
            "more than once",
        );
        let r = err(&EXAMPLE.replace(r#""site""#, r#""site": 1, "site""#));
        assert_reject(
            &r,
            RejectReason::DuplicateField,
            Some("site"),
            "more than once",
        );
        // Null counts as present; an escaped spelling is the same name.
        let r = err(&EXAMPLE.replace(
            r#""datatype_unit": "C""#,
            r#""datatype_unit": null, "datatype\u005funit": "C""#,
        ));
        assert_reject(
            &r,
            RejectReason::DuplicateField,
            Some("datatype_unit"),
            "once",
        );
    }

    #[test]
    fn whole_record_problems() {
        let r = err("");
        assert_reject(&r, RejectReason::InvalidJson, None, "payload is empty");
        let r = err("   ");
        assert_reject(&r, RejectReason::InvalidJson, None, "EOF while parsing");
        let r = err(r#"{"device_id": "dev-42",}"#);
        assert_reject(&r, RejectReason::InvalidJson, None, "line 1 column 24");
        let r = err(&format!("{EXAMPLE} {{}}"));
        assert_reject(&r, RejectReason::InvalidJson, None, "trailing characters");
        for not_object in ["[]", "null", "\"dev-42\"", "42"] {
            let r = err(not_object);
            assert_reject(
                &r,
                RejectReason::InvalidJson,
                None,
                "expected a device metadata JSON object",
            );
        }
        // A syntax error after a bad field still reports the syntax error.
        let r = err(r#"{"device_id": 1, "device_id": 2"#);
        assert_reject(
            &r,
            RejectReason::InvalidJson,
            None,
            "EOF while parsing an object",
        );
    }

    #[test]
    fn deep_nesting_is_invalid_json_not_a_crash() {
        let deep = "[".repeat(10_000);
        let r = err(&deep);
        assert_reject(
            &r,
            RejectReason::InvalidJson,
            None,
            "invalid type: sequence, expected a device metadata JSON object",
        );
        // Unclosed: a syntax error, found without recursing.
        let r = err(&with("site", None).replace('}', &format!(r#","x":{deep}}}"#)));
        assert_reject(&r, RejectReason::InvalidJson, None, "expected value");
        let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let r = err(&format!(r#"{{"site":{nested}}}"#));
        assert_reject(
            &r,
            RejectReason::InvalidJson,
            None,
            "recursion limit exceeded",
        );
        // Also inside a duplicate, whose value is skipped rather than built.
        let r = err(&format!(r#"{{"site":1,"site":{nested}}}"#));
        assert_reject(&r, RejectReason::DuplicateField, Some("site"), "once");
    }

    #[test]
    fn invalid_utf8_and_size() {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        bytes[20] = 0xff;
        let r = err_with(None, Some(&bytes), &limits());
        assert_reject(
            &r,
            RejectReason::InvalidUtf8,
            None,
            "invalid utf-8 sequence",
        );

        let small = Limits {
            max_message_bytes: 16,
            ..Limits::default()
        };
        let r = err_with(None, Some(EXAMPLE.as_bytes()), &small);
        assert_reject(
            &r,
            RejectReason::TooLarge,
            None,
            &format!("payload is {} bytes, expected at most 16", EXAMPLE.len()),
        );
        // Size is checked before anything else, even UTF-8.
        let r = err_with(None, Some(&[0xff; 17]), &small);
        assert_eq!(r.reason, RejectReason::TooLarge);
        let exact = Limits {
            max_message_bytes: EXAMPLE.len(),
            ..Limits::default()
        };
        assert!(matches!(
            decode(None, Some(EXAMPLE.as_bytes()), &exact),
            Ok(Event::DeviceUpsert(_))
        ));
    }

    #[test]
    fn normalized_json_has_fixed_field_order() {
        let input = with("last_updated", Some(json!("2026-11-22T12:00:00.25+02:00")));
        let expected = r#"{"device_id":"dev-42","datatype_id":"dt-7","datatype_name":"temperature","datatype_unit":"C","persist":true,"last_updated":"2026-11-22T10:00:00.250Z","site":"plant-3"}"#;
        assert_eq!(upsert(None, &input).normalized_json(), expected);
        assert_eq!(ok(&input).to_normalized_json(), expected);
        let input = with("datatype_unit", None).replace(r#""site":"plant-3""#, r#""persist2":0"#);
        let expected = r#"{"device_id":"dev-42","datatype_id":"dt-7","datatype_name":"temperature","datatype_unit":null,"persist":true,"last_updated":"2026-11-22T10:00:00.000Z","persist2":0}"#;
        assert_eq!(upsert(None, &input).normalized_json(), expected);
        assert_eq!(ok(&input).to_normalized_json(), expected);
    }

    #[test]
    fn additional_properties_are_stored_as_they_came_without_whitespace_and_sorted() {
        let stored = upsert(
            None,
            r#"{"zeta": [1, 2.50, 1e2, {"k" : "a b\" c"}],
              "device_id": "dev-42", "datatype_id": "dt-7", "datatype_name": "temperature",
              "persist": true, "last_updated": "2026-11-22T10:00:00Z",
              "alpha":	"caf\u00e9", "big": 123456789012345678901234567890}"#,
        );
        assert_eq!(
            stored.normalized_json(),
            r#"{"device_id":"dev-42","datatype_id":"dt-7","datatype_name":"temperature","datatype_unit":null,"persist":true,"last_updated":"2026-11-22T10:00:00.000Z","alpha":"caf\u00e9","big":123456789012345678901234567890,"zeta":[1,2.50,1e2,{"k":"a b\" c"}]}"#
        );
        // Any JSON reader reads the same values.
        let v: Value = serde_json::from_str(stored.normalized_json()).unwrap();
        assert_eq!(v["alpha"], "café");
        assert_eq!(v["zeta"][3]["k"], "a b\" c");
        let typed = stored.metadata().unwrap();
        assert_eq!(typed.additional_properties["zeta"][2], json!(100.0));
    }

    #[test]
    fn strings_are_escaped_exactly_like_serde_json() {
        let mut cases: Vec<String> = (0u8..=0x7f).map(|b| format!("a{}b", b as char)).collect();
        cases.extend(
            [
                "",
                "plain",
                "quote\" back\\slash",
                "ünï 🚀 \u{2028}\u{85}",
                "\u{7f}\u{0}\u{1f}",
            ]
            .map(str::to_owned),
        );
        for case in cases {
            let mut ours = String::new();
            push_json_str(&mut ours, &case);
            assert_eq!(ours, serde_json::to_string(&case).unwrap(), "{case:?}");
        }
    }

    #[test]
    fn values_a_json_reader_refuses_are_refused() {
        for (value, needle) in [
            (r#""\ud800""#, "escape"),
            (r#"["ok", {"k": "a\udc00b"}]"#, "lone"),
            ("1e400", "number out of range"),
            ("[-1.5E+999]", "number out of range"),
            (&format!("1{}", "0".repeat(400)), "number out of range"),
        ] {
            let r = err(&with("site", Some(Value::Null)).replace("null", value));
            assert_reject(&r, RejectReason::InvalidJson, None, needle);
            assert!(r.message.contains("site"), "{r}");
        }
        // What readers accept is kept as it came.
        for value in [
            r#""\ud83d\ude80\u00e9""#,
            "1e300",
            "-0.5E-3",
            "[true, false, 12e3]",
            &"9".repeat(299),
        ] {
            let stored = upsert(
                None,
                &with("site", Some(Value::Null)).replace("null", value),
            );
            assert!(stored.metadata().is_ok(), "{value}");
            assert!(
                stored.normalized_json().contains(&value.replace(' ', "")),
                "{value}"
            );
        }
    }

    #[test]
    fn only_values_that_could_be_refused_are_read_twice() {
        let suspect = |v: &str| inspect(v).suspect;
        assert!(!suspect(r#""plain \" \\ text""#));
        assert!(!suspect("[true, false, null, 12, -3.5]"));
        assert!(!suspect(r#"{"e": "E", "true": 1}"#));
        assert!(suspect(r#""\u0041""#));
        assert!(suspect("[1e5]"));
        assert!(suspect(&"1".repeat(300)));
        assert_eq!(inspect("[[1], {\"a\": [2]}]").depth, 3);
        assert_eq!(inspect("\"[[[\"").depth, 0);
    }

    #[test]
    fn nesting_stops_where_a_json_reader_would() {
        let at = |depth: usize| {
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            with("site", Some(Value::Null)).replace("null", &nested)
        };
        let deepest = upsert(None, &at(MAX_VALUE_DEPTH));
        assert!(serde_json::from_str::<Value>(deepest.normalized_json()).is_ok());
        assert!(deepest.metadata().is_ok());
        let r = err(&at(MAX_VALUE_DEPTH + 1));
        assert_reject(
            &r,
            RejectReason::InvalidJson,
            None,
            "recursion limit exceeded",
        );
        // One level more is what serde_json itself refuses.
        let too_deep = format!(
            "{{\"site\":{}1{}}}",
            "[".repeat(MAX_VALUE_DEPTH + 1),
            "]".repeat(MAX_VALUE_DEPTH + 1)
        );
        assert!(serde_json::from_str::<Value>(&too_deep).is_err());
    }

    #[test]
    fn last_updated_precedes_every_additional_property() {
        let d = ok(
            r#"{"aaa": {"last_updated": "1970-01-01T00:00:00Z"}, "\"last_updated\":\"": 1,
            "device_id": "dev-42", "datatype_id": "dt-7", "datatype_name": "temperature",
            "persist": false, "last_updated": "2026-11-22T10:00:00Z", "zzz": "\"last_updated\":\"x"}"#,
        );
        let json = d.to_normalized_json();
        assert_eq!(
            upsert(None, &json).normalized_json(),
            json,
            "decoding stores what the typed view writes"
        );
        let needle = r#""last_updated":""#;
        let at = json.find(needle).unwrap();
        assert_eq!(
            &json[at + needle.len()..at + needle.len() + 24],
            "2026-11-22T10:00:00.000Z"
        );
        assert!(at < json.find(r#""aaa""#).unwrap(), "{json}");
        assert_eq!(DeviceMetadata::from_normalized_json(&json), Ok(d));
    }

    #[test]
    fn named_fields_cannot_be_shadowed_by_hand_built_properties() {
        let mut d = device(EXAMPLE_MS);
        d.additional_properties
            .insert("last_updated".into(), json!("9999-12-31T23:59:59.999Z"));
        d.additional_properties.insert("site".into(), json!(1));
        assert_eq!(
            d.to_normalized_json(),
            r#"{"device_id":"dev-42","datatype_id":"dt-7","datatype_name":"temperature","datatype_unit":"C","persist":true,"last_updated":"2026-11-22T10:00:00.000Z","site":1}"#
        );
    }

    #[test]
    fn normalized_json_round_trips() {
        let mut d = device(EXAMPLE_MS + 7);
        d.device_id = "quote\" back\\slash ünï 🚀 #:".into();
        d.datatype_name = "<script>".into();
        d.datatype_unit = None;
        d.persist = false;
        d.additional_properties.insert(
            "deep".into(),
            json!({"a": [1, -2.5, 1e300, u64::MAX, null, true, {"b": "\u{1}"}]}),
        );
        d.additional_properties
            .insert("é\"k".into(), json!("v\u{2028}"));
        let json = d.to_normalized_json();
        assert!(
            json.starts_with(r#"{"device_id":"quote\" back\\slash ünï 🚀 #:","#),
            "{json}"
        );
        assert!(json.contains(r#""\u0001""#), "{json}");
        // Valid JSON that any client can read.
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["device_id"], json!(d.device_id));
        assert_eq!(DeviceMetadata::from_normalized_json(&json), Ok(d.clone()));
        // And it is a fixed point.
        let again = DeviceMetadata::from_normalized_json(&json).unwrap();
        assert_eq!(again.to_normalized_json(), json);
    }

    #[test]
    fn the_upsert_gives_its_id_whether_or_not_the_json_escapes_it() {
        for id in ["dev-42", "dev-4\"2é", "a\\", "a\\b", "é"] {
            let payload = EXAMPLE.replace(r#""dev-42""#, &serde_json::to_string(id).unwrap());
            let u = upsert(Some(id), &payload);
            assert_eq!(u.device_id(), id);
            assert_eq!(DeviceUpsert::from(u.metadata().unwrap()), u);
        }
        // The typed view takes any id; decoding would refuse these.
        for id in ["line\nbreak", "\u{1}", ""] {
            let mut d = device(EXAMPLE_MS);
            d.device_id = id.to_owned();
            assert_eq!(DeviceUpsert::from(&d).device_id(), id);
        }
    }

    #[test]
    fn escaped_input_is_unescaped() {
        let d = ok(&EXAMPLE.replace(r#""dev-42""#, r#""dev-\u0034\"2\u00e9""#));
        assert_eq!(d.device_id, "dev-4\"2é");
        let d = ok_with_key(
            Some("dev-4\"2é"),
            &EXAMPLE.replace(r#""dev-42""#, r#""dev-\u0034\"2\u00e9""#),
        );
        assert_eq!(d.device_id, "dev-4\"2é");
        // Escapes that make a control character are still control characters.
        let r = err(&EXAMPLE.replace(r#""dev-42""#, r#""dev\u001b42""#));
        assert_reject(&r, RejectReason::InvalidValue, Some("device_id"), "U+001B");
    }

    #[test]
    fn from_normalized_json_rejects_what_decode_rejects() {
        let r = DeviceMetadata::from_normalized_json("{}").unwrap_err();
        assert_reject(
            &r,
            RejectReason::MissingField,
            Some("device_id"),
            "got nothing",
        );
        let r = DeviceMetadata::from_normalized_json("").unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidJson);
        // No id limit on the read side: the writer may run with larger limits.
        let mut d = device(EXAMPLE_MS);
        d.device_id = "x".repeat(10_000);
        assert_eq!(
            DeviceMetadata::from_normalized_json(&d.to_normalized_json()),
            Ok(d)
        );
    }
}
