//! The event decoder on arbitrary bytes: the first byte picks the topic and whether
//! there is a key and a payload, the rest is split between them. It must never panic,
//! and an accepted device must come back from its own stored form unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metacache_contract::model::{self, Event, Limits, TopicKind};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let kind = if head & 1 == 0 {
        TopicKind::Device
    } else {
        TopicKind::Metric
    };
    let split = usize::from(head >> 2).min(rest.len());
    let (key, payload) = rest.split_at(split);
    let key = (head & 2 == 0).then_some(key);
    let payload = (!payload.is_empty() || head & 2 == 0).then_some(payload);
    let limits = Limits::default();
    if let Ok(Event::DeviceUpsert(d)) = model::decode(kind, key, payload, &limits) {
        let again = model::DeviceMetadata::from_normalized_json(d.normalized_json())
            .expect("a stored device reads back");
        assert_eq!(again.device_id, d.device_id());
    }
    let _ = model::decode_value(kind, rest, &limits);
});
