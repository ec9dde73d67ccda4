//! Counters the pipeline bumps on its hot path: plain relaxed atomics, no locks, so
//! observing the daemon never slows it. The HTTP side and the demo read snapshots.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

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

#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub devices: TopicStats,
    pub metrics: TopicStats,
    pub batches: AtomicU64,
    pub batched_events: AtomicU64,
    pub max_batch: AtomicU64,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    pub pipeline_micros_total: AtomicU64,
    pub pipeline_micros_max: AtomicU64,
    pub redis_up: AtomicBool,
    pub kafka_assigned: AtomicU64,
    pub paused: AtomicBool,
    pub commits: AtomicU64,
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
            in_flight: AtomicU64::new(0),
            pipeline_micros_total: AtomicU64::new(0),
            pipeline_micros_max: AtomicU64::new(0),
            redis_up: AtomicBool::new(false),
            kafka_assigned: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            commits: AtomicU64::new(0),
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

    pub fn record_batch(&self, events: u64, micros: u64) {
        self.batches.fetch_add(1, Relaxed);
        self.batched_events.fetch_add(events, Relaxed);
        self.max_batch.fetch_max(events, Relaxed);
        self.pipeline_micros_total.fetch_add(micros, Relaxed);
        self.pipeline_micros_max.fetch_max(micros, Relaxed);
    }

    /// A consistent-enough copy for reporting (each counter is read once).
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
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
    pub redis_up: bool,
    pub kafka_assigned_partitions: u64,
    pub paused: bool,
    pub commits: u64,
}
