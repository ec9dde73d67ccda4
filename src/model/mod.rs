//! Events and rejections: the typed shape of what arrives on the Kafka topics.
//!
//! Everything here is pure: bytes in, a typed [`Event`] or a typed [`Reject`] out.
//! Keeping decoding free of I/O lets the hostile-input tests hammer it without servers,
//! and lets the Kafka source call it on its own thread without touching Redis.

mod device;
mod limits;
mod metric;
mod parse;
mod reject;

pub use device::DeviceMetadata;
pub use limits::Limits;
pub use metric::{MetricOp, DEFAULT_NAMESPACE};
pub use reject::{Reject, RejectReason};

/// Which kind of stream a topic carries; the daemon maps configured topic names to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Device,
    Metric,
}

/// A validated event, ready for command planning.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Insert or update one device's metadata.
    DeviceUpsert(DeviceMetadata),
    /// A Kafka tombstone on the device topic: forget the device.
    DeviceDelete { device_id: String },
    /// An operation on one namespace's metric-name set.
    Metric(MetricOp),
}

/// Decodes and validates one Kafka record.
///
/// `payload == None` is a tombstone. The Kafka key, when present, must name the same
/// device / namespace as the payload.
pub fn decode(
    kind: TopicKind,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    limits: &Limits,
) -> Result<Event, Reject> {
    match kind {
        TopicKind::Device => device::decode(key, payload, limits),
        TopicKind::Metric => metric::decode(key, payload, limits),
    }
}
