//! The command line: [`args`] is its shape; one module per command group handles it.
//! What the handlers share lives here: loading settings with the command-line overrides,
//! logging, the async runtime, the exit codes.

pub mod args;
mod daemon;
mod lookup;
mod produce;
mod reindex;
mod resync;
mod tools;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use metacache::config::{Override, Settings};
use metacache::shutdown::{install_signal_handlers, Shutdown};

use args::{Cli, Command, LogFormat};

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

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => daemon::check_config(&args),
        Command::Run(args) => daemon::run_daemon(cli.log_format, &args, false),
        Command::BenchPlainDaemon(args) => daemon::run_daemon(cli.log_format, &args, true),
        Command::Bench(args) => tools::bench(cli.log_format, args),
        Command::MockKafka(args) => tools::mock_kafka(&args),
        Command::Demo(args) => tools::demo(cli.log_format, args),
        Command::Resync(args) => resync::resync(args, cli.log_format),
        Command::Verify(args) => verify::verify(args, cli.log_format),
        Command::Reindex(args) => reindex::reindex(args, cli.log_format),
        Command::Produce(args) => produce::produce(cli.log_format, &args),
        Command::Get(get) => lookup::get(cli.log_format, get),
        Command::CheckMetric(args) => lookup::check_metric_command(cli.log_format, args),
        Command::Info(args) => lookup::info_command(cli.log_format, &args),
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
