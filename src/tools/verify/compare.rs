//! Redis against the expected state, key by key. Pure: the caller reads Redis into an
//! [`Observed`] first, so every verdict here is tested without a server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::expected::{Expected, Names};
use crate::keys::KeyLayout;

/// What Redis holds under metacache's keys.
#[derive(Debug, Default)]
pub struct Observed {
    /// Device id → the JSON under `device:{id}`.
    pub devices: BTreeMap<String, String>,
    /// Device id → its score in `devices`.
    pub index: BTreeMap<String, f64>,
    /// Namespace → the members of `{ns}#metric_names` (sets that exist).
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// Members of `metric_namespaces`.
    pub listed: BTreeSet<String>,
}

/// The four things metacache writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `device:{id}` values.
    Device,
    /// Members and scores of `devices`.
    Index,
    /// `{ns}#metric_names` sets.
    MetricNames,
    /// Members of `metric_namespaces`.
    Namespaces,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Device,
        Kind::Index,
        Kind::MetricNames,
        Kind::Namespaces,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Device => "devices",
            Kind::Index => "devices index",
            Kind::MetricNames => "metric names",
            Kind::Namespaces => "metric_namespaces",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The stream says it must be there; Redis has nothing.
    Missing,
    /// Redis holds it; the stream says it must not be there.
    Extra,
    /// Both have it, with different content.
    Different,
}

/// One key (or member) where Redis and the stream disagree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub kind: Kind,
    pub key: String,
    pub problem: Problem,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// Counts for one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub checked: u64,
    pub matching: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// Not compared: the daemon has not committed every record of the key yet.
    pub pending: u64,
    /// Not compared: the retained history cannot say what the key holds.
    pub unverifiable: u64,
}

impl Tally {
    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.different
    }
}

/// The comparison's outcome.
#[derive(Debug, Default, Serialize)]
pub struct Comparison {
    pub tallies: BTreeMap<Kind, Tally>,
    pub differences: Vec<Difference>,
    /// Namespaces whose retained history starts with `add` or `remove`.
    pub unverifiable: Vec<String>,
}

impl Comparison {
    pub fn total_differences(&self) -> u64 {
        self.tallies.values().map(Tally::differences).sum()
    }

    fn record(
        &mut self,
        kind: Kind,
        key: String,
        expected: Option<String>,
        actual: Option<String>,
    ) {
        let tally = self.tallies.entry(kind).or_default();
        tally.checked += 1;
        let problem = match (&expected, &actual) {
            (Some(e), Some(a)) if e == a => {
                tally.matching += 1;
                return;
            }
            (None, None) => {
                tally.matching += 1;
                return;
            }
            (Some(_), None) => {
                tally.missing += 1;
                Problem::Missing
            }
            (None, Some(_)) => {
                tally.extra += 1;
                Problem::Extra
            }
            (Some(_), Some(_)) => {
                tally.different += 1;
                Problem::Different
            }
        };
        self.differences.push(Difference {
            kind,
            key,
            problem,
            expected,
            actual,
        });
    }

    fn skip(&mut self, kind: Kind, pending: bool) {
        let tally = self.tallies.entry(kind).or_default();
        if pending {
            tally.pending += 1;
        } else {
            tally.unverifiable += 1;
        }
    }
}

/// Compares every key either side knows of.
pub fn compare(expected: &Expected, observed: &Observed, keys: &KeyLayout) -> Comparison {
    let mut c = Comparison::default();
    for kind in Kind::ALL {
        c.tallies.insert(kind, Tally::default());
    }

    let ids: BTreeSet<&String> = expected
        .devices
        .keys()
        .chain(observed.devices.keys())
        .chain(observed.index.keys())
        .collect();
    for id in ids {
        let want = expected.devices.get(id.as_str());
        if expected.pending_devices.contains(id.as_str()) {
            c.skip(Kind::Device, true);
            c.skip(Kind::Index, true);
            continue;
        }
        if want.is_some() || observed.devices.contains_key(id.as_str()) {
            c.record(
                Kind::Device,
                keys.device(id),
                want.map(|d| d.json.clone()),
                observed.devices.get(id.as_str()).cloned(),
            );
        }
        let score = observed.index.get(id.as_str());
        if want.is_some() || score.is_some() {
            c.record(
                Kind::Index,
                format!("{} {id}", keys.index_key(id)),
                want.map(|d| d.last_updated_ms.to_string()),
                score.map(|s| format!("{s}")),
            );
        }
    }

    let namespaces: BTreeSet<&String> = expected
        .namespaces
        .keys()
        .chain(observed.sets.keys())
        .chain(observed.listed.iter())
        .collect();
    for ns in namespaces {
        let want = expected.namespaces.get(ns.as_str());
        let pending = expected.pending_namespaces.contains(ns.as_str());
        let key = keys.metric_names(ns);
        match want.map(|w| &w.names) {
            _ if pending => c.skip(Kind::MetricNames, true),
            Some(Names::Unverifiable) => {
                c.skip(Kind::MetricNames, false);
                c.unverifiable.push(ns.clone());
            }
            known => {
                let want = known.and_then(|n| match n {
                    Names::Known(set) if !set.is_empty() => Some(show(set)),
                    _ => None,
                });
                c.record(
                    Kind::MetricNames,
                    key,
                    want,
                    observed.sets.get(ns.as_str()).map(show),
                );
            }
        }
        let listed = want.map_or(Some(false), |w| w.listed);
        match listed {
            _ if pending => c.skip(Kind::Namespaces, true),
            None => c.skip(Kind::Namespaces, false),
            Some(listed) => c.record(
                Kind::Namespaces,
                format!("{} {ns}", keys.metric_namespaces()),
                listed.then(|| "member".to_owned()),
                observed
                    .listed
                    .contains(ns.as_str())
                    .then(|| "member".to_owned()),
            ),
        }
    }
    c
}

fn show(set: &BTreeSet<String>) -> String {
    let names: Vec<&str> = set.iter().map(String::as_str).collect();
    format!("{{{}}}", names.join(", "))
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<18} {:>9} {:>9} {:>8} {:>8} {:>10} {:>8} {:>13}",
            "kind", "checked", "match", "missing", "extra", "different", "pending", "unverifiable"
        )?;
        for (kind, t) in &self.tallies {
            writeln!(
                f,
                "  {:<18} {:>9} {:>9} {:>8} {:>8} {:>10} {:>8} {:>13}",
                kind.label(),
                t.checked,
                t.matching,
                t.missing,
                t.extra,
                t.different,
                t.pending,
                t.unverifiable
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;

    fn device(id: &str, at: &str) -> Event {
        crate::tools::verify::events::device(id, at, "n")
    }

    use crate::tools::verify::events::metric;

    /// Redis exactly as the writer would leave it after `expected`.
    fn faithful(e: &Expected) -> Observed {
        let mut o = Observed::default();
        for (id, d) in &e.devices {
            o.devices.insert(id.clone(), d.json.clone());
            o.index.insert(id.clone(), d.last_updated_ms as f64);
        }
        for (ns, n) in &e.namespaces {
            if let Names::Known(set) = &n.names {
                if !set.is_empty() {
                    o.sets.insert(ns.clone(), set.clone());
                }
            }
            if n.listed == Some(true) {
                o.listed.insert(ns.clone());
            }
        }
        o
    }

    fn stream() -> Expected {
        let mut e = Expected::default();
        e.apply(&device("a", "2026-11-22T10:00:00Z"), false);
        e.apply(&device("b", "2026-11-22T10:00:00Z"), false);
        e.apply(
            &metric(r#"{"op":"replace","namespace":"ns","metric_names":["x","y"]}"#),
            false,
        );
        e.apply(
            &metric(r#"{"op":"add","namespace":"old","metric_names":["z"]}"#),
            false,
        );
        e
    }

    #[test]
    fn a_faithful_cache_matches_and_an_unknown_history_is_not_counted() {
        let e = stream();
        let c = compare(&e, &faithful(&e), &KeyLayout::new(""));
        assert_eq!(c.total_differences(), 0, "{:?}", c.differences);
        assert_eq!(c.unverifiable, ["old"]);
        assert_eq!(c.tallies[&Kind::Device].matching, 2);
        assert_eq!(c.tallies[&Kind::MetricNames].unverifiable, 1);
        // Listed by its add even though its set is unknown.
        assert_eq!(c.tallies[&Kind::Namespaces].matching, 2);
    }

    #[test]
    fn every_planted_difference_is_found_with_its_key() {
        let e = stream();
        let mut o = faithful(&e);
        o.devices.remove("a");
        o.devices.insert("b".into(), "{}".into());
        o.devices.insert("ghost".into(), "{}".into());
        o.index.insert("b".into(), 1.0);
        o.sets.get_mut("ns").expect("set").insert("w".into());
        o.listed.remove("ns");
        let c = compare(&e, &o, &KeyLayout::new("p:"));
        let found: Vec<(Kind, &str, Problem)> = c
            .differences
            .iter()
            .map(|d| (d.kind, d.key.as_str(), d.problem))
            .collect();
        assert_eq!(
            found,
            [
                (Kind::Device, "p:device:a", Problem::Missing),
                (Kind::Device, "p:device:b", Problem::Different),
                (Kind::Index, "p:devices b", Problem::Different),
                (Kind::Device, "p:device:ghost", Problem::Extra),
                (Kind::MetricNames, "p:ns#metric_names", Problem::Different),
                (Kind::Namespaces, "p:metric_namespaces ns", Problem::Missing),
            ]
        );
        assert_eq!(c.total_differences(), 6);
    }

    #[test]
    fn keys_with_records_not_yet_committed_are_pending_not_drift() {
        let mut e = stream();
        e.apply(&device("a", "2026-11-22T11:00:00Z"), true);
        e.apply(
            &metric(r#"{"op":"add","namespace":"ns","metric_names":["q"]}"#),
            true,
        );
        // Redis still holds the committed state: not a difference.
        let mut before = Expected::default();
        before.apply(&device("a", "2026-11-22T10:00:00Z"), false);
        let mut o = faithful(&e);
        o.devices
            .insert("a".into(), before.devices["a"].json.clone());
        o.sets
            .insert("ns".into(), ["x".to_owned(), "y".to_owned()].into());
        let c = compare(&e, &o, &KeyLayout::new(""));
        assert_eq!(c.total_differences(), 0, "{:?}", c.differences);
        assert_eq!(c.tallies[&Kind::Device].pending, 1);
        assert_eq!(c.tallies[&Kind::MetricNames].pending, 1);
    }
}
