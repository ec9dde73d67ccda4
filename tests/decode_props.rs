//! Hostile input, property-based: the decoder never panics, every rejection names a reason
//! (and a field wherever one is at fault), limits hold, and valid events round-trip.
//!
//! Bounded for CI: 2,000 cases per property unless `PROPTEST_CASES` says otherwise.

use metacache::model::{
    self, DeviceMetadata, Event, Limits, MetricOp, Reject, RejectReason, TopicKind,
};

/// The daemon's decoder; an unkeyed metric-catalog value (always refused as `missing_key`
/// by the daemon, see `unkeyed_metric_events_are_missing_key`) is read as the producer
/// side reads it, so these properties keep checking what the value itself says.
fn decode(
    kind: TopicKind,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    limits: &Limits,
) -> Result<Event, Reject> {
    match (kind, key, payload) {
        (TopicKind::Metric, None, Some(value)) => model::decode_value(kind, value, limits),
        _ => model::decode(kind, key, payload, limits),
    }
}

#[test]
fn unkeyed_metric_events_are_missing_key() {
    let value = br#"{"op":"add","namespace":"ops","metric_names":["a"]}"#;
    for key in [None, Some(&b""[..])] {
        let r = model::decode(TopicKind::Metric, key, Some(value), &Limits::default())
            .expect_err("refused");
        assert_eq!(r.reason, RejectReason::MissingKey);
        assert_eq!(r.field.as_deref(), Some("key"));
    }
}
use proptest::prelude::*;

#[path = "support/props.rs"]
mod props;
use props::config;
use serde_json::{Map, Value};

fn kind() -> impl Strategy<Value = TopicKind> {
    prop_oneof![Just(TopicKind::Device), Just(TopicKind::Metric)]
}

/// Small limits, so "too large" and "too many" are reached by small inputs.
fn limits() -> impl Strategy<Value = Limits> {
    (1usize..4096, 1usize..64, 1usize..16).prop_map(|(m, i, n)| Limits {
        max_message_bytes: m,
        max_id_bytes: i,
        max_metric_names: n,
    })
}

/// The invariants every outcome must satisfy.
fn check(kind: TopicKind, key: Option<&[u8]>, payload: Option<&[u8]>, limits: &Limits) {
    match decode(kind, key, payload, limits) {
        Err(r) => {
            assert!(!r.message.is_empty(), "{r:?}");
            assert_ne!(
                r.reason,
                RejectReason::RedisRejected,
                "decoding never says that"
            );
            let needs_field = matches!(
                r.reason,
                RejectReason::MissingField
                    | RejectReason::WrongType
                    | RejectReason::DuplicateField
                    | RejectReason::InvalidValue
                    | RejectReason::InvalidTimestamp
                    | RejectReason::UnknownOp
                    | RejectReason::KeyMismatch
            );
            let whole_record = matches!(
                r.reason,
                RejectReason::TooLarge | RejectReason::InvalidJson | RejectReason::MissingKey
            );
            if needs_field {
                assert!(
                    r.field.as_deref().is_some_and(|f| !f.is_empty()),
                    "{r:?} names no field"
                );
            }
            if whole_record {
                assert_eq!(r.field, None, "{r:?}");
            }
            if r.reason == RejectReason::InvalidUtf8 {
                assert!(matches!(r.field.as_deref(), None | Some("key")), "{r:?}");
            }
            if let Some(p) = payload {
                if p.len() > limits.max_message_bytes {
                    assert_eq!(r.reason, RejectReason::TooLarge, "{r:?}");
                }
                if p.is_empty() {
                    assert_eq!(r.reason, RejectReason::InvalidJson, "{r:?}");
                }
            }
            // Messages quote hostile values only in short previews.
            assert!(
                r.message.len() < 1024,
                "message of {} bytes",
                r.message.len()
            );
        }
        Ok(event) => {
            let payload_len = payload.map_or(0, <[u8]>::len);
            assert!(payload_len <= limits.max_message_bytes);
            valid(&event, key, limits);
        }
    }
}

/// What an accepted event must satisfy.
fn valid(event: &Event, key: Option<&[u8]>, limits: &Limits) {
    let id_ok = |s: &str| {
        !s.is_empty() && s.len() <= limits.max_id_bytes && !s.chars().any(char::is_control)
    };
    let key = key.filter(|k| !k.is_empty());
    match event {
        Event::DeviceUpsert(stored) => {
            // What is stored reads back, with any JSON reader and as the typed view.
            let d = stored.metadata().expect("the stored form reads back");
            assert!(serde_json::from_str::<Value>(stored.normalized_json()).is_ok());
            assert_eq!(d.device_id, stored.device_id());
            assert_eq!(d.last_updated_ms, stored.last_updated_ms());
            assert!(id_ok(&d.device_id) && id_ok(&d.datatype_id) && id_ok(&d.datatype_name));
            assert!((0..=253_402_300_799_999).contains(&d.last_updated_ms));
            if let Some(k) = key {
                assert_eq!(k, d.device_id.as_bytes());
            }
        }
        Event::DeviceDelete { device_id } => {
            assert!(id_ok(device_id));
            assert_eq!(key, Some(device_id.as_bytes()));
        }
        Event::Metric(op) => {
            assert!(id_ok(op.namespace()));
            if let MetricOp::Replace { metric_names, .. }
            | MetricOp::Add { metric_names, .. }
            | MetricOp::Remove { metric_names, .. } = op
            {
                assert!(metric_names.len() <= limits.max_metric_names);
                assert!(metric_names.iter().all(|n| id_ok(n)));
            }
            if let Some(k) = key {
                assert_eq!(k, op.namespace().as_bytes());
            }
        }
    }
}

/// Any JSON value, nested a few levels, with strings that may hold anything.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Binary fractions print and parse back exactly (a round trip compares them).
        (-1.0e6f64..1.0e6).prop_map(|f| Value::from((f * 8.0).round() / 8.0)),
        any::<String>().prop_map(Value::String),
        "[a-z0-9-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Field names: the ones the decoders know, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "device_id", "datatype_id", "datatype_name", "datatype_unit", "persist",
            "last_updated", "op", "namespace", "metric_names",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
        1 => any::<String>(),
    ]
}

/// Values a field may get: plausible ones, wrong types, timestamps in and out of range.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "[a-z0-9-]{1,12}".prop_map(Value::String),
        1 => Just(Value::String(String::new())),
        2 => prop::sample::select(vec!["replace", "add", "remove", "rename", "REPLACE"])
            .prop_map(|s| Value::String(s.into())),
        2 => timestamp().prop_map(Value::String),
        2 => prop::collection::vec("[a-z0-9]{0,6}", 0..20)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect())),
        2 => json_value(),
    ]
}

/// RFC 3339 look-alikes: valid, at and past the edges of 1970..=9999, and broken.
fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0u32..=10_000,
            1u32..=12,
            1u32..=31,
            0u32..=24,
            0u32..=60,
            0u32..=60
        )
            .prop_map(|(y, mo, d, h, mi, s)| format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"
            )),
        prop::sample::select(vec![
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59.999-01:00",
            "10000-01-01T00:00:00Z",
            "2026-11-22T10:00:00+02:00",
            "2026-11-22t10:00:00z",
            "2026-11-22 10:00:00Z",
            "2026-11-22X10:00:00Z",
            "2026-11-22T10:00:00",
            "2026-02-30T10:00:00Z",
            "2026-11-22T10:00:00.123456789123Z",
            "0000-01-01T00:00:00Z",
            "",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// An object's text written by hand, so the same field can appear twice.
fn object_text(fields: &[(String, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Device metadata that must be accepted under the default limits.
fn device() -> impl Strategy<Value = DeviceMetadata> {
    let id = "[a-zA-Z0-9._:/-]{1,40}|\\PC{1,20}";
    (
        id,
        id,
        id,
        prop::option::of("\\PC{0,10}"),
        any::<bool>(),
        0i64..=253_402_300_799_999,
        prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..4),
    )
        .prop_map(
            |(device_id, datatype_id, datatype_name, unit, persist, ms, extra)| {
                let mut additional_properties = Map::new();
                for (k, v) in extra {
                    if ![
                        "device_id",
                        "datatype_id",
                        "datatype_name",
                        "datatype_unit",
                        "persist",
                        "last_updated",
                    ]
                    .contains(&k.as_str())
                    {
                        additional_properties.insert(k, v);
                    }
                }
                DeviceMetadata {
                    device_id,
                    datatype_id,
                    datatype_name,
                    datatype_unit: unit,
                    persist,
                    last_updated_ms: ms,
                    additional_properties,
                }
            },
        )
        .prop_filter("ids within the default limits", |d| {
            let limits = Limits::default();
            [&d.device_id, &d.datatype_id, &d.datatype_name]
                .iter()
                .all(|s| s.len() <= limits.max_id_bytes)
        })
        .prop_filter("ids that print as what they are", |d| {
            [&d.device_id, &d.datatype_id, &d.datatype_name]
                .into_iter()
                .chain(d.datatype_unit.as_ref())
                .all(|s| prints_as_itself(s))
        })
}

/// The README's id rules beyond `\PC` (which already leaves out control and format
/// characters): no whitespace at either end, no line or paragraph separator, no filler.
fn prints_as_itself(s: &str) -> bool {
    !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
        && !s.chars().any(|c| {
            matches!(
                c,
                '\u{2028}'
                    | '\u{2029}'
                    | '\u{115F}'
                    | '\u{1160}'
                    | '\u{3164}'
                    | '\u{FFA0}'
                    | '\u{034F}'
                    | '\u{17B4}'
                    | '\u{17B5}'
            )
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(
        kind in kind(),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..48)),
        payload in prop::option::of(prop::collection::vec(any::<u8>(), 0..512)),
        limits in limits(),
    ) {
        check(kind, key.as_deref(), payload.as_deref(), &limits);
        check(kind, key.as_deref(), payload.as_deref(), &Limits::default());
    }

    #[test]
    fn hostile_objects_are_rejected_with_a_reason_and_a_field(
        kind in kind(),
        fields in prop::collection::vec((field_name(), field_value()), 0..12),
        key in prop::option::of(prop_oneof!["[a-z0-9-]{0,12}", any::<String>()]),
        limits in limits(),
    ) {
        let text = object_text(&fields);
        let key = key.as_deref().map(str::as_bytes);
        check(kind, key, Some(text.as_bytes()), &limits);
        check(kind, key, Some(text.as_bytes()), &Limits::default());
        // Trailing data, and a second document, are never accepted.
        let trailing = format!("{text} x");
        prop_assert!(decode(kind, key, Some(trailing.as_bytes()), &Limits::default()).is_err());
        let twice = format!("{text}{text}");
        prop_assert!(decode(kind, key, Some(twice.as_bytes()), &Limits::default()).is_err());
    }

    #[test]
    fn invalid_utf8_anywhere_is_rejected(
        kind in kind(),
        fields in prop::collection::vec((field_name(), field_value()), 1..8),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec![vec![0xff], vec![0xc3], vec![0xed, 0xa0, 0x80], vec![0xf4, 0x90, 0x80, 0x80]]),
    ) {
        let text = object_text(&fields).into_bytes();
        let i = at.index(text.len());
        let mut payload = text[..i].to_vec();
        payload.extend(&bad);
        payload.extend(&text[i..]);
        let r = decode(kind, None, Some(&payload), &Limits::default()).unwrap_err();
        prop_assert_eq!(r.reason, RejectReason::InvalidUtf8);
        let r = decode(kind, Some(&bad), Some(&text), &Limits::default());
        if let Err(r) = r {
            check(kind, Some(&bad), Some(&text), &Limits::default());
            prop_assert!(r.reason != RejectReason::TooLarge);
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_stack_overflow(
        kind in kind(),
        depth in 1usize..20_000,
        open in prop::sample::select(vec![("[", "]"), ("{\"a\":", "}")]),
        field in prop::sample::select(vec!["device_id", "metric_names", "extra", "op"]),
    ) {
        let nested = format!("{}1{}", open.0.repeat(depth), open.1.repeat(depth));
        let text = format!("{{\"{field}\":{nested}}}");
        check(kind, None, Some(text.as_bytes()), &Limits::default());
        let unbounded = Limits { max_message_bytes: usize::MAX, ..Limits::default() };
        check(kind, None, Some(text.as_bytes()), &unbounded);
    }

    #[test]
    fn unknown_fields_a_json_reader_would_refuse_are_rejected_not_stored(
        name in "[a-z]{1,8}",
        bad in prop::sample::select(vec![
            r#""\ud800""#, r#""a\udfffb""#, r#""\ud800\u0041""#, "1e400", "-2.5E+309",
        ]),
        depth in 0usize..4,
        object in any::<bool>(),
    ) {
        prop_assume!(!["device_id", "datatype_id", "datatype_name", "datatype_unit", "persist", "last_updated"].contains(&name.as_str()));
        let mut value = bad.to_owned();
        for _ in 0..depth {
            value = if object { format!(r#"{{"k": {value}}}"#) } else { format!("[1, {value}]") };
        }
        let text = format!(
            r#"{{"device_id":"d","datatype_id":"t","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z","{name}":{value}}}"#
        );
        let r = decode(TopicKind::Device, None, Some(text.as_bytes()), &Limits::default());
        prop_assert!(r.is_err(), "stored {:?}", r);
        let r = r.unwrap_err();
        prop_assert_eq!(r.reason, RejectReason::InvalidJson);
        check(TopicKind::Device, None, Some(text.as_bytes()), &Limits::default());
    }

    #[test]
    fn zero_length_and_oversized_values(
        kind in kind(),
        size in 0usize..64,
        filler in prop::sample::select(vec![" ", "a", "{", "\u{e9}"]),
        max in 1usize..256,
    ) {
        let r = decode(kind, Some(b"k"), Some(b""), &Limits::default()).unwrap_err();
        prop_assert_eq!(r.reason, RejectReason::InvalidJson);
        let payload = filler.repeat(max + 1 + size);
        let limits = Limits { max_message_bytes: max, ..Limits::default() };
        let r = decode(kind, Some(b"k"), Some(payload.as_bytes()), &limits).unwrap_err();
        prop_assert_eq!(r.reason, RejectReason::TooLarge);
        prop_assert_eq!(r.field, None);
    }

    #[test]
    fn valid_devices_round_trip(device in device(), with_key in any::<bool>()) {
        let json = device.to_normalized_json();
        let key = with_key.then_some(device.device_id.as_bytes());
        let decoded = decode(TopicKind::Device, key, Some(json.as_bytes()), &Limits {
            max_message_bytes: usize::MAX,
            ..Limits::default()
        });
        // Decoding stores exactly what the typed view writes.
        prop_assert_eq!(decoded, Ok(Event::DeviceUpsert((&device).into())));
        // And the stored form reads back as the same device.
        prop_assert_eq!(DeviceMetadata::from_normalized_json(&json), Ok(device));
    }

    #[test]
    fn a_key_naming_another_device_is_a_mismatch(device in device(), other in "[a-z]{1,10}") {
        prop_assume!(other != device.device_id);
        let json = device.to_normalized_json();
        let r = decode(TopicKind::Device, Some(other.as_bytes()), Some(json.as_bytes()), &Limits {
            max_message_bytes: usize::MAX,
            ..Limits::default()
        })
        .unwrap_err();
        prop_assert_eq!(r.reason, RejectReason::KeyMismatch);
        prop_assert_eq!(r.field.as_deref(), Some("device_id"));
    }

    #[test]
    fn valid_metric_operations_round_trip(
        op in prop::sample::select(vec!["replace", "add", "remove"]),
        namespace in "[a-z0-9-]{1,20}",
        names in prop::collection::vec("[a-z0-9_.]{1,16}", 0..20),
        with_key in any::<bool>(),
    ) {
        let json = serde_json::json!({"op": op, "namespace": namespace, "metric_names": names}).to_string();
        let key = with_key.then_some(namespace.as_bytes());
        let expected = match op {
            "replace" => MetricOp::Replace { namespace: namespace.clone(), metric_names: names },
            "add" => MetricOp::Add { namespace: namespace.clone(), metric_names: names },
            _ => MetricOp::Remove { namespace: namespace.clone(), metric_names: names },
        };
        prop_assert_eq!(
            decode(TopicKind::Metric, key, Some(json.as_bytes()), &Limits::default()),
            Ok(Event::Metric(expected))
        );
        // A tombstone keyed by the namespace deletes it.
        prop_assert_eq!(
            decode(TopicKind::Metric, Some(namespace.as_bytes()), None, &Limits::default()),
            Ok(Event::Metric(MetricOp::Delete { namespace }))
        );
    }

    #[test]
    fn limits_on_ids_and_name_counts_hold(
        len in 1usize..200,
        count in 0usize..40,
        max_id in 1usize..64,
        max_names in 0usize..20,
    ) {
        let limits = Limits { max_id_bytes: max_id, max_metric_names: max_names.max(1), ..Limits::default() };
        let id = "d".repeat(len);
        let device = format!(
            r#"{{"device_id":"{id}","datatype_id":"t","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}}"#
        );
        match decode(TopicKind::Device, None, Some(device.as_bytes()), &limits) {
            Ok(_) => prop_assert!(len <= max_id),
            Err(r) => {
                prop_assert!(len > max_id);
                prop_assert_eq!(r.reason, RejectReason::InvalidValue);
                prop_assert_eq!(r.field.as_deref(), Some("device_id"));
            }
        }
        let names: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
        let metric = serde_json::json!({"op": "add", "namespace": "n", "metric_names": names}).to_string();
        match decode(TopicKind::Metric, None, Some(metric.as_bytes()), &limits) {
            Ok(_) => prop_assert!(count <= limits.max_metric_names),
            Err(r) => {
                prop_assert_eq!(r.reason, RejectReason::InvalidValue, "{}", r);
                if count > limits.max_metric_names {
                    prop_assert_eq!(r.field.as_deref(), Some("metric_names"));
                } else {
                    // A name longer than max_id_bytes, named by its index.
                    prop_assert!(r.field.as_deref().is_some_and(|f| f.starts_with("metric_names[")));
                }
            }
        }
    }
}

/// Huge strings: far above the default limits, checked a few times only (they are big).
#[test]
fn huge_values_are_too_large_or_too_long_never_a_panic() {
    let limits = Limits::default();
    let huge = "x".repeat(limits.max_message_bytes + 1);
    for kind in [TopicKind::Device, TopicKind::Metric] {
        let r = decode(kind, Some(b"k"), Some(huge.as_bytes()), &limits).unwrap_err();
        assert_eq!(r.reason, RejectReason::TooLarge);
    }
    // Under the size limit but with an id far above max_id_bytes.
    let long = "é".repeat(200_000);
    let device = format!(
        r#"{{"device_id":"{long}","datatype_id":"t","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}}"#
    );
    let r = decode(TopicKind::Device, None, Some(device.as_bytes()), &limits).unwrap_err();
    assert_eq!(
        (r.reason, r.field.as_deref()),
        (RejectReason::InvalidValue, Some("device_id"))
    );
    assert!(r.message.len() < 200, "{}", r.message);
    let huge_key = long.as_bytes();
    let r = decode(TopicKind::Metric, Some(huge_key), None, &limits).unwrap_err();
    assert_eq!(
        (r.reason, r.field.as_deref()),
        (RejectReason::InvalidValue, Some("key"))
    );
    // Many names, many fields.
    let names: Vec<String> = (0..20_000).map(|i| format!("m{i}")).collect();
    let metric = serde_json::json!({"op": "add", "metric_names": names}).to_string();
    let r = decode(TopicKind::Metric, None, Some(metric.as_bytes()), &limits).unwrap_err();
    assert_eq!(
        (r.reason, r.field.as_deref()),
        (RejectReason::InvalidValue, Some("metric_names"))
    );
}
