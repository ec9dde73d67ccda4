//! Device metadata: decoding, validation and the normalized JSON stored in Redis.

use serde_json::{Map, Value};

use super::{Event, Limits, Reject};

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
    pub fn last_updated_rfc3339(&self) -> String {
        todo!()
    }

    /// The JSON stored under `device:{id}`.
    pub fn to_normalized_json(&self) -> String {
        todo!()
    }
}

pub(super) fn decode(
    _key: Option<&[u8]>,
    _payload: Option<&[u8]>,
    _limits: &Limits,
) -> Result<Event, Reject> {
    todo!()
}
