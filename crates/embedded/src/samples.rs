//! The sample events shipped in `examples/demo-events.jsonl`: what `metacache demo`
//! publishes, and what examples and tests load into a cache.

use serde::Deserialize;

use metacache_contract::model::{self, Event, Limits, TopicKind};

/// The sample events shipped with the binary.
pub const SAMPLE_EVENTS: &str = include_str!("../../../examples/demo-events.jsonl");

/// One line of a demo events file: which topic, the Kafka key, and the value (JSON, a raw
/// string for deliberately broken input, or a tombstone).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleEvent {
    #[serde(default)]
    pub note: String,
    /// `devices` or `metrics`.
    pub topic: String,
    pub key: Option<String>,
    pub value: Option<serde_json::Value>,
    pub raw: Option<String>,
    #[serde(default)]
    pub tombstone: bool,
}

impl SampleEvent {
    pub fn payload(&self) -> Option<Vec<u8>> {
        if self.tombstone {
            None
        } else if let Some(raw) = &self.raw {
            Some(raw.clone().into_bytes())
        } else {
            self.value.as_ref().map(|v| v.to_string().into_bytes())
        }
    }
}

/// Parses a demo events file, naming the line of any mistake.
pub fn parse_samples(text: &str) -> Result<Vec<SampleEvent>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let e: SampleEvent =
                serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
            if e.topic != "devices" && e.topic != "metrics" {
                return Err(format!("line {}: topic must be devices or metrics", i + 1));
            }
            Ok(e)
        })
        .collect()
}

/// The shipped sample events that pass validation, decoded, in file order (tombstones and
/// the out-of-order update included). Applied in order they leave the cache as the demo
/// does: devices `dev-42`, `dev-43`, `dev-44`; namespaces `billing`, `default`, `infra`.
///
/// ```
/// use metacache_contract::model::Event;
///
/// let events = metacache_embedded::samples::valid_sample_events();
/// assert_eq!(events.len(), 14);
/// assert!(matches!(&events[0], Event::DeviceUpsert(d) if d.device_id() == "dev-42"));
/// ```
pub fn valid_sample_events() -> Vec<Event> {
    let limits = Limits::default();
    parse_samples(SAMPLE_EVENTS)
        .unwrap_or_default()
        .iter()
        .filter_map(|sample| {
            let kind = if sample.topic == "devices" {
                TopicKind::Device
            } else {
                TopicKind::Metric
            };
            let payload = sample.payload();
            model::decode(
                kind,
                sample.key.as_deref().map(str::as_bytes),
                payload.as_deref(),
                &limits,
            )
            .ok()
        })
        .collect()
}
