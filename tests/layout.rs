//! The layout descriptor and the sharded device index (`devices.index_shards`), against a
//! real redis-server and the mock Kafka cluster: one stream written with 1 and with 16
//! index shards reads the same through the client and the CLI; a daemon whose shard
//! count disagrees with the stored descriptor refuses to start; `metacache reindex` moves
//! a cache between shard counts and repairs a damaged index.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metacache::tools::embedded::EmbeddedRedis;
use metacache_client::{CacheClient, ListOptions, Order};
use redis::Commands;
use support::model::{generate, Model, StreamSpec};
use support::*;

fn connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis connection")
}

fn descriptor(url: &str) -> HashMap<String, String> {
    connection(url)
        .hgetall("metacache:layout")
        .expect("HGETALL metacache:layout")
}

/// Every page of the index in `order`, `limit` at a time, optionally filtered.
async fn all_pages(
    client: &CacheClient,
    order: Order,
    limit: usize,
    pattern: Option<&str>,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    loop {
        let page = client
            .list_devices(&ListOptions {
                limit,
                offset: out.len(),
                order,
                pattern: pattern.map(str::to_owned),
            })
            .await
            .expect("list_devices");
        let done = page.len() < limit;
        out.extend(page.into_iter().map(|e| (e.id, e.last_updated_ms)));
        if done {
            return out;
        }
    }
}

fn cli(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    outcome(metacache().args(args).args(["--redis-url", url]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_sixteen_index_shards_read_the_same_and_reindex_moves_between_them() {
    let h = Harness::start(4);
    let records = Arc::new(generate(StreamSpec::new(11, 6_000)));
    let producer = h.producer();
    support::feed::publish(&producer, &records).await;
    let model = Model::of(records.iter());

    // The same stream into two caches: the harness's Redis with one index key, another
    // redis-server with sixteen shards.
    let sharded_redis = EmbeddedRedis::start().expect("redis-server");
    let one_url = h.redis.url();
    let sixteen_url = sharded_redis.url();
    let mut daemons = Vec::new();
    for (shards, url, group) in [(1, &one_url, "layout-1"), (16, &sixteen_url, "layout-16")] {
        let mut settings = h.settings();
        settings.devices.index_shards = shards;
        settings.redis.url = url.clone();
        settings.kafka.group_id = group.into();
        daemons.push((group, h.start_daemon(settings)));
    }
    for (group, _) in &daemons {
        h.wait_all_committed(group, Duration::from_secs(60)).await;
    }
    for (_, daemon) in daemons {
        daemon.stop().await.expect("clean stop");
    }

    // What each Redis holds, against the model.
    model.compare_sharded(&mut connection(&one_url), 1).report(
        "layout: 1 index shard",
        records.len(),
        0,
        Duration::ZERO,
    );
    model
        .compare_sharded(&mut connection(&sixteen_url), 16)
        .report("layout: 16 index shards", records.len(), 0, Duration::ZERO);
    assert_eq!(descriptor(&one_url)["index_shards"], "1");
    assert_eq!(descriptor(&sixteen_url)["index_shards"], "16");
    assert_eq!(descriptor(&sixteen_url)["version"], "1");
    let used: usize = (0..16)
        .filter(|k| {
            connection(&sixteen_url)
                .exists(format!("devices:{{{k}}}"))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(used, 16, "every shard holds devices");
    assert!(!connection(&sixteen_url)
        .exists::<_, bool>("devices")
        .unwrap());

    // The client reads the descriptor and gives the same answers from both.
    let one = CacheClient::connect(&one_url).await.expect("client");
    let sixteen = CacheClient::connect(&sixteen_url).await.expect("client");
    assert_eq!(sixteen.index_keys().await.unwrap().len(), 16);
    assert_eq!(one.index_keys().await.unwrap(), ["devices"]);
    let (a, b) = (
        one.cache_info().await.unwrap(),
        sixteen.cache_info().await.unwrap(),
    );
    assert_eq!(a.total_devices, model.devices.len() as u64);
    assert_eq!(
        (
            a.total_devices,
            &a.oldest_entry,
            &a.newest_entry,
            a.metric_namespaces
        ),
        (
            b.total_devices,
            &b.oldest_entry,
            &b.newest_entry,
            b.metric_namespaces
        )
    );
    for order in [Order::NewestFirst, Order::OldestFirst] {
        for (limit, pattern) in [(97, None), (1000, None), (13, Some("dev-1*"))] {
            let from_one = all_pages(&one, order, limit, pattern).await;
            assert_eq!(
                from_one,
                all_pages(&sixteen, order, limit, pattern).await,
                "{order:?} pages of {limit}, pattern {pattern:?}"
            );
            if pattern.is_none() {
                assert_eq!(from_one.len(), model.devices.len());
            }
        }
    }

    // And through the CLI.
    for args in [
        &[
            "get", "devices", "--limit", "25", "--offset", "40", "--json",
        ][..],
        &[
            "get",
            "devices",
            "--limit",
            "10",
            "--pattern",
            "dev-2?",
            "--json",
        ][..],
    ] {
        let (code_one, out_one, err_one) = cli(&one_url, args);
        let (code_sixteen, out_sixteen, _) = cli(&sixteen_url, args);
        assert_eq!(code_one, Some(0), "{err_one}");
        assert_eq!(
            (code_one, &out_one),
            (code_sixteen, &out_sixteen),
            "{args:?}"
        );
    }

    // reindex: refused while a writer is signed in (a crashed one needs --force).
    let _: () = connection(&sixteen_url)
        .hset("metacache:writers", "ghost", 1)
        .unwrap();
    let (code, _, err) = cli(&sixteen_url, &["reindex", "--index-shards", "1", "--yes"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("1 writer(s) are signed in") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        descriptor(&sixteen_url)["index_shards"],
        "16",
        "nothing changed"
    );
    let _: () = connection(&sixteen_url)
        .hdel("metacache:writers", "ghost")
        .unwrap();
    // Sixteen shards down to one, and back.
    let (code, out, err) = cli(&sixteen_url, &["reindex", "--index-shards", "1", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "reindexed {} devices into 1 index shard(s) (was 16); removed 16 old index key(s)",
            model.devices.len()
        )),
        "{out}"
    );
    model
        .compare_sharded(&mut connection(&sixteen_url), 1)
        .report(
            "layout: reindexed 16 -> 1",
            records.len(),
            0,
            Duration::ZERO,
        );
    assert_eq!(descriptor(&sixteen_url)["index_shards"], "1");
    // A damaged index (an entry lost, a stale score, an entry of no device) is repaired.
    let mut conn = connection(&sixteen_url);
    let (victim, _) = model.devices.iter().next().expect("a device");
    let _: () = conn.zrem("devices", victim).unwrap();
    let _: () = conn.zadd("devices", "ghost", 1).unwrap();
    let (other, _) = model.devices.iter().nth(1).expect("two devices");
    let _: () = conn.zadd("devices", other, 5).unwrap();
    assert!(
        !model.compare_sharded(&mut conn, 1).wrong.is_empty(),
        "the damage shows"
    );
    let (code, _, err) = cli(&sixteen_url, &["reindex", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    model.compare_sharded(&mut conn, 1).report(
        "layout: repaired",
        records.len(),
        0,
        Duration::ZERO,
    );
    let (code, _, err) = cli(&sixteen_url, &["reindex", "--index-shards", "16", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    model.compare_sharded(&mut conn, 16).report(
        "layout: reindexed 1 -> 16",
        records.len(),
        0,
        Duration::ZERO,
    );
    // A client connected after the reindex reads the new layout at once (one connected
    // before reads the old keys until its 30 s refresh: README "Index shards").
    let fresh = CacheClient::connect(&sixteen_url).await.expect("client");
    assert_eq!(
        all_pages(&fresh, Order::NewestFirst, 500, None).await,
        all_pages(&one, Order::NewestFirst, 500, None).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_shard_count_disagrees_with_the_stored_layout_refuses_to_start() {
    let h = Harness::start(1);
    let url = h.redis.url();
    let mut conn = connection(&url);
    let _: () = conn
        .hset_multiple(
            "metacache:layout",
            &[("version", "1"), ("key_prefix", ""), ("index_shards", "16")],
        )
        .unwrap();
    h.produce(
        DEVICES,
        &[(
            Some("dev-1"),
            Some(r#"{"device_id":"dev-1","datatype_id":"dt","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#),
        )],
    )
    .await;
    let daemon = h.start_daemon(h.settings());
    let result = tokio::time::timeout(Duration::from_secs(30), daemon.handle)
        .await
        .expect("the daemon stops by itself")
        .expect("no panic");
    let error = result.expect_err("refused").to_string();
    assert!(
        error.contains("metacache:layout")
            && error.contains("index_shards 16 (configured devices.index_shards = 1)")
            && error.contains("metacache reindex"),
        "{error}"
    );
    // Nothing was written under the other layout.
    assert!(!conn.exists::<_, bool>("device:dev-1").unwrap());
    assert!(!conn.exists::<_, bool>("devices").unwrap());
    assert_eq!(descriptor(&url)["index_shards"], "16");

    // A damaged descriptor is refused too, naming the field.
    let _: () = conn
        .hset("metacache:layout", "index_shards", "many")
        .unwrap();
    let mut settings = h.settings();
    settings.devices.index_shards = 16;
    let daemon = h.start_daemon(settings);
    let error = tokio::time::timeout(Duration::from_secs(30), daemon.handle)
        .await
        .expect("the daemon stops by itself")
        .expect("no panic")
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("`index_shards` is not a whole number"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_layout_is_described_again_after_redis_lost_its_data() {
    described_again_after_data_loss(16).await;
}

/// With one index key too: otherwise a daemon started now with shards would be let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_key_layout_is_described_again_after_redis_lost_its_data() {
    described_again_after_data_loss(1).await;
}

async fn described_again_after_data_loss(shards: u32) {
    let h = Harness::start(1);
    let url = h.redis.url();
    let mut settings = h.settings();
    settings.devices.index_shards = shards;
    let daemon = h.start_daemon(settings);
    let device = |id: &str| device_json(id, "t", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("before"), Some(&device("before")))])
        .await;
    daemon.wait_finished(1, Duration::from_secs(30)).await;
    assert_eq!(descriptor(&url)["index_shards"], shards.to_string());

    // Redis restarts empty (as FLUSHALL leaves it): the descriptor is gone with the rest.
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut connection(&url))
        .expect("FLUSHALL");
    assert!(descriptor(&url).is_empty());
    h.produce(DEVICES, &[(Some("after"), Some(&device("after")))])
        .await;
    daemon.wait_finished(2, Duration::from_secs(30)).await;
    wait_for(
        Duration::from_secs(10),
        "the descriptor to be back",
        || async { descriptor(&url).get("index_shards") == Some(&shards.to_string()) },
    )
    .await;
    daemon.stop().await.expect("clean stop");
}
