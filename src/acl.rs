//! The least-privilege Redis ACL for the daemon and for readers, for the current settings
//! (`metacache check-config --print-acl`). Pure: it lists what the code sends, so a change
//! that sends a new command fails `tests/acl.rs` (which runs the whole pipeline as a user
//! with exactly this line) until it is added here.

use crate::config::Settings;
use crate::keys::{glob_escape, KeyLayout};

/// Commands every running daemon sends: the writer (its pipelines, the scripts, and what
/// the scripts run inside Redis, which ACL checks too), the writers' marker, the fence's
/// `CLIENT KILL`, and the monitor.
const DAEMON: &[&str] = &[
    // The writer's pipelines and the scripts' own commands.
    "evalsha",
    "script|load",
    "get",
    "set",
    "del",
    "zadd",
    "zrem",
    "sadd",
    "srem",
    "expire",
    // Each pipeline's tail; the writer's connection is named and its id read when it
    // opens; the fence lists the other writers' connections and kills them.
    "client|id",
    "client|setname",
    "client|info",
    "client|list",
    "hset",
    // The layout descriptor: claimed at start (a script: HGETALL, HSET), written again
    // after Redis lost its data (HSETNX, HGETALL).
    "hgetall",
    "hsetnx",
    "hdel",
    "client|kill",
    // The monitor: PING, the cache figures, INFO memory and server.
    "ping",
    "zcard",
    "zrange",
    "scard",
    "info",
];

/// The janitor (only with a TTL): index walks, existence checks, the guarded removal (a
/// script: `EVALSHA`, and `ZSCORE` inside it).
const JANITOR: &[&str] = &["zscan", "sscan", "exists", "zscore"];

/// The read API (only with `api.token_file`), and any reader: the client crate's reads.
const READER: &[&str] = &[
    "ping",
    // The layout descriptor.
    "hgetall",
    "get",
    "mget",
    "zrange",
    "zrevrange",
    "zcard",
    "scard",
    "smembers",
    "sismember",
    "smismember",
    "info",
    "config|get",
];

/// `metacache verify`: a reader's commands, and the walk over every key of the layout
/// (`SCAN` for device keys and catalogs, `ZSCAN` for the index, `SMEMBERS` for the sets).
/// Read-only, but `SCAN` lists key names beyond the patterns, so it is a user of its own
/// rather than more rights for every reader.
const VERIFY: &[&str] = &["scan", "zscan", "smembers"];

/// `metacache reindex` (an operator's job, with every writer stopped): the writers'
/// marker and the descriptor read, device keys walked and read, each shard built beside
/// its live key and swapped in with the descriptor in one transaction.
const REINDEX: &[&str] = &[
    "hkeys", "hgetall", "scan", "mget", "get", "del", "zadd", "rename", "hset", "multi", "exec",
];

/// The key patterns of metacache's layout under `prefix`.
fn key_patterns(keys: &KeyLayout, writer: bool) -> Vec<String> {
    let p = glob_escape(keys.prefix());
    let index = if keys.index_shards() == 1 {
        format!("~{p}devices")
    } else {
        format!("~{p}devices:{{*}}")
    };
    let mut patterns = vec![
        format!("~{p}device:*"),
        index,
        format!("~{p}*#metric_names"),
        format!("~{p}metric_namespaces"),
        format!("~{p}metacache:layout"),
    ];
    if writer {
        patterns.push(format!("~{p}metacache:writers"));
    }
    patterns
}

fn line(user: &str, keys: Vec<String>, commands: Vec<&str>) -> String {
    let mut commands = commands;
    commands.sort_unstable();
    commands.dedup();
    let allowed: Vec<String> = commands.iter().map(|c| format!("+{c}")).collect();
    format!(
        "ACL SETUSER {user} reset on ><password> {} resetchannels -@all {}",
        keys.join(" "),
        allowed.join(" ")
    )
}

/// The daemon's ACL line for `settings` (user `redis.username`, or `metacache`).
pub fn daemon_line(settings: &Settings) -> String {
    let keys = settings.keys();
    let mut commands: Vec<&str> = DAEMON.to_vec();
    if settings.devices.ttl_secs > 0 || settings.metrics.ttl_secs > 0 {
        commands.extend(JANITOR);
    }
    if !settings.api.token_file.is_empty() {
        commands.extend(READER);
    }
    if settings.redis.wait_replicas > 0 {
        commands.push("wait");
    }
    commands.extend(mode_commands(settings));
    let user = settings.redis.username.as_deref().unwrap_or("metacache");
    line(user, key_patterns(&keys, true), commands)
}

/// What finding the servers takes: in sentinel mode every connection checks that the
/// named primary is one (`ROLE`); in cluster mode the slot map is read (`CLUSTER SLOTS`).
fn mode_commands(settings: &Settings) -> Vec<&'static str> {
    match settings.redis.mode() {
        crate::config::RedisMode::Sentinel => vec!["role"],
        crate::config::RedisMode::Cluster => vec!["cluster|slots"],
        crate::config::RedisMode::Standalone => vec![],
    }
}

/// A read-only line for services that read the cache (the Rust and Python clients).
pub fn reader_line(settings: &Settings) -> String {
    let keys = settings.keys();
    let mut commands = READER.to_vec();
    commands.extend(mode_commands(settings));
    line("metacache-reader", key_patterns(&keys, false), commands)
}

/// The line for `metacache verify` (user `metacache-verify`).
pub fn verify_line(settings: &Settings) -> String {
    let keys = settings.keys();
    let mut commands = READER.to_vec();
    commands.extend(VERIFY);
    commands.extend(mode_commands(settings));
    line("metacache-verify", key_patterns(&keys, false), commands)
}

/// The line for `metacache reindex` (user `metacache-reindex`): the index keys of any
/// shard count and their staging keys (`devices:{k}:reindex`, `{devices}:reindex`), the
/// device keys (read), the descriptor and the writers' marker.
pub fn reindex_line(settings: &Settings) -> String {
    let p = glob_escape(settings.keys().prefix());
    let keys = vec![
        format!("~{p}device:*"),
        format!("~{p}devices*"),
        format!("~{{{p}devices}}:reindex"),
        format!("~{p}metacache:layout"),
        format!("~{p}metacache:writers"),
    ];
    let mut commands = REINDEX.to_vec();
    commands.extend(mode_commands(settings));
    line("metacache-reindex", keys, commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_and_cluster_modes_add_what_finding_the_servers_takes() {
        let mut settings = Settings::default();
        assert!(!daemon_line(&settings).contains("+role"));
        settings.redis.mode = "sentinel".into();
        assert!(daemon_line(&settings).contains("+role"));
        assert!(reader_line(&settings).contains("+role"));
        settings.redis.mode = "cluster".into();
        assert!(daemon_line(&settings).contains("+cluster|slots"));
        assert!(reader_line(&settings).contains("+cluster|slots"));
        assert!(!daemon_line(&settings).contains("+role"));
    }

    #[test]
    fn the_lines_follow_the_prefix_and_the_features_in_use() {
        let mut settings = Settings::default();
        settings.redis.key_prefix = "app:[1]".into();
        let plain = daemon_line(&settings);
        assert!(
            plain.starts_with("ACL SETUSER metacache reset on ><password> ~app:\\[1\\]device:* "),
            "{plain}"
        );
        assert!(plain.contains("~app:\\[1\\]metacache:writers"));
        assert!(
            plain.contains(" -@all ") && plain.contains(" +evalsha") && plain.contains(" +hset")
        );
        assert!(
            !plain.contains("+zscan") && !plain.contains("+mget"),
            "{plain}"
        );
        settings.devices.ttl_secs = 60;
        settings.api.token_file = "/run/token".into();
        let full = daemon_line(&settings);
        assert!(full.contains("+zscan") && full.contains("+mget") && full.contains("+smismember"));
        let reader = reader_line(&settings);
        assert!(reader.contains("+get") && !reader.contains("+set ") && !reader.contains("+del"));
        assert!(!reader.contains("metacache:writers"));
    }
}
