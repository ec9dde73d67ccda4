//! The key layout, property-based: whatever ids and namespaces the decoder accepts, and
//! whatever `redis.key_prefix` is set, no device key, catalog key or fixed key can equal
//! another. Ids are built from the fragments the key forms are made of (`device:`,
//! `#metric_names`, the fixed key names), so near-collisions are the common case.
//!
//! Bounded for CI: 2,000 cases per property unless `PROPTEST_CASES` says otherwise.

use metacache::model::{self, Event, Limits, MetricOp, TopicKind};
use metacache::pipeline::sink::redis::KeyLayout;
use proptest::prelude::*;

#[path = "support/props.rs"]
mod props;
use props::config;

/// Text made of key-form fragments and a little noise.
fn tricky() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("device:".to_owned()),
        Just("device".to_owned()),
        Just("devices".to_owned()),
        Just("#metric_names".to_owned()),
        Just("#".to_owned()),
        Just(":".to_owned()),
        Just("metric_namespaces".to_owned()),
        Just("metacache:".to_owned()),
        Just("metacache:writers".to_owned()),
        Just("default".to_owned()),
        "[a-z]{1,3}",
    ];
    prop::collection::vec(fragment, 0..4).prop_map(|parts| parts.concat())
}

/// A device id the decoder accepts, if `id` is one.
fn accepted_device(id: &str) -> Option<String> {
    match model::decode(
        TopicKind::Device,
        Some(id.as_bytes()),
        None,
        &Limits::default(),
    ) {
        Ok(Event::DeviceDelete { device_id }) => Some(device_id),
        _ => None,
    }
}

/// The namespace the decoder resolves `ns` to, if it accepts it; through both a tombstone
/// and a value, which must agree.
fn accepted_namespace(ns: &str) -> Option<String> {
    let limits = Limits::default();
    let tombstone = match model::decode(TopicKind::Metric, Some(ns.as_bytes()), None, &limits) {
        Ok(Event::Metric(MetricOp::Delete { namespace })) => Some(namespace),
        _ => None,
    };
    let value = serde_json::json!({"op": "add", "namespace": ns, "metric_names": []}).to_string();
    let key = if ns.is_empty() { "default" } else { ns };
    let from_value = match model::decode(
        TopicKind::Metric,
        Some(key.as_bytes()),
        Some(value.as_bytes()),
        &limits,
    ) {
        Ok(Event::Metric(op)) => Some(op.namespace().to_owned()),
        _ => None,
    };
    assert_eq!(
        tombstone.is_some(),
        from_value.is_some(),
        "a tombstone and a value disagree on namespace {ns:?}"
    );
    tombstone
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_two_keys_of_different_things_are_equal(
        prefix in prop_oneof![Just(String::new()), tricky()],
        ids in prop::collection::vec(tricky(), 1..4),
        namespaces in prop::collection::vec(tricky(), 1..4),
        shards in prop_oneof![Just(1u32), Just(16u32)],
    ) {
        let keys = KeyLayout::with_index_shards(&prefix, shards);
        // (what the key is for, the key)
        let mut all: Vec<(String, String)> = vec![
            ("the namespaces index".into(), keys.metric_namespaces().to_owned()),
            ("the writers hash".into(), keys.writers().to_owned()),
            ("the layout descriptor".into(), keys.layout().to_owned()),
        ];
        for (k, index) in keys.index_keys().iter().enumerate() {
            all.push((format!("devices index shard {k}"), index.clone()));
        }
        for id in ids.iter().filter_map(|id| accepted_device(id)) {
            all.push((format!("device {id:?}"), keys.device(&id)));
        }
        for ns in namespaces.iter().filter_map(|ns| accepted_namespace(ns)) {
            all.push((format!("namespace {ns:?}"), keys.metric_names(&ns)));
        }
        all.sort();
        all.dedup();
        for (i, (a, key_a)) in all.iter().enumerate() {
            for (b, key_b) in &all[i + 1..] {
                prop_assert_ne!(key_a, key_b, "{} and {} share a key", a, b);
            }
        }
    }
}

/// The collisions from the hostile-input report: each would have let a catalog event
/// overwrite or delete a device.
#[test]
fn the_reported_collisions_are_refused() {
    assert_eq!(
        accepted_device("h#metric_names").as_deref(),
        Some("h#metric_names")
    );
    assert_eq!(accepted_namespace("device:h"), None);
    assert_eq!(
        accepted_device("victim#metric_names").as_deref(),
        Some("victim#metric_names")
    );
    assert_eq!(accepted_namespace("device:victim"), None);
    // The argument needs only this one rule: a namespace that merely contains `device:`
    // is fine.
    assert_eq!(
        accepted_namespace("a:device:h").as_deref(),
        Some("a:device:h")
    );
}
