//! Redis Cluster (`redis.mode = "cluster"`), against a real cluster of redis-server
//! processes and the mock Kafka cluster: every event lands where the layout says with 1
//! and 16 index shards, and the cache ends with 0 keys wrong against the independent
//! model through a reshard and through a primary's failover, both mid-stream.

mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metacache_client::{CacheClient, ListOptions, Order};
use support::cluster::RedisCluster;
use support::feed::{ordered_producer, publish, Feed};
use support::model::{figure, generate, Model, StreamSpec};
use support::*;

fn cluster_settings(
    h: &Harness,
    cluster: &RedisCluster,
    shards: u32,
) -> metacache::config::Settings {
    let mut settings = h.settings();
    settings.redis.mode = "cluster".into();
    settings.redis.nodes = cluster.seeds();
    settings.devices.index_shards = shards;
    settings
}

/// The CLI against the cluster (settings from the environment, as in a pod).
fn cli(cluster: &RedisCluster, args: &[&str]) -> (Option<i32>, String, String) {
    outcome(
        metacache()
            .args(args)
            .env("METACACHE__REDIS__MODE", "cluster")
            .env("METACACHE__REDIS__NODES", cluster.seeds().join(",")),
    )
}

const CLI_READS: [&[&str]; 3] = [
    &[
        "get", "devices", "--limit", "25", "--offset", "40", "--json",
    ],
    &[
        "get",
        "devices",
        "--limit",
        "10",
        "--pattern",
        "dev-2?",
        "--json",
    ],
    &["get", "device", "dev-17", "--json"],
];

/// Records of a fault test published only once the fault is over.
const HELD_BACK: usize = 3_000;

fn device_writes(daemon: &Running) -> u64 {
    daemon
        .stats
        .topic(metacache::model::TopicKind::Device)
        .written
        .load(Relaxed)
}

/// Publishes all but the last [`HELD_BACK`] records, paced, and returns once `daemon` has
/// written 2,000 device events: the fault goes in then. The tail is held back until the
/// fault is over ([`finish_stream`]), so some of the stream is always written after it,
/// however slow the machine is.
async fn stream_until_writes_flow<'r>(
    h: &Harness,
    daemon: &Running,
    records: &'r [support::model::Rec],
) -> (Feed, &'r [support::model::Rec]) {
    let (head, tail) = records.split_at(records.len() - HELD_BACK);
    let feed = Feed::start(
        h.kafka.bootstrap(),
        Arc::new(head.to_vec()),
        100,
        Duration::from_millis(20),
    );
    wait_for(Duration::from_secs(60), "writes to flow", || async {
        device_writes(daemon) > 2_000
    })
    .await;
    (feed, tail)
}

/// The paced head to its end, then the held-back tail (per-key order kept).
async fn finish_stream(h: &Harness, feed: Feed, tail: &[support::model::Rec]) {
    feed.finish().await;
    support::feed::publish(&support::feed::ordered_producer(h.kafka.bootstrap()), tail).await;
}

/// Every page of the index, newest first, through the Rust client.
async fn pages(client: &CacheClient) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    loop {
        let page = client
            .list_devices(&ListOptions {
                limit: 97,
                offset: out.len(),
                order: Order::NewestFirst,
                pattern: None,
            })
            .await
            .expect("list_devices");
        let done = page.len() < 97;
        out.extend(page.into_iter().map(|e| (e.id, e.last_updated_ms)));
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_where_the_layout_says_with_one_and_sixteen_index_shards() {
    let h = Harness::start(4);
    let cluster = RedisCluster::start(3, 0);
    let records = Arc::new(generate(StreamSpec::new(23, 6_000)));
    support::feed::publish(&h.producer(), &records).await;
    let model = Model::of(records.iter());

    let mut reads = Vec::new();
    for shards in [1u32, 16] {
        cluster.flushall();
        let mut settings = cluster_settings(&h, &cluster, shards);
        settings.kafka.group_id = format!("cluster-layout-{shards}");
        let daemon = h.start_daemon(settings.clone());
        h.wait_all_committed(&settings.kafka.group_id, Duration::from_secs(90))
            .await;
        daemon.stop().await.expect("clean stop");

        model.compare_sharded(&mut cluster.client(), shards).report(
            &format!("cluster: 3 primaries, {shards} index shards"),
            records.len(),
            0,
            Duration::ZERO,
        );
        // The keys are spread over every primary, the index too once it is sharded.
        let per_node = cluster.keys_per_primary();
        assert!(per_node.values().all(|n| *n > 100), "{per_node:?}");
        let index_nodes: std::collections::BTreeSet<u16> = (0..shards)
            .map(|k| {
                let key = if shards == 1 {
                    "devices".to_owned()
                } else {
                    format!("devices:{{{k}}}")
                };
                cluster.owner_of(&key)
            })
            .collect();
        assert_eq!(
            index_nodes.len(),
            if shards == 1 { 1 } else { 3 },
            "{index_nodes:?}"
        );

        let client = CacheClient::from_settings(&settings.redis)
            .await
            .expect("cluster client");
        let info = client.cache_info().await.expect("cache_info");
        assert!(info.memory_usage_bytes.unwrap_or(0) > 0);
        let mut cli_out = Vec::new();
        for args in CLI_READS {
            let (code, out, err) = cli(&cluster, args);
            assert_eq!(code, Some(0), "{args:?}: {err}");
            cli_out.push(out);
        }
        reads.push((pages(&client).await, info.total_devices, cli_out));
        let ids: Vec<&String> = model.devices.keys().take(50).collect();
        let got = client.get_devices(&ids).await.expect("get_devices");
        // One MGET in standalone mode; here keys of many slots, split per node.
        assert_eq!(got.len(), ids.len(), "every device found");
        for id in ids {
            let stored = &model.devices[id].1;
            let want: serde_json::Value = serde_json::from_str(stored).expect("model JSON");
            assert_eq!(
                got[id].device_id,
                want["device_id"].as_str().expect("an id")
            );
        }
        let health = client.health().await;
        assert_eq!(
            health.status,
            metacache_client::Health::Healthy,
            "{}",
            health.message
        );
    }
    assert_eq!(reads[0], reads[1], "1 and 16 index shards read the same");
    assert_eq!(reads[0].1, model.devices.len() as u64);

    // reindex on a cluster (SCAN on every primary): 16 shards down to 1 and back.
    for (to, was) in [(1, 16), (16, 1)] {
        let (code, out, err) = cli(
            &cluster,
            &["reindex", "--index-shards", &to.to_string(), "--yes"],
        );
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains(&format!(
                "reindexed {} devices into {to} index shard(s) (was {was})",
                model.devices.len()
            )),
            "{out}"
        );
        model.compare_sharded(&mut cluster.client(), to).report(
            &format!("cluster: reindexed {was} -> {to}"),
            records.len(),
            0,
            Duration::ZERO,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_and_a_new_primary_mid_stream_end_with_no_key_wrong() {
    let h = Harness::start(4);
    let mut cluster = RedisCluster::start(3, 0);
    let records = Arc::new(generate(StreamSpec::new(29, 30_000)));
    let model = Model::of(records.iter());
    let settings = cluster_settings(&h, &cluster, 16);
    let before = cluster.primaries();
    let daemon = h.start_daemon(settings.clone());
    let started = Instant::now();
    let (feed, tail) = stream_until_writes_flow(&h, &daemon, &records).await;
    // Once writes flow: a third of one primary's slots to another, then a new primary
    // joins and takes a third of another's (the writer must find and connect to it).
    let ports: Vec<u16> = before.keys().copied().collect();
    let (a, b, c) = (ports[0], ports[1], ports[2]);
    let out = cluster.reshard(a, b, 1500);
    assert!(out.contains("Moving slot"), "{out}");
    let new = cluster.add_primary();
    let out = cluster.reshard(c, new, 1500);
    assert!(out.contains("Moving slot"), "{out}");
    let after = cluster.primaries();
    finish_stream(&h, feed, tail).await;
    h.wait_all_committed(&settings.kafka.group_id, Duration::from_secs(120))
        .await;
    let stats = daemon.stats.snapshot();
    daemon.stop().await.expect("clean stop");

    // The faults really happened: slots changed hands, a fourth primary serves some, and
    // the writer wrote to it (migrated keys arrive by RESTORE, the writer's by SET and
    // EVALSHA).
    assert_ne!(before, after, "the reshard moved slots");
    assert_eq!(after.get(&new), Some(&1500), "{after:?}");
    let stats_new =
        support::cluster::query_text(new, &["INFO", "commandstats"]).unwrap_or_default();
    assert!(
        stats_new.contains("cmdstat_set:") || stats_new.contains("cmdstat_evalsha:"),
        "the writer wrote to the new primary: {stats_new}"
    );
    // Redis counted the redirections it answered (a retry after a reconnect is no proof
    // that the writer was redirected).
    let redirected: Vec<String> = [a, b, c]
        .iter()
        .filter_map(|port| support::cluster::query_text(*port, &["INFO", "errorstats"]))
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.starts_with("errorstat_MOVED") || l.starts_with("errorstat_ASK"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !redirected.is_empty() && stats.retries > 0,
        "the writer was redirected (MOVED or ASK) at least once: errorstats {redirected:?}, retries {}",
        stats.retries
    );
    figure(&format!(
        "cluster reshard: slots before {before:?}, after {after:?}; writer retries {}",
        stats.retries
    ));
    model.compare_sharded(&mut cluster.client(), 16).report(
        "cluster: 1500 slots resharded, a primary added and given 1500 slots, mid-stream",
        records.len(),
        3,
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_stream_ends_with_no_key_wrong_once_its_replica_took_over() {
    let h = Harness::start(4);
    let mut cluster = RedisCluster::start(3, 1);
    let records = Arc::new(generate(StreamSpec::new(31, 30_000)));
    let model = Model::of(records.iter());
    let mut settings = cluster_settings(&h, &cluster, 16);
    // Acknowledged only once a replica has the writes: what a failover can lose otherwise.
    settings.redis.wait_replicas = 1;
    settings.redis.wait_timeout_ms = 500;
    let before = cluster.primaries();
    let daemon = h.start_daemon(settings.clone());
    let started = Instant::now();
    let (feed, tail) = stream_until_writes_flow(&h, &daemon, &records).await;
    let victim = *before.keys().next().expect("a primary");
    // /readyz while the node is down: it should name it.
    let http = daemon.http().await;
    let watch = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let (_, body) = readyz(http).await;
            let redis = body["checks"]["redis"].clone();
            if redis["message"]
                .to_string()
                .contains(&format!("127.0.0.1:{victim}"))
            {
                return Some(redis);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    cluster.node(victim).stop();
    cluster.wait_until(Duration::from_secs(30), "a replica to take over", |c| {
        let now = c.primaries();
        !now.contains_key(&victim) && now.len() == 3 && now.values().sum::<usize>() == 16384
    });
    let after = cluster.primaries();
    let named = watch.await.expect("watcher");
    assert!(named.is_some(), "/readyz named the primary that was down");
    figure(&format!(
        "cluster failover: /readyz said {}",
        named.unwrap_or_default()
    ));
    // The old primary comes back (as a pod would), empty, and becomes the new one's
    // replica: until then `WAIT 1` cannot be met and nothing is acknowledged.
    cluster
        .node(victim)
        .restart()
        .expect("the old primary restarts");
    cluster.wait_until(
        Duration::from_secs(60),
        "the old primary to rejoin as a replica",
        |c| c.replicas_synced() == 3,
    );
    finish_stream(&h, feed, tail).await;
    h.wait_all_committed(&settings.kafka.group_id, Duration::from_secs(120))
        .await;
    let stats = daemon.stats.snapshot();
    daemon.stop().await.expect("clean stop");

    assert!(stats.retries > 0, "the writer saw the primary go");
    figure(&format!(
        "cluster failover: primaries before {before:?}, after {after:?}; writer retries {}",
        stats.retries
    ));
    model.compare_sharded(&mut cluster.client(), 16).report(
        "cluster: a primary killed mid-stream, replica promoted",
        records.len(),
        1,
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_daemons_mid_stream_loses_nothing() {
    let h = Harness::start(4);
    let cluster = RedisCluster::start(3, 0);
    let records = Arc::new(generate(StreamSpec::new(37, 20_000)));
    let model = Model::of(records.iter());
    let settings = cluster_settings(&h, &cluster, 16);
    let first = h.start_daemon(settings.clone());
    let (feed, tail) = stream_until_writes_flow(&h, &first, &records).await;
    // A second member joins: the partitions are split, and each writer closes the other's
    // connections on every primary before writing under the new assignment.
    let second = h.start_daemon(settings.clone());
    wait_for(
        Duration::from_secs(60),
        "the second member to write",
        || async { device_writes(&second) > 0 },
    )
    .await;
    finish_stream(&h, feed, tail).await;
    h.wait_all_committed(&settings.kafka.group_id, Duration::from_secs(120))
        .await;
    let fenced =
        first.stats.writers_fenced.load(Relaxed) + second.stats.writers_fenced.load(Relaxed);
    second.stop().await.expect("clean stop");
    first.stop().await.expect("clean stop");

    // A fence ran. How many connections each closed depends on timing (a writer that
    // dropped its own connection under the revoke has new, not yet named ones), so the
    // per-primary CLIENT KILLs are shown, not asserted.
    assert!(fenced >= 1, "connections fenced: {fenced}");
    let kills: Vec<String> = cluster
        .primaries()
        .keys()
        .map(|port| {
            let stats =
                support::cluster::query_text(*port, &["INFO", "commandstats"]).unwrap_or_default();
            let calls = stats
                .lines()
                .find(|l| l.starts_with("cmdstat_client|kill:"))
                .and_then(|l| l.split("calls=").nth(1))
                .and_then(|v| v.split(',').next())
                .unwrap_or("? (Redis 6.2 counts CLIENT subcommands together)")
                .to_owned();
            format!(":{port} {calls}")
        })
        .collect();
    figure(&format!(
        "cluster rebalance: writer connections fenced {fenced}; CLIENT KILL calls per primary {kills:?}"
    ));
    model.compare_sharded(&mut cluster.client(), 16).report(
        "cluster: a second daemon joins mid-stream (rebalance, fences on every primary)",
        records.len(),
        1,
        Duration::ZERO,
    );
}

/// Over TLS (`rediss://` seeds, a private CA): the nodes found through `CLUSTER SLOTS` are
/// reached over TLS too. Not on Redis 6.2 (the matrix's build has no TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_nodes_are_all_written_over_tls() {
    let certs = tempfile::tempdir().expect("temp dir");
    support::certs::ca(certs.path(), "ca");
    support::certs::cert(
        certs.path(),
        "server",
        "localhost",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    let h = Harness::start(2);
    let cluster = RedisCluster::start_with(3, 0, Some(certs.path()));
    let records = Arc::new(generate(StreamSpec::new(41, 3_000)));
    support::feed::publish(&h.producer(), &records).await;
    let model = Model::of(records.iter());
    let mut settings = cluster_settings(&h, &cluster, 16);
    // One seed, over TLS: the other primaries come from CLUSTER SLOTS.
    let (_, tls) = cluster.tls_ports.iter().next().expect("a TLS port");
    settings.redis.nodes = vec![format!("rediss://127.0.0.1:{tls}")];
    settings.redis.tls.ca_file = certs.path().join("ca.pem").display().to_string();
    let daemon = h.start_daemon(settings.clone());
    h.wait_all_committed(&settings.kafka.group_id, Duration::from_secs(60))
        .await;
    // Every primary has the writer's connection on its TLS port (CLIENT LIST's laddr).
    for (plain, tls) in &cluster.tls_ports {
        let list = support::cluster::query_text(*plain, &["CLIENT", "LIST"]).unwrap_or_default();
        let writer: Vec<&str> = list
            .lines()
            .filter(|l| l.contains("name=metacache-writer"))
            .collect();
        assert!(
            !writer.is_empty()
                && writer
                    .iter()
                    .all(|l| l.contains(&format!("laddr=127.0.0.1:{tls} "))),
            "primary {plain}: the writer is connected over TLS port {tls}: {list}"
        );
    }
    daemon.stop().await.expect("clean stop");

    model.compare_sharded(&mut cluster.client(), 16).report(
        "cluster over TLS",
        records.len(),
        0,
        Duration::ZERO,
    );
}

/// With a TTL, the janitor walks every index shard on every primary and removes the
/// entries whose device keys expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_clears_expired_entries_from_every_shard_on_every_primary() {
    use redis::Commands;
    let h = Harness::start(2);
    let cluster = RedisCluster::start(3, 0);
    let mut settings = cluster_settings(&h, &cluster, 16);
    settings.devices.ttl_secs = 2;
    settings.janitor.interval_secs = 1;
    let daemon = h.start_daemon(settings);
    let ids = produce_devices(&h, 60).await;
    daemon.wait_finished(60, Duration::from_secs(30)).await;
    let shards: std::collections::BTreeSet<String> = ids
        .iter()
        .map(|id| support::model::index_key(id, 16))
        .collect();
    let nodes: std::collections::BTreeSet<u16> =
        shards.iter().map(|k| cluster.owner_of(k)).collect();
    assert_eq!(nodes.len(), 3, "the shards used are on every primary");
    let mut r = cluster.client();
    let indexed: u64 = shards.iter().map(|k| r.zcard::<_, u64>(k).unwrap()).sum();
    assert_eq!(indexed, 60, "every device indexed before it expires");
    wait_for(
        Duration::from_secs(20),
        "every shard's entries to go",
        || async {
            let mut r = cluster.client();
            shards.iter().all(|k| r.zcard::<_, u64>(k).unwrap() == 0)
        },
    )
    .await;
    daemon.stop().await.expect("clean stop");
}

/// An interrupted `redis-cli --cluster reshard` leaves slots `MIGRATING` on their source
/// and `IMPORTING` on their target. `CLUSTER SLOTS` keeps naming the source until the
/// migration is finished, so reading the map again never helps: the source answers `ASK`
/// for every key it does not hold. The writer follows `ASK` while it replays one batch at
/// a time, so writes go on (no partition is pinned until an operator runs `--cluster
/// fix`), and per-key order holds: 0 keys wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_left_half_migrated_does_not_stop_the_writes() {
    let h = Harness::start(4);
    let cluster = RedisCluster::start(3, 0);
    let records = generate(StreamSpec::new(37, 6_000));
    let model = Model::of(records.iter());
    let settings = cluster_settings(&h, &cluster, 16);
    let ports: Vec<u16> = cluster.primaries().keys().copied().collect();
    let (source, target) = (ports[0], ports[1]);
    let (source_id, target_id) = (cluster.id_of(source), cluster.id_of(target));
    // Every slot of the source half-migrated to the target.
    let Some(redis::Value::Array(ranges)) = support::cluster::query(source, &["CLUSTER", "SLOTS"])
    else {
        panic!("CLUSTER SLOTS");
    };
    let mut slots = Vec::new();
    for range in ranges {
        if let redis::Value::Array(f) = range {
            if let (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(node)) =
                (&f[0], &f[1], &f[2])
            {
                if node[1] == redis::Value::Int(i64::from(source)) {
                    slots.extend(*a..=*b);
                }
            }
        }
    }
    assert!(slots.len() > 1000, "the source serves slots: {slots:?}");
    let conn = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection())
            .expect("node connection")
    };
    let (mut at_source, mut at_target) = (conn(source), conn(target));
    for slot in &slots {
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&source_id)
            .query::<()>(&mut at_target)
            .expect("IMPORTING");
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&target_id)
            .query::<()>(&mut at_source)
            .expect("MIGRATING");
    }

    let daemon = h.start_daemon(settings.clone());
    let started = Instant::now();
    publish(&ordered_producer(h.kafka.bootstrap()), &records).await;
    h.wait_all_committed(&settings.kafka.group_id, Duration::from_secs(120))
        .await;
    daemon.stop().await.expect("clean stop");

    // The fault really happened: the source answered ASK, and the target holds keys of
    // slots the map still gives to the source.
    let errors = support::cluster::query_text(source, &["INFO", "errorstats"]).unwrap_or_default();
    assert!(
        errors.contains("errorstat_ASK"),
        "no ASK answered: {errors}"
    );
    let held: i64 = match support::cluster::query(target, &["DBSIZE"]) {
        Some(redis::Value::Int(n)) => n,
        other => panic!("DBSIZE: {other:?}"),
    };
    figure(&format!(
        "cluster half-migrated: {} slots MIGRATING; the source answered {}; the target holds {held} keys",
        slots.len(),
        errors
            .lines()
            .find(|l| l.starts_with("errorstat_ASK"))
            .unwrap_or("no ASK")
    ));
    model.compare_sharded(&mut cluster.client(), 16).report(
        "cluster: a third of the slots left half-migrated",
        records.len(),
        1,
        started.elapsed(),
    );
}
