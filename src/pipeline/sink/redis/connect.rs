//! Opening the writer's Redis connection: the client crate's connection, with the
//! scripts loaded, and in sentinel mode the primary it went to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metacache_client::connect::RedisConn;
use redis::RedisResult;

pub use metacache_client::connect::{effective_url, install_crypto_provider, open};
use metacache_client::sentinel::Primary;
use metacache_client::settings::RedisMode;
use metacache_client::RedisSettings;

use super::scripts;

/// Opens the writer's connection and loads the scripts.
pub async fn connect(settings: &RedisSettings) -> RedisResult<RedisConn> {
    Target::writer(settings.clone()).connect().await
}

/// Where the writer's connections go: `redis.url`, or in sentinel mode the primary the
/// sentinels name at the time of connecting, which it remembers so that the writer can
/// tell when a failover moved it.
pub struct Target {
    settings: RedisSettings,
    primary: Mutex<Option<Primary>>,
    /// The writer's connections are named from their first command and never reopened
    /// behind its back; others (the janitor's) repair themselves and carry no name, so a
    /// fence does not take them for a writer's.
    name: Option<&'static str>,
}

impl Target {
    /// Connections that repair themselves (the janitor's).
    pub fn new(settings: RedisSettings) -> Arc<Target> {
        Arc::new(Target {
            settings,
            primary: Mutex::new(None),
            name: None,
        })
    }

    /// The writer's connections: named [`WRITER_NAME`] from their first command, and on
    /// one server a socket that is never reopened behind the writer's back (see
    /// [`metacache_client::connect::FixedConn`]).
    ///
    /// [`WRITER_NAME`]: super::writer::WRITER_NAME
    pub fn writer(settings: RedisSettings) -> Arc<Target> {
        Arc::new(Target {
            settings,
            primary: Mutex::new(None),
            name: Some(super::writer::WRITER_NAME),
        })
    }

    /// A new connection with the scripts loaded.
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        let timeout = Duration::from_millis(self.settings.response_timeout_ms);
        let (mut conn, primary) =
            metacache_client::connect::open_located(&self.settings, timeout, 1, self.name).await?;
        load_scripts(&mut conn).await?;
        if let Ok(mut current) = self.primary.lock() {
            *current = primary;
        }
        Ok(conn)
    }

    /// The primary the last connection went to (sentinel mode), as `host:port`.
    pub fn primary(&self) -> Option<String> {
        self.primary
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.address.clone()))
    }

    /// Sentinel mode: the primary the sentinels name now, when it is not the one the last
    /// connection went to and their answer is not older than the one that sent it there
    /// (a sentinel that missed the last failover still names the node before it).
    /// `None` in standalone mode, and when no sentinel answers (the current connection
    /// then keeps trying its own address).
    pub async fn moved(&self) -> Option<String> {
        if self.settings.mode() != RedisMode::Sentinel {
            return None;
        }
        let now = metacache_client::sentinel::locate_primary(&self.settings)
            .await
            .ok()?;
        let current = self.primary.lock().ok().and_then(|p| p.clone());
        match current {
            Some(current) if current.address == now.address || now.epoch < current.epoch => None,
            _ => Some(now.address),
        }
    }
}

/// `SCRIPT LOAD` for every script, so `EVALSHA` finds them.
pub async fn load_scripts<C: redis::aio::ConnectionLike>(conn: &mut C) -> RedisResult<()> {
    for script in scripts::all() {
        let _: String = script.load_async(conn).await?;
    }
    Ok(())
}
