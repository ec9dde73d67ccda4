//! `metacache reindex`: rebuilds the device index, after asking (or with `--yes`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use super::args::{LogFormat, ReindexArgs};
use super::{exit, init_logging, load, runtime};

/// Exit 0 when the index was rebuilt, 1 when not confirmed, 2 for configuration problems
/// or a missing `--yes` without a terminal, 3 when Redis failed.
pub fn reindex(args: ReindexArgs, log_format: Option<LogFormat>) -> ExitCode {
    let settings = match load(args.config.as_deref(), None, args.redis_url.as_deref()) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let shards = args.index_shards.unwrap_or(settings.devices.index_shards);
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("standard input is not a terminal: pass --yes to reindex without asking");
            return ExitCode::from(exit::CONFIG);
        }
        print!(
            "Rebuild the device index under prefix {:?} with {shards} shard(s)? Every writer must be stopped. [y/N] ",
            settings.redis.key_prefix
        );
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("not reindexed");
            return ExitCode::from(exit::NO);
        }
    }
    init_logging(log_format, &settings.log.format, "warn");
    runtime(|_shutdown| async move {
        match metacache::tools::reindex::run(&settings, shards, args.force).await {
            Ok(done) => {
                println!("{done}");
                if shards != settings.devices.index_shards {
                    println!(
                        "start the writers with devices.index_shards = {shards} (METACACHE__DEVICES__INDEX_SHARDS={shards})"
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("reindex: {e}");
                ExitCode::from(exit::UNAVAILABLE)
            }
        }
    })
}
