//! Events and rejections: the typed shape of what arrives on the Kafka topics.
//!
//! Everything here is pure: bytes in, a typed [`Event`] or a typed [`Reject`] out.
//! Keeping decoding free of I/O lets the hostile-input tests hammer it without servers,
//! and lets the Kafka source call it on its own thread without touching Redis.

mod device;
mod limits;
mod metric;
mod parse;
mod raw;
mod reject;
mod scan;

pub use device::{DeviceMetadata, DeviceUpsert};
pub use limits::Limits;
pub use metric::{namespace_or_default, MetricOp, DEFAULT_NAMESPACE};
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
    /// Insert or update one device's metadata (its typed view: [`DeviceUpsert::metadata`]).
    DeviceUpsert(DeviceUpsert),
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

/// What a value says whatever its Kafka key: for the producer side, which decodes a value
/// to learn the key it must be sent with. The daemon always uses [`decode`].
pub fn decode_value(kind: TopicKind, payload: &[u8], limits: &Limits) -> Result<Event, Reject> {
    match kind {
        TopicKind::Device => device::decode(None, Some(payload), limits),
        TopicKind::Metric => metric::decode_unkeyed(payload, limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case<'a> = (
        TopicKind,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        RejectReason,
        Option<&'a str>,
    );

    /// Every reason but the writer's own is produced by some input, with the expected field.
    #[test]
    fn every_decoding_reason_is_reachable() {
        let device = r#"{"device_id":"d","datatype_id":"t","datatype_name":"n","persist":true,"last_updated":"1969-12-31T23:59:59Z"}"#;
        let cases: [Case; 11] = [
            (
                TopicKind::Device,
                None,
                Some(&[b' '; 2_000_000]),
                RejectReason::TooLarge,
                None,
            ),
            (
                TopicKind::Metric,
                None,
                Some(b"\xff"),
                RejectReason::InvalidUtf8,
                None,
            ),
            (
                TopicKind::Device,
                None,
                Some(b"{"),
                RejectReason::InvalidJson,
                None,
            ),
            (
                TopicKind::Device,
                None,
                Some(b"{}"),
                RejectReason::MissingField,
                Some("device_id"),
            ),
            (
                TopicKind::Metric,
                None,
                Some(br#"{"op":true}"#),
                RejectReason::WrongType,
                Some("op"),
            ),
            (
                TopicKind::Metric,
                None,
                Some(br#"{"op":"add","op":"add"}"#),
                RejectReason::DuplicateField,
                Some("op"),
            ),
            (
                TopicKind::Device,
                Some(b""),
                None,
                RejectReason::MissingKey,
                None,
            ),
            (
                TopicKind::Metric,
                None,
                Some(br#"{"op":"put","metric_names":[]}"#),
                RejectReason::UnknownOp,
                Some("op"),
            ),
            (
                TopicKind::Metric,
                Some(b"a"),
                Some(br#"{"op":"add","metric_names":[]}"#),
                RejectReason::KeyMismatch,
                Some("namespace"),
            ),
            (
                TopicKind::Metric,
                None,
                Some(br#"{"op":"add","metric_names":[""]}"#),
                RejectReason::InvalidValue,
                Some("metric_names[0]"),
            ),
            (
                TopicKind::Device,
                None,
                Some(device.as_bytes()),
                RejectReason::InvalidTimestamp,
                Some("last_updated"),
            ),
        ];
        let mut seen = Vec::new();
        for (kind, key, payload, reason, field) in cases {
            let r = decode(kind, key, payload, &Limits::default()).unwrap_err();
            assert_eq!((r.reason, r.field.as_deref()), (reason, field), "{r}");
            assert!(!r.message.is_empty());
            seen.push(r.reason);
        }
        seen.push(RejectReason::RedisRejected);
        seen.sort();
        assert_eq!(seen, RejectReason::ALL);
    }
}
