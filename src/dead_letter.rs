//! Rejected events, set aside with their reason. A record is acknowledged (and may be
//! committed past) only once the dead-letter topic has acknowledged its copy, so a bad
//! event never blocks its partition and is never lost either.
//!
//! With dead-lettering switched off, rejected events are counted and logged (at most one
//! line a second) and then acknowledged: the operator chose to drop them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;

use crate::model::{Reject, TopicKind};
use crate::rate_limit::RateLimit;
use crate::record::{Ack, Origin, Record};
use crate::sink::redis::retry::RetryPolicy;
use crate::source::kafka::ProducerLogContext;
use crate::stats::Stats;

/// Header names on every dead-lettered record.
pub mod headers {
    pub const REASON: &str = "metacache.reason";
    pub const FIELD: &str = "metacache.field";
    pub const ERROR: &str = "metacache.error";
    pub const SOURCE_TOPIC: &str = "metacache.source.topic";
    pub const SOURCE_PARTITION: &str = "metacache.source.partition";
    pub const SOURCE_OFFSET: &str = "metacache.source.offset";
}

/// Most dead letters awaiting the broker's acknowledgement at once.
const MAX_OUTSTANDING: usize = 1024;

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
}

impl DeadLetterStage {
    pub fn new(
        producer: Option<FutureProducer<ProducerLogContext>>,
        topics: Topics,
        stats: Arc<Stats>,
        acks: flume::Sender<Ack>,
        retry: RetryPolicy,
    ) -> Self {
        DeadLetterStage {
            producer,
            topics: Arc::new(topics),
            stats,
            acks,
            retry,
        }
    }

    /// Runs until `incoming` closes and every dead letter is delivered.
    pub async fn run(self, mut incoming: mpsc::Receiver<DeadLetter>) {
        let mut outstanding = FuturesUnordered::new();
        let mut log = RateLimit::new(Duration::from_secs(1));
        let mut closed = false;
        loop {
            if closed && outstanding.is_empty() {
                break;
            }
            tokio::select! {
                Some(origin) = outstanding.next(), if !outstanding.is_empty() => {
                    self.done(origin);
                }
                received = incoming.recv(), if !closed && outstanding.len() < MAX_OUTSTANDING => {
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
                            outstanding.push(deliver(
                                producer.clone(),
                                Arc::clone(&self.topics),
                                self.retry,
                                dl,
                            ));
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

/// Produces one dead letter, retrying until the broker acknowledges it.
async fn deliver(
    producer: FutureProducer<ProducerLogContext>,
    topics: Arc<Topics>,
    retry: RetryPolicy,
    dl: DeadLetter,
) -> Origin {
    let origin = dl.record.origin;
    let headers = dead_letter_headers(&dl, topics.source(origin.topic));
    let topic = topics.dead_letter(origin.topic);
    let mut delays = retry.delays();
    let mut attempts = 0u32;
    loop {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(headers.clone());
        if let Some(key) = dl.record.key() {
            record = record.key(key);
        }
        if let Some(value) = dl.record.value() {
            record = record.payload(value);
        }
        match producer.send(record, Timeout::Never).await {
            Ok(_) => return origin,
            Err((e, _)) => {
                let delay = delays.next().unwrap_or(retry.max);
                attempts += 1;
                // One warning per record; its retries only at debug, or an unreachable
                // dead-letter topic would flood the log with every outstanding record.
                if attempts == 1 {
                    tracing::warn!(error = %e, topic, "dead-letter produce failed; retrying until it succeeds");
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
