//! Opening the writer's Redis connection: the client crate's connection, with the
//! scripts loaded.

use redis::aio::ConnectionManager;
use redis::RedisResult;

pub use metacache_client::connect::{effective_url, install_crypto_provider, open};
use metacache_client::RedisSettings;

use super::scripts;

/// Opens a multiplexed, self-repairing connection and loads the scripts.
pub async fn connect(settings: &RedisSettings) -> RedisResult<ConnectionManager> {
    let mut conn = open(settings).await?;
    load_scripts(&mut conn).await?;
    Ok(conn)
}

/// `SCRIPT LOAD` for every script, so `EVALSHA` finds them.
pub async fn load_scripts<C: redis::aio::ConnectionLike>(conn: &mut C) -> RedisResult<()> {
    for script in scripts::all() {
        let _: String = script.load_async(conn).await?;
    }
    Ok(())
}
