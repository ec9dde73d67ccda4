//! Metric-catalog operations: which metric names are valid in which namespace.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::parse::{self, FieldKey};
use super::{Event, Limits, Reject, RejectReason};

/// The namespace an empty namespace (or empty Kafka key) stands for.
pub const DEFAULT_NAMESPACE: &str = "default";

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
        Some(Value::String(ns)) => {
            parse::check_text("namespace", &ns, limits, false)?;
            ns
        }
        Some(other) => return Err(parse::wrong_type("namespace", "a string or null", &other)),
    };

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

    if let Some(key) = key {
        if key != namespace {
            return Err(Reject::new(
                RejectReason::KeyMismatch,
                Some("namespace"),
                format!(
                    "expected the Kafka key to equal the namespace (empty = {DEFAULT_NAMESPACE:?}), \
                     got key {} and namespace {}",
                    parse::preview(key),
                    parse::preview(&namespace)
                ),
            ));
        }
    }

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
