//! Settings: built-in defaults, then a TOML file, then `METACACHE__SECTION__KEY`
//! environment variables, validated as a whole so a bad deployment hears about every
//! mistake at once instead of one per restart.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::Limits;

/// The whole configuration, section by section, as in `config/default.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub devices: TtlSettings,
    pub metrics: TtlSettings,
    pub writer: WriterSettings,
    pub limits: Limits,
    pub shutdown: ShutdownSettings,
    pub http: HttpSettings,
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
    /// librdkafka's prefetch bound per partition (`queued.max.messages.kbytes`).
    pub queued_max_messages_kbytes: u64,
    /// Passed to librdkafka as is (SASL, SSL, tuning); wins over metacache's own choices
    /// except the ones offset tracking depends on.
    pub client: BTreeMap<String, String>,
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
pub struct RedisSettings {
    /// `redis://[user[:password]@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// Overrides the URL's user name when set.
    pub username: Option<String>,
    /// Overrides the URL's password when set. Never logged or printed.
    pub password: Option<String>,
    /// Overrides the URL's database number when set.
    pub db: Option<i64>,
    /// Put in front of every key metacache writes.
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: "redis://127.0.0.1:6379/0".into(),
            username: None,
            password: None,
            db: None,
            key_prefix: String::new(),
            connect_timeout_ms: 2000,
            response_timeout_ms: 5000,
        }
    }
}

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
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "0.0.0.0:8080".into(),
        }
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

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path, e.g. `writer.max_batch`.
    pub field: String,
    pub reason: String,
}

/// Every problem found; start-up stops when this is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl Settings {
    /// Loads defaults, then `file` (or `config/default.toml` when present and `file` is
    /// `None`), then the environment, and validates the result.
    pub fn load(_file: Option<&Path>) -> Result<Settings, ConfigError> {
        todo!()
    }
}
