//! At-least-once: offsets move only past what Redis (or the dead-letter topic)
//! acknowledged, a restarted daemon resumes from them, and shutdown flushes and commits.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

fn devices(range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| {
            let id = format!("dev-{i}");
            let json = device_json(&id, "t", "2026-11-22T10:00:00Z");
            (id, json)
        })
        .collect()
}

async fn produce_devices(h: &Harness, batch: &[(String, String)]) {
    let records: Vec<(Option<&str>, Option<&str>)> = batch
        .iter()
        .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
        .collect();
    h.produce(DEVICES, &records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_stay_behind_what_redis_did_not_acknowledge_and_a_restart_replays_it() {
    let mut h = Harness::start(2);
    let mut settings = h.settings();
    settings.shutdown.timeout_secs = 2;
    let group = settings.kafka.group_id.clone();

    // Phase 1: 50 events land and are committed.
    let first = devices(0..50);
    let daemon = h.start_daemon(settings.clone());
    produce_devices(&h, &first).await;
    daemon.wait_finished(50, Duration::from_secs(30)).await;
    wait_for(Duration::from_secs(10), "first 50 committed", || async {
        h.committed(&group, DEVICES).iter().sum::<i64>() == 50
    })
    .await;

    // Phase 2: Redis dies; 30 more events are consumed but cannot be written.
    h.redis.stop();
    let second = devices(50..80);
    produce_devices(&h, &second).await;
    wait_for(Duration::from_secs(20), "the writer to retry", || async {
        daemon.stats.snapshot().retries >= 3
    })
    .await;
    assert_eq!(daemon.stats.snapshot().devices.consumed, 80);
    // Several commit intervals pass; nothing unacknowledged may be committed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.committed(&group, DEVICES).iter().sum::<i64>(), 50);
    // Shutdown cannot drain: it says so, and still commits nothing past the gap.
    let verdict = daemon.stop().await;
    assert!(
        matches!(
            verdict,
            Err(metacache::daemon::DaemonError::Unacknowledged(30))
        ),
        "{verdict:?}"
    );
    assert_eq!(h.committed(&group, DEVICES).iter().sum::<i64>(), 50);

    // Phase 3: Redis is back (empty); a new daemon in the same group replays the 30.
    h.redis.restart().expect("redis restarts");
    let daemon = h.start_daemon(settings);
    daemon.wait_finished(30, Duration::from_secs(30)).await;
    let mut r = h.redis();
    for (id, _) in &second {
        assert!(
            r.exists::<_, bool>(format!("device:{id}")).unwrap(),
            "{id} replayed"
        );
    }
    let index: usize = r.zcard("devices").unwrap();
    assert_eq!(index, 30, "only the replayed events: Redis restarted empty");
    assert_eq!(
        daemon.stats.snapshot().devices.consumed,
        30,
        "resumed at the committed offsets"
    );
    wait_for(Duration::from_secs(10), "all 80 committed", || async {
        h.committed(&group, DEVICES).iter().sum::<i64>() == 80
    })
    .await;
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_open_batch_and_commits_it() {
    let h = Harness::start(2);
    let mut settings = h.settings();
    // A batch that would wait a minute for more events: only shutdown can flush it.
    settings.writer.linger_ms = 10_000;
    settings.writer.max_batch = 10_000;
    settings.kafka.commit_interval_ms = 60_000;
    let group = settings.kafka.group_id.clone();
    let daemon = h.start_daemon(settings);
    produce_devices(&h, &devices(0..1)).await;
    daemon.wait_finished(1, Duration::from_secs(30)).await;

    // The next event goes at once (nothing is in flight) and Redis holds it; the rest
    // linger behind it, in a batch that is neither full nor due.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("WRITE")
        .query(&mut h.redis())
        .unwrap();
    produce_devices(&h, &devices(1..40)).await;
    wait_for(Duration::from_secs(30), "40 consumed", || async {
        daemon.stats.snapshot().devices.consumed == 40
    })
    .await;
    assert_eq!(
        daemon.stats.snapshot().devices.written,
        1,
        "still lingering"
    );

    let started = Instant::now();
    daemon.stop().await.expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut r = h.redis();
    let index: usize = r.zcard("devices").unwrap();
    assert_eq!(index, 40);
    assert_eq!(h.committed(&group, DEVICES).iter().sum::<i64>(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_redis_outage_pauses_the_partitions_without_leaving_the_group() {
    let mut h = Harness::start(2);
    let mut settings = h.settings();
    // A small pipeline so the outage fills it quickly, and a poll interval shorter than the
    // outage: a consumer that stopped polling would be thrown out of its group.
    settings.writer.max_batch = 8;
    settings.writer.max_in_flight = 1;
    settings
        .kafka
        .client
        .insert("max.poll.interval.ms".into(), "4000".into());
    let group = settings.kafka.group_id.clone();
    let daemon = h.start_daemon(settings);
    produce_devices(&h, &devices(0..10)).await;
    daemon.wait_finished(10, Duration::from_secs(30)).await;

    h.redis.stop();
    let during = devices(10..400);
    produce_devices(&h, &during).await;
    wait_for(Duration::from_secs(20), "partitions paused", || async {
        daemon.stats.snapshot().paused
    })
    .await;
    // Stay down for longer than max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let snap = daemon.stats.snapshot();
    assert!(snap.paused);
    assert_eq!(snap.kafka_assigned_partitions, 4, "still in the group");
    assert!(
        snap.devices.consumed < 400,
        "consumption stopped while paused"
    );
    assert_eq!(h.committed(&group, DEVICES).iter().sum::<i64>(), 10);

    h.redis.restart().expect("redis restarts");
    daemon.wait_finished(400, Duration::from_secs(60)).await;
    assert!(!daemon.stats.snapshot().paused, "resumed");
    let mut r = h.redis();
    for (id, _) in &during {
        assert!(
            r.exists::<_, bool>(format!("device:{id}")).unwrap(),
            "{id} landed"
        );
    }
    wait_for(Duration::from_secs(10), "all 400 committed", || async {
        h.committed(&group, DEVICES).iter().sum::<i64>() == 400
    })
    .await;
    daemon.stop().await.expect("clean stop");
}
