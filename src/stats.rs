//! Counters the pipeline bumps on its hot path: plain relaxed atomics, no locks, so
//! observing the daemon never slows it. The HTTP side and the demo read snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;

use crate::model::{RejectReason, TopicKind};

const REASONS: usize = RejectReason::ALL.len();

#[derive(Debug, Default)]
pub struct TopicStats {
    pub consumed: AtomicU64,
    pub written: AtomicU64,
    pub stale: AtomicU64,
    pub dead_lettered: AtomicU64,
    rejected: [AtomicU64; REASONS],
}

impl TopicStats {
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Relaxed)
    }
}

/// How many recent pipeline latencies the percentiles in `/stats` are computed over.
const LATENCY_SAMPLES: usize = 2048;

/// One partition as librdkafka's statistics see it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PartitionFigures {
    /// Last committed offset (-1 before the first commit).
    pub committed: i64,
    /// The partition's high watermark: the offset the next produced record gets.
    pub high_watermark: i64,
    /// Records between the committed offset and the high watermark.
    pub lag: i64,
}

#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub devices: TopicStats,
    pub metrics: TopicStats,
    pub batches: AtomicU64,
    pub batched_events: AtomicU64,
    pub max_batch: AtomicU64,
    pub retries: AtomicU64,
    /// Records dropped unsent because their partition was given up meanwhile (the new
    /// owner replays them).
    pub disowned: AtomicU64,
    /// Connections dropped so that records of given-up partitions could not land.
    pub fences: AtomicU64,
    /// Other writers' connections closed before writing under a new assignment.
    pub writers_fenced: AtomicU64,
    /// New Redis connections on which this member proved it still owns its partitions
    /// (a commit the coordinator took), and proofs refused (evicted, or no coordinator).
    pub ownership_proofs: AtomicU64,
    pub ownership_refused: AtomicU64,
    /// Dead letters given up after being refused for good (logged at error level).
    pub dead_letters_lost: AtomicU64,
    /// Why dead letters are failing right now (cleared by the next success).
    pub dead_letter_failing: Mutex<Option<String>>,
    /// Times the device cache was emptied because Redis may have forgotten what it held.
    pub guard_cache_resets: AtomicU64,
    pub in_flight: AtomicU64,
    pub pipeline_micros_total: AtomicU64,
    pub pipeline_micros_max: AtomicU64,
    pub redis_up: AtomicBool,
    pub kafka_assigned: AtomicU64,
    pub paused: AtomicBool,
    pub commits: AtomicU64,
    /// Partition assignments received from the group (the first join counts as one).
    pub rebalances: AtomicU64,
    /// The last transient Redis write error, for `/readyz` to say why writes are retried.
    pub last_redis_error: Mutex<Option<String>>,
    /// Sentinel mode: the primary (`host:port`) the writer's connection went to.
    pub redis_primary: Mutex<Option<String>>,
    /// Rotated SASL credentials from `kafka.client_files` handed to librdkafka.
    pub kafka_credentials_applied: AtomicU64,
    /// Milliseconds since `started` of the last acknowledgement (Redis or dead letter).
    pub last_ack_ms: AtomicU64,
    /// Records handed to the pipeline and not yet acknowledged (refreshed by the source).
    pub pending_records: AtomicU64,
    /// Brokers librdkafka reports as up, from its periodic statistics.
    pub kafka_brokers_up: AtomicU64,
    /// Whether librdkafka's statistics have arrived at least once.
    pub kafka_stats_seen: AtomicBool,
    /// Per (topic, partition): committed offset, high watermark and lag.
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionFigures>>,
    /// Seconds per Redis pipeline; observed once per batch, not per event.
    pub pipeline_seconds: Histogram,
    recent_latencies: Mutex<VecDeque<u32>>,
    /// Where the HTTP side listens, once bound (port 0 picks a free one).
    pub http_addr: OnceLock<SocketAddr>,
    /// Where `http.probe_listen` listens, once bound, when it is set.
    pub probe_addr: OnceLock<SocketAddr>,
    /// HTTP connections closed to make room for a new one (the oldest goes first).
    pub http_evicted: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            devices: TopicStats::default(),
            metrics: TopicStats::default(),
            batches: AtomicU64::new(0),
            batched_events: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            disowned: AtomicU64::new(0),
            fences: AtomicU64::new(0),
            writers_fenced: AtomicU64::new(0),
            ownership_proofs: AtomicU64::new(0),
            ownership_refused: AtomicU64::new(0),
            guard_cache_resets: AtomicU64::new(0),
            dead_letters_lost: AtomicU64::new(0),
            dead_letter_failing: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            pipeline_micros_total: AtomicU64::new(0),
            pipeline_micros_max: AtomicU64::new(0),
            redis_up: AtomicBool::new(false),
            kafka_assigned: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
            last_redis_error: Mutex::new(None),
            redis_primary: Mutex::new(None),
            kafka_credentials_applied: AtomicU64::new(0),
            last_ack_ms: AtomicU64::new(0),
            pending_records: AtomicU64::new(0),
            kafka_brokers_up: AtomicU64::new(0),
            kafka_stats_seen: AtomicBool::new(false),
            partitions: Mutex::new(BTreeMap::new()),
            pipeline_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            recent_latencies: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
            http_addr: OnceLock::new(),
            probe_addr: OnceLock::new(),
            http_evicted: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn topic(&self, kind: TopicKind) -> &TopicStats {
        match kind {
            TopicKind::Device => &self.devices,
            TopicKind::Metric => &self.metrics,
        }
    }

    /// Once per Redis pipeline (hundreds a second at most), so the lock is cheap.
    pub fn record_batch(&self, events: u64, micros: u64) {
        self.batches.fetch_add(1, Relaxed);
        self.batched_events.fetch_add(events, Relaxed);
        self.max_batch.fetch_max(events, Relaxed);
        self.pipeline_micros_total.fetch_add(micros, Relaxed);
        self.pipeline_micros_max.fetch_max(micros, Relaxed);
        self.pipeline_seconds.observe(micros as f64 / 1e6);
        if let Ok(mut recent) = self.recent_latencies.lock() {
            if recent.len() == LATENCY_SAMPLES {
                recent.pop_front();
            }
            recent.push_back(micros.min(u32::MAX as u64) as u32);
        }
    }

    /// Remembers the last transient Redis error (the writer retries it).
    pub fn redis_error(&self, reason: &str) {
        if let Ok(mut last) = self.last_redis_error.lock() {
            if last.as_deref() != Some(reason) {
                *last = Some(reason.to_owned());
            }
        }
    }

    /// Remembers (or, with `None`, clears) why dead letters cannot be produced.
    pub fn dead_letter_error(&self, reason: Option<&str>) {
        if let Ok(mut failing) = self.dead_letter_failing.lock() {
            if failing.as_deref() != reason {
                *failing = reason.map(str::to_owned);
            }
        }
    }

    pub fn dead_letter_failing(&self) -> Option<String> {
        self.dead_letter_failing.lock().ok().and_then(|f| f.clone())
    }

    pub fn redis_primary(&self) -> Option<String> {
        self.redis_primary.lock().ok().and_then(|p| p.clone())
    }

    pub fn set_redis_primary(&self, primary: Option<String>) {
        if let Ok(mut current) = self.redis_primary.lock() {
            *current = primary;
        }
    }

    pub fn last_redis_error(&self) -> Option<String> {
        self.last_redis_error.lock().ok().and_then(|l| l.clone())
    }

    /// Something was acknowledged just now.
    pub fn acknowledged(&self) {
        self.last_ack_ms
            .store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    /// Milliseconds since the last acknowledgement (since start if none yet).
    pub fn since_last_ack_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64).saturating_sub(self.last_ack_ms.load(Relaxed))
    }

    /// p50 and p99 of the recent pipeline latencies, in microseconds.
    fn latency_percentiles(&self) -> (u64, u64) {
        let Ok(recent) = self.recent_latencies.lock() else {
            return (0, 0);
        };
        if recent.is_empty() {
            return (0, 0);
        }
        let mut sorted: Vec<u32> = recent.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as u64;
        (at(0.5), at(0.99))
    }

    /// A consistent-enough copy for reporting (each counter is read once).
    pub fn snapshot(&self) -> StatsSnapshot {
        let (p50, p99) = self.latency_percentiles();
        StatsSnapshot {
            pipeline_micros_p50: p50,
            pipeline_micros_p99: p99,
            pending_records: self.pending_records.load(Relaxed),
            kafka_brokers_up: self.kafka_brokers_up.load(Relaxed),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            devices: TopicSnapshot::of(&self.devices),
            metrics: TopicSnapshot::of(&self.metrics),
            batches: self.batches.load(Relaxed),
            batched_events: self.batched_events.load(Relaxed),
            max_batch: self.max_batch.load(Relaxed),
            retries: self.retries.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            pipeline_micros_max: self.pipeline_micros_max.load(Relaxed),
            pipeline_micros_mean: self
                .pipeline_micros_total
                .load(Relaxed)
                .checked_div(self.batches.load(Relaxed))
                .unwrap_or(0),
            redis_up: self.redis_up.load(Relaxed),
            kafka_assigned_partitions: self.kafka_assigned.load(Relaxed),
            paused: self.paused.load(Relaxed),
            commits: self.commits.load(Relaxed),
            rebalances: self.rebalances.load(Relaxed),
            redis_primary: self.redis_primary(),
            kafka_credentials_applied: self.kafka_credentials_applied.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopicSnapshot {
    pub consumed: u64,
    pub written: u64,
    pub stale: u64,
    pub dead_lettered: u64,
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
}

impl TopicSnapshot {
    fn of(t: &TopicStats) -> Self {
        TopicSnapshot {
            consumed: t.consumed.load(Relaxed),
            written: t.written.load(Relaxed),
            stale: t.stale.load(Relaxed),
            dead_lettered: t.dead_lettered.load(Relaxed),
            rejected: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), t.rejected(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    /// Rejected records, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsSnapshot {
    pub uptime_secs: f64,
    pub devices: TopicSnapshot,
    pub metrics: TopicSnapshot,
    pub batches: u64,
    pub batched_events: u64,
    pub max_batch: u64,
    pub retries: u64,
    pub in_flight: u64,
    pub pipeline_micros_max: u64,
    pub pipeline_micros_mean: u64,
    pub pipeline_micros_p50: u64,
    pub pipeline_micros_p99: u64,
    pub pending_records: u64,
    pub kafka_brokers_up: u64,
    pub redis_up: bool,
    pub kafka_assigned_partitions: u64,
    pub paused: bool,
    pub commits: u64,
    pub rebalances: u64,
    /// Sentinel mode: the primary the writer writes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_primary: Option<String>,
    /// Rotated SASL credentials from `kafka.client_files` applied since start.
    pub kafka_credentials_applied: u64,
}
