//! The contract fixtures (contract/fixtures/*.json): events with the rejections they must
//! give and the Redis state the daemon must leave. The Python client's tests read the same
//! files, so the writer, the Rust client and the Python client cannot disagree.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use metacache::model::{self, Limits, TopicKind};
use redis::Commands;
use serde_json::Value;
use support::*;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contract/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

/// An event's topic kind, Kafka key and value bytes (`None`: a tombstone).
fn record(event: &Value) -> (TopicKind, Option<String>, Option<Vec<u8>>) {
    let kind = match event["topic"].as_str() {
        Some("devices") => TopicKind::Device,
        Some("metrics") => TopicKind::Metric,
        other => panic!("topic {other:?}"),
    };
    let key = event["key"].as_str().map(str::to_owned);
    let value = if let Some(raw) = event["raw"].as_str() {
        Some(raw.as_bytes().to_vec())
    } else if event["value"].is_null() {
        None
    } else {
        Some(event["value"].to_string().into_bytes())
    };
    (kind, key, value)
}

#[test]
fn the_decoder_gives_exactly_the_fixture_rejections() {
    let fixture = fixture("demo.json");
    let mut got = Vec::new();
    for (i, event) in fixture["events"].as_array().unwrap().iter().enumerate() {
        let (kind, key, value) = record(event);
        if let Err(reject) = model::decode(
            kind,
            key.as_deref().map(str::as_bytes),
            value.as_deref(),
            &Limits::default(),
        ) {
            got.push(serde_json::json!({
                "event": i, "reason": reject.reason.as_str(), "field": reject.field,
            }));
        }
    }
    assert_eq!(Value::Array(got), fixture["rejections"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_leaves_exactly_the_fixture_state() {
    let fixture = fixture("demo.json");
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());
    let events = fixture["events"].as_array().unwrap();
    // One record at a time and in order, as the fixture lists them.
    for event in events {
        let (kind, key, value) = record(event);
        let topic = match kind {
            TopicKind::Device => DEVICES,
            TopicKind::Metric => METRICS,
        };
        let value = value.map(|v| String::from_utf8(v).expect("UTF-8"));
        h.produce(topic, &[(key.as_deref(), value.as_deref())])
            .await;
    }
    daemon
        .wait_finished(events.len() as u64, Duration::from_secs(30))
        .await;
    daemon.stop().await.expect("clean stop");

    let want = &fixture["redis"];
    let mut r = h.redis();
    let keys: BTreeSet<String> = r.keys("device:*").unwrap();
    let wanted: BTreeMap<String, String> = want["device"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, json)| (format!("device:{id}"), json.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(keys, wanted.keys().cloned().collect());
    for (key, json) in &wanted {
        let stored: String = r.get(key).unwrap();
        assert_eq!(&stored, json, "{key}");
    }
    let index: Vec<(String, i64)> = r.zrange_withscores("devices", 0, -1).unwrap();
    let index: BTreeMap<String, i64> = index.into_iter().collect();
    let wanted: BTreeMap<String, i64> = want["devices"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, score)| (id.clone(), score.as_i64().unwrap()))
        .collect();
    assert_eq!(index, wanted);
    let listed: BTreeSet<String> = r.smembers("metric_namespaces").unwrap();
    let wanted: BTreeSet<String> = want["metric_namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, wanted);
    let sets: BTreeSet<String> = r.keys("*#metric_names").unwrap();
    let wanted_sets = want["metric_names"].as_object().unwrap();
    assert_eq!(sets.len(), wanted_sets.len(), "{sets:?}");
    for (namespace, names) in wanted_sets {
        let stored: BTreeSet<String> = r.smembers(format!("{namespace}#metric_names")).unwrap();
        let names: BTreeSet<String> = names
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stored, names, "{namespace}");
    }
}

/// The schemas name the fields the Rust types name, in the stored order, so the two cannot
/// drift apart without this failing.
#[test]
fn the_schemas_name_the_fields_of_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contract/schemas");
    let schema = |name: &str| -> Value {
        let text = std::fs::read_to_string(root.join(format!("{name}.schema.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    // The stored form, as the Rust model writes it: its field order is the schema's.
    let event = model::decode(
        TopicKind::Device,
        Some(b"d"),
        Some(br#"{"last_updated":"2026-11-22T10:00:00Z","persist":true,"datatype_name":"n","datatype_id":"t","device_id":"d","z":1}"#),
        &Limits::default(),
    )
    .unwrap();
    let model::Event::DeviceUpsert(upsert) = event else {
        panic!("an upsert")
    };
    // Where each field the stored schema requires sits in the stored JSON: all there, in
    // the schema's order, before the unknown field.
    let stored = upsert.normalized_json();
    let required = names(&schema("device-stored")["required"]);
    let at: Vec<usize> = required
        .iter()
        .map(|f| {
            stored
                .find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} not in {stored}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "{required:?} vs {stored}"
    );
    assert!(stored.find("\"z\":").unwrap() > at[at.len() - 1]);
    let mut event_fields = required.clone();
    event_fields.retain(|f| f != "datatype_unit");
    assert_eq!(names(&schema("device-event")["required"]), event_fields);
    let metric = schema("metric-event");
    assert_eq!(names(&metric["required"]), ["op", "metric_names"]);
    assert_eq!(
        metric["properties"]["op"]["enum"],
        serde_json::json!(["replace", "add", "remove"])
    );
    assert_eq!(
        metric["properties"]["metric_names"]["maxItems"],
        Limits::default().max_metric_names
    );
}
