//! Writing events the plain way, one command at a time, as the README's layout defines
//! each event (no pipeline, no scripts, no TTLs). The daemon's writer is the fast and
//! careful way to reach the same state; this one is short enough to read at a glance, so
//! examples and read-side tests can have a known cache without the daemon. The daemon's
//! tests check that both leave Redis holding the same keys.

use metacache_contract::keys::KeyLayout;
use metacache_contract::model::{DeviceMetadata, Event, MetricOp};
use redis::Commands;

use crate::{samples, EmbeddedRedis};

impl EmbeddedRedis {
    /// Writes `events`, in order, under `key_prefix`. An upsert older than the stored
    /// device is skipped, as the stale guard skips it.
    ///
    /// ```
    /// use metacache_contract::model::{Event, MetricOp};
    /// use metacache_embedded::EmbeddedRedis;
    ///
    /// let redis = EmbeddedRedis::start()?;
    /// redis.seed("", &[Event::Metric(MetricOp::Add {
    ///     namespace: "billing".into(),
    ///     metric_names: vec!["cpu".into()],
    /// })])?;
    /// # Ok::<(), String>(())
    /// ```
    pub fn seed(&self, key_prefix: &str, events: &[Event]) -> Result<(), String> {
        let keys = KeyLayout::new(key_prefix);
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .map_err(|e| format!("redis: {e}"))?;
        for event in events {
            apply(&mut conn, &keys, event).map_err(|e| format!("redis: {e}"))?;
        }
        Ok(())
    }

    /// The demo's end state under `key_prefix`: devices `dev-42`, `dev-43`, `dev-44`;
    /// namespaces `billing`, `default`, `infra`.
    pub fn seed_demo(&self, key_prefix: &str) -> Result<(), String> {
        self.seed(key_prefix, &samples::valid_sample_events())
    }
}

fn apply(conn: &mut redis::Connection, keys: &KeyLayout, event: &Event) -> redis::RedisResult<()> {
    match event {
        Event::DeviceUpsert(device) => {
            let key = keys.device(device.device_id());
            let stored: Option<String> = conn.get(&key)?;
            let newer_stored = stored
                .as_deref()
                .and_then(|json| DeviceMetadata::from_normalized_json(json).ok())
                .is_some_and(|d| d.last_updated_ms > device.last_updated_ms());
            if !newer_stored {
                let () = conn.set(&key, device.normalized_json())?;
                redis::cmd("ZADD")
                    .arg(keys.index_key(device.device_id()))
                    .arg("GT")
                    .arg(device.last_updated_ms())
                    .arg(device.device_id())
                    .query::<()>(conn)?;
            }
        }
        Event::DeviceDelete { device_id } => {
            let () = conn.del(keys.device(device_id))?;
            let () = conn.zrem(keys.index_key(device_id), device_id)?;
        }
        Event::Metric(op) => {
            let set = keys.metric_names(op.namespace());
            match op {
                MetricOp::Replace { metric_names, .. } => {
                    let () = conn.del(&set)?;
                    if !metric_names.is_empty() {
                        let () = conn.sadd(&set, metric_names)?;
                    }
                    let () = conn.sadd(keys.metric_namespaces(), op.namespace())?;
                }
                MetricOp::Add { metric_names, .. } => {
                    if !metric_names.is_empty() {
                        let () = conn.sadd(&set, metric_names)?;
                    }
                    let () = conn.sadd(keys.metric_namespaces(), op.namespace())?;
                }
                MetricOp::Remove { metric_names, .. } => {
                    if !metric_names.is_empty() {
                        let () = conn.srem(&set, metric_names)?;
                    }
                }
                MetricOp::Delete { .. } => {
                    let () = conn.del(&set)?;
                    let () = conn.srem(keys.metric_namespaces(), op.namespace())?;
                }
            }
        }
    }
    Ok(())
}
