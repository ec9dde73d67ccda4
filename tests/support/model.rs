//! A deterministic stream of events and a small, independent model of what Redis must hold
//! after it: the fault tests publish the stream, break something, and compare Redis with
//! the model key by key.
//!
//! The model is written from the documented contract (README "Redis layout"), not from the
//! daemon's code: the stored device JSON is built here field by field, timestamps are
//! formatted here, and set semantics are applied here.

use std::collections::{BTreeMap, BTreeSet};

use redis::Commands;

use super::{DEVICES, METRICS};

/// 2026-11-22T10:00:00Z in epoch milliseconds.
pub const BASE_MS: i64 = 1_795_341_600_000;

/// A tiny deterministic generator, so a failure replays exactly.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What one record does to the cache, as the contract says.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    DeviceUpsert {
        id: String,
        ts_ms: i64,
        /// The normalized JSON the contract says is stored.
        stored: String,
    },
    DeviceDelete {
        id: String,
    },
    Replace {
        ns: String,
        names: Vec<String>,
    },
    Add {
        ns: String,
        names: Vec<String>,
    },
    Remove {
        ns: String,
        names: Vec<String>,
    },
    NamespaceDelete {
        ns: String,
    },
    /// Invalid: goes to the dead-letter topic and changes nothing.
    Rejected,
}

/// One Kafka record of the stream.
#[derive(Debug, Clone)]
pub struct Rec {
    pub topic: &'static str,
    pub key: Option<String>,
    pub value: Option<String>,
    pub effect: Effect,
}

#[allow(dead_code)]
impl Rec {
    /// A keyed device upsert at `at` (RFC 3339, whole seconds, UTC), and what it stores.
    pub fn device(id: &str, at: &str) -> Rec {
        let value = serde_json::json!({
            "device_id": id, "datatype_id": "dt-1", "datatype_name": "n",
            "persist": true, "last_updated": at,
        })
        .to_string();
        let ts_ms = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .expect("an RFC 3339 time");
        let stored = format!(
            "{{\"device_id\":{},\"datatype_id\":\"dt-1\",\"datatype_name\":\"n\",\"datatype_unit\":null,\"persist\":true,\"last_updated\":\"{}.000Z\"}}",
            serde_json::to_string(id).unwrap(),
            at.trim_end_matches('Z')
        );
        Rec {
            topic: DEVICES,
            key: Some(id.to_owned()),
            value: Some(value),
            effect: Effect::DeviceUpsert {
                id: id.to_owned(),
                ts_ms,
                stored,
            },
        }
    }

    /// A device tombstone.
    pub fn tombstone(id: &str) -> Rec {
        Rec {
            topic: DEVICES,
            key: Some(id.to_owned()),
            value: None,
            effect: Effect::DeviceDelete { id: id.to_owned() },
        }
    }

    /// A catalog operation (`replace`, `add` or `remove`) on `ns`.
    pub fn metric(op: &str, ns: &str, names: &[&str]) -> Rec {
        let list: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let value =
            serde_json::json!({"op": op, "namespace": ns, "metric_names": list}).to_string();
        let key = ns.to_owned();
        let (ns, names) = (ns.to_owned(), list);
        let effect = match op {
            "replace" => Effect::Replace { ns, names },
            "add" => Effect::Add { ns, names },
            "remove" => Effect::Remove { ns, names },
            other => panic!("op {other}"),
        };
        Rec {
            topic: METRICS,
            key: Some(key),
            value: Some(value),
            effect,
        }
    }
}

/// Shape of a generated stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    pub seed: u64,
    pub events: usize,
    /// Share of device events, in percent (the rest are metric-catalog events).
    pub device_percent: u64,
    pub devices: u64,
    pub namespaces: u64,
    /// Invalid events, in per mille.
    pub rejects_per_mille: u64,
}

impl StreamSpec {
    pub fn new(seed: u64, events: usize) -> StreamSpec {
        StreamSpec {
            seed,
            events,
            device_percent: 80,
            devices: 2_000,
            namespaces: 100,
            rejects_per_mille: 5,
        }
    }
}

/// Generates the stream: repeated keys, out-of-order and equal timestamps, offsets other
/// than UTC, sub-millisecond digits, unknown fields, tombstones on both topics, every
/// metric operation (including empty lists and the default namespace), and a few invalid
/// events of several kinds.
pub fn generate(spec: StreamSpec) -> Vec<Rec> {
    let mut rng = Lcg(spec.seed);
    // The last timestamp generated per device, to produce exact ties now and then.
    let mut last_ts: BTreeMap<String, i64> = BTreeMap::new();
    let mut out = Vec::with_capacity(spec.events);
    for _ in 0..spec.events {
        let device = rng.below(100) < spec.device_percent;
        if rng.below(1000) < spec.rejects_per_mille {
            out.push(reject(&mut rng, device, spec));
        } else if device {
            out.push(device_event(&mut rng, spec, &mut last_ts));
        } else {
            out.push(metric_event(&mut rng, spec));
        }
    }
    out
}

fn device_event(rng: &mut Lcg, spec: StreamSpec, last_ts: &mut BTreeMap<String, i64>) -> Rec {
    let id = format!("dev-{}", rng.below(spec.devices));
    if rng.percent(2) {
        return Rec {
            topic: DEVICES,
            key: Some(id.clone()),
            value: None,
            effect: Effect::DeviceDelete { id },
        };
    }
    let ts_ms = match last_ts.get(&id) {
        Some(ts) if rng.percent(3) => *ts,
        _ => BASE_MS + rng.below(3_600_000) as i64,
    };
    last_ts.insert(id.clone(), ts_ms);
    let datatype_id = format!("dt-{}", rng.below(10));
    let datatype_name = format!("n{}", rng.below(1000));
    let unit = match rng.below(3) {
        0 => Unit::Absent,
        1 => Unit::Null,
        _ => Unit::Text(["C", "K", "%", ""][rng.below(4) as usize].to_owned()),
    };
    let persist = rng.percent(50);
    let site = rng.percent(30).then(|| format!("plant-{}", rng.below(5)));
    let tags = rng
        .percent(10)
        .then(|| vec![format!("t{}", rng.below(3)), "x\"y".to_owned()]);
    let written_ts = match rng.below(10) {
        0 => rfc3339_with_offset(ts_ms, 2 * 3600),
        1 => rfc3339_with_offset(ts_ms, -(5 * 3600 + 30 * 60)),
        2 => format!("{}789Z", &utc_millis(ts_ms)[..23]),
        _ => utc_millis(ts_ms),
    };

    // The payload, fields in an order of their own.
    let mut payload = serde_json::Map::new();
    if let Some(tags) = &tags {
        payload.insert("tags".into(), serde_json::json!(tags));
    }
    payload.insert("last_updated".into(), written_ts.into());
    payload.insert("persist".into(), persist.into());
    match &unit {
        Unit::Absent => {}
        Unit::Null => {
            payload.insert("datatype_unit".into(), serde_json::Value::Null);
        }
        Unit::Text(u) => {
            payload.insert("datatype_unit".into(), u.clone().into());
        }
    }
    payload.insert("datatype_name".into(), datatype_name.clone().into());
    payload.insert("datatype_id".into(), datatype_id.clone().into());
    payload.insert("device_id".into(), id.clone().into());
    if let Some(site) = &site {
        payload.insert("site".into(), site.clone().into());
    }
    let value = serde_json::Value::Object(payload).to_string();

    // What the contract says is stored: named fields in order, unit null when absent,
    // UTC millisecond timestamp, then the unknown fields in name order.
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let mut stored = format!(
        "{{\"device_id\":{},\"datatype_id\":{},\"datatype_name\":{},\"datatype_unit\":{},\"persist\":{},\"last_updated\":{}",
        q(&id),
        q(&datatype_id),
        q(&datatype_name),
        match &unit {
            Unit::Text(u) => q(u),
            _ => "null".to_owned(),
        },
        persist,
        q(&utc_millis(ts_ms)),
    );
    if let Some(site) = &site {
        stored.push_str(&format!(",\"site\":{}", q(site)));
    }
    if let Some(tags) = &tags {
        stored.push_str(&format!(
            ",\"tags\":[{}]",
            tags.iter().map(|t| q(t)).collect::<Vec<_>>().join(",")
        ));
    }
    stored.push('}');
    Rec {
        topic: DEVICES,
        key: Some(id.clone()),
        value: Some(value),
        effect: Effect::DeviceUpsert { id, ts_ms, stored },
    }
}

enum Unit {
    Absent,
    Null,
    Text(String),
}

fn metric_event(rng: &mut Lcg, spec: StreamSpec) -> Rec {
    let n = rng.below(spec.namespaces + 1);
    // The last one is the default namespace, written three ways.
    let (ns, payload_ns) = if n == spec.namespaces {
        let written = match rng.below(3) {
            0 => serde_json::json!(""),
            1 => serde_json::Value::Null,
            _ => serde_json::json!("default"),
        };
        ("default".to_owned(), Some(written))
    } else {
        let ns = format!("ns-{n}");
        (ns.clone(), Some(serde_json::json!(ns)))
    };
    let names: Vec<String> = (0..rng.below(4))
        .map(|_| format!("m{}", rng.below(20)))
        .collect();
    let (op, effect) = match rng.below(20) {
        0 => {
            return Rec {
                topic: METRICS,
                key: Some(ns.clone()),
                value: None,
                effect: Effect::NamespaceDelete { ns },
            }
        }
        1..=4 => (
            "replace",
            Effect::Replace {
                ns: ns.clone(),
                names: names.clone(),
            },
        ),
        5..=12 => (
            "add",
            Effect::Add {
                ns: ns.clone(),
                names: names.clone(),
            },
        ),
        _ => (
            "remove",
            Effect::Remove {
                ns: ns.clone(),
                names: names.clone(),
            },
        ),
    };
    let mut payload = serde_json::Map::new();
    payload.insert("op".into(), op.into());
    if let Some(written) = payload_ns {
        payload.insert("namespace".into(), written);
    }
    payload.insert("metric_names".into(), serde_json::json!(names));
    if rng.percent(5) {
        payload.insert("comment".into(), "ignored".into());
    }
    Rec {
        topic: METRICS,
        key: Some(ns),
        value: Some(serde_json::Value::Object(payload).to_string()),
        effect,
    }
}

/// Invalid events of several kinds, keyed so they stay in their key's partition.
fn reject(rng: &mut Lcg, device: bool, spec: StreamSpec) -> Rec {
    if device {
        let id = format!("dev-{}", rng.below(spec.devices));
        let value = match rng.below(5) {
            0 => format!("{{\"device_id\":\"{id}\",\"datatype_id\":"),
            1 => format!(
                "{{\"device_id\":\"{id}\",\"datatype_name\":\"n\",\"persist\":true,\"last_updated\":\"2026-11-22T10:00:00Z\"}}"
            ),
            2 => format!(
                "{{\"device_id\":\"other-{id}\",\"datatype_id\":\"d\",\"datatype_name\":\"n\",\"persist\":true,\"last_updated\":\"2026-11-22T10:00:00Z\"}}"
            ),
            3 => format!(
                "{{\"device_id\":\"{id}\",\"datatype_id\":\"d\",\"datatype_name\":\"n\",\"persist\":true,\"last_updated\":\"yesterday\"}}"
            ),
            _ => String::new(),
        };
        Rec {
            topic: DEVICES,
            key: Some(id),
            value: Some(value),
            effect: Effect::Rejected,
        }
    } else {
        let ns = format!("ns-{}", rng.below(spec.namespaces));
        let value = match rng.below(3) {
            0 => format!("{{\"op\":\"rename\",\"namespace\":\"{ns}\",\"metric_names\":[]}}"),
            1 => format!("{{\"op\":\"add\",\"namespace\":\"{ns}\",\"metric_names\":\"cpu\"}}"),
            _ => format!("{{\"op\":\"add\",\"namespace\":\"{ns}\",\"metric_names\":[\"\"]}}"),
        };
        Rec {
            topic: METRICS,
            key: Some(ns),
            value: Some(value),
            effect: Effect::Rejected,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the stored form.
pub fn utc_millis(ms: i64) -> String {
    rfc3339_with_offset(ms, 0)
}

/// The same instant written in another offset (`Z` for 0).
pub fn rfc3339_with_offset(ms: i64, offset_secs: i32) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap()
        .to_offset(time::UtcOffset::from_whole_seconds(offset_secs).unwrap());
    let zone = if offset_secs == 0 {
        "Z".to_owned()
    } else {
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let a = offset_secs.abs();
        format!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{zone}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// What Redis must hold.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// id -> (last_updated ms, stored JSON).
    pub devices: BTreeMap<String, (i64, String)>,
    pub sets: BTreeMap<String, BTreeSet<String>>,
    pub namespaces: BTreeSet<String>,
}

impl Model {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Rec>) -> Model {
        let mut m = Model::default();
        for r in records {
            m.apply(&r.effect);
        }
        m
    }

    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::DeviceUpsert { id, ts_ms, stored } => match self.devices.get(id) {
                // The stale guard: an older update is skipped; an equal one is written.
                Some((current, _)) if current > ts_ms => {}
                _ => {
                    self.devices.insert(id.clone(), (*ts_ms, stored.clone()));
                }
            },
            Effect::DeviceDelete { id } => {
                self.devices.remove(id);
            }
            Effect::Replace { ns, names } => {
                self.sets
                    .insert(ns.clone(), names.iter().cloned().collect());
                self.namespaces.insert(ns.clone());
            }
            Effect::Add { ns, names } => {
                self.sets
                    .entry(ns.clone())
                    .or_default()
                    .extend(names.iter().cloned());
                self.namespaces.insert(ns.clone());
            }
            Effect::Remove { ns, names } => {
                if let Some(set) = self.sets.get_mut(ns) {
                    for n in names {
                        set.remove(n);
                    }
                }
            }
            Effect::NamespaceDelete { ns } => {
                self.sets.remove(ns);
                self.namespaces.remove(ns);
            }
            Effect::Rejected => {}
        }
    }

    /// Compares every key in Redis (and every key the model expects) with the model.
    pub fn compare(&self, redis: &mut impl redis::ConnectionLike) -> Comparison {
        self.compare_sharded(redis, 1)
    }

    /// [`Model::compare`] for a device index split over `shards` sorted sets.
    pub fn compare_sharded(
        &self,
        redis: &mut impl redis::ConnectionLike,
        shards: u32,
    ) -> Comparison {
        // The writers' liveness hash is part of the layout but holds no cache data.
        let actual: BTreeSet<String> = redis
            .keys::<_, BTreeSet<String>>("*")
            .unwrap()
            .into_iter()
            .filter(|k| !k.ends_with("metacache:writers") && !k.ends_with("metacache:layout"))
            .collect();
        let mut expected: BTreeSet<String> = BTreeSet::new();
        for id in self.devices.keys() {
            expected.insert(format!("device:{id}"));
        }
        for id in self.devices.keys() {
            expected.insert(index_key(id, shards));
        }
        for (ns, set) in &self.sets {
            if !set.is_empty() {
                expected.insert(format!("{ns}#metric_names"));
            }
        }
        if !self.namespaces.is_empty() {
            expected.insert("metric_namespaces".into());
        }
        let mut wrong = Vec::new();
        let all: BTreeSet<&String> = actual.union(&expected).collect();
        for key in &all {
            if let Some(problem) = self.check_key(redis, key, actual.contains(*key), shards) {
                wrong.push(format!("{key}: {problem}"));
            }
        }
        Comparison {
            keys_checked: all.len(),
            wrong,
        }
    }

    fn check_key(
        &self,
        redis: &mut impl redis::ConnectionLike,
        key: &str,
        exists: bool,
        shards: u32,
    ) -> Option<String> {
        if let Some(id) = key.strip_prefix("device:") {
            let got: Option<String> = redis.get(key).unwrap();
            let want = self.devices.get(id).map(|(_, json)| json.clone());
            return (got != want).then(|| format!("expected {want:?}, got {got:?}"));
        }
        if key == "devices" || key.starts_with("devices:{") {
            let got: Vec<(String, f64)> = redis.zrange_withscores(key, 0, -1).unwrap();
            let got: BTreeMap<String, i64> = got.into_iter().map(|(m, s)| (m, s as i64)).collect();
            let want: BTreeMap<String, i64> = self
                .devices
                .iter()
                .filter(|(id, _)| index_key(id, shards) == key)
                .map(|(id, (ts, _))| (id.clone(), *ts))
                .collect();
            return (got != want).then(|| describe_diff(&want, &got));
        }
        if key == "metric_namespaces" {
            let got: BTreeSet<String> = redis.smembers(key).unwrap();
            return (got != self.namespaces)
                .then(|| format!("expected {:?}, got {got:?}", self.namespaces));
        }
        if let Some(ns) = key.strip_suffix("#metric_names") {
            let got: BTreeSet<String> = redis.smembers(key).unwrap();
            let want = self.sets.get(ns).cloned().unwrap_or_default();
            return (got != want).then(|| format!("expected {want:?}, got {got:?}"));
        }
        exists.then(|| "a key the model does not know".to_owned())
    }
}

/// The index key of `id` as the README documents it: `devices` with one shard, else
/// `devices:{k}` with k = CRC-16/XMODEM of the id's UTF-8 bytes modulo `shards` (computed
/// here from the definition, not with the daemon's code).
pub fn index_key(id: &str, shards: u32) -> String {
    if shards <= 1 {
        return "devices".into();
    }
    let mut crc: u16 = 0;
    for byte in id.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    format!("devices:{{{}}}", u32::from(crc) % shards)
}

fn describe_diff(want: &BTreeMap<String, i64>, got: &BTreeMap<String, i64>) -> String {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .take(5)
        .collect();
    format!(
        "{} members expected, {} stored; missing e.g. {missing:?}, extra e.g. {extra:?}, other score e.g. {differ:?}",
        want.len(),
        got.len()
    )
}

/// Prints a figure straight to stdout, past the test harness's capture, so every run (CI
/// included) shows it, and appends it to `target/tmp/faults-figures.txt` for the docs.
pub fn figure(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-figures.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The outcome of [`Model::compare`].
#[derive(Debug)]
pub struct Comparison {
    pub keys_checked: usize,
    pub wrong: Vec<String>,
}

impl Comparison {
    /// Prints the scenario's figures on one line and fails the test on any wrong key.
    pub fn report(&self, scenario: &str, events: usize, faults: usize, took: std::time::Duration) {
        let line = format!(
            "faults: {scenario}: events sent {events}, faults injected {faults}, keys checked {}, keys wrong {}, duration {:.1} s",
            self.keys_checked,
            self.wrong.len(),
            took.as_secs_f64()
        );
        figure(&line);
        assert!(
            self.wrong.is_empty(),
            "{scenario}: {} keys wrong, e.g.:\n{}",
            self.wrong.len(),
            self.wrong
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
