//! `metacache verify`: the drift report of Redis against the Kafka topics.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::args::{LogFormat, VerifyArgs};
use super::{exit, init_logging, load, runtime};

/// Exit 0 when the cache matches, 1 when it differs, 2 for configuration problems, 3 when
/// Kafka or Redis could not be read (nothing was verified).
pub fn verify(args: VerifyArgs, log_format: Option<LogFormat>) -> ExitCode {
    let settings = match load(
        args.config.as_deref(),
        args.brokers.as_deref(),
        args.redis_url.as_deref(),
    ) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let group = match args.group {
        Some(g) if g.trim().is_empty() => {
            eprintln!("--group must not be empty");
            return ExitCode::from(exit::CONFIG);
        }
        Some(g) => g,
        None => settings.kafka.group_id.clone(),
    };
    init_logging(log_format, &settings.log.format, "warn");
    runtime(|_shutdown| async move {
        let mut stderr = std::io::stderr();
        let progress: Option<&mut (dyn std::io::Write + Send)> =
            if !args.json && stderr.is_terminal() {
                Some(&mut stderr)
            } else {
                None
            };
        match metacache::tools::verify::run(&settings, &group, progress).await {
            Ok(report) => {
                if args.json {
                    match serde_json::to_string_pretty(&report) {
                        Ok(json) => println!("{json}"),
                        Err(e) => {
                            eprintln!("verify: {e}");
                            return ExitCode::from(exit::UNAVAILABLE);
                        }
                    }
                } else {
                    println!("{report}");
                }
                if report.matches() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(exit::NO)
                }
            }
            Err(e) => {
                eprintln!("verify: {e}; nothing was verified");
                ExitCode::from(exit::UNAVAILABLE)
            }
        }
    })
}
