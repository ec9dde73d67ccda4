//! `metacache reindex`: rebuilds the device index from the device keys, for changing
//! `devices.index_shards` or repairing an index after a crash or a manual edit.
//!
//! Every device key is read (`SCAN` + `MGET`), its `last_updated` becomes its score, and
//! each new index shard is built under a key of its own beside the live one and then
//! `RENAME`d over it, so a reader never sees a shard half built. Index keys of the old
//! layout that the new one does not use are deleted, and the layout descriptor is
//! rewritten last. Writers must be stopped: a running daemon keeps writing the layout it
//! started with, and the next start of one with the old `devices.index_shards` is refused
//! by the descriptor.

use std::collections::BTreeMap;

use metacache_client::connect::RedisConn;

use super::verify::scan;
use crate::config::Settings;
use crate::keys::{glob_escape, KeyLayout};
use crate::model::DeviceMetadata;
use metacache_contract::LayoutDescriptor;

/// Device keys read per `MGET`, and index members written per `ZADD`.
const BATCH: usize = 1000;

/// What a reindex did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reindexed {
    /// The shard count before (from the descriptor; 1 when there was none).
    pub shards_before: u32,
    pub shards_after: u32,
    /// Devices indexed.
    pub devices: u64,
    /// Device keys whose value is not a device's JSON: left out of the index (and named
    /// in the log), as readers would report them corrupt anyway.
    pub skipped: Vec<String>,
    /// Index keys deleted because the new layout does not use them.
    pub removed_keys: Vec<String>,
}

impl std::fmt::Display for Reindexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reindexed {} devices into {} index shard(s) (was {}); removed {} old index key(s)",
            self.devices,
            self.shards_after,
            self.shards_before,
            self.removed_keys.len()
        )?;
        if !self.skipped.is_empty() {
            write!(
                f,
                "; skipped {} key(s) that hold no device, e.g. {:?}",
                self.skipped.len(),
                &self.skipped[..self.skipped.len().min(5)]
            )?;
        }
        Ok(())
    }
}

/// Rebuilds the index of the cache under `settings.redis.key_prefix` with `shards` shards.
/// Refuses while writers are signed in (`metacache:writers` has fields) unless `force`:
/// a writer still running keeps writing the layout it started with.
pub async fn run(settings: &Settings, shards: u32, force: bool) -> Result<Reindexed, String> {
    let mut conn = metacache_client::connect::open(&settings.redis)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let writers_key = KeyLayout::new(&settings.redis.key_prefix)
        .writers()
        .to_owned();
    let writers: Vec<String> = redis::cmd("HKEYS")
        .arg(&writers_key)
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("Redis failed: {e}"))?;
    if !writers.is_empty() && !force {
        return Err(format!(
            "{} writer(s) are signed in under {writers_key} ({}): stop every metacache writing this cache first (a clean stop signs out); if they are gone without signing out (a crash), pass --force",
            writers.len(),
            writers.join(", ")
        ));
    }
    reindex(&mut conn, &settings.redis.key_prefix, shards)
        .await
        .map_err(|e| format!("Redis failed: {e}"))
}

/// [`run`] on a connection.
pub async fn reindex(
    conn: &mut RedisConn,
    prefix: &str,
    shards: u32,
) -> redis::RedisResult<Reindexed> {
    let target = KeyLayout::with_index_shards(prefix, shards);
    let stored: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(target.layout())
        .query_async(conn)
        .await?;
    let shards_before = stored
        .get("index_shards")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);

    // Every device: (shard, id, score).
    let escaped = glob_escape(prefix);
    let device_prefix = target.device("");
    let mut members: Vec<Vec<(i64, String)>> = vec![Vec::new(); target.index_keys().len()];
    let mut skipped = Vec::new();
    let mut devices = 0u64;
    let device_keys = scan(conn, &format!("{escaped}device:*")).await?;
    for batch in device_keys.chunks(BATCH) {
        let values = super::verify::mget(conn, batch).await?;
        for (key, value) in batch.iter().zip(values) {
            let Some(value) = value else { continue };
            let key_text = String::from_utf8_lossy(key).into_owned();
            let Some(id) = key_text.strip_prefix(&device_prefix) else {
                continue;
            };
            match std::str::from_utf8(&value)
                .ok()
                .and_then(|json| DeviceMetadata::from_normalized_json(json).ok())
            {
                Some(device) if device.device_id == id => {
                    let shard = crate::keys::index_shard(id, target.index_shards()) as usize;
                    members[shard].push((device.last_updated_ms, id.to_owned()));
                    devices += 1;
                }
                _ => {
                    tracing::warn!(key = %key_text, "not a device's JSON: left out of the index");
                    skipped.push(key_text);
                }
            }
        }
    }

    // Each shard built beside the live key (leftovers of an interrupted run first)...
    let mut leftovers = scan(conn, &format!("{escaped}devices:reindex")).await?;
    leftovers.extend(scan(conn, &format!("{{{escaped}devices}}:reindex")).await?);
    leftovers.extend(scan(conn, &format!("{escaped}devices:{{*}}:reindex")).await?);
    for key in &leftovers {
        redis::cmd("DEL").arg(key).query_async::<()>(conn).await?;
    }
    for (key, shard) in target.index_keys().iter().zip(&members) {
        let building = staging(key);
        for chunk in shard.chunks(BATCH) {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&building);
            for (score, id) in chunk {
                zadd.arg(*score).arg(id);
            }
            zadd.query_async::<()>(conn).await?;
        }
    }
    // ...then every shard swapped in, the index keys of the old layout deleted and the
    // descriptor rewritten in one transaction, so a reader sees the old index or the new
    // one, never a mix.
    let mut existing = scan(conn, &format!("{escaped}devices")).await?;
    existing.extend(scan(conn, &format!("{escaped}devices:{{*}}")).await?);
    let removed_keys: Vec<String> = existing
        .iter()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .filter(|key| is_index_key(prefix, key) && !target.index_keys().contains(key))
        .collect();
    let mut swap = redis::pipe();
    // A cluster runs a transaction only within one slot: there the swap is one pipeline,
    // each node's part applied in order but not all at one instant.
    if !conn.is_cluster() {
        swap.atomic();
    }
    for (key, shard) in target.index_keys().iter().zip(&members) {
        if shard.is_empty() {
            swap.cmd("DEL").arg(key).ignore();
        } else {
            swap.cmd("RENAME").arg(staging(key)).arg(key).ignore();
        }
    }
    for key in &removed_keys {
        swap.cmd("DEL").arg(key).ignore();
    }
    swap.cmd("HSET").arg(target.layout());
    for (field, value) in LayoutDescriptor::of(&target).fields() {
        swap.arg(field).arg(value);
    }
    swap.ignore();
    swap.query_async::<()>(conn).await?;

    Ok(Reindexed {
        shards_before,
        shards_after: target.index_shards(),
        devices,
        skipped,
        removed_keys,
    })
}

/// Where a shard is built before it is swapped in: in the live key's hash slot, so that
/// `RENAME` works on a cluster (`devices:{3}` → `devices:{3}:reindex`, `devices` →
/// `{devices}:reindex`).
fn staging(key: &str) -> String {
    if key.contains('{') {
        format!("{key}:reindex")
    } else {
        format!("{{{key}}}:reindex")
    }
}

/// Whether `key` is an index key of some layout under `prefix`: `devices`, or
/// `devices:{k}` with `k` a shard number (not any key that happens to look alike).
fn is_index_key(prefix: &str, key: &str) -> bool {
    let Some(rest) = key.strip_prefix(prefix) else {
        return false;
    };
    if rest == "devices" {
        return true;
    }
    rest.strip_prefix("devices:{")
        .and_then(|k| k.strip_suffix('}'))
        .and_then(|k| k.parse::<u32>().ok())
        .is_some_and(|k| k < crate::keys::MAX_INDEX_SHARDS && !rest.contains(":reindex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_of_an_index_layout_are_taken_for_old_shards() {
        assert!(is_index_key("p:", "p:devices"));
        assert!(is_index_key("p:", "p:devices:{0}"));
        assert!(is_index_key("p:", "p:devices:{1023}"));
        for other in [
            "p:devices:{1024}",
            "p:devices:{x}",
            "p:devices:{}",
            "p:devices:{1}:reindex",
            "devices",
            "p:devices:{01",
        ] {
            assert!(!is_index_key("p:", other), "{other}");
        }
    }
}
