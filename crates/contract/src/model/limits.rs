//! Size limits that keep one hostile record from costing unbounded memory or Redis space.

use serde::{Deserialize, Serialize};

/// Upper bounds applied while decoding; every one is configurable under `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted Kafka value, in bytes.
    pub max_message_bytes: usize,
    /// Longest accepted device id, namespace or metric name, in bytes.
    pub max_id_bytes: usize,
    /// Most metric names one metric-catalog event may carry.
    pub max_metric_names: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            max_id_bytes: 256,
            max_metric_names: 10_000,
        }
    }
}
