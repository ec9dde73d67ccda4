//! The read side: a typed client for the cache the metacache daemon writes, on the `redis`
//! crate alone (no Kafka client: a service that only reads the cache does not build
//! librdkafka).
//!
//! Any Redis client can read the cache, but this one cannot drift from the layout: it
//! builds every key with the writer's own [`KeyLayout`] and decodes devices with the
//! model's own [`DeviceMetadata::from_normalized_json`]. It connects with the daemon's
//! [`RedisSettings`] (URL forms, `rediss://` TLS, user name / password / db overrides,
//! timeouts, `key_prefix`) on one multiplexed, self-repairing
//! [`ConnectionManager`](redis::aio::ConnectionManager); the `redis` crate does the
//! multiplexing and reconnecting. [`CacheClient`] is cheap to clone and may be shared by
//! any number of tasks. [`BlockingCacheClient`] is the same for code without an async
//! runtime.
//!
//! Every method is one round trip, except [`CacheClient::list_devices`] with a pattern,
//! which pages through the index until it has filled the page.
//!
//! ```
//! use metacache_client::{CacheClient, ListOptions};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let redis = metacache_embedded::EmbeddedRedis::start()?;
//! # redis.seed_demo("")?;
//! # let url = redis.url();
//!
//! let client = CacheClient::connect(&url).await?;
//! let device = client.get_device("dev-42").await?.expect("cached");
//! assert_eq!(device.datatype_unit.as_deref(), Some("K"));
//! assert!(client.is_valid_metric_name("billing", "disk").await?);
//! let newest: Vec<String> = client
//!     .list_devices(&ListOptions { limit: 2, ..ListOptions::default() })
//!     .await?
//!     .into_iter()
//!     .map(|entry| entry.id)
//!     .collect();
//! assert_eq!(newest, ["dev-42", "dev-44"]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod blocking;
pub mod cluster;
pub mod connect;
mod error;
mod glob;
mod reply;
pub mod sentinel;
pub mod settings;
mod types;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use connect::RedisConn;
use redis::{Cmd, Value};

pub use blocking::BlockingCacheClient;
pub use error::ClientError;
pub use glob::Glob;
pub use settings::{RedisSettings, TlsSettings};
pub use types::{CacheInfo, DeviceEntry, Health, HealthStatus, ListOptions, Order};

use metacache_contract::model::{namespace_or_default, DeviceMetadata};
use metacache_contract::{KeyLayout, LayoutDescriptor};

/// The result of every client call.
///
/// ```
/// use metacache_client::{BlockingCacheClient, Result};
///
/// fn unit_of(client: &BlockingCacheClient, id: &str) -> Result<Option<String>> {
///     Ok(client.get_device(id)?.and_then(|d| d.datatype_unit))
/// }
/// # let redis = metacache_embedded::EmbeddedRedis::start()?;
/// # redis.seed_demo("")?;
/// # let client = BlockingCacheClient::connect(&redis.url())?;
/// assert_eq!(unit_of(&client, "dev-43")?.as_deref(), Some("%"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A `PING` slower than this makes [`CacheClient::health`] report
/// [`Health::Degraded`].
///
/// ```
/// assert_eq!(metacache_client::SLOW_PING.as_millis(), 250);
/// ```
pub const SLOW_PING: Duration = Duration::from_millis(250);

/// How many index entries [`CacheClient::list_devices`] fetches per round trip while
/// filtering by a pattern.
const SCAN_CHUNK: usize = 1000;

/// An async client for the cache, sharing the daemon's settings and key layout.
///
/// Clones share one multiplexed connection.
///
/// ```
/// # use metacache_client::CacheClient;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let redis = metacache_embedded::EmbeddedRedis::start()?;
/// # redis.seed_demo("")?;
/// let client = CacheClient::connect(&redis.url()).await?;
/// let reader = client.clone(); // same connection, e.g. for another task
/// let count = tokio::spawn(async move { reader.cache_info().await }).await??.total_devices;
/// assert_eq!(count, 3);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheClient {
    conn: Arc<RwLock<RedisConn>>,
    /// Sentinel mode: the settings to find the primary again after a failure.
    sentinel: Option<Arc<RedisSettings>>,
    /// The layout as the descriptor last said (see [`CacheClient::index_keys`]).
    layout: Arc<std::sync::Mutex<KnownLayout>>,
    redacted_url: String,
}

/// The key layout read from `metacache:layout`, and when (`None`: not read yet).
struct KnownLayout {
    keys: Arc<KeyLayout>,
    read_at: Option<Instant>,
}

/// How long the index layout read from the descriptor is relied on before it is read
/// again: a reader started before the first daemon (no descriptor yet), or one running
/// across a `metacache reindex`, follows within this time.
const LAYOUT_REFRESH: Duration = Duration::from_secs(30);

impl std::fmt::Debug for CacheClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheClient")
            .field("url", &self.redacted_url)
            .field("key_prefix", &self.keys().prefix())
            .finish_non_exhaustive()
    }
}

impl CacheClient {
    /// Connects to the Redis at `url` (`redis://`, `rediss://` for TLS, `redis+unix://`,
    /// `unix://`), with no key prefix and the default timeouts.
    ///
    /// Fails with [`ClientError::InvalidArgument`] for a malformed URL and
    /// [`ClientError::Connection`] when nothing answers within the connect timeout.
    ///
    /// ```
    /// # use metacache_client::{CacheClient, ClientError};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// # let _ = client;
    /// let bad = CacheClient::connect("http://cache:6379").await.unwrap_err();
    /// assert!(matches!(bad, ClientError::InvalidArgument(_)));
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<CacheClient> {
        let settings = RedisSettings {
            url: url.to_owned(),
            ..RedisSettings::default()
        };
        CacheClient::from_settings(&settings).await
    }

    /// Connects as the daemon does: `redis.url` with the `username`, `password` and `db`
    /// overrides, the connect and response timeouts, and every key under `key_prefix`.
    ///
    /// ```
    /// use metacache_client::RedisSettings;
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("tenant-a:")?;
    /// let settings = RedisSettings {
    ///     url: redis.url(),
    ///     key_prefix: "tenant-a:".into(),
    ///     ..RedisSettings::default()
    /// };
    /// let client = CacheClient::from_settings(&settings).await?;
    /// assert_eq!(client.keys().device("dev-42"), "tenant-a:device:dev-42");
    /// assert!(client.get_device("dev-42").await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn from_settings(settings: &RedisSettings) -> Result<CacheClient> {
        connect::effective_url(settings).map_err(ClientError::InvalidArgument)?;
        let conn = connect::open(settings).await?;
        let client = CacheClient {
            conn: Arc::new(RwLock::new(conn)),
            sentinel: (settings.mode() == settings::RedisMode::Sentinel)
                .then(|| Arc::new(settings.clone())),
            layout: Arc::new(std::sync::Mutex::new(KnownLayout {
                keys: Arc::new(KeyLayout::new(&settings.key_prefix)),
                read_at: None,
            })),
            redacted_url: settings.redacted_url(),
        };
        match client.read_layout().await {
            Ok(_) => {}
            // A reader user whose ACL predates the descriptor still reads devices and
            // catalogs; calls that read the index ask again and report the refusal.
            Err(ClientError::Redis(message)) if message.to_ascii_uppercase().contains("NOPERM") => {
            }
            Err(e) => return Err(e),
        }
        Ok(client)
    }

    /// Reads the layout descriptor (`HGETALL {prefix}metacache:layout`) and keeps what it
    /// says; no descriptor means the original layout, one `devices` index key.
    async fn read_layout(&self) -> Result<Arc<KeyLayout>> {
        let prefix = self.keys().prefix().to_owned();
        let key = KeyLayout::new(&prefix).layout().to_owned();
        let reply = self.query_at(&key, redis::cmd("HGETALL").arg(&key)).await?;
        let fields = reply::hash(&key, reply)?;
        let keys = match LayoutDescriptor::from_fields(&fields)
            .map_err(|reason| ClientError::corrupt(&key, reason))?
        {
            // The descriptor lives under the prefix it names; the shard count is what
            // a reader cannot know otherwise.
            Some(descriptor) => KeyLayout::with_index_shards(&prefix, descriptor.index_shards),
            None => KeyLayout::new(&prefix),
        };
        let keys = Arc::new(keys);
        let mut known = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        *known = KnownLayout {
            keys: Arc::clone(&keys),
            read_at: Some(Instant::now()),
        };
        Ok(keys)
    }

    /// The layout for a call that reads the device index: read again from the descriptor
    /// when the last reading is older than [`LAYOUT_REFRESH`].
    async fn index_layout(&self) -> Result<Arc<KeyLayout>> {
        let (keys, fresh) = {
            let known = self.layout.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = known.read_at.is_some_and(|t| t.elapsed() < LAYOUT_REFRESH);
            (Arc::clone(&known.keys), fresh)
        };
        if fresh {
            return Ok(keys);
        }
        self.read_layout().await
    }

    /// The Redis URL with any password masked, for logs and messages.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let url = format!("redis://default:secret@127.0.0.1:{}/0", redis.port());
    /// let client = CacheClient::connect(&url).await?; // no password set: AUTH is accepted
    /// assert!(!client.redacted_url().contains("secret"));
    /// # Ok(()) }
    /// ```
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// The key layout this client reads (the writer's, under the configured prefix).
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// assert_eq!(client.keys().metric_names("billing"), "billing#metric_names");
    /// # Ok(()) }
    /// ```
    pub fn keys(&self) -> Arc<KeyLayout> {
        let known = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&known.keys)
    }

    /// The device index keys, as the layout descriptor says: `devices` alone, or the
    /// shards `devices:{0}` … `devices:{N-1}` (`devices.index_shards`).
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// assert_eq!(client.index_keys().await?, ["devices"]); // no descriptor: one index key
    /// # Ok(()) }
    /// ```
    pub async fn index_keys(&self) -> Result<Vec<String>> {
        Ok(self.index_layout().await?.index_keys().to_vec())
    }

    /// One command about `key`: an error reply naming a wrong type there becomes
    /// [`ClientError::Corrupt`].
    async fn query_at(&self, key: &str, cmd: &Cmd) -> Result<Value> {
        let mut conn = self.connection();
        let reply = cmd.query_async::<Value>(&mut conn).await;
        if let Err(e) = &reply {
            self.after_failure(e).await;
        }
        reply.map_err(|e| ClientError::at_key(key, e))
    }

    fn connection(&self) -> RedisConn {
        match self.conn.read() {
            Ok(conn) => conn.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sentinel mode: a connection failure or `READONLY` (a demoted primary) sends the
    /// client to the primary the sentinels name now, for the next call (the failed one
    /// returns its error; a caller's retry lands on the new primary).
    async fn after_failure(&self, e: &redis::RedisError) {
        let Some(settings) = &self.sentinel else {
            return;
        };
        let lost = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if !lost {
            return;
        }
        if let Ok(conn) = connect::open(settings).await {
            match self.conn.write() {
                Ok(mut current) => *current = conn,
                Err(poisoned) => *poisoned.into_inner() = conn,
            }
        }
    }

    /// Several commands in one round trip; each reply comes back on its own, errors
    /// included, so the caller can name the key of the one that failed.
    /// `used_memory` summed over a cluster's primaries; `None` when one does not tell.
    async fn cluster_memory(&self) -> Option<u64> {
        let texts = self.connection().info_each("memory").await.ok()?;
        texts.iter().try_fold(0u64, |total, info| {
            Some(total.saturating_add(info_field(info, "used_memory")?))
        })
    }

    async fn pipeline(&self, pipe: &mut redis::Pipeline) -> Result<Vec<Value>> {
        let mut conn = self.connection();
        let replies = pipe
            .ignore_errors()
            .query_async::<Vec<Value>>(&mut conn)
            .await;
        if let Err(e) = &replies {
            self.after_failure(e).await;
        }
        Ok(replies?)
    }

    /// One device's metadata (`GET device:{id}`), `None` when it is not cached.
    ///
    /// A value metacache did not write (not a device's JSON, or another device's) is a
    /// [`ClientError::Corrupt`] naming the key.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// let dev44 = client.get_device("dev-44").await?.expect("cached");
    /// assert_eq!(dev44.datatype_unit, None);
    /// assert_eq!(dev44.additional_properties["site"], "plant-1");
    /// assert!(client.get_device("dev-45").await?.is_none()); // deleted by a tombstone
    /// # Ok(()) }
    /// ```
    pub async fn get_device(&self, id: &str) -> Result<Option<DeviceMetadata>> {
        let key = self.keys().device(id);
        let value = self.query_at(&key, redis::cmd("GET").arg(&key)).await?;
        match reply::bytes_or_nil(&key, value)? {
            None => Ok(None),
            Some(bytes) => device_from(&key, id, &bytes).map(Some),
        }
    }

    /// Many devices in one round trip (`MGET`), keyed by id; ids that are not cached are
    /// absent from the map. Duplicate ids are looked up once.
    ///
    /// `MGET` answers nil for a key holding another Redis type, so such a key reads as
    /// absent here, where [`get_device`](Self::get_device) reports it as corrupt.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// let found = client.get_devices(&["dev-42", "dev-43", "dev-99"]).await?;
    /// assert_eq!(found.len(), 2);
    /// assert_eq!(found["dev-43"].datatype_name, "humidity");
    /// # Ok(()) }
    /// ```
    pub async fn get_devices<S: AsRef<str>>(
        &self,
        ids: &[S],
    ) -> Result<HashMap<String, DeviceMetadata>> {
        let mut unique: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
        unique.sort_unstable();
        unique.dedup();
        if unique.is_empty() {
            return Ok(HashMap::new());
        }
        let layout = self.keys();
        let keys: Vec<String> = unique.iter().map(|id| layout.device(id)).collect();
        let values = self.connection().values(&keys).await;
        if let Err(e) = &values {
            self.after_failure(e).await;
        }
        let values = values.map_err(|e| ClientError::at_key(&keys[0], e))?;
        if values.len() != keys.len() {
            return Err(ClientError::Redis(format!(
                "MGET of {} keys answered {} values",
                keys.len(),
                values.len()
            )));
        }
        let mut found = HashMap::with_capacity(values.len());
        for ((id, key), value) in unique.iter().zip(&keys).zip(values) {
            if let Some(bytes) = reply::bytes_or_nil(key, reply::ok(key, value)?)? {
                found.insert((*id).to_owned(), device_from(key, id, &bytes)?);
            }
        }
        Ok(found)
    }

    /// A page of the `devices` index, newest or oldest first, optionally only ids matching
    /// a Redis-style glob (see [`Glob`] for the rules).
    ///
    /// Without a pattern this is one `ZREVRANGE`/`ZRANGE` by rank. With one, the index is
    /// read in chunks of 1000 from the chosen end and filtered here until the page is
    /// full, so a rare match in a large index costs several round trips. `limit: 0`
    /// returns an empty page without asking Redis; an `offset` past the end returns an
    /// empty page. Pages are not a snapshot: entries updated between two calls can move
    /// across the page boundary.
    ///
    /// The index lists what was written; with `devices.ttl_secs` set, an entry can outlive
    /// its expired device key until a tombstone removes it.
    ///
    /// ```
    /// use metacache_client::{ListOptions, Order};
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// let ids = |page: Vec<metacache_client::DeviceEntry>| {
    ///     page.into_iter().map(|e| e.id).collect::<Vec<_>>()
    /// };
    /// let oldest = ListOptions { order: Order::OldestFirst, ..ListOptions::default() };
    /// assert_eq!(ids(client.list_devices(&oldest).await?), ["dev-43", "dev-44", "dev-42"]);
    ///
    /// let matching = ListOptions { pattern: Some("dev-4[34]".into()), ..oldest.clone() };
    /// assert_eq!(ids(client.list_devices(&matching).await?), ["dev-43", "dev-44"]);
    ///
    /// let past_the_end = ListOptions { offset: 3, ..oldest };
    /// assert!(client.list_devices(&past_the_end).await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn list_devices(&self, options: &ListOptions) -> Result<Vec<DeviceEntry>> {
        if options.limit == 0 {
            return Ok(Vec::new());
        }
        let glob = match options.pattern.as_deref() {
            None | Some("*") => None,
            Some(pattern) => Some(Glob::parse(pattern).map_err(ClientError::InvalidArgument)?),
        };
        let Some(glob) = glob else {
            return self
                .index_range(options.order, options.offset, options.limit)
                .await;
        };
        let mut page = Vec::new();
        let mut to_skip = options.offset;
        let mut start = 0;
        loop {
            let chunk = self.index_range(options.order, start, SCAN_CHUNK).await?;
            let complete = chunk.len() < SCAN_CHUNK;
            for entry in chunk {
                if !glob.matches(&entry.id) {
                    continue;
                }
                if to_skip > 0 {
                    to_skip -= 1;
                    continue;
                }
                page.push(entry);
                if page.len() == options.limit {
                    return Ok(page);
                }
            }
            if complete {
                return Ok(page);
            }
            start += SCAN_CHUNK;
        }
    }

    /// Up to `count` index entries from rank `start` at the chosen end, across every
    /// index shard: each shard's first `start + count` entries, merged in Redis's order
    /// (score, then id bytes; reversed for newest first). With one shard it is one
    /// `ZRANGE`; with N the cost grows with `start`, which the read API bounds.
    async fn index_range(
        &self,
        order: Order,
        start: usize,
        count: usize,
    ) -> Result<Vec<DeviceEntry>> {
        let layout = self.index_layout().await?;
        let shards = layout.index_keys();
        // Ranks beyond i64 cannot exist in a sorted set; clamp instead of overflowing.
        let (first, last) = if shards.len() == 1 {
            let first = i64::try_from(start).unwrap_or(i64::MAX);
            (
                first,
                first.saturating_add(i64::try_from(count).unwrap_or(i64::MAX) - 1),
            )
        } else {
            let wanted = start.saturating_add(count);
            (0, i64::try_from(wanted).unwrap_or(i64::MAX) - 1)
        };
        let command = match order {
            Order::NewestFirst => "ZREVRANGE",
            Order::OldestFirst => "ZRANGE",
        };
        let mut pipe = redis::pipe();
        for key in shards {
            pipe.cmd(command)
                .arg(key)
                .arg(first)
                .arg(last)
                .arg("WITHSCORES");
        }
        let replies = self.pipeline(&mut pipe).await?;
        let mut entries = Vec::new();
        for (key, reply) in shards.iter().zip(replies) {
            entries.extend(
                reply::scored(key, reply)?
                    .into_iter()
                    .map(|(id, last_updated_ms)| DeviceEntry {
                        id,
                        last_updated_ms,
                    }),
            );
        }
        if shards.len() == 1 {
            return Ok(entries);
        }
        entries.sort_by(|a, b| {
            let oldest_first = (a.last_updated_ms, &a.id).cmp(&(b.last_updated_ms, &b.id));
            match order {
                Order::OldestFirst => oldest_first,
                Order::NewestFirst => oldest_first.reverse(),
            }
        });
        Ok(entries.into_iter().skip(start).take(count).collect())
    }

    /// Counts, the oldest and newest entries, and Redis's memory use, in one round trip
    /// (per index shard `ZCARD`, `ZRANGE … 0 0 WITHSCORES`, `ZREVRANGE … 0 0 WITHSCORES`;
    /// then `SCARD`, `INFO memory`). Only `INFO` may fail without failing the call.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// let empty = client.cache_info().await?;
    /// assert_eq!((empty.total_devices, empty.oldest_entry), (0, None));
    /// # Ok(()) }
    /// ```
    pub async fn cache_info(&self) -> Result<CacheInfo> {
        let layout = self.index_layout().await?;
        let shards = layout.index_keys();
        let namespaces = layout.metric_namespaces();
        let mut pipe = redis::pipe();
        for key in shards {
            pipe.cmd("ZCARD").arg(key);
            pipe.cmd("ZRANGE").arg(key).arg(0).arg(0).arg("WITHSCORES");
            pipe.cmd("ZREVRANGE")
                .arg(key)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        pipe.cmd("SCARD").arg(namespaces);
        pipe.cmd("INFO").arg("memory");
        let mut replies = self.pipeline(&mut pipe).await?.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let mut total = 0i64;
        let (mut oldest, mut newest): (Option<DeviceEntry>, Option<DeviceEntry>) = (None, None);
        let entry = |mut v: Vec<(String, i64)>| {
            v.pop().map(|(id, last_updated_ms)| DeviceEntry {
                id,
                last_updated_ms,
            })
        };
        let rank = |e: &DeviceEntry| (e.last_updated_ms, e.id.clone());
        for key in shards {
            total = total.saturating_add(reply::int(key, next())?);
            if let Some(e) = entry(reply::scored(key, next())?) {
                if oldest.as_ref().is_none_or(|o| rank(&e) < rank(o)) {
                    oldest = Some(e);
                }
            }
            if let Some(e) = entry(reply::scored(key, next())?) {
                if newest.as_ref().is_none_or(|n| rank(&e) > rank(n)) {
                    newest = Some(e);
                }
            }
        }
        let namespace_count = reply::int(namespaces, next())?;
        let mut memory = reply::text("INFO", next())
            .ok()
            .and_then(|info| info_field(&info, "used_memory"));
        if self.connection().is_cluster() {
            memory = self.cluster_memory().await;
        }
        Ok(CacheInfo {
            total_devices: u64::try_from(total).unwrap_or(0),
            memory_usage_bytes: memory,
            oldest_entry: oldest,
            newest_entry: newest,
            metric_namespaces: u64::try_from(namespace_count).unwrap_or(0),
        })
    }

    /// Whether Redis can serve the cache: `PING` (and its latency), then
    /// `CONFIG GET maxmemory-policy`. Never fails; failures are the verdict.
    ///
    /// - [`Health::Unhealthy`]: `PING` failed or timed out.
    /// - [`Health::Degraded`]: `PING` took longer than [`SLOW_PING`], or the policy is an
    ///   `allkeys-*` or `volatile-*` one: under memory pressure Redis would evict
    ///   metacache's keys (`volatile-*` those with a TTL), and readers would see devices
    ///   vanish. `noeviction` makes writes fail instead, which the daemon retries.
    /// - [`Health::Healthy`]: otherwise. When `CONFIG` is disabled or not permitted (common
    ///   on managed Redis), the policy is unknown: the message says so, and the verdict
    ///   rests on `PING`.
    ///
    /// ```
    /// # use metacache_client::{CacheClient, Health};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start_with(&["--maxmemory-policy", "allkeys-lru"])?;
    /// let health = CacheClient::connect(&redis.url()).await?.health().await;
    /// assert_eq!(health.status, Health::Degraded);
    /// assert!(health.message.contains("allkeys-lru"), "{}", health.message);
    /// # Ok(()) }
    /// ```
    pub async fn health(&self) -> HealthStatus {
        let timestamp = SystemTime::now();
        let started = Instant::now();
        let ping = self.query_at("", &redis::cmd("PING")).await;
        let latency = started.elapsed();
        if let Err(e) = ping {
            return HealthStatus {
                status: Health::Unhealthy,
                message: format!("PING failed: {e}"),
                timestamp,
                latency: None,
                maxmemory_policy: None,
            };
        }
        let mut status = Health::Healthy;
        let mut message = format!("PING {:.1} ms", latency.as_secs_f64() * 1000.0);
        if latency > SLOW_PING {
            status = Health::Degraded;
            message.push_str(&format!(" (slower than {} ms)", SLOW_PING.as_millis()));
        }
        let policy = self
            .query_at("", redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
            .await
            .and_then(|v| config_value(v, "maxmemory-policy"));
        let maxmemory_policy = match policy {
            Ok(Some(policy)) => {
                if policy.starts_with("allkeys-") || policy.starts_with("volatile-") {
                    status = Health::Degraded;
                    message.push_str(&format!(
                        "; maxmemory-policy {policy} lets Redis evict metacache's keys \
                         when memory runs out (use noeviction)"
                    ));
                } else {
                    message.push_str(&format!("; maxmemory-policy {policy}"));
                }
                Some(policy)
            }
            Ok(None) => {
                message.push_str("; maxmemory-policy unknown (not reported)");
                None
            }
            Err(e) => {
                message.push_str(&format!(
                    "; maxmemory-policy unknown (CONFIG GET refused: {e})"
                ));
                None
            }
        };
        HealthStatus {
            status,
            message,
            timestamp,
            latency: Some(latency),
            maxmemory_policy,
        }
    }

    /// The valid metric names of `namespace` (`SMEMBERS {namespace}#metric_names`),
    /// sorted; empty for an unknown namespace. An empty namespace means `default`.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// let names: Vec<String> = client.metric_names("billing").await?.into_iter().collect();
    /// assert_eq!(names, ["disk", "mem"]);
    /// assert_eq!(client.metric_names("").await?, client.metric_names("default").await?);
    /// # Ok(()) }
    /// ```
    pub async fn metric_names(&self, namespace: &str) -> Result<BTreeSet<String>> {
        let key = self.catalog_key(namespace)?;
        let reply = self
            .query_at(&key, redis::cmd("SMEMBERS").arg(&key))
            .await?;
        Ok(reply::members(&key, reply)?.into_iter().collect())
    }

    /// Whether `name` is a valid metric name in `namespace`: one `SISMEMBER`, O(1). An
    /// empty namespace means `default`.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// assert!(client.is_valid_metric_name("billing", "disk").await?);
    /// assert!(!client.is_valid_metric_name("billing", "cpu").await?); // removed
    /// assert!(client.is_valid_metric_name("", "requests").await?);
    /// # Ok(()) }
    /// ```
    pub async fn is_valid_metric_name(&self, namespace: &str, name: &str) -> Result<bool> {
        let key = self.catalog_key(namespace)?;
        let reply = self
            .query_at(&key, redis::cmd("SISMEMBER").arg(&key).arg(name))
            .await?;
        Ok(reply::int(&key, reply)? == 1)
    }

    /// [`is_valid_metric_name`](Self::is_valid_metric_name) for many names in one round
    /// trip (`SMISMEMBER`, Redis 6.2 or newer); the answers are in the order of `names`.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// let valid = client.is_valid_metric_names("infra", &["load1", "load15", "load5"]).await?;
    /// assert_eq!(valid, [true, false, true]);
    /// # Ok(()) }
    /// ```
    pub async fn is_valid_metric_names<S: AsRef<str>>(
        &self,
        namespace: &str,
        names: &[S],
    ) -> Result<Vec<bool>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.catalog_key(namespace)?;
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(&key);
        for name in names {
            cmd.arg(name.as_ref());
        }
        let reply = self.query_at(&key, &cmd).await?;
        let answers = reply::items(&key, reply)?
            .into_iter()
            .map(|v| reply::int(&key, v).map(|n| n == 1))
            .collect::<Result<Vec<bool>>>()?;
        if answers.len() != names.len() {
            return Err(ClientError::Redis(format!(
                "SMISMEMBER of {} names answered {} values",
                names.len(),
                answers.len()
            )));
        }
        Ok(answers)
    }

    /// Whether `namespace` is listed in `metric_namespaces` (an empty one means `default`):
    /// tells a namespace emptied by `replace []` from one never written or deleted.
    pub async fn has_namespace(&self, namespace: &str) -> Result<bool> {
        let layout = self.keys();
        let key = layout.metric_namespaces();
        let reply = self
            .query_at(
                key,
                redis::cmd("SISMEMBER")
                    .arg(key)
                    .arg(namespace_or_default(namespace)),
            )
            .await?;
        Ok(reply::int(key, reply)? == 1)
    }

    /// Every namespace listed in `metric_namespaces`, sorted. A namespace emptied by
    /// `replace` with no names stays listed until a tombstone removes it.
    ///
    /// ```
    /// # use metacache_client::CacheClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = CacheClient::connect(&redis.url()).await?;
    /// let namespaces: Vec<String> = client.namespaces().await?.into_iter().collect();
    /// assert_eq!(namespaces, ["billing", "default", "infra"]);
    /// # Ok(()) }
    /// ```
    pub async fn namespaces(&self) -> Result<BTreeSet<String>> {
        let layout = self.keys();
        let key = layout.metric_namespaces();
        let reply = self.query_at(key, redis::cmd("SMEMBERS").arg(key)).await?;
        Ok(reply::members(key, reply)?.into_iter().collect())
    }
}

impl CacheClient {
    /// The catalog key of `namespace`; a namespace the daemon refuses (one in the device
    /// key space) is refused here too, so a read never lands on a device's key.
    fn catalog_key(&self, namespace: &str) -> Result<String> {
        let namespace = namespace_or_default(namespace);
        match metacache_contract::keys::reserved_namespace(namespace) {
            None => Ok(self.keys().metric_names(namespace)),
            Some(space) => Err(ClientError::InvalidArgument(format!(
                "namespace {namespace:?} starts with the reserved {space:?}; metacache never writes such a namespace"
            ))),
        }
    }
}

/// A device read from `key`: the normalized JSON of the device asked for, or corrupt.
fn device_from(key: &str, id: &str, bytes: &[u8]) -> Result<DeviceMetadata> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ClientError::corrupt(key, format!("value is not UTF-8: {e}")))?;
    let device = DeviceMetadata::from_normalized_json(text)
        .map_err(|r| ClientError::corrupt(key, format!("not a device's JSON: {r}")))?;
    if device.device_id != id {
        return Err(ClientError::corrupt(
            key,
            format!("holds device {:?}, not {id:?}", device.device_id),
        ));
    }
    Ok(device)
}

/// A `CONFIG GET` reply's value for `name`: `[name, value]` (RESP2) or a map (RESP3).
fn config_value(reply: Value, name: &str) -> Result<Option<String>> {
    let pairs: Vec<(Value, Value)> = match reply::ok(name, reply)? {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut pairs = Vec::new();
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => return Ok(None),
    };
    for (k, v) in pairs {
        if reply::member(name, k).ok().as_deref() == Some(name) {
            return Ok(reply::member(name, v).ok());
        }
    }
    Ok(None)
}

/// One `field:value` line of an `INFO` reply, as a number.
fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1_048_576));
        assert_eq!(info_field(info, "used_memory_peak"), None);
    }

    #[test]
    fn config_replies_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![bulk("maxmemory-policy"), bulk("noeviction")]);
        assert_eq!(
            config_value(resp2, "maxmemory-policy").unwrap().as_deref(),
            Some("noeviction")
        );
        let resp3 = Value::Map(vec![(bulk("maxmemory-policy"), bulk("allkeys-lru"))]);
        assert_eq!(
            config_value(resp3, "maxmemory-policy").unwrap().as_deref(),
            Some("allkeys-lru")
        );
        assert_eq!(config_value(Value::Array(vec![]), "x").unwrap(), None);
    }
}
