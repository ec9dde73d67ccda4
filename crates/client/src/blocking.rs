//! The blocking twin of [`CacheClient`], for scripts, CLIs and threads without an async
//! runtime. It owns a current-thread tokio runtime and drives the async client on it, so
//! both behave the same by construction.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};

use super::{CacheClient, CacheInfo, ClientError, DeviceEntry, HealthStatus, ListOptions, Result};
use crate::settings::RedisSettings;
use metacache_contract::model::DeviceMetadata;
use metacache_contract::KeyLayout;

/// A blocking [`CacheClient`]: every method waits for its answer.
///
/// It runs its own single-threaded tokio runtime. **Do not call it from inside an async
/// runtime** (a `#[tokio::main]` function or a task): it would block that runtime's
/// thread. It refuses such calls with [`ClientError::InvalidArgument`] instead of
/// panicking; use [`CacheClient`] there. It can be shared between threads (`&self`
/// methods); calls from several threads take turns on the one connection.
///
/// ```
/// use metacache_client::BlockingCacheClient;
/// # let redis = metacache_embedded::EmbeddedRedis::start()?;
/// # redis.seed_demo("")?;
///
/// let client = BlockingCacheClient::connect(&redis.url())?;
/// let device = client.get_device("dev-43")?.expect("cached");
/// assert_eq!(device.datatype_name, "humidity");
/// assert_eq!(client.is_valid_metric_names("billing", &["disk", "cpu"])?, [true, false]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BlockingCacheClient {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    inner: CacheClient,
}

impl BlockingCacheClient {
    /// [`CacheClient::connect`], blocking.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert_eq!(client.health().status, metacache_client::Health::Healthy);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(url: &str) -> Result<BlockingCacheClient> {
        let settings = RedisSettings {
            url: url.to_owned(),
            ..RedisSettings::default()
        };
        BlockingCacheClient::from_settings(&settings)
    }

    /// [`CacheClient::from_settings`], blocking.
    ///
    /// ```
    /// use metacache_client::RedisSettings;
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let settings = RedisSettings { url: redis.url(), ..RedisSettings::default() };
    /// let client = metacache_client::BlockingCacheClient::from_settings(&settings)?;
    /// assert!(client.namespaces()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_settings(settings: &RedisSettings) -> Result<BlockingCacheClient> {
        refuse_inside_runtime()?;
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Connection(format!("cannot start a runtime: {e}")))?;
        let inner = runtime.block_on(CacheClient::from_settings(settings))?;
        Ok(BlockingCacheClient {
            runtime: Some(runtime),
            inner,
        })
    }

    fn run<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        refuse_inside_runtime()?;
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => Err(ClientError::InvalidArgument("the client is closed".into())),
        }
    }

    /// The async client this one drives, e.g. to hand to async code later.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert_eq!(client.as_async().keys().index_keys(), ["devices"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_async(&self) -> &CacheClient {
        &self.inner
    }

    /// The key layout this client reads.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert_eq!(client.keys().device("dev-1"), "device:dev-1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keys(&self) -> std::sync::Arc<KeyLayout> {
        self.inner.keys()
    }

    /// [`CacheClient::get_device`], blocking.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert!(client.get_device("dev-42")?.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_device(&self, id: &str) -> Result<Option<DeviceMetadata>> {
        self.run(self.inner.get_device(id))
    }

    /// [`CacheClient::get_devices`], blocking: one `MGET`.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert_eq!(client.get_devices(&["dev-42", "dev-44"])?.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_devices<S: AsRef<str>>(&self, ids: &[S]) -> Result<HashMap<String, DeviceMetadata>> {
        self.run(self.inner.get_devices(ids))
    }

    /// [`CacheClient::list_devices`], blocking.
    ///
    /// ```
    /// use metacache_client::ListOptions;
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// let page = client.list_devices(&ListOptions { limit: 1, ..ListOptions::default() })?;
    /// assert_eq!(page[0].id, "dev-42");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn list_devices(&self, options: &ListOptions) -> Result<Vec<DeviceEntry>> {
        self.run(self.inner.list_devices(options))
    }

    /// [`CacheClient::cache_info`], blocking.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert_eq!(client.cache_info()?.total_devices, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cache_info(&self) -> Result<CacheInfo> {
        self.run(self.inner.cache_info())
    }

    /// [`CacheClient::health`], blocking. Called from inside an async runtime it answers
    /// [`Health::Unhealthy`](super::Health::Unhealthy), naming the misuse.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// println!("{}", client.health().message);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn health(&self) -> HealthStatus {
        match self.run(async { Ok(self.inner.health().await) }) {
            Ok(status) => status,
            Err(e) => HealthStatus {
                status: super::Health::Unhealthy,
                message: e.to_string(),
                timestamp: std::time::SystemTime::now(),
                latency: None,
                maxmemory_policy: None,
            },
        }
    }

    /// [`CacheClient::metric_names`], blocking.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert!(client.metric_names("infra")?.contains("load5"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metric_names(&self, namespace: &str) -> Result<BTreeSet<String>> {
        self.run(self.inner.metric_names(namespace))
    }

    /// [`CacheClient::is_valid_metric_name`], blocking: one `SISMEMBER`.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert!(client.is_valid_metric_name("default", "errors")?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_valid_metric_name(&self, namespace: &str, name: &str) -> Result<bool> {
        self.run(self.inner.is_valid_metric_name(namespace, name))
    }

    /// [`CacheClient::is_valid_metric_names`], blocking: one `SMISMEMBER`.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert_eq!(client.is_valid_metric_names("", &["requests", "latency"])?, [true, false]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_valid_metric_names<S: AsRef<str>>(
        &self,
        namespace: &str,
        names: &[S],
    ) -> Result<Vec<bool>> {
        self.run(self.inner.is_valid_metric_names(namespace, names))
    }

    /// [`CacheClient::namespaces`], blocking.
    ///
    /// ```
    /// # let redis = metacache_embedded::EmbeddedRedis::start()?;
    /// # redis.seed_demo("")?;
    /// let client = metacache_client::BlockingCacheClient::connect(&redis.url())?;
    /// assert_eq!(client.namespaces()?.len(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn namespaces(&self) -> Result<BTreeSet<String>> {
        self.run(self.inner.namespaces())
    }
}

impl Drop for BlockingCacheClient {
    /// Dropping a runtime inside another one panics; `shutdown_background` never does.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Blocking inside an async runtime would stall it (and tokio panics on `block_on` there).
fn refuse_inside_runtime() -> Result<()> {
    if Handle::try_current().is_ok() {
        return Err(ClientError::InvalidArgument(
            "BlockingCacheClient called from inside an async runtime; use CacheClient there".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inside_a_runtime_it_refuses_instead_of_panicking() {
        let e = BlockingCacheClient::connect("redis://127.0.0.1:1/0").unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
    }
}
