//! `metacache bench`: what Kafka can give, what Redis can take, what a naive consumer
//! does, and what metacache does — in one run, on the same broker and Redis, printed as a
//! table and written as JSON so runs can be compared.
//!
//! The broker (librdkafka's mock cluster) runs in a child process, and metacache runs as
//! the real `metacache run` binary in another, so the CPU and memory figures are the
//! daemon's own. Caveat of the mock: an empty fetch is held for the whole
//! `fetch.wait.max.ms`, so every consumer here sets it to 10 ms (a real broker answers as
//! soon as data arrives).

pub mod api_load;
pub mod cluster;
pub mod codec;
pub mod probes;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

use crate::model::{self, Limits, TopicKind};
use crate::tools::embedded::{free_port, EmbeddedRedis};
use workload::{generate, BenchRecord, Workload};

const DEVICE_TOPIC: &str = "bench-devices";
const METRIC_TOPIC: &str = "bench-metrics";
const STEADY_DEVICE_TOPIC: &str = "bench-steady-devices";
const STEADY_METRIC_TOPIC: &str = "bench-steady-metrics";
const LATENCY_DEVICE_TOPIC: &str = "bench-latency-devices";
const LATENCY_METRIC_TOPIC: &str = "bench-latency-metrics";

/// `fetch.wait.max.ms` of the daemons: the mock broker holds an empty fetch for all of it
/// (a real broker answers as soon as data arrives), so throughput runs use 10 ms and the
/// latency run, where an idle consumer is the point, 1 ms.
const FETCH_WAIT_MS: u32 = 10;
const LATENCY_FETCH_WAIT_MS: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    pub events: u64,
    pub devices: u64,
    pub partitions: i32,
    pub workload: Workload,
    pub max_batch: usize,
    pub linger_ms: u64,
    pub max_in_flight: usize,
    /// Events for the naive baseline (it is slow; a sample is enough).
    pub naive_events: u64,
    /// Publish rate and duration of the latency phase.
    pub latency_rate: u64,
    pub latency_secs: u64,
    /// Which stages run (all by default); a subset is for iterating on one figure.
    pub stages: Vec<Stage>,
    /// Extra daemon settings, `section.name=value` (as in the config file), to measure
    /// what a setting does.
    pub settings: Vec<(String, String)>,
    #[serde(skip)]
    pub json: Option<PathBuf>,
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// Start a replica of the bench's Redis (to price `redis.wait_replicas`).
    pub replica: bool,
    /// Turn the daemons' HTTP read API on and read it at this many requests per second
    /// during the drain and latency runs (0: on, unread), to price it.
    pub api_load: Option<u64>,
}

/// The measurements a run can make; the backlog is always produced first. (Plain comments
/// on the variants: doc comments would switch `bench --help` to clap's long layout.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    // Consume ceiling: an rdkafka consumer that discards.
    Ceiling,
    // Redis ceiling: pipelined plain SETs of the same keys and values.
    Redis,
    // Naive baseline: decode, one awaited SET, a synchronous commit per message.
    Naive,
    // metacache's own work without I/O (decode, plan, encode) on one core.
    Codec,
    // The daemon draining the backlog.
    Drain,
    // The daemon draining the backlog without the stale guard and the index.
    Plain,
    // The daemon consuming while a fresh stream is produced.
    Steady,
    // Publish-to-visible latency at a steady rate.
    Latency,
    // The daemon draining the backlog into a 3-primary Redis Cluster, 1 and 16 index shards.
    Cluster,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Ceiling,
        Stage::Redis,
        Stage::Naive,
        Stage::Codec,
        Stage::Drain,
        Stage::Plain,
        Stage::Steady,
        Stage::Latency,
        Stage::Cluster,
    ];
}

impl BenchOptions {
    /// Seconds-long settings for CI, so the command never rots.
    pub fn smoke() -> Self {
        BenchOptions {
            events: 20_000,
            devices: 2_000,
            partitions: 4,
            workload: Workload::Mixed,
            max_batch: 1024,
            linger_ms: 5,
            max_in_flight: 4,
            naive_events: 1_000,
            latency_rate: 1_000,
            latency_secs: 2,
            stages: Stage::ALL.to_vec(),
            settings: Vec::new(),
            json: None,
            redis_url: None,
            replica: false,
            api_load: None,
        }
    }
}

/// The environment variable the daemon reads `name` (`section.key`, or
/// `kafka.client.<librdkafka property>`) from.
pub fn setting_env(name: &str) -> Result<String, String> {
    let bad = || format!("--set {name}: expected section.name, e.g. writer.max_batch");
    if let Some(property) = name.strip_prefix("kafka.client.") {
        if property.is_empty() {
            return Err(bad());
        }
        return Ok(format!(
            "METACACHE__KAFKA__CLIENT__{}",
            property.replace('.', "_").to_ascii_uppercase()
        ));
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    Ok(format!(
        "METACACHE__{}__{}",
        parts[0].to_ascii_uppercase(),
        parts[1].to_ascii_uppercase()
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub stage: String,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub note: String,
}

/// One daemon run, with what the other processes on the machine spent meanwhile: the
/// daemon's CPU target only means something beside Redis's and the broker's.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonFigures {
    pub events_per_sec: f64,
    pub cpu_seconds: f64,
    pub cpu_us_per_event: f64,
    pub peak_rss_mib: f64,
    /// Redis's CPU (`INFO cpu`, main and background threads) per event.
    pub redis_cpu_us_per_event: f64,
    /// The mock broker's CPU per event (not counted in the daemon's).
    pub broker_cpu_us_per_event: f64,
    /// Redis's own account of the commands it ran (`INFO commandstats`), busiest first.
    pub redis_commands: Vec<CommandStat>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandStat {
    pub command: String,
    pub calls: u64,
    pub calls_per_event: f64,
    pub usec_per_call: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rate: u64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The daemon's CPU per event at this rate (fixed costs weigh more at low rates).
    pub cpu_us_per_event: f64,
}

/// Everything a run measured; a stage that did not run leaves its fields empty.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub version: &'static str,
    pub cpus: usize,
    pub options: BenchOptions,
    pub rows: Vec<Row>,
    pub drain: Option<DaemonFigures>,
    pub plain: Option<DaemonFigures>,
    pub steady: Option<DaemonFigures>,
    pub latency: Option<Latency>,
    /// The read API's readers during the drain and the latency run (`--api-load`).
    pub api_during_drain: Option<api_load::ApiFigures>,
    pub api_during_latency: Option<api_load::ApiFigures>,
    pub ratio_to_consume_ceiling: Option<f64>,
    pub ratio_to_naive: Option<f64>,
    /// Throughput lost to the stale guard and the index: 1 - full ÷ plain.
    pub guard_and_index_cost: Option<f64>,
    /// The drains into a 3-primary Redis Cluster (1 and 16 index shards).
    pub cluster: Option<Vec<cluster::ClusterRun>>,
}

struct Broker {
    child: Child,
    bootstrap: String,
}

impl Broker {
    fn cpu_seconds(&self) -> f64 {
        probes::cpu_seconds(self.child.id()).unwrap_or(0.0)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica of the Redis at `url`, synced before the runs start.
fn start_replica(url: &str) -> Result<EmbeddedRedis, String> {
    let port = url::Url::parse(url)
        .ok()
        .and_then(|u| u.port())
        .ok_or_else(|| format!("no port in {url}"))?
        .to_string();
    let replica = EmbeddedRedis::start_with(&["--replicaof", "127.0.0.1", &port])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::Client::open(replica.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
            .map_err(|e| e.to_string())?;
        if info.contains("master_link_status:up") {
            return Ok(replica);
        }
        if Instant::now() > deadline {
            return Err("the replica did not sync within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_broker(partitions: i32) -> Result<Broker, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let topics = [
        DEVICE_TOPIC,
        METRIC_TOPIC,
        STEADY_DEVICE_TOPIC,
        STEADY_METRIC_TOPIC,
        LATENCY_DEVICE_TOPIC,
        LATENCY_METRIC_TOPIC,
    ];
    let dead_letters: Vec<String> = topics.iter().map(|t| format!("{t}.dlq")).collect();
    let mut child = Command::new(exe)
        .arg("mock-kafka")
        .args(["--partitions", &partitions.to_string()])
        .args(topics.iter().flat_map(|t| ["--topic", t]))
        .args(dead_letters.iter().flat_map(|t| ["--topic", t.as_str()]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the mock broker: {e}"))?;
    let stdout = child.stdout.take().ok_or("no broker stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the broker address: {e}"))?;
    let bootstrap = line.trim().to_owned();
    if bootstrap.is_empty() {
        return Err("the mock broker did not start".into());
    }
    Ok(Broker { child, bootstrap })
}

fn producer(bootstrap: &str, linger_ms: &str) -> Result<BaseProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "zstd")
        .set("linger.ms", linger_ms)
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .map_err(|e| format!("producer: {e}"))
}

fn send(p: &BaseProducer, topic: &str, r: &BenchRecord) {
    let mut record = BaseRecord::to(topic)
        .key(r.key.as_str())
        .payload(r.value.as_slice());
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                p.poll(Duration::from_millis(5));
            }
        }
    }
}

fn produce(bootstrap: &str, records: &[BenchRecord], topics: (&str, &str)) -> Result<f64, String> {
    let p = producer(bootstrap, "20")?;
    let started = Instant::now();
    for (i, r) in records.iter().enumerate() {
        send(&p, if r.device_topic { topics.0 } else { topics.1 }, r);
        if i % 1024 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))
        .map_err(|e| format!("flushing the producer: {e}"))?;
    Ok(started.elapsed().as_secs_f64())
}

fn consumer(bootstrap: &str, group: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| format!("consumer: {e}"))
}

/// Records in the topics, checked so that the mock's fixed retention did not drop any.
fn stored(bootstrap: &str, topics: &[&str]) -> Result<u64, String> {
    let c = consumer(bootstrap, "bench-watermarks")?;
    let mut total = 0;
    for topic in topics {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let partitions = md
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        for p in 0..partitions as i32 {
            let (low, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            if low > 0 {
                return Err(format!(
                    "the mock broker dropped records of {topic}[{p}] (retention is ~5 MiB per partition): use more --partitions or fewer --events"
                ));
            }
            total += high as u64;
        }
    }
    Ok(total)
}

fn consume_ceiling(bootstrap: &str, n: u64) -> Result<Row, String> {
    let c = consumer(bootstrap, "bench-consume-ceiling")?;
    c.subscribe(&[DEVICE_TOPIC, METRIC_TOPIC])
        .map_err(|e| e.to_string())?;
    let mut seen = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            seen += 1;
            std::hint::black_box(m.payload());
        }
    }
    let secs = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(f64::NAN);
    Ok(row(
        "consume ceiling (rdkafka, discard)",
        seen,
        secs,
        "what Kafka can give",
    ))
}

fn row(stage: &str, events: u64, seconds: f64, note: &str) -> Row {
    Row {
        stage: stage.to_owned(),
        events,
        seconds,
        events_per_sec: events as f64 / seconds,
        note: note.to_owned(),
    }
}

fn flushall(url: &str) -> Result<(), String> {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| e.to_string())?;
    redis::cmd("FLUSHALL")
        .query::<()>(&mut c)
        .map_err(|e| e.to_string())
}

/// What Redis takes from one connection, pipelined as metacache pipelines: plain `SET`s of
/// the raw values, and then the layout's own commands for the same events (the normalized
/// JSON under `device:{id}`, and each batch's `ZADD devices GT`) — the ceiling metacache's
/// device writes can reach, whatever metacache itself costs.
fn redis_ceilings(
    url: &str,
    records: &[BenchRecord],
    opts: &BenchOptions,
) -> Result<Vec<Row>, String> {
    let secs = pipelined(
        url,
        opts,
        records.chunks(opts.max_batch.max(1)).map(|batch| {
            let mut pipe = redis::pipe();
            for r in batch {
                pipe.cmd("SET").arg(&r.key).arg(&r.value).ignore();
            }
            pipe
        }),
    )?;
    let mut rows = vec![row(
        "Redis ceiling (pipelined plain SET, 1 connection)",
        records.len() as u64,
        secs,
        "",
    )];
    rows[0].note = format!("{:.0} SET commands/s", rows[0].events_per_sec);

    // The same events as the layout stores them (decoded outside the timing).
    let limits = Limits::default();
    let decoded: Vec<Vec<(String, String, i64)>> = records
        .chunks(opts.max_batch.max(1))
        .map(|batch| {
            batch
                .iter()
                .filter_map(|r| {
                    match model::decode(r.kind(), Some(r.key.as_bytes()), Some(&r.value), &limits) {
                        Ok(model::Event::DeviceUpsert(d)) => Some((
                            d.device_id().to_owned(),
                            d.normalized_json().to_owned(),
                            d.last_updated_ms(),
                        )),
                        _ => None,
                    }
                })
                .collect()
        })
        .collect();
    let devices: u64 = decoded.iter().map(|b| b.len() as u64).sum();
    if devices > 0 {
        let secs = pipelined(
            url,
            opts,
            decoded.iter().map(|batch| {
                let mut pipe = redis::pipe();
                let mut zadd = redis::cmd("ZADD");
                zadd.arg("devices").arg("GT");
                for (id, json, ms) in batch {
                    pipe.cmd("SET")
                        .arg(format!("device:{id}"))
                        .arg(json)
                        .ignore();
                    zadd.arg(*ms).arg(id);
                }
                pipe.add_command(zadd).ignore();
                pipe
            }),
        )?;
        let mut r = row(
            "Redis ceiling, the layout (SET + one ZADD devices GT per batch)",
            devices,
            secs,
            "",
        );
        r.note = "the most device events/s metacache's writes can reach on this Redis".into();
        rows.push(r);
    }
    Ok(rows)
}

/// Sends `pipes` from one connection with `max_in_flight` outstanding, after a FLUSHALL;
/// returns the seconds it took.
fn pipelined(
    url: &str,
    opts: &BenchOptions,
    pipes: impl Iterator<Item = redis::Pipeline>,
) -> Result<f64, String> {
    use futures::stream::{FuturesOrdered, StreamExt};
    flushall(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut flights = FuturesOrdered::new();
        for pipe in pipes {
            let mut c = conn.clone();
            flights.push_back(async move { pipe.query_async::<()>(&mut c).await });
            if flights.len() >= opts.max_in_flight.max(1) {
                if let Some(r) = flights.next().await {
                    r.map_err(|e| e.to_string())?;
                }
            }
        }
        while let Some(r) = flights.next().await {
            r.map_err(|e| e.to_string())?;
        }
        Ok::<f64, String>(started.elapsed().as_secs_f64())
    })
}

fn naive(bootstrap: &str, url: &str, n: u64) -> Result<Row, String> {
    flushall(url)?;
    let c = consumer(bootstrap, "bench-naive")?;
    c.subscribe(&[DEVICE_TOPIC, METRIC_TOPIC])
        .map_err(|e| e.to_string())?;
    let mut r = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| e.to_string())?;
    let limits = Limits::default();
    let mut seen = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < n && Instant::now() < deadline {
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        started.get_or_insert_with(Instant::now);
        let kind = if m.topic() == DEVICE_TOPIC {
            TopicKind::Device
        } else {
            TopicKind::Metric
        };
        if model::decode(kind, m.key(), m.payload(), &limits).is_ok() {
            let key = m.key().unwrap_or_default();
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(m.payload().unwrap_or_default())
                .query(&mut r)
                .map_err(|e| e.to_string())?;
        }
        c.commit_message(&m, CommitMode::Sync)
            .map_err(|e| e.to_string())?;
        seen += 1;
    }
    let secs = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(f64::NAN);
    Ok(row(
        "naive (decode, awaited SET, sync commit per message)",
        seen,
        secs,
        "what a simple per-message service does",
    ))
}

/// Where the daemon's log goes: nowhere, unless `METACACHE_BENCH_DAEMON_LOG` names a file
/// (appended to), for looking into a run.
fn daemon_log() -> Stdio {
    std::env::var_os("METACACHE_BENCH_DAEMON_LOG")
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map_or_else(Stdio::null, Stdio::from)
}

/// The real daemon as a child process.
struct Daemon {
    child: Child,
    http: SocketAddr,
}

impl Daemon {
    fn start(
        bootstrap: &str,
        url: &str,
        group: &str,
        topics: (&str, &str),
        opts: &BenchOptions,
        plain_devices: bool,
        fetch_wait_ms: u32,
    ) -> Result<Daemon, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let port = free_port()?;
        let http: SocketAddr = ([127, 0, 0, 1], port).into();
        // `METACACHE_BENCH_DAEMON_WRAPPER="heaptrack -o /tmp/h"` runs the daemon under a
        // tool, for looking into a run (the figures are then the tool's).
        let wrapper = std::env::var("METACACHE_BENCH_DAEMON_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(tool) => {
                let mut cmd = Command::new(tool);
                cmd.args(words).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("METACACHE") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg(if plain_devices {
                "bench-plain-daemon"
            } else {
                "run"
            })
            .current_dir(std::env::temp_dir())
            .env("METACACHE__KAFKA__BROKERS", bootstrap)
            .env("METACACHE__KAFKA__GROUP_ID", group)
            .env("METACACHE__KAFKA__DEVICE_TOPIC", topics.0)
            .env("METACACHE__KAFKA__METRIC_TOPIC", topics.1)
            .env(
                "METACACHE__KAFKA__CLIENT__FETCH_WAIT_MAX_MS",
                fetch_wait_ms.to_string(),
            )
            .env("METACACHE__REDIS__URL", url)
            .env("METACACHE__WRITER__MAX_BATCH", opts.max_batch.to_string())
            .env("METACACHE__WRITER__LINGER_MS", opts.linger_ms.to_string())
            .env(
                "METACACHE__WRITER__MAX_IN_FLIGHT",
                opts.max_in_flight.to_string(),
            )
            .env("METACACHE__HTTP__LISTEN", http.to_string())
            .envs(api_token_file(opts)?.map(|f| ("METACACHE__API__TOKEN_FILE", f)))
            .env("METACACHE__LOG__FILTER", "warn")
            .envs(
                opts.settings
                    .iter()
                    .filter_map(|(k, v)| setting_env(k).ok().map(|k| (k, v.clone()))),
            )
            .stdout(Stdio::null())
            .stderr(daemon_log())
            .spawn()
            .map_err(|e| format!("starting metacache run: {e}"))?;
        let daemon = Daemon { child, http };
        daemon.wait(
            Duration::from_secs(30),
            "the daemon to join its group",
            |s| s["kafka"]["assigned_partitions"].as_u64().unwrap_or(0) > 0,
        )?;
        Ok(daemon)
    }

    fn stats(&self) -> Option<serde_json::Value> {
        probes::get_json(self.http, "/stats")
    }

    fn wait(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.stats() {
                if cond(&s) {
                    return Ok(s);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With `--api-load`, a file holding the bench's API token, for the daemons.
fn api_token_file(opts: &BenchOptions) -> Result<Option<String>, String> {
    if opts.api_load.is_none() {
        return Ok(None);
    }
    let path = std::env::temp_dir().join(format!("metacache-bench-token-{}", std::process::id()));
    std::fs::write(&path, api_load::TOKEN).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path.display().to_string()))
}

/// Redis's CPU seconds so far (main thread and background threads).
fn redis_cpu_seconds(url: &str) -> f64 {
    info(url, "cpu")
        .map(|text| {
            info_fields(&text)
                .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

fn info(url: &str, section: &str) -> Result<String, String> {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| e.to_string())?;
    redis::cmd("INFO")
        .arg(section)
        .query::<String>(&mut c)
        .map_err(|e| e.to_string())
}

fn info_fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| l.trim().split_once(':'))
}

fn reset_redis_stats(url: &str) -> Result<(), String> {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| e.to_string())?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut c)
        .map_err(|e| e.to_string())
}

/// `INFO commandstats` lines (`cmdstat_set:calls=3,usec=10,usec_per_call=3.33,...`),
/// busiest first, without the benchmark's own probes.
pub fn parse_commandstats(text: &str, events: u64) -> Vec<CommandStat> {
    let mut out: Vec<CommandStat> = info_fields(text)
        .filter_map(|(k, v)| {
            let command = k.strip_prefix("cmdstat_")?;
            let mut calls = None;
            let mut usec_per_call = None;
            for part in v.split(',') {
                match part.split_once('=') {
                    Some(("calls", n)) => calls = n.parse::<u64>().ok(),
                    Some(("usec_per_call", n)) => usec_per_call = n.parse::<f64>().ok(),
                    _ => {}
                }
            }
            Some(CommandStat {
                command: command.to_owned(),
                calls: calls?,
                calls_per_event: calls? as f64 / events.max(1) as f64,
                usec_per_call: usec_per_call?,
            })
        })
        .filter(|c| !matches!(c.command.as_str(), "info" | "config|resetstat" | "flushall"))
        .collect();
    out.sort_by(|a, b| {
        (b.calls as f64 * b.usec_per_call).total_cmp(&(a.calls as f64 * a.usec_per_call))
    });
    out
}

/// CPU of the daemon, Redis and the broker over one measured interval.
struct CpuMeter {
    pid: u32,
    daemon: f64,
    redis: f64,
    broker: f64,
}

impl CpuMeter {
    fn start(pid: u32, url: &str, broker: &Broker) -> Self {
        CpuMeter {
            pid,
            daemon: probes::cpu_seconds(pid).unwrap_or(0.0),
            redis: redis_cpu_seconds(url),
            broker: broker.cpu_seconds(),
        }
    }

    fn finish(&self, events: u64, secs: f64, url: &str, broker: &Broker) -> DaemonFigures {
        let per_event = |s: f64| s * 1e6 / events.max(1) as f64;
        let cpu = probes::cpu_seconds(self.pid).unwrap_or(0.0) - self.daemon;
        DaemonFigures {
            events_per_sec: events as f64 / secs,
            cpu_seconds: cpu,
            cpu_us_per_event: per_event(cpu),
            peak_rss_mib: probes::peak_rss_bytes(self.pid).unwrap_or(0) as f64 / (1024.0 * 1024.0),
            redis_cpu_us_per_event: per_event(redis_cpu_seconds(url) - self.redis),
            broker_cpu_us_per_event: per_event(broker.cpu_seconds() - self.broker),
            redis_commands: info(url, "commandstats")
                .map(|t| parse_commandstats(&t, events))
                .unwrap_or_default(),
        }
    }
}

fn drain(
    broker: &Broker,
    url: &str,
    n: u64,
    opts: &BenchOptions,
    plain_devices: bool,
) -> Result<(DaemonFigures, Option<api_load::ApiFigures>), String> {
    flushall(url)?;
    let group = if plain_devices {
        "bench-drain-plain"
    } else {
        "bench-drain"
    };
    let topics = (DEVICE_TOPIC, METRIC_TOPIC);
    let d = Daemon::start(
        &broker.bootstrap,
        url,
        group,
        topics,
        opts,
        plain_devices,
        FETCH_WAIT_MS,
    )?;
    let pid = d.child.id();
    d.wait(Duration::from_secs(30), "the first record", |s| {
        probes::consumed(s) > 0
    })?;
    reset_redis_stats(url)?;
    let readers = opts
        .api_load
        .filter(|_| !plain_devices)
        .map(|rate| api_load::ApiLoad::start(d.http, rate, opts.devices));
    let started = Instant::now();
    let meter = CpuMeter::start(pid, url, broker);
    d.wait(Duration::from_secs(600), "the backlog to drain", |s| {
        probes::finished(s) >= n
    })?;
    let secs = started.elapsed().as_secs_f64();
    let f = meter.finish(n, secs, url, broker);
    let api = readers.map(api_load::ApiLoad::finish);
    d.stop();
    Ok((f, api))
}

/// A fresh stream produced while the daemon consumes it.
fn steady(
    broker: &Broker,
    url: &str,
    records: &[BenchRecord],
    opts: &BenchOptions,
) -> Result<DaemonFigures, String> {
    flushall(url)?;
    let topics = (STEADY_DEVICE_TOPIC, STEADY_METRIC_TOPIC);
    let d = Daemon::start(
        &broker.bootstrap,
        url,
        "bench-steady",
        topics,
        opts,
        false,
        FETCH_WAIT_MS,
    )?;
    let n = records.len() as u64;
    reset_redis_stats(url)?;
    let meter = CpuMeter::start(d.child.id(), url, broker);
    let started = Instant::now();
    produce(&broker.bootstrap, records, topics)?;
    d.wait(Duration::from_secs(600), "the stream to be written", |s| {
        probes::finished(s) >= n
    })?;
    let secs = started.elapsed().as_secs_f64();
    let figures = meter.finish(n, secs, url, broker);
    d.stop();
    Ok(figures)
}

/// The latency phase, on a daemon of its own that waits at most 1 ms on an empty fetch.
fn latency_run(
    broker: &Broker,
    url: &str,
    opts: &BenchOptions,
) -> Result<(Latency, Option<api_load::ApiFigures>), String> {
    flushall(url)?;
    let d = Daemon::start(
        &broker.bootstrap,
        url,
        "bench-latency",
        (LATENCY_DEVICE_TOPIC, LATENCY_METRIC_TOPIC),
        opts,
        false,
        LATENCY_FETCH_WAIT_MS,
    )?;
    let readers = opts
        .api_load
        .map(|rate| api_load::ApiLoad::start(d.http, rate, opts.devices));
    let cpu = probes::cpu_seconds(d.child.id()).unwrap_or(0.0);
    let measured = latency(&broker.bootstrap, url, opts);
    let cpu = probes::cpu_seconds(d.child.id()).unwrap_or(0.0) - cpu;
    let api = readers.map(api_load::ApiLoad::finish);
    d.stop();
    let mut measured = measured?;
    let events = (opts.latency_rate * (opts.latency_secs + 1)).max(1);
    measured.cpu_us_per_event = cpu * 1e6 / events as f64;
    Ok((measured, api))
}

/// Keys the latency poller checks per round (every millisecond), oldest first.
const POLL_WINDOW: usize = 128;

/// Publishes device events at a steady rate and times each tenth (at most ~1,000 a second)
/// from send to visible in Redis (polled every millisecond), after a second of warm-up. The time includes the
/// producer's 5 ms linger.
fn latency(bootstrap: &str, url: &str, opts: &BenchOptions) -> Result<Latency, String> {
    // librdkafka's default linger: unbatched sends at 10k/s swamp the mock broker (one
    // request per record), which measured the broker rather than metacache.
    let p = producer(bootstrap, "5")?;
    let outstanding: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let outstanding = Arc::clone(&outstanding);
        let samples = Arc::clone(&samples);
        let done = Arc::clone(&done);
        let mut conn = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let deadline_after_done = Duration::from_secs(5);
            let mut done_at: Option<Instant> = None;
            loop {
                // The oldest few only: the poller's own load on Redis must not grow with
                // the latency it measures.
                let keys: Vec<(String, Instant)> = outstanding
                    .lock()
                    .map(|o| o.iter().take(POLL_WINDOW).cloned().collect())
                    .unwrap_or_default();
                if keys.is_empty() && done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                if !keys.is_empty() {
                    let mut pipe = redis::pipe();
                    for (k, _) in &keys {
                        pipe.cmd("EXISTS").arg(format!("device:{k}"));
                    }
                    if let Ok(found) = pipe.query::<Vec<bool>>(&mut conn) {
                        let now = Instant::now();
                        let seen: Vec<&String> = keys
                            .iter()
                            .zip(&found)
                            .filter(|(_, f)| **f)
                            .map(|((k, sent), _)| {
                                if let Ok(mut s) = samples.lock() {
                                    s.push(now.duration_since(*sent).as_secs_f64() * 1000.0);
                                }
                                k
                            })
                            .collect();
                        if let Ok(mut o) = outstanding.lock() {
                            o.retain(|(k, _)| !seen.contains(&k));
                        }
                    }
                }
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    let at = *done_at.get_or_insert_with(Instant::now);
                    if at.elapsed() > deadline_after_done {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // One second at the same rate first, not timed: the first fetches of a fresh consumer
    // take tens of milliseconds, which says nothing about the steady rate.
    let warm_up = opts.latency_rate;
    let total = warm_up + opts.latency_rate * opts.latency_secs;
    // Every tenth event, but at most ~1,000 samples a second.
    let sample_every = (opts.latency_rate / 1000).max(10);
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / opts.latency_rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = format!("lat-{i}");
        let record = BenchRecord {
            device_topic: true,
            value: workload::device_event(&id, i),
            key: id.clone(),
        };
        let sent = Instant::now();
        send(&p, LATENCY_DEVICE_TOPIC, &record);
        p.poll(Duration::ZERO);
        if i >= warm_up && i % sample_every == 0 {
            if let Ok(mut o) = outstanding.lock() {
                o.push((id, sent));
            }
        }
    }
    let _ = p.flush(Duration::from_secs(10));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = poller.join();
    let mut s = samples.lock().map(|s| s.clone()).unwrap_or_default();
    s.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        if s.is_empty() {
            f64::NAN
        } else {
            s[((s.len() - 1) as f64 * q).round() as usize]
        }
    };
    Ok(Latency {
        rate: opts.latency_rate,
        samples: s.len(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        cpu_us_per_event: f64::NAN,
    })
}

/// Runs the chosen stages and prints the table; writes JSON when asked.
pub fn run(opts: BenchOptions) -> Result<BenchReport, String> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "metacache bench: {} {:?} events over {} devices, {} partitions, batch {}, linger {} ms, {} in flight ({cpus} CPUs)",
        opts.events, opts.workload, opts.devices, opts.partitions, opts.max_batch, opts.linger_ms, opts.max_in_flight
    );
    let wants = |stage: Stage| opts.stages.contains(&stage);
    let broker = start_broker(opts.partitions)?;
    let redis_child;
    let url = match &opts.redis_url {
        Some(u) => u.clone(),
        None => {
            redis_child = EmbeddedRedis::start()?;
            redis_child.url()
        }
    };
    let _replica = match (opts.replica, &opts.redis_url) {
        (true, Some(_)) => {
            return Err(
                "--replica starts a replica of the bench's own Redis: not with --redis-url".into(),
            )
        }
        (true, None) => Some(start_replica(&url)?),
        (false, _) => None,
    };
    let records = generate(opts.workload, opts.events, opts.devices, 42);
    let n = records.len() as u64;

    let produce_secs = produce(&broker.bootstrap, &records, (DEVICE_TOPIC, METRIC_TOPIC))?;
    let stored = stored(&broker.bootstrap, &[DEVICE_TOPIC, METRIC_TOPIC])?;
    if stored != n {
        return Err(format!("{stored} of {n} records stored by the mock broker"));
    }
    let mut rows = vec![row(
        "produce (BaseProducer, zstd)",
        n,
        produce_secs,
        "filling the backlog",
    )];
    let mut ceiling = None;
    if wants(Stage::Ceiling) {
        eprintln!("  consume ceiling …");
        let r = consume_ceiling(&broker.bootstrap, n)?;
        ceiling = Some(r.events_per_sec);
        rows.push(r);
    }
    if wants(Stage::Redis) {
        eprintln!("  Redis ceilings …");
        rows.extend(redis_ceilings(&url, &records, &opts)?);
    }
    let mut naive_rate = None;
    if wants(Stage::Naive) {
        eprintln!("  naive baseline …");
        let r = naive(&broker.bootstrap, &url, opts.naive_events.min(n))?;
        naive_rate = Some(r.events_per_sec);
        rows.push(r);
    }
    if wants(Stage::Codec) {
        eprintln!("  metacache in-process (no I/O) …");
        let c = codec::run(&records, opts.max_batch);
        rows.push(row(
            "metacache in-process: decode, plan, encode (1 core, no I/O)",
            c.events,
            c.seconds,
            &format!(
                "{:.2} µs/event, {:.2} commands and {:.0} RESP bytes per event",
                c.seconds * 1e6 / c.events.max(1) as f64,
                c.commands as f64 / c.events.max(1) as f64,
                c.bytes as f64 / c.events.max(1) as f64
            ),
        ));
    }
    let (mut drained, mut api_during_drain, mut api_during_latency) = (None, None, None);
    if wants(Stage::Drain) {
        eprintln!("  metacache, draining the backlog …");
        let (f, api) = drain(&broker, &url, n, &opts, false)?;
        api_during_drain = api;
        rows.push(row(
            "metacache, backlog drain",
            n,
            n as f64 / f.events_per_sec,
            "the real daemon, child process",
        ));
        drained = Some(f);
    }
    let mut plain = None;
    if wants(Stage::Plain) {
        eprintln!("  metacache without stale guard and index, draining …");
        let (f, _) = drain(&broker, &url, n, &opts, true)?;
        rows.push(row(
            "metacache, plain SETs (no stale guard, no index)",
            n,
            n as f64 / f.events_per_sec,
            "what the guard and the index cost",
        ));
        plain = Some(f);
    }
    let mut steady_figures = None;
    if wants(Stage::Steady) {
        eprintln!("  metacache, steady state …");
        let steady_records = generate(opts.workload, opts.events, opts.devices, 43);
        let f = steady(&broker, &url, &steady_records, &opts)?;
        rows.push(row(
            "metacache, steady state (producing while consuming)",
            n,
            n as f64 / f.events_per_sec,
            "publish start to last write",
        ));
        steady_figures = Some(f);
    }
    let mut latency = None;
    if wants(Stage::Latency) {
        eprintln!("  metacache, publish-to-visible latency …");
        let (measured, api) = latency_run(&broker, &url, &opts)?;
        latency = Some(measured);
        api_during_latency = api;
    }

    let mut cluster_runs = None;
    if wants(Stage::Cluster) {
        eprintln!("  metacache, draining into a 3-primary Redis Cluster (1 and 16 index shards) …");
        cluster_runs = Some(cluster::run(&broker, n, &opts)?);
    }
    let drain_rate = drained.as_ref().map(|d| d.events_per_sec);
    let report = BenchReport {
        version: env!("CARGO_PKG_VERSION"),
        cpus,
        options: opts.clone(),
        ratio_to_consume_ceiling: drain_rate.zip(ceiling).map(|(d, c)| d / c),
        ratio_to_naive: drain_rate.zip(naive_rate).map(|(d, n)| d / n),
        guard_and_index_cost: drain_rate
            .zip(plain.as_ref())
            .map(|(d, p)| 1.0 - d / p.events_per_sec),
        rows,
        drain: drained,
        plain,
        steady: steady_figures,
        latency,
        api_during_drain,
        api_during_latency,
        cluster: cluster_runs,
    };
    print_report(&report);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(report)
}

fn print_report(r: &BenchReport) {
    println!();
    println!("| stage | events | seconds | events/s | note |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for row in &r.rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} |",
            row.stage, row.events, row.seconds, row.events_per_sec, row.note
        );
    }
    let runs = [
        ("backlog drain", &r.drain),
        ("plain SETs", &r.plain),
        ("steady state", &r.steady),
    ];
    if runs.iter().any(|(_, f)| f.is_some()) {
        println!();
        println!("| metacache | events/s | CPU µs/event | peak RSS MiB | Redis CPU µs/event | broker CPU µs/event |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for (name, f) in runs {
            if let Some(f) = f {
                println!(
                    "| {name} | {:.0} | {:.2} | {:.1} | {:.2} | {:.2} |",
                    f.events_per_sec,
                    f.cpu_us_per_event,
                    f.peak_rss_mib,
                    f.redis_cpu_us_per_event,
                    f.broker_cpu_us_per_event
                );
            }
        }
    }
    if let Some(d) = &r.drain {
        println!();
        println!("Redis commands during the drain (INFO commandstats):");
        println!("| command | calls per event | µs per call |");
        println!("| --- | ---: | ---: |");
        for c in d.redis_commands.iter().take(6) {
            println!(
                "| {} | {:.3} | {:.2} |",
                c.command, c.calls_per_event, c.usec_per_call
            );
        }
    }
    if let Some(runs) = &r.cluster {
        println!();
        println!("Redis Cluster, 3 primaries on this machine, backlog drain:");
        println!("| index shards | events/s | metacache CPU µs/event | Redis CPU µs/event per primary (busiest first) | busiest primary's share |");
        println!("| ---: | ---: | ---: | --- | ---: |");
        for c in runs {
            let nodes: Vec<String> = c
                .redis_cpu_us_per_event
                .iter()
                .map(|(port, us)| format!("{us:.2} (:{port})"))
                .collect();
            println!(
                "| {} | {:.0} | {:.2} | {} | {:.0}% |",
                c.index_shards,
                c.events_per_sec,
                c.cpu_us_per_event,
                nodes.join(", "),
                c.busiest_share * 100.0
            );
        }
    }
    if let Some(l) = &r.latency {
        println!();
        println!(
            "publish-to-visible latency at {} events/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples); daemon CPU {:.1} µs/event",
            l.rate, l.p50_ms, l.p99_ms, l.max_ms, l.samples, l.cpu_us_per_event
        );
    }
    for (during, api) in [
        ("the drain", &r.api_during_drain),
        ("the latency run", &r.api_during_latency),
    ] {
        if let Some(a) = api {
            println!(
                "read API during {during}: {} requests/s asked, {} answered, {} errors, p50 {:.1} ms, p99 {:.1} ms",
                a.rate,
                a.requests - a.errors,
                a.errors,
                a.p50_ms,
                a.p99_ms
            );
        }
    }
    let mut ratios = Vec::new();
    if let Some(x) = r.ratio_to_consume_ceiling {
        ratios.push(format!("metacache ÷ consume ceiling: {x:.2}"));
    }
    if let Some(x) = r.ratio_to_naive {
        ratios.push(format!("metacache ÷ naive: {x:.0}×"));
    }
    if let Some(x) = r.guard_and_index_cost {
        ratios.push(format!(
            "stale guard + index cost: {:.0}% of plain-SET throughput",
            x * 100.0
        ));
    }
    if !ratios.is_empty() {
        println!("{}", ratios.join("   "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_map_to_the_daemons_environment_variables() {
        assert_eq!(
            setting_env("writer.max_batch").unwrap(),
            "METACACHE__WRITER__MAX_BATCH"
        );
        assert_eq!(
            setting_env("kafka.client.queued.min.messages").unwrap(),
            "METACACHE__KAFKA__CLIENT__QUEUED_MIN_MESSAGES"
        );
        for bad in ["writer", "a.b.c", "kafka.client.", ".x"] {
            assert!(setting_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commandstats_are_read_busiest_first_without_the_probes() {
        let text = "# Commandstats\r\n\
            cmdstat_set:calls=900,usec=900,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=100,usec=600,usec_per_call=6.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_info:calls=50,usec=5000,usec_per_call=100.00\r\n";
        let stats = parse_commandstats(text, 1000);
        let names: Vec<&str> = stats.iter().map(|c| c.command.as_str()).collect();
        assert_eq!(names, ["set", "evalsha"]);
        assert_eq!(stats[0].calls, 900);
        assert!((stats[0].calls_per_event - 0.9).abs() < 1e-9);
        assert!((stats[1].usec_per_call - 6.0).abs() < 1e-9);
    }
}
