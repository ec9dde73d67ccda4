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
    /// Which partition each device id and namespace was seen on.
    pub spread: Spread,
}

/// The partitions each key's records were found on. The daemon relies on every event of
/// one device (or namespace) arriving on one partition, in order; a producer with another
/// partitioner (librdkafka's CRC32 against the Java client's murmur2), or without keys,
/// spreads them, and then neither Kafka nor metacache can say which came last.
#[derive(Debug, Default)]
pub struct Spread {
    first: std::collections::HashMap<(bool, String), i32>,
    /// Keys seen on more than one partition: (is a device, id) → partitions.
    split: BTreeMap<(bool, String), BTreeSet<i32>>,
}

impl Spread {
    /// `event` was read from `partition`.
    pub fn saw(&mut self, event: &Event, partition: i32) {
        let key = match event {
            Event::DeviceUpsert(d) => (true, d.device_id()),
            Event::DeviceDelete { device_id } => (true, device_id.as_str()),
            Event::Metric(op) => (false, op.namespace()),
        };
        match self.first.get(&(key.0, key.1.to_owned())) {
            None => {
                self.first.insert((key.0, key.1.to_owned()), partition);
            }
            Some(&p) if p != partition => {
                self.split
                    .entry((key.0, key.1.to_owned()))
                    .or_insert_with(|| BTreeSet::from([p]))
                    .insert(partition);
            }
            Some(_) => {}
        }
    }

    /// Device ids found on more than one partition, with those partitions.
    pub fn split_devices(&self) -> Vec<(String, Vec<i32>)> {
        self.split_of(true)
    }

    /// Namespaces found on more than one partition, with those partitions.
    pub fn split_namespaces(&self) -> Vec<(String, Vec<i32>)> {
        self.split_of(false)
    }

    fn split_of(&self, devices: bool) -> Vec<(String, Vec<i32>)> {
        self.split
            .iter()
            .filter(|((d, _), _)| *d == devices)
            .map(|((_, id), parts)| (id.clone(), parts.iter().copied().collect()))
            .collect()
    }
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
    fn keys_found_on_more_than_one_partition_are_named_with_their_partitions() {
        let mut spread = Spread::default();
        spread.saw(&device("d1", "2026-11-22T10:00:30Z", "a"), 0);
        spread.saw(&device("d1", "2026-11-22T10:00:40Z", "b"), 0);
        spread.saw(&device("d2", "2026-11-22T10:00:30Z", "a"), 1);
        spread.saw(
            &Event::DeviceDelete {
                device_id: "d2".into(),
            },
            3,
        );
        spread.saw(&device("d2", "2026-11-22T10:00:50Z", "c"), 2);
        spread.saw(
            &metric(r#"{"op":"add","namespace":"ns","metric_names":["a"]}"#),
            0,
        );
        spread.saw(
            &metric(r#"{"op":"add","namespace":"ns","metric_names":["b"]}"#),
            1,
        );
        // A device and a namespace of the same name are different keys.
        spread.saw(
            &metric(r#"{"op":"add","namespace":"d1","metric_names":["a"]}"#),
            5,
        );
        assert_eq!(spread.split_devices(), [("d2".to_owned(), vec![1, 2, 3])]);
        assert_eq!(spread.split_namespaces(), [("ns".to_owned(), vec![0, 1])]);
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
