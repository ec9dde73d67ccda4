//! Rejected events, set aside with their reason. A record is acknowledged (and may be
//! committed past) only once the dead-letter topic has acknowledged its copy, so a bad
//! event never blocks its partition and is never lost either.
//!
//! With dead-lettering switched off, rejected events are counted and logged (at most one
//! line a second) and then acknowledged: the operator chose to drop them.
//!
//! A dead letter never pins its partition. The policy for produce errors:
//!
//! - **Too large** for the producer or the broker (`MSG_SIZE_TOO_LARGE`): the value is cut
//!   to its first [`TRUNCATED_VALUE_BYTES`] bytes and sent again, with
//!   `metacache.truncated: true` and `metacache.original.size: <bytes>` beside the usual
//!   headers. A value already larger than the producer's `message.max.bytes` is cut before
//!   the first try.
//! - **Refused for good** (topic authorization, unknown or invalid topic, still too large):
//!   retried for [`GIVE_UP_AFTER`], then given up: the fact (source topic, partition,
//!   offset, reason, size, never the value) is logged at error level and counted in
//!   `metacache_dead_letters_lost_total`, and the record is acknowledged so its partition
//!   moves on. Readiness says so while it lasts, long before liveness would.
//! - **Anything else** (broker unreachable, timeouts) is retried until it succeeds: that
//!   clears by itself, and nothing is lost meanwhile.
//!
//! What waits for the broker is bounded by bytes ([`MAX_OUTSTANDING_BYTES`]) as well as by
//! count.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;

use crate::model::{Reject, TopicKind};
use crate::pipeline::record::{Ack, Origin, Record};
use crate::pipeline::sink::redis::retry::RetryPolicy;
use crate::pipeline::source::kafka::ProducerLogContext;
use crate::rate_limit::RateLimit;
use crate::stats::Stats;

/// Header names on every dead-lettered record.
pub mod headers {
    pub const REASON: &str = "metacache.reason";
    pub const FIELD: &str = "metacache.field";
    pub const ERROR: &str = "metacache.error";
    pub const SOURCE_TOPIC: &str = "metacache.source.topic";
    pub const SOURCE_PARTITION: &str = "metacache.source.partition";
    pub const SOURCE_OFFSET: &str = "metacache.source.offset";
    pub const TRUNCATED: &str = "metacache.truncated";
    pub const ORIGINAL_SIZE: &str = "metacache.original.size";
}

/// Most dead letters awaiting the broker's acknowledgement at once.
const MAX_OUTSTANDING: usize = 1024;
/// Most bytes (keys and values) of dead letters awaiting the broker at once.
pub const MAX_OUTSTANDING_BYTES: usize = 64 * 1024 * 1024;
/// How much of a value a cut dead letter keeps.
pub const TRUNCATED_VALUE_BYTES: usize = 64 * 1024;
/// How long a produce error that retrying cannot fix is retried before the dead letter is
/// given up (logged and counted, never silently).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// A rejected record on its way to the dead-letter topic.
#[derive(Debug)]
pub struct DeadLetter {
    pub record: Record,
    pub reject: Reject,
}

/// Topic names per source kind.
#[derive(Debug, Clone)]
pub struct Topics {
    pub device_source: String,
    pub metric_source: String,
    pub device_dead_letter: String,
    pub metric_dead_letter: String,
}

impl Topics {
    fn source(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Device => &self.device_source,
            TopicKind::Metric => &self.metric_source,
        }
    }

    fn dead_letter(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Device => &self.device_dead_letter,
            TopicKind::Metric => &self.metric_dead_letter,
        }
    }
}

pub struct DeadLetterStage {
    /// `None` when dead-lettering is switched off.
    producer: Option<FutureProducer<ProducerLogContext>>,
    topics: Arc<Topics>,
    stats: Arc<Stats>,
    acks: flume::Sender<Ack>,
    retry: RetryPolicy,
    /// The producer's `message.max.bytes`.
    max_bytes: usize,
}

impl DeadLetterStage {
    pub fn new(
        producer: Option<FutureProducer<ProducerLogContext>>,
        topics: Topics,
        stats: Arc<Stats>,
        acks: flume::Sender<Ack>,
        retry: RetryPolicy,
        max_bytes: usize,
    ) -> Self {
        DeadLetterStage {
            producer,
            topics: Arc::new(topics),
            stats,
            acks,
            retry,
            max_bytes,
        }
    }

    /// Runs until `incoming` closes and every dead letter is delivered.
    pub async fn run(self, mut incoming: mpsc::Receiver<DeadLetter>) {
        let mut outstanding = FuturesUnordered::new();
        let mut outstanding_bytes = 0usize;
        let mut log = RateLimit::new(Duration::from_secs(1));
        let mut closed = false;
        loop {
            if closed && outstanding.is_empty() {
                break;
            }
            let room = outstanding.len() < MAX_OUTSTANDING
                && (outstanding_bytes < MAX_OUTSTANDING_BYTES || outstanding.is_empty());
            tokio::select! {
                Some((delivered, bytes)) = outstanding.next(), if !outstanding.is_empty() => {
                    outstanding_bytes -= bytes;
                    match delivered {
                        Delivered::Sent(origin) => self.done(origin),
                        Delivered::Lost(origin) => {
                            self.stats.dead_letters_lost.fetch_add(1, Relaxed);
                            self.stats.acknowledged();
                            let _ = self.acks.send(Ack { done: vec![origin] });
                        }
                    }
                }
                received = incoming.recv(), if !closed && room => {
                    let Some(dl) = received else {
                        closed = true;
                        continue;
                    };
                    match &self.producer {
                        None => {
                            if let Some(suppressed) = log.allow() {
                                tracing::warn!(
                                    partition = dl.record.origin.partition,
                                    offset = dl.record.origin.offset,
                                    reject = %dl.reject,
                                    suppressed,
                                    "rejected event dropped (dead-lettering is off)"
                                );
                            }
                            self.done(dl.record.origin);
                        }
                        Some(producer) => {
                            let bytes = dl.record.key().map_or(0, <[u8]>::len)
                                + dl.record.value().map_or(0, <[u8]>::len);
                            outstanding_bytes += bytes;
                            let delivery = deliver(
                                producer.clone(),
                                Arc::clone(&self.topics),
                                self.retry,
                                self.max_bytes,
                                Arc::clone(&self.stats),
                                dl,
                            );
                            outstanding.push(async move { (delivery.await, bytes) });
                        }
                    }
                }
            }
        }
    }

    fn done(&self, origin: Origin) {
        self.stats.acknowledged();
        if self.producer.is_some() {
            self.stats
                .topic(origin.topic)
                .dead_lettered
                .fetch_add(1, Relaxed);
        }
        let _ = self.acks.send(Ack { done: vec![origin] });
    }
}

/// How a dead letter ended.
enum Delivered {
    Sent(Origin),
    /// Refused for good for [`GIVE_UP_AFTER`]: logged and counted, then let go.
    Lost(Origin),
}

/// Produce errors that retrying the same record cannot fix.
fn refused_for_good(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::TopicAuthorizationFailed
                | Code::UnknownTopicOrPartition
                | Code::UnknownTopic
                | Code::InvalidTopic
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
                | Code::ClusterAuthorizationFailed
        )
    )
}

fn too_large(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                | rdkafka::types::RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Produces one dead letter, retrying until the broker acknowledges it, cutting it when it
/// is too large, and giving it up (loudly) when it is refused for good for too long.
async fn deliver(
    producer: FutureProducer<ProducerLogContext>,
    topics: Arc<Topics>,
    retry: RetryPolicy,
    max_bytes: usize,
    stats: Arc<Stats>,
    dl: DeadLetter,
) -> Delivered {
    let origin = dl.record.origin;
    let topic = topics.dead_letter(origin.topic);
    let key_len = dl.record.key().map_or(0, <[u8]>::len);
    let value_len = dl.record.value().map_or(0, <[u8]>::len);
    // Cut at once what the producer would refuse anyway.
    let mut cut = key_len + value_len + crate::config::DEAD_LETTER_OVERHEAD / 2 > max_bytes;
    let mut delays = retry.delays();
    let mut attempts = 0u32;
    let mut refused_since: Option<std::time::Instant> = None;
    loop {
        let mut headers = dead_letter_headers(&dl, topics.source(origin.topic));
        let mut value = dl.record.value();
        if cut {
            let original = value_len.to_string();
            headers = headers
                .insert(Header {
                    key: headers::TRUNCATED,
                    value: Some("true"),
                })
                .insert(Header {
                    key: headers::ORIGINAL_SIZE,
                    value: Some(original.as_str()),
                });
            value = value.map(|v| &v[..v.len().min(TRUNCATED_VALUE_BYTES)]);
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = dl.record.key() {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        match producer.send(record, Timeout::Never).await {
            Ok(_) => {
                stats.dead_letter_error(None);
                if cut {
                    tracing::warn!(
                        topic,
                        source_partition = origin.partition,
                        source_offset = origin.offset,
                        original_bytes = value_len,
                        kept_bytes = value_len.min(TRUNCATED_VALUE_BYTES),
                        "dead letter too large for the producer; sent cut, with metacache.truncated and metacache.original.size"
                    );
                }
                return Delivered::Sent(origin);
            }
            Err((e, _)) => {
                attempts += 1;
                if too_large(&e) && !cut {
                    cut = true;
                    continue;
                }
                let reason = format!("dead-letter topic {topic}: {e}");
                stats.dead_letter_error(Some(&reason));
                if refused_for_good(&e) {
                    let since = *refused_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER {
                        tracing::error!(
                            error = %e,
                            topic,
                            source_topic = topics.source(origin.topic),
                            source_partition = origin.partition,
                            source_offset = origin.offset,
                            reason = dl.reject.reason.as_str(),
                            field = dl.reject.field.as_deref().unwrap_or(""),
                            value_bytes = value_len,
                            "dead letter refused for good; given up after {} s so the partition moves on (counted in metacache_dead_letters_lost_total)",
                            GIVE_UP_AFTER.as_secs()
                        );
                        stats.dead_letter_error(None);
                        return Delivered::Lost(origin);
                    }
                } else {
                    refused_since = None;
                }
                let delay = delays.next().unwrap_or(retry.max);
                // One warning per record; its retries only at debug, or an unreachable
                // dead-letter topic would flood the log with every outstanding record.
                if attempts == 1 {
                    tracing::warn!(error = %e, topic, "dead-letter produce failed; retrying");
                } else {
                    tracing::debug!(error = %e, topic, attempts, "dead-letter produce retry");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The reason and the source coordinates, as headers a consumer of the dead-letter topic
/// can filter on.
pub fn dead_letter_headers(dl: &DeadLetter, source_topic: &str) -> OwnedHeaders {
    let origin = dl.record.origin;
    let error = dl.reject.to_string();
    let partition = origin.partition.to_string();
    let offset = origin.offset.to_string();
    let mut h = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: headers::REASON,
            value: Some(dl.reject.reason.as_str()),
        })
        .insert(Header {
            key: headers::ERROR,
            value: Some(error.as_str()),
        })
        .insert(Header {
            key: headers::SOURCE_TOPIC,
            value: Some(source_topic),
        })
        .insert(Header {
            key: headers::SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: headers::SOURCE_OFFSET,
            value: Some(offset.as_str()),
        });
    if let Some(field) = &dl.reject.field {
        h = h.insert(Header {
            key: headers::FIELD,
            value: Some(field.as_str()),
        });
    }
    h
}
