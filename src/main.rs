//! The `metacache` command line: `run` (the daemon), `check-config`, `demo`, the cache
//! look-ups (`get`, `check-metric`, `info`), `produce`, `resync` and `bench`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tracing_subscriber::EnvFilter;

use metacache::client::{
    CacheClient, CacheInfo, ClientError, DeviceEntry, HealthStatus, ListOptions, Order,
};
use metacache::config::{Override, Settings};
use metacache::model::{DeviceMetadata, TopicKind};
use metacache::shutdown::{install_signal_handlers, Shutdown};
use metacache::stats::Stats;
use metacache::tools::demo::DemoOptions;
use metacache::tools::publish::{self, Outgoing, Publisher};

/// Keeps Redis populated from Kafka: device metadata and metric catalogs, validated and
/// written through a pipelined writer, at least once.
#[derive(Debug, Parser)]
#[command(name = "metacache", version, about)]
struct Cli {
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM/SIGINT.
    Run(ConfigArgs),
    /// Load and validate the configuration, print the effective settings (secrets
    /// masked), and exit non-zero listing every problem.
    CheckConfig(ConfigArgs),
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
}

#[derive(Debug, Args)]
struct ResyncArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Consumer group to rewind (overrides `kafka.group_id`).
    #[arg(long)]
    group: Option<String>,
    /// Do not ask for confirmation (required when standard input is not a terminal).
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Events per workload run.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Distinct device ids (events repeat them).
    #[arg(long, default_value_t = 100_000)]
    devices: u64,
    /// Partitions per topic (the mock broker keeps ~5 MiB per partition).
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// The stream to produce.
    #[arg(long, value_enum, default_value = "devices")]
    workload: metacache::tools::bench::workload::Workload,
    /// writer.max_batch for the daemon and the Redis ceiling's pipelines.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// writer.linger_ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// writer.max_in_flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Events for the naive baseline (it is slow; a sample is enough).
    #[arg(long, default_value_t = 10_000)]
    naive_events: u64,
    /// Publish rate of the latency phase, events/s.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Duration of the latency phase, seconds.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Only these stages (comma-separated; all by default; the README's Performance
    /// section says what each measures). The backlog is always produced.
    #[arg(long, value_enum, value_delimiter = ',')]
    stages: Vec<metacache::tools::bench::Stage>,
    /// A daemon setting for the runs of metacache, as `section.name=value` (repeatable),
    /// e.g. `--set kafka.queued_max_messages_kbytes=4096`.
    #[arg(long = "set", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Use this Redis instead of starting a redis-server child (it is FLUSHALLed!).
    #[arg(long)]
    redis_url: Option<String>,
    /// A run of a few seconds (CI): 20k mixed events, small samples.
    #[arg(long)]
    smoke: bool,
}

#[derive(Debug, Args)]
struct MockKafkaArgs {
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long = "topic")]
    topics: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum GetCommand {
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
struct LookupArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Redis URL (overrides `redis.url`).
    #[arg(long)]
    redis_url: Option<String>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DevicesArgs {
    /// Most devices to list.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Matching devices to skip first.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Only ids matching this Redis-style glob (`*`, `?`, `[abc]`, `[^a-z]`, `\` escapes).
    #[arg(long)]
    pattern: Option<String>,
    /// Least recently updated first.
    #[arg(long)]
    oldest_first: bool,
    #[command(flatten)]
    lookup: LookupArgs,
}

#[derive(Debug, Args)]
struct CheckMetricArgs {
    /// The namespace (an empty one means `default`).
    namespace: String,
    /// The metric name.
    name: String,
    #[command(flatten)]
    lookup: LookupArgs,
}

// No doc comments on the variants: clap would switch `produce --help` to its long layout.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProduceTopic {
    Devices,
    Metrics,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// Which configured topic the events are for: devices (`kafka.device_topic`) or
    /// metrics (`kafka.metric_topic`).
    #[arg(long, value_enum)]
    topic: ProduceTopic,
    /// A JSON Lines file: one event per line, or {"tombstone": "<key>"}; `-` or nothing
    /// reads stdin.
    file: Option<PathBuf>,
    /// Send the valid lines even when some are invalid (the invalid ones are reported).
    #[arg(long)]
    skip_invalid: bool,
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
}

/// Exit codes of the look-ups and `produce`.
mod exit {
    /// The answer is no: not cached, not a valid metric name, an unknown namespace,
    /// invalid input lines.
    pub const NO: u8 = 1;
    /// Configuration or usage problems (such as a malformed `--pattern`).
    pub const CONFIG: u8 = 2;
    /// Redis or Kafka failed, or the cache holds a corrupt entry.
    pub const UNAVAILABLE: u8 = 3;
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Configuration file (default: $METACACHE_CONFIG, else config/default.toml if present).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Redis URL (overrides `redis.url`).
    #[arg(long)]
    redis_url: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Settings, String> {
        load(
            self.config.as_deref(),
            self.brokers.as_deref(),
            self.redis_url.as_deref(),
        )
    }
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Use this Redis instead of starting a redis-server child.
    #[arg(long)]
    redis_url: Option<String>,
    /// Exit after showing the results instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// A demo events file instead of the shipped examples/demo-events.jsonl.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Address for /healthz, /readyz, /stats and /metrics (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    http_listen: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => match args.load() {
            Ok(settings) => {
                print!("{}", settings.redacted().to_toml_string());
                eprintln!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => run_daemon(cli.log_format, &args, false),
        Command::BenchPlainDaemon(args) => run_daemon(cli.log_format, &args, true),
        Command::Bench(args) => {
            init_logging(cli.log_format, "text", "warn");
            let stages = if args.stages.is_empty() {
                metacache::tools::bench::Stage::ALL.to_vec()
            } else {
                args.stages
            };
            let options = if args.smoke {
                metacache::tools::bench::BenchOptions {
                    stages,
                    settings: args.settings,
                    json: args.json,
                    redis_url: args.redis_url,
                    ..metacache::tools::bench::BenchOptions::smoke()
                }
            } else {
                metacache::tools::bench::BenchOptions {
                    events: args.events,
                    devices: args.devices,
                    partitions: args.partitions,
                    workload: args.workload,
                    max_batch: args.batch,
                    linger_ms: args.linger_ms,
                    max_in_flight: args.in_flight,
                    naive_events: args.naive_events,
                    latency_rate: args.latency_rate,
                    latency_secs: args.latency_secs,
                    stages,
                    settings: args.settings,
                    json: args.json,
                    redis_url: args.redis_url,
                }
            };
            match metacache::tools::bench::run(options) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MockKafka(args) => {
            let topics: Vec<(&str, i32)> = args
                .topics
                .iter()
                .map(|t| (t.as_str(), args.partitions))
                .collect();
            match metacache::tools::embedded::EmbeddedKafka::start(1, &topics) {
                Ok(kafka) => {
                    println!("{}", kafka.bootstrap());
                    use std::io::{Read, Write};
                    let _ = std::io::stdout().flush();
                    // Serve until the parent closes our stdin (or dies).
                    let _ = std::io::stdin().read_to_end(&mut Vec::new());
                    drop(kafka);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mock kafka: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Resync(args) => resync(args, cli.log_format),
        Command::Demo(args) => {
            init_logging(cli.log_format, "text", "warn");
            let options = DemoOptions {
                redis_url: args.redis_url,
                once: args.once,
                events: args.events,
                http_listen: args.http_listen,
            };
            runtime(|shutdown| async move {
                match metacache::tools::demo::run(options, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("demo failed: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Get(GetCommand::Device { id, lookup }) => {
            lookup_command(cli.log_format, &lookup, |client, json| async move {
                get_device(&client, &id, json).await
            })
        }
        Command::Get(GetCommand::Devices(args)) => {
            let options = ListOptions {
                limit: args.limit,
                offset: args.offset,
                pattern: args.pattern.clone(),
                order: if args.oldest_first {
                    Order::OldestFirst
                } else {
                    Order::NewestFirst
                },
            };
            lookup_command(cli.log_format, &args.lookup, |client, json| async move {
                get_devices(&client, &options, json).await
            })
        }
        Command::Get(GetCommand::Metrics { namespace, lookup }) => {
            lookup_command(cli.log_format, &lookup, |client, json| async move {
                get_metrics(&client, &namespace, json).await
            })
        }
        Command::CheckMetric(args) => {
            lookup_command(cli.log_format, &args.lookup, |client, json| async move {
                check_metric(&client, &args.namespace, &args.name, json).await
            })
        }
        Command::Info(lookup) => {
            lookup_command(cli.log_format, &lookup, |client, json| async move {
                info(&client, json).await
            })
        }
        Command::Produce(args) => produce(cli.log_format, &args),
    }
}

/// Loads the settings, connects, runs `body` and turns its outcome into an exit code:
/// `Ok(true)` 0, `Ok(false)` 1 (the answer is no), a client error 3.
fn lookup_command<F, Fut>(log_format: Option<LogFormat>, args: &LookupArgs, body: F) -> ExitCode
where
    F: FnOnce(CacheClient, bool) -> Fut,
    Fut: std::future::Future<Output = Result<bool, ClientError>>,
{
    let settings = match load(args.config.as_deref(), None, args.redis_url.as_deref()) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    init_logging(log_format, &settings.log.format, "warn");
    let json = args.json;
    block_on(async move {
        let client = match CacheClient::from_settings(&settings.redis).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {} ({})", e, settings.redis.redacted_url());
                return ExitCode::from(exit::UNAVAILABLE);
            }
        };
        match body(client, json).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(exit::NO),
            Err(ClientError::InvalidArgument(why)) => {
                eprintln!("usage: {why}");
                ExitCode::from(exit::CONFIG)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(exit::UNAVAILABLE)
            }
        }
    })
}

/// A current-thread runtime without signal handlers: Ctrl-C ends a look-up at once.
fn block_on<Fut: std::future::Future<Output = ExitCode>>(future: Fut) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn get_device(client: &CacheClient, id: &str, json: bool) -> Result<bool, ClientError> {
    let device = client.get_device(id).await?;
    match (&device, json) {
        (Some(device), true) => println!("{}", device.to_normalized_json()),
        (Some(device), false) => print!("{}", device_text(device)),
        (None, true) => println!("null"),
        (None, false) => {}
    }
    if device.is_none() {
        eprintln!("device {id:?} is not in the cache");
    }
    Ok(device.is_some())
}

/// A device as aligned `field  value` lines; unknown fields as JSON unless plain strings.
fn device_text(device: &DeviceMetadata) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("device_id".into(), device.device_id.clone()),
        ("datatype_id".into(), device.datatype_id.clone()),
        ("datatype_name".into(), device.datatype_name.clone()),
        (
            "datatype_unit".into(),
            device
                .datatype_unit
                .clone()
                .unwrap_or_else(|| "(none)".into()),
        ),
        ("persist".into(), device.persist.to_string()),
        ("last_updated".into(), device.last_updated_rfc3339()),
    ];
    for (name, value) in &device.additional_properties {
        let shown = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        rows.push((name.clone(), shown));
    }
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

fn entry_json(entry: &DeviceEntry) -> serde_json::Value {
    json!({
        "device_id": entry.id,
        "last_updated": entry.last_updated(),
        "last_updated_ms": entry.last_updated_ms,
    })
}

async fn get_devices(
    client: &CacheClient,
    options: &ListOptions,
    json: bool,
) -> Result<bool, ClientError> {
    let page = client.list_devices(options).await?;
    if json {
        let entries: Vec<_> = page.iter().map(entry_json).collect();
        println!("{}", serde_json::Value::Array(entries));
    } else {
        let width = page.iter().map(|e| e.id.chars().count()).max().unwrap_or(0);
        for entry in &page {
            println!("{:width$}  {}", entry.id, entry.last_updated());
        }
        if page.is_empty() {
            eprintln!("no devices on this page");
        }
    }
    Ok(true)
}

async fn get_metrics(
    client: &CacheClient,
    namespace: &str,
    json: bool,
) -> Result<bool, ClientError> {
    let names = client.metric_names(namespace).await?;
    // Empty and unknown differ: `replace []` leaves a listed namespace without names, a
    // namespace never written (or deleted, or a typo) is not listed at all.
    let known = !names.is_empty() || client.has_namespace(namespace).await?;
    if json {
        println!("{}", json!(names));
    } else {
        for name in &names {
            println!("{name}");
        }
    }
    let shown = if namespace.is_empty() {
        metacache::model::DEFAULT_NAMESPACE
    } else {
        namespace
    };
    if !known {
        eprintln!("unknown namespace {shown:?}: not in metric_namespaces");
    } else if names.is_empty() {
        eprintln!("namespace {shown:?} is known and has no metric names");
    }
    Ok(known)
}

async fn check_metric(
    client: &CacheClient,
    namespace: &str,
    name: &str,
    json: bool,
) -> Result<bool, ClientError> {
    let valid = client.is_valid_metric_name(namespace, name).await?;
    let shown_namespace = if namespace.is_empty() {
        metacache::model::DEFAULT_NAMESPACE
    } else {
        namespace
    };
    if json {
        println!(
            "{}",
            json!({"namespace": shown_namespace, "name": name, "valid": valid})
        );
    } else if valid {
        println!("valid: {name:?} is a metric name in namespace {shown_namespace:?}");
    } else {
        println!("not valid: {name:?} is not a metric name in namespace {shown_namespace:?}");
    }
    Ok(valid)
}

async fn info(client: &CacheClient, json: bool) -> Result<bool, ClientError> {
    let redis = client.redacted_url();
    let health = client.health().await;
    let cache = client.cache_info().await;
    if json {
        let mut out = json!({ "redis": redis, "health": health_json(&health) });
        if let Ok(cache) = &cache {
            let entry = |e: &Option<DeviceEntry>| e.as_ref().map(entry_json);
            out["total_devices"] = json!(cache.total_devices);
            out["oldest_entry"] = json!(entry(&cache.oldest_entry));
            out["newest_entry"] = json!(entry(&cache.newest_entry));
            out["metric_namespaces"] = json!(cache.metric_namespaces);
            out["memory_usage_bytes"] = json!(cache.memory_usage_bytes);
        }
        println!("{out}");
    } else {
        println!("redis              {redis}");
        println!("health             {}: {}", health.status, health.message);
        if let Ok(cache) = &cache {
            print!("{}", cache_text(cache));
        }
    }
    cache.map(|_| true)
}

fn health_json(health: &HealthStatus) -> serde_json::Value {
    let timestamp = time::OffsetDateTime::from(health.timestamp)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({
        "status": health.status.as_str(),
        "message": health.message,
        "timestamp": timestamp,
        "latency_ms": health.latency.map(|l| l.as_secs_f64() * 1000.0),
        "maxmemory_policy": health.maxmemory_policy,
    })
}

fn cache_text(cache: &CacheInfo) -> String {
    let entry = |e: &Option<DeviceEntry>| match e {
        Some(e) => format!("{}  {}", e.id, e.last_updated()),
        None => "-".into(),
    };
    let memory = match cache.memory_usage_bytes {
        Some(bytes) => format!(
            "{:.1} MiB ({bytes} bytes, the whole Redis server)",
            bytes as f64 / (1024.0 * 1024.0)
        ),
        None => "unknown (INFO not allowed)".into(),
    };
    format!(
        "devices            {}\n  oldest           {}\n  newest           {}\n\
         metric namespaces  {}\nmemory used        {memory}\n",
        cache.total_devices,
        entry(&cache.oldest_entry),
        entry(&cache.newest_entry),
        cache.metric_namespaces,
    )
}

fn produce(log_format: Option<LogFormat>, args: &ProduceArgs) -> ExitCode {
    let settings = match load(args.config.as_deref(), args.brokers.as_deref(), None) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    init_logging(log_format, &settings.log.format, "warn");
    let (input, source) = match args.file.as_deref() {
        None => (read_stdin(), "stdin".to_owned()),
        Some(path) if path.as_os_str() == "-" => (read_stdin(), "stdin".to_owned()),
        Some(path) => (std::fs::read(path), path.display().to_string()),
    };
    let input = match input {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("cannot read {source}: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let kind = match args.topic {
        ProduceTopic::Devices => TopicKind::Device,
        ProduceTopic::Metrics => TopicKind::Metric,
    };
    let parsed = publish::parse_lines(kind, &input, &settings.limits);
    for error in &parsed.errors {
        eprintln!("{source}: {error}");
    }
    if !parsed.errors.is_empty() && !args.skip_invalid {
        eprintln!(
            "{} invalid line(s); nothing sent (--skip-invalid sends the {} valid one(s))",
            parsed.errors.len(),
            parsed.records.len()
        );
        return ExitCode::from(exit::NO);
    }
    let records: Vec<Outgoing> = parsed.records.into_iter().map(|(_, r)| r).collect();
    let skipped = parsed.errors.len();
    block_on(async move {
        let publisher = match Publisher::new(&settings) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(exit::UNAVAILABLE);
            }
        };
        let topic = publisher.topic(kind).to_owned();
        match publisher.send_all(&records).await {
            Ok(sent) => {
                print!("sent {sent} event(s) to {topic}");
                if skipped > 0 {
                    print!(", skipped {skipped} invalid line(s)");
                }
                println!();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(exit::UNAVAILABLE)
            }
        }
    })
}

fn read_stdin() -> std::io::Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    Ok(input)
}

/// `metacache resync`: exit 0 when the group was rewound, 1 when refused or failed, 2 for
/// configuration problems or a missing `--yes` without a terminal.
fn resync(args: ResyncArgs, log_format: Option<LogFormat>) -> ExitCode {
    use std::io::{IsTerminal, Write};
    let mut settings = match load(args.config.as_deref(), args.brokers.as_deref(), None) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if let Some(group) = args.group {
        if group.trim().is_empty() {
            eprintln!("--group must not be empty");
            return ExitCode::from(2);
        }
        settings.kafka.group_id = group;
    }
    let interactive = std::io::stdin().is_terminal();
    if !args.yes && !interactive {
        eprintln!("standard input is not a terminal: pass --yes to rewind without asking");
        return ExitCode::from(2);
    }
    init_logging(log_format, &settings.log.format, "warn");
    let confirm = |plan: &metacache::tools::resync::Plan| {
        if args.yes {
            return true;
        }
        print!(
            "Rewind group {:?} and replay {} records on the next start? [y/N] ",
            plan.group,
            plan.replays()
        );
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
    };
    match metacache::tools::resync::run(&settings.kafka, confirm, &mut std::io::stdout()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resync: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Settings from file, environment and the command-line overrides, checked together so
/// that one run reports every problem.
fn load(
    file: Option<&Path>,
    brokers: Option<&str>,
    redis_url: Option<&str>,
) -> Result<Settings, String> {
    let mut overrides = Vec::new();
    if let Some(brokers) = brokers {
        overrides.push(Override {
            field: "kafka.brokers",
            option: "--brokers",
            value: brokers.to_owned(),
        });
    }
    if let Some(url) = redis_url {
        overrides.push(Override {
            field: "redis.url",
            option: "--redis-url",
            value: url.to_owned(),
        });
    }
    let settings = Settings::load_with(file, &overrides).map_err(|e| e.to_string())?;
    metacache::pipeline::source::kafka::check_client_properties(&settings.kafka)?;
    Ok(settings)
}

/// `metacache run` (and, with `plain_devices`, the benchmark's hidden variant).
fn run_daemon(log_format: Option<LogFormat>, args: &ConfigArgs, plain_devices: bool) -> ExitCode {
    let settings = match args.load() {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    init_logging(log_format, &settings.log.format, &settings.log.filter);
    let variant = if plain_devices {
        metacache::daemon::Variant::BenchPlainDevices
    } else {
        metacache::daemon::Variant::Production
    };
    runtime(|shutdown| async move {
        let stats = Arc::new(Stats::default());
        match metacache::daemon::run_variant(settings, stats, shutdown, variant).await {
            Ok(()) => {
                tracing::info!("stopped cleanly");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}

fn runtime<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        if let Err(e) = install_signal_handlers(shutdown.clone()) {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        body(shutdown).await
    })
}

/// `--set section.name=value` for `metacache bench`.
fn parse_setting(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected section.name=value, got {arg:?}"))?;
    metacache::tools::bench::setting_env(name)?;
    Ok((name.to_owned(), value.to_owned()))
}

/// `RUST_LOG` wins over `log.filter`; `--log-format` wins over `log.format`.
fn init_logging(cli_format: Option<LogFormat>, config_format: &str, config_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cli_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => config_format == "json",
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
