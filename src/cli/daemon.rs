//! `metacache run` and `check-config`: the daemon, and its settings checked without it.

use std::process::ExitCode;
use std::sync::Arc;

use metacache::stats::Stats;

use super::args::{CheckConfigArgs, ConfigArgs, LogFormat};
use super::{init_logging, runtime};

/// `metacache check-config`: the effective settings with secrets masked, or every problem.
pub fn check_config(args: &CheckConfigArgs) -> ExitCode {
    match args.config.load() {
        Ok(settings) if args.print_acl => {
            println!("# the daemon (metacache run with these settings):");
            println!("{}", metacache::acl::daemon_line(&settings));
            println!("# services that read the cache (clients, the CLI look-ups):");
            println!("{}", metacache::acl::reader_line(&settings));
            println!("# metacache verify (read-only; walks every key of the layout):");
            println!("{}", metacache::acl::verify_line(&settings));
            println!("# metacache reindex (rewrites the index; every writer stopped):");
            println!("{}", metacache::acl::reindex_line(&settings));
            ExitCode::SUCCESS
        }
        Ok(settings) => {
            print!("{}", settings.redacted().to_toml_string());
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// `metacache run` (and, with `plain_devices`, the benchmark's hidden variant).
pub fn run_daemon(
    log_format: Option<LogFormat>,
    args: &ConfigArgs,
    plain_devices: bool,
) -> ExitCode {
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
