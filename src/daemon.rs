//! The run loop as one chain of stages:
//! Kafka source (own thread) → writer (batches, pipelines) → Redis, with rejected events
//! going to the dead-letter stage, and acknowledgements flowing back to the source, which
//! commits the offsets. Everything stops through one [`Shutdown`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, oneshot};

use crate::config::{RedisMode, Settings};
use crate::pipeline::dead_letter::{DeadLetterStage, Topics};
use crate::pipeline::ownership::Ownership;
use crate::pipeline::record::chunk_records;
use crate::pipeline::sink::redis::connect::Target;
use crate::pipeline::sink::redis::plan::{Planner, Ttls};
use crate::pipeline::sink::redis::replies::Tail;
use crate::pipeline::sink::redis::retry::RetryPolicy;
use crate::pipeline::sink::redis::versions::KnownVersions;
use crate::pipeline::sink::redis::writer::{Connector, Moved, Writer, WriterConfig, WriterLinks};
use crate::pipeline::source::kafka::{
    client_config, consumer_config, KafkaSource, ProducerLogContext, SourceReport,
};
use crate::shutdown::Shutdown;
use crate::side::monitor::Observed;
use crate::stats::Stats;

/// Why the daemon could not run, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("kafka: {}", describe_kafka_error(.0))]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http.listen {listen}: {error}")]
    Http {
        listen: String,
        error: std::io::Error,
    },
    #[error("the kafka consumer thread failed: {0}")]
    SourceThread(String),
    #[error("{0} records were not acknowledged before the shutdown timeout; they were not committed and will be replayed")]
    Unacknowledged(usize),
    #[error("layout: {0}")]
    Layout(String),
}

/// Which daemon runs: the real one, or the benchmark's measuring variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Production,
    /// Devices as plain `SET`s, without the stale guard and the index, so `metacache bench`
    /// can price those two. Reachable only through the hidden `bench-plain-daemon`
    /// command, never from `metacache run` or its environment.
    BenchPlainDevices,
}

/// Runs the pipeline until `shutdown` trips, then drains and commits.
///
/// Returns `Ok` when every record handed to the pipeline was acknowledged and committed.
pub async fn run(
    settings: Settings,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    run_variant(settings, stats, shutdown, Variant::Production).await
}

/// [`run`], as `variant`.
pub async fn run_variant(
    settings: Settings,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    variant: Variant,
) -> Result<(), DaemonError> {
    let retry = RetryPolicy::new(
        Duration::from_millis(settings.writer.retry_initial_ms),
        Duration::from_millis(settings.writer.retry_max_ms),
    );
    let shutdown_timeout = Duration::from_secs(settings.shutdown.timeout_secs);

    // Reject bad librdkafka properties now, not after Redis first answers.
    consumer_config(&settings.kafka).create_native_config()?;
    client_config(&settings.kafka).create_native_config()?;

    // The side server and the monitor come first, so probes answer while Redis is awaited.
    let observed = Arc::new(Observed::default());
    crate::side::http::start(
        &settings,
        Arc::clone(&stats),
        Arc::clone(&observed),
        shutdown.clone(),
    )
    .await
    .map_err(|e| DaemonError::Http {
        listen: e.listen,
        error: e.error,
    })?;
    tokio::spawn(crate::side::monitor::run(
        settings.clone(),
        Arc::clone(&stats),
        observed,
        shutdown.clone(),
    ));

    let target = Target::writer(settings.redis.clone());
    let Some(conn) = connect_redis(&settings, &target, retry, &shutdown, &stats).await else {
        return Ok(());
    };
    stats.set_redis_primary(target.primary());
    let mut conn = conn;
    if !claim_layout(&mut conn, &settings, retry, &shutdown).await? {
        return Ok(());
    }

    // About max_batch × max_in_flight records waiting, in chunks of at most a batch.
    let chunk = chunk_records(settings.writer.max_batch);
    let capacity = settings.writer.max_batch * settings.writer.max_in_flight.max(1);
    let (records_tx, records_rx) = flume::bounded((capacity / chunk).max(2));
    let (acks_tx, acks_rx) = flume::unbounded();
    let (dead_tx, dead_rx) = mpsc::channel(1024);

    let producer = if settings.kafka.dead_letter {
        let producer: FutureProducer<ProducerLogContext> = client_config(&settings.kafka)
            .set(
                "message.max.bytes",
                settings
                    .kafka
                    .dead_letter_max_bytes(&settings.limits)
                    .to_string(),
            )
            .set("acks", "all")
            .set("linger.ms", "5")
            .create_with_context(ProducerLogContext::default())?;
        Some(producer)
    } else {
        None
    };
    let topics = Topics {
        device_source: settings.kafka.device_topic.clone(),
        metric_source: settings.kafka.metric_topic.clone(),
        device_dead_letter: settings.kafka.device_dlq(),
        metric_dead_letter: settings.kafka.metric_dlq(),
    };
    let rotating_producer = producer.clone();
    let dead_letters = DeadLetterStage::new(
        producer,
        topics,
        Arc::clone(&stats),
        acks_tx.clone(),
        retry,
        settings.kafka.dead_letter_max_bytes(&settings.limits),
    );
    let dead_letter_task = tokio::spawn(dead_letters.run(dead_rx));

    let plain_devices = variant == Variant::BenchPlainDevices;
    if plain_devices {
        tracing::warn!("benchmark variant: no stale guard, no devices index");
    }
    let planner = Planner::new(
        settings.keys(),
        Ttls {
            device_secs: settings.devices.ttl_secs,
            metric_secs: settings.metrics.ttl_secs,
        },
    )
    .with_plain_devices(plain_devices);
    // The janitor has a connection of its own: the writer must be able to drop its
    // connection (a fence) knowing nothing else keeps it open.
    if settings.devices.ttl_secs > 0 || settings.metrics.ttl_secs > 0 {
        let janitor_target = Target::new(settings.redis.clone());
        if let Some(janitor_conn) =
            connect_redis(&settings, &janitor_target, retry, &shutdown, &stats).await
        {
            let reconnect: Connector<metacache_client::connect::RedisConn> = Arc::new(move || {
                let target = Arc::clone(&janitor_target);
                Box::pin(async move { target.connect().await })
            });
            tokio::spawn(crate::side::janitor::run(
                janitor_conn,
                reconnect,
                settings.clone(),
                shutdown.clone(),
            ));
        }
    }
    let ownership = Arc::new(Ownership::new());
    let connector: Connector<metacache_client::connect::RedisConn> = {
        let (target, stats) = (Arc::clone(&target), Arc::clone(&stats));
        Arc::new(move || {
            let (target, stats) = (Arc::clone(&target), Arc::clone(&stats));
            Box::pin(async move {
                let conn = target.connect().await;
                stats.set_redis_primary(target.primary());
                conn
            })
        })
    };
    let moved: Option<Moved> = (settings.redis.mode() == RedisMode::Sentinel).then(|| {
        let target = Arc::clone(&target);
        let moved: Moved = Arc::new(move || {
            let target = Arc::clone(&target);
            Box::pin(async move { target.moved().await })
        });
        moved
    });
    let writer = Writer::new(
        conn,
        connector,
        planner,
        WriterConfig {
            max_batch: settings.writer.max_batch,
            linger: Duration::from_millis(settings.writer.linger_ms),
            max_in_flight: settings.writer.max_in_flight,
            retry,
            tail: Tail {
                wait_replicas: settings.redis.wait_replicas,
                wait_timeout_ms: settings.redis.wait_timeout_ms,
            },
        },
        KnownVersions::new(settings.devices.guard_cache, settings.devices.ttl_secs),
        settings.limits.clone(),
        WriterLinks {
            ownership: Arc::clone(&ownership),
            stats: Arc::clone(&stats),
            acks: acks_tx,
            dead_letters: dead_tx,
            moved,
        },
    );
    let writer_task = tokio::spawn(writer.run(records_rx));

    let source = KafkaSource::new(
        &settings.kafka,
        Arc::clone(&stats),
        shutdown.clone(),
        records_tx,
        acks_rx,
        ownership,
        chunk,
        shutdown_timeout,
    )?
    .with_producer(rotating_producer);
    tracing::info!(
        brokers = %settings.kafka.brokers,
        group = %settings.kafka.group_id,
        device_topic = %settings.kafka.device_topic,
        metric_topic = %settings.kafka.metric_topic,
        "consuming"
    );
    let (done_tx, done_rx) = oneshot::channel::<SourceReport>();
    std::thread::Builder::new()
        .name("kafka-source".into())
        .spawn(move || {
            let _ = done_tx.send(source.run());
        })
        .map_err(|e| DaemonError::SourceThread(e.to_string()))?;

    let report = done_rx
        .await
        .map_err(|_| DaemonError::SourceThread("it panicked".into()))?;
    // The source closed the writer's channel; the writer and the dead-letter stage finish
    // on their own once their queues are empty. If Redis is still down they never would.
    if report.unacknowledged > 0 {
        writer_task.abort();
        dead_letter_task.abort();
        return Err(DaemonError::Unacknowledged(report.unacknowledged));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = writer_task.await;
        let _ = dead_letter_task.await;
    })
    .await;
    Ok(())
}

/// Writes the layout descriptor, or checks the stored one against the settings (see
/// [`crate::pipeline::sink::redis::layout`]); retries while Redis fails, and stops the
/// daemon when the stored layout is another. `false` when shutdown came first.
async fn claim_layout(
    conn: &mut metacache_client::connect::RedisConn,
    settings: &Settings,
    retry: RetryPolicy,
    shutdown: &Shutdown,
) -> Result<bool, DaemonError> {
    use crate::pipeline::sink::redis::layout::{self, Claimed};
    let keys = settings.keys();
    let mut delays = retry.delays();
    loop {
        match layout::claim(conn, &keys).await {
            Ok(Ok(claimed)) => {
                tracing::info!(
                    key = keys.layout(),
                    index_shards = keys.index_shards(),
                    written = claimed == Claimed::Written,
                    "layout descriptor {}",
                    if claimed == Claimed::Written {
                        "written"
                    } else {
                        "matches the settings"
                    }
                );
                return Ok(true);
            }
            Ok(Err(refusal)) => return Err(DaemonError::Layout(refusal)),
            // Refused by ACL: NOPERM, or, for a command inside the script, an error
            // reply of Redis's own wording.
            Err(e) if refused_by_acl(&e) => {
                let why = format!(
                    "{}: the Redis user may not read or write it ({e}); `metacache check-config --print-acl` prints the ACL the daemon needs",
                    keys.layout()
                );
                // With one index key a reader that finds no descriptor reads the right
                // layout anyway (an ACL from before the descriptor existed keeps working);
                // with shards it would not, so the daemon must not write them unannounced.
                if keys.index_shards() > 1 {
                    return Err(DaemonError::Layout(why));
                }
                tracing::warn!("{why}; continuing, as readers without a descriptor read the one index key this daemon writes");
                return Ok(true);
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read the layout descriptor; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// An ACL refusal: `NOPERM`, or, for a command or key inside a script, an error reply in
/// the words of the server's version (6.2/7.0: "can't run this command", "can't access at
/// least one of the keys"; 7.2 and later: "ACL failure in script").
fn refused_by_acl(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        || text.to_ascii_uppercase().contains("NOPERM")
        || [
            "can't run this command",
            "can't access at least one of the keys",
            "ACL failure in script",
        ]
        .iter()
        .any(|words| text.contains(words))
}

/// Connects to Redis, retrying until it answers or shutdown is requested: a daemon that
/// exits because Redis is briefly unavailable at start would crash-loop under Kubernetes.
async fn connect_redis(
    settings: &Settings,
    target: &Target,
    retry: RetryPolicy,
    shutdown: &Shutdown,
    stats: &Stats,
) -> Option<metacache_client::connect::RedisConn> {
    let mut delays = retry.delays();
    let url = settings.redis.describe_target();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            result = target.connect() => match result {
                Ok(conn) => {
                    stats.redis_up.store(true, Relaxed);
                    match target.primary() {
                        Some(primary) => tracing::info!(redis = %url, %primary, "connected to the Redis primary"),
                        None => tracing::info!(redis = %url, "connected to Redis"),
                    }
                    return Some(conn);
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(retry.max);
                    // /readyz names it: a refused name or script is no network trouble.
                    stats.retries.fetch_add(1, Relaxed);
                    stats.redis_error(&crate::pipeline::sink::redis::connect_trouble(&e));
                    tracing::warn!(redis = %url, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "cannot connect to Redis; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// librdkafka's configuration errors carry the offending value, which may be a password
/// under a misspelt key: name the key, never the value.
fn describe_kafka_error(e: &rdkafka::error::KafkaError) -> String {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, _) => {
            format!("librdkafka property `{key}`: {description}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_refusals_are_recognised_in_every_servers_words() {
        let reply = |text: &str| {
            redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "script",
                text.to_owned(),
            ))
        };
        for text in [
            "The user executing the script can't run this command or subcommand script: 3be9, on @user_script:4.",
            "ACL failure in script: User metacache has no permissions to run the 'hset' command",
            "The user executing the script can't access at least one of the keys mentioned in the command",
        ] {
            assert!(refused_by_acl(&reply(text)), "{text}");
        }
        assert!(!refused_by_acl(&reply("ERR Error running script")));
    }
}
