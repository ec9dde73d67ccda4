//! `metacache verify` against a real daemon's cache: a clean run finds nothing, every
//! difference planted by hand is found with its key, and a daemon that has not caught up
//! is reported by partition, not as drift.

mod support;

use std::time::Duration;

use redis::Commands;
use support::feed::{ordered_producer, publish};
use support::model::{generate, StreamSpec};
use support::*;

/// Runs `metacache verify --json` against the harness; returns the exit code and the
/// parsed report.
fn verify(h: &Harness, group: &str) -> (Option<i32>, serde_json::Value, String) {
    let mut cmd = std::process::Command::new(process::binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("METACACHE") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(["verify", "--json", "--brokers", h.kafka.bootstrap()])
        .args(["--redis-url", &h.redis.url(), "--group", group])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("metacache verify runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code(), report, stderr)
}

fn tally(report: &serde_json::Value, kind: &str, field: &str) -> u64 {
    report["tallies"][kind][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{kind}.{field} in {report:#}"))
}

fn problems(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["key"].as_str().unwrap_or_default().to_owned(),
                d["problem"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_cache_matches_and_each_planted_difference_is_found() {
    let h = Harness::start(4);
    let settings = h.settings();
    let group = settings.kafka.group_id.clone();
    let records = generate(StreamSpec::new(11, 6_000));
    publish(&ordered_producer(h.kafka.bootstrap()), &records).await;
    let daemon = h.start_daemon(settings);
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    daemon.stop().await.expect("clean stop");

    let (code, clean, err) = verify(&h, &group);
    assert_eq!(code, Some(0), "{clean:#}\n{err}");
    assert_eq!(clean["records"], records.len() as u64);
    assert!(clean["not_caught_up"]
        .as_array()
        .is_some_and(|l| l.is_empty()));
    assert!(tally(&clean, "device", "matching") > 1_000);
    assert!(tally(&clean, "index", "matching") > 1_000);
    assert!(tally(&clean, "metric_names", "checked") > 10);
    assert!(problems(&clean).is_empty());

    // Plant one difference of each sort.
    let mut r = h.redis();
    let devices: Vec<String> = r.zrange("devices", 0, 2).expect("index");
    let (gone, altered, unindexed) = (&devices[0], &devices[1], &devices[2]);
    let _: () = r.del(format!("device:{gone}")).unwrap();
    let _: () = r
        .set(format!("device:{altered}"), r#"{"device_id":"x"}"#)
        .unwrap();
    let _: () = r.zrem("devices", unindexed).unwrap();
    let _: () = r.set("device:ghost", r#"{"device_id":"ghost"}"#).unwrap();
    let sets: Vec<String> = r.smembers("metric_namespaces").unwrap();
    // A namespace whose history is known and whose set holds names.
    let verifiable: Vec<&String> = sets
        .iter()
        .filter(|ns| {
            !clean["unverifiable"]
                .as_array()
                .is_some_and(|u| u.iter().any(|v| v == ns.as_str()))
        })
        .filter(|ns| r.scard::<_, u64>(format!("{ns}#metric_names")).unwrap_or(0) > 0)
        .collect();
    let ns = verifiable[0];
    let _: () = r.sadd(format!("{ns}#metric_names"), "planted").unwrap();

    let (code, drift, err) = verify(&h, &group);
    assert_eq!(code, Some(1), "{drift:#}\n{err}");
    let found = problems(&drift);
    for want in [
        ("device", format!("device:{gone}"), "missing"),
        ("device", format!("device:{altered}"), "different"),
        ("index", format!("devices {unindexed}"), "missing"),
        ("device", "device:ghost".to_owned(), "extra"),
        ("metric_names", format!("{ns}#metric_names"), "different"),
    ] {
        let want = (want.0.to_owned(), want.1, want.2.to_owned());
        assert!(found.contains(&want), "{want:?} not in {found:?}");
    }
    // The deleted key's index entry is still there and right; nothing else differs.
    assert_eq!(found.len(), 5, "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_is_not_caught_up_is_reported_by_partition_not_as_drift() {
    let h = Harness::start(2);
    let settings = h.settings();
    let group = settings.kafka.group_id.clone();
    let records = generate(StreamSpec::new(12, 3_000));
    let (first, rest) = records.split_at(2_000);
    let producer = ordered_producer(h.kafka.bootstrap());
    publish(&producer, first).await;
    let daemon = h.start_daemon(settings);
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    daemon.stop().await.expect("clean stop");
    // More of the stream arrives while no daemon runs: the group lags.
    publish(&producer, rest).await;

    let (code, report, err) = verify(&h, &group);
    assert_eq!(code, Some(0), "lagging is not drift: {report:#}\n{err}");
    let lagging = report["not_caught_up"].as_array().expect("not_caught_up");
    assert_eq!(
        lagging.len(),
        4,
        "every partition of both topics got records: {lagging:?}"
    );
    let pending: i64 = lagging
        .iter()
        .map(|l| l["end"].as_i64().unwrap() - l["committed"].as_i64().unwrap())
        .sum();
    assert_eq!(pending, rest.len() as i64);
    assert!(tally(&report, "device", "pending") > 100);
    assert!(
        tally(&report, "device", "matching") > 100,
        "keys without new records are still compared"
    );
    assert!(problems(&report).is_empty());
}

/// A producer that partitions by another hash (or not by key) puts one device's events on
/// several partitions, where they have no order: verify names such keys and their
/// partitions, and does not say the cache matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_partitions_are_reported_not_vouched_for() {
    use rdkafka::producer::FutureRecord;
    let h = Harness::start(4);
    let settings = h.settings();
    let group = settings.kafka.group_id.clone();
    let daemon = h.start_daemon(settings);
    let producer = h.producer();
    let early = device_json("split-dev", "t", "2026-11-22T10:00:00Z");
    let late = device_json("split-dev", "t", "2026-11-22T11:00:00Z");
    let ns = r#"{"op":"add","namespace":"split-ns","metric_names":["a"]}"#;
    let whole = device_json("whole-dev", "t", "2026-11-22T10:00:00Z");
    let sends = [
        (DEVICES, "split-dev", early.as_str(), 0),
        (DEVICES, "split-dev", late.as_str(), 2),
        (METRICS, "split-ns", ns, 1),
        (METRICS, "split-ns", ns, 3),
        (DEVICES, "whole-dev", whole.as_str(), 1),
    ];
    for (topic, key, value, partition) in sends {
        producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .partition(partition),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
    daemon.wait_finished(5, Duration::from_secs(30)).await;
    // Some partitions got no record: wait for the commits of those that did.
    let committed = |topic| {
        h.committed(&group, topic)
            .iter()
            .map(|c| (*c).max(0))
            .sum::<i64>()
    };
    wait_for(
        Duration::from_secs(30),
        "every record committed",
        || async { committed(DEVICES) == 3 && committed(METRICS) == 2 },
    )
    .await;
    daemon.stop().await.expect("clean stop");

    let (code, report, stderr) = verify(&h, &group);
    assert_eq!(code, Some(1), "{report:#}\n{stderr}");
    assert_eq!(
        report["split_devices"],
        serde_json::json!([{"id": "split-dev", "partitions": [0, 2]}]),
        "{report:#}"
    );
    assert_eq!(
        report["split_namespaces"],
        serde_json::json!([{"id": "split-ns", "partitions": [1, 3]}]),
        "{report:#}"
    );
}
