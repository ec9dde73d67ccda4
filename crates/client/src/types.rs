//! What the client returns and takes besides the models: index entries, paging options,
//! the cache summary and the health verdict.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

/// One entry of the `devices` index: a device id and its `last_updated` score.
///
/// ```
/// # use metacache_client::CacheClient;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let redis = metacache_embedded::EmbeddedRedis::start()?;
/// # redis.seed_demo("")?;
/// let client = CacheClient::connect(&redis.url()).await?;
/// let newest = &client.list_devices(&Default::default()).await?[0];
/// assert_eq!(newest.id, "dev-42");
/// assert_eq!(newest.last_updated_ms, 1_795_343_400_000);
/// assert_eq!(newest.last_updated(), "2026-11-22T10:30:00.000Z");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceEntry {
    /// The device id (the member of `devices`).
    pub id: String,
    /// `last_updated` in milliseconds since the Unix epoch (the score).
    pub last_updated_ms: i64,
}

impl DeviceEntry {
    /// `last_updated` in the fixed-width UTC form the device JSON stores; the bare number
    /// if it is outside the years 1970..=9999 (only a foreign score can be).
    ///
    /// ```
    /// use metacache_client::DeviceEntry;
    ///
    /// let entry = DeviceEntry { id: "dev-1".into(), last_updated_ms: 1_795_341_900_000 };
    /// assert_eq!(entry.last_updated(), "2026-11-22T10:05:00.000Z");
    /// ```
    pub fn last_updated(&self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.last_updated_ms) * 1_000_000)
            .ok()
            .filter(|t| (1970..=9999).contains(&t.year()))
            .map(|t| {
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second(),
                    t.millisecond()
                )
            })
            .unwrap_or_else(|| self.last_updated_ms.to_string())
    }
}

/// Which end of the `devices` index [`list_devices`](super::CacheClient::list_devices)
/// starts from.
///
/// ```
/// use metacache_client::{ListOptions, Order};
///
/// let oldest_first = ListOptions { order: Order::OldestFirst, ..ListOptions::default() };
/// assert_eq!(ListOptions::default().order, Order::NewestFirst);
/// # let _ = oldest_first;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Order {
    /// Highest `last_updated` first (`ZREVRANGE`); equal times in reverse id order.
    #[default]
    NewestFirst,
    /// Lowest `last_updated` first (`ZRANGE`); equal times in id order.
    OldestFirst,
}

/// One page of [`list_devices`](super::CacheClient::list_devices).
///
/// `offset` and `limit` count *matching* entries: without a pattern that is the rank in
/// the index; with one, entries that do not match are skipped and not counted.
///
/// ```
/// use metacache_client::{ListOptions, Order};
///
/// let page_two = ListOptions {
///     limit: 50,
///     offset: 50,
///     pattern: Some("dev-[12]*".into()),
///     order: Order::OldestFirst,
/// };
/// assert_eq!(ListOptions::default().limit, 100);
/// # let _ = page_two;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// Most entries to return; 0 returns none (without asking Redis).
    pub limit: usize,
    /// Matching entries to skip first; past the end gives an empty page.
    pub offset: usize,
    /// Keep only ids matching this Redis-style glob (see [`Glob`](super::Glob)); a `[`
    /// never closed, or a lone `\` at the end, is refused as `InvalidArgument`
    /// ([`Glob::parse`](super::Glob::parse)).
    pub pattern: Option<String>,
    /// Newest or oldest first.
    pub order: Order,
}

impl Default for ListOptions {
    /// The 100 most recently updated devices.
    fn default() -> Self {
        ListOptions {
            limit: 100,
            offset: 0,
            pattern: None,
            order: Order::NewestFirst,
        }
    }
}

/// A summary of what the cache holds, from one round trip.
///
/// ```
/// # use metacache_client::CacheClient;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let redis = metacache_embedded::EmbeddedRedis::start()?;
/// # redis.seed_demo("")?;
/// let info = CacheClient::connect(&redis.url()).await?.cache_info().await?;
/// assert_eq!(info.total_devices, 3);
/// assert_eq!(info.oldest_entry.map(|e| e.id).as_deref(), Some("dev-43"));
/// assert_eq!(info.newest_entry.map(|e| e.id).as_deref(), Some("dev-42"));
/// assert_eq!(info.metric_namespaces, 3);
/// assert!(info.memory_usage_bytes.unwrap_or(0) > 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// Entries in the `devices` index (`ZCARD`).
    pub total_devices: u64,
    /// Memory the whole Redis server uses (`INFO memory` → `used_memory`), not only
    /// metacache's keys; `None` when `INFO` is not allowed.
    pub memory_usage_bytes: Option<u64>,
    /// The least recently updated device (`ZRANGE devices 0 0 WITHSCORES`).
    pub oldest_entry: Option<DeviceEntry>,
    /// The most recently updated device (`ZREVRANGE devices 0 0 WITHSCORES`).
    pub newest_entry: Option<DeviceEntry>,
    /// Namespaces listed in `metric_namespaces` (`SCARD`).
    pub metric_namespaces: u64,
}

/// The verdict of [`health`](super::CacheClient::health).
///
/// ```
/// use metacache_client::Health;
///
/// assert_eq!(Health::Degraded.as_str(), "degraded");
/// assert!(Health::Healthy < Health::Degraded && Health::Degraded < Health::Unhealthy);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// Redis answers promptly and will not evict metacache's keys.
    Healthy,
    /// Redis answers, but slowly, or its `maxmemory-policy` may evict metacache's keys.
    Degraded,
    /// Redis does not answer.
    Unhealthy,
}

impl Health {
    /// `healthy`, `degraded` or `unhealthy`.
    ///
    /// ```
    /// assert_eq!(metacache_client::Health::Healthy.as_str(), "healthy");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`health`](super::CacheClient::health) found, and when.
///
/// ```
/// # use metacache_client::{CacheClient, Health};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let redis = metacache_embedded::EmbeddedRedis::start()?;
/// let health = CacheClient::connect(&redis.url()).await?.health().await;
/// assert_eq!(health.status, Health::Healthy, "{}", health.message);
/// assert_eq!(health.maxmemory_policy.as_deref(), Some("noeviction"));
/// assert!(health.latency.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStatus {
    /// The verdict.
    pub status: Health,
    /// Why, in words, e.g. `PING 0.2 ms; maxmemory-policy noeviction`.
    pub message: String,
    /// When the check ran.
    pub timestamp: SystemTime,
    /// How long `PING` took; `None` when it failed.
    pub latency: Option<Duration>,
    /// Redis's `maxmemory-policy`; `None` when `CONFIG GET` is not allowed or failed.
    pub maxmemory_policy: Option<String>,
}
