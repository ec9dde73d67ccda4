//! Real servers for the tests: a `redis-server` child on a free port and librdkafka's mock
//! Kafka cluster, plus the few helpers every test file needs (produce, read a topic, read
//! committed offsets, wait for a condition).
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod feed;
pub mod model;
pub mod process;
pub mod proxy;
pub mod sentinel;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metacache::config::Settings;
use metacache::daemon::{self, DaemonError};
use metacache::shutdown::Shutdown;
use metacache::stats::Stats;
use metacache::tools::embedded::{EmbeddedKafka, EmbeddedRedis};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub const DEVICES: &str = "device-metadata";
pub const METRICS: &str = "metric-catalog";

/// The major version of the `redis-server` the tests run (`METACACHE_REDIS_SERVER`, or the
/// one on `PATH`): some options and replies differ between Redis 6.2 and 7.
pub fn redis_major() -> u32 {
    let out = std::process::Command::new(metacache_embedded::server_binary())
        .arg("--version")
        .output()
        .expect("redis-server --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the version from {text:?}"))
}

/// A device event as JSON text.
pub fn device_json(id: &str, name: &str, last_updated: &str) -> String {
    serde_json::json!({
        "device_id": id, "datatype_id": "dt-1", "datatype_name": name,
        "datatype_unit": "C", "persist": true, "last_updated": last_updated
    })
    .to_string()
}

pub struct Harness {
    pub kafka: EmbeddedKafka,
    pub redis: EmbeddedRedis,
    pub partitions: i32,
}

static GROUPS: AtomicU64 = AtomicU64::new(0);

impl Harness {
    /// Both topics with `partitions` partitions, dead-letter topics with one.
    pub fn start(partitions: i32) -> Harness {
        Self::start_with(partitions, &[])
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments.
    pub fn start_with(partitions: i32, redis_args: &[&str]) -> Harness {
        init_logging();
        let kafka = EmbeddedKafka::start(
            1,
            &[
                (DEVICES, partitions),
                (METRICS, partitions),
                ("device-metadata.dlq", 1),
                ("metric-catalog.dlq", 1),
            ],
        )
        .expect("mock kafka cluster starts");
        let redis = EmbeddedRedis::start_with(redis_args).unwrap_or_else(|e| panic!("{e}"));
        Harness {
            kafka,
            redis,
            partitions,
        }
    }

    /// Settings pointing at these servers, tuned for quick tests (the mock cluster holds an
    /// empty fetch for the whole `fetch.wait.max.ms`).
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.kafka.brokers = self.kafka.bootstrap().to_owned();
        s.kafka.group_id = format!(
            "metacache-test-{}-{}",
            std::process::id(),
            GROUPS.fetch_add(1, Ordering::Relaxed)
        );
        s.kafka.commit_interval_ms = 100;
        for (k, v) in [
            ("fetch.wait.max.ms", "10"),
            // A restarted daemon rejoins quickly (the mock waits session timeout - 1 s).
            ("session.timeout.ms", "3000"),
            ("heartbeat.interval.ms", "500"),
        ] {
            s.kafka.client.insert(k.into(), v.into());
        }
        s.redis.url = self.redis.url();
        s.writer.retry_initial_ms = 20;
        s.writer.retry_max_ms = 200;
        s.shutdown.timeout_secs = 10;
        s.http.listen = "127.0.0.1:0".into();
        s
    }

    pub fn start_daemon(&self, settings: Settings) -> Running {
        let stats = Arc::new(Stats::default());
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(daemon::run(settings, Arc::clone(&stats), shutdown.clone()));
        Running {
            handle,
            stats,
            shutdown,
        }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.kafka.bootstrap())
            .set("linger.ms", "1")
            .create()
            .expect("producer")
    }

    /// Produces records in order and waits for each batch's delivery.
    pub async fn produce(&self, topic: &str, records: &[(Option<&str>, Option<&str>)]) {
        let producer = self.producer();
        let sends = records.iter().map(|(key, value)| {
            let mut r: FutureRecord<'_, str, str> = FutureRecord::to(topic);
            if let Some(k) = key {
                r = r.key(*k);
            }
            if let Some(v) = value {
                r = r.payload(*v);
            }
            producer.send(r, Timeout::After(Duration::from_secs(10)))
        });
        for result in futures::future::join_all(sends).await {
            result.expect("delivered to the mock cluster");
        }
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// The group's committed offsets for `topic`, by partition (-1 when none).
    pub fn committed(&self, group: &str, topic: &str) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.kafka.bootstrap())
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..self.partitions)
            .map(
                |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                },
            )
            .collect()
    }

    /// The high watermark (next offset) of every partition of `topic`.
    pub fn high_watermarks(&self, topic: &str) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.kafka.bootstrap())
            .create()
            .expect("consumer");
        (0..self.partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    /// The group's committed offsets of both topics, by (topic, partition).
    pub fn committed_map(
        &self,
        group: &str,
    ) -> std::collections::HashMap<(&'static str, i32), i64> {
        let mut map = std::collections::HashMap::new();
        for topic in [DEVICES, METRICS] {
            for (p, c) in self.committed(group, topic).into_iter().enumerate() {
                map.insert((topic, p as i32), c);
            }
        }
        map
    }

    /// Partitions of either topic whose committed offset is behind the end, as
    /// `topic[p] committed/end`; empty once the group has consumed everything.
    pub fn unconsumed(&self, group: &str) -> Vec<String> {
        let mut behind = Vec::new();
        for topic in [DEVICES, METRICS] {
            let committed = self.committed(group, topic);
            for (p, end) in self.high_watermarks(topic).into_iter().enumerate() {
                if committed[p] != end {
                    behind.push(format!("{topic}[{p}] {}/{end}", committed[p]));
                }
            }
        }
        behind
    }

    /// Waits until the group committed the end of every partition of both topics.
    pub async fn wait_all_committed(&self, group: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let behind = self.unconsumed(group);
            if behind.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("after {timeout:?}, partitions left unconsumed: {behind:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads `n` records of `topic` from the beginning (fewer if `timeout` passes).
    pub fn read_topic(&self, topic: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.kafka.bootstrap())
            .set(
                "group.id",
                format!("reader-{}", GROUPS.fetch_add(1, Ordering::Relaxed)),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
        }
        out
    }
}

pub struct Running {
    pub handle: tokio::task::JoinHandle<Result<(), DaemonError>>,
    pub stats: Arc<Stats>,
    pub shutdown: Shutdown,
}

impl Running {
    /// Records finished one way or another.
    pub fn finished(&self) -> u64 {
        let s = self.stats.snapshot();
        [s.devices, s.metrics]
            .iter()
            .map(|t| t.written + t.stale + t.dead_lettered)
            .sum()
    }

    pub async fn wait_finished(&self, n: u64, timeout: Duration) {
        wait_for(timeout, &format!("{n} records finished"), || async {
            self.finished() >= n
        })
        .await;
    }

    /// SIGTERM's path: trip the shutdown and wait for the daemon's verdict.
    pub async fn stop(self) -> Result<(), DaemonError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("daemon stops within 60 s")
            .expect("daemon task did not panic")
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of a header, as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Logs to the test's captured output; `RUST_LOG=metacache=debug` shows the pipeline.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A plain HTTP/1.1 GET against the daemon's side server: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers (`Name: value` lines).
pub async fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[&str],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut extra = String::new();
    for h in headers {
        extra.push_str(h);
        extra.push_str("\r\n");
    }
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    // Bodies may come chunked; undo that for the tests.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

impl Running {
    /// The side server's address, once bound.
    pub async fn http(&self) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self.stats.http_addr.get() {
                return *a;
            }
            assert!(Instant::now() < deadline, "http server did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `/readyz`: the status code and the JSON body.
pub async fn readyz(addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, "/readyz").await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Runs `metacache resync` against these servers: (exit code, stdout, stderr).
pub fn resync(h: &Harness, group: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(process::binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("METACACHE") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["resync", "--brokers", h.kafka.bootstrap(), "--group", group])
        .args(extra)
        .env("METACACHE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "3000")
        .env("METACACHE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS", "500")
        .stdin(std::process::Stdio::null());
    outcome(&mut cmd)
}

/// Runs `cmd` to its end: (exit code, stdout, stderr).
pub fn outcome(cmd: &mut std::process::Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("the command runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Publishes one device event (`last_updated` 2026-11-22T10:00:00Z) for each of the ids
/// `short-0` .. `short-{n-1}`; returns the ids.
pub async fn produce_devices(h: &Harness, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("short-{i}")).collect();
    let values: Vec<String> = ids
        .iter()
        .map(|id| device_json(id, "t", "2026-11-22T10:00:00Z"))
        .collect();
    let records: Vec<(Option<&str>, Option<&str>)> = ids
        .iter()
        .zip(&values)
        .map(|(id, v)| (Some(id.as_str()), Some(v.as_str())))
        .collect();
    h.produce(DEVICES, &records).await;
    ids
}

/// The `metacache` binary, from the repository root, in a clean environment: a
/// developer's `METACACHE*` variables do not leak in.
pub fn metacache() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_metacache"));
    for (key, _) in std::env::vars() {
        if key.starts_with("METACACHE") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}
