//! Finding the primary through Redis Sentinel.
//!
//! Hand-written rather than the `redis` crate's `SentinelClient`: that one hands back a
//! plain `Client` for the primary, so the password file's credentials provider, the TLS
//! files, the timeouts and the TCP settings that every metacache connection carries would
//! have to be rebuilt around it, and it does not follow a failover either (it resolves
//! once per connection, from the first sentinel that answers, stale or not). Asking is one
//! command per sentinel; following is the caller's loop: ask again after a failure, and
//! switch only when the answer changed.

use std::collections::HashMap;
use std::time::Duration;

use redis::{
    AsyncConnectionConfig, Client, ErrorKind, IntoConnectionInfo, RedisError, RedisResult, Value,
};

use crate::settings::RedisSettings;

/// The primary the sentinels name for `redis.sentinel_master`, as `host:port`. Every
/// sentinel is asked; when they disagree (during a failover, a sentinel that has not heard
/// of it yet still names the old primary) the answer of the newest configuration epoch
/// wins, as Sentinel itself settles it. A sentinel that is down, refuses or does not know
/// the master is skipped; the error names every sentinel's reason.
pub async fn locate_primary(settings: &RedisSettings) -> RedisResult<Primary> {
    let answers =
        futures_util::future::join_all(settings.nodes.iter().map(|node| ask(settings, node))).await;
    let mut best: Option<(u64, String)> = None;
    let mut reasons = Vec::new();
    for (node, answer) in settings.nodes.iter().zip(answers) {
        match answer {
            Ok((epoch, address)) => {
                if best.as_ref().is_none_or(|(e, _)| epoch > *e) {
                    best = Some((epoch, address));
                }
            }
            Err(e) => reasons.push(format!("{}: {e}", crate::settings::redact_url(node))),
        }
    }
    best.map(|(epoch, address)| Primary { address, epoch })
        .ok_or_else(|| {
            RedisError::from((
                ErrorKind::Io,
                "no sentinel named a primary",
                format!(
                    "no sentinel named a primary for {:?} ({})",
                    settings.sentinel_master,
                    reasons.join("; ")
                ),
            ))
        })
}

/// A primary as the sentinels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// `host:port`.
    pub address: String,
    /// The sentinels' configuration epoch of that answer: a later failover has a higher
    /// one, so an answer with a lower epoch than the primary in use is a sentinel that
    /// has not heard of the last failover yet.
    pub epoch: u64,
}

/// `SENTINEL MASTER <name>` on one sentinel: the configuration epoch and the address.
async fn ask(settings: &RedisSettings, node: &str) -> RedisResult<(u64, String)> {
    let mut info = node.into_connection_info()?;
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &settings.sentinel_username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &settings.sentinel_password {
        redis = redis.set_password(password);
    }
    info = info.set_redis_settings(redis);
    let client = if node.starts_with("rediss://") && settings.tls.is_set() {
        Client::build_with_tls(info, crate::connect::certificates(&settings.tls)?)?
    } else {
        Client::open(info)?
    };
    let timeout = Duration::from_millis(settings.connect_timeout_ms);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let fields: HashMap<String, String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(&settings.sentinel_master)
        .query_async(&mut conn)
        .await
        .map_err(|e| {
            if e.to_string().contains("No such master") {
                RedisError::from((
                    ErrorKind::MasterNameNotFoundBySentinel,
                    "unknown master",
                    format!(
                        "does not monitor a master named {:?}",
                        settings.sentinel_master
                    ),
                ))
            } else {
                e
            }
        })?;
    master_address(&fields).ok_or_else(|| {
        RedisError::from((
            ErrorKind::Parse,
            "SENTINEL MASTER",
            "the answer has no ip, port or config-epoch".to_owned(),
        ))
    })
}

/// The configuration epoch and `host:port` in a `SENTINEL MASTER` answer.
fn master_address(fields: &HashMap<String, String>) -> Option<(u64, String)> {
    let port: u16 = fields.get("port")?.parse().ok()?;
    let epoch: u64 = fields.get("config-epoch")?.parse().ok()?;
    Some((epoch, join_host_port(fields.get("ip")?, port)))
}

/// `host:port`, with an IPv6 host in brackets as URLs want it.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The settings of a standalone connection to `address` (`host:port`): same user,
/// password (or file), database, timeouts and certificates; TLS when the sentinels are
/// reached over TLS (a Redis deployment runs both or neither).
pub fn at_primary(settings: &RedisSettings, address: &str) -> RedisSettings {
    let tls = settings.nodes.iter().any(|n| n.starts_with("rediss://"));
    let scheme = if tls { "rediss" } else { "redis" };
    RedisSettings {
        mode: "standalone".into(),
        url: format!("{scheme}://{address}"),
        ..settings.clone()
    }
}

/// The first element of a `ROLE` reply: `master`, `slave` or `sentinel`.
pub fn role_name(reply: &Value) -> Option<String> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.first()? {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_keeps_the_credentials_and_the_tls_of_the_sentinels() {
        let settings = RedisSettings {
            mode: "sentinel".into(),
            nodes: vec!["rediss://s1:26379".into(), "rediss://s2:26379".into()],
            sentinel_master: "cache".into(),
            username: Some("metacache".into()),
            db: Some(2),
            ..RedisSettings::default()
        };
        let primary = at_primary(&settings, "10.0.0.7:6380");
        assert_eq!(primary.url, "rediss://10.0.0.7:6380");
        assert_eq!(primary.username.as_deref(), Some("metacache"));
        assert_eq!(primary.db, Some(2));
        assert_eq!(primary.mode, "standalone");
        let plain = RedisSettings {
            nodes: vec!["redis://s1:26379".into()],
            ..settings
        };
        assert_eq!(at_primary(&plain, "h:1").url, "redis://h:1");
    }

    #[test]
    fn a_sentinel_answer_gives_its_epoch_and_the_address() {
        let fields: HashMap<String, String> = [
            ("name", "cache"),
            ("ip", "10.0.0.7"),
            ("port", "6380"),
            ("config-epoch", "3"),
            ("flags", "master"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(master_address(&fields), Some((3, "10.0.0.7:6380".into())));
        let mut no_epoch = fields.clone();
        no_epoch.remove("config-epoch");
        assert_eq!(master_address(&no_epoch), None);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("::1", 6379), "[::1]:6379");
        assert_eq!(join_host_port("cache-0", 6379), "cache-0:6379");
    }

    #[test]
    fn the_role_is_the_first_element() {
        let reply = Value::Array(vec![
            Value::BulkString(b"slave".to_vec()),
            Value::BulkString(b"127.0.0.1".to_vec()),
        ]);
        assert_eq!(role_name(&reply).as_deref(), Some("slave"));
        assert_eq!(role_name(&Value::Nil), None);
    }
}
