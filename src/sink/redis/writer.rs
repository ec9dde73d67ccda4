//! The pipelined writer: batches records, sends each batch as one pipeline, keeps several
//! pipelines in flight on one multiplexed connection, and acknowledges records only once
//! Redis has answered for them.
//!
//! Order is the subtle part. Pipelines are handed to the connection in batch order from
//! this one task, and Redis answers one connection in order, so per-key order holds. When
//! a batch fails with a transient error, the batches sent after it may or may not have been
//! applied; the writer then waits for all of them to settle and re-sends the failed batch
//! and every later one, in order ("go back N"). Every command metacache sends is idempotent
//! when a suffix of the stream is replayed in order (the stale guard for devices, set
//! semantics for metric names), so the replay converges to the state the stream describes.
//! Nothing is acknowledged until its own successful reply, so a crash at any point only
//! means a replay from the last committed offsets.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisError, RedisResult, Value};
use tokio::sync::mpsc;

use super::connect::load_scripts;
use super::plan::{Expect, PlanInput, Planned, Planner};
use super::retry::RetryPolicy;
use super::versions::KnownVersions;
use crate::dead_letter::DeadLetter;
use crate::model::{Event, Limits, Reject, RejectReason, TopicKind};
use crate::record::{Ack, AssignmentEpoch, Chunk, Record};
use crate::stats::Stats;

/// Batching and retry knobs, from `[writer]`.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub max_batch: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
}

type Replies = RedisResult<Vec<RedisResult<Value>>>;
type Flight = Pin<Box<dyn Future<Output = Replies> + Send>>;

/// One pipeline's worth of records and the commands planned for them.
struct Batch {
    records: Vec<Record>,
    planned: Vec<Planned>,
    pipe: Arc<Pipeline>,
    events: u64,
    /// The assignment epoch whose records could be decided locally; `None` when every
    /// device went through the guard.
    trust: Option<u64>,
    /// Some device was written without the guard.
    unguarded: bool,
    /// When it was last handed to the connection: what its writes can have done is no
    /// older than this (a device key's TTL runs from when Redis ran the command).
    sent_at: Instant,
}

/// What a batch's replies say as a whole.
enum Verdict {
    /// Every command answered; per-event outcomes can be read.
    Answered(Vec<RedisResult<Value>>),
    /// Something transient went wrong: retry this batch (and everything after it).
    Retry {
        reason: String,
        reload_scripts: bool,
    },
}

pub struct Writer<C> {
    conn: C,
    planner: Planner,
    config: WriterConfig,
    versions: KnownVersions,
    epoch: Arc<AssignmentEpoch>,
    limits: Limits,
    stats: Arc<Stats>,
    acks: flume::Sender<Ack>,
    dead_letters: mpsc::Sender<DeadLetter>,
}

impl<C> Writer<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conn: C,
        planner: Planner,
        config: WriterConfig,
        versions: KnownVersions,
        epoch: Arc<AssignmentEpoch>,
        limits: Limits,
        stats: Arc<Stats>,
        acks: flume::Sender<Ack>,
        dead_letters: mpsc::Sender<DeadLetter>,
    ) -> Self {
        Writer {
            conn,
            planner,
            config,
            versions,
            epoch,
            limits,
            stats,
            acks,
            dead_letters,
        }
    }

    /// Runs until `records` is closed and everything received is acknowledged.
    pub async fn run(mut self, records: flume::Receiver<Chunk>) {
        let max_batch = self.config.max_batch.max(1);
        let max_in_flight = self.config.max_in_flight.max(1);
        let mut pending: Vec<Record> = Vec::with_capacity(max_batch);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut sent: VecDeque<Batch> = VecDeque::new();
        let mut flights: FuturesOrdered<Flight> = FuturesOrdered::new();
        let mut closed = false;

        loop {
            let room = sent.len() < max_in_flight;
            // A batch goes when it is full, when it has lingered long enough, or at once if
            // nothing is in flight: an idle connection gains nothing from waiting, and the
            // events arriving during one round trip make the next batch (under load the
            // batches fill before the linger, so throughput keeps its big pipelines).
            let due = closed
                || pending.len() >= max_batch
                || sent.is_empty()
                || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if room && !pending.is_empty() && due {
                let records = if pending.len() > max_batch {
                    pending.drain(..max_batch).collect()
                } else {
                    std::mem::replace(&mut pending, Vec::with_capacity(max_batch))
                };
                let mut batch = self.build(records);
                // What a chunk brought beyond a full batch waits for companions as usual.
                deadline =
                    (!pending.is_empty()).then(|| tokio::time::Instant::now() + self.config.linger);
                batch.sent_at = Instant::now();
                flights.push_back(self.send(&batch));
                self.stats.in_flight.store(sent.len() as u64 + 1, Relaxed);
                sent.push_back(batch);
                continue;
            }
            if closed && pending.is_empty() && sent.is_empty() {
                break;
            }
            let linger_wait = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(replies) = flights.next(), if !sent.is_empty() => {
                    match self.judge(replies) {
                        Verdict::Answered(replies) => {
                            if let Some(batch) = sent.pop_front() {
                                self.complete(batch, replies).await;
                            }
                        }
                        Verdict::Retry { reason, reload_scripts } => {
                            self.go_back(&mut sent, &mut flights, reason, reload_scripts).await;
                        }
                    }
                    self.stats.in_flight.store(sent.len() as u64, Relaxed);
                }
                received = records.recv_async(), if !closed && pending.len() < max_batch => {
                    match received {
                        Ok(chunk) => {
                            self.accept(chunk, &mut pending).await;
                            while pending.len() < max_batch {
                                match records.try_recv() {
                                    Ok(chunk) => self.accept(chunk, &mut pending).await,
                                    Err(_) => break,
                                }
                            }
                            if deadline.is_none() && !pending.is_empty() {
                                deadline = Some(tokio::time::Instant::now() + self.config.linger);
                            }
                        }
                        Err(_) => closed = true,
                    }
                }
                _ = linger_wait, if room && !pending.is_empty() => {}
            }
        }
        self.stats.in_flight.store(0, Relaxed);
    }

    /// Decodes a chunk: valid events join the batch; rejected ones go to the dead-letter
    /// stage at once.
    async fn accept(&self, chunk: Chunk, pending: &mut Vec<Record>) {
        for record in chunk.decode(&self.limits) {
            match &record.decoded {
                Ok(_) => pending.push(record),
                Err(reject) => {
                    let reject = reject.clone();
                    self.stats.topic(record.origin.topic).reject(reject.reason);
                    self.dead_letter(record, reject).await;
                }
            }
        }
    }

    async fn dead_letter(&self, record: Record, reject: Reject) {
        // The dead-letter stage only stops when the daemon does; if it is gone the record
        // stays unacknowledged and is replayed after a restart, which loses nothing.
        let record = record.detached();
        let _ = self.dead_letters.send(DeadLetter { record, reject }).await;
    }

    /// Plans a batch under the current assignment epoch.
    fn build(&mut self, records: Vec<Record>) -> Batch {
        let trust = Some(self.epoch.current());
        self.build_under(records, trust)
    }

    /// Plans a batch; only records consumed under `trust` (and keyed) may be decided
    /// without the guard.
    fn build_under(&mut self, records: Vec<Record>, trust: Option<u64>) -> Batch {
        let plan = self.planner.plan_batch(
            records.iter().map(|record| PlanInput {
                event: record.decoded.as_ref().ok(),
                epoch: trusted_epoch(record, trust),
            }),
            &mut self.versions,
            Instant::now(),
        );
        let events = records.len() as u64;
        Batch {
            records,
            planned: plan.planned,
            pipe: Arc::new(plan.pipe),
            events,
            trust,
            unguarded: plan.unguarded,
            sent_at: Instant::now(),
        }
    }

    /// Hands the pipeline to the connection. Called from this task only, in batch order.
    fn send(&self, batch: &Batch) -> Flight {
        let pipe = Arc::clone(&batch.pipe);
        let mut conn = self.conn.clone();
        let stats = Arc::clone(&self.stats);
        let events = batch.events;
        Box::pin(async move {
            let started = Instant::now();
            if pipe.is_empty() {
                return Ok(Vec::new());
            }
            let replies: Replies = pipe.query_async(&mut conn).await;
            if replies.is_ok() {
                stats.record_batch(events, started.elapsed().as_micros() as u64);
            }
            replies
        })
    }

    fn judge(&self, replies: Replies) -> Verdict {
        match replies {
            Err(e) => Verdict::Retry {
                reload_scripts: e.code() == Some("NOSCRIPT"),
                reason: describe(&e),
            },
            Ok(replies) => {
                let mut reload_scripts = false;
                let mut reason = None;
                for e in replies.iter().filter_map(|r| r.as_ref().err()) {
                    if is_permanent(e) {
                        continue;
                    }
                    reload_scripts |= e.code() == Some("NOSCRIPT");
                    reason.get_or_insert_with(|| describe(e));
                }
                match reason {
                    None => Verdict::Answered(replies),
                    Some(reason) => Verdict::Retry {
                        reason,
                        reload_scripts,
                    },
                }
            }
        }
    }

    /// Reads each event's replies: written, skipped as stale, or refused for good.
    async fn complete(&mut self, batch: Batch, replies: Vec<RedisResult<Value>>) {
        self.stats.redis_up.store(true, Relaxed);
        let mut ack = Ack {
            done: Vec::with_capacity(batch.records.len()),
        };
        let mut refused = Vec::new();
        let (mut written, mut stale) = ([0u64; 2], [0u64; 2]);
        // A guard's write counts from when it was sent, not from when its answer is read.
        let now = batch.sent_at;
        for (record, plan) in batch.records.into_iter().zip(batch.planned) {
            let own = replies
                .get(plan.first..plan.first + plan.commands)
                .unwrap_or(&[]);
            let shared = plan.shared.and_then(|at| replies.get(at));
            let device = match &record.decoded {
                Ok(Event::DeviceUpsert(d)) => Some(d),
                _ => None,
            };
            if let Some(err) = own.iter().chain(shared).find_map(|r| r.as_ref().err()) {
                if let Some(d) = device {
                    self.versions.forget(d.device_id());
                }
                refused.push((record, describe(err)));
                continue;
            }
            let skipped = match plan.expect {
                Expect::Write => false,
                Expect::Stale => true,
                Expect::Guarded { seq } => {
                    let wrote = !matches!(own.first(), Some(Ok(Value::Int(0))));
                    if let Some(d) = device {
                        self.versions.guard_answered(
                            d.device_id(),
                            seq,
                            d.last_updated_ms(),
                            trusted_epoch(&record, batch.trust),
                            wrote,
                            now,
                        );
                    }
                    !wrote
                }
            };
            let topic = record.origin.topic as usize;
            if skipped {
                stale[topic] += 1;
            } else {
                written[topic] += 1;
            }
            ack.done.push(record.origin);
        }
        for kind in [TopicKind::Device, TopicKind::Metric] {
            let topic = self.stats.topic(kind);
            topic.written.fetch_add(written[kind as usize], Relaxed);
            topic.stale.fetch_add(stale[kind as usize], Relaxed);
        }
        if !ack.done.is_empty() {
            self.stats.acknowledged();
            let _ = self.acks.send(ack);
        }
        for (record, reason) in refused {
            let reject = Reject::new(
                RejectReason::RedisRejected,
                Some(refused_field(&record)),
                format!("Redis refused the write: {reason}"),
            );
            self.stats.topic(record.origin.topic).reject(reject.reason);
            tracing::warn!(
                partition = record.origin.partition,
                offset = record.origin.offset,
                %reject,
                "event refused by Redis; dead-lettering it"
            );
            self.dead_letter(record, reject).await;
        }
    }

    /// Go back N: let every batch in flight settle, then re-send the failed one and all
    /// later ones, in order, one at a time, until Redis takes them.
    async fn go_back(
        &mut self,
        sent: &mut VecDeque<Batch>,
        flights: &mut FuturesOrdered<Flight>,
        mut reason: String,
        mut reload_scripts: bool,
    ) {
        while flights.next().await.is_some() {}
        let mut delays = self.config.retry.delays();
        let mut logged_down = false;
        while !sent.is_empty() {
            if reload_scripts {
                if let Err(e) = load_scripts(&mut self.conn).await {
                    reason = describe(&e);
                }
            }
            if !reason.is_empty() {
                self.stats.retries.fetch_add(1, Relaxed);
                self.stats.redis_error(&reason);
                let delay = delays.next().unwrap_or(self.config.retry.max);
                if !logged_down {
                    tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64,
                        batches = sent.len(), "Redis write failed; retrying in order");
                    logged_down = true;
                } else {
                    tracing::debug!(%reason, retry_in_ms = delay.as_millis() as u64, "retrying");
                }
                self.stats.redis_up.store(false, Relaxed);
                tokio::time::sleep(delay).await;
            }
            let current = self.epoch.current();
            let Some(batch) = sent.front_mut() else {
                break;
            };
            // Planned before a rebalance with devices decided locally: another consumer
            // may have written them since, so only the guard may decide now.
            if batch.unguarded && batch.trust != Some(current) {
                let records = std::mem::take(&mut batch.records);
                *batch = self.build_under(records, None);
            }
            batch.sent_at = Instant::now();
            match self.judge(self.send(batch).await) {
                Verdict::Answered(replies) => {
                    if let Some(batch) = sent.pop_front() {
                        self.complete(batch, replies).await;
                    }
                    reason.clear();
                    reload_scripts = false;
                    delays = self.config.retry.delays();
                }
                Verdict::Retry {
                    reason: r,
                    reload_scripts: reload,
                } => {
                    reason = r;
                    reload_scripts = reload;
                }
            }
        }
        if logged_down {
            tracing::info!("Redis writes succeed again");
        }
    }
}

/// Error replies that Redis or an operator clears in time (memory, replication, loading, a
/// busy script, auth or ACL changes, cluster moves): retried, never dead-lettered.
const TRANSIENT_CODES: &[&str] = &[
    "NOSCRIPT",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
    "READONLY",
    "MASTERDOWN",
    "OOM",
    "NOREPLICAS",
    "MISCONF",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
];

/// Errors that retrying cannot fix: the event is dead-lettered instead. Only a server's
/// error reply about this one command can be; anything else (connection lost, timeout) is
/// retried. An unknown reply (`WRONGTYPE`, or a script error such as Redis 6's wrapped
/// `ERR Error running script … WRONGTYPE`) would fail the same way forever, so retrying it
/// would only stall every partition behind one event.
fn is_permanent(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return false;
    }
    match e.code() {
        Some(code) => !TRANSIENT_CODES.contains(&code),
        None => false,
    }
}

fn describe(e: &RedisError) -> String {
    super::describe_error(e)
}

/// The epoch under which `record` may be decided locally: the batch's, if the record was
/// consumed under it and has a Kafka key (so it is partitioned by device id).
fn trusted_epoch(record: &Record, trust: Option<u64>) -> Option<u64> {
    // An empty key is no key: the default partitioner spreads such records at random.
    let keyed = record.key().is_some_and(|k| !k.is_empty());
    trust.filter(|epoch| record.epoch == *epoch && keyed)
}

/// The key a refused write was aimed at, named for the dead-letter header.
fn refused_field(record: &Record) -> &'static str {
    match &record.decoded {
        Ok(Event::DeviceUpsert(_)) | Ok(Event::DeviceDelete { .. }) => "device_id",
        Ok(Event::Metric(_)) => "namespace",
        Err(_) => "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> RedisError {
        redis::make_extension_error(code.to_owned(), Some("detail".to_owned()))
    }

    #[test]
    fn transient_replies_are_retried_and_deterministic_ones_dead_letter() {
        for code in [
            "OOM", "READONLY", "BUSY", "LOADING", "NOSCRIPT", "NOAUTH", "MISCONF",
        ] {
            assert!(!is_permanent(&server(code)), "{code}");
        }
        for code in ["WRONGTYPE", "ERR"] {
            assert!(is_permanent(&server(code)), "{code}");
        }
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_permanent(&io));
    }
}
