//! What the cache must hold after a stream, computed independently of the writer: the
//! events are applied in each partition's order with the contract's meaning (newest
//! `last_updated` wins, a tombstone deletes; `replace`, `add`, `remove` and tombstones on
//! sets), not with the writer's planner, so a bug there cannot hide here. Pure.
//!
//! Kafka may no longer hold a key's whole history (time-based retention, compaction). A
//! device event carries the device's whole value, so the newest retained one still says
//! what the key holds. A namespace whose retained history starts with `add` or `remove`
//! cannot be known: those change a set whose earlier content is gone. It is
//! *unverifiable* until a `replace` or a tombstone in the history makes it known again.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{DeviceUpsert, Event, MetricOp};

/// A device as the stream leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub last_updated_ms: i64,
    /// The normalized JSON Redis must hold under `device:{id}`.
    pub json: String,
}

/// A namespace's set as the stream leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// The history is known from a `replace` or a tombstone on: exactly these names
    /// (empty: no set key).
    Known(BTreeSet<String>),
    /// The history starts with `add`/`remove`: what came before is gone.
    Unverifiable,
}

/// A namespace as the stream leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub names: Names,
    /// Listed in `metric_namespaces`: `None` when the history cannot tell (only removes
    /// since an unknown start).
    pub listed: Option<bool>,
}

/// The whole expected state.
#[derive(Debug, Default)]
pub struct Expected {
    /// Present devices; a tombstoned device is absent.
    pub devices: BTreeMap<String, Device>,
    /// Every namespace the stream mentions.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Device ids and namespaces with records the daemon has not committed yet: what
    /// Redis holds for them may be any state between two points of the stream.
    pub pending_devices: BTreeSet<String>,
    pub pending_namespaces: BTreeSet<String>,
    /// Events applied, by kind; rejected records (which change nothing) counted apart.
    pub applied: u64,
    pub rejected: u64,
}

impl Expected {
    /// Applies one record's decoded event. `pending`: the record lies at or beyond the
    /// daemon's committed offset.
    pub fn apply(&mut self, event: &Event, pending: bool) {
        self.applied += 1;
        match event {
            Event::DeviceUpsert(d) => {
                if pending {
                    self.pending_devices.insert(d.device_id().to_owned());
                }
                self.upsert(d);
            }
            Event::DeviceDelete { device_id } => {
                if pending {
                    self.pending_devices.insert(device_id.clone());
                }
                self.devices.remove(device_id);
            }
            Event::Metric(op) => {
                if pending {
                    self.pending_namespaces.insert(op.namespace().to_owned());
                }
                self.metric(op);
            }
        }
    }

    /// A record the contract refuses: dead-lettered by the daemon, nothing in Redis.
    pub fn reject(&mut self) {
        self.rejected += 1;
    }

    fn upsert(&mut self, d: &DeviceUpsert) {
        let at = d.last_updated_ms();
        match self.devices.get(d.device_id()) {
            // The stale guard: an older update never replaces a newer one; an equal one
            // is written again.
            Some(held) if held.last_updated_ms > at => {}
            _ => {
                self.devices.insert(
                    d.device_id().to_owned(),
                    Device {
                        last_updated_ms: at,
                        json: d.normalized_json().to_owned(),
                    },
                );
            }
        }
    }

    fn metric(&mut self, op: &MetricOp) {
        let ns = self
            .namespaces
            .entry(op.namespace().to_owned())
            .or_insert(Namespace {
                names: Names::Unverifiable,
                listed: None,
            });
        match op {
            MetricOp::Replace { metric_names, .. } => {
                ns.names = Names::Known(metric_names.iter().cloned().collect());
                ns.listed = Some(true);
            }
            MetricOp::Add { metric_names, .. } => {
                if let Names::Known(set) = &mut ns.names {
                    set.extend(metric_names.iter().cloned());
                }
                ns.listed = Some(true);
            }
            MetricOp::Remove { metric_names, .. } => {
                if let Names::Known(set) = &mut ns.names {
                    for name in metric_names {
                        set.remove(name);
                    }
                }
            }
            MetricOp::Delete { .. } => {
                ns.names = Names::Known(BTreeSet::new());
                ns.listed = Some(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::verify::events::{device, metric};

    fn names(e: &Expected, ns: &str) -> Names {
        e.namespaces[ns].names.clone()
    }

    fn set(names: &[&str]) -> Names {
        Names::Known(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn the_newest_device_update_wins_and_a_tombstone_deletes() {
        let mut e = Expected::default();
        e.apply(&device("d", "2026-11-22T10:00:30Z", "new"), false);
        e.apply(&device("d", "2026-11-22T10:00:10Z", "old"), false);
        assert!(e.devices["d"].json.contains("\"new\""));
        // An equal timestamp is written again, as the guard does.
        e.apply(&device("d", "2026-11-22T10:00:30Z", "tie"), false);
        assert!(e.devices["d"].json.contains("\"tie\""));
        e.apply(
            &Event::DeviceDelete {
                device_id: "d".into(),
            },
            false,
        );
        assert!(!e.devices.contains_key("d"));
        // After a tombstone even an older update is written.
        e.apply(&device("d", "2026-11-22T10:00:01Z", "again"), true);
        assert!(e.devices["d"].json.contains("\"again\""));
        assert!(e.pending_devices.contains("d"));
    }

    #[test]
    fn a_namespace_is_known_from_a_replace_or_a_tombstone_on() {
        let mut e = Expected::default();
        e.apply(
            &metric(r#"{"op":"add","namespace":"a","metric_names":["x"]}"#),
            false,
        );
        assert_eq!(names(&e, "a"), Names::Unverifiable);
        assert_eq!(e.namespaces["a"].listed, Some(true));
        e.apply(
            &metric(r#"{"op":"replace","namespace":"a","metric_names":["y","z"]}"#),
            false,
        );
        e.apply(
            &metric(r#"{"op":"remove","namespace":"a","metric_names":["z"]}"#),
            false,
        );
        e.apply(
            &metric(r#"{"op":"add","namespace":"a","metric_names":["w"]}"#),
            false,
        );
        assert_eq!(names(&e, "a"), set(&["w", "y"]));

        e.apply(
            &metric(r#"{"op":"remove","namespace":"b","metric_names":["x"]}"#),
            false,
        );
        assert_eq!(
            e.namespaces["b"].listed, None,
            "only removes: listing unknown"
        );
        e.apply(
            &Event::Metric(MetricOp::Delete {
                namespace: "b".into(),
            }),
            false,
        );
        assert_eq!(names(&e, "b"), set(&[]));
        assert_eq!(e.namespaces["b"].listed, Some(false));
        e.apply(
            &metric(r#"{"op":"replace","namespace":"c","metric_names":[]}"#),
            false,
        );
        assert_eq!(names(&e, "c"), set(&[]));
        assert_eq!(
            e.namespaces["c"].listed,
            Some(true),
            "replace [] keeps it listed"
        );
    }
}
