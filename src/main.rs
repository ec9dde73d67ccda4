//! The `metacache` command line: `run` (the daemon), `check-config`, `demo`, `resync`.

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

/// `metacache resync`: exit 0 when the group was rewound, 1 when refused or failed, 2 for
/// configuration problems or a missing `--yes` without a terminal.
fn resync(args: ResyncArgs, log_format: Option<LogFormat>) -> ExitCode {
    use std::io::{IsTerminal, Write};
    let config = ConfigArgs {
        config: args.config,
        brokers: args.brokers,
        redis_url: None,
    };
    let mut settings = match load(&config) {
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
    let confirm = |plan: &metacache::resync::Plan| {
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
    match metacache::resync::run(&settings.kafka, confirm, &mut std::io::stdout()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resync: {e}");
            ExitCode::FAILURE
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
