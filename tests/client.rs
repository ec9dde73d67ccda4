//! The read side against the real daemon: events published with `metacache::tools::publish` go
//! through Kafka and the daemon into Redis, and come back through `metacache::client`
//! and through the redis-cli commands the README documents, with the documented output.
//! Also paging, odd ids and namespaces, corrupt entries, health and the blocking client.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use metacache::client::{
    BlockingCacheClient, CacheClient, ClientError, DeviceEntry, Glob, Health, ListOptions, Order,
};
use metacache::config::RedisSettings;
use metacache::model::{self, DeviceMetadata, Event, Limits, MetricOp, TopicKind};
use metacache::tools::embedded::{Apply, EmbeddedRedis};
use metacache::tools::publish::Publisher;
use rdkafka::Message;
use redis::Commands;
use support::*;

/// `redis-cli -p PORT --no-raw ARGS…`: stdout as redis-cli formats it for a terminal.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-raw"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The README's "Reading the demo's data with redis-cli" block, as (command, output).
fn readme_redis_cli_examples() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("Reading the demo's data with redis-cli")
        .expect("the redis-cli section");
    let block = &readme[start..];
    let block = &block[block.find("```text\n").expect("its code block") + 8..];
    let block = &block[..block.find("```").expect("its end")];
    let mut examples: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        if let Some(command) = line.strip_prefix("$ redis-cli ") {
            // Drop a trailing `# comment` (but not the `#` inside `billing#metric_names`).
            let command = match command.find(" #") {
                Some(at) => &command[..at],
                None => command,
            };
            examples.push((command.trim().to_owned(), Vec::new()));
        } else if let Some((_, output)) = examples.last_mut() {
            output.push(line.to_owned());
        }
    }
    assert!(examples.len() >= 7, "{examples:?}");
    examples
}

/// `1) "x"` lines without their numbers, sorted: set members come in any order.
fn unordered(lines: &[String]) -> Vec<String> {
    let mut values: Vec<String> = lines
        .iter()
        .map(|l| match l.split_once(") ") {
            Some((n, v)) if n.trim().parse::<usize>().is_ok() => v.to_owned(),
            _ => l.clone(),
        })
        .collect();
    values.sort();
    values
}

/// Publishes the demo's valid sample events with the library, one by one (each waits for
/// the broker), and waits until the daemon has finished them.
async fn publish_demo_events(h: &Harness, daemon: &Running) -> Vec<Event> {
    let publisher = Publisher::new(&h.settings()).expect("publisher");
    let events = metacache::tools::demo::valid_sample_events();
    for event in &events {
        publisher.publish(event).await.expect("published");
    }
    daemon
        .wait_finished(events.len() as u64, Duration::from_secs(30))
        .await;
    events
}

fn device(id: &str, last_updated: &str) -> DeviceMetadata {
    let json = serde_json::json!({
        "device_id": id, "datatype_id": "dt-1", "datatype_name": "temperature",
        "datatype_unit": "C", "persist": true, "last_updated": last_updated, "site": "plant 3"
    });
    DeviceMetadata::from_normalized_json(&json.to_string()).expect("a valid device")
}

fn ids(page: &[DeviceEntry]) -> Vec<&str> {
    page.iter().map(|e| e.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_events_published_with_the_library_read_back_as_the_readme_documents() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());
    let events = publish_demo_events(&h, &daemon).await;

    // Nothing the library produced was refused.
    let snap = daemon.stats.snapshot();
    assert_eq!(snap.devices.dead_lettered + snap.metrics.dead_lettered, 0);
    assert_eq!(snap.devices.stale, 1, "the out-of-order dev-42 update");

    // What went over Kafka decodes, with its key, to the event that was published.
    let records = h.read_topic(DEVICES, 7, Duration::from_secs(10));
    assert_eq!(records.len(), 7);
    for m in &records {
        let event = model::decode(TopicKind::Device, m.key(), m.payload(), &Limits::default())
            .expect("the daemon's decoder accepts it");
        assert!(events.contains(&event), "{event:?}");
    }

    // The client.
    let client = CacheClient::connect(&h.redis.url()).await.unwrap();
    let dev42 = client.get_device("dev-42").await.unwrap().expect("dev-42");
    assert_eq!(
        dev42.datatype_unit.as_deref(),
        Some("K"),
        "the newer update"
    );
    assert_eq!(dev42.additional_properties["site"], "plant-3");
    let dev44 = client.get_device("dev-44").await.unwrap().expect("dev-44");
    assert_eq!(dev44.last_updated_rfc3339(), "2026-11-22T10:05:00.000Z");
    assert_eq!(
        dev44.additional_properties["tags"],
        serde_json::json!(["entrance", "north"])
    );
    assert_eq!(client.get_device("dev-45").await.unwrap(), None);
    let many = client
        .get_devices(&["dev-42", "dev-43", "dev-44", "dev-45", "dev-42"])
        .await
        .unwrap();
    assert_eq!(
        many.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["dev-42", "dev-43", "dev-44"])
    );
    assert_eq!(many["dev-42"], dev42);
    let newest = client.list_devices(&ListOptions::default()).await.unwrap();
    assert_eq!(ids(&newest), ["dev-42", "dev-44", "dev-43"]);
    assert_eq!(
        client.namespaces().await.unwrap(),
        BTreeSet::from(["billing".into(), "default".into(), "infra".into()])
    );
    assert_eq!(
        client.metric_names("billing").await.unwrap(),
        BTreeSet::from(["disk".into(), "mem".into()])
    );
    assert_eq!(
        client
            .is_valid_metric_names("billing", &["disk", "cpu", "mem"])
            .await
            .unwrap(),
        [true, false, true]
    );
    assert!(client.is_valid_metric_name("", "errors").await.unwrap());

    // The README's redis-cli commands give the README's output.
    for (command, documented) in readme_redis_cli_examples() {
        let args: Vec<&str> = command.split_whitespace().collect();
        let output: Vec<String> = redis_cli(h.redis.port(), &args)
            .lines()
            .map(str::to_owned)
            .collect();
        if command.starts_with("SMEMBERS") {
            assert_eq!(unordered(&output), unordered(&documented), "{command}");
        } else {
            assert_eq!(output, documented, "{command}");
        }
    }
    // And the client agrees with redis-cli on the stored JSON, byte for byte.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &h.redis.port().to_string(),
            "--raw",
            "GET",
            "device:dev-42",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        dev42.to_normalized_json()
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_info_equals_what_redis_cli_reports() {
    let h = Harness::start(1);
    let daemon = h.start_daemon(h.settings());
    publish_demo_events(&h, &daemon).await;

    let client = CacheClient::connect(&h.redis.url()).await.unwrap();
    let info = client.cache_info().await.unwrap();
    let port = h.redis.port();
    let cli = |args: &[&str]| redis_cli(port, args);

    assert_eq!(
        cli(&["ZCARD", "devices"]),
        format!("(integer) {}\n", info.total_devices)
    );
    assert_eq!(info.total_devices, 3);
    let oldest = info.oldest_entry.clone().expect("oldest");
    assert_eq!(
        cli(&["ZRANGE", "devices", "0", "0", "WITHSCORES"]),
        format!("1) \"{}\"\n2) \"{}\"\n", oldest.id, oldest.last_updated_ms)
    );
    let newest = info.newest_entry.clone().expect("newest");
    assert_eq!(
        cli(&["ZREVRANGE", "devices", "0", "0", "WITHSCORES"]),
        format!("1) \"{}\"\n2) \"{}\"\n", newest.id, newest.last_updated_ms)
    );
    assert_eq!(
        (oldest.id.as_str(), newest.id.as_str()),
        ("dev-43", "dev-42")
    );
    assert_eq!(
        cli(&["SCARD", "metric_namespaces"]),
        format!("(integer) {}\n", info.metric_namespaces)
    );
    // used_memory moves with every connection and command: close, not equal.
    let used: u64 = redis_cli(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let reported = info.memory_usage_bytes.expect("INFO is allowed");
    assert!(
        reported.abs_diff(used) < 512 * 1024,
        "client {reported}, redis-cli {used}"
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_edge_cases_and_glob_patterns_agree_with_redis() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());
    let publisher = Publisher::new(&h.settings()).unwrap();
    let names = [
        "dev-1",
        "dev-2",
        "dev-3",
        "dev-10",
        "dev-11",
        "dev-20",
        "x*[weird]",
        "dev-?",
        "Dev-1",
    ];
    for (i, id) in names.iter().enumerate() {
        let at = format!("2026-11-22T10:{i:02}:00Z");
        publisher.upsert_device(&device(id, &at)).await.unwrap();
    }
    daemon
        .wait_finished(names.len() as u64, Duration::from_secs(30))
        .await;
    let client = CacheClient::connect(&h.redis.url()).await.unwrap();
    let list = |limit, offset, pattern: Option<&str>, order| {
        let client = client.clone();
        let options = ListOptions {
            limit,
            offset,
            pattern: pattern.map(str::to_owned),
            order,
        };
        async move { client.list_devices(&options).await.unwrap() }
    };
    use Order::*;

    let all = list(100, 0, None, OldestFirst).await;
    assert_eq!(ids(&all), names);
    let newest = list(100, 0, None, NewestFirst).await;
    assert_eq!(
        ids(&newest),
        names.iter().rev().copied().collect::<Vec<_>>()
    );
    assert!(list(0, 0, None, NewestFirst).await.is_empty(), "limit 0");
    assert!(
        list(0, 0, Some("*"), NewestFirst).await.is_empty(),
        "limit 0"
    );
    assert!(
        list(5, 9, None, NewestFirst).await.is_empty(),
        "offset = len"
    );
    assert!(
        list(5, 1000, None, NewestFirst).await.is_empty(),
        "far past the end"
    );
    assert!(
        list(5, usize::MAX, None, OldestFirst).await.is_empty(),
        "huge"
    );
    assert!(
        list(usize::MAX, 0, None, OldestFirst).await.len() == 9,
        "huge limit"
    );
    assert_eq!(ids(&list(1, 8, None, OldestFirst).await), ["Dev-1"]);
    assert_eq!(
        ids(&list(3, 2, None, OldestFirst).await),
        ["dev-3", "dev-10", "dev-11"]
    );

    // Patterns count matching entries only.
    assert_eq!(
        ids(&list(100, 0, Some("dev-[12]*"), OldestFirst).await),
        ["dev-1", "dev-2", "dev-10", "dev-11", "dev-20"]
    );
    assert_eq!(
        ids(&list(2, 1, Some("dev-[12]*"), OldestFirst).await),
        ["dev-2", "dev-10"]
    );
    assert_eq!(
        ids(&list(2, 0, Some("dev-[12]*"), NewestFirst).await),
        ["dev-20", "dev-11"]
    );
    assert!(list(5, 5, Some("dev-[12]*"), OldestFirst).await.is_empty());
    assert!(list(5, 0, Some("nothing-*"), OldestFirst).await.is_empty());
    assert_eq!(
        ids(&list(5, 0, Some(r"x\*\[weird]"), OldestFirst).await),
        ["x*[weird]"]
    );
    assert_eq!(
        ids(&list(5, 0, Some(r"dev-\?"), OldestFirst).await),
        ["dev-?"]
    );

    // Our glob agrees with Redis's own matcher (ZSCAN MATCH) on every pattern.
    let mut r = h.redis();
    for pattern in [
        "dev-[12]*",
        "dev-?",
        "dev-??",
        "*1*",
        "dev-[^1]*",
        r"x\*\[weird]",
        "dev-[3-1]",
        "[dD]ev-1",
        "*",
        "dev-\\?",
        "x*[[]*",
        "dev-[]",
        "dev-[^]",
        "*[",
        "dev-1*",
    ] {
        let (_, scanned): (u64, Vec<String>) = redis::cmd("ZSCAN")
            .arg("devices")
            .arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut r)
            .unwrap();
        let redis_matches: BTreeSet<String> = scanned.chunks(2).map(|c| c[0].clone()).collect();
        let options = ListOptions {
            limit: 100,
            offset: 0,
            pattern: Some(pattern.to_owned()),
            order: OldestFirst,
        };
        match Glob::parse(pattern) {
            Ok(_) => {
                let ours: BTreeSet<String> = client
                    .list_devices(&options)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id)
                    .collect();
                assert_eq!(ours, redis_matches, "pattern {pattern:?}");
            }
            // A class never closed is refused by the look-ups as a likely typo.
            Err(_) => assert!(
                matches!(
                    client.list_devices(&options).await,
                    Err(ClientError::InvalidArgument(_))
                ),
                "pattern {pattern:?}"
            ),
        }
        // Compiled leniently, it still matches what Redis matches.
        let glob = Glob::new(pattern);
        assert_eq!(
            names.iter().filter(|n| glob.matches(n)).count(),
            redis_matches.len(),
            "pattern {pattern:?}"
        );
    }
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_pages_across_index_chunks() {
    let h = Harness::start(4);
    let daemon = h.start_daemon(h.settings());
    let publisher = Publisher::new(&h.settings()).unwrap();
    let base = 1_795_341_600_000_i64;
    let records: Vec<_> = (0..2100)
        .map(|i| {
            let mut d = device(&format!("bulk-{i:04}"), "2026-11-22T10:00:00Z");
            d.last_updated_ms = base + i;
            metacache::tools::publish::Outgoing::from_event(&Event::DeviceUpsert(d.into()))
        })
        .collect();
    assert_eq!(publisher.send_all(&records).await.unwrap(), 2100);
    daemon.wait_finished(2100, Duration::from_secs(60)).await;

    let client = CacheClient::connect(&h.redis.url()).await.unwrap();
    // Every tenth id ends in 7: 210 matches spread over three chunks of the index.
    let options = ListOptions {
        limit: 100,
        offset: 150,
        pattern: Some("bulk-*7".into()),
        order: Order::OldestFirst,
    };
    let page = client.list_devices(&options).await.unwrap();
    let expected: Vec<String> = (150..210)
        .map(|k| format!("bulk-{:04}", 10 * k + 7))
        .collect();
    assert_eq!(ids(&page), expected);
    assert_eq!(page[0].last_updated_ms, base + 1507);

    let newest = ListOptions {
        order: Order::NewestFirst,
        offset: 0,
        limit: 3,
        ..options
    };
    assert_eq!(
        ids(&client.list_devices(&newest).await.unwrap()),
        ["bulk-2097", "bulk-2087", "bulk-2077"]
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_with_hash_and_colon_and_ids_with_spaces_and_unicode() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());
    let publisher = Publisher::new(&h.settings()).unwrap();
    let odd_id = "Kühlhaus 7 — Fühler ü";
    let namespace = "team#a:b:c";
    publisher
        .upsert_device(&device(odd_id, "2026-11-22T10:00:00+01:00"))
        .await
        .unwrap();
    publisher
        .replace_metric_names(namespace, &["cpu", "mem used", "ß"])
        .await
        .unwrap();
    publisher
        .remove_metric_names(namespace, &["mem used"])
        .await
        .unwrap();
    publisher.add_metric_names("", &["requests"]).await.unwrap();
    daemon.wait_finished(4, Duration::from_secs(30)).await;

    let client = CacheClient::connect(&h.redis.url()).await.unwrap();
    let stored = client.get_device(odd_id).await.unwrap().expect("stored");
    assert_eq!(stored.device_id, odd_id);
    assert_eq!(stored.last_updated_rfc3339(), "2026-11-22T09:00:00.000Z");
    let page = client
        .list_devices(&ListOptions {
            pattern: Some("Kühlhaus ? — *ü".into()),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&page), [odd_id]);
    assert_eq!(
        client.metric_names(namespace).await.unwrap(),
        BTreeSet::from(["cpu".into(), "ß".into()])
    );
    assert!(client.is_valid_metric_name(namespace, "ß").await.unwrap());
    assert!(!client
        .is_valid_metric_name(namespace, "mem used")
        .await
        .unwrap());
    assert!(!client.is_valid_metric_name("team", "cpu").await.unwrap());
    assert_eq!(
        client.namespaces().await.unwrap(),
        BTreeSet::from([namespace.to_owned(), "default".into()])
    );
    assert!(client.is_valid_metric_name("", "requests").await.unwrap());

    // redis-cli sees the same keys (arguments passed as-is, no shell quoting).
    let port = h.redis.port();
    let raw = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        raw(&["GET", &format!("device:{odd_id}")]).trim_end(),
        stored.to_normalized_json()
    );
    assert_eq!(
        raw(&["SISMEMBER", &format!("{namespace}#metric_names"), "ß"]),
        "1\n"
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test]
async fn corrupt_values_under_metacache_keys_are_reported_with_the_key() {
    let redis = EmbeddedRedis::start().unwrap();
    redis
        .apply("mc:", &metacache::tools::demo::valid_sample_events())
        .unwrap();
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = r.set("mc:device:not-json", "{\"device_id\":").unwrap();
    let _: () = r
        .set(
            "mc:device:other",
            device("dev-9", "2026-11-22T10:00:00Z").to_normalized_json(),
        )
        .unwrap();
    let _: () = r.set("mc:device:binary", &[0xff_u8, 0xfe][..]).unwrap();
    let _: () = r.hset("mc:device:hash", "a", "b").unwrap();
    let _: () = r.set("mc:broken#metric_names", "x").unwrap();

    let settings = RedisSettings {
        url: redis.url(),
        key_prefix: "mc:".into(),
        ..RedisSettings::default()
    };
    let client = CacheClient::from_settings(&settings).await.unwrap();
    let corrupt_key = |result: Result<_, ClientError>| match result {
        Err(ClientError::Corrupt { key, reason }) => {
            assert!(!reason.is_empty());
            key
        }
        other => panic!("expected a corrupt entry, got {other:?}"),
    };
    assert_eq!(
        corrupt_key(client.get_device("not-json").await.map(drop)),
        "mc:device:not-json"
    );
    assert_eq!(
        corrupt_key(client.get_device("other").await.map(drop)),
        "mc:device:other"
    );
    assert_eq!(
        corrupt_key(client.get_device("binary").await.map(drop)),
        "mc:device:binary"
    );
    assert_eq!(
        corrupt_key(client.get_device("hash").await.map(drop)),
        "mc:device:hash"
    );
    assert_eq!(
        corrupt_key(client.get_devices(&["dev-42", "not-json"]).await.map(drop)),
        "mc:device:not-json"
    );
    // MGET answers nil for another type: absent, not an error.
    assert_eq!(
        client.get_devices(&["dev-42", "hash"]).await.unwrap().len(),
        1
    );
    assert_eq!(
        corrupt_key(client.metric_names("broken").await.map(drop)),
        "mc:broken#metric_names"
    );
    assert_eq!(
        corrupt_key(client.is_valid_metric_name("broken", "x").await.map(drop)),
        "mc:broken#metric_names"
    );
    // The healthy entries still read fine.
    assert!(client.get_device("dev-42").await.unwrap().is_some());

    // A foreign index: a score that is not whole milliseconds, a member that is not UTF-8.
    let _: () = r.zadd("mc:devices", "odd", 1.5).unwrap();
    assert_eq!(
        corrupt_key(client.list_devices(&ListOptions::default()).await.map(drop)),
        "mc:devices"
    );
    assert_eq!(
        corrupt_key(client.cache_info().await.map(drop)),
        "mc:devices"
    );
    let _: () = r.zrem("mc:devices", "odd").unwrap();
    let _: () = r.zadd("mc:devices", &[0xff_u8][..], 1).unwrap();
    assert_eq!(
        corrupt_key(client.list_devices(&ListOptions::default()).await.map(drop)),
        "mc:devices"
    );
    // Another type under the index and the namespace set.
    let _: () = r.del("mc:devices").unwrap();
    let _: () = r.set("mc:devices", "x").unwrap();
    let _: () = r.del("mc:metric_namespaces").unwrap();
    let _: () = r.lpush("mc:metric_namespaces", "x").unwrap();
    assert_eq!(
        corrupt_key(client.list_devices(&ListOptions::default()).await.map(drop)),
        "mc:devices"
    );
    assert_eq!(
        corrupt_key(client.namespaces().await.map(drop)),
        "mc:metric_namespaces"
    );
    assert_eq!(
        corrupt_key(client.cache_info().await.map(drop)),
        "mc:devices"
    );
}

#[tokio::test]
async fn health_is_healthy_degraded_or_unhealthy() {
    let plain = EmbeddedRedis::start().unwrap();
    let health = CacheClient::connect(&plain.url())
        .await
        .unwrap()
        .health()
        .await;
    assert_eq!(health.status, Health::Healthy, "{}", health.message);
    assert_eq!(health.maxmemory_policy.as_deref(), Some("noeviction"));
    assert!(health.latency.is_some());

    for policy in ["allkeys-lru", "volatile-ttl"] {
        let evicting = EmbeddedRedis::start_with(&["--maxmemory-policy", policy]).unwrap();
        let health = CacheClient::connect(&evicting.url())
            .await
            .unwrap()
            .health()
            .await;
        assert_eq!(health.status, Health::Degraded, "{policy}");
        assert!(health.message.contains(policy), "{}", health.message);
        assert_eq!(health.maxmemory_policy.as_deref(), Some(policy));
    }

    // CONFIG renamed away, as managed services often do: unknown, not unhealthy.
    let no_config = EmbeddedRedis::start_with(&["--rename-command", "CONFIG", ""]).unwrap();
    let health = CacheClient::connect(&no_config.url())
        .await
        .unwrap()
        .health()
        .await;
    assert_eq!(health.status, Health::Healthy, "{}", health.message);
    assert_eq!(health.maxmemory_policy, None);
    assert!(health.message.contains("unknown"), "{}", health.message);

    // Redis gone.
    let mut going = EmbeddedRedis::start().unwrap();
    let client = CacheClient::connect(&going.url()).await.unwrap();
    going.stop();
    let health = tokio::time::timeout(Duration::from_secs(20), client.health())
        .await
        .expect("health answers even when Redis is gone");
    assert_eq!(health.status, Health::Unhealthy, "{}", health.message);
    assert_eq!(health.latency, None);
    let e = client.get_device("dev-42").await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");

    // Nothing listening at all.
    let port = metacache::tools::embedded::free_port().unwrap();
    let e = CacheClient::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connection(_)), "{e:?}");
}

#[tokio::test]
async fn settings_select_database_credentials_and_prefix() {
    let redis = EmbeddedRedis::start().unwrap();
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // From now on new connections must authenticate (this one already is).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut r)
        .unwrap();
    let json = device("dev-1", "2026-11-22T10:00:00Z").to_normalized_json();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut r).unwrap();
    let _: () = r.set("p:device:dev-1", &json).unwrap();

    let settings = RedisSettings {
        url: format!("redis://127.0.0.1:{}/0", redis.port()),
        password: Some("s3cret".into()),
        db: Some(3),
        key_prefix: "p:".into(),
        ..RedisSettings::default()
    };
    let client = CacheClient::from_settings(&settings).await.unwrap();
    assert!(client.get_device("dev-1").await.unwrap().is_some());
    assert!(!client.redacted_url().contains("s3cret"));

    let wrong = RedisSettings {
        password: Some("nope".into()),
        ..settings
    };
    let e = CacheClient::from_settings(&wrong).await.unwrap_err();
    assert!(matches!(e, ClientError::Connection(_)), "{e:?}");
    assert!(!e.to_string().contains("nope"), "{e}");
}

#[test]
fn the_blocking_client_reads_the_same_and_refuses_inside_a_runtime() {
    let redis = EmbeddedRedis::start().unwrap();
    redis
        .apply("", &metacache::tools::demo::valid_sample_events())
        .unwrap();
    let client = BlockingCacheClient::connect(&redis.url()).unwrap();
    assert_eq!(
        client.get_device("dev-43").unwrap().unwrap().datatype_name,
        "humidity"
    );
    let found: HashMap<_, _> = client.get_devices(&["dev-42", "dev-44"]).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(client.cache_info().unwrap().total_devices, 3);
    assert_eq!(client.health().status, Health::Healthy);
    assert!(client.is_valid_metric_name("infra", "load1").unwrap());
    assert_eq!(
        client
            .is_valid_metric_names("infra", &["load1", "x"])
            .unwrap(),
        [true, false]
    );

    // Shared between threads.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(client.namespaces().unwrap().len(), 3);
                }
            });
        }
    });

    // Inside an async runtime: an error, not a panic, and dropping it there is fine too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let e = client.get_device("dev-42").unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        assert_eq!(client.health().status, Health::Unhealthy);
        drop(client);
    });
}

#[tokio::test]
async fn typed_events_applied_like_the_writer_read_back_equal() {
    // Without Kafka: the writer's own planner via EmbeddedRedis::apply.
    let redis = EmbeddedRedis::start().unwrap();
    let d = device("dev-1", "2026-11-22T10:00:00.123456Z");
    redis
        .apply(
            "",
            &[
                Event::DeviceUpsert(d.clone().into()),
                Event::Metric(MetricOp::Replace {
                    namespace: "default".into(),
                    metric_names: vec![],
                }),
            ],
        )
        .unwrap();
    let client = CacheClient::connect(&redis.url()).await.unwrap();
    assert_eq!(client.get_device("dev-1").await.unwrap(), Some(d));
    assert!(client.metric_names("").await.unwrap().is_empty());
    assert_eq!(
        client.namespaces().await.unwrap(),
        BTreeSet::from(["default".into()]),
        "an emptied namespace stays listed"
    );
    assert!(client
        .is_valid_metric_names::<&str>("", &[])
        .await
        .unwrap()
        .is_empty());
    assert!(client.get_devices::<&str>(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_degrades_health_and_a_stalled_one_times_out() {
    // Redis 6.2 has DEBUG on always; 7 only with this option.
    let args: &[&str] = if support::redis_major() >= 7 {
        &["--enable-debug-command", "yes"]
    } else {
        &[]
    };
    let redis = EmbeddedRedis::start_with(args).unwrap();
    // Redis runs one command at a time: DEBUG SLEEP on another connection stalls it.
    let stall = |secs: f64| {
        let url = redis.url();
        let thread = std::thread::spawn(move || {
            let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
            let _: redis::RedisResult<()> =
                redis::cmd("DEBUG").arg("SLEEP").arg(secs).query(&mut c);
        });
        std::thread::sleep(Duration::from_millis(150));
        thread
    };

    let client = CacheClient::connect(&redis.url()).await.unwrap();
    let slow = stall(0.6);
    let health = client.health().await;
    assert_eq!(health.status, Health::Degraded, "{}", health.message);
    assert!(
        health.message.contains("slower than 250 ms"),
        "{}",
        health.message
    );
    assert!(health.latency.unwrap() > metacache::client::SLOW_PING);
    slow.join().unwrap();
    assert_eq!(client.health().await.status, Health::Healthy);

    let settings = RedisSettings {
        url: redis.url(),
        response_timeout_ms: 200,
        ..RedisSettings::default()
    };
    let impatient = CacheClient::from_settings(&settings).await.unwrap();
    let stalled = stall(1.5);
    let e = impatient.get_device("dev-1").await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    let health = impatient.health().await;
    assert_eq!(health.status, Health::Unhealthy, "{}", health.message);
    stalled.join().unwrap();
    // Afterwards the same client works again.
    assert_eq!(impatient.get_device("dev-1").await.unwrap(), None);
}

/// The client's examples seed Redis the plain way (`metacache-embedded`, one command per
/// step); the writer plans pipelines and scripts. Both must leave the same cache, or the
/// examples would document a layout the daemon does not write.
#[test]
fn the_plain_seed_and_the_writer_leave_the_same_cache() {
    fn dump(redis: &EmbeddedRedis) -> Vec<(String, String)> {
        let mut conn = redis::Client::open(redis.url())
            .and_then(|c| c.get_connection())
            .expect("redis");
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        keys.sort();
        keys.into_iter()
            .map(|key| {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
                let value = match kind.as_str() {
                    "string" => conn.get::<_, String>(&key).unwrap(),
                    "set" => format!("{:?}", conn.smembers::<_, BTreeSet<String>>(&key).unwrap()),
                    "zset" => format!(
                        "{:?}",
                        conn.zrange_withscores::<_, Vec<(String, i64)>>(&key, 0, -1)
                            .unwrap()
                    ),
                    other => panic!("unexpected {other} at {key}"),
                };
                (key, value)
            })
            .collect()
    }
    for prefix in ["", "mc:"] {
        let written = EmbeddedRedis::start().unwrap();
        written
            .apply(prefix, &metacache::tools::demo::valid_sample_events())
            .unwrap();
        let seeded = EmbeddedRedis::start().unwrap();
        seeded.seed_demo(prefix).unwrap();
        let (a, b) = (dump(&written), dump(&seeded));
        assert!(a.len() >= 7, "{a:?}");
        assert_eq!(a, b, "prefix {prefix:?}");
    }
}
