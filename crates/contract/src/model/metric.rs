//! Metric-catalog operations: which metric names are valid in which namespace.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::parse::{self, FieldKey};
use super::{Event, Limits, Reject, RejectReason};
use crate::keys;

/// The namespace an empty namespace (or empty Kafka key) stands for.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `namespace`, or [`DEFAULT_NAMESPACE`] when it is empty: the rule the decoder applies,
/// for the producer side and the readers.
pub fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

/// One validated operation on a namespace's set of metric names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricOp {
    /// Make the set exactly `metric_names` (possibly empty), atomically.
    Replace {
        namespace: String,
        metric_names: Vec<String>,
    },
    /// Add names to the set.
    Add {
        namespace: String,
        metric_names: Vec<String>,
    },
    /// Remove names from the set.
    Remove {
        namespace: String,
        metric_names: Vec<String>,
    },
    /// A Kafka tombstone: forget the namespace.
    Delete { namespace: String },
}

impl MetricOp {
    pub fn namespace(&self) -> &str {
        match self {
            MetricOp::Replace { namespace, .. }
            | MetricOp::Add { namespace, .. }
            | MetricOp::Remove { namespace, .. }
            | MetricOp::Delete { namespace } => namespace,
        }
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
    decode_value(key, payload, limits, true)
}

/// What a value says whatever its key (the producer side decodes a value to learn the key
/// it must be sent with).
pub(super) fn decode_unkeyed(payload: &[u8], limits: &Limits) -> Result<Event, Reject> {
    decode_value(None, payload, limits, false)
}

fn decode_value(
    key: Option<&[u8]>,
    payload: &[u8],
    limits: &Limits,
    require_key: bool,
) -> Result<Event, Reject> {
    let text = parse::payload_str(payload, limits)?;
    let key = parse::key_str(key)?;
    let raw = parse::parse_object(text, MetricVisitor)?;
    if let Some(field) = raw.duplicate {
        return Err(parse::duplicate(field));
    }

    let op = match raw.op {
        Some(Value::String(op)) => match op.as_str() {
            "replace" | "add" | "remove" => op,
            _ => {
                return Err(Reject::new(
                    RejectReason::UnknownOp,
                    Some("op"),
                    format!(
                        "expected \"replace\", \"add\" or \"remove\", got {}",
                        parse::preview(&op)
                    ),
                ))
            }
        },
        Some(Value::Null) => return Err(parse::missing("op", OP_EXPECTED, true)),
        None => return Err(parse::missing("op", OP_EXPECTED, false)),
        Some(other) => return Err(parse::wrong_type("op", "a string", &other)),
    };

    let namespace = match raw.namespace {
        None | Some(Value::Null) => DEFAULT_NAMESPACE.to_owned(),
        Some(Value::String(ns)) if ns.is_empty() => DEFAULT_NAMESPACE.to_owned(),
        Some(Value::String(ns)) => ns,
        Some(other) => return Err(parse::wrong_type("namespace", "a string or null", &other)),
    };
    // The default namespace is checked too: with a `limits.max_id_bytes` below its length
    // it would otherwise be the one namespace that escapes the limit (a tombstone with an
    // empty key is already checked the same way).
    parse::check_text("namespace", &namespace, limits, false)?;
    check_not_reserved("namespace", &namespace)?;

    let metric_names = match raw.metric_names {
        Some(Value::Array(items)) => metric_names(items, limits)?,
        Some(Value::Null) => {
            return Err(parse::missing("metric_names", "an array of strings", true))
        }
        None => return Err(parse::missing("metric_names", "an array of strings", false)),
        Some(other) => {
            return Err(parse::wrong_type(
                "metric_names",
                "an array of strings",
                &other,
            ))
        }
    };

    // Kafka orders records only within a partition, and only the key keeps one
    // namespace's events on one partition: two unkeyed `replace`s of a namespace could land
    // on two partitions and apply in poll order, not in the order they were produced.
    match key {
        None if require_key => Err(Reject::new(
            RejectReason::MissingKey,
            Some("key"),
            format!(
                "metric-catalog events must carry the namespace as their Kafka key, got none or an empty one (namespace {}): without it, events of one namespace can land on different partitions and apply out of order",
                parse::preview(&namespace)
            ),
        )),
        None => Ok(()),
        Some(key) if key != namespace => Err(Reject::new(
            RejectReason::KeyMismatch,
            Some("namespace"),
            format!(
                "expected the Kafka key to equal the namespace (empty = {DEFAULT_NAMESPACE:?}), \
                 got key {} and namespace {}",
                parse::preview(key),
                parse::preview(&namespace)
            ),
        )),
        Some(_) => Ok(()),
    }?;

    let op = match op.as_str() {
        "replace" => MetricOp::Replace {
            namespace,
            metric_names,
        },
        "add" => MetricOp::Add {
            namespace,
            metric_names,
        },
        _ => MetricOp::Remove {
            namespace,
            metric_names,
        },
    };
    Ok(Event::Metric(op))
}

/// Refuses a namespace whose catalog key would sit in the device key space (or the
/// daemon's own), where it could overwrite or delete a device: see the layout's argument in
/// [`crate::keys`].
fn check_not_reserved(field: &str, namespace: &str) -> Result<(), Reject> {
    match keys::reserved_namespace(namespace) {
        None => Ok(()),
        Some(space) => Err(Reject::new(
            RejectReason::InvalidValue,
            Some(field),
            format!(
                "namespace {} starts with the reserved {space:?}: its key {} would be in the {} key space",
                parse::preview(namespace),
                parse::preview(&format!("{namespace}#metric_names")),
                if space == "device:" { "device" } else { "daemon's own" },
            ),
        )),
    }
}

const OP_EXPECTED: &str = "one of \"replace\", \"add\", \"remove\"";

fn decode_tombstone(key: Option<&[u8]>, limits: &Limits) -> Result<Event, Reject> {
    if key.is_none() {
        return Err(Reject::new(
            RejectReason::MissingKey,
            None,
            "tombstone without a Kafka key: expected the namespace as the key",
        ));
    }
    // An empty key is the default namespace, as an empty namespace field is.
    let namespace = parse::key_str(key)?.unwrap_or(DEFAULT_NAMESPACE);
    parse::check_text("key", namespace, limits, false)?;
    check_not_reserved("key", namespace)?;
    Ok(Event::Metric(MetricOp::Delete {
        namespace: namespace.to_owned(),
    }))
}

fn metric_names(items: Vec<Value>, limits: &Limits) -> Result<Vec<String>, Reject> {
    if items.len() > limits.max_metric_names {
        return Err(Reject::new(
            RejectReason::InvalidValue,
            Some("metric_names"),
            format!(
                "expected at most {} names (limits.max_metric_names), got {}",
                limits.max_metric_names,
                items.len()
            ),
        ));
    }
    let mut names = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::String(name) => {
                parse::check_text("metric_names", &name, limits, false).map_err(|mut r| {
                    r.field = Some(format!("metric_names[{i}]"));
                    r
                })?;
                names.push(name);
            }
            other => {
                return Err(parse::wrong_type(
                    &format!("metric_names[{i}]"),
                    "a string",
                    &other,
                ))
            }
        }
    }
    Ok(names)
}

/// The known top-level fields as they came; unknown fields are skipped unread.
#[derive(Default)]
struct RawMetric {
    op: Option<Value>,
    namespace: Option<Value>,
    metric_names: Option<Value>,
    /// The first known field seen twice.
    duplicate: Option<&'static str>,
}

struct MetricVisitor;

impl<'de> Visitor<'de> for MetricVisitor {
    type Value = RawMetric;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a metric catalog JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMetric, A::Error> {
        let mut raw = RawMetric::default();
        while let Some(FieldKey(key)) = map.next_key()? {
            let (name, slot) = match &*key {
                "op" => ("op", &mut raw.op),
                "namespace" => ("namespace", &mut raw.namespace),
                "metric_names" => ("metric_names", &mut raw.metric_names),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                raw.duplicate.get_or_insert(name);
                map.next_value::<IgnoredAny>()?;
            } else {
                *slot = Some(map.next_value()?);
            }
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ok_with_key(key: Option<&str>, payload: &str) -> MetricOp {
        match decode(key.map(str::as_bytes), Some(payload.as_bytes()), &limits()) {
            Ok(Event::Metric(op)) => op,
            other => panic!("expected a metric op, got {other:?}"),
        }
    }

    /// The value as the producer side reads it (keyed by its own namespace).
    fn ok(payload: &str) -> MetricOp {
        match decode_unkeyed(payload.as_bytes(), &limits()) {
            Ok(Event::Metric(op)) => op,
            other => panic!("expected a metric op, got {other:?}"),
        }
    }

    #[test]
    fn an_unkeyed_event_is_refused_as_missing_key() {
        let r = err_with(
            None,
            Some(r#"{"op":"replace","namespace":"ops","metric_names":["a"]}"#),
            &limits(),
        );
        assert_reject(
            &r,
            RejectReason::MissingKey,
            Some("key"),
            "must carry the namespace",
        );
        // Payload errors are still named first.
        let r = err_with(
            None,
            Some(r#"{"op":"rename","metric_names":[]}"#),
            &limits(),
        );
        assert_eq!(r.reason, RejectReason::UnknownOp);
    }

    fn err_with(key: Option<&[u8]>, payload: Option<&str>, limits: &Limits) -> Reject {
        match decode(key, payload.map(str::as_bytes), limits) {
            Err(r) => r,
            Ok(e) => panic!("expected a reject, got {e:?}"),
        }
    }

    fn err(payload: &str) -> Reject {
        err_with(None, Some(payload), &limits())
    }

    fn assert_reject(r: &Reject, reason: RejectReason, field: Option<&str>, needle: &str) {
        assert_eq!(r.reason, reason, "{r}");
        assert_eq!(r.field.as_deref(), field, "{r}");
        assert!(r.message.contains(needle), "{r:?} lacks {needle:?}");
    }

    #[test]
    fn design_examples_decode() {
        assert_eq!(
            ok_with_key(
                Some("billing"),
                r#"{"op": "replace", "namespace": "billing", "metric_names": ["cpu", "mem"]}"#
            ),
            MetricOp::Replace {
                namespace: "billing".into(),
                metric_names: names(&["cpu", "mem"]),
            }
        );
        assert_eq!(
            ok(r#"{"op": "add",     "namespace": "billing", "metric_names": ["disk"]}"#),
            MetricOp::Add {
                namespace: "billing".into(),
                metric_names: names(&["disk"]),
            }
        );
        assert_eq!(
            ok(r#"{"op": "remove",  "namespace": "billing", "metric_names": ["cpu"]}"#),
            MetricOp::Remove {
                namespace: "billing".into(),
                metric_names: names(&["cpu"]),
            }
        );
    }

    #[test]
    fn empty_lists_are_valid() {
        for (op, expected) in [
            (
                "replace",
                MetricOp::Replace {
                    namespace: "billing".into(),
                    metric_names: vec![],
                },
            ),
            (
                "add",
                MetricOp::Add {
                    namespace: "billing".into(),
                    metric_names: vec![],
                },
            ),
            (
                "remove",
                MetricOp::Remove {
                    namespace: "billing".into(),
                    metric_names: vec![],
                },
            ),
        ] {
            let json = format!(r#"{{"op":"{op}","namespace":"billing","metric_names":[]}}"#);
            assert_eq!(ok(&json), expected);
        }
    }

    #[test]
    fn empty_namespace_is_default() {
        assert_eq!(namespace_or_default(""), "default");
        assert_eq!(namespace_or_default("billing"), "billing");
    }

    #[test]
    fn empty_null_or_absent_namespace_is_default() {
        for json in [
            r#"{"op":"add","namespace":"","metric_names":["cpu"]}"#,
            r#"{"op":"add","namespace":null,"metric_names":["cpu"]}"#,
            r#"{"op":"add","metric_names":["cpu"]}"#,
            r#"{"op":"add","namespace":"default","metric_names":["cpu"]}"#,
        ] {
            let expected = MetricOp::Add {
                namespace: DEFAULT_NAMESPACE.into(),
                metric_names: names(&["cpu"]),
            };
            assert_eq!(ok(json), expected, "{json}");
            assert_eq!(ok_with_key(Some("default"), json), expected, "{json}");
            // An empty key is no key: librdkafka's default partitioner spreads empty and
            // missing keys alike at random.
            let r = err_with(Some(b""), Some(json), &limits());
            assert_eq!(r.reason, RejectReason::MissingKey, "{json}");
        }
    }

    #[test]
    fn namespaces_in_the_device_key_space_are_refused() {
        for ns in ["device:h", "device:victim", "metacache:writers"] {
            let json = format!(r#"{{"op":"replace","namespace":"{ns}","metric_names":["x"]}}"#);
            let r = err_with(Some(ns.as_bytes()), Some(&json), &limits());
            assert_eq!(r.reason, RejectReason::InvalidValue, "{r:?}");
            assert_eq!(r.field.as_deref(), Some("namespace"));
            assert!(r.message.contains("reserved"), "{}", r.message);
            let r = err_with(Some(ns.as_bytes()), None, &limits());
            assert_eq!(r.reason, RejectReason::InvalidValue, "{r:?}");
            assert_eq!(r.field.as_deref(), Some("key"));
        }
        // Only the start counts: these are ordinary namespaces.
        for ns in ["devices", "x:device:y", "device"] {
            let json = format!(r#"{{"op":"add","namespace":"{ns}","metric_names":[]}}"#);
            assert!(decode(Some(ns.as_bytes()), Some(json.as_bytes()), &limits()).is_ok());
        }
    }

    #[test]
    fn the_default_namespace_obeys_the_id_limit_too() {
        let tight = Limits {
            max_id_bytes: 3,
            ..limits()
        };
        for json in [
            r#"{"op":"replace","metric_names":[]}"#,
            r#"{"op":"replace","namespace":"","metric_names":[]}"#,
        ] {
            for r in [
                err_with(Some(b"default"), Some(json), &tight),
                decode_unkeyed(json.as_bytes(), &tight).expect_err("too long"),
            ] {
                assert_eq!(r.reason, RejectReason::InvalidValue, "{json}: {r:?}");
                assert_eq!(r.field.as_deref(), Some("namespace"), "{json}");
            }
        }
    }

    #[test]
    fn key_must_match_namespace() {
        let json = r#"{"op":"add","namespace":"billing","metric_names":["cpu"]}"#;
        let r = err_with(Some(b"ops"), Some(json), &limits());
        assert_reject(
            &r,
            RejectReason::KeyMismatch,
            Some("namespace"),
            r#"got key "ops" and namespace "billing""#,
        );
        let r = err_with(
            Some(b"billing"),
            Some(r#"{"op":"add","metric_names":[]}"#),
            &limits(),
        );
        assert_reject(
            &r,
            RejectReason::KeyMismatch,
            Some("namespace"),
            r#"namespace "default""#,
        );
        let r = err_with(Some(b"bill\xffing"), Some(json), &limits());
        assert_reject(&r, RejectReason::InvalidUtf8, Some("key"), "not UTF-8");
    }

    #[test]
    fn tombstones_delete_the_namespace() {
        assert_eq!(
            decode(Some(b"billing"), None, &limits()),
            Ok(Event::Metric(MetricOp::Delete {
                namespace: "billing".into()
            }))
        );
        assert_eq!(
            decode(Some(b""), None, &limits()),
            Ok(Event::Metric(MetricOp::Delete {
                namespace: DEFAULT_NAMESPACE.into()
            }))
        );
        let r = err_with(None, None, &limits());
        assert_reject(&r, RejectReason::MissingKey, None, "expected the namespace");
        let r = err_with(Some(b"\xff"), None, &limits());
        assert_reject(&r, RejectReason::InvalidUtf8, Some("key"), "not UTF-8");
        let r = err_with(Some(b"bil\x07ling"), None, &limits());
        assert_reject(
            &r,
            RejectReason::InvalidValue,
            Some("key"),
            "U+0007 at byte 3",
        );
        let r = err_with(Some("n".repeat(257).as_bytes()), None, &limits());
        assert_reject(&r, RejectReason::InvalidValue, Some("key"), "got 257 bytes");
    }

    #[test]
    fn op_is_checked() {
        let r = err(r#"{"op":"upsert","metric_names":[]}"#);
        assert_reject(
            &r,
            RejectReason::UnknownOp,
            Some("op"),
            r#"expected "replace", "add" or "remove", got "upsert""#,
        );
        // Case matters.
        let r = err(r#"{"op":"Replace","metric_names":[]}"#);
        assert_eq!(r.reason, RejectReason::UnknownOp);
        let r = err(r#"{"op":1,"metric_names":[]}"#);
        assert_reject(
            &r,
            RejectReason::WrongType,
            Some("op"),
            "expected a string, got number",
        );
        let r = err(r#"{"metric_names":[]}"#);
        assert_reject(&r, RejectReason::MissingField, Some("op"), "got nothing");
        let r = err(r#"{"op":null,"metric_names":[]}"#);
        assert_reject(&r, RejectReason::MissingField, Some("op"), "got null");
        // A hostile op is not echoed in full.
        let r = err(&format!(
            r#"{{"op":"{}","metric_names":[]}}"#,
            "x".repeat(10_000)
        ));
        assert!(r.message.len() < 200, "{}", r.message.len());
    }

    #[test]
    fn namespace_rules() {
        let r = err(r#"{"op":"add","namespace":7,"metric_names":[]}"#);
        assert_reject(
            &r,
            RejectReason::WrongType,
            Some("namespace"),
            "expected a string or null, got number",
        );
        let json = format!(
            r#"{{"op":"add","namespace":"{}","metric_names":[]}}"#,
            "n".repeat(257)
        );
        assert_reject(
            &err(&json),
            RejectReason::InvalidValue,
            Some("namespace"),
            "257",
        );
        let r = err(r#"{"op":"add","namespace":"a\nb","metric_names":[]}"#);
        assert_reject(&r, RejectReason::InvalidValue, Some("namespace"), "U+000A");
        let op = ok(r#"{"op":"add","namespace":"team a:billing#2 ü","metric_names":[]}"#);
        assert_eq!(op.namespace(), "team a:billing#2 ü");
    }

    #[test]
    fn metric_names_rules() {
        let r = err(r#"{"op":"replace","namespace":"b"}"#);
        assert_reject(
            &r,
            RejectReason::MissingField,
            Some("metric_names"),
            "got nothing",
        );
        let r = err(r#"{"op":"add","metric_names":null}"#);
        assert_reject(
            &r,
            RejectReason::MissingField,
            Some("metric_names"),
            "got null",
        );
        let r = err(r#"{"op":"add","metric_names":"cpu"}"#);
        assert_reject(
            &r,
            RejectReason::WrongType,
            Some("metric_names"),
            "expected an array of strings, got string",
        );
        let r = err(r#"{"op":"add","metric_names":["a","b","c",{"x":1}]}"#);
        assert_reject(
            &r,
            RejectReason::WrongType,
            Some("metric_names[3]"),
            "expected a string, got object",
        );
        let r = err(r#"{"op":"add","metric_names":["a",""]}"#);
        assert_reject(
            &r,
            RejectReason::InvalidValue,
            Some("metric_names[1]"),
            "non-empty",
        );
        let r = err(r#"{"op":"add","metric_names":["a","b\u0000"]}"#);
        assert_reject(
            &r,
            RejectReason::InvalidValue,
            Some("metric_names[1]"),
            "U+0000",
        );
        let long = format!(r#"{{"op":"add","metric_names":["{}"]}}"#, "m".repeat(257));
        assert_reject(
            &err(&long),
            RejectReason::InvalidValue,
            Some("metric_names[0]"),
            "257",
        );
        // Names keep their order, duplicates and escapes.
        assert_eq!(
            ok(r#"{"op":"add","metric_names":["cpu","\"q\" \u00fc","cpu"]}"#),
            MetricOp::Add {
                namespace: DEFAULT_NAMESPACE.into(),
                metric_names: names(&["cpu", "\"q\" ü", "cpu"]),
            }
        );
    }

    #[test]
    fn metric_names_count_limit() {
        let three = Limits {
            max_metric_names: 3,
            ..Limits::default()
        };
        let json = r#"{"op":"replace","metric_names":["a","b","c"]}"#;
        assert!(matches!(
            decode_unkeyed(json.as_bytes(), &three),
            Ok(Event::Metric(MetricOp::Replace { .. }))
        ));
        let r = err_with(
            None,
            Some(r#"{"op":"replace","metric_names":["a","b","c","d"]}"#),
            &three,
        );
        assert_reject(
            &r,
            RejectReason::InvalidValue,
            Some("metric_names"),
            "expected at most 3 names (limits.max_metric_names), got 4",
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let json = format!(
            r#"{{"v":2,"op":"add","extra":{{"op":"remove"}},"metric_names":["x"],"deep":{nested},"v":3}}"#
        );
        assert_eq!(
            ok(&json),
            MetricOp::Add {
                namespace: DEFAULT_NAMESPACE.into(),
                metric_names: names(&["x"]),
            }
        );
    }

    #[test]
    fn duplicate_fields_are_rejected() {
        let r = err(r#"{"op":"add","op":"remove","metric_names":[]}"#);
        assert_reject(
            &r,
            RejectReason::DuplicateField,
            Some("op"),
            "more than once",
        );
        let r = err(r#"{"op":"add","namespace":null,"metric_names":[],"namespace":"b"}"#);
        assert_reject(&r, RejectReason::DuplicateField, Some("namespace"), "once");
        let r = err(r#"{"op":"add","metric_names":[],"metric\u005fnames":["a"]}"#);
        assert_reject(
            &r,
            RejectReason::DuplicateField,
            Some("metric_names"),
            "once",
        );
    }

    #[test]
    fn whole_record_problems() {
        let r = err("");
        assert_reject(&r, RejectReason::InvalidJson, None, "payload is empty");
        let r = err(r#"["op","add"]"#);
        assert_reject(
            &r,
            RejectReason::InvalidJson,
            None,
            "expected a metric catalog JSON object",
        );
        let r = err(r#"{"op":"add","metric_names":[]} x"#);
        assert_reject(
            &r,
            RejectReason::InvalidJson,
            None,
            "trailing characters at line 1",
        );
        let r = err("{\"op\":\"add\",\n\"metric_names\":[\"a\" \"b\"]}");
        assert_reject(&r, RejectReason::InvalidJson, None, "line 2 column 21");
        let deep = "[".repeat(10_000);
        let r = err(&deep);
        assert_eq!(r.reason, RejectReason::InvalidJson);
        let r = err(&format!(r#"{{"op":"add","metric_names":{deep}"#));
        assert_reject(
            &r,
            RejectReason::InvalidJson,
            None,
            "recursion limit exceeded",
        );
        let r = err_with(
            None,
            Some("{\"op\":\"add\",\"metric_names\":[\"\u{0}\"]"),
            &limits(),
        );
        assert_eq!(r.reason, RejectReason::InvalidJson);

        let r = match decode(None, Some(b"{\"op\":\"\xe9\"}"), &limits()) {
            Err(r) => r,
            Ok(e) => panic!("{e:?}"),
        };
        assert_reject(&r, RejectReason::InvalidUtf8, None, "payload is not UTF-8");
        let tiny = Limits {
            max_message_bytes: 8,
            ..Limits::default()
        };
        let r = err_with(None, Some(r#"{"op":"add"}"#), &tiny);
        assert_reject(&r, RejectReason::TooLarge, None, "payload is 12 bytes");
    }
}
