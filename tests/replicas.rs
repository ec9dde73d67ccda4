//! `redis.wait_replicas`: every pipeline ends with `WAIT`, and a batch counts as done
//! only once that many replicas have it. With the replica gone, nothing new is
//! acknowledged or committed (retried, named in `/readyz`); once it is back, everything
//! is, and the replica holds every key.

mod support;

use std::time::Duration;

use metacache::tools::embedded::EmbeddedRedis;
use redis::Commands;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_count_as_done_only_once_a_replica_has_them() {
    let h = Harness::start(1);
    let primary = h.redis.port().to_string();
    let mut replica = EmbeddedRedis::start_with(&["--replicaof", "127.0.0.1", &primary])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut settings = h.settings();
    settings.redis.wait_replicas = 1;
    settings.redis.wait_timeout_ms = 200;
    settings.http.degraded_window_secs = 60;
    let group = settings.kafka.group_id.clone();
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    let device = |id: &str| device_json(id, "t", "2026-11-22T10:00:00Z");
    let (a, b) = (device("a"), device("b"));
    h.produce(DEVICES, &[(Some("a"), Some(&a))]).await;
    daemon.wait_finished(1, Duration::from_secs(30)).await;
    let replica_has = |replica: &EmbeddedRedis, key: &str| {
        redis::Client::open(replica.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| c.exists::<_, bool>(key))
            .unwrap_or(false)
    };
    assert!(
        replica_has(&replica, "device:a"),
        "acknowledged before the replica had it"
    );
    // Replication on loopback is quick enough that the replica would mostly have it even
    // without WAIT: what shows that the acknowledgement waited for it is that the
    // primary ran WAIT before it.
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut h.redis())
        .unwrap();
    let waits = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        waits >= 1,
        "no WAIT ran before the acknowledgement: {stats}"
    );
    let committed_devices = || {
        h.committed(&group, DEVICES)
            .iter()
            .map(|c| (*c).max(0))
            .sum::<i64>()
    };
    wait_for(Duration::from_secs(30), "a committed", || async {
        committed_devices() == 1
    })
    .await;

    // The replica goes away: the primary takes the write, but WAIT counts 0 replicas.
    replica.stop();
    let committed = committed_devices();
    h.produce(DEVICES, &[(Some("b"), Some(&b))]).await;
    wait_for(Duration::from_secs(20), "/readyz to name WAIT", || async {
        let (_, ready) = readyz(addr).await;
        ready["checks"]["redis"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("WAIT: 0 of 1 replicas"))
    })
    .await;
    assert!(
        h.redis().exists::<_, bool>("device:b").unwrap(),
        "the primary has it"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed_devices(),
        committed,
        "an offset moved past a write no replica has"
    );
    assert_eq!(daemon.finished(), 1, "acknowledged without a replica");
    assert!(daemon.stats.snapshot().retries > 0);

    // The replica comes back, catches up, and the write is acknowledged and committed.
    replica.restart().expect("the replica restarts");
    daemon.wait_finished(2, Duration::from_secs(30)).await;
    wait_for(Duration::from_secs(30), "b committed", || async {
        committed_devices() == 2
    })
    .await;
    assert!(replica_has(&replica, "device:b"));
    daemon.stop().await.expect("clean stop");
}
