//! Prometheus exposition with `prometheus-client`. The pipeline's counters stay plain
//! atomics in [`Stats`]; this collector reads them at scrape time, so scraping costs the
//! hot path nothing but the relaxed loads.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::model::{RejectReason, TopicKind};
use crate::side::health::{self, Status, Thresholds};
use crate::side::http::inputs;
use crate::side::monitor::Observed;
use crate::stats::{Stats, TopicStats};
use std::sync::atomic::Ordering::Relaxed;

/// The registry `/metrics` encodes: the pipeline-duration histogram and the collector.
/// `thresholds` are the probes' own, so the readiness and liveness gauges say what
/// `/readyz` and `/healthz` answer at the same moment (alerts page on the gauges).
pub fn registry(
    stats: Arc<Stats>,
    observed: Arc<Observed>,
    topics: [String; 2],
    thresholds: Thresholds,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_with_unit(
        "metacache_redis_pipeline_duration",
        "Time from sending a Redis pipeline to its last reply",
        Unit::Seconds,
        stats.pipeline_seconds.clone(),
    );
    registry.register_collector(Box::new(StatsCollector {
        stats,
        observed,
        topics,
        thresholds,
    }));
    registry
}

#[derive(Debug)]
struct StatsCollector {
    stats: Arc<Stats>,
    observed: Arc<Observed>,
    /// Device topic, metric topic: the `topic` label values.
    topics: [String; 2],
    thresholds: Thresholds,
}

impl StatsCollector {
    fn per_topic(&self) -> [(&str, &TopicStats); 2] {
        [
            (self.topics[0].as_str(), self.stats.topic(TopicKind::Device)),
            (self.topics[1].as_str(), self.stats.topic(TopicKind::Metric)),
        ]
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let e = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(e)
}

impl StatsCollector {
    /// What `/readyz` and `/healthz` would answer now, as gauges.
    fn encode_health(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inputs = inputs(&self.stats, &self.observed);
        let ready = health::readiness(&inputs, &self.thresholds);
        gauge(
            encoder,
            "metacache_ready",
            "1 while /readyz answers 200 (healthy or degraded), 0 while it answers 503",
            None,
            (ready.status != Status::Unhealthy) as i64,
        )?;
        let mut e = encoder.encode_descriptor(
            "metacache_readiness",
            "Each /readyz check: 0 healthy, 1 degraded, 2 unhealthy",
            None,
            MetricType::Gauge,
        )?;
        for (check, verdict) in &ready.checks {
            let level = match verdict.status {
                Status::Healthy => 0,
                Status::Degraded => 1,
                Status::Unhealthy => 2,
            };
            ConstGauge::new(level).encode(e.encode_family(&[("check", *check)])?)?;
        }
        let live = health::liveness(&inputs, &self.thresholds);
        gauge(
            encoder,
            "metacache_live",
            "1 while /healthz answers 200; 0 when the pipeline is wedged",
            None,
            live.alive as i64,
        )
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        type Field = fn(&TopicStats) -> u64;
        let per_topic: [(&str, &str, Field); 4] = [
            (
                "metacache_events_consumed",
                "Records read from Kafka",
                |t| t.consumed.load(Relaxed),
            ),
            (
                "metacache_events_written",
                "Events written to Redis and acknowledged",
                |t| t.written.load(Relaxed),
            ),
            (
                "metacache_events_stale",
                "Device updates skipped as older than the stored entry",
                |t| t.stale.load(Relaxed),
            ),
            (
                "metacache_events_dead_lettered",
                "Rejected events acknowledged by the dead-letter topic",
                |t| t.dead_lettered.load(Relaxed),
            ),
        ];
        for (name, help, field) in per_topic {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (topic, t) in self.per_topic() {
                let labels = [("topic", topic)];
                ConstCounter::new(field(t)).encode(e.encode_family(&labels)?)?;
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "metacache_events_rejected",
                "Rejected events by reason",
                None,
                MetricType::Counter,
            )?;
            for (topic, t) in self.per_topic() {
                for reason in RejectReason::ALL {
                    let labels = [("topic", topic), ("reason", reason.as_str())];
                    ConstCounter::new(t.rejected(reason)).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        counter(
            &mut encoder,
            "metacache_redis_batches",
            "Redis pipelines acknowledged",
            s.batches.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_redis_batch_events",
            "Events in acknowledged pipelines",
            s.batched_events.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_redis_retries",
            "Retries after transient Redis errors",
            s.retries.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_records_disowned",
            "Records dropped unsent because their partition was revoked meanwhile (the new owner replays them)",
            s.disowned.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_redis_fences",
            "Redis connections dropped so that writes of revoked partitions cannot land",
            s.fences.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_redis_writers_fenced",
            "Other writers' Redis connections closed before writing under a new assignment",
            s.writers_fenced.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_ownership_proofs",
            "New writer connections on which this member proved it still owns its partitions (a commit the group coordinator took)",
            s.ownership_proofs.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_ownership_refused",
            "Proofs of ownership refused (this member was evicted) or unanswered; nothing is written meanwhile",
            s.ownership_refused.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_http_connections_evicted",
            "HTTP connections closed to make room for a new one, oldest first (many means a flood of clients)",
            s.http_evicted.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_dead_letters_lost",
            "Dead letters refused for good by the broker and given up (each logged at error level)",
            s.dead_letters_lost.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_guard_cache_resets",
            "Times the device cache was emptied because Redis may have lost what it held (restart, flush, failover, retry)",
            s.guard_cache_resets.load(Relaxed),
        )?;
        counter(
            &mut encoder,
            "metacache_offset_commits",
            "Offset commits sent to Kafka",
            s.commits.load(Relaxed),
        )?;
        gauge(
            &mut encoder,
            "metacache_redis_pipelines_in_flight",
            "Pipelines sent and not yet answered",
            None,
            s.in_flight.load(Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "metacache_pending_records",
            "Records consumed and not yet acknowledged",
            None,
            s.pending_records.load(Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "metacache_kafka_assigned_partitions",
            "Partitions assigned to this consumer",
            None,
            s.kafka_assigned.load(Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "metacache_consumer_paused",
            "1 while the partitions are paused for backpressure",
            None,
            s.paused.load(Relaxed) as i64,
        )?;
        gauge(
            &mut encoder,
            "metacache_kafka_up",
            "1 while at least one Kafka broker is reachable",
            None,
            (s.kafka_brokers_up.load(Relaxed) > 0) as i64,
        )?;
        gauge(
            &mut encoder,
            "metacache_uptime",
            "Time since start",
            Some(&Unit::Seconds),
            s.started.elapsed().as_secs() as i64,
        )?;

        let partitions = s.partitions.lock().map(|p| p.clone()).unwrap_or_default();
        for (name, help, pick) in [
            (
                "metacache_consumer_lag",
                "Records between the committed offset and the high watermark",
                0,
            ),
            (
                "metacache_consumer_committed_offset",
                "Last committed offset",
                1,
            ),
            (
                "metacache_consumer_high_watermark",
                "The partition's high watermark",
                2,
            ),
        ] {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ((topic, partition), f) in &partitions {
                let partition = partition.to_string();
                let labels = [("topic", topic.as_str()), ("partition", partition.as_str())];
                let value = [f.lag, f.committed, f.high_watermark][pick];
                ConstGauge::new(value).encode(e.encode_family(&labels)?)?;
            }
        }

        let observed = self.observed.get();
        gauge(
            &mut encoder,
            "metacache_redis_up",
            "1 while Redis answers the monitor's PING",
            None,
            (observed.redis_reachable == Some(true)) as i64,
        )?;
        self.encode_health(&mut encoder)?;
        gauge(
            &mut encoder,
            "metacache_redis_eviction_possible",
            "1 when Redis's maxmemory-policy may evict keys metacache wrote",
            None,
            observed.eviction_warning.is_some() as i64,
        )?;
        if let Some(c) = &observed.cache {
            if !c.maxmemory_policy.is_empty() {
                let mut e = encoder.encode_descriptor(
                    "metacache_redis_maxmemory_policy",
                    "Redis's maxmemory-policy, as the label (always 1)",
                    None,
                    MetricType::Gauge,
                )?;
                let labels = [("policy", c.maxmemory_policy.as_str())];
                ConstGauge::new(1).encode(e.encode_family(&labels)?)?;
            }
        }
        if let Some(c) = &observed.cache {
            gauge(
                &mut encoder,
                "metacache_cache_devices",
                "Devices in the index (ZCARD devices)",
                None,
                c.total_devices as i64,
            )?;
            gauge(
                &mut encoder,
                "metacache_cache_metric_namespaces",
                "Namespaces in metric_namespaces",
                None,
                c.metric_namespaces as i64,
            )?;
            gauge(
                &mut encoder,
                "metacache_redis_used_memory",
                "Redis used_memory",
                Some(&Unit::Bytes),
                c.used_memory_bytes as i64,
            )?;
            gauge(
                &mut encoder,
                "metacache_redis_maxmemory",
                "Redis maxmemory (0 = no limit)",
                Some(&Unit::Bytes),
                c.maxmemory_bytes as i64,
            )?;
            if let Some(oldest) = c.oldest_device_ms {
                gauge(
                    &mut encoder,
                    "metacache_cache_oldest_device_timestamp",
                    "Oldest last_updated in the index, epoch seconds",
                    Some(&Unit::Seconds),
                    oldest / 1000,
                )?;
            }
        }
        Ok(())
    }
}
