//! The tools' commands: `bench`, `demo`, and the hidden `mock-kafka` the benchmark runs
//! as a child.

use std::process::ExitCode;

use metacache::tools::demo::DemoOptions;

use super::args::{BenchArgs, DemoArgs, LogFormat, MockKafkaArgs};
use super::{init_logging, runtime};

/// `metacache bench`.
pub fn bench(log_format: Option<LogFormat>, args: BenchArgs) -> ExitCode {
    init_logging(log_format, "text", "warn");
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
            replica: args.replica,
            api_load: args.api_load,
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
            replica: args.replica,
            api_load: args.api_load,
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

/// The hidden `mock-kafka`: serves librdkafka's mock cluster until stdin closes.
pub fn mock_kafka(args: &MockKafkaArgs) -> ExitCode {
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

/// `metacache demo`.
pub fn demo(log_format: Option<LogFormat>, args: DemoArgs) -> ExitCode {
    init_logging(log_format, "text", "warn");
    let options = DemoOptions {
        redis_url: args.redis_url,
        once: args.once,
        events: args.events,
        http_listen: args.http_listen,
        index_shards: args.index_shards,
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
