//! The Kafka consumer: polls records, decodes them, hands them to the writer, and commits
//! the offsets the pipeline has finished with.
//!
//! It runs on a thread of its own around librdkafka's `BaseConsumer`, because rebalance
//! callbacks run inside `poll` and must be able to wait (for the in-flight records of the
//! partitions being taken away) without blocking the async writer they wait for.
//!
//! It does nothing per record but copy it into a [`Chunk`]; chunks go to the writer, which
//! decodes them (see [`crate::pipeline::record`] for why).
//!
//! Backpressure: the channel to the writer is bounded. While it is full the thread waits;
//! if it stays full (Redis slow or down) the thread pauses every assigned partition and
//! keeps polling, so the consumer stays in its group however long the outage lasts, and
//! resumes once the writer takes records again. librdkafka's prefetch queue is bounded by
//! `queued.max.messages.kbytes`, so lag never becomes heap.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::offsets::{Offsets, PartitionId};
use super::secret_files::{self, SecretFiles};
use crate::config::KafkaSettings;
use crate::model::TopicKind;
use crate::pipeline::ownership::Ownership;
use crate::pipeline::record::{Ack, Chunk, Origin};
use crate::rate_limit::RateLimit;
use crate::shutdown::Shutdown;
use crate::stats::{PartitionFigures, Stats};

/// How long a full channel is tolerated before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// Poll timeout when idle: short enough that acks and commits stay timely.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest a revoke waits for the writer to drop a connection that may carry records of
/// the revoked partitions (dropping takes no round trip; this only bounds a stuck writer).
const FENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// librdkafka settings both the consumer and the dead-letter producer share: the brokers
/// and the user's passthrough table (SASL, SSL, tuning).
pub fn client_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in kafka.client_properties() {
        config.set(key, value);
    }
    config
}

/// The consumer's settings: ours first, then the passthrough table, then the ones offset
/// tracking depends on, which nothing may override.
pub fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("auto.offset.reset", &kafka.auto_offset_reset)
        .set(
            "queued.max.messages.kbytes",
            kafka.queued_max_messages_kbytes.to_string(),
        )
        // Per partition, librdkafka keeps fetching until it holds this many records. With
        // zstd batches each fetched batch is inflated to several MiB and kept until its last
        // record is consumed, so a deep per-partition minimum is megabytes per partition:
        // 1,000 took 6-8 MiB off a 1M-event drain (8 partitions) at the same throughput.
        .set("queued.min.messages", "1000")
        // When the prefetch queue is above its bounds librdkafka postpones the next fetch
        // by this much (default 1 s): with bounded queues that stalled consumption for a
        // second at a time. Retry soon instead.
        .set("fetch.queue.backoff.ms", "10")
        // Per-partition lag and broker state for /stats, /metrics and /readyz.
        .set("statistics.interval.ms", "1000");
    for (key, value) in kafka.client_properties() {
        config.set(key, value);
    }
    config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

/// Hands the whole consumer and producer configurations to librdkafka without
/// connecting. Settings validation already tried each `kafka.client` property on its own
/// and reported every refusal; this is the last guard before a client is built, and stops
/// at the first refusal. The message names the property but never its value, which may
/// be a secret under a misspelt key.
pub fn check_client_properties(kafka: &KafkaSettings) -> Result<(), String> {
    for config in [consumer_config(kafka), client_config(kafka)] {
        if let Err(e) = config.create_native_config() {
            return Err(match e {
                KafkaError::ClientConfig(_, description, key, _) => {
                    format!(
                        "configuration has 1 problem(s):\n  - kafka.client.{key}: {description}"
                    )
                }
                other => format!("kafka.client: {other}"),
            });
        }
    }
    Ok(())
}

/// Topic names, and which kind each carries.
#[derive(Debug, Clone)]
pub struct TopicNames {
    pub device: String,
    pub metric: String,
}

impl TopicNames {
    fn kind(&self, topic: &str) -> Option<TopicKind> {
        if topic == self.device {
            Some(TopicKind::Device)
        } else if topic == self.metric {
            Some(TopicKind::Metric)
        } else {
            None
        }
    }

    fn name(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Device => &self.device,
            TopicKind::Metric => &self.metric,
        }
    }
}

/// State shared by the poll loop and the rebalance callbacks (which run inside `poll`, on
/// the same thread: the lock is never contended, it only satisfies the borrow rules).
struct SourceState {
    offsets: Offsets,
    /// The chunk being filled.
    filling: Chunk,
    /// Records per chunk.
    chunk_records: usize,
    /// Full chunks waiting for room in the channel, in consumption order.
    stash: VecDeque<Chunk>,
    paused: bool,
}

impl SourceState {
    /// Queues the chunk being filled behind the stash.
    fn seal(&mut self) {
        if !self.filling.is_empty() {
            let next = Chunk::with_capacity(self.chunk_records);
            let chunk = std::mem::replace(&mut self.filling, next);
            self.stash.push_back(chunk);
        }
    }

    fn dispatched(&mut self, chunk: &Chunk) {
        self.offsets
            .dispatched_all(chunk.entries().iter().map(|e| &e.origin));
    }

    /// The generation a record just consumed belongs to. A record below one consumed
    /// before in this generation means librdkafka rewound the partition (an offset reset):
    /// the partition starts a new generation there, so whatever of the old one is still
    /// pending is dropped by the writer and never counts, instead of a watermark that
    /// would stick.
    fn stamp(&mut self, ownership: &Ownership, id: PartitionId, offset: i64) -> u64 {
        if let Some(progress) = self.offsets.get_mut(&id) {
            let first = progress.consumed_nothing();
            let expected = progress.consumed_next();
            if progress.consumed(offset) {
                if expected.is_some_and(|e| offset > e) {
                    // Compaction and transaction markers leave gaps; anything else would
                    // be records never delivered.
                    tracing::debug!(
                        topic = ?id.0,
                        partition = id.1,
                        offset,
                        expected,
                        "a gap in the partition's offsets"
                    );
                }
                if first {
                    // Where an assignment really starts: set against the watermark the
                    // last revoke committed, it shows a skip or a replay at a glance.
                    tracing::info!(
                        topic = ?id.0,
                        partition = id.1,
                        offset,
                        generation = progress.generation(),
                        "first record of the assignment"
                    );
                }
                return progress.generation();
            }
            tracing::warn!(
                topic = ?id.0,
                partition = id.1,
                offset,
                "the partition was rewound (offset reset?); records in flight from before are dropped and the partition continues from here"
            );
        }
        // Rewound, or a partition nobody told us about: a generation of its own.
        if self.offsets.get(&id).is_none() {
            // Not expected (librdkafka delivers only assigned partitions); logged so a
            // record delivered after its partition's revoke shows up in an investigation.
            tracing::warn!(
                topic = ?id.0,
                partition = id.1,
                offset,
                "a record of a partition not assigned here; taken under a generation of its own"
            );
        }
        let generation = ownership.assign(id);
        self.offsets.restart(id, generation);
        if let Some(progress) = self.offsets.get_mut(&id) {
            progress.consumed(offset);
        }
        generation
    }
}

pub struct SourceContext {
    state: Mutex<SourceState>,
    acks: flume::Receiver<Ack>,
    topics: TopicNames,
    stats: Arc<Stats>,
    /// Longest a revoke waits for the in-flight records of the revoked partitions.
    drain_timeout: Duration,
    error_log: Mutex<RateLimit>,
    /// Set once shutdown gave up waiting: the revoke that closing the consumer triggers
    /// must not wait a second time.
    closing: AtomicBool,
    ownership: Arc<Ownership>,
}

impl SourceContext {
    fn state(&self) -> MutexGuard<'_, SourceState> {
        // A panic while holding the lock would already have ended this thread.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_acks(&self, state: &mut SourceState) {
        while let Ok(ack) = self.acks.try_recv() {
            apply(&mut state.offsets, ack);
        }
    }

    /// Waits until `busy` says no record of interest is in flight, or until `deadline`,
    /// answering the writer's ownership proofs meanwhile (it may need one to finish).
    fn drain_until(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        deadline: Instant,
        busy: impl Fn(&Offsets) -> bool,
    ) -> bool {
        loop {
            self.serve_proof(consumer);
            {
                let mut state = self.state();
                self.apply_acks(&mut state);
                if !busy(&state.offsets) {
                    return true;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if let Ok(ack) = self.acks.recv_timeout((deadline - now).min(POLL_INTERVAL)) {
                apply(&mut self.state().offsets, ack);
            }
        }
    }

    /// Commits every watermark that moved (all of them with `all`), for `only` partitions
    /// if given.
    fn commit(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        mode: CommitMode,
        only: Option<&[PartitionId]>,
    ) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut state = self.state();
            self.apply_acks(&mut state);
            for (id, progress) in state.offsets.iter_mut() {
                if only.is_some_and(|ids| !ids.contains(id)) {
                    continue;
                }
                let Some(offset) = progress.to_commit() else {
                    continue;
                };
                if tpl
                    .add_partition_offset(self.topics.name(id.0), id.1, Offset::Offset(offset))
                    .is_ok()
                {
                    progress.mark_committed(offset);
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Relaxed);
                if tracing::enabled!(tracing::Level::DEBUG) {
                    tracing::debug!(offsets = ?listed(&tpl), ?mode, "offsets committed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; will retry");
                self.forget_commits(&tpl);
            }
        }
    }

    /// Answers the writer's request for a proof of ownership (see
    /// [`Ownership::request_proof`]): a synchronous commit of the watermark of every
    /// partition owned and consumed from, which the coordinator accepts only from a member
    /// of the group's current generation. A member that was evicted hears
    /// `UNKNOWN_MEMBER_ID` or `ILLEGAL_GENERATION`, and librdkafka then revokes its
    /// assignment as lost. Nothing consumed means nothing of this member's to write.
    fn serve_proof(&self, consumer: &BaseConsumer<SourceContext>) {
        let Some(ticket) = self.ownership.proof_requested() else {
            return;
        };
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        let mut marks = Vec::new();
        {
            let mut state = self.state();
            self.apply_acks(&mut state);
            for (id, progress) in state.offsets.iter() {
                if self.ownership.generation(*id) != Some(progress.generation()) {
                    continue;
                }
                let Some(offset) = progress.watermark() else {
                    continue;
                };
                if tpl
                    .add_partition_offset(self.topics.name(id.0), id.1, Offset::Offset(offset))
                    .is_ok()
                {
                    marks.push((*id, offset));
                }
            }
        }
        let outcome = if tpl.count() == 0 {
            Ok(())
        } else {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| e.to_string())
        };
        match &outcome {
            Ok(()) => {
                let mut state = self.state();
                for (id, offset) in marks {
                    if let Some(p) = state.offsets.get_mut(&id) {
                        p.mark_committed(offset);
                    }
                }
                self.stats.ownership_proofs.fetch_add(1, Relaxed);
                tracing::info!(
                    partitions = tpl.count(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "ownership proven for a new Redis connection (the coordinator took a commit of this generation)"
                );
            }
            Err(reason) => {
                self.stats.ownership_refused.fetch_add(1, Relaxed);
                tracing::warn!(
                    %reason,
                    partitions = tpl.count(),
                    "cannot prove this member still owns its partitions: the writer does not write until it can, or until they are revoked"
                );
            }
        }
        self.ownership.answer_proof(ticket, outcome);
    }

    /// Compares what this source believes committed with what librdkafka last saw the
    /// coordinator acknowledge (see [`PartitionProgress::reconcile`]); a commit that
    /// failed in silence is sent again at the next round.
    ///
    /// [`PartitionProgress::reconcile`]: super::offsets::PartitionProgress::reconcile
    fn reconcile_commits(
        &self,
        figures: &std::collections::BTreeMap<(String, i32), PartitionFigures>,
    ) {
        let mut again = 0usize;
        {
            let mut state = self.state();
            for ((topic, partition), f) in figures {
                let Some(kind) = self.topics.kind(topic) else {
                    continue;
                };
                if let Some(p) = state.offsets.get_mut(&(kind, *partition)) {
                    again += usize::from(p.reconcile(f.committed));
                }
            }
        }
        if again > 0 {
            tracing::debug!(
                partitions = again,
                "commits not acknowledged by the coordinator; committing again"
            );
        }
    }

    fn forget_commits(&self, tpl: &TopicPartitionList) {
        let mut state = self.state();
        for elem in tpl.elements() {
            if let Some(kind) = self.topics.kind(elem.topic()) {
                if let Some(p) = state.offsets.get_mut(&(kind, elem.partition())) {
                    p.commit_failed();
                }
            }
        }
    }

    fn ids(&self, tpl: &TopicPartitionList) -> Vec<PartitionId> {
        tpl.elements()
            .iter()
            .filter_map(|e| self.topics.kind(e.topic()).map(|k| (k, e.partition())))
            .collect()
    }
}

/// `topic/partition@offset` of each element, for debug logs.
fn listed(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
        .collect()
}

fn apply(offsets: &mut Offsets, ack: Ack) {
    offsets.done_all(ack.done);
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.error_log, error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): broker states and, per
    /// assigned partition, the committed offset, high watermark and lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .count();
        self.stats.kafka_brokers_up.store(up as u64, Relaxed);
        self.stats.kafka_stats_seen.store(true, Relaxed);
        let mut figures = std::collections::BTreeMap::new();
        for (name, topic) in &statistics.topics {
            if self.topics.kind(name).is_none() {
                continue;
            }
            for (id, p) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; only report ours.
                if *id < 0 || p.fetch_state == "none" {
                    continue;
                }
                figures.insert(
                    (name.clone(), *id),
                    PartitionFigures {
                        committed: p.committed_offset,
                        high_watermark: p.hi_offset,
                        lag: p.consumer_lag.max(0),
                    },
                );
            }
        }
        self.reconcile_commits(&figures);
        if let Ok(mut partitions) = self.stats.partitions.lock() {
            *partitions = figures;
        }
    }
}

/// Client errors (a broker unreachable) repeat every few milliseconds while they last:
/// one line every five seconds is enough to see them.
fn log_client_error(limit: &Mutex<RateLimit>, error: KafkaError, reason: &str) {
    let allowed = limit.lock().map(|mut l| l.allow()).unwrap_or(Some(0));
    if let Some(suppressed) = allowed {
        tracing::warn!(error = %error, reason, suppressed, "kafka client error");
    }
}

impl ConsumerContext for SourceContext {
    /// Before partitions are taken away: wait for their in-flight records, then commit
    /// their watermarks, so the next owner starts where this one really stopped.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        // Before anything else: records still queued for the revoked partitions must not be
        // decided on knowledge from this assignment.
        self.ownership.rebalancing();
        let revoked = self.ids(tpl);
        {
            let mut state = self.state();
            let keep = |e: &crate::pipeline::record::Entry| {
                !revoked.contains(&(e.origin.topic, e.origin.partition))
            };
            state.filling.retain(keep);
            for chunk in state.stash.iter_mut() {
                chunk.retain(keep);
            }
            state.stash.retain(|c| !c.is_empty());
        }
        // A lost assignment (evicted: frozen or cut off past the session timeout) already
        // belongs to another member, which may be writing it now: nothing of it may be
        // sent, replayed or retried from here on, so there is no drain to wait for.
        let lost = consumer.assignment_lost();
        let wait = if self.closing.load(Relaxed) || lost {
            Duration::ZERO
        } else {
            self.drain_timeout
        };
        let deadline = Instant::now() + wait;
        let drained = self.drain_until(consumer, deadline, |offsets| {
            revoked
                .iter()
                .any(|id| offsets.get(id).is_some_and(|p| p.in_flight() > 0))
        });
        // From here on the writer drops whatever of these partitions it still holds, and
        // their acknowledgements no longer count.
        self.ownership.revoke(&revoked);
        if !drained {
            if !wait.is_zero() {
                tracing::warn!(
                    "revoked partitions still had records in flight after {:?}; they are dropped and the next owner replays them",
                    self.drain_timeout
                );
            } else if lost {
                tracing::warn!(
                    partitions = revoked.len(),
                    "the assignment was lost with records in flight: they are dropped unacknowledged at once, and the next owner replays them"
                );
            }
            // Some of them may be on a connection to Redis: the writer drops it before
            // the next owner may start, so they cannot land after its writes.
            let ticket = self.ownership.request_fence();
            if !self.ownership.wait_fenced(ticket, FENCE_TIMEOUT) {
                tracing::error!(
                    timeout_ms = FENCE_TIMEOUT.as_millis() as u64,
                    "the writer did not confirm dropping its Redis connection in time; writes of the revoked partitions may still land"
                );
            }
        }
        if lost {
            // The coordinator already gave these partitions up (the session timed out):
            // a commit would only fail, after blocking this thread until the coordinator
            // answers, which delays the rejoin by seconds. The next owner resumes from
            // the last acknowledged commit and replays the rest.
            tracing::warn!(
                "the assignment was lost (the group session timed out): not committing; the partitions resume from their last acknowledged commit"
            );
        } else {
            self.commit(consumer, CommitMode::Sync, Some(&revoked));
        }
        let mut state = self.state();
        for id in &revoked {
            if let Some(progress) = state.offsets.revoke(id) {
                tracing::info!(
                    topic = ?id.0,
                    partition = id.1,
                    watermark = progress.watermark(),
                    committed = progress.committed(),
                    in_flight = progress.in_flight(),
                    "partition revoked"
                );
            }
        }
        let assigned = state.offsets.iter().count();
        self.stats.kafka_assigned.store(assigned as u64, Relaxed);
        tracing::info!(partitions = revoked.len(), "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.ownership.rebalancing();
                let ids = self.ids(tpl);
                let paused = {
                    let mut state = self.state();
                    for id in &ids {
                        let generation = self.ownership.assign(*id);
                        state.offsets.assign(*id, generation);
                    }
                    let assigned = state.offsets.iter().count();
                    self.stats.kafka_assigned.store(assigned as u64, Relaxed);
                    self.stats.rebalances.fetch_add(1, Relaxed);
                    state.paused
                };
                if paused {
                    if let Err(e) = consumer.pause(tpl) {
                        tracing::warn!(error = %e, "could not pause newly assigned partitions");
                    }
                }
                tracing::info!(partitions = ids.len(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(ok = result.is_ok(), offsets = ?listed(offsets), "commit answered");
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; will retry");
            self.forget_commits(offsets);
        }
    }
}

/// The dead-letter producer's context: it shares the user's passthrough table with the
/// consumer, so librdkafka's "consumer property ignored by this producer" warnings are
/// expected there and demoted to debug.
pub struct ProducerLogContext {
    error_log: Mutex<RateLimit>,
}

impl Default for ProducerLogContext {
    fn default() -> Self {
        ProducerLogContext {
            error_log: Mutex::new(RateLimit::new(Duration::from_secs(5))),
        }
    }
}

impl ClientContext for ProducerLogContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.error_log, error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "CONFWARN" {
            tracing::debug!(target: "librdkafka", fac, "{message}");
        } else {
            log_librdkafka(level, fac, message);
        }
    }
}

/// librdkafka's own log lines, at the matching tracing level.
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// What the source reports when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceReport {
    /// Records handed to the pipeline but not acknowledged by the deadline: they were not
    /// committed and will be replayed.
    pub unacknowledged: usize,
}

/// The consumer thread's side of the pipeline.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    records: Option<flume::Sender<Chunk>>,
    /// Records per chunk.
    chunk_records: usize,
    shutdown: Shutdown,
    commit_interval: Duration,
    shutdown_timeout: Duration,
    /// `kafka.client_files`, watched for rotated SASL credentials.
    secrets: Option<SecretFiles>,
    /// The dead-letter producer, which gets rotated credentials too.
    producer: Option<FutureProducer<ProducerLogContext>>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to both topics.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kafka: &KafkaSettings,
        stats: Arc<Stats>,
        shutdown: Shutdown,
        records: flume::Sender<Chunk>,
        acks: flume::Receiver<Ack>,
        ownership: Arc<Ownership>,
        chunk_records: usize,
        shutdown_timeout: Duration,
    ) -> KafkaResult<Self> {
        let topics = TopicNames {
            device: kafka.device_topic.clone(),
            metric: kafka.metric_topic.clone(),
        };
        let context = SourceContext {
            state: Mutex::new(SourceState {
                offsets: Offsets::default(),
                filling: Chunk::with_capacity(chunk_records),
                chunk_records,
                stash: VecDeque::new(),
                paused: false,
            }),
            acks,
            topics,
            stats,
            drain_timeout: shutdown_timeout.min(Duration::from_secs(15)),
            closing: AtomicBool::new(false),
            ownership,
            error_log: Mutex::new(RateLimit::new(Duration::from_secs(5))),
        };
        let consumer: BaseConsumer<SourceContext> =
            consumer_config(kafka).create_with_context(context)?;
        consumer.subscribe(&[&kafka.device_topic, &kafka.metric_topic])?;
        Ok(KafkaSource {
            consumer,
            records: Some(records),
            chunk_records,
            shutdown,
            commit_interval: Duration::from_millis(kafka.commit_interval_ms),
            shutdown_timeout,
            secrets: SecretFiles::new(kafka),
            producer: None,
        })
    }

    /// The dead-letter producer, to hand rotated SASL credentials to as well.
    pub fn with_producer(mut self, producer: Option<FutureProducer<ProducerLogContext>>) -> Self {
        self.producer = producer;
        self
    }

    /// Applies rotated SASL credentials from `kafka.client_files` to the consumer and the
    /// dead-letter producer (see [`super::secret_files`]).
    fn rotate_credentials(&mut self, now: Instant) {
        let Some(credentials) = self.secrets.as_mut().and_then(|s| s.poll(now)) else {
            return;
        };
        let mut result = secret_files::apply(self.consumer.client(), &credentials);
        if let (Ok(()), Some(producer)) = (&result, &self.producer) {
            result = secret_files::apply(producer.client(), &credentials);
        }
        match result {
            Ok(()) => {
                self.ctx()
                    .stats
                    .kafka_credentials_applied
                    .fetch_add(1, Relaxed);
                tracing::info!(username = %credentials.username,
                    "kafka.client_files: rotated SASL credentials handed to librdkafka; used from the next authentication");
            }
            Err(reason) => {
                tracing::error!(%reason, "kafka.client_files: librdkafka refused the rotated SASL credentials")
            }
        }
    }

    fn ctx(&self) -> &SourceContext {
        self.consumer.context()
    }

    /// The poll loop; returns after shutdown, once in-flight records are acknowledged (or
    /// the shutdown timeout passed) and the watermarks are committed.
    pub fn run(mut self) -> SourceReport {
        let mut last_commit = Instant::now();
        let mut last_pending = Instant::now();
        let mut blocked_since: Option<Instant> = None;
        let mut last_poll_error: Option<Instant> = None;
        while !self.shutdown.is_cancelled() {
            let now = Instant::now();
            self.rotate_credentials(now);
            if now.duration_since(last_pending) >= Duration::from_millis(200) {
                let pending = self.ctx().state().offsets.in_flight();
                self.ctx()
                    .stats
                    .pending_records
                    .store(pending as u64, Relaxed);
                last_pending = now;
            }
            if now.duration_since(last_commit) >= self.commit_interval {
                self.ctx().commit(&self.consumer, CommitMode::Async, None);
                last_commit = now;
            }
            let Some(records) = self.records.as_ref() else {
                break;
            };
            match self.flush_stash(records) {
                Flush::Empty => {
                    blocked_since = None;
                    if self.ctx().state().paused {
                        self.set_paused(false);
                    }
                }
                Flush::Full => {
                    let since = *blocked_since.get_or_insert(now);
                    let paused = self.ctx().state().paused;
                    if !paused && now.duration_since(since) >= PAUSE_AFTER {
                        self.set_paused(true);
                    } else if !paused {
                        self.wait_for_room(records);
                        continue;
                    }
                }
                Flush::WriterGone => {
                    tracing::error!("the writer stopped; shutting down");
                    self.shutdown.cancel();
                    break;
                }
            }
            self.fill(&mut last_poll_error);
            self.ctx().serve_proof(&self.consumer);
            let mut state = self.ctx().state();
            self.ctx().apply_acks(&mut state);
        }
        self.finish()
    }

    /// Polls until the chunk is full or librdkafka has nothing ready, then queues the
    /// chunk: waiting only when there is nothing to send keeps latency at one poll.
    fn fill(&self, last_poll_error: &mut Option<Instant>) {
        let ctx = self.ctx();
        let mut consumed = [0u64; 2];
        // Wait in `poll` only while the chunk is empty. Kept here rather than read under
        // the lock each time: if a rebalance callback empties the chunk meanwhile, the
        // next poll merely does not wait (and the run loop comes straight back here).
        let mut waiting = ctx.state().filling.is_empty();
        loop {
            let timeout = if waiting {
                POLL_INTERVAL
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => {
                    let topic = message.topic();
                    // Only the two configured topics are subscribed, so every record
                    // maps to a kind.
                    let kind = ctx.topics.kind(topic).unwrap_or(TopicKind::Device);
                    consumed[kind as usize] += 1;
                    waiting = false;
                    let mut state = ctx.state();
                    let (partition, offset) = (message.partition(), message.offset());
                    let generation = state.stamp(&ctx.ownership, (kind, partition), offset);
                    let origin = Origin {
                        topic: kind,
                        partition,
                        offset,
                        generation,
                    };
                    state.filling.push(
                        origin,
                        ctx.ownership.epoch(),
                        message.key(),
                        message.payload(),
                    );
                    if state.filling.is_full(self.chunk_records) {
                        break;
                    }
                }
                Some(Err(e)) => {
                    if last_poll_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "kafka poll error");
                        *last_poll_error = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        for kind in [TopicKind::Device, TopicKind::Metric] {
            if consumed[kind as usize] > 0 {
                ctx.stats
                    .topic(kind)
                    .consumed
                    .fetch_add(consumed[kind as usize], Relaxed);
            }
        }
        ctx.state().seal();
    }

    fn flush_stash(&self, records: &flume::Sender<Chunk>) -> Flush {
        let mut state = self.ctx().state();
        while let Some(chunk) = state.stash.pop_front() {
            state.dispatched(&chunk);
            match records.try_send(chunk) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(chunk)) => {
                    undispatch(&mut state, &chunk);
                    state.stash.push_front(chunk);
                    return Flush::Full;
                }
                Err(flume::TrySendError::Disconnected(chunk)) => {
                    undispatch(&mut state, &chunk);
                    state.stash.push_front(chunk);
                    return Flush::WriterGone;
                }
            }
        }
        Flush::Empty
    }

    /// Blocks briefly for room in the channel (without polling, which is fine for the
    /// short waits before a pause).
    fn wait_for_room(&self, records: &flume::Sender<Chunk>) {
        let Some(chunk) = self.ctx().state().stash.pop_front() else {
            return;
        };
        // Marked before the send: once sent, the writer may acknowledge it at any time.
        self.ctx().state().dispatched(&chunk);
        match records.send_timeout(chunk, Duration::from_millis(20)) {
            Ok(()) => {}
            Err(flume::SendTimeoutError::Timeout(chunk))
            | Err(flume::SendTimeoutError::Disconnected(chunk)) => {
                let mut state = self.ctx().state();
                undispatch(&mut state, &chunk);
                state.stash.push_front(chunk);
            }
        }
        let mut state = self.ctx().state();
        self.ctx().apply_acks(&mut state);
    }

    fn set_paused(&self, paused: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment to pause/resume");
                return;
            }
        };
        let result = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                self.ctx().state().paused = paused;
                self.ctx().stats.paused.store(paused, Relaxed);
                if paused {
                    tracing::warn!(
                        partitions = assignment.count(),
                        "writer is not keeping up (Redis slow or down): partitions paused, still polling to stay in the group"
                    );
                } else {
                    tracing::info!(partitions = assignment.count(), "partitions resumed");
                }
            }
            Err(e) => tracing::warn!(error = %e, paused, "pause/resume failed"),
        }
    }

    /// Stops fetching, waits for what is in flight, commits, leaves the group.
    fn finish(mut self) -> SourceReport {
        if let Ok(assignment) = self.consumer.assignment() {
            let _ = self.consumer.pause(&assignment);
        }
        {
            let mut state = self.ctx().state();
            state.stash.clear();
            state.filling = Chunk::new();
        }
        // Closing the channel tells the writer to flush what it holds and finish.
        self.records = None;
        let deadline = Instant::now() + self.shutdown_timeout;
        loop {
            let drained =
                self.ctx()
                    .drain_until(&self.consumer, Instant::now() + POLL_INTERVAL, |o| {
                        o.in_flight() > 0
                    });
            if drained || Instant::now() >= deadline {
                break;
            }
            // Serve callbacks (commit results, a rebalance) while waiting.
            let _ = self.consumer.poll(Duration::ZERO);
        }
        self.ctx().commit(&self.consumer, CommitMode::Sync, None);
        self.ctx().closing.store(true, Relaxed);
        let unacknowledged = self.ctx().state().offsets.in_flight();
        if unacknowledged > 0 {
            tracing::warn!(
                unacknowledged,
                "shutdown timeout reached with records unacknowledged; they will be replayed"
            );
        } else {
            tracing::info!("all records acknowledged and committed");
        }
        self.consumer.unsubscribe();
        SourceReport { unacknowledged }
    }
}

enum Flush {
    Empty,
    Full,
    WriterGone,
}

/// Takes back the dispatch marks of a chunk that could not be sent after all.
fn undispatch(state: &mut SourceState, chunk: &Chunk) {
    for entry in chunk.entries().iter().rev() {
        state.offsets.undispatched(&entry.origin);
    }
}
