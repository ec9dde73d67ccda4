//! The cache as Redis sees it, refreshed once a second in the background on a connection
//! of its own, so `/stats`, `/metrics` and `/readyz` never add a Redis round trip to a
//! request or to the write path. It also notices a Redis outage while no events flow, and
//! keeps the short history readiness needs ("Redis errors in the last minute").

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metacache_client::connect::RedisConn;
use serde::Serialize;

use crate::config::Settings;
use crate::pipeline::sink::redis::KeyLayout;
use crate::shutdown::Shutdown;
use crate::stats::Stats;

const REFRESH: Duration = Duration::from_secs(1);

/// Figures about the cache itself, as of the last refresh.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CacheFigures {
    /// `ZCARD devices`.
    pub total_devices: u64,
    /// Oldest and newest `last_updated` in the index, epoch ms.
    pub oldest_device_ms: Option<i64>,
    pub newest_device_ms: Option<i64>,
    /// `SCARD metric_namespaces`.
    pub metric_namespaces: u64,
    pub used_memory_bytes: u64,
    /// 0 = no limit.
    pub maxmemory_bytes: u64,
    pub maxmemory_policy: String,
    pub redis_version: String,
}

/// What the monitor last saw; read by the HTTP side.
#[derive(Debug, Default)]
pub struct Observed {
    state: Mutex<ObservedState>,
}

#[derive(Debug, Default, Clone)]
pub struct ObservedState {
    pub cache: Option<CacheFigures>,
    /// `None` until the first attempt.
    pub redis_reachable: Option<bool>,
    pub redis_down_since: Option<Instant>,
    pub redis_error: Option<String>,
    /// Set when Redis's eviction policy may remove keys metacache wrote.
    pub eviction_warning: Option<String>,
    /// Writer retries and dead letters within the readiness window.
    pub recent_redis_errors: u64,
    pub recent_dead_letters: u64,
}

impl Observed {
    pub fn get(&self) -> ObservedState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut ObservedState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }
}

/// Whether `policy` can evict keys metacache wrote: `allkeys-*` always can; `volatile-*`
/// only keys with a TTL, which metacache sets only when configured to.
pub fn eviction_risk(policy: &str, ttls_set: bool) -> Option<String> {
    if policy.starts_with("allkeys-") || (ttls_set && policy.starts_with("volatile-")) {
        Some(format!(
            "Redis maxmemory-policy is {policy}: when memory runs out Redis evicts cached entries \
             metacache wrote, and readers silently miss them; use noeviction (writes then fail \
             and are retried) or give Redis more memory. The writer's device cache stays on:              after an eviction it may skip an update older than the evicted one, which leaves              the key absent (a miss), never older than what the stream last wrote"
        ))
    } else {
        None
    }
}

/// Reads `field:value` out of an `INFO` reply.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == field).then(|| v.trim())
    })
}

pub async fn run(
    settings: Settings,
    stats: Arc<Stats>,
    observed: Arc<Observed>,
    shutdown: Shutdown,
) {
    let keys = settings.keys();
    let ttls_set = settings.devices.ttl_secs > 0 || settings.metrics.ttl_secs > 0;
    let window = Duration::from_secs(settings.http.degraded_window_secs);
    let mut history: VecDeque<(Instant, u64, u64)> = VecDeque::new();
    let mut conn: Option<RedisConn> = None;
    let mut at: Option<String> = None;
    let sentinel = settings.redis.mode() == metacache_client::settings::RedisMode::Sentinel;
    let mut warned_policy: Option<String> = None;
    let mut ticker = tokio::time::interval(REFRESH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Recent errors: counter growth over the window.
        let now = Instant::now();
        let retries = stats.retries.load(Relaxed);
        let dead =
            stats.devices.dead_lettered.load(Relaxed) + stats.metrics.dead_lettered.load(Relaxed);
        history.push_back((now, retries, dead));
        while history
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > window)
        {
            history.pop_front();
        }
        let (recent_errors, recent_dead) = history
            .front()
            .map(|(_, r, d)| (retries - r, dead - d))
            .unwrap_or((0, 0));
        observed.update(|s| {
            s.recent_redis_errors = recent_errors;
            s.recent_dead_letters = recent_dead;
        });

        // Sentinel mode: follow the writer to the primary it writes to now.
        let writer_at = stats.redis_primary();
        if sentinel && writer_at.is_some() && writer_at != at {
            conn = None;
        }
        if conn.is_none() {
            match open(&settings).await {
                Ok((c, primary)) => {
                    conn = Some(c);
                    at = primary.map(|p| p.address);
                }
                Err(e) => {
                    mark_down(&observed, crate::pipeline::sink::redis::connect_trouble(&e));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = redis::cmd("PING").query_async::<String>(c).await {
            mark_down(&observed, crate::pipeline::sink::redis::connect_trouble(&e));
            if sentinel {
                // The next tick asks the sentinels again.
                conn = None;
            }
            continue;
        }
        let figures = refresh(c, &keys).await;
        observed.update(|s| {
            s.redis_reachable = Some(true);
            s.redis_down_since = None;
            s.redis_error = None;
            if let Ok(f) = &figures {
                s.eviction_warning = eviction_risk(&f.maxmemory_policy, ttls_set);
                s.cache = Some(f.clone());
            }
        });
        if let Ok(f) = &figures {
            let risk = eviction_risk(&f.maxmemory_policy, ttls_set);
            if risk.is_some() && warned_policy.as_deref() != Some(f.maxmemory_policy.as_str()) {
                tracing::warn!("{}", risk.unwrap_or_default());
                warned_policy = Some(f.maxmemory_policy.clone());
            }
        }
    }
}

fn mark_down(observed: &Observed, error: String) {
    observed.update(|s| {
        if s.redis_reachable != Some(false) {
            s.redis_down_since = Some(Instant::now());
        }
        s.redis_reachable = Some(false);
        s.redis_error = Some(error);
    });
}

async fn open(
    settings: &Settings,
) -> redis::RedisResult<(RedisConn, Option<metacache_client::sentinel::Primary>)> {
    // The same connection as everyone's (credentials, password file, TLS), answering
    // within a second and never retried, so that /readyz tells the truth at once.
    metacache_client::connect::open_located(&settings.redis, Duration::from_secs(1), 0, None).await
}

async fn refresh(conn: &mut RedisConn, keys: &KeyLayout) -> redis::RedisResult<CacheFigures> {
    let mut pipe = redis::pipe();
    for key in keys.index_keys() {
        pipe.cmd("ZCARD")
            .arg(key)
            .cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZRANGE")
            .arg(key)
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES");
    }
    pipe.cmd("SCARD")
        .arg(keys.metric_namespaces())
        .cmd("INFO")
        .arg("memory")
        .cmd("INFO")
        .arg("server");
    let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let tail = replies.split_off(replies.len().saturating_sub(3));
    let (namespaces, memory, server): (u64, String, String) =
        redis::FromRedisValue::from_redis_value(redis::Value::Array(tail))?;
    // Summed and compared over the index shards.
    let (mut total, mut oldest, mut newest) = (0u64, None::<f64>, None::<f64>);
    for shard in replies.chunks(3) {
        type Shard = (u64, Vec<(String, f64)>, Vec<(String, f64)>);
        let (count, first, last): Shard =
            redis::FromRedisValue::from_redis_value(redis::Value::Array(shard.to_vec()))?;
        total += count;
        if let Some((_, s)) = first.first() {
            oldest = Some(oldest.map_or(*s, |o| o.min(*s)));
        }
        if let Some((_, s)) = last.first() {
            newest = Some(newest.map_or(*s, |n| n.max(*s)));
        }
    }
    let number = |info: &str, field: &str| {
        info_field(info, field)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (mut used, mut max) = (number(&memory, "used_memory"), number(&memory, "maxmemory"));
    if conn.is_cluster() {
        // Memory is per node: the cache's is the sum over the primaries.
        (used, max) = (0, 0);
        for info in conn.info_each("memory").await? {
            used += number(&info, "used_memory");
            max += number(&info, "maxmemory");
        }
    }
    Ok(CacheFigures {
        total_devices: total,
        oldest_device_ms: oldest.map(|s| s as i64),
        newest_device_ms: newest.map(|s| s as i64),
        metric_namespaces: namespaces,
        used_memory_bytes: used,
        maxmemory_bytes: max,
        maxmemory_policy: info_field(&memory, "maxmemory_policy")
            .unwrap_or("")
            .to_owned(),
        redis_version: info_field(&server, "redis_version")
            .unwrap_or("")
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_policies_that_can_drop_metacache_keys() {
        assert!(eviction_risk("allkeys-lru", false).is_some());
        assert!(eviction_risk("allkeys-random", true).is_some());
        assert!(eviction_risk("volatile-lru", false).is_none());
        assert!(eviction_risk("volatile-ttl", true).is_some());
        assert!(eviction_risk("noeviction", true).is_none());
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\nmaxmemory_policy:noeviction\r\n";
        assert_eq!(info_field(info, "used_memory"), Some("1024"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("noeviction"));
        assert_eq!(info_field(info, "maxmemory"), None);
    }
}
