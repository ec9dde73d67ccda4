//! Finding the primary through Redis Sentinel.
//!
//! Hand-written rather than the `redis` crate's `SentinelClient`: that one hands back a
//! plain `Client` for the primary, so the password file's credentials provider, the TLS
//! files, the timeouts and the TCP settings that every metacache connection carries would
//! have to be rebuilt around it, and it does not follow a failover either (it resolves
//! once per connection). Asking is one command; following is the caller's loop: ask
//! again after a failure, and switch only when the answer changed.

use std::time::Duration;

use redis::{
    AsyncConnectionConfig, Client, ErrorKind, IntoConnectionInfo, RedisError, RedisResult, Value,
};

use crate::settings::RedisSettings;

/// The primary the first sentinel that knows `redis.sentinel_master` names, as
/// `host:port`. Sentinels are asked in the configured order; one that is down, refuses
/// or does not know the master is skipped. The error names every sentinel's reason.
pub async fn locate_primary(settings: &RedisSettings) -> RedisResult<String> {
    let mut reasons = Vec::new();
    for node in &settings.nodes {
        match ask(settings, node).await {
            Ok(address) => return Ok(address),
            Err(e) => reasons.push(format!("{}: {}", crate::settings::redact_url(node), e)),
        }
    }
    Err(RedisError::from((
        ErrorKind::Io,
        "no sentinel named a primary",
        format!(
            "no sentinel named a primary for {:?} ({})",
            settings.sentinel_master,
            reasons.join("; ")
        ),
    )))
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one sentinel.
async fn ask(settings: &RedisSettings, node: &str) -> RedisResult<String> {
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
    let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(&settings.sentinel_master)
        .query_async(&mut conn)
        .await?;
    match answer {
        Some((host, port)) => Ok(join_host_port(&host, port)),
        None => Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "unknown master",
            format!(
                "does not monitor a master named {:?}",
                settings.sentinel_master
            ),
        ))),
    }
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
