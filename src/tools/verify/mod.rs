//! `metacache verify`: proves the cache matches the stream. It reads both source topics
//! from the earliest retained offsets, computes what Redis must hold
//! ([`expected::Expected`], independent of the writer), reads what Redis holds, and
//! compares key by key ([`compare::compare`]). It writes nothing, anywhere.
//!
//! It never joins a consumer group (the partitions are assigned, not subscribed), so the
//! daemons of the group are not disturbed; it only reads the group's committed offsets.
//! A partition whose committed offset is short of its end is *not caught up*: the keys
//! that have records past the committed offset are reported as pending, not as drift,
//! since Redis may hold any state between the two.

pub mod compare;
pub mod expected;

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use metacache_client::connect::RedisConn;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use redis::RedisError;
use serde::Serialize;

use crate::config::{KafkaSettings, Settings};
use crate::keys::{glob_escape, KeyLayout};
use crate::model::{self, Limits, TopicKind};
use crate::pipeline::source::kafka::consumer_config;
use compare::{Comparison, Observed};
use expected::Expected;

/// How long one broker round trip may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reading may go without a record before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys per `MGET` or pipeline of `SMEMBERS`.
const READ_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("topic {0:?} not found (or it has no partitions)")]
    NoTopic(String),
    #[error("Kafka delivered nothing for {0:?} with {1} records still to read")]
    Stalled(Duration, i64),
    #[error("layout: {0}")]
    Layout(String),
}

/// A partition whose committed offset is short of its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lagging {
    pub topic: String,
    pub partition: i32,
    /// `None`: the group never committed in this partition.
    pub committed: Option<i64>,
    pub end: i64,
}

impl Lagging {
    pub fn pending(&self) -> i64 {
        self.end - self.committed.unwrap_or(0).max(0)
    }
}

/// Everything `verify` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub group: String,
    pub partitions: usize,
    /// Records read, and how many of them the contract refuses (dead letters).
    pub records: u64,
    pub rejected: u64,
    pub read_secs: f64,
    pub compare_secs: f64,
    pub not_caught_up: Vec<Lagging>,
    /// `devices.ttl_secs` is set: expired device keys show as missing.
    pub device_ttl: bool,
    /// Device ids and namespaces whose records lie on more than one partition: a producer
    /// mistake that breaks per-key order (docs/reliability.md, "One key, one partition").
    pub split_devices: Vec<SplitKey>,
    pub split_namespaces: Vec<SplitKey>,
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// A key found on more than one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitKey {
    pub id: String,
    pub partitions: Vec<i32>,
}

impl Report {
    /// The cache holds what the stream says (pending and unverifiable keys aside), and the
    /// stream has an order to hold to: no key is spread over partitions.
    pub fn matches(&self) -> bool {
        self.comparison.total_differences() == 0 && self.split_keys() == 0
    }

    fn split_keys(&self) -> usize {
        self.split_devices.len() + self.split_namespaces.len()
    }
}

/// The reader's librdkafka context: the end of a partition is how reading stops, not an
/// error worth a line (the default context logs each at error level).
struct Reader;

impl ClientContext for Reader {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            error => tracing::warn!(%error, reason, "kafka client error"),
        }
    }
}

impl ConsumerContext for Reader {}

/// How the stream is read: which partitions, from where to where.
struct Span {
    kind: TopicKind,
    topic: String,
    partition: i32,
    earliest: i64,
    end: i64,
    committed: Option<i64>,
}

/// Reads both topics from their earliest retained offsets to the ends seen at the start,
/// as the group `group` would have them decoded, and applies every event. `progress` is
/// told (records read, records to read) now and then.
pub fn read_stream(
    kafka: &KafkaSettings,
    limits: &Limits,
    group: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Expected, Vec<Lagging>, usize), VerifyError> {
    let mut config = consumer_config(kafka);
    // The group only for reading its committed offsets: assign() never joins it.
    config
        .set("group.id", group)
        .set("statistics.interval.ms", "0")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer<Reader> = config.create_with_context(Reader)?;

    let mut spans = Vec::new();
    let mut all = TopicPartitionList::new();
    for (kind, topic) in [
        (TopicKind::Device, &kafka.device_topic),
        (TopicKind::Metric, &kafka.metric_topic),
    ] {
        let watermarks = crate::tools::resync::watermarks(&consumer, topic)?
            .ok_or_else(|| VerifyError::NoTopic(topic.clone()))?;
        for (partition, earliest, end) in watermarks {
            spans.push(Span {
                kind,
                topic: topic.clone(),
                partition,
                earliest,
                end,
                committed: None,
            });
            all.add_partition(topic, partition);
        }
    }
    let committed = consumer.committed_offsets(all, REQUEST_TIMEOUT)?;
    for span in &mut spans {
        if let Some(Offset::Offset(o)) = committed
            .find_partition(&span.topic, span.partition)
            .map(|e| e.offset())
        {
            span.committed = Some(o);
        }
    }
    let lagging: Vec<Lagging> = spans
        .iter()
        .filter(|s| s.committed.is_none_or(|c| c < s.end) && s.end > s.earliest)
        .map(|s| Lagging {
            topic: s.topic.clone(),
            partition: s.partition,
            committed: s.committed,
            end: s.end,
        })
        .collect();

    let mut assignment = TopicPartitionList::new();
    let mut open: HashMap<(String, i32), usize> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if s.end > s.earliest {
            assignment.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.earliest))?;
            open.insert((s.topic.clone(), s.partition), i);
        }
    }
    let total: i64 = spans.iter().map(|s| s.end - s.earliest).sum();
    let total = total.max(0) as u64;
    consumer.assign(&assignment)?;

    let mut expected = Expected::default();
    let mut read = 0u64;
    let mut last_record = Instant::now();
    let mut last_progress = Instant::now();
    progress(0, total);
    while !open.is_empty() {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            if last_record.elapsed() > STALL_TIMEOUT {
                return Err(VerifyError::Stalled(
                    STALL_TIMEOUT,
                    total as i64 - read as i64,
                ));
            }
            continue;
        };
        let message = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(partition)) => {
                // librdkafka names only the partition number: close whichever topic's
                // partition of that number has reached its end.
                open.retain(|(topic, p), i| {
                    *p != partition || !reached(&consumer, topic, *p, spans[*i].end)
                });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        last_record = Instant::now();
        let key = (message.topic().to_owned(), message.partition());
        let Some(&i) = open.get(&key) else {
            continue;
        };
        let span = &spans[i];
        let offset = message.offset();
        if offset >= span.end {
            open.remove(&key);
            continue;
        }
        read += 1;
        match model::decode(span.kind, message.key(), message.payload(), limits) {
            Ok(event) => {
                let pending = span.committed.is_none_or(|c| offset >= c);
                expected.spread.saw(&event, span.partition);
                expected.apply(&event, pending);
            }
            Err(_) => expected.reject(),
        }
        if offset + 1 >= span.end {
            open.remove(&key);
        }
        if last_progress.elapsed() >= Duration::from_millis(200) {
            progress(read, total);
            last_progress = Instant::now();
        }
    }
    progress(read, total);
    Ok((expected, lagging, spans.len()))
}

/// Whether the consumer's position in `topic[partition]` is at `end` or past it.
fn reached(consumer: &BaseConsumer<Reader>, topic: &str, partition: i32, end: i64) -> bool {
    consumer
        .position()
        .ok()
        .and_then(|position| {
            position
                .find_partition(topic, partition)
                .map(|e| e.offset())
        })
        .is_some_and(|offset| matches!(offset, Offset::Offset(o) if o >= end))
}

/// Reads every key metacache writes under `keys`' prefix.
pub async fn read_redis(conn: &mut RedisConn, keys: &KeyLayout) -> Result<Observed, RedisError> {
    let mut observed = Observed::default();
    let prefix = glob_escape(keys.prefix());

    let device_prefix = keys.device("");
    let device_keys = scan(conn, &format!("{prefix}device:*")).await?;
    for batch in device_keys.chunks(READ_BATCH) {
        let values = mget(conn, batch).await?;
        for (key, value) in batch.iter().zip(values) {
            if let (Some(id), Some(value)) = (strip(key, device_prefix.as_bytes(), b""), value) {
                observed
                    .devices
                    .insert(id, String::from_utf8_lossy(&value).into_owned());
            }
        }
    }

    for index in keys.index_keys() {
        let mut cursor = 0u64;
        loop {
            let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("ZSCAN")
                .arg(index)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            for pair in flat.chunks(2) {
                if let [member, score] = pair {
                    let id = String::from_utf8_lossy(member).into_owned();
                    // A member in another shard than its id hashes to is invisible to
                    // readers that look it up there: reported as a wrong score.
                    let score = if keys.index_key(&id) == index.as_str() {
                        String::from_utf8_lossy(score).parse().unwrap_or(f64::NAN)
                    } else {
                        f64::NAN
                    };
                    // A member in two shards is listed twice by readers: wrong either way.
                    observed
                        .index
                        .entry(id)
                        .and_modify(|seen| *seen = f64::NAN)
                        .or_insert(score);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }

    let set_keys = scan(conn, &format!("{prefix}*#metric_names")).await?;
    for batch in set_keys.chunks(READ_BATCH) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("SMEMBERS").arg(key);
        }
        let sets: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await?;
        for (key, members) in batch.iter().zip(sets) {
            if let Some(ns) = strip(key, keys.prefix().as_bytes(), b"#metric_names") {
                let members = members
                    .iter()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .collect();
                observed.sets.insert(ns, members);
            }
        }
    }

    let listed: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
        .arg(keys.metric_namespaces())
        .query_async(conn)
        .await?;
    observed.listed = listed
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    Ok(observed)
}

/// The values of `keys` in order: one `MGET`, or on a cluster (where `MGET` needs one
/// slot) one `GET` each in a pipeline that the connection splits per node.
pub(crate) async fn mget(
    conn: &mut RedisConn,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Vec<u8>>>, RedisError> {
    let values = conn.values(keys).await?;
    Ok(redis::FromRedisValue::from_redis_value(
        redis::Value::Array(values),
    )?)
}

/// Every key matching `pattern`, each once (`SCAN` may return a key twice); on a cluster,
/// from every primary.
pub(crate) async fn scan(conn: &mut RedisConn, pattern: &str) -> Result<Vec<Vec<u8>>, RedisError> {
    let mut keys = Vec::new();
    for (_, mut node) in conn.nodes().await? {
        keys.extend(scan_node(&mut node, pattern).await?);
    }
    // SCAN may return a key twice; keep one.
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

async fn scan_node(conn: &mut RedisConn, pattern: &str) -> Result<Vec<Vec<u8>>, RedisError> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(keys)
}

/// `key` without `prefix` and `suffix`, if it has both.
fn strip(key: &[u8], prefix: &[u8], suffix: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix)?.strip_suffix(suffix)?;
    Some(String::from_utf8_lossy(rest).into_owned())
}

/// The whole run: the stream, then Redis, then the comparison. `progress` lines go to
/// `progress_out` (a terminal), overwritten in place.
pub async fn run(
    settings: &Settings,
    group: &str,
    mut progress_out: Option<&mut (dyn Write + Send)>,
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let (expected, not_caught_up, partitions) = {
        let mut report = |read: u64, total: u64| {
            if let Some(out) = progress_out.as_mut() {
                let percent = (read * 100).checked_div(total).unwrap_or(100);
                let _ = write!(
                    out,
                    "\rreading Kafka: {read} of {total} records ({percent}%)   "
                );
                let _ = out.flush();
            }
        };
        let kafka = settings.kafka.clone();
        let limits = settings.limits.clone();
        let group = group.to_owned();
        // librdkafka blocks: keep it off the runtime's workers.
        tokio::task::block_in_place(|| read_stream(&kafka, &limits, &group, &mut report))?
    };
    let read_secs = started.elapsed().as_secs_f64();
    if let Some(out) = progress_out.as_mut() {
        let _ = write!(out, "\rreading Redis ...{:40}\r", "");
        let _ = out.flush();
    }
    let compared = Instant::now();
    let mut conn = metacache_client::connect::open(&settings.redis).await?;
    // The layout Redis says it has, not the one these settings would write.
    let keys = crate::pipeline::sink::redis::layout::stored(&mut conn, &settings.redis.key_prefix)
        .await?
        .map_err(VerifyError::Layout)?;
    let observed = read_redis(&mut conn, &keys).await?;
    let comparison = compare::compare(&expected, &observed, &keys);
    if let Some(out) = progress_out.as_mut() {
        let _ = write!(out, "\r{:60}\r", "");
        let _ = out.flush();
    }
    Ok(Report {
        group: group.to_owned(),
        partitions,
        records: expected.applied + expected.rejected,
        rejected: expected.rejected,
        read_secs,
        compare_secs: compared.elapsed().as_secs_f64(),
        not_caught_up,
        device_ttl: settings.devices.ttl_secs > 0,
        split_devices: split(expected.spread.split_devices()),
        split_namespaces: split(expected.spread.split_namespaces()),
        comparison,
    })
}

fn split(keys: Vec<(String, Vec<i32>)>) -> Vec<SplitKey> {
    keys.into_iter()
        .map(|(id, partitions)| SplitKey { id, partitions })
        .collect()
}

/// How many differences the text report lists.
const SHOWN: usize = 20;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "metacache verify: {} records ({} refused by the contract) from {} partitions, read in {:.1} s; Redis read and compared in {:.1} s",
            self.records, self.rejected, self.partitions, self.read_secs, self.compare_secs
        )?;
        if self.not_caught_up.is_empty() {
            writeln!(
                f,
                "group {:?} has committed every partition to its end",
                self.group
            )?;
        } else {
            writeln!(
                f,
                "group {:?} is not caught up in {} partitions; keys with records past the committed offset are pending, not compared:",
                self.group,
                self.not_caught_up.len()
            )?;
            for l in &self.not_caught_up {
                let committed = l
                    .committed
                    .map_or_else(|| "none".to_owned(), |c| c.to_string());
                writeln!(
                    f,
                    "  {}[{}]  committed {committed}, end {} ({} records not committed)",
                    l.topic,
                    l.partition,
                    l.end,
                    l.pending()
                )?;
            }
        }
        write!(f, "{}", self.comparison)?;
        if !self.comparison.unverifiable.is_empty() {
            writeln!(
                f,
                "unverifiable namespaces (their retained history starts with add or remove): {}",
                self.comparison.unverifiable.join(", ")
            )?;
        }
        if self.device_ttl {
            writeln!(
                f,
                "note: devices.ttl_secs is set, so expired device keys count as missing"
            )?;
        }
        for (what, keys) in [
            ("device ids", &self.split_devices),
            ("namespaces", &self.split_namespaces),
        ] {
            if keys.is_empty() {
                continue;
            }
            writeln!(
                f,
                "{} {what} have records on more than one partition: their events have no order, so neither the cache nor this check can say which came last (a producer that does not partition by key; see docs/reliability.md, \"One key, one partition\"):",
                keys.len()
            )?;
            for k in keys.iter().take(SHOWN) {
                let parts: Vec<String> = k.partitions.iter().map(|p| p.to_string()).collect();
                writeln!(f, "  {}  partitions {}", k.id, parts.join(", "))?;
            }
        }
        let total = self.comparison.total_differences();
        if total == 0 && self.split_keys() > 0 {
            return write!(
                f,
                "result: {} keys on more than one partition",
                self.split_keys()
            );
        }
        if total == 0 {
            return write!(f, "result: the cache matches the stream");
        }
        writeln!(
            f,
            "differences (the first {} of {total}; --json lists all):",
            SHOWN.min(total as usize)
        )?;
        for d in self.comparison.differences.iter().take(SHOWN) {
            let problem = match d.problem {
                compare::Problem::Missing => "missing",
                compare::Problem::Extra => "extra",
                compare::Problem::Different => "different",
            };
            writeln!(f, "  {problem:<9} {}", d.key)?;
            if let Some(e) = &d.expected {
                writeln!(f, "            expected {}", clip(e))?;
            }
            if let Some(a) = &d.actual {
                writeln!(f, "            actual   {}", clip(a))?;
            }
        }
        write!(f, "result: {total} differences")
    }
}

fn clip(text: &str) -> String {
    const MAX: usize = 160;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Valid events for the unit tests of this folder.
#[cfg(test)]
pub(crate) mod events {
    use crate::model::{self, Event, Limits, TopicKind};

    /// A keyed device upsert with this datatype name.
    pub fn device(id: &str, at: &str, name: &str) -> Event {
        let json = format!(
            r#"{{"device_id":"{id}","datatype_id":"t","datatype_name":"{name}","persist":true,"last_updated":"{at}"}}"#
        );
        model::decode(
            TopicKind::Device,
            Some(id.as_bytes()),
            Some(json.as_bytes()),
            &Limits::default(),
        )
        .expect("valid device")
    }

    /// A catalog event from its JSON.
    pub fn metric(json: &str) -> Event {
        model::decode_value(TopicKind::Metric, json.as_bytes(), &Limits::default())
            .expect("valid op")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_the_prefix_literally() {
        assert_eq!(glob_escape("app:[x]*?\\"), "app:\\[x\\]\\*\\?\\\\");
        assert_eq!(
            strip(b"p:ns#metric_names", b"p:", b"#metric_names").as_deref(),
            Some("ns")
        );
        assert_eq!(strip(b"q:ns#metric_names", b"p:", b"#metric_names"), None);
    }
}
