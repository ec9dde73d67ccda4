//! Metric-catalog operations: which metric names are valid in which namespace.

use super::{Event, Limits, Reject};

/// The namespace an empty namespace (or empty Kafka key) stands for.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One validated operation on a namespace's set of metric names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricOp {
    /// Make the set exactly `metric_names` (possibly empty), atomically.
    Replace { namespace: String, metric_names: Vec<String> },
    /// Add names to the set.
    Add { namespace: String, metric_names: Vec<String> },
    /// Remove names from the set.
    Remove { namespace: String, metric_names: Vec<String> },
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
    _key: Option<&[u8]>,
    _payload: Option<&[u8]>,
    _limits: &Limits,
) -> Result<Event, Reject> {
    todo!()
}
