//! The command line's shape: every command, its arguments and their help (clap derive).
//! One style for all: clap's short help layout, each command taking only what it uses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use metacache::config::Settings;

use super::load;

/// Keeps Redis populated from Kafka: device metadata and metric catalogs, validated and
/// written through a pipelined writer, at least once.
#[derive(Debug, Parser)]
#[command(name = "metacache", version, about)]
pub struct Cli {
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM/SIGINT.
    Run(ConfigArgs),
    /// Load and validate the configuration, print the effective settings (secrets
    /// masked), and exit non-zero listing every problem.
    CheckConfig(CheckConfigArgs),
    /// Run the whole job on an embedded Kafka mock cluster and a redis-server child.
    Demo(DemoArgs),
    /// Measure Kafka's and Redis's ceilings, a naive consumer, and metacache, on one
    /// machine; print a table and optionally write JSON.
    Bench(BenchArgs),
    /// The daemon without the stale guard and the devices index, for `bench` to price
    /// them. Out-of-order updates win here: never a production start.
    #[command(hide = true)]
    BenchPlainDaemon(ConfigArgs),
    /// Serve librdkafka's mock Kafka cluster until stdin closes (used by `bench`, which
    /// keeps the broker out of the daemon's CPU figures).
    #[command(hide = true)]
    MockKafka(MockKafkaArgs),
    /// Look up devices or metric names in the cache.
    #[command(subcommand)]
    Get(GetCommand),
    /// Exit 0 if NAME is a valid metric name in NAMESPACE, 1 if it is not.
    CheckMetric(CheckMetricArgs),
    /// What the cache holds, and whether Redis is healthy.
    Info(LookupArgs),
    /// Validate JSON Lines events with the daemon's decoder and produce them to Kafka.
    Produce(ProduceArgs),
    /// Rewind the consumer group to the earliest offsets of both topics, so the next start
    /// replays everything Kafka holds into Redis (after Redis lost its data). The group
    /// must have no running members.
    Resync(ResyncArgs),
    /// Prove the cache matches the stream: read both topics from the earliest retained
    /// offsets (joining no group), compute what Redis must hold and compare key by key.
    /// Writes nothing. Exit 0 when they match, 1 when they differ.
    Verify(VerifyArgs),
    /// Rebuild the device index from the device keys with `devices.index_shards` shards
    /// (or --index-shards), and rewrite the layout descriptor: to change the shard count,
    /// or to repair the index. Stop every writer first.
    Reindex(ReindexArgs),
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides `redis.url`).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Index shards to build (overrides `devices.index_shards`; 1..=1024).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub index_shards: Option<u32>,
    /// Reindex although writers are signed in under `metacache:writers` (only when they
    /// are known to be gone: a crashed writer does not sign out).
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (required when standard input is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ResyncArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group to rewind (overrides `kafka.group_id`).
    #[arg(long)]
    pub group: Option<String>,
    /// Do not ask for confirmation (required when standard input is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Every metacache of the group is stopped: needed only where the broker cannot list
    /// a group's members (resync never joins a group it cannot see into otherwise).
    #[arg(long)]
    pub assume_idle: bool,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the least-privilege Redis ACL lines for these settings (the daemon's, and a
    /// read-only one for readers) instead of the settings.
    #[arg(long)]
    pub print_acl: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Redis URL (overrides `redis.url`).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The daemons' consumer group, whose committed offsets say what is caught up
    /// (overrides `kafka.group_id`; read only, never joined).
    #[arg(long)]
    pub group: Option<String>,
    /// Print the summary and every difference as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events per workload run.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Distinct device ids (events repeat them).
    #[arg(long, default_value_t = 100_000)]
    pub devices: u64,
    /// Partitions per topic (the mock broker keeps ~5 MiB per partition).
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// The stream to produce.
    #[arg(long, value_enum, default_value = "devices")]
    pub workload: metacache::tools::bench::workload::Workload,
    /// writer.max_batch for the daemon and the Redis ceiling's pipelines.
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// writer.linger_ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// writer.max_in_flight.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Events for the naive baseline (it is slow; a sample is enough).
    #[arg(long, default_value_t = 10_000)]
    pub naive_events: u64,
    /// Publish rate of the latency phase, events/s.
    #[arg(long, default_value_t = 10_000)]
    pub latency_rate: u64,
    /// Duration of the latency phase, seconds.
    #[arg(long, default_value_t = 5)]
    pub latency_secs: u64,
    /// Only these stages (comma-separated; all by default; the README's Performance
    /// section says what each measures). The backlog is always produced.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub stages: Vec<metacache::tools::bench::Stage>,
    /// A daemon setting for the runs of metacache, as `section.name=value` (repeatable),
    /// e.g. `--set kafka.queued_max_messages_kbytes=4096`.
    #[arg(long = "set", value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use this Redis instead of starting a redis-server child (it is FLUSHALLed!).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Turn the daemon's HTTP read API on and read it at this many requests per second
    /// during the drain and latency runs (0: on but unread), to price it.
    #[arg(long)]
    pub api_load: Option<u64>,
    /// Start a replica of the bench's Redis, to price `--set redis.wait_replicas=1`.
    #[arg(long)]
    pub replica: bool,
    /// A run of a few seconds (CI): 20k mixed events, small samples.
    #[arg(long)]
    pub smoke: bool,
}

#[derive(Debug, Args)]
pub struct MockKafkaArgs {
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    #[arg(long = "topic")]
    pub topics: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// One device's metadata (exit 1 when it is not cached).
    Device {
        /// The device id.
        id: String,
        #[command(flatten)]
        lookup: LookupArgs,
    },
    /// A page of the devices index, newest first.
    Devices(DevicesArgs),
    /// The valid metric names of a namespace (an empty one means `default`); exit 1 when
    /// the namespace is unknown.
    Metrics {
        /// The namespace.
        namespace: String,
        #[command(flatten)]
        lookup: LookupArgs,
    },
}

/// Where to read from, and how to print it.
#[derive(Debug, Args)]
pub struct LookupArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides `redis.url`).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Most devices to list.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Matching devices to skip first.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Only ids matching this Redis-style glob (`*`, `?`, `[abc]`, `[^a-z]`, `\` escapes).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Least recently updated first.
    #[arg(long)]
    pub oldest_first: bool,
    #[command(flatten)]
    pub lookup: LookupArgs,
}

#[derive(Debug, Args)]
pub struct CheckMetricArgs {
    /// The namespace (an empty one means `default`).
    pub namespace: String,
    /// The metric name.
    pub name: String,
    #[command(flatten)]
    pub lookup: LookupArgs,
}

// No doc comments on the variants: clap would switch `produce --help` to its long layout.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProduceTopic {
    Devices,
    Metrics,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Which configured topic the events are for: devices (`kafka.device_topic`) or
    /// metrics (`kafka.metric_topic`).
    #[arg(long, value_enum)]
    pub topic: ProduceTopic,
    /// A JSON Lines file: one event per line, or {"tombstone": "<key>"}; `-` or nothing
    /// reads stdin.
    pub file: Option<PathBuf>,
    /// Send the valid lines even when some are invalid (the invalid ones are reported).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Redis URL (overrides `redis.url`).
    #[arg(long)]
    pub redis_url: Option<String>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<Settings, String> {
        load(
            self.config.as_deref(),
            self.brokers.as_deref(),
            self.redis_url.as_deref(),
        )
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this Redis instead of starting a redis-server child.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Exit after showing the results instead of running until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// A demo events file instead of the shipped examples/demo-events.jsonl.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Address for /healthz, /readyz, /stats and /metrics (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http_listen: String,
    /// Split the device index over this many shards (`devices.index_shards`; 1..=1024).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub index_shards: u32,
}

/// `--set section.name=value` for `metacache bench`.
pub fn parse_setting(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected section.name=value, got {arg:?}"))?;
    metacache::tools::bench::setting_env(name)?;
    Ok((name.to_owned(), value.to_owned()))
}
