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
//!
//! Three rules keep that true when the world changes under a running writer:
//!
//! - **Ownership.** A record whose partition was given up ([`Ownership`]) is dropped before
//!   every send and every retry; when the source gives up records that may still be on the
//!   wire, the writer drops the connection under them (a *fence*) before the next owner
//!   starts.
//! - **Replies are checked, not trusted.** A reply vector of the wrong length, or a guard
//!   answer other than 0 or 1, is a transient error: retried, never an acknowledgement.
//! - **The device cache forgets what Redis forgot.** Every pipeline ends with `CLIENT ID`
//!   and `HSET metacache:writers <this writer> 1`: a new connection id (a reconnect, maybe
//!   to a promoted replica) or a field that had to be created again (a restart, a flush) is
//!   seen in the same pipeline as the writes it affects, and any retry forgets too. The
//!   cache is then emptied, and every batch planned with what it knew is planned again
//!   through the guard.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metacache_client::connect::RedisConn;
use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisError, RedisResult, Value};
use tokio::sync::mpsc;

use super::batcher::Batcher;
use super::connect::load_scripts;
use super::go_back::GoBackN;
use super::inflight::{Flight, InFlight};
use super::plan::{Expect, PlanInput, Planned, Planner};
use super::replies::{judge, Judged, Replies, Retry, Tail};
use super::retry::RetryPolicy;
use super::versions::KnownVersions;
use crate::model::{Event, Limits, Reject, RejectReason, TopicKind};
use crate::pipeline::dead_letter::DeadLetter;
use crate::pipeline::decode::{Decode, Rejects};
use crate::pipeline::ownership::{Ownership, Trust};
use crate::pipeline::record::{Ack, Chunk, Record};
use crate::stats::Stats;

/// Batching and retry knobs, from `[writer]`.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub max_batch: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    /// What ends each pipeline (`WAIT` for replicas or not).
    pub tail: Tail,
}

/// Opens a new connection (with the scripts loaded): after a fence the writer needs one
/// that shares nothing with the connection it dropped.
pub type Connector<C> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = RedisResult<C>> + Send>> + Send + Sync>;

/// Sentinel mode: asks the sentinels whether they name a primary other than the one the
/// writer's connection goes to (the new one's address), after a failed write.
pub type Moved =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// Each node of a connection, with a connection to it alone.
pub type NodesFuture<'a, C> =
    Pin<Box<dyn Future<Output = RedisResult<Vec<(String, C)>>> + Send + 'a>>;

/// What the writer needs of a connection beyond sending: the nodes it spans, for the
/// per-connection chores (naming, fencing) that Redis does per server.
pub trait Nodes: Sized {
    /// Each node with a connection to it alone; one node with address "" outside cluster
    /// mode.
    fn nodes(&self) -> NodesFuture<'_, Self>;
    /// How to close this connection's server side after a fence dropped it: (node,
    /// `CLIENT KILL` command). `conn_id` is the id the pipelines' tail reported.
    fn kill_commands(&self, conn_id: Option<i64>) -> Vec<(String, redis::Cmd)>;
    /// The `CLIENT ID` of a connection that was named when it opened and is never reopened
    /// behind the writer's back; `None` for one that reopens itself.
    fn fixed_id(&self) -> Option<i64>;
    /// Whether `e` means this connection can carry nothing more (the writer opens the next
    /// one itself, and proves its ownership there before writing).
    fn broken_by(&self, e: &RedisError) -> bool;
    /// Cluster mode: whether commands answered `ASK` are followed to the importing node
    /// (safe only with one pipeline in flight: the in-order replay).
    fn follow_ask(&self, on: bool);
}

impl Nodes for RedisConn {
    fn nodes(&self) -> NodesFuture<'_, Self> {
        // Never the refreshing kind: the fence runs in the writer's task, and a request in
        // flight that waits for the slot map to be read is only driven by that same task.
        let nodes = self.nodes_now();
        Box::pin(async move { Ok(nodes) })
    }

    fn kill_commands(&self, conn_id: Option<i64>) -> Vec<(String, redis::Cmd)> {
        let by_id = |id: i64| {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("KILL").arg("ID").arg(id);
            cmd
        };
        match self {
            RedisConn::Single(_) => conn_id
                .map(|id| (String::new(), by_id(id)))
                .into_iter()
                .collect(),
            RedisConn::Fixed(c) => vec![(String::new(), c.kill_command())],
            RedisConn::Cluster(c) => c.kill_commands(),
        }
    }

    fn fixed_id(&self) -> Option<i64> {
        match self {
            RedisConn::Fixed(c) => Some(c.id()),
            // What the pipelines' tail reports for a cluster: it moves only when a node
            // connection is new, which a fixed cluster connection never gets.
            RedisConn::Cluster(c) if c.is_fixed() => Some(c.generation()),
            _ => None,
        }
    }

    fn broken_by(&self, e: &RedisError) -> bool {
        // A timeout leaves the socket as it was: what follows it still goes in order.
        let fixed = match self {
            RedisConn::Fixed(_) => true,
            RedisConn::Cluster(c) => c.is_fixed(),
            RedisConn::Single(_) => false,
        };
        fixed && e.is_io_error() && !e.is_timeout()
    }

    fn follow_ask(&self, on: bool) {
        if let RedisConn::Cluster(c) = self {
            c.follow_ask(on);
        }
    }
}

/// The pipelines on the wire, each with its batch.
type Sent = InFlight<Batch, Replies>;

/// One pipeline's worth of records and the commands planned for them.
struct Batch {
    records: Vec<Record>,
    planned: Vec<Planned>,
    pipe: Arc<Pipeline>,
    /// Commands in `pipe`, the tail included: the replies expected.
    commands: usize,
    events: u64,
    /// The trust under which records could be decided locally; `None` when every device
    /// went through the guard.
    trust: Option<Trust>,
    /// Some device was written without the guard.
    unguarded: bool,
    /// Some device was decided here (written without the guard, or skipped as stale):
    /// the batch relies on what the writer knew when it was planned.
    local: bool,
    /// The writer's knowledge generation it was planned under (see `Writer::knowledge`).
    knowledge: u64,
    /// When it was last handed to the connection: what its writes can have done is no
    /// older than this (a device key's TTL runs from when Redis ran the command).
    sent_at: Instant,
    /// Its number among the batches this writer built, for traces.
    number: u64,
}

pub struct Writer<C> {
    /// `None` after a fence dropped it, until the next connect.
    conn: Option<C>,
    connector: Connector<C>,
    planner: Planner,
    config: WriterConfig,
    versions: KnownVersions,
    /// Bumped whenever `versions` is emptied: batches planned under an older value may
    /// have decided devices on knowledge that is void now.
    knowledge: u64,
    /// The connection id Redis reported at the end of the last pipeline.
    conn_id: Option<i64>,
    /// A connection dropped by a fence, to `CLIENT KILL` once a new one is up.
    kill: Vec<(String, redis::Cmd)>,
    /// The current connection is not named [`WRITER_NAME`] yet (it is new).
    unnamed: bool,
    /// This member proved, after the current connection was opened and named, that it
    /// still owns its partitions in the group's current generation (see
    /// [`Ownership::request_proof`]): nothing is written on a connection before that.
    proven: bool,
    /// Batches built so far: numbers them in traces.
    batches_built: u64,
    /// Redis answered a pipeline of this writer before.
    answered_before: bool,
    /// The assignment epoch whose previous writers' connections were closed (see
    /// [`Writer::fence_previous_writers`]), and the tries so far under the current one.
    fenced_epoch: Option<u64>,
    fence_tries: u32,
    /// This writer's field in `metacache:writers`.
    writer_id: String,
    ownership: Arc<Ownership>,
    fence_served: u64,
    decode: Decode,
    rejects: Rejects,
    stats: Arc<Stats>,
    acks: flume::Sender<Ack>,
    moved: Option<Moved>,
}

/// What the writer shares with the rest of the pipeline.
pub struct WriterLinks {
    pub ownership: Arc<Ownership>,
    pub stats: Arc<Stats>,
    pub acks: flume::Sender<Ack>,
    pub dead_letters: mpsc::Sender<DeadLetter>,
    /// Set in sentinel mode (see [`Moved`]).
    pub moved: Option<Moved>,
}

impl<C> Writer<C>
where
    C: ConnectionLike + Nodes + Clone + Send + Sync + 'static,
{
    pub fn new(
        conn: C,
        connector: Connector<C>,
        planner: Planner,
        config: WriterConfig,
        versions: KnownVersions,
        limits: Limits,
        links: WriterLinks,
    ) -> Self {
        let rejects = Rejects::new(links.dead_letters, Arc::clone(&links.stats));
        let fixed_id = conn.fixed_id();
        Writer {
            conn: Some(conn),
            connector,
            planner,
            config,
            versions,
            knowledge: 0,
            conn_id: fixed_id,
            kill: Vec::new(),
            unnamed: fixed_id.is_none(),
            proven: false,
            batches_built: 0,
            answered_before: false,
            fenced_epoch: None,
            fence_tries: 0,
            writer_id: writer_id(),
            ownership: links.ownership,
            fence_served: 0,
            decode: Decode::new(limits, rejects.clone()),
            rejects,
            stats: links.stats,
            acks: links.acks,
            moved: links.moved,
        }
    }

    /// Runs until `records` is closed and everything received is acknowledged.
    pub async fn run(mut self, records: flume::Receiver<Chunk>) {
        let max_in_flight = self.config.max_in_flight.max(1);
        let mut batcher = Batcher::new(self.config.max_batch, self.config.linger);
        let mut sent: Sent = InFlight::new();
        let mut closed = false;
        let ownership = Arc::clone(&self.ownership);

        loop {
            let room = sent.len() < max_in_flight;
            if room && batcher.due(closed, sent.len()) {
                let Some(mut batch) = self.build(batcher.take()) else {
                    continue;
                };
                if let Err(reason) = self.ready().await {
                    // No connection fit to write on yet: reconnect, prove, fence, and send
                    // in order.
                    self.go_back(&mut sent, Some(batch), reason, false).await;
                    continue;
                }
                // Getting ready may have waited for a proof, during which partitions can
                // have been revoked.
                if !self.all_owned(&batch.records) {
                    let records = std::mem::take(&mut batch.records);
                    match self.build(records) {
                        Some(again) => batch = again,
                        None => continue,
                    }
                }
                batch.sent_at = Instant::now();
                self.follow_ask(false);
                let flight = self.send(&batch);
                tracing::trace!(
                    batch = batch.number,
                    commands = batch.commands,
                    in_flight = sent.len(),
                    "sent"
                );
                sent.push(batch, flight);
                self.stats.in_flight.store(sent.len() as u64, Relaxed);
                continue;
            }
            if closed && batcher.is_empty() && sent.is_empty() {
                break;
            }
            let served = self.fence_served;
            tokio::select! {
                biased;
                _ = ownership.fence_wanted(served) => {
                    self.retain_owned(batcher.pending_mut());
                    if self.serve_fence(sent.batches()) {
                        sent.abandon();
                        self.go_back(&mut sent, None, "connection dropped by a fence".into(), false)
                            .await;
                    }
                    self.stats.in_flight.store(sent.len() as u64, Relaxed);
                }
                Some(replies) = sent.next(), if !sent.is_empty() => {
                    let others = sent.len() > 1;
                    let verdict = match sent.front() {
                        Some(batch) => self.judge(batch, replies, others),
                        None => continue,
                    };
                    match verdict {
                        Ok(replies) => {
                            if let Some(batch) = sent.pop_front() {
                                self.complete(batch, replies).await;
                            }
                        }
                        Err(retry) => {
                            self.go_back(&mut sent, None, retry.reason, retry.reload_scripts).await;
                        }
                    }
                    self.stats.in_flight.store(sent.len() as u64, Relaxed);
                }
                received = records.recv_async(), if !closed && batcher.has_room() => {
                    match received {
                        Ok(chunk) => {
                            self.decode.admit(chunk, batcher.pending_mut()).await;
                            while batcher.has_room() {
                                match records.try_recv() {
                                    Ok(chunk) => self.decode.admit(chunk, batcher.pending_mut()).await,
                                    Err(_) => break,
                                }
                            }
                            batcher.arrived();
                        }
                        Err(_) => closed = true,
                    }
                }
                _ = batcher.linger_passed(), if room && !batcher.is_empty() => {}
            }
        }
        self.stats.in_flight.store(0, Relaxed);
        self.sign_off().await;
    }

    /// Drops the records whose partition is no longer owned under their generation;
    /// returns how many. One ownership lookup per run of records from one partition.
    fn retain_owned(&self, records: &mut Vec<Record>) -> usize {
        let before = records.len();
        {
            let mut view = self.ownership.view();
            records.retain(|r| view.owns_origin(&r.origin));
        }
        let dropped = before - records.len();
        if dropped > 0 {
            self.stats.disowned.fetch_add(dropped as u64, Relaxed);
            tracing::debug!(
                dropped,
                "records of revoked partitions dropped; their new owner replays them"
            );
        }
        dropped
    }

    fn all_owned(&self, records: &[Record]) -> bool {
        let mut view = self.ownership.view();
        records.iter().all(|r| view.owns_origin(&r.origin))
    }

    /// The source asked for a fence: if any pipeline in flight carries records of a
    /// partition given up, drop the connection under them, so none of their bytes still
    /// waiting to be written ever is. Returns whether it did: the caller then drops the
    /// flights.
    fn serve_fence<'b>(&mut self, batches: impl Iterator<Item = &'b Batch>) -> bool {
        let ticket = self.ownership.fence_requested();
        self.fence_served = ticket;
        let (mut count, mut carries) = (0, false);
        for batch in batches {
            count += 1;
            carries |= !self.all_owned(&batch.records);
        }
        if carries {
            self.kill = self
                .conn
                .as_ref()
                .map(|c| c.kill_commands(self.conn_id))
                .unwrap_or_default();
            self.conn = None;
            self.conn_id = None;
            self.stats.fences.fetch_add(1, Relaxed);
            tracing::warn!(
                batches = count,
                "revoked partitions had writes in flight: their Redis connection is dropped so they cannot land after the new owner's"
            );
        }
        self.ownership.confirm_fence(ticket);
        carries
    }

    /// Empties the device cache: Redis may not hold what it says any more.
    fn forget_all(&mut self) {
        if !self.versions.is_empty() {
            self.stats.guard_cache_resets.fetch_add(1, Relaxed);
        }
        self.versions.forget_known();
        self.knowledge += 1;
    }

    /// Plans a batch under the current assignment epoch; `None` when none of its records
    /// are owned any more.
    fn build(&mut self, mut records: Vec<Record>) -> Option<Batch> {
        self.retain_owned(&mut records);
        if records.is_empty() {
            return None;
        }
        let trust = Some(self.ownership.trust());
        Some(self.build_under(records, trust))
    }

    /// Plans a batch; only records `trust` covers may be decided without the guard.
    fn build_under(&mut self, records: Vec<Record>, trust: Option<Trust>) -> Batch {
        let mut plan = self.planner.plan_batch(
            records.iter().map(|record| PlanInput {
                event: record.decoded.as_ref().ok(),
                epoch: trust.and_then(|t| t.scope_of(record)),
            }),
            &mut self.versions,
            Instant::now(),
        );
        let local = plan.unguarded || plan.planned.iter().any(|p| p.expect == Expect::Stale);
        // The tail that tells whether Redis is still the one this writer knew.
        plan.pipe
            .add_command(redis::cmd("CLIENT").arg("ID").to_owned());
        plan.pipe.add_command(
            redis::cmd("HSET")
                .arg(self.planner.keys().writers())
                .arg(&self.writer_id)
                .arg(1)
                .to_owned(),
        );
        if let Some(replicas) = self.config.tail.wait_replicas() {
            // Counts the replicas that have every write of this connection so far.
            plan.pipe.add_command(
                redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(self.config.tail.wait_timeout_ms)
                    .to_owned(),
            );
        }
        let commands = plan.pipe.cmd_iter().count();
        let events = records.len() as u64;
        self.batches_built += 1;
        if tracing::enabled!(tracing::Level::TRACE) {
            trace_plan(self.batches_built, &records, &plan.planned, trust);
        }
        Batch {
            records,
            planned: plan.planned,
            pipe: Arc::new(plan.pipe),
            commands,
            events,
            trust,
            unguarded: plan.unguarded,
            local,
            knowledge: self.knowledge,
            sent_at: Instant::now(),
            number: self.batches_built,
        }
    }

    fn follow_ask(&self, on: bool) {
        if let Some(conn) = &self.conn {
            conn.follow_ask(on);
        }
    }

    /// Hands the pipeline to the connection. Called from this task only, in batch order.
    fn send(&self, batch: &Batch) -> Flight<Replies> {
        let pipe = Arc::clone(&batch.pipe);
        let conn = self.conn.clone();
        let stats = Arc::clone(&self.stats);
        let events = batch.events;
        Box::pin(async move {
            let Some(mut conn) = conn else {
                return Err(RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::NotConnected,
                )));
            };
            let started = Instant::now();
            let replies: Replies = pipe.query_async(&mut conn).await;
            if replies.is_ok() {
                stats.record_batch(events, started.elapsed().as_micros() as u64);
            }
            replies
        })
    }

    /// Reads a batch's replies as a whole ([`judge`]), and keeps the writer's knowledge
    /// honest: it is forgotten whenever Redis may have lost data or the outcome of a write
    /// is unknown, and a batch that relied on knowledge now void is planned again.
    fn judge(
        &mut self,
        batch: &Batch,
        replies: Replies,
        others_in_flight: bool,
    ) -> Result<Vec<RedisResult<Value>>, Retry> {
        if let Err(e) = &replies {
            self.let_go_broken(e);
        }
        let (replies, id, created) =
            match judge(batch.commands, &batch.planned, replies, self.config.tail) {
                Judged::Retry(retry) => {
                    self.forget_all();
                    return Err(retry);
                }
                Judged::Answered {
                    replies,
                    connection,
                    marker_created,
                } => (replies, connection, marker_created),
            };
        // The connection reconnected by itself (the writer's own new connections start
        // with no id), to the address it had.
        let reconnected = self.conn_id.is_some_and(|old| old != id);
        if self.conn_id != Some(id) || created {
            // A new connection (maybe to another node) or a marker that was gone: what
            // this writer knew about the keys may not hold. (The first pipeline of a
            // writer always looks so, with nothing known yet.)
            if self.conn_id.is_some() {
                tracing::info!(
                    new_connection = self.conn_id != Some(id),
                    marker_recreated = created,
                    "Redis may have lost data since the last pipeline (reconnect, restart, flush or failover); the device cache is emptied"
                );
            }
            self.forget_all();
            if self.conn_id != Some(id) {
                self.unnamed = true;
            }
            // The descriptor went with the data: write it again, or a daemon started now
            // with another shard count would be let in. Not for the writer's first
            // pipeline, which creates the marker right after the daemon claimed it.
            if created && self.answered_before {
                self.reclaim_layout();
            }
            self.conn_id = Some(id);
        }
        self.answered_before = true;
        // Sentinel mode: that address may be a node the sentinels demoted meanwhile (an
        // old primary restarted before they made it a replica, which takes writes and then
        // discards them). Nothing is counted until the sentinels have been asked again;
        // the replay goes to the primary they name.
        if reconnected && self.moved.is_some() {
            return Err(Retry {
                reason: "reconnected to Redis: asking the sentinels whether this node is still the primary before counting the writes".into(),
                reload_scripts: false,
            });
        }
        // Any mode: the pipelines in flight when the connection was replaced waited for the
        // new one, and a pipeline built meanwhile may have reached it first. Replaying this
        // one and every later one, one at a time, puts them back in order.
        if reconnected && others_in_flight {
            return Err(Retry {
                reason: "reconnected to Redis with pipelines in flight: replaying them in order"
                    .into(),
                reload_scripts: false,
            });
        }
        if batch.local && batch.knowledge != self.knowledge {
            return Err(Retry {
                reason: "Redis may have lost what this writer knew (reconnect, restart, flush or failover); planning the batch again through the stale guard".into(),
                reload_scripts: false,
            });
        }
        Ok(replies)
    }

    /// Reads each event's replies: written, skipped as stale, or refused for good. The
    /// replies were checked by [`Writer::judge`].
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
            let own = &replies[plan.first..plan.first + plan.commands];
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
                    let wrote = matches!(own.first(), Some(Ok(Value::Int(1))));
                    if let Some(d) = device {
                        self.versions.guard_answered(
                            d.device_id(),
                            seq,
                            d.last_updated_ms(),
                            batch.trust.and_then(|t| t.scope_of(&record)),
                            wrote,
                            now,
                        );
                    }
                    !wrote
                }
            };
            if let (true, Some(d)) = (tracing::enabled!(tracing::Level::TRACE), device) {
                tracing::trace!(
                    batch = batch.number,
                    device = d.device_id(),
                    partition = record.origin.partition,
                    offset = record.origin.offset,
                    written = !skipped,
                    "answered"
                );
            }
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
            tracing::warn!(
                partition = record.origin.partition,
                offset = record.origin.offset,
                %reject,
                "event refused by Redis; dead-lettering it"
            );
            self.rejects.send(record, reject).await;
        }
    }

    /// Makes the connection fit to write on, before the next pipeline goes: opened (after
    /// a fence or a broken socket), named, this member's ownership proven on it, and the
    /// previous writers fenced after a rebalance. `Err` says what is missing; nothing is
    /// written until it is done (a safety step that cannot run stops the writes).
    async fn ready(&mut self) -> Result<(), String> {
        self.ensure_connected().await?;
        if self.unnamed {
            self.name_connection().await;
        }
        if !self.proven {
            self.prove().await?;
        }
        if self.fenced_epoch != Some(self.ownership.epoch()) {
            self.fence_previous_writers().await?;
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.conn.is_some() && self.proven && self.fenced_epoch == Some(self.ownership.epoch())
    }

    /// Asks the source to prove that this member still owns its partitions in the
    /// group's current generation, after the connection was opened and named (the order
    /// the argument in [`Ownership`]'s doc needs). A fence wanted meanwhile is confirmed at
    /// once: nothing was sent on an unproven connection, so it carries nothing to drop.
    async fn prove(&mut self) -> Result<(), String> {
        let ownership = Arc::clone(&self.ownership);
        let ticket = ownership.request_proof();
        let started = Instant::now();
        loop {
            let served = self.fence_served;
            tokio::select! {
                biased;
                _ = ownership.fence_wanted(served) => {
                    self.serve_fence(std::iter::empty());
                }
                outcome = tokio::time::timeout(PROOF_TIMEOUT, ownership.proof(ticket)) => {
                    return match outcome {
                        Ok(Ok(())) => {
                            self.proven = true;
                            tracing::debug!(took_us = started.elapsed().as_micros() as u64, "ownership proven on the new connection");
                            Ok(())
                        }
                        Ok(Err(reason)) => Err(format!(
                            "cannot prove this member still owns its partitions ({reason}); nothing is written until it can, or until they are revoked"
                        )),
                        Err(_) => Err(format!(
                            "no proof of ownership within {} s (the Kafka coordinator did not answer); nothing is written until there is one",
                            PROOF_TIMEOUT.as_secs()
                        )),
                    };
                }
            }
        }
    }

    /// A connection that can carry nothing more is let go; the next one is opened by
    /// [`Writer::ensure_connected`], named and proven before anything is written there.
    /// Its id is not killed: the socket is gone, and the next connection may reach
    /// another server (a failover behind a fixed address) where that id is someone else's.
    fn let_go_broken(&mut self, e: &RedisError) {
        if self.conn.as_ref().is_some_and(|c| c.broken_by(e)) {
            tracing::info!(error = %describe(e), "the writer's Redis connection broke; the next one is named and proven before anything is written on it");
            self.conn = None;
            self.conn_id = None;
            self.proven = false;
        }
    }

    /// Writes the layout descriptor again after Redis lost it (the writers' marker was
    /// gone), so readers keep finding the shard count. Beside the pipelines, like the
    /// connection's name: the descriptor says how to read the index, and the pipelines
    /// written before it is back are read the same way once it is.
    fn reclaim_layout(&self) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let keys = self.planner.keys().clone();
        tokio::spawn(async move {
            let mut conn = conn;
            let claimed = tokio::time::timeout(
                Duration::from_secs(5),
                super::layout::reclaim(&mut conn, &keys),
            )
            .await;
            match claimed {
                Ok(Ok(Ok(_))) => {
                    tracing::info!(
                        key = keys.layout(),
                        "layout descriptor written again after Redis lost its data"
                    )
                }
                Ok(Ok(Err(refusal))) => {
                    tracing::error!(%refusal, "the layout descriptor Redis holds now is another writer's")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %describe(&e), "cannot write the layout descriptor again")
                }
                Err(_) => tracing::warn!("writing the layout descriptor again timed out"),
            }
        });
    }

    /// `CLIENT SETNAME metacache-writer`, so that a new owner can find this connection
    /// (and close it if this process is gone): see [`Writer::fence_previous_writers`].
    /// Sent beside the pipelines, never waited for: a slow Redis must not hold a batch
    /// back for a name. A name lost with its connection is given to the next one.
    async fn name_connection(&mut self) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        self.unnamed = false;
        tokio::spawn(async move {
            let mut conn = conn;
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("SETNAME").arg(WRITER_NAME);
            let named =
                tokio::time::timeout(Duration::from_secs(5), cmd.query_async::<Value>(&mut conn))
                    .await;
            if let Ok(Err(e)) = named {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) {
                    tracing::warn!(error = %describe(&e), "cannot name the writer's connection (CLIENT SETNAME): a writer taking over after this one dies cannot close its connection");
                }
            }
        });
    }

    /// Before its first write under a new assignment, a writer closes every other
    /// writer's connection (`CLIENT KILL` of each connection named [`WRITER_NAME`] but its
    /// own). A process that died (SIGKILL, OOM, a lost node) can leave pipelines in the
    /// kernel's buffers or Redis's: Redis runs them whenever it reads them, possibly after
    /// the new owner of their partitions wrote newer values, and plain `SET`s, set
    /// operations and tombstones carry no guard. Killing the connection discards what
    /// Redis has not run yet. A live writer of other partitions loses its connection too
    /// and replays its unanswered pipelines in order (go-back-N): a rebalance is rare and
    /// the replay is correct; a late write is not.
    /// In cluster mode on every primary: a dead writer's pipelines may wait on any.
    async fn fence_previous_writers(&mut self) -> Result<(), String> {
        let epoch = self.ownership.epoch();
        let Some(conn) = self.conn.as_ref() else {
            return Err("no connection".into());
        };
        let nodes = match tokio::time::timeout(Duration::from_secs(2), conn.nodes()).await {
            Ok(Ok(nodes)) => nodes,
            _ => return Err(self.fence_failed("the cluster's nodes could not be listed")),
        };
        let mut closed = 0;
        for (node, mut conn) in nodes {
            match fence_node(&mut conn).await {
                Ok(n) => closed += n,
                Err(Some(e))
                    if !matches!(
                        e.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
                    ) =>
                {
                    self.let_go_broken(&e);
                    return Err(self.fence_failed(format!("{node} {}", describe(&e)).trim_start()));
                }
                Err(Some(e)) => {
                    self.fence_tries += 1;
                    // A pipeline's error carries no detail of its own: its text names
                    // the refused command.
                    return Err(format!(
                        "cannot fence the previous writers: NOPERM {e}; grant the ACL user what `metacache check-config --print-acl` prints (+client|list, +client|kill); nothing is written under the new assignment until then"
                    ));
                }
                Err(None) => {
                    return Err(self.fence_failed(if node.is_empty() {
                        "CLIENT LIST or CLIENT KILL failed or timed out".to_owned()
                    } else {
                        format!("CLIENT LIST or CLIENT KILL on {node} failed or timed out")
                    }))
                }
            }
        }
        if closed > 0 {
            self.stats.writers_fenced.fetch_add(closed, Relaxed);
            tracing::info!(
                connections = closed,
                "closed the connections of other metacache writers before writing under the new assignment"
            );
        }
        self.fenced_epoch = Some(epoch);
        self.fence_tries = 0;
        Ok(())
    }

    /// Lost connection or a slow Redis: the writer tries again before the next pipeline,
    /// however long it takes; it never writes under a new assignment unfenced.
    fn fence_failed(&mut self, what: impl std::fmt::Display) -> String {
        self.fence_tries += 1;
        format!(
            "cannot fence the previous writers ({what}; try {}); nothing is written under the new assignment until it succeeds",
            self.fence_tries
        )
    }

    /// Opens a connection when a fence dropped the last one, and kills the dropped one on
    /// the server so bytes of it that already reached Redis are discarded too (best
    /// effort: it may be gone already, or the user may not be allowed `CLIENT KILL`).
    async fn ensure_connected(&mut self) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        let conn = (self.connector)().await.map_err(|e| describe(&e))?;
        // Everything about a new connection is learnt again: its name and id, this
        // member's ownership, and what Redis holds (it may be another server now).
        self.conn_id = conn.fixed_id();
        self.unnamed = self.conn_id.is_none();
        self.proven = false;
        self.forget_all();
        let kill = std::mem::take(&mut self.kill);
        if !kill.is_empty() {
            let nodes = conn.nodes().await.unwrap_or_default();
            for (node, cmd) in kill {
                let Some((_, mut at)) = nodes.iter().find(|(a, _)| *a == node).cloned() else {
                    continue;
                };
                let kill = cmd.query_async::<Value>(&mut at);
                match tokio::time::timeout(Duration::from_secs(2), kill).await {
                    Ok(Ok(_)) => {
                        tracing::debug!(node, "fenced connection killed on the server")
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(node, error = %describe(&e), "fenced connection already gone")
                    }
                    Err(_) => {
                        tracing::debug!(node, "CLIENT KILL of the fenced connection timed out")
                    }
                }
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Waits for `future` unless a fence is wanted first: then serves it and returns
    /// `None` (the future, and any connection it held, is dropped).
    async fn unless_fenced<T>(
        &mut self,
        replay: &GoBackN<Batch>,
        future: impl Future<Output = T>,
    ) -> Option<T> {
        let ownership = Arc::clone(&self.ownership);
        let served = self.fence_served;
        tokio::select! {
            biased;
            _ = ownership.fence_wanted(served) => {
                self.serve_fence(replay.batches());
                None
            }
            out = future => Some(out),
        }
    }

    /// Go back N: let every batch in flight settle, then re-send the failed one and all
    /// later ones (and `then`, a batch not sent yet), in order, one at a time, until Redis
    /// takes them. Records of partitions given up meanwhile are dropped on the way.
    async fn go_back(
        &mut self,
        sent: &mut Sent,
        then: Option<Batch>,
        reason: String,
        reload_scripts: bool,
    ) {
        let ownership = Arc::clone(&self.ownership);
        let served = self.fence_served;
        let fenced = tokio::select! {
            biased;
            _ = ownership.fence_wanted(served) => true,
            _ = sent.settle() => false,
        };
        if fenced {
            self.serve_fence(sent.batches().chain(then.as_ref()));
        }
        let mut queue = sent.take();
        queue.extend(then);
        let mut replay = GoBackN::new(queue, reason, reload_scripts, self.config.retry);
        while !replay.is_empty() {
            if replay.failure().is_some() {
                self.follow_failover().await;
            }
            if let Err(e) = self.ensure_connected().await {
                replay.failed(e, false);
            } else if replay.wants_scripts() {
                if let Some(conn) = self.conn.as_mut() {
                    if let Err(e) = load_scripts(conn).await {
                        replay.failed(describe(&e), true);
                    }
                }
            }
            if self.conn.is_some() {
                if let Err(e) = self.ready().await {
                    replay.failed(e, false);
                }
            }
            if let Some(backoff) = replay.backoff() {
                let reason = replay.failure().unwrap_or_default().to_owned();
                self.stats.retries.fetch_add(1, Relaxed);
                self.stats.redis_error(&reason);
                let retry_in_ms = backoff.delay.as_millis() as u64;
                if backoff.first {
                    tracing::warn!(%reason, retry_in_ms, batches = replay.len(),
                        "Redis write failed; retrying in order");
                } else {
                    tracing::debug!(%reason, retry_in_ms, "retrying");
                }
                self.stats.redis_up.store(false, Relaxed);
                // A fence during the wait is served at once; the loop goes on.
                let _ = self
                    .unless_fenced(&replay, tokio::time::sleep(backoff.delay))
                    .await;
                if self.conn.is_none() {
                    replay.failed("connection dropped by a fence".into(), false);
                    continue;
                }
                if !self.is_ready() {
                    // Not connected, proven and fenced yet: the next round tries again.
                    continue;
                }
            }
            let trust = self.ownership.trust();
            let knowledge = self.knowledge;
            let Some(mut batch) = replay.take_next() else {
                break;
            };
            let dropped = self.retain_owned(&mut batch.records);
            if batch.records.is_empty() {
                continue;
            }
            // Planned before a rebalance with devices decided locally (another consumer
            // may have written them since), before the device cache was emptied, or with
            // records that are gone now: plan it again, with only the guard deciding.
            if dropped > 0
                || (batch.unguarded && batch.trust != Some(trust))
                || (batch.local && batch.knowledge != knowledge)
            {
                let records = std::mem::take(&mut batch.records);
                batch = self.build_under(records, None);
            }
            batch.sent_at = Instant::now();
            // One batch at a time: a slot left half-migrated cannot pin the replay.
            self.follow_ask(true);
            let flight = self.send(&batch);
            replay.put_back(batch);
            let Some(replies) = self.unless_fenced(&replay, flight).await else {
                replay.failed("interrupted by a fence".into(), false);
                continue;
            };
            let verdict = match replay.batches().next() {
                // One replayed batch at a time: nothing to overtake it.
                Some(batch) => self.judge(batch, replies, false),
                None => break,
            };
            match verdict {
                Ok(replies) => {
                    if let Some(batch) = replay.succeeded() {
                        self.complete(batch, replies).await;
                    }
                }
                Err(retry) => replay.failed(retry.reason, retry.reload_scripts),
            }
        }
        if replay.was_down() {
            tracing::info!("Redis writes succeed again");
        }
    }

    /// Sentinel mode, after a failed write: when the sentinels name another primary, the
    /// connection is dropped and the next one goes there. Only then: while they name the
    /// same node, the connection stays (it reconnects to that address by itself), so
    /// pipelines that node has not answered yet cannot be overtaken by a replay on a
    /// second connection to it. A pipeline left on the old primary cannot land on the new
    /// one, and the old one becomes a replica of the new one, discarding what it has.
    async fn follow_failover(&mut self) {
        let Some(moved) = &self.moved else {
            return;
        };
        if let Some(primary) = moved().await {
            tracing::warn!(%primary, "the sentinels name a new Redis primary; writing there from now on");
            self.conn = None;
            self.kill.clear();
            self.conn_id = None;
            self.forget_all();
        }
    }

    /// Removes this writer's field from `metacache:writers` on the way out (best effort:
    /// a field left by a crash is a few bytes and harmless).
    async fn sign_off(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.planner.keys().writers()).arg(&self.writer_id);
        let hdel = cmd.query_async::<Value>(conn);
        let _ = tokio::time::timeout(Duration::from_secs(1), hdel).await;
    }
}

/// Closes the other writers' connections on one server; how many. `Err(Some)`: Redis or
/// the connection said no (`NOPERM`, a broken socket), `Err(None)`: too slow.
async fn fence_node<C: ConnectionLike + Send>(conn: &mut C) -> Result<u64, Option<RedisError>> {
    // This connection's own id from the same round trip: the pipelines' tail may not have
    // reported it yet, or reported an older connection's.
    let mut pipe = redis::pipe();
    pipe.cmd("CLIENT").arg("ID");
    pipe.cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal");
    let listed = tokio::time::timeout(
        Duration::from_secs(2),
        pipe.query_async::<(i64, String)>(conn),
    )
    .await;
    let others = match listed {
        Ok(Ok((me, text))) => other_writers(&text, Some(me)),
        Ok(Err(e)) => return Err(Some(e)),
        Err(_) => return Err(None),
    };
    if others.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for id in &others {
        pipe.cmd("CLIENT").arg("KILL").arg("ID").arg(*id).ignore();
    }
    pipe.ignore_errors();
    let killed =
        tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<Value>(conn)).await;
    match killed {
        Ok(Ok(_)) => Ok(others.len() as u64),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// Longest the writer waits for the source's answer to a proof before trying again (the
/// source answers within one poll, plus the coordinator's round trip).
const PROOF_TIMEOUT: Duration = Duration::from_secs(10);

/// The name every writer gives its connection (`CLIENT SETNAME`), so that a new owner
/// finds the connections of writers that may have died.
pub const WRITER_NAME: &str = "metacache-writer";

/// The ids of the connections named [`WRITER_NAME`] in a `CLIENT LIST` reply, but `me`.
fn other_writers(list: &str, me: Option<i64>) -> Vec<i64> {
    list.lines()
        .filter_map(|line| {
            let mut id = None;
            let mut named = false;
            for field in line.split(' ') {
                if let Some(v) = field.strip_prefix("id=") {
                    id = v.parse::<i64>().ok();
                } else if let Some(v) = field.strip_prefix("name=") {
                    named = v == WRITER_NAME;
                }
            }
            id.filter(|id| named && Some(*id) != me)
        })
        .collect()
}

/// A field name no other writer uses: the process, the time it started, a random part.
fn writer_id() -> String {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{}-{since_epoch}-{random:016x}", std::process::id())
}

fn describe(e: &RedisError) -> String {
    super::describe_error(e)
}

/// The key a refused write was aimed at, named for the dead-letter header.
fn refused_field(record: &Record) -> &'static str {
    match &record.decoded {
        Ok(Event::DeviceUpsert(_)) | Ok(Event::DeviceDelete { .. }) => "device_id",
        Ok(Event::Metric(_)) => "namespace",
        Err(_) => "value",
    }
}

/// Each device event's decision, at TRACE (`RUST_LOG=metacache::pipeline::sink=trace`):
/// for following one device through a run when an investigation needs it.
fn trace_plan(batch: u64, records: &[Record], planned: &[Planned], trust: Option<Trust>) {
    for (record, plan) in records.iter().zip(planned) {
        let (device, json) = match &record.decoded {
            Ok(Event::DeviceUpsert(d)) => (d.device_id(), d.normalized_json()),
            Ok(Event::DeviceDelete { device_id }) => (device_id.as_str(), ""),
            _ => continue,
        };
        tracing::trace!(
            batch,
            device,
            json,
            first = plan.first,
            commands = plan.commands,
            partition = record.origin.partition,
            offset = record.origin.offset,
            generation = record.origin.generation,
            epoch = record.epoch,
            trust = ?trust,
            expect = ?plan.expect,
            "planned"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_writers_are_the_connections_named_so_but_this_one() {
        let list = "id=3 addr=127.0.0.1:5 laddr=x fd=8 name=metacache-writer age=9 cmd=hset\n\
                    id=4 addr=127.0.0.1:6 laddr=x fd=9 name= age=2 cmd=get\n\
                    id=7 addr=127.0.0.1:7 laddr=x fd=10 name=metacache-writer age=1 cmd=evalsha\n\
                    id=8 addr=127.0.0.1:8 laddr=x fd=11 name=metacache-writer-x age=1 cmd=get\n";
        assert_eq!(other_writers(list, Some(7)), [3]);
        assert_eq!(other_writers(list, None), [3, 7]);
        assert!(other_writers("", Some(1)).is_empty());
    }
}
