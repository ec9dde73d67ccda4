//! The daemon against real Kafka and Redis images, through testcontainers. Needs a Docker
//! engine: where there is none (CI here, most laptops without Docker) the test says so and
//! skips. The rest of the suite covers the same behaviour with redis-server and
//! librdkafka's mock cluster.

mod support;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redis::Commands;
use testcontainers::runners::AsyncRunner;
use testcontainers_modules::kafka::apache;
use testcontainers_modules::redis::{Redis, REDIS_PORT};

/// Why there is no usable Docker engine, if there is none.
fn no_docker() -> Option<String> {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if !host.is_empty() {
            return None;
        }
    }
    let socket = "/var/run/docker.sock";
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => None,
        Err(e) => Some(format!("{socket}: {e} (and DOCKER_HOST is unset)")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_a_real_redis_from_a_real_kafka() {
    if let Some(why) = no_docker() {
        eprintln!("SKIPPED events_land_in_a_real_redis_from_a_real_kafka: no Docker engine: {why}");
        return;
    }
    support::init_logging();
    let redis_node = Redis::default().start().await.expect("redis container");
    let kafka_node = apache::Kafka::default()
        .start()
        .await
        .expect("kafka container");
    let redis_url = format!(
        "redis://127.0.0.1:{}/0",
        redis_node.get_host_port_ipv4(REDIS_PORT).await.unwrap()
    );
    let brokers = format!(
        "127.0.0.1:{}",
        kafka_node
            .get_host_port_ipv4(apache::KAFKA_PORT)
            .await
            .unwrap()
    );

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let topics: Vec<NewTopic> = [
        "device-metadata",
        "metric-catalog",
        "device-metadata.dlq",
        "metric-catalog.dlq",
    ]
    .iter()
    .map(|t| NewTopic::new(t, 2, TopicReplication::Fixed(1)))
    .collect();
    admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("topics created");

    let mut settings = metacache::config::Settings::default();
    settings.kafka.brokers = brokers.clone();
    settings.kafka.group_id = "metacache-containers".into();
    settings.redis.url = redis_url.clone();
    let stats = std::sync::Arc::new(metacache::stats::Stats::default());
    let shutdown = metacache::shutdown::Shutdown::new();
    let daemon = tokio::spawn(metacache::daemon::run(
        settings,
        stats.clone(),
        shutdown.clone(),
    ));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let device = support::device_json("dev-42", "temperature", "2026-11-22T10:00:00Z");
    producer
        .send(
            FutureRecord::to("device-metadata")
                .key("dev-42")
                .payload(&device),
            Duration::from_secs(30),
        )
        .await
        .expect("produced");
    producer
        .send(
            FutureRecord::to("metric-catalog")
                .key("billing")
                .payload(r#"{"op":"replace","namespace":"billing","metric_names":["cpu"]}"#),
            Duration::from_secs(30),
        )
        .await
        .expect("produced");

    let mut r = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    support::wait_for(Duration::from_secs(60), "both events in Redis", || {
        let ok = r.exists::<_, bool>("device:dev-42").unwrap_or(false)
            && r.sismember::<_, _, bool>("billing#metric_names", "cpu")
                .unwrap_or(false);
        async move { ok }
    })
    .await;
    let score: Option<i64> = r.zscore("devices", "dev-42").unwrap();
    assert_eq!(score, Some(1_795_341_600_000));
    shutdown.cancel();
    daemon.await.unwrap().expect("clean stop");
}
