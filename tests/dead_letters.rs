//! A dead letter never pins its partition: an event too large for the dead-letter
//! producer is dead-lettered cut, with headers saying so, and the events after it on the
//! same partition are written and committed.

mod support;

use std::time::Duration;

use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::Message;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_rejected_events_are_dead_lettered_cut_and_the_partition_moves_on() {
    let h = Harness::start(1);
    let settings = h.settings();
    let group = settings.kafka.group_id.clone();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.kafka.bootstrap())
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    // About 1 MB of broken JSON: under limits.max_message_bytes, over librdkafka's
    // default message.max.bytes (1,000,000) that the dead-letter producer used to have.
    let broken = format!(
        "{{\"device_id\":\"big\",\"pad\":\"{}",
        "x".repeat(1_010_000)
    );
    // Over the limit: rejected as too_large, and too large to dead-letter whole.
    let huge = format!(
        "{{\"device_id\":\"big\",\"pad\":\"{}\"}}",
        "y".repeat(1_200_000)
    );
    for value in [&broken, &huge] {
        producer
            .send(
                FutureRecord::to(DEVICES).key("big").payload(value.as_str()),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .expect("the big event is on the topic");
    }
    let after = device_json("big", "temperature", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("big"), Some(after.as_str()))])
        .await;
    let metric = r#"{"op":"add","namespace":"n","metric_names":["m"]}"#;
    h.produce(METRICS, &[(Some("n"), Some(metric))]).await;

    let daemon = h.start_daemon(settings);
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    let stored: Option<String> = redis::Commands::get(&mut h.redis(), "device:big").unwrap();
    assert!(stored.is_some(), "the event after the big ones was written");
    daemon.stop().await.expect("clean stop: nothing pinned");

    let dead = h.read_topic("device-metadata.dlq", 2, Duration::from_secs(20));
    assert_eq!(dead.len(), 2, "both big events were dead-lettered");
    let huge_letter = dead
        .iter()
        .find(|m| header(m, "metacache.reason").as_deref() == Some("too_large"))
        .expect("the too_large one");
    assert_eq!(
        header(huge_letter, "metacache.truncated").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(huge_letter, "metacache.original.size").as_deref(),
        Some(huge.len().to_string().as_str())
    );
    let kept = huge_letter.payload().map_or(0, <[u8]>::len);
    assert_eq!(
        kept,
        metacache::pipeline::dead_letter::TRUNCATED_VALUE_BYTES
    );
    assert!(huge
        .as_bytes()
        .starts_with(huge_letter.payload().unwrap_or_default()));
    let broken_letter = dead
        .iter()
        .find(|m| header(m, "metacache.reason").as_deref() == Some("invalid_json"))
        .expect("the invalid_json one");
    // Either whole, or cut with the headers that say so: never lost, never stuck.
    let whole = broken_letter.payload().map_or(0, <[u8]>::len) == broken.len();
    let cut = header(broken_letter, "metacache.truncated").as_deref() == Some("true");
    assert!(
        whole || cut,
        "the broken event's dead letter is whole or marked cut"
    );
}
