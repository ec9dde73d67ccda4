//! The writer decides most device upserts itself (older → skipped, newer → plain `SET`)
//! from what it wrote before; these tests hold it to never rolling a device back when
//! someone else may have written the key: after a rebalance, for records without a Kafka
//! key, and for a batch that was planned before a rebalance and is retried after it.
//! The writer runs in-process against a real redis-server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use metacache::config::RedisSettings;
use metacache::model::{self, Event, Limits, TopicKind};
use metacache::pipeline::dead_letter::DeadLetter;
use metacache::pipeline::ownership::Ownership;
use metacache::pipeline::record::{Ack, Chunk, Origin};
use metacache::pipeline::sink::redis::connect::connect;
use metacache::pipeline::sink::redis::plan::{Planner, Ttls};
use metacache::pipeline::sink::redis::retry::RetryPolicy;
use metacache::pipeline::sink::redis::versions::KnownVersions;
use metacache::pipeline::sink::redis::writer::{Connector, Writer, WriterConfig, WriterLinks};
use metacache::pipeline::sink::redis::KeyLayout;
use metacache::stats::Stats;
use metacache::tools::embedded::{Apply, EmbeddedRedis};
use redis::Commands;
use tokio::sync::mpsc;

use support::{device_json, init_logging, wait_for};

struct Rig {
    redis: EmbeddedRedis,
    ownership: Arc<Ownership>,
    generation: u64,
    stats: Arc<Stats>,
    records: flume::Sender<Chunk>,
    acks: flume::Receiver<Ack>,
    _dead: mpsc::Receiver<DeadLetter>,
    next_offset: i64,
}

impl Rig {
    async fn start(retry: RetryPolicy) -> Rig {
        init_logging();
        let redis = EmbeddedRedis::start().unwrap_or_else(|e| panic!("{e}"));
        let url = redis.url();
        Self::start_at(retry, redis, url).await
    }

    /// A writer that reaches `redis` through `url` (a proxy, say).
    async fn start_at(retry: RetryPolicy, redis: EmbeddedRedis, url: String) -> Rig {
        init_logging();
        let settings = RedisSettings {
            url,
            ..RedisSettings::default()
        };
        let conn = connect(&settings).await.expect("redis connects");
        let connector: Connector<_> = Arc::new(move || {
            let settings = settings.clone();
            Box::pin(async move { connect(&settings).await })
        });
        let ownership = Arc::new(Ownership::new());
        let generation = ownership.assign((TopicKind::Device, 0));
        let stats = Arc::new(Stats::default());
        let (records, records_rx) = flume::bounded(64);
        let (acks_tx, acks) = flume::unbounded();
        let (dead_tx, dead) = mpsc::channel(64);
        let writer = Writer::new(
            conn,
            connector,
            Planner::new(KeyLayout::new(""), Ttls::default()),
            WriterConfig {
                max_batch: 64,
                linger: Duration::from_millis(1),
                max_in_flight: 2,
                retry,
                tail: Default::default(),
            },
            KnownVersions::new(1000, 0),
            Limits::default(),
            WriterLinks {
                ownership: Arc::clone(&ownership),
                stats: Arc::clone(&stats),
                acks: acks_tx,
                dead_letters: dead_tx,
                moved: None,
            },
        );
        tokio::spawn(writer.run(records_rx));
        // This rig plays the source: its one partition is owned for the whole test, so
        // every proof of ownership the writer asks for (on each new connection) holds.
        let source = Arc::clone(&ownership);
        tokio::spawn(async move {
            loop {
                if let Some(ticket) = source.proof_requested() {
                    source.answer_proof(ticket, Ok(()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Rig {
            redis,
            ownership,
            generation,
            stats,
            records,
            acks,
            _dead: dead,
            next_offset: 0,
        }
    }

    /// Hands the writer one device event, as the source would (keyed or not), and waits
    /// for Redis to acknowledge it.
    async fn write(&mut self, id: &str, last_updated: &str, keyed: bool) {
        let key = keyed.then_some(id);
        self.write_with_key(id, last_updated, key).await;
    }

    async fn write_with_key(&mut self, id: &str, last_updated: &str, key: Option<&str>) {
        let offset = self.send_with_key(id, last_updated, key);
        self.acked(offset).await;
    }

    fn send(&mut self, id: &str, last_updated: &str, keyed: bool) -> i64 {
        self.send_with_key(id, last_updated, keyed.then_some(id))
    }

    /// Several keyed device events in one chunk, so the writer takes them into one batch;
    /// returns the last offset.
    fn send_together(&mut self, events: &[(&str, &str)]) -> i64 {
        let mut chunk = Chunk::new();
        for (id, last_updated) in events {
            let value = device_json(id, "temperature", last_updated).into_bytes();
            let origin = Origin {
                topic: TopicKind::Device,
                partition: 0,
                offset: self.next_offset,
                generation: self.generation,
            };
            self.next_offset += 1;
            chunk.push(
                origin,
                self.ownership.epoch(),
                Some(id.as_bytes()),
                Some(&value),
            );
        }
        self.records.try_send(chunk).expect("room in the channel");
        self.next_offset - 1
    }

    fn send_with_key(&mut self, id: &str, last_updated: &str, key: Option<&str>) -> i64 {
        let value = device_json(id, "temperature", last_updated).into_bytes();
        self.send_record(key.map(str::as_bytes), Some(&value))
    }

    /// One device-topic record in a chunk of its own; returns its offset.
    fn send_record(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> i64 {
        let offset = self.next_offset;
        self.next_offset += 1;
        let origin = Origin {
            topic: TopicKind::Device,
            partition: 0,
            offset,
            generation: self.generation,
        };
        let mut chunk = Chunk::new();
        chunk.push(origin, self.ownership.epoch(), key, value);
        self.records.try_send(chunk).expect("room in the channel");
        offset
    }

    async fn acked(&self, offset: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ack = tokio::time::timeout_at(deadline, self.acks.recv_async())
                .await
                .unwrap_or_else(|_| panic!("offset {offset} not acknowledged in time"))
                .expect("writer alive");
            if ack.done.iter().any(|o| o.offset == offset) {
                return;
            }
        }
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.redis.url())
            .and_then(|c| c.get_connection())
            .expect("redis connects")
    }

    /// The `last_updated` Redis holds for the device.
    fn stored(&self, id: &str) -> String {
        let json: String = self.conn().get(format!("device:{id}")).expect("device key");
        let v: serde_json::Value = serde_json::from_str(&json).expect("stored JSON");
        v["last_updated"].as_str().unwrap_or_default().to_owned()
    }

    /// Someone else writes the device (through the guard, as another consumer would).
    fn written_elsewhere(&self, id: &str, last_updated: &str) {
        let value = device_json(id, "temperature", last_updated);
        let Ok(event @ Event::DeviceUpsert(_)) = model::decode(
            TopicKind::Device,
            None,
            Some(value.as_bytes()),
            &Limits::default(),
        ) else {
            panic!("valid device")
        };
        self.redis.apply("", &[event]).expect("written");
    }

    /// Calls of `command` Redis has run (INFO commandstats).
    fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

const T10: &str = "2026-11-22T10:00:10Z";
const T15: &str = "2026-11-22T10:00:15Z";
const T20: &str = "2026-11-22T10:00:20Z";
const T25: &str = "2026-11-22T10:00:25Z";
const T30: &str = "2026-11-22T10:00:30Z";
const T40: &str = "2026-11-22T10:00:40Z";
const T50: &str = "2026-11-22T10:00:50Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_the_writer_can_vouch_for_skip_the_script_and_the_others_do_not() {
    let mut rig = Rig::start(RetryPolicy::new(
        Duration::from_millis(20),
        Duration::from_millis(200),
    ))
    .await;

    // First sight: the guard script decides.
    rig.write("d", T10, true).await;
    assert_eq!(rig.stored("d"), "2026-11-22T10:00:10.000Z");
    let scripts = rig.calls("evalsha");
    assert_eq!(scripts, 1);

    // Known now: newer is a plain SET, older is skipped without asking Redis.
    let sets = rig.calls("set");
    rig.write("d", T20, true).await;
    rig.write("d", T15, true).await;
    assert_eq!(rig.stored("d"), "2026-11-22T10:00:20.000Z");
    assert_eq!(rig.calls("evalsha"), scripts);
    assert_eq!(rig.calls("set"), sets + 1);
    assert_eq!(rig.stats.snapshot().devices.stale, 1);

    // After a rebalance another consumer may have written the key: the guard decides
    // again, and the older update does not roll the device back.
    rig.written_elsewhere("d", T40);
    rig.ownership.rebalancing();
    rig.write("d", T30, true).await;
    assert_eq!(rig.stored("d"), "2026-11-22T10:00:40.000Z");
    assert_eq!(rig.stats.snapshot().devices.stale, 2);

    // A record without a Kafka key may share the device with another partition: guarded.
    // So may one with an empty key (the default partitioner spreads those at random).
    let scripts = rig.calls("evalsha");
    rig.write("e", T10, false).await;
    rig.write("e", T20, false).await;
    rig.write_with_key("g", T10, Some("")).await;
    rig.write_with_key("g", T20, Some("")).await;
    assert_eq!(rig.calls("evalsha"), scripts + 4);

    // The index follows the newest update of each device.
    let score: i64 = rig.conn().zscore("devices", "d").expect("indexed");
    assert_eq!(score, 1_795_341_640_000);
    let score: i64 = rig.conn().zscore("devices", "e").expect("indexed");
    assert_eq!(score, 1_795_341_620_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_planned_before_a_rebalance_is_guarded_when_it_is_retried_after_it() {
    // A long retry delay leaves time to change the world between two attempts.
    let mut rig = Rig::start(RetryPolicy::new(
        Duration::from_secs(2),
        Duration::from_secs(2),
    ))
    .await;
    rig.write("d", T10, true).await;
    rig.write("d", T20, true).await;
    // Redis goes away; the next update is planned as a plain SET and fails.
    rig.redis.stop();
    let offset = rig.send("d", T30, true);
    let stats = Arc::clone(&rig.stats);
    wait_for(Duration::from_secs(10), "the write to fail once", || {
        let stats = Arc::clone(&stats);
        async move { stats.snapshot().retries > 0 }
    })
    .await;

    // Meanwhile the partition moved: the new owner wrote something newer.
    rig.redis.restart().expect("redis restarts");
    rig.written_elsewhere("d", T50);
    rig.ownership.rebalancing();

    rig.acked(offset).await;
    assert_eq!(rig.stored("d"), "2026-11-22T10:00:50.000Z");
    // The other writer's script and the retried one; the only SET is the one inside the
    // other writer's script (commands run by scripts count too).
    assert_eq!(rig.calls("evalsha"), 2, "the retry went through the guard");
    assert_eq!(rig.calls("set"), 1);
    assert_eq!(rig.stats.snapshot().devices.stale, 1);
}

/// Redis forgot: the writer must forget too. Each case leaves Redis without the newest
/// write the writer made; a later, older update must then be written (as the guard would
/// write it to what Redis holds now), not skipped on the strength of what the writer
/// remembers.
async fn older_update_after(forget: impl FnOnce(&mut Rig)) -> (Rig, String, bool) {
    let mut rig = Rig::start(RetryPolicy::new(
        Duration::from_millis(20),
        Duration::from_millis(200),
    ))
    .await;
    rig.write("d", T10, true).await;
    rig.write("d", T30, true).await;
    assert_eq!(rig.stored("d"), "2026-11-22T10:00:30.000Z");
    forget(&mut rig);
    let resets = rig
        .stats
        .guard_cache_resets
        .load(std::sync::atomic::Ordering::Relaxed);
    rig.write("d", T20, true).await;
    let reset = rig
        .stats
        .guard_cache_resets
        .load(std::sync::atomic::Ordering::Relaxed)
        > resets;
    let stored = rig.stored("d");
    (rig, stored, reset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_cache_forgets_when_redis_restarts_empty() {
    let (rig, stored, reset) = older_update_after(|rig| {
        rig.redis.restart().expect("redis restarts");
        assert_eq!(rig.conn().exists::<_, bool>("device:d").ok(), Some(false));
    })
    .await;
    assert_eq!(stored, "2026-11-22T10:00:20.000Z");
    assert_eq!(rig.stats.snapshot().devices.stale, 0);
    assert!(reset, "the device cache was emptied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_cache_forgets_after_flushall() {
    let (rig, stored, reset) = older_update_after(|rig| {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut rig.conn())
            .expect("FLUSHALL");
    })
    .await;
    assert_eq!(stored, "2026-11-22T10:00:20.000Z");
    assert_eq!(rig.stats.snapshot().devices.stale, 0);
    assert!(reset, "the device cache was emptied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_cache_forgets_when_a_lagging_replica_is_promoted() {
    use support::proxy::HoldingProxy;
    let primary = EmbeddedRedis::start().unwrap_or_else(|e| panic!("{e}"));
    let port = primary.port().to_string();
    let replica = EmbeddedRedis::start_with(&["--replicaof", "127.0.0.1", &port])
        .unwrap_or_else(|e| panic!("{e}"));
    // The service address the writer uses, moved by the failover.
    let proxy = HoldingProxy::start(primary.port()).await;
    let mut rig = Rig::start_at(
        RetryPolicy::new(Duration::from_millis(20), Duration::from_millis(200)),
        primary,
        proxy.url(),
    )
    .await;
    let replica_conn = || {
        redis::Client::open(replica.url())
            .and_then(|c| c.get_connection())
            .expect("replica connects")
    };
    rig.write("d", T10, true).await;
    wait_for(
        Duration::from_secs(10),
        "the replica to have d@10",
        || async {
            replica_conn()
                .get::<_, Option<String>>("device:d")
                .ok()
                .flatten()
                .is_some()
        },
    )
    .await;
    // The replica stops following before the newest write, and is promoted.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut replica_conn())
        .expect("promote");
    rig.write("d", T30, true).await;
    assert_eq!(rig.stored("d"), "2026-11-22T10:00:30.000Z");
    let resets_before = rig
        .stats
        .guard_cache_resets
        .load(std::sync::atomic::Ordering::Relaxed);
    proxy.switch_to(replica.port());
    rig.write("d", T20, true).await;
    // The failover really happened: the writer noticed a new connection and forgot.
    let resets = rig
        .stats
        .guard_cache_resets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        resets > resets_before,
        "the writer never saw the new server"
    );
    let json: String = replica_conn().get("device:d").expect("device key");
    let v: serde_json::Value = serde_json::from_str(&json).expect("stored JSON");
    assert_eq!(v["last_updated"], "2026-11-22T10:00:20.000Z");
    assert_eq!(rig.stats.snapshot().devices.stale, 0);
}

/// Go-back-N plans a batch again when what it was planned on is void, while the batches
/// behind it were planned before that and still write the same devices. Here batch 1 (`e`
/// decided locally, `d` through the guard) and batch 2 (`d` newer, through the guard) are
/// on the wire when the connection is cut. The replay plans batch 1 again, which makes
/// batch 2's answer for `d` no longer the latest; if batch 1's answer taught the writer
/// that `d` holds 10:00:20 while Redis holds batch 2's 10:00:30, a later 10:00:25 would be
/// written as a plain SET over the newer value. A batch planned again is planned without
/// trust, so its answers teach nothing, and the later update goes through the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_plans_a_batch_again_plans_every_later_one_again() {
    use support::proxy::HoldingProxy;
    let redis = EmbeddedRedis::start().unwrap_or_else(|e| panic!("{e}"));
    let proxy = HoldingProxy::start(redis.port()).await;
    let port = redis.port();
    let mut rig = Rig::start_at(
        RetryPolicy::new(Duration::from_millis(20), Duration::from_millis(200)),
        redis,
        proxy.url(),
    )
    .await;
    rig.write("e", T10, true).await;
    proxy.hold();
    rig.send_together(&[("e", T15), ("d", T20)]);
    let stats = Arc::clone(&rig.stats);
    let proxied = &proxy;
    wait_for(Duration::from_secs(10), "batch 1 on the wire", || {
        let stats = Arc::clone(&stats);
        async move { stats.snapshot().in_flight == 1 && proxied.bytes_held() > 0 }
    })
    .await;
    let last = rig.send("d", T30, true);
    let stats = Arc::clone(&rig.stats);
    wait_for(Duration::from_secs(10), "batch 2 on the wire", || {
        let stats = Arc::clone(&stats);
        async move { stats.snapshot().in_flight == 2 }
    })
    .await;
    // The connection is cut with both batches unanswered; nothing of them reached Redis.
    let connections = proxy.connections();
    proxy.switch_to(port);
    proxy.release();
    rig.acked(last).await;
    assert!(
        rig.stats.snapshot().retries > 0,
        "the batches were not retried"
    );
    assert!(
        proxy.connections() > connections,
        "the writer did not reconnect"
    );
    assert_eq!(rig.stored("d"), "2026-11-22T10:00:30.000Z");

    rig.write("d", T25, true).await;
    assert_eq!(
        rig.stored("d"),
        "2026-11-22T10:00:30.000Z",
        "an older update won"
    );
    assert_eq!(rig.stats.snapshot().devices.stale, 1);
}

impl Rig {
    /// A keyed Kafka tombstone for the device.
    fn send_tombstone(&mut self, id: &str) -> i64 {
        self.send_record(Some(id.as_bytes()), None)
    }
}

/// An upsert after a tombstone lands whatever the device cache knew before the
/// tombstone, in flight or acknowledged (the shape of the rollback seen once in
/// faults_kafka: the newest event after a tombstone went missing, the events after it
/// were written to an empty key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_after_a_tombstone_lands_whatever_was_known_before_it() {
    let mut rig = Rig::start(RetryPolicy::new(
        Duration::from_millis(10),
        Duration::from_millis(100),
    ))
    .await;
    for round in 0..50 {
        let id = format!("dev-{round}");
        // Learnt: the device holds 10:55.
        rig.write(&id, "2026-11-22T10:55:13.274Z", true).await;
        // In flight together or one by one: the tombstone, the newer-than-everything-after
        // event, older ones.
        if round % 2 == 0 {
            rig.send_tombstone(&id);
            rig.send(&id, "2026-11-22T10:50:15.438Z", true);
            rig.send(&id, "2026-11-22T10:12:46.972Z", true);
            let last = rig.send(&id, "2026-11-22T10:25:46.044Z", true);
            rig.acked(last).await;
        } else {
            rig.send(&id, "2026-11-22T10:35:54.782Z", true);
            rig.send_tombstone(&id);
            rig.send(&id, "2026-11-22T10:50:15.438Z", true);
            let last = rig.send(&id, "2026-11-22T10:25:46.044Z", true);
            rig.acked(last).await;
        }
        assert_eq!(rig.stored(&id), "2026-11-22T10:50:15.438Z", "round {round}");
    }
}
