//! `metacache resync`: rewinds the consumer group, after asking (or with `--yes`).

use std::process::ExitCode;

use super::args::{LogFormat, ResyncArgs};
use super::{init_logging, load};

/// `metacache resync`: exit 0 when the group was rewound, 1 when refused or failed, 2 for
/// configuration problems or a missing `--yes` without a terminal.
pub fn resync(args: ResyncArgs, log_format: Option<LogFormat>) -> ExitCode {
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
    match metacache::tools::resync::run(
        &settings.kafka,
        args.assume_idle,
        confirm,
        &mut std::io::stdout(),
    ) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resync: {e}");
            ExitCode::FAILURE
        }
    }
}
