//! A larger mixed stream (updates to the same keys, out-of-order timestamps, tombstones,
//! metric-set operations) against a small independent model of what Redis must hold, key
//! by key. Also prints the throughput it saw, for the record (not asserted: speed goals
//! live in the benchmark).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

const DEVICE_EVENTS: usize = 20_000;
const METRIC_EVENTS: usize = 5_000;

/// A tiny deterministic generator, so a failure replays exactly.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_converges_to_the_state_the_stream_describes() {
    let h = Harness::start(4);
    let mut rng = Lcg(42);

    // The model: what each key must hold after the whole stream, applied in order.
    let mut devices: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut namespaces: BTreeSet<String> = BTreeSet::new();

    let base_ms: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
    let mut device_records: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..DEVICE_EVENTS {
        let id = format!("dev-{}", rng.below(2_000));
        if rng.below(50) == 0 {
            devices.remove(&id);
            device_records.push((id, None));
            continue;
        }
        // Mostly moving forward, sometimes an older (stale) timestamp.
        let ts = base_ms + rng.below(3_600_000) as i64;
        let name = format!("n{}", rng.below(1000));
        let when = time::OffsetDateTime::from_unix_timestamp_nanos(ts as i128 * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let json = device_json(&id, &name, &when);
        match devices.get(&id) {
            Some((stored, _)) if *stored > ts => {}
            _ => {
                devices.insert(id.clone(), (ts, name));
            }
        }
        device_records.push((id, Some(json)));
    }
    let mut metric_records: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..METRIC_EVENTS {
        let ns = format!("ns-{}", rng.below(100));
        let names: Vec<String> = (0..rng.below(4))
            .map(|_| format!("m{}", rng.below(20)))
            .collect();
        let op = match rng.below(20) {
            0 => {
                sets.remove(&ns);
                namespaces.remove(&ns);
                metric_records.push((ns, None));
                continue;
            }
            1..=4 => {
                sets.insert(ns.clone(), names.iter().cloned().collect());
                namespaces.insert(ns.clone());
                "replace"
            }
            5..=12 => {
                sets.entry(ns.clone())
                    .or_default()
                    .extend(names.iter().cloned());
                namespaces.insert(ns.clone());
                "add"
            }
            _ => {
                if let Some(set) = sets.get_mut(&ns) {
                    for n in &names {
                        set.remove(n);
                    }
                }
                "remove"
            }
        };
        let json =
            serde_json::json!({"op": op, "namespace": ns, "metric_names": names}).to_string();
        metric_records.push((ns, Some(json)));
    }

    let as_refs = |v: &'_ [(String, Option<String>)]| -> Vec<(Option<String>, Option<String>)> {
        v.iter()
            .map(|(k, v)| (Some(k.clone()), v.clone()))
            .collect()
    };
    for (topic, records) in [
        (DEVICES, as_refs(&device_records)),
        (METRICS, as_refs(&metric_records)),
    ] {
        for chunk in records.chunks(2_000) {
            let refs: Vec<(Option<&str>, Option<&str>)> = chunk
                .iter()
                .map(|(k, v)| (k.as_deref(), v.as_deref()))
                .collect();
            h.produce(topic, &refs).await;
        }
    }
    // The whole stream is a backlog before the daemon starts: time the drain from the
    // first record consumed, so the group join is not counted.
    let daemon = h.start_daemon(h.settings());
    wait_for(Duration::from_secs(30), "the first record", || async {
        daemon.stats.snapshot().devices.consumed > 0
    })
    .await;
    let started = Instant::now();
    let total = (DEVICE_EVENTS + METRIC_EVENTS) as u64;
    daemon.wait_finished(total, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let snap = daemon.stats.snapshot();
    daemon.stop().await.expect("clean stop");

    let mut r = h.redis();
    let mut checked = 0;
    let mut wrong = Vec::new();
    let stored_ids: BTreeSet<String> = r.zrange("devices", 0, -1).unwrap();
    let expected_ids: BTreeSet<String> = devices.keys().cloned().collect();
    if stored_ids != expected_ids {
        wrong.push(format!(
            "devices index: {} stored, {} expected",
            stored_ids.len(),
            expected_ids.len()
        ));
    }
    for i in 0..2_000 {
        let id = format!("dev-{i}");
        let stored: Option<String> = r.get(format!("device:{id}")).unwrap();
        let stored = stored.map(|s| serde_json::from_str::<serde_json::Value>(&s).unwrap());
        let ok = match (devices.get(&id), &stored) {
            (None, None) => true,
            (Some((_, name)), Some(v)) => v["datatype_name"] == name.as_str(),
            _ => false,
        };
        checked += 1;
        if !ok {
            wrong.push(format!(
                "device:{id}: expected {:?}, got {stored:?}",
                devices.get(&id)
            ));
        }
    }
    for i in 0..100 {
        let ns = format!("ns-{i}");
        let stored: BTreeSet<String> = r.smembers(format!("{ns}#metric_names")).unwrap();
        checked += 1;
        if stored != sets.get(&ns).cloned().unwrap_or_default() {
            wrong.push(format!(
                "{ns}#metric_names: expected {:?}, got {stored:?}",
                sets.get(&ns)
            ));
        }
    }
    let stored_ns: BTreeSet<String> = r.smembers("metric_namespaces").unwrap();
    checked += 1;
    if stored_ns != namespaces {
        wrong.push(format!(
            "metric_namespaces: expected {namespaces:?}, got {stored_ns:?}"
        ));
    }
    println!(
        "convergence: {total} events ({DEVICE_EVENTS} device, {METRIC_EVENTS} metric), {} stale skipped, \
         {checked} keys checked, {} wrong; backlog drained at {:.0} events/s ({:?}, {} build), {} batches, max batch {}, pipeline mean {} µs max {} µs",
        snap.devices.stale,
        wrong.len(),
        total as f64 / elapsed.as_secs_f64(),
        elapsed,
        if cfg!(debug_assertions) { "debug" } else { "release" },
        snap.batches,
        snap.max_batch,
        snap.pipeline_micros_mean,
        snap.pipeline_micros_max
    );
    assert!(
        wrong.is_empty(),
        "{} keys wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(snap.devices.stale > 0, "the stream had stale updates");
}
