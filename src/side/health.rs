//! Liveness and readiness, decided by pure functions over a snapshot of what the pipeline
//! and the monitor know, so every verdict can be tested without servers.
//!
//! Liveness (`/healthz`) only fails when a restart would help: records wait, Redis answers
//! and is not refusing writes, yet nothing was acknowledged for a long time. It never fails
//! because Redis or Kafka are down — restarting a healthy pod in a loop cures neither.
//!
//! Readiness (`/readyz`) tells the truth about the pipeline: healthy, degraded (working,
//! but something needs a look), or unhealthy (503: Redis unreachable past its grace period,
//! or no Kafka broker reachable).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    pub message: String,
}

impl Check {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Check {
            status,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub status: Status,
    pub checks: BTreeMap<&'static str, Check>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Liveness {
    pub alive: bool,
    pub message: String,
}

/// Everything the verdicts depend on.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub assigned_partitions: u64,
    /// librdkafka reported at least once (before that, broker state is unknown).
    pub kafka_stats_seen: bool,
    pub kafka_brokers_up: u64,
    /// `None` before the first check.
    pub redis_reachable: Option<bool>,
    pub redis_down_for: Option<Duration>,
    pub redis_error: Option<String>,
    pub recent_redis_errors: u64,
    /// The writer's last transient Redis error (what it is retrying).
    pub last_redis_error: Option<String>,
    /// Sentinel mode: the primary the writer writes to.
    pub redis_primary: Option<String>,
    pub recent_dead_letters: u64,
    /// Why dead letters cannot be produced right now.
    pub dead_letter_error: Option<String>,
    /// The most lagging partition: (topic, partition, lag).
    pub max_lag: Option<(String, i32, i64)>,
    pub eviction_warning: Option<String>,
    pub paused: bool,
    pub pending_records: u64,
    pub since_last_ack: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub redis_grace: Duration,
    pub wedged_after: Duration,
    pub lag_degraded: u64,
    pub window: Duration,
}

pub fn readiness(i: &Inputs, t: &Thresholds) -> Readiness {
    let mut checks = BTreeMap::new();
    let window = t.window.as_secs();

    let kafka = if i.kafka_stats_seen && i.kafka_brokers_up == 0 {
        Check::new(Status::Unhealthy, "no Kafka broker reachable")
    } else if i.assigned_partitions == 0 {
        Check::new(
            Status::Degraded,
            "no partitions assigned yet (joining the group, or more replicas than partitions)",
        )
    } else {
        Check::new(
            Status::Healthy,
            format!("{} partitions assigned", i.assigned_partitions),
        )
    };
    checks.insert("kafka", kafka);

    let redis = match (i.redis_reachable, i.redis_down_for) {
        (None, _) => Check::new(Status::Degraded, "Redis not checked yet"),
        (Some(false), down_for) => {
            let down_for = down_for.unwrap_or_default();
            let status = if down_for >= t.redis_grace {
                Status::Unhealthy
            } else {
                Status::Degraded
            };
            Check::new(
                status,
                format!(
                    "Redis not usable for {} s: {}",
                    down_for.as_secs(),
                    i.redis_error.as_deref().unwrap_or("no answer")
                ),
            )
        }
        (Some(true), _) if i.recent_redis_errors > 0 => Check::new(
            Status::Degraded,
            match &i.last_redis_error {
                Some(last) => format!(
                    "{} Redis write errors in the last {window} s (retrying); last: {last}",
                    i.recent_redis_errors
                ),
                None => format!(
                    "{} Redis write errors in the last {window} s (retrying)",
                    i.recent_redis_errors
                ),
            },
        ),
        (Some(true), _) => match &i.redis_primary {
            Some(primary) => Check::new(
                Status::Healthy,
                format!("Redis answering; writing to primary {primary} (named by the sentinels)"),
            ),
            None => Check::new(Status::Healthy, "Redis answering"),
        },
    };
    checks.insert("redis", redis);

    let writer = if i.paused {
        Check::new(
            Status::Degraded,
            "partitions paused: the writer is not keeping up",
        )
    } else {
        Check::new(Status::Healthy, "consuming")
    };
    checks.insert("writer", writer);

    let lag = match &i.max_lag {
        Some((topic, p, lag)) if *lag as u64 > t.lag_degraded => Check::new(
            Status::Degraded,
            format!(
                "{topic}[{p}] lags {lag} records (threshold {})",
                t.lag_degraded
            ),
        ),
        Some((topic, p, lag)) => Check::new(
            Status::Healthy,
            format!("largest lag {lag} records ({topic}[{p}])"),
        ),
        None => Check::new(Status::Healthy, "no lag reported yet"),
    };
    checks.insert("lag", lag);

    let dead = if let Some(e) = &i.dead_letter_error {
        Check::new(
            Status::Degraded,
            format!(
                "{e} (retrying; refused for good is given up after {} s)",
                crate::pipeline::dead_letter::GIVE_UP_AFTER.as_secs()
            ),
        )
    } else if i.recent_dead_letters > 0 {
        Check::new(
            Status::Degraded,
            format!(
                "{} events dead-lettered in the last {window} s",
                i.recent_dead_letters
            ),
        )
    } else {
        Check::new(
            Status::Healthy,
            format!("no dead letters in the last {window} s"),
        )
    };
    checks.insert("dead_letters", dead);

    let eviction = match &i.eviction_warning {
        Some(w) => Check::new(Status::Degraded, w.clone()),
        None => Check::new(Status::Healthy, "Redis will not evict metacache's keys"),
    };
    checks.insert("eviction", eviction);

    let status = checks
        .values()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Healthy);
    let message = if status == Status::Healthy {
        "all checks pass".to_owned()
    } else {
        checks
            .iter()
            .filter(|(_, c)| c.status != Status::Healthy)
            .map(|(name, c)| format!("{name}: {}", c.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Readiness {
        status,
        checks,
        message,
    }
}

pub fn liveness(i: &Inputs, t: &Thresholds) -> Liveness {
    let wedged = i.pending_records > 0
        && i.redis_reachable == Some(true)
        && i.recent_redis_errors == 0
        && i.since_last_ack >= t.wedged_after;
    if wedged {
        Liveness {
            alive: false,
            message: format!(
                "pipeline wedged: {} records waiting, Redis answering, nothing acknowledged for {} s",
                i.pending_records,
                i.since_last_ack.as_secs()
            ),
        }
    } else {
        Liveness {
            alive: true,
            message: "making progress".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds {
            redis_grace: Duration::from_secs(10),
            wedged_after: Duration::from_secs(60),
            lag_degraded: 1000,
            window: Duration::from_secs(30),
        }
    }

    fn healthy() -> Inputs {
        Inputs {
            assigned_partitions: 4,
            kafka_stats_seen: true,
            kafka_brokers_up: 1,
            redis_reachable: Some(true),
            max_lag: Some(("device-metadata".into(), 0, 5)),
            ..Inputs::default()
        }
    }

    #[test]
    fn all_good_is_healthy() {
        let r = readiness(&healthy(), &thresholds());
        assert_eq!(r.status, Status::Healthy);
        assert_eq!(r.message, "all checks pass");
        assert_eq!(r.checks.len(), 6);
    }

    #[test]
    fn redis_outage_is_degraded_then_unhealthy_after_the_grace_period() {
        let mut i = healthy();
        i.redis_reachable = Some(false);
        i.redis_error = Some("unreachable: connection refused".into());
        i.redis_down_for = Some(Duration::from_secs(3));
        let r = readiness(&i, &thresholds());
        assert_eq!(r.status, Status::Degraded);
        assert_eq!(r.checks["redis"].status, Status::Degraded);
        i.redis_down_for = Some(Duration::from_secs(10));
        let r = readiness(&i, &thresholds());
        assert_eq!(r.status, Status::Unhealthy);
        assert!(
            r.message
                .contains("redis: Redis not usable for 10 s: unreachable: connection refused"),
            "{}",
            r.message
        );
        // Liveness does not care: a restart would not bring Redis back.
        assert!(liveness(&i, &thresholds()).alive);
    }

    #[test]
    fn no_broker_is_unhealthy_but_no_assignment_only_degraded() {
        let mut i = healthy();
        i.kafka_brokers_up = 0;
        assert_eq!(readiness(&i, &thresholds()).status, Status::Unhealthy);
        let mut i = healthy();
        i.assigned_partitions = 0;
        assert_eq!(readiness(&i, &thresholds()).status, Status::Degraded);
    }

    #[test]
    fn lag_errors_dead_letters_pauses_and_eviction_degrade() {
        for change in [
            |i: &mut Inputs| i.max_lag = Some(("t".into(), 1, 5000)),
            |i: &mut Inputs| i.recent_redis_errors = 3,
            |i: &mut Inputs| {
                i.recent_redis_errors = 3;
                i.last_redis_error = Some("OOM command not allowed".into());
            },
            |i: &mut Inputs| i.recent_dead_letters = 1,
            |i: &mut Inputs| i.paused = true,
            |i: &mut Inputs| i.eviction_warning = Some("allkeys-lru".into()),
        ] {
            let mut i = healthy();
            change(&mut i);
            let r = readiness(&i, &thresholds());
            assert_eq!(r.status, Status::Degraded, "{i:?}");
            assert_ne!(r.message, "all checks pass");
        }
    }

    #[test]
    fn write_errors_name_the_last_one() {
        let mut i = healthy();
        i.recent_redis_errors = 4;
        i.last_redis_error = Some("READONLY: You can't write against a read only replica.".into());
        let r = readiness(&i, &thresholds());
        assert_eq!(r.checks["redis"].status, Status::Degraded);
        assert_eq!(
            r.checks["redis"].message,
            "4 Redis write errors in the last 30 s (retrying); last: READONLY: You can't write against a read only replica."
        );
    }

    #[test]
    fn wedged_only_when_waiting_redis_fine_and_no_acks_for_long() {
        let mut i = healthy();
        i.pending_records = 10;
        i.since_last_ack = Duration::from_secs(61);
        let l = liveness(&i, &thresholds());
        assert!(!l.alive);
        assert!(l.message.contains("10 records waiting"));
        // Retrying Redis errors: blocked by Redis, not wedged.
        i.recent_redis_errors = 1;
        assert!(liveness(&i, &thresholds()).alive);
        // Nothing waiting: idle, not wedged.
        let mut i = healthy();
        i.since_last_ack = Duration::from_secs(600);
        assert!(liveness(&i, &thresholds()).alive);
    }
}
