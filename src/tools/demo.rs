//! `metacache demo`: the whole job with nothing set up by hand. It starts librdkafka's mock
//! Kafka cluster in-process and a `redis-server` child, publishes the sample events in
//! `examples/demo-events.jsonl` (valid ones, a tombstone, an out-of-order update and a few
//! invalid ones), runs the real daemon against them, and shows what landed in Redis and in
//! the dead-letter topics, with the commands to look for yourself.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use redis::AsyncCommands;

use crate::config::Settings;
use crate::pipeline::dead_letter::headers;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::tools::embedded::{EmbeddedKafka, EmbeddedRedis};

pub use metacache_embedded::samples::{
    parse_samples, valid_sample_events, SampleEvent, SAMPLE_EVENTS,
};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Use this Redis instead of starting a `redis-server` child.
    pub redis_url: Option<String>,
    /// Exit after showing the results instead of running until Ctrl-C.
    pub once: bool,
    /// Events file; the shipped samples when `None`.
    pub events: Option<std::path::PathBuf>,
    /// Address of the health/stats/metrics server (port 0 picks a free one).
    pub http_listen: String,
    /// `devices.index_shards` of the demo's daemon.
    pub index_shards: u32,
}

pub async fn run(options: DemoOptions, shutdown: Shutdown) -> Result<(), String> {
    let text = match &options.events {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => SAMPLE_EVENTS.to_owned(),
    };
    let samples = parse_samples(&text)?;

    let mut settings = Settings::default();
    let kafka = EmbeddedKafka::start(
        1,
        &[
            (settings.kafka.device_topic.as_str(), 4),
            (settings.kafka.metric_topic.as_str(), 4),
            (settings.kafka.device_dlq().as_str(), 1),
            (settings.kafka.metric_dlq().as_str(), 1),
        ],
    )?;
    let (redis_child, redis_url) = match &options.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let r = EmbeddedRedis::start()?;
            let url = r.url();
            (Some(r), url)
        }
    };
    settings.kafka.brokers = kafka.bootstrap().to_owned();
    settings.kafka.group_id = "metacache-demo".into();
    settings
        .kafka
        .client
        .insert("fetch.wait.max.ms".into(), "10".into());
    settings.redis.url = redis_url;
    settings.shutdown.timeout_secs = 10;
    settings.http.listen = options.http_listen.clone();
    settings.devices.index_shards = options.index_shards;

    println!("metacache demo");
    println!(
        "  Kafka  {}  (librdkafka mock cluster, in this process)",
        kafka.bootstrap()
    );
    println!(
        "  Redis  {}  ({})",
        settings.redis.redacted_url(),
        if redis_child.is_some() {
            "redis-server child on a free port"
        } else {
            "--redis-url"
        }
    );

    let stats = Arc::new(Stats::default());
    let daemon = tokio::spawn(crate::daemon::run(
        settings.clone(),
        Arc::clone(&stats),
        shutdown.clone(),
    ));

    let http = wait_http_addr(&stats, &daemon).await?;
    println!("  HTTP   http://{http}/healthz  /readyz  /stats  /metrics");

    let started = Instant::now();
    publish(&settings, &samples).await?;
    println!(
        "\nPublished {} sample events ({} device, {} metric-catalog) from examples/demo-events.jsonl",
        samples.len(),
        samples.iter().filter(|s| s.topic == "devices").count(),
        samples.iter().filter(|s| s.topic == "metrics").count(),
    );

    let expected = samples.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished(&stats) < expected {
        if Instant::now() >= deadline || daemon.is_finished() {
            return Err(format!(
                "only {} of {expected} events were processed; is Redis reachable at {}?",
                finished(&stats),
                settings.redis.redacted_url()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = stats.snapshot();
    println!(
        "Processed in {} ms (most of it the first consumer-group join):",
        started.elapsed().as_millis()
    );
    for (name, t) in [("devices", &snap.devices), ("metrics", &snap.metrics)] {
        println!(
            "  {name:8} consumed {:3}  written {:3}  skipped as stale {:3}  dead-lettered {:3}",
            t.consumed, t.written, t.stale, t.dead_lettered
        );
    }

    show_redis(&settings)
        .await
        .map_err(|e| format!("reading Redis: {e}"))?;
    show_dead_letters(
        &settings,
        snap.devices.dead_lettered + snap.metrics.dead_lettered,
    )?;

    let port = url::Url::parse(&settings.redis.url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(6379);
    println!("\nLook for yourself:");
    println!("  redis-cli -p {port} GET device:dev-42");
    println!("  redis-cli -p {port} ZRANGE devices 0 -1 WITHSCORES");
    println!("  redis-cli -p {port} SMEMBERS billing#metric_names");
    println!("  redis-cli -p {port} SISMEMBER billing#metric_names disk");
    println!(
        "  kcat -b {} -C -t {} -e -f '%k %h\\n'",
        kafka.bootstrap(),
        settings.kafka.device_dlq()
    );
    println!("  curl -s http://{http}/readyz");
    println!("  curl -s http://{http}/stats");
    println!("  curl -s http://{http}/metrics");
    println!("Publish more:");
    println!(
        "  echo 'dev-50|{{\"device_id\":\"dev-50\",\"datatype_id\":\"dt-1\",\"datatype_name\":\"rpm\",\"persist\":true,\"last_updated\":\"2026-11-24T08:00:00Z\"}}' | kcat -b {} -P -t {} -K'|'",
        kafka.bootstrap(),
        settings.kafka.device_topic
    );

    if options.once {
        shutdown.cancel();
    } else {
        println!("\nRunning until Ctrl-C.");
    }
    let result = daemon
        .await
        .map_err(|e| format!("daemon task failed: {e}"))?
        .map_err(|e| e.to_string());
    drop(redis_child);
    drop(kafka);
    result
}

/// The side server binds before anything else; its address tells the user where to look.
async fn wait_http_addr(
    stats: &Stats,
    daemon: &tokio::task::JoinHandle<Result<(), crate::daemon::DaemonError>>,
) -> Result<std::net::SocketAddr, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = stats.http_addr.get() {
            return Ok(*addr);
        }
        if daemon.is_finished() || Instant::now() >= deadline {
            return Err("the HTTP side server did not start (is http.listen in use?)".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Records finished one way or another: written, skipped as stale, or dead-lettered.
fn finished(stats: &Stats) -> u64 {
    [&stats.devices, &stats.metrics]
        .iter()
        .map(|t| t.written.load(Relaxed) + t.stale.load(Relaxed) + t.dead_lettered.load(Relaxed))
        .sum()
}

async fn publish(settings: &Settings, samples: &[SampleEvent]) -> Result<(), String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("linger.ms", "1")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    for sample in samples {
        let topic = if sample.topic == "devices" {
            &settings.kafka.device_topic
        } else {
            &settings.kafka.metric_topic
        };
        let payload = sample.payload();
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
        if let Some(key) = &sample.key {
            record = record.key(key.as_str());
        }
        if let Some(p) = &payload {
            record = record.payload(p.as_slice());
        }
        producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map_err(|(e, _)| format!("publishing `{}`: {e}", sample.note))?;
    }
    Ok(())
}

async fn show_redis(settings: &Settings) -> redis::RedisResult<()> {
    let keys = settings.keys();
    let client = redis::Client::open(settings.redis.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut devices: Vec<(String, i64)> = Vec::new();
    for index in keys.index_keys() {
        let shard: Vec<(String, i64)> = conn.zrange_withscores(index, 0, -1).await?;
        devices.extend(shard);
    }
    devices.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    println!("\nDevices (ZRANGE devices 0 -1 WITHSCORES, oldest first):");
    for (id, score) in &devices {
        let json: Option<String> = conn.get(keys.device(id)).await?;
        println!(
            "  {id:8} score {score}  GET device:{id} -> {}",
            json.unwrap_or_else(|| "(nil)".into())
        );
    }
    let mut namespaces: Vec<String> = conn.smembers(keys.metric_namespaces()).await?;
    namespaces.sort();
    println!("Metric namespaces (SMEMBERS metric_namespaces) and their names:");
    for ns in &namespaces {
        let mut names: Vec<String> = conn.smembers(keys.metric_names(ns)).await?;
        names.sort();
        println!(
            "  {ns:8} SMEMBERS {ns}#metric_names -> {}",
            names.join(", ")
        );
    }
    Ok(())
}

fn show_dead_letters(settings: &Settings, expected: u64) -> Result<(), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", "metacache-demo-dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| format!("dead-letter reader: {e}"))?;
    consumer
        .subscribe(&[&settings.kafka.device_dlq(), &settings.kafka.metric_dlq()])
        .map_err(|e| format!("dead-letter reader: {e}"))?;
    println!(
        "Dead letters ({} and {}), reason in header {}:",
        settings.kafka.device_dlq(),
        settings.kafka.metric_dlq(),
        headers::ERROR
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen < expected && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        seen += 1;
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        println!(
            "  from {}[{}]@{} key {:8} {}",
            header(headers::SOURCE_TOPIC),
            header(headers::SOURCE_PARTITION),
            header(headers::SOURCE_OFFSET),
            m.key().map(String::from_utf8_lossy).unwrap_or_default(),
            header(headers::ERROR)
        );
    }
    Ok(())
}
