//! Device metadata: decoding, validation and the normalized JSON stored in Redis.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::parse::{self, FieldKey};
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

/// One device's metadata after validation.
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
        decode_upsert(text, None, &unbounded)
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
    decode_upsert(text, key, limits).map(Event::DeviceUpsert)
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

fn decode_upsert(text: &str, key: Option<&str>, limits: &Limits) -> Result<DeviceMetadata, Reject> {
    let raw = parse::parse_object(text, DeviceVisitor)?;
    if let Some(field) = &raw.duplicate {
        return Err(parse::duplicate(field));
    }

    let device_id = parse::required_string("device_id", raw.device_id)?;
    parse::check_text("device_id", &device_id, limits, false)?;
    let datatype_id = parse::required_string("datatype_id", raw.datatype_id)?;
    parse::check_text("datatype_id", &datatype_id, limits, false)?;
    let datatype_name = parse::required_string("datatype_name", raw.datatype_name)?;
    parse::check_text("datatype_name", &datatype_name, limits, false)?;
    let datatype_unit = match raw.datatype_unit {
        None | Some(Value::Null) => None,
        Some(Value::String(unit)) => {
            parse::check_text("datatype_unit", &unit, limits, true)?;
            Some(unit)
        }
        Some(other) => {
            return Err(parse::wrong_type(
                "datatype_unit",
                "a string or null",
                &other,
            ))
        }
    };
    let persist = match raw.persist {
        Some(Value::Bool(b)) => b,
        Some(Value::Null) => return Err(parse::missing("persist", "a boolean", true)),
        None => return Err(parse::missing("persist", "a boolean", false)),
        Some(other) => return Err(parse::wrong_type("persist", "a boolean", &other)),
    };
    let last_updated = parse::required_string("last_updated", raw.last_updated)?;
    let last_updated_ms = parse_last_updated(&last_updated)?;

    if let Some(key) = key {
        if key != device_id {
            return Err(Reject::new(
                RejectReason::KeyMismatch,
                Some("device_id"),
                format!(
                    "expected the Kafka key to equal device_id, got key {} and device_id {}",
                    parse::preview(key),
                    parse::preview(&device_id)
                ),
            ));
        }
    }

    Ok(DeviceMetadata {
        device_id,
        datatype_id,
        datatype_name,
        datatype_unit,
        persist,
        last_updated_ms,
        additional_properties: raw.additional,
    })
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
        return Err(bad(&"date and time must be separated by `T`"));
    }
    // unix_timestamp_nanos works on any offset without converting to UTC first, so a
    // year-9999 local time east of UTC cannot overflow `time`'s date range.
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

/// Every top-level field as it came; checking happens after the whole document parsed, so
/// a syntax error anywhere wins over a field error.
#[derive(Default)]
struct RawDevice {
    device_id: Option<Value>,
    datatype_id: Option<Value>,
    datatype_name: Option<Value>,
    datatype_unit: Option<Value>,
    persist: Option<Value>,
    last_updated: Option<Value>,
    additional: Map<String, Value>,
    /// The first field seen twice.
    duplicate: Option<String>,
}

struct DeviceVisitor;

impl<'de> Visitor<'de> for DeviceVisitor {
    type Value = RawDevice;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a device metadata JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDevice, A::Error> {
        let mut raw = RawDevice::default();
        while let Some(FieldKey(key)) = map.next_key()? {
            let slot = match &*key {
                "device_id" => &mut raw.device_id,
                "datatype_id" => &mut raw.datatype_id,
                "datatype_name" => &mut raw.datatype_name,
                "datatype_unit" => &mut raw.datatype_unit,
                "persist" => &mut raw.persist,
                "last_updated" => &mut raw.last_updated,
                _ if raw.additional.contains_key(&*key) => {
                    raw.duplicate.get_or_insert_with(|| key.into_owned());
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                _ => {
                    let value = map.next_value()?;
                    raw.additional.insert(key.into_owned(), value);
                    continue;
                }
            };
            if slot.is_some() {
                raw.duplicate.get_or_insert_with(|| key.into_owned());
                map.next_value::<IgnoredAny>()?;
            } else {
                *slot = Some(map.next_value()?);
            }
        }
        Ok(raw)
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

/// Epoch milliseconds shown as `YYYY-MM-DDTHH:MM:SS.mmmZ`, without an allocation.
struct UtcMillis(i64);

impl fmt::Display for UtcMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
