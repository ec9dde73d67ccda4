//! Settings: built-in defaults, then a TOML file, then `METACACHE__SECTION__KEY`
//! environment variables, validated as a whole so a bad deployment hears about every
//! mistake at once instead of one per restart.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ::config::{Config, Environment, FileFormat, Format, Map, Source, Value, ValueKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::model::Limits;

mod librdkafka;

/// Read when no file is named; a deployment without it runs on defaults and environment.
pub const DEFAULT_FILE: &str = "config/default.toml";

/// Names the settings file when none is given on the command line.
pub const CONFIG_FILE_ENV: &str = "METACACHE_CONFIG";

/// Shown instead of a secret.
pub use metacache_client::settings::{redact_url, MASK};
pub use metacache_client::RedisSettings;

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
pub struct DeviceSettings {
    /// Expiry of device keys; 0 = never.
    pub ttl_secs: u64,
    /// Devices whose last written `last_updated` the writer remembers, so their updates
    /// skip the stale-guard script; 0 = every upsert runs the script.
    pub guard_cache: usize,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            ttl_secs: 0,
            guard_cache: DEFAULT_GUARD_CACHE,
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

impl Problem {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            // One problem, one line: the report is read in logs and terminals.
            reason: reason.into().replace(['\n', '\r'], " "),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found; start-up stops when this is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration has {} problem(s):", self.problems.len())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A setting given as a command-line option (`--brokers`): the last layer, over the file
/// and the environment, and checked with them.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted name, e.g. `kafka.brokers`.
    pub field: &'static str,
    /// How problem reports name its source, e.g. `--brokers`.
    pub option: &'static str,
    pub value: String,
}

impl Settings {
    /// Loads defaults, then `file` (else the file named by `METACACHE_CONFIG`, else
    /// `config/default.toml` when present), then `METACACHE__SECTION__KEY` variables, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_with(file, &[])
    }

    /// `load` with command-line options over everything else.
    pub fn load_with(file: Option<&Path>, overrides: &[Override]) -> Result<Settings, ConfigError> {
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        Settings::load_from(file, &env, Path::new(DEFAULT_FILE), overrides)
    }

    /// `load` with the environment and fallback file passed in, so tests need not share
    /// the process environment.
    fn load_from(
        file: Option<&Path>,
        env: &[(OsString, OsString)],
        fallback: &Path,
        overrides: &[Override],
    ) -> Result<Settings, ConfigError> {
        let mut found = Found::default();
        let file = choose_file(file, env, fallback, &mut found.problems);
        let file_missing = !found.problems.is_empty();
        let env = EnvSettings::collect(env, &mut found.problems);
        if file_missing {
            // Checking the rest against defaults would report problems that aren't there.
            return Err(ConfigError {
                problems: found.problems,
            });
        }
        let tree = match merge_sources(file.as_deref(), env, overrides) {
            Ok(tree) => tree,
            Err(mut e) => {
                found.problems.append(&mut e.problems);
                return Err(ConfigError {
                    problems: found.problems,
                });
            }
        };
        let settings = from_tree(tree, &mut found);

        // A field that failed to deserialize was left at its default: checking that
        // default, alone or against other fields, would only add noise.
        let known = Known {
            broken: found.problems.iter().map(|p| p.field.clone()).collect(),
            sources: std::mem::take(&mut found.sources),
        };
        let mut problems = found.problems;
        problems.extend(settings.problems(&known));
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks the values against each other and the ranges the daemon supports, and hands
    /// each `kafka.client` property to librdkafka; public for settings built in code
    /// (loading runs the same checks, with sources, and `load_with` takes command-line
    /// options).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems(&Known::default());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Every semantic problem, each with the source of the settings it names; fields in
    /// `known.broken` are neither checked nor compared with others.
    fn problems(&self, known: &Known) -> Vec<Problem> {
        let mut check = Checks::new(known);
        self.kafka.check(&mut check);
        self.redis.check(&mut check);
        check.at_most("devices.ttl_secs", self.devices.ttl_secs, MAX_TTL_SECS);
        check.at_most("devices.guard_cache", self.devices.guard_cache, 100_000_000);
        check.at_most("metrics.ttl_secs", self.metrics.ttl_secs, MAX_TTL_SECS);
        check.between(
            "janitor.interval_secs",
            self.janitor.interval_secs,
            1,
            86_400,
        );
        check.between("janitor.batch", self.janitor.batch, 1, 10_000);
        self.writer.check(&mut check);
        check_limits(&self.limits, &mut check);
        const MAX_BYTES: &str = "kafka.client.message.max.bytes";
        let involved = [MAX_BYTES, "limits.max_message_bytes", "kafka.dead_letter"];
        if self.kafka.dead_letter && check.usable(&involved) {
            if let Some(raw) = self.kafka.client.get("message.max.bytes") {
                let need = self.limits.max_message_bytes + DEAD_LETTER_OVERHEAD;
                match raw.trim().parse::<usize>() {
                    Ok(n) if n < need => check.fail_at(
                        MAX_BYTES,
                        &involved,
                        format!(
                            "must be at least limits.max_message_bytes + {DEAD_LETTER_OVERHEAD} ({need}) so that any event up to the limit that Redis refuses can be dead-lettered whole, got {n}"
                        ),
                    ),
                    _ => {}
                }
            }
        }
        check.between("shutdown.timeout_secs", self.shutdown.timeout_secs, 1, 3600);
        if self.http.listen.parse::<SocketAddr>().is_err() {
            check.fail(
                "http.listen",
                format!(
                    "must be an IP address and port such as 0.0.0.0:8080, got {:?}",
                    self.http.listen
                ),
            );
        }
        if !self.http.probe_listen.is_empty() {
            match self.http.probe_listen.parse::<SocketAddr>() {
                Err(_) => check.fail(
                    "http.probe_listen",
                    format!(
                        "must be empty or an IP address and port such as 0.0.0.0:8081, got {:?}",
                        self.http.probe_listen
                    ),
                ),
                Ok(probe) if probe.port() != 0 && Some(probe) == self.http.listen.parse().ok() => {
                    check.fail(
                        "http.probe_listen",
                        format!("must differ from http.listen, got {probe} for both"),
                    )
                }
                Ok(_) => {}
            }
        }
        check.between("http.redis_grace_secs", self.http.redis_grace_secs, 1, 3600);
        check.between(
            "http.wedged_after_secs",
            self.http.wedged_after_secs,
            5,
            86_400,
        );
        check.between("http.lag_degraded", self.http.lag_degraded, 1, u64::MAX);
        check.between(
            "http.degraded_window_secs",
            self.http.degraded_window_secs,
            1,
            3600,
        );
        check.one_of("log.format", &self.log.format, &["text", "json"]);
        if self.log.filter.trim().is_empty() {
            check.fail("log.filter", "must not be empty (e.g. \"info\")");
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            check.fail(
                "log.filter",
                format!("is not a valid filter ({e}), got {:?}", self.log.filter),
            );
        }
        check.problems
    }

    /// A copy safe to print: passwords, secrets and keys replaced by `***`.
    pub fn redacted(&self) -> Settings {
        let mut copy = self.clone();
        copy.redis.url = self.redis.redacted_url();
        if copy.redis.password.is_some() {
            copy.redis.password = Some(MASK.into());
        }
        for (key, value) in copy.kafka.client.iter_mut() {
            if is_secret_property(key) {
                *value = MASK.into();
            }
        }
        copy
    }

    /// The redacted settings as TOML, loadable again (unset options are left out).
    pub fn to_toml_string(&self) -> String {
        match toml::to_string(&self.redacted()) {
            Ok(text) => text,
            // Only values beyond TOML's i64, which validation rejects, get here.
            Err(e) => format!("# the settings cannot be shown as TOML: {e}\n"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sources and layering

const ENV_PREFIX: &str = "metacache__";
const CLIENT_ENV_PREFIX: &str = "metacache__kafka__client__";
/// The `config` crate's origin for every environment value.
const ENV_ORIGIN: &str = "the environment";
/// Starts the origin of a value that one environment variable or command-line option
/// gave, followed by its name. No file path holds a NUL byte.
const NAMED_ORIGIN: &str = "\0";

/// The file named on the command line, else by `METACACHE_CONFIG`, else the fallback if
/// it exists. A named file must exist: silently running on defaults would hide a typo.
fn choose_file(
    explicit: Option<&Path>,
    env: &[(OsString, OsString)],
    fallback: &Path,
    problems: &mut Vec<Problem>,
) -> Option<PathBuf> {
    let (path, named_by) = match explicit {
        Some(path) => (path.to_path_buf(), String::new()),
        None => match env
            .iter()
            .find(|(k, v)| k == CONFIG_FILE_ENV && !v.is_empty())
        {
            Some((_, v)) => (PathBuf::from(v), format!(" (named by {CONFIG_FILE_ENV})")),
            None => return fallback.is_file().then(|| fallback.to_path_buf()),
        },
    };
    let shown = path.display();
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => problems.push(Problem::new(
            "config",
            format!("{shown} is a directory, not a settings file{named_by}"),
        )),
        Ok(_) => return Some(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(Problem::new(
            "config",
            format!("file {shown} does not exist{named_by}"),
        )),
        Err(e) => problems.push(Problem::new(
            "config",
            format!("cannot read {shown}{named_by}: {e}"),
        )),
    }
    None
}

/// The `METACACHE__*` variables, split in two: `kafka.client` properties keep their dots,
/// which the `config` crate would turn into nested tables.
struct EnvSettings {
    general: Map<String, String>,
    client: Map<String, Value>,
}

impl EnvSettings {
    fn collect(env: &[(OsString, OsString)], problems: &mut Vec<Problem>) -> EnvSettings {
        let mut found = EnvSettings {
            general: Map::new(),
            client: Map::new(),
        };
        for (name, value) in env {
            // Like the config crate: names are matched in any case, non-Unicode ones skipped.
            let Some(name) = name.to_str() else { continue };
            let lower = name.to_ascii_lowercase();
            let Some(path) = lower.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some(value) = value.to_str() else {
                problems.push(Problem::new(
                    path.replace("__", "."),
                    format!("environment variable {name} is not valid UTF-8"),
                ));
                continue;
            };
            match lower.strip_prefix(CLIENT_ENV_PREFIX) {
                // librdkafka property names use dots, never underscores.
                Some(property) => {
                    let property = property.replace("__", ".").replace('_', ".");
                    if property.is_empty() {
                        problems.push(Problem::new(
                            "kafka.client",
                            format!("environment variable {name} names no property"),
                        ));
                    } else {
                        let origin = format!("{NAMED_ORIGIN}{name}");
                        found
                            .client
                            .insert(property, Value::new(Some(&origin), value.to_string()));
                    }
                }
                None => {
                    found.general.insert(name.to_string(), value.to_string());
                }
            }
        }
        found
    }
}

/// A source whose values are already parsed.
#[derive(Debug, Clone)]
struct Parsed(Map<String, Value>);

impl Source for Parsed {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, ::config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// Defaults, file, environment, command line: later sources win key by key.
fn merge_sources(
    file: Option<&Path>,
    env: EnvSettings,
    overrides: &[Override],
) -> Result<Map<String, Value>, ConfigError> {
    let defaults = Config::try_from(&Settings::default())
        .map_err(|e| single("config", format!("built-in defaults: {e}")))?;
    let mut builder = Config::builder().add_source(defaults);
    if let Some(path) = file {
        builder = builder.add_source(Parsed(read_toml(path)?));
    }
    builder = builder.add_source(
        // try_parsing stays off: it would turn a password "0123" into "123". The
        // deserializer parses numbers and booleans from strings anyway.
        Environment::with_prefix("METACACHE")
            .separator("__")
            .source(Some(env.general)),
    );
    // Only when there is something to add: merging even an empty table replaces a
    // `kafka.client` that is not a table, hiding that mistake.
    if !env.client.is_empty() {
        let mut client = Map::new();
        client.insert("client".to_string(), Value::from(env.client));
        let mut kafka = Map::new();
        kafka.insert("kafka".to_string(), Value::from(client));
        builder = builder.add_source(Parsed(kafka));
    }
    if !overrides.is_empty() {
        let mut given = Map::new();
        for option in overrides {
            let origin = format!("{NAMED_ORIGIN}{}", option.option);
            // A dotted key is a path: `kafka.brokers` sets `brokers` in `kafka`.
            given.insert(
                option.field.to_string(),
                Value::new(Some(&origin), option.value.clone()),
            );
        }
        builder = builder.add_source(Parsed(given));
    }
    builder
        .build()
        .and_then(|config| config.collect())
        .map_err(|e| single("config", e.to_string()))
}

/// Reads the file ourselves: `config::File` would quietly try `<name>.toml` etc. when
/// the exact path is missing, and reads non-UTF-8 lossily.
fn read_toml(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| single("config", format!("cannot read {shown}: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let uri = shown.to_string();
    let unparsable = |message: String| {
        // The error quotes the offending line, which may hold a secret: keep the position
        // and the message only.
        let lines: Vec<&str> = message.lines().filter(|l| !l.trim().is_empty()).collect();
        let summary = match (lines.first(), lines.last()) {
            (Some(first), Some(last)) if lines.len() > 1 => format!("{first}: {last}"),
            _ => message.clone(),
        };
        single("config", format!("cannot parse {shown}: {summary}"))
    };
    // The toml crate's errors carry a position; the config crate's sometimes do not
    // (integers beyond i64).
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(unparsable(e.to_string()));
    }
    <FileFormat as Format>::parse(&FileFormat::Toml, Some(&uri), text)
        .map_err(|e| unparsable(e.to_string()))
}

fn single(field: &str, reason: String) -> ConfigError {
    ConfigError {
        problems: vec![Problem::new(field, reason)],
    }
}

// ---------------------------------------------------------------------------------------
// From the merged tree to typed settings, reporting every unknown key and bad type

/// Optional settings (no default to learn the type from) that hold integers.
const OPTIONAL_INTEGERS: &[&str] = &["redis.db"];

/// What reading the merged tree found: problems, and where each setting given came from.
#[derive(Default)]
struct Found {
    problems: Vec<Problem>,
    /// By dotted name: `in FILE` or `from VARIABLE`, for settings not left at their default.
    sources: BTreeMap<String, String>,
}

impl Found {
    fn problem(&mut self, field: &str, reason: String) {
        self.problems.push(Problem::new(field, reason));
    }

    /// Remembers where `field` came from, for the checks that run later.
    fn note(&mut self, field: &str, value: &Value) {
        if let Some(source) = source_of(field, value) {
            self.sources.insert(field.to_string(), source);
        }
    }
}

fn from_tree(mut tree: Map<String, Value>, found: &mut Found) -> Settings {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let sections = json_keys(&defaults);
    for (name, value) in sorted(&tree) {
        if sections.contains(name) {
            continue;
        }
        // A setting written above every section header, e.g. `brokers = ...`.
        let home = sections
            .iter()
            .find(|section| defaults[section.as_str()].get(name.as_str()).is_some());
        let reason = match home {
            Some(section) => format!("unknown section (did you mean `{section}.{name}`?)"),
            None => unknown(name, &sections, "section"),
        };
        found.problem(name, reason + &source_hint(name, value));
    }
    if let Some(kafka) = tree.get_mut("kafka") {
        flatten_client(kafka, found);
    }
    let mut take = |name: &str| tree.remove(name);
    Settings {
        kafka: section("kafka", take("kafka"), found),
        redis: section("redis", take("redis"), found),
        devices: section("devices", take("devices"), found),
        metrics: section("metrics", take("metrics"), found),
        writer: section("writer", take("writer"), found),
        limits: section("limits", take("limits"), found),
        shutdown: section("shutdown", take("shutdown"), found),
        janitor: section("janitor", take("janitor"), found),
        http: section("http", take("http"), found),
        log: section("log", take("log"), found),
    }
}

/// Deserializes one section, reporting each unknown key and each bad value by name: the
/// config crate's own deserialization stops at the first error.
fn section<T>(name: &str, value: Option<Value>, found: &mut Found) -> T
where
    T: Default + Serialize + DeserializeOwned,
{
    let Some(value) = value else {
        return T::default();
    };
    found.note(name, &value);
    let hint = source_hint(name, &value);
    let table = match value.kind {
        ValueKind::Table(table) => table,
        other => {
            let shown = show(&Value::new(None, other), false);
            found.problem(
                name,
                format!("expected a table of settings, got {shown}{hint}"),
            );
            return T::default();
        }
    };
    let defaults = match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(defaults)) => defaults,
        _ => serde_json::Map::new(),
    };
    let known: BTreeSet<String> = defaults.keys().cloned().collect();
    let mut good = Map::new();
    for (key, value) in sorted(&table) {
        let field = format!("{name}.{key}");
        found.note(&field, value);
        match defaults.get(key) {
            None => found.problem(
                &field,
                unknown(key, &known, "setting") + &source_hint(&field, value),
            ),
            Some(default) => match check_kind(&field, default, value) {
                Ok(()) => {
                    good.insert(key.clone(), value.clone());
                }
                Err(reason) => found.problem(&field, reason + &source_hint(&field, value)),
            },
        }
    }
    if let Ok(parsed) = T::deserialize(Value::from(good.clone())) {
        return parsed;
    }
    // Something the kind check let through (a negative count, an overflow): find it.
    for (key, value) in sorted(&good.clone()) {
        let field = format!("{name}.{key}");
        let mut alone = Map::new();
        alone.insert(key.clone(), value.clone());
        if let Err(e) = T::deserialize(Value::from(alone)) {
            found.problem(
                &field,
                serde_reason(&field, value, &e) + &source_hint(&field, value),
            );
            good.remove(key);
        }
    }
    T::deserialize(Value::from(good)).unwrap_or_else(|e| {
        found.problem(name, e.to_string());
        T::default()
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Integer,
    Bool,
    Text,
    Table,
}

/// The config crate converts too freely (`10.5` to 11, `true` to 1, `"yes"` to true, 42
/// to "42"): accept what a person would mean, and strings where environment values are.
///
/// Booleans have one rule: a TOML `true` or `false`, or from the environment the string
/// `true` or `false` (in any case). Nothing else, not `"yes"`, `"off"`, 1 or `"0"`.
fn check_kind(field: &str, default: &serde_json::Value, value: &Value) -> Result<(), String> {
    let kind = match default {
        serde_json::Value::Number(_) => Kind::Integer,
        serde_json::Value::Bool(_) => Kind::Bool,
        serde_json::Value::Object(_) => Kind::Table,
        serde_json::Value::Null if OPTIONAL_INTEGERS.contains(&field) => Kind::Integer,
        _ => Kind::Text,
    };
    let ok = match (kind, &value.kind) {
        (_, ValueKind::Nil) => true,
        (Kind::Integer, ValueKind::I64(_) | ValueKind::I128(_)) => true,
        (Kind::Integer, ValueKind::U64(_) | ValueKind::U128(_)) => true,
        (Kind::Integer, ValueKind::String(s)) => s.parse::<i128>().is_ok(),
        (Kind::Bool, ValueKind::Boolean(_)) => true,
        (Kind::Bool, ValueKind::String(s)) => {
            let word = s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false");
            if word && value.origin() != Some(ENV_ORIGIN) {
                return Err(format!(
                    "expected a boolean (true or false), got the string {s:?} (write it \
                     without quotes)"
                ));
            }
            word
        }
        (Kind::Text, ValueKind::String(_)) => true,
        (Kind::Table, ValueKind::Table(_)) => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        Kind::Integer => "an integer",
        Kind::Bool => "a boolean (true or false)",
        Kind::Text => "a string",
        Kind::Table => "a table",
    };
    Err(format!(
        "expected {expected}, got {}",
        show(value, is_secret_field(field))
    ))
}

fn serde_reason(field: &str, value: &Value, error: &::config::ConfigError) -> String {
    let expected = match error {
        // Negative or beyond 64 bits; the crate's own wording ("an unsigned 64 bit or less
        // integer", or just "an integer") does not say which.
        ::config::ConfigError::Type { expected, .. } if expected.contains("integer") => {
            if OPTIONAL_INTEGERS.contains(&field) {
                "a 64-bit integer".to_string()
            } else {
                "a non-negative 64-bit integer".to_string()
            }
        }
        ::config::ConfigError::Type { expected, .. } => expected.to_string(),
        _ if is_secret_field(field) => return "has an invalid value".to_string(),
        other => return other.to_string(),
    };
    format!(
        "expected {expected}, got {}",
        show(value, is_secret_field(field))
    )
}

/// `kafka.client` holds librdkafka properties, whose names have dots: a TOML file writing
/// `sasl.mechanism = "PLAIN"` unquoted means the same as `"sasl.mechanism" = "PLAIN"`.
fn flatten_client(kafka: &mut Value, found: &mut Found) {
    let ValueKind::Table(kafka) = &mut kafka.kind else {
        return;
    };
    let Some(client) = kafka.get_mut("client") else {
        return;
    };
    let ValueKind::Table(entries) = &client.kind else {
        return;
    };
    let mut flat = Map::new();
    flatten_into("", entries, &mut flat, found);
    client.kind = ValueKind::Table(flat);
}

fn flatten_into(
    prefix: &str,
    entries: &Map<String, Value>,
    flat: &mut Map<String, Value>,
    found: &mut Found,
) {
    let name = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    // Nested tables first, so a quoted name (and the environment, which always gives
    // one) wins over the same name spelled as nested keys.
    for (key, value) in sorted(entries) {
        if let ValueKind::Table(inner) = &value.kind {
            let property = name(key);
            if is_misplaced_table(&property, inner) {
                let field = format!("kafka.client.{property}");
                found.problem(
                    &field,
                    format!("expected a string, got {}", show(value, false))
                        + &source_hint(&field, value),
                );
            } else {
                flatten_into(&property, inner, flat, found);
            }
        }
    }
    for (key, value) in sorted(entries) {
        let property = name(key);
        let field = format!("kafka.client.{property}");
        match &value.kind {
            ValueKind::Table(_) => {}
            ValueKind::Array(_) | ValueKind::Nil => found.problem(
                &field,
                format!(
                    "expected a string, got {} (librdkafka lists are comma-separated strings)",
                    show(value, false)
                ) + &source_hint(&field, value),
            ),
            _ => {
                found.note(&field, value);
                flat.insert(property, value.clone());
            }
        }
    }
}

/// A table under a librdkafka property's own name (`"ssl.key.password" = { ... }`) is a
/// value in the wrong shape, unless it spells longer property names as nested keys
/// (`group.protocol` and `group.protocol.type` both exist), correctly or nearly so.
fn is_misplaced_table(property: &str, inner: &Map<String, Value>) -> bool {
    fn leaves(prefix: &str, table: &Map<String, Value>, out: &mut Vec<String>) {
        for (key, value) in table {
            let name = format!("{prefix}.{key}");
            match &value.kind {
                ValueKind::Table(inner) => leaves(&name, inner, out),
                _ => out.push(name),
            }
        }
    }
    if librdkafka::property_type(property).is_none() {
        return false;
    }
    let mut names = Vec::new();
    leaves(property, inner, &mut names);
    !names.iter().any(|name| {
        librdkafka::property_type(name).is_some() || librdkafka::nearest(name).is_some()
    })
}

/// The field names of a settings struct, as serde sees them.
fn json_keys<T: Serialize>(value: &T) -> BTreeSet<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
        _ => BTreeSet::new(),
    }
}

fn sorted(map: &Map<String, Value>) -> BTreeMap<&String, &Value> {
    map.iter().collect()
}

/// "unknown setting", with the nearest known name when it looks like a typo.
fn unknown(key: &str, known: &BTreeSet<String>, what: &str) -> String {
    match nearest(key, known.iter().map(String::as_str)) {
        Some(name) => format!("unknown {what} (did you mean `{name}`?)"),
        None => format!("unknown {what}"),
    }
}

/// The known name `key` most likely misspells: at most two edits, and few for its length.
fn nearest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let key = key.to_lowercase();
    let (distance, name) = known
        .into_iter()
        .map(|k| (edit_distance(&key, k), k))
        .min()?;
    (distance <= 2 && distance * 3 <= key.len()).then_some(name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Where a value came from, so a typo in a Helm chart's env list is found quickly: ` (in
/// FILE)`, ` (from VARIABLE)`, or nothing for a default.
fn source_hint(field: &str, value: &Value) -> String {
    match source_of(field, value) {
        Some(source) => format!(" ({source})"),
        None => String::new(),
    }
}

/// `in FILE` or `from VARIABLE`; `None` for a built-in default.
fn source_of(field: &str, value: &Value) -> Option<String> {
    let origin = origin_of(value)?;
    if let Some(name) = origin.strip_prefix(NAMED_ORIGIN) {
        return Some(format!("from {name}"));
    }
    if origin != ENV_ORIGIN {
        return Some(format!("in {origin}"));
    }
    let name = format!("METACACHE__{}", field.to_uppercase().replace('.', "__"));
    Some(if matches!(value.kind, ValueKind::Table(_)) {
        format!("from {name}__* variables")
    } else {
        format!("from {name}")
    })
}

fn origin_of(value: &Value) -> Option<&str> {
    if let Some(origin) = value.origin() {
        return Some(origin);
    }
    match &value.kind {
        ValueKind::Table(table) => table.values().find_map(origin_of),
        _ => None,
    }
}

/// A value for a message; a secret's is never shown.
fn show(value: &Value, secret: bool) -> String {
    match &value.kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "an array".into(),
        _ if secret => "a value (not shown: secret)".into(),
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(n) => n.to_string(),
        ValueKind::I128(n) => n.to_string(),
        ValueKind::U64(n) => n.to_string(),
        ValueKind::U128(n) => n.to_string(),
        ValueKind::Float(n) => n.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Semantic checks

/// Redis rejects `EX` values whose milliseconds overflow an i64; every write would fail.
const MAX_TTL_SECS: u64 = i64::MAX as u64 / 1000;

/// Properties metacache owns: set by librdkafka from `kafka.client` they would break
/// offset tracking or give one setting two names.
const RESERVED_CLIENT_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "metacache commits offsets itself, after Redis acknowledged the writes; remove it",
    ),
    (
        "enable.auto.offset.store",
        "metacache stores offsets itself, after Redis acknowledged the writes; remove it",
    ),
    ("group.id", "use kafka.group_id instead"),
    ("bootstrap.servers", "use kafka.brokers instead"),
    ("metadata.broker.list", "use kafka.brokers instead"),
    ("auto.offset.reset", "use kafka.auto_offset_reset instead"),
    (
        "queued.max.messages.kbytes",
        "use kafka.queued_max_messages_kbytes instead",
    ),
];

/// What loading learnt before the checks run.
#[derive(Default)]
struct Known {
    /// Fields that failed to load (left at their defaults): not checked.
    broken: BTreeSet<String>,
    /// Where each setting given came from, as in [`Found::sources`].
    sources: BTreeMap<String, String>,
}

struct Checks<'a> {
    problems: Vec<Problem>,
    known: &'a Known,
}

impl<'a> Checks<'a> {
    fn new(known: &'a Known) -> Checks<'a> {
        Checks {
            problems: Vec::new(),
            known,
        }
    }

    fn fail(&mut self, field: &str, reason: impl Into<String>) {
        self.fail_at(field, &[field], reason);
    }

    /// A problem reported at `field` about the settings `involved` (`field` among them),
    /// with their sources; dropped if one of them failed to load.
    fn fail_at(&mut self, field: &str, involved: &[&str], reason: impl Into<String>) {
        if !self.usable(involved) || !self.usable(&[field]) {
            return;
        }
        let reason = reason.into() + &self.sources(field, involved);
        self.problems.push(Problem::new(field, reason));
    }

    /// Whether all these fields loaded, so that checking them says something about the
    /// user's settings rather than about defaults standing in for broken ones. The fields
    /// of a section that failed as a whole (`writer = 5`) did not load either.
    fn usable(&self, fields: &[&str]) -> bool {
        let broken = &self.known.broken;
        !fields.iter().any(|field| {
            let section = field.split_once('.').map_or(*field, |(section, _)| section);
            broken.contains(*field) || broken.contains(section)
        })
    }

    /// ` (in FILE)` when the settings came from one place, else each with its own; the
    /// ones at their defaults are not named.
    fn sources(&self, field: &str, involved: &[&str]) -> String {
        let given: Vec<(&str, &String)> = involved
            .iter()
            .filter_map(|f| self.known.sources.get(*f).map(|s| (*f, s)))
            .collect();
        let own = self.known.sources.get(field);
        match (own, given.first()) {
            (_, None) => String::new(),
            (Some(own), _) if given.iter().all(|(_, s)| *s == own) => format!(" ({own})"),
            _ => {
                let each: Vec<String> = given.iter().map(|(f, s)| format!("{f} {s}")).collect();
                format!(" ({})", each.join(", "))
            }
        }
    }

    fn between<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, lo: T, hi: T) {
        if value < lo || value > hi {
            self.fail(field, format!("must be between {lo} and {hi}, got {value}"));
        }
    }

    fn at_least<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, lo: T) {
        if value < lo {
            self.fail(field, format!("must be at least {lo}, got {value}"));
        }
    }

    fn at_most<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, hi: T) {
        if value > hi {
            self.fail(field, format!("must be at most {hi}, got {value}"));
        }
    }

    fn one_of(&mut self, field: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.fail(
                field,
                format!("must be one of {}, got {value:?}", allowed.join(", ")),
            );
        }
    }

    fn topic(&mut self, field: &str, topic: &str) -> bool {
        let reason = if topic.is_empty() {
            "must not be empty".to_string()
        } else if topic.len() > 249 {
            format!("must be at most 249 characters, got {}", topic.len())
        } else if topic == "." || topic == ".." {
            format!("is not a valid Kafka topic name, got {topic:?}")
        } else if !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            format!("may only contain ASCII letters, digits, '.', '_' and '-', got {topic:?}")
        } else {
            return true;
        };
        self.fail(field, reason);
        false
    }
}

impl KafkaSettings {
    fn check(&self, check: &mut Checks) {
        let brokers = self.brokers.trim();
        if brokers.is_empty() {
            check.fail(
                "kafka.brokers",
                "must not be empty (e.g. \"localhost:9092\")",
            );
        } else if brokers.split(',').any(|b| b.trim().is_empty()) {
            check.fail(
                "kafka.brokers",
                format!("has an empty entry in the comma-separated list {brokers:?}"),
            );
        } else {
            for entry in brokers.split(',').map(str::trim) {
                if let Err(reason) = check_broker(entry) {
                    check.fail("kafka.brokers", format!("entry {entry:?}: {reason}"));
                }
            }
        }
        if self.group_id.trim().is_empty() {
            check.fail("kafka.group_id", "must not be empty");
        }
        check.one_of(
            "kafka.auto_offset_reset",
            &self.auto_offset_reset,
            &["earliest", "latest"],
        );
        const DEVICE: &str = "kafka.device_topic";
        const METRIC: &str = "kafka.metric_topic";
        const DEAD_LETTER: &str = "kafka.dead_letter";
        // A topic that failed to load stands at its default: comparing others with it
        // would report problems that aren't there.
        let device_ok = check.topic(DEVICE, &self.device_topic) && check.usable(&[DEVICE]);
        let metric_ok = check.topic(METRIC, &self.metric_topic) && check.usable(&[METRIC]);
        if self.device_topic == self.metric_topic && device_ok {
            check.fail_at(
                METRIC,
                &[METRIC, DEVICE],
                format!(
                    "must differ from kafka.device_topic, both are {:?}",
                    self.metric_topic
                ),
            );
        }
        // Whether dead letters are on is unknown when `kafka.dead_letter` failed to load.
        let dead_letter = self.dead_letter && check.usable(&[DEAD_LETTER]);
        for (field, explicit, derived, source, source_ok) in [
            (
                "kafka.device_dead_letter_topic",
                &self.device_dead_letter_topic,
                self.device_dlq(),
                DEVICE,
                device_ok,
            ),
            (
                "kafka.metric_dead_letter_topic",
                &self.metric_dead_letter_topic,
                self.metric_dlq(),
                METRIC,
                metric_ok,
            ),
        ] {
            if !check.usable(&[field]) {
                continue;
            }
            if !explicit.is_empty() {
                if !check.topic(field, explicit) {
                    continue;
                }
            } else if !dead_letter || !source_ok {
                continue;
            } else if derived.len() > 249 {
                check.fail_at(
                    field,
                    &[field, source],
                    format!(
                        "the derived name would have {} characters, more than Kafka's 249; \
                         set this explicitly",
                        derived.len()
                    ),
                );
                continue;
            }
            let compared = [field, DEVICE, METRIC, DEAD_LETTER];
            if dead_letter
                && check.usable(&compared)
                && (derived == self.device_topic || derived == self.metric_topic)
            {
                check.fail_at(
                    field,
                    &compared,
                    format!("must differ from the source topics, got {derived:?}"),
                );
            }
        }
        check.at_least("kafka.commit_interval_ms", self.commit_interval_ms, 10);
        // librdkafka's own upper bound, reported here rather than at consumer creation.
        check.between(
            "kafka.queued_max_messages_kbytes",
            self.queued_max_messages_kbytes,
            1,
            2_097_151,
        );
        for (property, value) in &self.client {
            let field = format!("kafka.client.{property}");
            if let Some((_, instead)) = RESERVED_CLIENT_PROPERTIES
                .iter()
                .find(|(reserved, _)| reserved == property)
            {
                check.fail(&field, format!("must not be set here: {instead}"));
            } else if property.is_empty() || property.contains(char::is_whitespace) {
                check.fail_at(
                    "kafka.client",
                    &[&field],
                    format!("{property:?} is not a librdkafka property name"),
                );
            } else if let Some(reason) =
                librdkafka::refusal(property, value, is_secret_property(property))
            {
                check.fail(&field, reason);
            }
        }
    }
}

/// One `kafka.brokers` entry: `host:port` or `[IPv6]:port`. librdkafka would take a port
/// it cannot read as 0 (`kafka:abc` is logged as `kafka:0`) and a scheme as part of the
/// host name, and then retry a broker that cannot exist forever.
fn check_broker(entry: &str) -> Result<(), String> {
    const EXAMPLE: &str = "(e.g. \"kafka:9092\")";
    if let Some((scheme, rest)) = entry.split_once("://") {
        let rest = rest.trim_end_matches('/');
        return Err(format!(
            "must be host:port without a URL scheme (did you mean {rest:?}?); {scheme}:// is \
             not part of a broker address (the protocol is kafka.client's security.protocol)"
        ));
    }
    let port = if let Some(bracketed) = entry.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err("has an unclosed '[' (IPv6 addresses are written [::1]:9092)".into());
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "{address:?} in brackets is not an IPv6 address (written [::1]:9092)"
            ));
        }
        match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => return Err(format!("has no port {EXAMPLE}")),
            None => return Err(format!("has {after:?} after ']' where :port belongs")),
        }
    } else {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(format!("has no port {EXAMPLE}"));
        };
        if host.contains(':') {
            return Err(
                "has several ':'; an IPv6 address goes in brackets, e.g. [::1]:9092".into(),
            );
        }
        if host.is_empty() {
            return Err(format!("has no host {EXAMPLE}"));
        }
        let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !host.chars().all(host_char) {
            return Err(format!(
                "the host may only contain ASCII letters, digits, '.', '-' and '_', got {host:?}"
            ));
        }
        port
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!(
            "the port must be a number from 1 to 65535, got {port:?}"
        )),
    }
}

/// Redis's own checks (its settings type lives in the client crate).
trait CheckRedis {
    fn check(&self, check: &mut Checks);
}

impl CheckRedis for RedisSettings {
    fn check(&self, check: &mut Checks) {
        match Url::parse(&self.url) {
            Err(e) => check.fail(
                "redis.url",
                format!("is not a URL such as redis://127.0.0.1:6379/0 ({e})"),
            ),
            Ok(url) => match url.scheme() {
                "redis" | "rediss" => {
                    if url.host_str().is_none_or(str::is_empty) {
                        check.fail(
                            "redis.url",
                            format!("has no host, got {:?}", self.redacted_url()),
                        );
                    }
                    let db = url.path().trim_start_matches('/');
                    if !db.is_empty() && db.parse::<u32>().is_err() {
                        check.fail(
                            "redis.url",
                            format!("the path must be a database number, got {db:?}"),
                        );
                    }
                }
                "redis+unix" | "unix" => {
                    if url.path().trim_start_matches('/').is_empty() {
                        check.fail(
                            "redis.url",
                            format!("has no socket path, got {:?}", self.redacted_url()),
                        );
                    }
                }
                other => check.fail(
                    "redis.url",
                    format!("scheme must be redis, rediss, redis+unix or unix, got {other:?}"),
                ),
            },
        }
        if let Some(db) = self.db {
            check.at_least("redis.db", db, 0);
        }
        if self.key_prefix.len() > 128 {
            check.fail(
                "redis.key_prefix",
                format!("must be at most 128 bytes, got {}", self.key_prefix.len()),
            );
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            check.fail(
                "redis.key_prefix",
                format!(
                    "must not contain whitespace or control characters, got {:?}",
                    self.key_prefix
                ),
            );
        }
        check.at_least("redis.connect_timeout_ms", self.connect_timeout_ms, 1);
        check.at_least("redis.response_timeout_ms", self.response_timeout_ms, 1);
    }
}

impl WriterSettings {
    fn check(&self, check: &mut Checks) {
        check.between("writer.max_batch", self.max_batch, 1, 100_000);
        check.at_most("writer.linger_ms", self.linger_ms, 10_000);
        check.between("writer.max_in_flight", self.max_in_flight, 1, 64);
        check.at_least("writer.retry_initial_ms", self.retry_initial_ms, 1);
        if self.retry_initial_ms > self.retry_max_ms {
            check.fail_at(
                "writer.retry_initial_ms",
                &["writer.retry_initial_ms", "writer.retry_max_ms"],
                format!(
                    "must not exceed writer.retry_max_ms ({}), got {}",
                    self.retry_max_ms, self.retry_initial_ms
                ),
            );
        }
    }
}

/// Room the dead-letter producer keeps beyond `limits.max_message_bytes` for the key, the
/// headers and the record framing.
pub const DEAD_LETTER_OVERHEAD: usize = 64 * 1024;

impl KafkaSettings {
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

fn check_limits(limits: &Limits, check: &mut Checks) {
    check.between(
        "limits.max_message_bytes",
        limits.max_message_bytes,
        1,
        64 * 1024 * 1024,
    );
    check.between("limits.max_id_bytes", limits.max_id_bytes, 1, 4096);
    check.between(
        "limits.max_metric_names",
        limits.max_metric_names,
        1,
        1_000_000,
    );
}

// ---------------------------------------------------------------------------------------
// Secrets

/// librdkafka properties whose values are credentials or private keys.
fn is_secret_property(name: &str) -> bool {
    const MARKERS: &[&str] = &[
        "password",
        "secret",
        "passphrase",
        "sasl.jaas",
        "sasl.oauthbearer.config",
        "key.pem",
        "private.key",
    ];
    let name = name.to_ascii_lowercase();
    MARKERS.iter().any(|m| name.contains(m))
}

fn is_secret_field(field: &str) -> bool {
    match field.strip_prefix("kafka.client.") {
        Some(property) => is_secret_property(property),
        None => matches!(field, "redis.password" | "redis.url"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Mutex, MutexGuard};

    use super::*;

    /// The process environment is shared by every test thread.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    /// Sets variables for one test and removes them afterwards, even on panic.
    struct EnvVars {
        names: Vec<String>,
        _lock: MutexGuard<'static, ()>,
    }

    impl EnvVars {
        fn set(vars: &[(&str, &str)]) -> EnvVars {
            let lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            for (name, value) in vars {
                std::env::set_var(name, value);
            }
            EnvVars {
                names: vars.iter().map(|(n, _)| n.to_string()).collect(),
                _lock: lock,
            }
        }
    }

    impl Drop for EnvVars {
        fn drop(&mut self) {
            for name in &self.names {
                std::env::remove_var(name);
            }
        }
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn no_fallback() -> &'static Path {
        Path::new("/nonexistent/metacache/default.toml")
    }

    fn load(file: Option<&Path>, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(file, &env(vars), no_fallback(), &[])
    }

    #[test]
    fn the_dead_letter_producer_must_fit_any_event_the_limits_accept() {
        let mut settings = Settings::default();
        assert!(
            settings.kafka.dead_letter_max_bytes(&settings.limits)
                >= settings.limits.max_message_bytes + DEAD_LETTER_OVERHEAD
        );
        assert!(settings.validate().is_ok());
        settings
            .kafka
            .client
            .insert("message.max.bytes".into(), "1000000".into());
        let found = problems(settings.validate().map(|_| Settings::default()));
        assert!(
            found
                .iter()
                .any(|(field, reason)| field == "kafka.client.message.max.bytes"
                    && reason.contains("1114112")),
            "{found:?}"
        );
        settings.kafka.dead_letter = false;
        assert!(settings.validate().is_ok());
    }

    fn problems(result: Result<Settings, ConfigError>) -> Vec<(String, String)> {
        let error = result.expect_err("configuration should be rejected");
        error
            .problems
            .into_iter()
            .map(|p| (p.field, p.reason))
            .collect()
    }

    fn fields(result: Result<Settings, ConfigError>) -> Vec<String> {
        problems(result).into_iter().map(|(f, _)| f).collect()
    }

    fn default_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE)
    }

    #[test]
    fn defaults_load_without_a_file() {
        let settings = load(None, &[]).unwrap();
        assert_eq!(
            settings.to_toml_string(),
            Settings::default().to_toml_string()
        );
        assert_eq!(settings.kafka.brokers, "localhost:9092");
        assert_eq!(settings.writer.max_batch, 1024);
        assert_eq!(settings.redis.password, None);
        assert!(settings.kafka.client.is_empty());
    }

    #[test]
    fn the_shipped_default_file_matches_the_code() {
        let settings = load(Some(&default_file()), &[]).unwrap();
        assert_eq!(
            settings.to_toml_string(),
            Settings::default().to_toml_string()
        );
    }

    #[test]
    fn the_shipped_default_file_names_every_setting() {
        // Equal values alone would not notice a setting missing from the file.
        let text = std::fs::read_to_string(default_file()).unwrap();
        let file: toml::Table = text.parse().unwrap();
        let code = serde_json::to_value(Settings::default()).unwrap();
        for (section, keys) in code.as_object().unwrap() {
            let in_file = file[section].as_table().unwrap();
            for (key, value) in keys.as_object().unwrap() {
                // Options without a default are documented as comments.
                if !value.is_null() {
                    assert!(in_file.contains_key(key), "{section}.{key} missing");
                }
            }
        }
    }

    #[test]
    fn the_fallback_file_is_used_only_when_nothing_is_named() {
        let fallback = toml_file("[writer]\nmax_batch = 7\n");
        let settings = Settings::load_from(None, &[], fallback.path(), &[]).unwrap();
        assert_eq!(settings.writer.max_batch, 7);

        let named = toml_file("[writer]\nmax_batch = 8\n");
        let settings = Settings::load_from(Some(named.path()), &[], fallback.path(), &[]).unwrap();
        assert_eq!(settings.writer.max_batch, 8);
    }

    #[test]
    fn a_file_overrides_defaults() {
        let file = toml_file(
            r#"
            [kafka]
            brokers = "k1:9092,k2:9092"
            dead_letter = false
            [redis]
            key_prefix = "mc:"
            db = 3
            [writer]
            max_batch = 10
            [devices]
            ttl_secs = 86400
            "#,
        );
        let settings = load(Some(file.path()), &[]).unwrap();
        assert_eq!(settings.kafka.brokers, "k1:9092,k2:9092");
        assert!(!settings.kafka.dead_letter);
        assert_eq!(settings.redis.key_prefix, "mc:");
        assert_eq!(settings.redis.db, Some(3));
        assert_eq!(settings.writer.max_batch, 10);
        assert_eq!(settings.devices.ttl_secs, 86400);
        // Untouched settings keep their defaults.
        assert_eq!(settings.kafka.group_id, "metacache");
        assert_eq!(settings.writer.linger_ms, 5);
        assert_eq!(settings.metrics.ttl_secs, 0);
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let file = toml_file("[kafka]\nbrokers = \"file:9092\"\n[writer]\nmax_batch = 10\n");
        let _env = EnvVars::set(&[
            ("METACACHE__KAFKA__BROKERS", "env:9092"),
            ("METACACHE__WRITER__MAX_BATCH", "20"),
            ("METACACHE__KAFKA__DEAD_LETTER", "false"),
            ("METACACHE__REDIS__DB", "2"),
        ]);
        let settings = Settings::load(Some(file.path())).unwrap();
        assert_eq!(settings.kafka.brokers, "env:9092");
        assert_eq!(settings.writer.max_batch, 20);
        assert!(!settings.kafka.dead_letter);
        assert_eq!(settings.redis.db, Some(2));
    }

    #[test]
    fn client_variables_become_dotted_librdkafka_properties() {
        let file = toml_file("[kafka.client]\n\"sasl.username\" = \"app\"\n");
        let _env = EnvVars::set(&[
            ("METACACHE__KAFKA__CLIENT__SASL_PASSWORD", "s3cret"),
            ("METACACHE__KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL"),
            // Numeric-looking values stay strings.
            ("METACACHE__KAFKA__CLIENT__FETCH_MAX_BYTES", "052428800"),
        ]);
        let settings = Settings::load(Some(file.path())).unwrap();
        let expected: BTreeMap<String, String> = [
            ("fetch.max.bytes", "052428800"),
            ("sasl.password", "s3cret"),
            ("sasl.username", "app"),
            ("security.protocol", "SASL_SSL"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(settings.kafka.client, expected);
    }

    #[test]
    fn nested_client_keys_in_a_file_are_flattened() {
        let file = toml_file(
            "[kafka.client]\nsasl.mechanism = \"PLAIN\"\n\"socket.keepalive.enable\" = true\n",
        );
        let settings = load(Some(file.path()), &[]).unwrap();
        assert_eq!(settings.kafka.client["sasl.mechanism"], "PLAIN");
        assert_eq!(settings.kafka.client["socket.keepalive.enable"], "true");
        assert_eq!(settings.kafka.client.len(), 2);
    }

    #[test]
    fn numeric_looking_strings_stay_strings() {
        for password in ["1234", "0123", "1e3", "TRUE", "nan"] {
            let settings = load(
                None,
                &[
                    ("METACACHE__REDIS__PASSWORD", password),
                    ("METACACHE__KAFKA__GROUP_ID", "007"),
                    ("METACACHE__KAFKA__DEVICE_TOPIC", "9092"),
                ],
            )
            .unwrap();
            assert_eq!(settings.redis.password.as_deref(), Some(password));
            assert_eq!(settings.kafka.group_id, "007");
            assert_eq!(settings.kafka.device_topic, "9092");
        }
    }

    #[test]
    fn the_config_file_variable_is_not_a_setting() {
        let file = toml_file("[writer]\nmax_batch = 9\n");
        let _env = EnvVars::set(&[("METACACHE_CONFIG", file.path().to_str().unwrap())]);
        let settings = Settings::load(None).unwrap();
        assert_eq!(settings.writer.max_batch, 9);
    }

    #[test]
    fn a_missing_named_file_is_reported() {
        let missing = Path::new("/nonexistent/metacache.toml");
        assert_eq!(
            problems(load(Some(missing), &[])),
            [(
                "config".to_string(),
                "file /nonexistent/metacache.toml does not exist".to_string()
            )]
        );
        assert_eq!(
            problems(load(None, &[("METACACHE_CONFIG", "/nonexistent/m.toml")])),
            [(
                "config".to_string(),
                "file /nonexistent/m.toml does not exist (named by METACACHE_CONFIG)".to_string()
            )]
        );
    }

    #[test]
    fn a_file_with_several_problems_reports_them_all() {
        let file = toml_file(
            r#"
            [kafka]
            auto_offset_reset = "oldest"
            client = { "enable.auto.commit" = "true", "group.id" = "other" }
            [redis]
            url = "http://127.0.0.1:6379"
            db = "zero"
            [writer]
            max_bach = 100
            max_batch = 0
            linger_ms = 5.5
            [limits]
            max_id_bytes = "lots"
            max_metric_names = -1
            [shutdown]
            timeout_secs = 0
            [http]
            listen = "localhost:8080"
            [log]
            format = "xml"
            [writr]
            max_batch = 1
            "#,
        );
        let path = file.path().display().to_string();
        let found = problems(load(Some(file.path()), &[]));
        let expected: Vec<(String, String)> = [
            // Type and name problems first, as the sections are read, then the checks.
            ("writr", "unknown section (did you mean `writer`?)"),
            ("redis.db", "expected an integer, got \"zero\""),
            ("writer.linger_ms", "expected an integer, got 5.5"),
            (
                "writer.max_bach",
                "unknown setting (did you mean `max_batch`?)",
            ),
            ("limits.max_id_bytes", "expected an integer, got \"lots\""),
            (
                "limits.max_metric_names",
                "expected a non-negative 64-bit integer, got -1",
            ),
            (
                "kafka.auto_offset_reset",
                "must be one of earliest, latest, got \"oldest\"",
            ),
            (
                "kafka.client.enable.auto.commit",
                "must not be set here: metacache commits offsets itself, after Redis \
                 acknowledged the writes; remove it",
            ),
            (
                "kafka.client.group.id",
                "must not be set here: use kafka.group_id instead",
            ),
            (
                "redis.url",
                "scheme must be redis, rediss, redis+unix or unix, got \"http\"",
            ),
            ("writer.max_batch", "must be between 1 and 100000, got 0"),
            ("shutdown.timeout_secs", "must be between 1 and 3600, got 0"),
            (
                "http.listen",
                "must be an IP address and port such as 0.0.0.0:8080, got \"localhost:8080\"",
            ),
            ("log.format", "must be one of text, json, got \"xml\""),
        ]
        .into_iter()
        // Each names the file, semantic checks too.
        .map(|(f, r)| (f.to_string(), format!("{r} (in {path})")))
        .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn checks_name_the_source_of_every_setting_they_involve() {
        let file = toml_file(
            "[writer]\nretry_initial_ms = 5000\nmax_batch = \"abc\"\n[kafka]\nauto_offset_reset = \"x\"\n",
        );
        let path = file.path().display().to_string();
        let found = problems(load(
            Some(file.path()),
            &[
                ("METACACHE__WRITER__RETRY_MAX_MS", "100"),
                ("METACACHE__LOG__FORMAT", "xml"),
                ("METACACHE__KAFKA__CLIENT__ENABLE_AUTO_COMMIT", "true"),
            ],
        ));
        let expected: Vec<(String, String)> = [
            (
                "writer.max_batch",
                format!("expected an integer, got \"abc\" (in {path})"),
            ),
            (
                "kafka.auto_offset_reset",
                format!("must be one of earliest, latest, got \"x\" (in {path})"),
            ),
            (
                "kafka.client.enable.auto.commit",
                "must not be set here: metacache commits offsets itself, after Redis \
                 acknowledged the writes; remove it (from \
                 METACACHE__KAFKA__CLIENT__ENABLE_AUTO_COMMIT)"
                    .to_string(),
            ),
            // A cross-field check runs although another writer setting failed, and names
            // where each of its settings came from.
            (
                "writer.retry_initial_ms",
                format!(
                    "must not exceed writer.retry_max_ms (100), got 5000 \
                     (writer.retry_initial_ms in {path}, writer.retry_max_ms from \
                     METACACHE__WRITER__RETRY_MAX_MS)"
                ),
            ),
            (
                "log.format",
                "must be one of text, json, got \"xml\" (from METACACHE__LOG__FORMAT)".to_string(),
            ),
        ]
        .into_iter()
        .map(|(f, r)| (f.to_string(), r))
        .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_cross_field_check_is_skipped_only_when_one_of_its_own_fields_failed() {
        // retry_max_ms stands at its default (10000) after failing: comparing with it
        // would invent a problem.
        let file = toml_file(
            "[writer]\nretry_initial_ms = 20000\nretry_max_ms = \"abc\"\n\
             [kafka]\ndevice_topic = [\"x\"]\nmetric_topic = \"device-metadata\"\n",
        );
        assert_eq!(
            fields(load(Some(file.path()), &[])),
            ["kafka.device_topic", "writer.retry_max_ms"]
        );
    }

    #[test]
    fn booleans_are_true_or_false_and_nothing_else() {
        for (written, got) in [
            ("\"yes\"", "\"yes\""),
            ("\"no\"", "\"no\""),
            ("\"off\"", "\"off\""),
            ("\"on\"", "\"on\""),
            ("0", "0"),
            ("1", "1"),
        ] {
            let file = toml_file(&format!("[kafka]\ndead_letter = {written}\n"));
            let path = file.path().display();
            assert_eq!(
                problems(load(Some(file.path()), &[])),
                [(
                    "kafka.dead_letter".to_string(),
                    format!("expected a boolean (true or false), got {got} (in {path})")
                )],
                "{written}"
            );
        }
        let file = toml_file("[kafka]\ndead_letter = \"false\"\n");
        assert_eq!(
            problems(load(Some(file.path()), &[])),
            [(
                "kafka.dead_letter".to_string(),
                format!(
                    "expected a boolean (true or false), got the string \"false\" (write it \
                     without quotes) (in {})",
                    file.path().display()
                )
            )]
        );
        // Environment values are strings: the words true and false, in any case.
        for (value, expected) in [("true", true), ("FALSE", false), ("True", true)] {
            let settings = load(None, &[("METACACHE__KAFKA__DEAD_LETTER", value)]).unwrap();
            assert_eq!(settings.kafka.dead_letter, expected, "{value}");
        }
        for value in ["yes", "no", "off", "1", "0", ""] {
            assert_eq!(
                problems(load(None, &[("METACACHE__KAFKA__DEAD_LETTER", value)])),
                [(
                    "kafka.dead_letter".to_string(),
                    format!(
                        "expected a boolean (true or false), got {value:?} (from \
                         METACACHE__KAFKA__DEAD_LETTER)"
                    )
                )],
                "{value:?}"
            );
        }
    }

    #[test]
    fn strings_are_not_made_from_numbers_or_booleans() {
        let file = toml_file(
            "[kafka]\nbrokers = 42\ngroup_id = true\n[redis]\npassword = 123456\nkey_prefix = 1.5\n",
        );
        let path = file.path().display().to_string();
        assert_eq!(
            problems(load(Some(file.path()), &[])),
            [
                ("kafka.brokers", "expected a string, got 42"),
                ("kafka.group_id", "expected a string, got true"),
                ("redis.key_prefix", "expected a string, got 1.5"),
                (
                    "redis.password",
                    "expected a string, got a value (not shown: secret)"
                ),
            ]
            .map(|(f, r)| (f.to_string(), format!("{r} (in {path})")))
        );
    }

    #[test]
    fn brokers_are_host_port_entries() {
        let mut settings = Settings::default();
        for good in [
            "localhost:9092",
            "k1:9092,k2:9092",
            "k1:9092, k2:9092",
            "127.0.0.1:12345,127.0.0.1:12346",
            "[::1]:9092",
            "[fe80::1]:9093,kafka-0.kafka.kafka.svc:9093",
            "my_kafka:1",
        ] {
            settings.kafka.brokers = good.into();
            assert!(settings.validate().is_ok(), "{good}");
        }
        for (bad, reason) in [
            (
                "kafka:abc",
                "the port must be a number from 1 to 65535, got \"abc\"",
            ),
            (
                "kafka:99999",
                "the port must be a number from 1 to 65535, got \"99999\"",
            ),
            (
                "kafka:0",
                "the port must be a number from 1 to 65535, got \"0\"",
            ),
            (
                "kafka:",
                "the port must be a number from 1 to 65535, got \"\"",
            ),
            ("kafka", "has no port (e.g. \"kafka:9092\")"),
            (":9092", "has no host (e.g. \"kafka:9092\")"),
            (
                "http://kafka:9092",
                "must be host:port without a URL scheme (did you mean \"kafka:9092\"?); \
                 http:// is not part of a broker address (the protocol is kafka.client's \
                 security.protocol)",
            ),
            (
                "::1:9092",
                "has several ':'; an IPv6 address goes in brackets, e.g. [::1]:9092",
            ),
            ("[::1]", "has no port (e.g. \"kafka:9092\")"),
            (
                "[kafka]:9092",
                "\"kafka\" in brackets is not an IPv6 address (written [::1]:9092)",
            ),
            (
                "kafka 1:9092",
                "the host may only contain ASCII letters, digits, '.', '-' and '_', got \
                 \"kafka 1\"",
            ),
        ] {
            settings.kafka.brokers = format!("ok:9092,{bad}");
            assert_eq!(
                problems(settings.validate().map(|()| Settings::default())),
                [(
                    "kafka.brokers".to_string(),
                    format!("entry {bad:?}: {reason}")
                )],
                "{bad}"
            );
        }
        // Each bad entry is its own problem, and names where the list came from.
        let found = problems(load(
            None,
            &[("METACACHE__KAFKA__BROKERS", "kafka:abc,kafka:99999,ok:1")],
        ));
        assert_eq!(
            found,
            [
                (
                    "kafka.brokers".to_string(),
                    "entry \"kafka:abc\": the port must be a number from 1 to 65535, got \
                     \"abc\" (from METACACHE__KAFKA__BROKERS)"
                        .to_string()
                ),
                (
                    "kafka.brokers".to_string(),
                    "entry \"kafka:99999\": the port must be a number from 1 to 65535, got \
                     \"99999\" (from METACACHE__KAFKA__BROKERS)"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn every_bad_librdkafka_property_is_reported_in_one_run() {
        let file = toml_file(
            r#"
            [kafka.client]
            "sasl.pasword" = "secret-typo-1"
            "socket.timeout.ms" = "abc"
            "sasl.password" = ["secret-array-2"]
            "ssl.key.password" = { file = "secret-table-3" }
            # Longer property names spelt as nested keys under a shorter one.
            group.protocol.type = "consumer"
            "fetch.wait.max.ms" = 10
            "#,
        );
        let path = file.path().display().to_string();
        let error = load(
            Some(file.path()),
            &[("METACACHE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "soon")],
        )
        .expect_err("rejected");
        let printed = error.to_string();
        assert!(!printed.contains("secret-"), "{printed}");
        assert_eq!(
            problems(Err(error)),
            [
                (
                    "kafka.client.ssl.key.password",
                    format!("expected a string, got a table (in {path})"),
                ),
                (
                    "kafka.client.sasl.password",
                    format!(
                        "expected a string, got an array (librdkafka lists are \
                         comma-separated strings) (in {path})"
                    ),
                ),
                (
                    "kafka.client.sasl.pasword",
                    format!(
                        "unknown librdkafka property (did you mean `sasl.password`?) (in {path})"
                    ),
                ),
                (
                    "kafka.client.session.timeout.ms",
                    "expected an integer, got \"soon\" (from \
                     METACACHE__KAFKA__CLIENT__SESSION_TIMEOUT_MS)"
                        .to_string(),
                ),
                (
                    "kafka.client.socket.timeout.ms",
                    format!("expected an integer, got \"abc\" (in {path})"),
                ),
            ]
            .map(|(f, r)| (f.to_string(), r))
        );
    }

    #[test]
    fn command_line_options_win_and_are_named_as_the_source() {
        let file = toml_file("[kafka]\nbrokers = \"kafka:abc\"\n");
        let option = |value: &str| Override {
            field: "kafka.brokers",
            option: "--brokers",
            value: value.to_string(),
        };
        let vars = env(&[("METACACHE__REDIS__URL", "redis://h:6379/x")]);
        let found = problems(Settings::load_from(
            Some(file.path()),
            &vars,
            no_fallback(),
            &[option("kafka:99999")],
        ));
        assert_eq!(
            found,
            [
                (
                    "kafka.brokers".to_string(),
                    "entry \"kafka:99999\": the port must be a number from 1 to 65535, got \
                     \"99999\" (from --brokers)"
                        .to_string()
                ),
                (
                    "redis.url".to_string(),
                    "the path must be a database number, got \"x\" (from METACACHE__REDIS__URL)"
                        .to_string()
                ),
            ]
        );
        // A good option replaces the file's bad value before anything is checked.
        let settings =
            Settings::load_from(Some(file.path()), &[], no_fallback(), &[option("k:9092")])
                .unwrap();
        assert_eq!(settings.kafka.brokers, "k:9092");
    }

    #[test]
    fn values_the_config_crate_would_coerce_are_rejected() {
        let file = toml_file(
            r#"
            shutdown = 5
            [kafka]
            client = ["a"]
            dead_letter = 1
            [writer]
            max_batch = true
            max_in_flight = "99999999999999999999999"
            "#,
        );
        let path = file.path().display().to_string();
        assert_eq!(
            problems(load(
                Some(file.path()),
                &[("METACACHE__KAFKA__GROUP_ID", "g")]
            )),
            [
                ("kafka.client", "expected a table, got an array".to_string()),
                (
                    "kafka.dead_letter",
                    "expected a boolean (true or false), got 1".to_string()
                ),
                (
                    "writer.max_batch",
                    "expected an integer, got true".to_string()
                ),
                (
                    "writer.max_in_flight",
                    "expected a non-negative 64-bit integer, got \"99999999999999999999999\""
                        .to_string()
                ),
                (
                    "shutdown",
                    "expected a table of settings, got 5".to_string()
                ),
            ]
            .map(|(f, r)| (f.to_string(), format!("{r} (in {path})")))
        );
    }

    #[test]
    fn environment_problems_name_the_variable() {
        let found = problems(load(
            None,
            &[
                ("METACACHE__WRITER__MAX_BACH", "5"),
                ("METACACHE__WRITER__MAX_IN_FLIGHT", "many"),
                ("METACACHE__KAFKA__DEAD_LETTER", "2"),
                ("METACACHE__BROKERS", "k:9092"),
            ],
        ));
        assert_eq!(
            found,
            [
                (
                    "brokers".to_string(),
                    "unknown section (did you mean `kafka.brokers`?) (from METACACHE__BROKERS)"
                        .to_string()
                ),
                (
                    "kafka.dead_letter".to_string(),
                    "expected a boolean (true or false), got \"2\" (from \
                     METACACHE__KAFKA__DEAD_LETTER)"
                        .to_string()
                ),
                (
                    "writer.max_bach".to_string(),
                    "unknown setting (did you mean `max_batch`?) (from \
                     METACACHE__WRITER__MAX_BACH)"
                        .to_string()
                ),
                (
                    "writer.max_in_flight".to_string(),
                    "expected an integer, got \"many\" (from METACACHE__WRITER__MAX_IN_FLIGHT)"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_error_prints_one_line_per_problem() {
        let error = ConfigError {
            problems: vec![
                Problem::new("writer.max_batch", "must be between 1 and 100000, got 0"),
                Problem::new("log.format", "must be one of text, json, got \"xml\""),
            ],
        };
        assert_eq!(
            error.to_string(),
            "configuration has 2 problem(s):\n  \
             - writer.max_batch: must be between 1 and 100000, got 0\n  \
             - log.format: must be one of text, json, got \"xml\""
        );
    }

    #[test]
    fn topics_and_dead_letters_are_checked() {
        let mut settings = Settings::default();
        assert_eq!(settings.kafka.device_dlq(), "device-metadata.dlq");
        assert_eq!(settings.kafka.metric_dlq(), "metric-catalog.dlq");
        settings.kafka.device_dead_letter_topic = "rejects".into();
        assert_eq!(settings.kafka.device_dlq(), "rejects");

        settings.kafka.device_dead_letter_topic = "metric-catalog".into();
        settings.kafka.metric_topic = "bad topic!".into();
        settings.kafka.commit_interval_ms = 5;
        let found = problems(settings.validate().map(|()| Settings::default()));
        assert_eq!(
            found,
            [
                (
                    "kafka.metric_topic".to_string(),
                    "may only contain ASCII letters, digits, '.', '_' and '-', got \"bad topic!\""
                        .to_string()
                ),
                (
                    "kafka.commit_interval_ms".to_string(),
                    "must be at least 10, got 5".to_string()
                ),
            ]
        );

        let mut settings = Settings::default();
        settings.kafka.device_dead_letter_topic = "device-metadata".into();
        settings.kafka.metric_topic = "device-metadata".into();
        assert_eq!(
            fields(settings.validate().map(|()| Settings::default())),
            ["kafka.metric_topic", "kafka.device_dead_letter_topic"]
        );

        let mut settings = Settings::default();
        settings.kafka.device_dead_letter_topic = "metric-catalog".into();

        assert_eq!(
            problems(settings.validate().map(|()| Settings::default())),
            [(
                "kafka.device_dead_letter_topic".to_string(),
                "must differ from the source topics, got \"metric-catalog\"".to_string()
            )]
        );
        // Without dead letters the derived names do not matter.
        settings.kafka.dead_letter = false;
        settings.kafka.device_dead_letter_topic.clear();
        settings.kafka.device_topic = "d".repeat(249);
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn redis_urls_are_checked_without_showing_passwords() {
        let mut settings = Settings::default();
        for good in [
            "redis://127.0.0.1:6379/0",
            "rediss://user:pw@cache.internal:6380",
            "redis+unix:///run/redis.sock",
            "unix:///run/redis.sock?db=1",
        ] {
            settings.redis.url = good.into();
            assert!(settings.validate().is_ok(), "{good}");
        }
        settings.redis.url = "redis://user:hunter2@/0".into();
        let found = problems(settings.validate().map(|()| Settings::default()));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "redis.url");
        assert!(!found[0].1.contains("hunter2"), "{}", found[0].1);

        settings.redis.url = "redis://h:6379/x".into();
        settings.redis.db = Some(-1);
        settings.redis.key_prefix = "a b".into();
        assert_eq!(
            problems(settings.validate().map(|()| Settings::default())),
            [
                (
                    "redis.url".to_string(),
                    "the path must be a database number, got \"x\"".to_string()
                ),
                (
                    "redis.db".to_string(),
                    "must be at least 0, got -1".to_string()
                ),
                (
                    "redis.key_prefix".to_string(),
                    "must not contain whitespace or control characters, got \"a b\"".to_string()
                ),
            ]
        );
    }

    #[test]
    fn secrets_never_reach_printed_settings() {
        let mut settings = Settings::default();
        settings.redis.url = "redis://user:url-secret-1@cache:6379/0".into();
        settings.redis.password = Some("pw-secret-2".into());
        for (key, value) in [
            ("sasl.password", "sasl-secret-3"),
            ("sasl.jaas.config", "jaas-secret-4"),
            ("sasl.oauthbearer.config", "oauth-secret-5"),
            ("sasl.oauthbearer.client.secret", "client-secret-6"),
            ("ssl.key.pem", "pem-secret-7"),
            ("sasl.username", "alice"),
        ] {
            settings.kafka.client.insert(key.into(), value.into());
        }
        let printed = settings.to_toml_string();
        for secret in ["secret-1", "secret-2", "secret-3", "secret-4", "secret-5"] {
            assert!(!printed.contains(secret), "{secret} in:\n{printed}");
        }
        for secret in ["secret-6", "secret-7"] {
            assert!(!printed.contains(secret), "{secret} in:\n{printed}");
        }
        assert!(
            printed.contains("url = \"redis://user:***@cache:6379/0\""),
            "{printed}"
        );
        assert!(printed.contains("password = \"***\""), "{printed}");
        assert!(printed.contains("\"sasl.password\" = \"***\""), "{printed}");
        assert!(
            printed.contains("\"sasl.username\" = \"alice\""),
            "{printed}"
        );
        assert_eq!(
            settings.redis.redacted_url(),
            "redis://user:***@cache:6379/0"
        );
        // The original is untouched.
        assert_eq!(settings.redis.password.as_deref(), Some("pw-secret-2"));
    }

    #[test]
    fn printed_settings_load_back_to_the_same_values() {
        let mut settings = Settings::default();
        settings.writer.max_batch = 77;
        settings.kafka.client.insert("linger.ms".into(), "3".into());
        settings.redis.db = Some(4);
        let file = toml_file(&settings.to_toml_string());
        let loaded = load(Some(file.path()), &[]).unwrap();
        assert_eq!(loaded.to_toml_string(), settings.to_toml_string());
    }

    #[test]
    fn urls_are_redacted_in_every_form() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:only-pw@h:6379", "redis://:***@h:6379"),
            ("rediss://u:p%40ss@h/1", "rediss://u:***@h/1"),
            (
                "redis+unix:///run/r.sock?db=1&pass=qwerty",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            ("not a url://u:pw@host", "not a url://***@host"),
        ];
        for (raw, shown) in cases {
            assert_eq!(redact_url(raw), shown);
        }
    }

    #[test]
    fn a_syntax_error_names_the_file_but_not_the_line() {
        let file = toml_file("[redis]\npassword = \"hunter2\nurl = 1\n");
        let found = problems(load(Some(file.path()), &[]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "config");
        assert!(found[0].1.starts_with("cannot parse "), "{}", found[0].1);
        assert!(found[0].1.contains("line 2"), "{}", found[0].1);
        assert!(!found[0].1.contains("hunter2"), "{}", found[0].1);
    }

    #[test]
    fn the_probe_listener_is_an_address_apart_from_the_main_one() {
        let mut settings = Settings::default();
        settings.http.probe_listen = "0.0.0.0:8081".into();
        assert!(settings.validate().is_ok());
        for (probe, why) in [
            ("localhost:8081", "IP address and port"),
            ("0.0.0.0:8080", "must differ from http.listen"),
        ] {
            settings.http.probe_listen = probe.into();
            let found = problems(settings.validate().map(|()| Settings::default()));
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].0, "http.probe_listen");
            assert!(found[0].1.contains(why), "{}", found[0].1);
        }
    }
}
