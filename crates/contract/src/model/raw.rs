//! The device object as read, before any rule is applied: every top-level field as it
//! came. Two readers fill it: serde_json ([`read_with_serde`], the judge of every
//! document) and the fast path in `scan`; `device` checks what they read.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::parse::{self, FieldKey};
use super::Reject;

/// A field the schema does not name.
#[derive(Debug, PartialEq)]
pub(super) struct Extra<'a> {
    pub(super) name: Cow<'a, str>,
    /// Its JSON text, exactly as it came.
    pub(super) value: &'a str,
    /// Its place among the object's fields, to name the first duplicate as it came.
    pub(super) position: usize,
}

/// The top-level object as serde_json reads it: the judge of every document the fast path
/// in `scan` gives up on.
pub(super) fn read_with_serde(text: &str) -> Result<RawDevice<'_>, Reject> {
    parse::parse_object(text, DeviceVisitor)
}

/// Every top-level field as it came; checking happens after the whole document parsed, so
/// a syntax error anywhere wins over a field error.
#[derive(Debug, Default, PartialEq)]
pub(super) struct RawDevice<'de> {
    pub(super) device_id: Option<Named<'de>>,
    pub(super) datatype_id: Option<Named<'de>>,
    pub(super) datatype_name: Option<Named<'de>>,
    pub(super) datatype_unit: Option<Named<'de>>,
    pub(super) persist: Option<Named<'de>>,
    pub(super) last_updated: Option<Named<'de>>,
    pub(super) additional: Vec<Extra<'de>>,
    /// The first named field seen twice, and where.
    pub(super) duplicate: Option<(usize, String)>,
}

struct DeviceVisitor;

impl<'de> Visitor<'de> for DeviceVisitor {
    type Value = RawDevice<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a device metadata JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDevice<'de>, A::Error> {
        let mut raw = RawDevice {
            // Most devices carry a few extra fields: one allocation, not three.
            additional: Vec::with_capacity(map.size_hint().unwrap_or(8).min(16)),
            ..RawDevice::default()
        };
        let mut position = 0;
        while let Some(FieldKey(key)) = map.next_key()? {
            position += 1;
            let slot = match &*key {
                "device_id" => &mut raw.device_id,
                "datatype_id" => &mut raw.datatype_id,
                "datatype_name" => &mut raw.datatype_name,
                "datatype_unit" => &mut raw.datatype_unit,
                "persist" => &mut raw.persist,
                "last_updated" => &mut raw.last_updated,
                _ => {
                    let value = map.next_value::<&'de RawValue>()?;
                    raw.additional.push(Extra {
                        name: key,
                        value: value.get(),
                        position,
                    });
                    continue;
                }
            };
            if slot.is_some() {
                raw.duplicate
                    .get_or_insert_with(|| (position, key.into_owned()));
                map.next_value::<IgnoredAny>()?;
            } else {
                *slot = Some(map.next_value()?);
            }
        }
        Ok(raw)
    }
}

/// A named field's value: what the schema can use, or the JSON type it got instead (arrays
/// and objects are skipped, not built).
#[derive(Debug, PartialEq)]
pub(super) enum Named<'de> {
    Str(Cow<'de, str>),
    Bool(bool),
    Null,
    Other(&'static str),
}

impl Named<'_> {
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Named::Str(_) => "string",
            Named::Bool(_) => "boolean",
            Named::Null => "null",
            Named::Other(name) => name,
        }
    }
}

impl<'de> Deserialize<'de> for Named<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamedVisitor;
        impl<'de> Visitor<'de> for NamedVisitor {
            type Value = Named<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Named::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Named::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Named::Str(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Named::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Named::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Named::Null)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Named::Other("number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Named::Other("number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Named::Other("number"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Named::Other("array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Named::Other("object"))
            }
        }
        deserializer.deserialize_any(NamedVisitor)
    }
}
