//! Removes index entries whose keys have expired. Only runs when a TTL is set: then a
//! `device:{id}` key can expire while its `devices` entry stays, and a metric set while
//! its namespace stays in `metric_namespaces`.
//!
//! It walks the indexes incrementally (ZSCAN/SSCAN), a small batch every 50 ms, so it never
//! competes with the writer. Each removal touches one key, so it works on Redis Cluster.
//! A device entry is removed only if its score is still the one seen with the expired key
//! (a script on the index key), so an upsert that lands meanwhile keeps its entry.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Script;

use crate::config::Settings;
use crate::pipeline::sink::redis::writer::Connector;
use crate::pipeline::sink::redis::KeyLayout;
use crate::shutdown::Shutdown;

const STEP: Duration = Duration::from_millis(50);

/// `KEYS[1]` = `devices`, `ARGV[1]` = id, `ARGV[2]` = the score seen: remove only if unchanged.
static REMOVE_IF_UNCHANGED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#,
    )
});

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub devices: u64,
    pub namespaces: u64,
}

/// Runs passes until shutdown; does nothing when no TTL is set.
///
/// A failed pass drops the connection and the next pass opens one through `reconnect`:
/// in sentinel mode that is how the janitor follows a failover to the new primary.
pub async fn run<C: ConnectionLike + Clone + Send + Sync + 'static>(
    conn: C,
    reconnect: Connector<C>,
    settings: Settings,
    shutdown: Shutdown,
) {
    let mut conn = Some(conn);
    let devices = settings.devices.ttl_secs > 0;
    let metrics = settings.metrics.ttl_secs > 0;
    if !devices && !metrics {
        return;
    }
    let keys = settings.keys();
    let interval = Duration::from_secs(settings.janitor.interval_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut current = match conn.take() {
            Some(c) => c,
            None => match reconnect().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "janitor cannot reach Redis; retrying next interval");
                    continue;
                }
            },
        };
        let pass = sweep(
            &mut current,
            &keys,
            devices,
            metrics,
            settings.janitor.batch,
            &shutdown,
        );
        let result = pass.await;
        match result {
            Ok(swept) => {
                if swept != Swept::default() {
                    tracing::info!(
                        devices = swept.devices,
                        namespaces = swept.namespaces,
                        "janitor removed index entries of expired keys"
                    );
                }
                conn = Some(current);
            }
            Err(e) => tracing::warn!(error = %e, "janitor pass failed; retrying next interval"),
        }
    }
}

/// One pass over the indexes.
pub async fn sweep<C: ConnectionLike>(
    conn: &mut C,
    keys: &KeyLayout,
    devices: bool,
    metrics: bool,
    batch: usize,
    shutdown: &Shutdown,
) -> redis::RedisResult<Swept> {
    let mut swept = Swept::default();
    if devices {
        // Every index shard in turn (one key without `devices.index_shards`).
        for index in keys.index_keys() {
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
                    .arg(index)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(batch)
                    .query_async(conn)
                    .await?;
                let exists = exist(conn, page.iter().map(|(id, _)| keys.device(id))).await?;
                for ((id, score), exists) in page.iter().zip(exists) {
                    if !exists {
                        let removed: i64 = REMOVE_IF_UNCHANGED
                            .key(index)
                            .arg(id)
                            .arg(*score as i64)
                            .invoke_async(conn)
                            .await?;
                        // The key may have come back between EXISTS and the removal with an
                        // older or equal `last_updated` (a replay), which leaves the score as it
                        // was: look again and restore the entry if so.
                        if removed > 0 {
                            if exist(conn, [keys.device(id)]).await? == [true] {
                                let _: i64 = redis::cmd("ZADD")
                                    .arg(index)
                                    .arg("GT")
                                    .arg(*score as i64)
                                    .arg(id)
                                    .query_async(conn)
                                    .await?;
                            } else {
                                swept.devices += 1;
                            }
                        }
                    }
                }
                cursor = next;
                if cursor == 0 || shutdown.is_cancelled() {
                    break;
                }
                tokio::time::sleep(STEP).await;
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
    }
    if metrics {
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(keys.metric_namespaces())
                .arg(cursor)
                .arg("COUNT")
                .arg(batch)
                .query_async(conn)
                .await?;
            let exists = exist(conn, page.iter().map(|ns| keys.metric_names(ns))).await?;
            for (ns, exists) in page.iter().zip(exists) {
                if !exists {
                    let removed: i64 = redis::cmd("SREM")
                        .arg(keys.metric_namespaces())
                        .arg(ns)
                        .query_async(conn)
                        .await?;
                    // A write may have recreated the set meanwhile (its own SADD found the
                    // namespace still listed): look again and restore it if so.
                    if removed > 0 {
                        if exist(conn, [keys.metric_names(ns)]).await? == [true] {
                            let _: i64 = redis::cmd("SADD")
                                .arg(keys.metric_namespaces())
                                .arg(ns)
                                .query_async(conn)
                                .await?;
                        } else {
                            swept.namespaces += 1;
                        }
                    }
                }
            }
            cursor = next;
            if cursor == 0 || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(STEP).await;
        }
    }
    Ok(swept)
}

/// `EXISTS` for each key, in one round trip.
async fn exist<C: ConnectionLike>(
    conn: &mut C,
    keys: impl IntoIterator<Item = String>,
) -> redis::RedisResult<Vec<bool>> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("EXISTS").arg(key);
    }
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    pipe.query_async(conn).await
}
