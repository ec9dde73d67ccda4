//! The `metacache` command line: `run` (the daemon), `check-config`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use metacache::config::Settings;
use metacache::demo::DemoOptions;
use metacache::shutdown::{install_signal_handlers, Shutdown};
use metacache::stats::Stats;

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
    /// Serve librdkafka's mock Kafka cluster until stdin closes (used by `bench`, which
    /// keeps the broker out of the daemon's CPU figures).
    #[command(hide = true)]
    MockKafka(MockKafkaArgs),
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
    #[arg(long, value_enum, default_value = "devices")]
    workload: metacache::bench::workload::Workload,
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
        Command::CheckConfig(args) => match load(&args) {
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
        Command::Run(args) => {
            let settings = match load(&args) {
                Ok(s) => s,
                Err(message) => {
                    eprintln!("{message}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cli.log_format, &settings.log.format, &settings.log.filter);
            runtime(|shutdown| async move {
                let stats = Arc::new(Stats::default());
                match metacache::daemon::run(settings, stats, shutdown).await {
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
        Command::Bench(args) => {
            init_logging(cli.log_format, "text", "warn");
            let options = if args.smoke {
                metacache::bench::BenchOptions {
                    json: args.json,
                    redis_url: args.redis_url,
                    ..metacache::bench::BenchOptions::smoke()
                }
            } else {
                metacache::bench::BenchOptions {
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
                    json: args.json,
                    redis_url: args.redis_url,
                }
            };
            match metacache::bench::run(options) {
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
            match metacache::embedded::EmbeddedKafka::start(1, &topics) {
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
        Command::Demo(args) => {
            init_logging(cli.log_format, "text", "warn");
            let options = DemoOptions {
                redis_url: args.redis_url,
                once: args.once,
                events: args.events,
                http_listen: args.http_listen,
            };
            runtime(|shutdown| async move {
                match metacache::demo::run(options, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("demo failed: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// Settings from file and environment, then the command-line overrides, validated again.
fn load(args: &ConfigArgs) -> Result<Settings, String> {
    let mut settings = Settings::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(brokers) = &args.brokers {
        settings.kafka.brokers = brokers.clone();
    }
    if let Some(url) = &args.redis_url {
        settings.redis.url = url.clone();
    }
    settings.validate().map_err(|e| e.to_string())?;
    metacache::source::kafka::check_client_properties(&settings.kafka)?;
    Ok(settings)
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
