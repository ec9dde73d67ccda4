//! The settings' shape: one struct per section, with its defaults (what
//! `config/default.toml` shows).

use super::*;

/// The whole configuration, section by section, as in `config/default.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub devices: DeviceSettings,
    pub metrics: TtlSettings,
    pub writer: WriterSettings,
    pub limits: Limits,
    pub shutdown: ShutdownSettings,
    pub janitor: JanitorSettings,
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    /// `earliest` or `latest`: where a consumer group with no committed offset starts.
    pub auto_offset_reset: String,
    pub device_topic: String,
    pub metric_topic: String,
    /// Produce rejected events to a dead-letter topic (else: log rate-limited and count).
    pub dead_letter: bool,
    /// Dead-letter topic for device events; empty = `<device_topic>.dlq`.
    pub device_dead_letter_topic: String,
    /// Dead-letter topic for metric events; empty = `<metric_topic>.dlq`.
    pub metric_dead_letter_topic: String,
    /// How often the contiguous offset watermarks are committed.
    pub commit_interval_ms: u64,
    /// Bound of librdkafka's prefetch queue (`queued.max.messages.kbytes`), shared by all
    /// assigned partitions.
    pub queued_max_messages_kbytes: u64,
    /// Passed to librdkafka as is (SASL, SSL, tuning); wins over metacache's own choices
    /// except the ones offset tracking depends on.
    pub client: BTreeMap<String, String>,
    /// librdkafka properties whose values are read from files (mounted Secrets), e.g.
    /// `"sasl.password" = "/var/run/secrets/kafka/password"`: read when each client is
    /// made; a rotated `sasl.username`/`sasl.password` reaches a running daemon at its
    /// next authentication (see `pipeline::source::secret_files`).
    pub client_files: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "localhost:9092".into(),
            group_id: "metacache".into(),
            auto_offset_reset: "earliest".into(),
            device_topic: "device-metadata".into(),
            metric_topic: "metric-catalog".into(),
            dead_letter: true,
            device_dead_letter_topic: String::new(),
            metric_dead_letter_topic: String::new(),
            commit_interval_ms: 1000,
            queued_max_messages_kbytes: 16 * 1024,
            client: BTreeMap::new(),
            client_files: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub fn device_dlq(&self) -> String {
        if self.device_dead_letter_topic.is_empty() {
            format!("{}.dlq", self.device_topic)
        } else {
            self.device_dead_letter_topic.clone()
        }
    }

    pub fn metric_dlq(&self) -> String {
        if self.metric_dead_letter_topic.is_empty() {
            format!("{}.dlq", self.metric_topic)
        } else {
            self.metric_dead_letter_topic.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSettings {
    /// Expiry of device keys; 0 = never.
    pub ttl_secs: u64,
    /// Devices whose last written `last_updated` the writer remembers, so their updates
    /// skip the stale-guard script; 0 = every upsert runs the script.
    pub guard_cache: usize,
    /// Sorted sets the device index is split over: 1 keeps the single `devices` key; more
    /// spread the index writes over a Redis Cluster's nodes (`devices:{k}`).
    pub index_shards: u32,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            ttl_secs: 0,
            guard_cache: DEFAULT_GUARD_CACHE,
            index_shards: 1,
        }
    }
}

/// Room for ~130k to 260k recently updated devices, ~4 MiB per 100k (docs/performance.md).
pub const DEFAULT_GUARD_CACHE: usize = 262_144;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtlSettings {
    /// Expiry of the entries written; 0 = never.
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterSettings {
    /// Most events per Redis pipeline.
    pub max_batch: usize,
    /// How long a partly filled batch waits for more events.
    pub linger_ms: u64,
    /// Pipelines outstanding on the connection at once.
    pub max_in_flight: usize,
    /// First retry delay after a transient Redis error.
    pub retry_initial_ms: u64,
    /// Cap of the exponential retry delay.
    pub retry_max_ms: u64,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            max_batch: 1024,
            linger_ms: 5,
            max_in_flight: 4,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JanitorSettings {
    /// Pause between two passes over the indexes; the janitor only runs when a TTL is set.
    pub interval_secs: u64,
    /// Index entries checked per step; steps are 50 ms apart so writes always come first.
    pub batch: usize,
}

impl Default for JanitorSettings {
    fn default() -> Self {
        JanitorSettings {
            interval_secs: 60,
            batch: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Longest a SIGTERM may take to flush, wait for Redis and commit.
    pub timeout_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings { timeout_secs: 30 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    /// A second listener that serves only `/healthz` and `/readyz`, with its own
    /// connection slots, so that clients flooding `listen` cannot starve the kubelet's
    /// probes. Empty: none (the probes are served on `listen` as well, always).
    pub probe_listen: String,
    /// Redis unreachable for longer than this makes `/readyz` unhealthy (503); shorter
    /// outages only make it degraded, so a Redis failover does not flap the pods.
    pub redis_grace_secs: u64,
    /// `/healthz` fails when records wait, Redis answers, and yet nothing was acknowledged
    /// for this long: the pipeline is wedged and a restart is the cure.
    pub wedged_after_secs: u64,
    /// Consumer lag (records, any one partition) above which `/readyz` says degraded.
    pub lag_degraded: u64,
    /// How far back "recent" Redis errors and dead letters count for `/readyz`.
    pub degraded_window_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "0.0.0.0:8080".into(),
            probe_listen: String::new(),
            redis_grace_secs: 10,
            wedged_after_secs: 120,
            lag_degraded: 100_000,
            degraded_window_secs: 60,
        }
    }
}

/// The HTTP read API (`/v1` on `http.listen`), for services without Redis credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// A file holding the bearer token callers must send; empty: the API is off. A file,
    /// not a value, so the token comes from a mounted Secret and never sits in the config.
    pub token_file: String,
    /// The most devices one page or one batch may ask for.
    pub max_page: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            token_file: String::new(),
            max_page: 1000,
        }
    }
}

/// The shortest bearer token the API accepts.
pub const MIN_API_TOKEN: usize = 16;

impl ApiSettings {
    /// The token, read from `token_file` (surrounding whitespace removed); `Ok(None)` when
    /// the API is off. The error never contains the token.
    pub fn token(&self) -> Result<Option<String>, String> {
        if self.token_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("cannot read {:?}: {e}", self.token_file))?;
        let token = text.trim();
        if token.chars().count() < MIN_API_TOKEN {
            return Err(format!(
                "{:?} must hold a token of at least {MIN_API_TOKEN} characters",
                self.token_file
            ));
        }
        Ok(Some(token.to_owned()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// A `RUST_LOG`-style filter, used when `RUST_LOG` is unset.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

/// Room the dead-letter producer keeps beyond `limits.max_message_bytes` for the key, the
/// headers and the record framing.
pub const DEAD_LETTER_OVERHEAD: usize = 64 * 1024;

impl KafkaSettings {
    /// The librdkafka properties to pass as is: `client`, and `client_files` read now. A
    /// file that cannot be read is left out with an error in the log (validation read it
    /// at start; librdkafka then reports what is missing).
    pub fn client_properties(&self) -> BTreeMap<String, String> {
        let mut properties = self.client.clone();
        for (property, path) in &self.client_files {
            match metacache_client::settings::read_secret_file(path) {
                Ok(value) => {
                    properties.insert(property.clone(), value);
                }
                Err(reason) => {
                    tracing::error!(property = %property, %reason, "kafka.client_files: cannot read the file")
                }
            }
        }
        properties
    }

    /// The dead-letter producer's `message.max.bytes`: the user's, or enough for any event
    /// the limits accept (librdkafka's default of 1,000,000 is below the default limit of
    /// 1 MiB, and an event it refuses would be retried forever).
    pub fn dead_letter_max_bytes(&self, limits: &Limits) -> usize {
        self.client
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| (limits.max_message_bytes + DEAD_LETTER_OVERHEAD).max(1_000_000))
    }
}
