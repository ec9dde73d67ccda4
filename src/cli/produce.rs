//! `metacache produce`: JSON Lines validated with the daemon's decoder, then produced with
//! the right key; nothing is sent while a line is invalid unless `--skip-invalid`.

use std::io::Read;
use std::process::ExitCode;

use metacache::model::TopicKind;
use metacache::tools::publish::{self, Outgoing, Publisher};

use super::args::{LogFormat, ProduceArgs, ProduceTopic};
use super::{block_on, exit, init_logging, load};

pub fn produce(log_format: Option<LogFormat>, args: &ProduceArgs) -> ExitCode {
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
