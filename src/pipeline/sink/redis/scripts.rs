//! The server-side scripts as the writer sends them: `EVALSHA` of the contract's Lua
//! source. When Redis answers `NOSCRIPT` (it restarted, or its script cache was flushed)
//! the writer loads them again and retries the batch.

use std::sync::LazyLock;

use redis::Script;

pub use metacache_contract::scripts::{REPLACE_SET_LUA, UPSERT_DEVICE_LUA};

pub static UPSERT_DEVICE: LazyLock<Script> = LazyLock::new(|| Script::new(UPSERT_DEVICE_LUA));
pub static REPLACE_SET: LazyLock<Script> = LazyLock::new(|| Script::new(REPLACE_SET_LUA));

/// All scripts, for `SCRIPT LOAD` at connect time and after `NOSCRIPT`.
pub fn all() -> [&'static Script; 2] {
    [&UPSERT_DEVICE, &REPLACE_SET]
}
