//! Publishes a generated stream, all at once or paced over time, and remembers where each
//! record landed (partition, offset), so a test can compute the state a prefix of every
//! partition describes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use tokio::task::JoinHandle;

use super::model::Rec;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    pub partition: i32,
    pub offset: i64,
}

/// A producer that keeps per-key order through broker outages and retries (idempotence).
pub fn ordered_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer")
}

/// A stream being published in the background.
pub struct Feed {
    /// Records delivered so far (acknowledged by the broker).
    pub delivered: Arc<AtomicUsize>,
    handle: JoinHandle<Vec<Landed>>,
}

impl Feed {
    /// Publishes `records` in chunks of `chunk`, waiting `pause` between chunks.
    pub fn start(bootstrap: &str, records: Arc<Vec<Rec>>, chunk: usize, pause: Duration) -> Feed {
        let producer = ordered_producer(bootstrap);
        let delivered = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&delivered);
        let handle = tokio::spawn(async move {
            let mut landed = Vec::with_capacity(records.len());
            for (i, part) in records.chunks(chunk.max(1)).enumerate() {
                if i > 0 && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                landed.extend(publish(&producer, part).await);
                counter.fetch_add(part.len(), Ordering::Relaxed);
            }
            landed
        });
        Feed { delivered, handle }
    }

    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits for the last delivery; returns where every record landed, in stream order.
    pub async fn finish(self) -> Vec<Landed> {
        tokio::time::timeout(Duration::from_secs(180), self.handle)
            .await
            .expect("the feed finishes within 180 s")
            .expect("the feed task did not panic")
    }
}

/// Publishes in order and waits for every delivery.
pub async fn publish(producer: &FutureProducer, records: &[Rec]) -> Vec<Landed> {
    let sends = records.iter().map(|r| {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(r.topic);
        if let Some(k) = &r.key {
            record = record.key(k.as_str());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_str());
        }
        producer.send(record, Timeout::After(Duration::from_secs(120)))
    });
    let landed: Vec<Landed> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| {
            let d = r
                .map_err(|(e, _)| e)
                .expect("delivered to the mock cluster");
            Landed {
                partition: d.partition,
                offset: d.offset,
            }
        })
        .collect();
    assert_in_stream_order(records, &landed);
    assert_nothing_else_landed(records, &landed);
    landed
}

/// The records of one publish call must fill each partition's offsets without a gap. A
/// gap holds a record the test did not publish: a produce request retried after a
/// timeout landed twice (librdkafka's mock cluster deduplicates only transactional
/// producers, not idempotent ones), and the stream Kafka holds then differs from the one
/// the model applies. Say so here, instead of reporting wrong keys as the daemon's.
fn assert_nothing_else_landed(records: &[Rec], landed: &[Landed]) {
    let mut spans: HashMap<(&str, i32), (i64, i64, i64)> = HashMap::new();
    for (r, l) in records.iter().zip(landed) {
        let span = spans
            .entry((r.topic, l.partition))
            .or_insert((l.offset, l.offset, 0));
        span.0 = span.0.min(l.offset);
        span.1 = span.1.max(l.offset);
        span.2 += 1;
    }
    for ((topic, partition), (first, last, count)) in spans {
        assert_eq!(
            last - first + 1,
            count,
            "{topic}[{partition}] holds {} records between offsets {first} and {last} that the test did not publish (a retried produce request landed twice): the model would not describe this stream",
            last - first + 1 - count
        );
    }
}

/// The models apply records in the order they were generated; that is the stream's order
/// only if Kafka holds each key's records in that order. A producer that reordered (a
/// `QueueFull` retry lets a later record overtake an earlier one) would make the model,
/// not the daemon, wrong: say so instead of reporting wrong keys.
fn assert_in_stream_order(records: &[Rec], landed: &[Landed]) {
    let mut last: HashMap<(&str, Option<&str>), (i32, i64)> = HashMap::new();
    for (r, l) in records.iter().zip(landed) {
        let at = (l.partition, l.offset);
        if let Some(before) = last.insert((r.topic, r.key.as_deref()), at) {
            assert!(
                before.0 == at.0 && before.1 < at.1,
                "the producer reordered key {:?} of {}: generated earlier at {before:?}, landed at {at:?}",
                r.key,
                r.topic
            );
        }
    }
}

/// The records at offsets below `committed[(topic, partition)]`, in stream order: what a
/// group that committed those offsets has finished with.
pub fn below<'a>(
    records: &'a [Rec],
    landed: &[Landed],
    committed: &HashMap<(&str, i32), i64>,
) -> Vec<&'a Rec> {
    records
        .iter()
        .zip(landed)
        .filter(|(r, l)| {
            committed
                .get(&(r.topic, l.partition))
                .is_some_and(|c| l.offset < *c)
        })
        .map(|(r, _)| r)
        .collect()
}
