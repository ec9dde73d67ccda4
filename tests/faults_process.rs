//! Fault injection on the daemon process itself: the real `metacache` binary, configured
//! through the environment, is SIGKILLed mid-batch, shares its group with a second process
//! that is stopped and killed, and is stopped with SIGTERM under full load. Each scenario
//! compares Redis, key by key, with the model of the stream it published.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::feed::{below, ordered_producer, publish, Feed};
use support::model::{generate, Model, StreamSpec};
use support::process::Daemon;
use support::*;

static GROUP: AtomicU64 = AtomicU64::new(0);

fn group(name: &str) -> String {
    format!(
        "faults-{name}-{}-{}",
        std::process::id(),
        GROUP.fetch_add(1, Ordering::Relaxed)
    )
}

/// Records this process consumed (both topics), from its `/stats`.
async fn consumed(d: &Daemon) -> u64 {
    d.stat("/topics/device-metadata/consumed").await
        + d.stat("/topics/metric-catalog/consumed").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_replays_from_the_committed_offsets() {
    let started = Instant::now();
    let h = Harness::start(4);
    let group = group("sigkill");
    let records = generate(StreamSpec::new(3, 30_000));
    let n = records.len();
    // One segment of the stream per round, published while that round's process runs (and
    // finished while it is dead), then the last one after the last restart.
    let segments: Vec<Arc<Vec<support::model::Rec>>> = records
        .chunks(n.div_ceil(4))
        .map(|c| Arc::new(c.to_vec()))
        .collect();
    let mut daemon = h.spawn_daemon("first", &group, &[]);
    let mut kills = 0;
    let mut consumed_by_killed = 0;
    for (round, segment) in segments[..3].iter().enumerate() {
        wait_for(
            Duration::from_secs(40),
            &format!("round {round}: the process to join the group"),
            || async { daemon.stat("/kafka/assigned_partitions").await > 0 },
        )
        .await;
        let feed = Feed::start(
            h.kafka.bootstrap(),
            Arc::clone(segment),
            250,
            Duration::from_millis(50),
        );
        // Mid-batch: this process has written, and has records in flight right now.
        let mut last_consumed;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = daemon.stats().await {
                let topic = |t: &str, f: &str| s["topics"][t][f].as_u64().unwrap_or(0);
                last_consumed =
                    topic("device-metadata", "consumed") + topic("metric-catalog", "consumed");
                let busy = s["writer"]["in_flight_pipelines"].as_u64().unwrap_or(0) > 0
                    || s["writer"]["pending_records"].as_u64().unwrap_or(0) > 0;
                if topic("device-metadata", "written") >= 300 && busy {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the daemon never got busy; log:\n{}",
                daemon.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        daemon.kill();
        kills += 1;
        consumed_by_killed += last_consumed;
        // The rest of the segment lands in Kafka while nobody consumes.
        assert_eq!(feed.finish().await.len(), segment.len());
        daemon = h.spawn_daemon(&format!("restart-{round}"), &group, &[]);
    }
    wait_for(
        Duration::from_secs(40),
        "the last process to join the group",
        || async { daemon.stat("/kafka/assigned_partitions").await > 0 },
    )
    .await;
    publish(&ordered_producer(h.kafka.bootstrap()), &segments[3]).await;
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    let last = consumed(&daemon).await;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(25)), Some(0));
    support::model::figure(&format!(
        "faults: sigkill: {} records consumed in all for {n} events: {} read again after the kills (consumed but not yet committed when killed)",
        consumed_by_killed + last,
        (consumed_by_killed + last).saturating_sub(n as u64)
    ));
    Model::of(records.iter()).compare(&mut h.redis()).report(
        "sigkill-mid-batch-and-restart",
        n,
        kills,
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_in_one_group_one_stopped_one_killed_and_replaced() {
    let started = Instant::now();
    let h = Harness::start(4);
    let group = group("pair");
    let records = Arc::new(generate(StreamSpec::new(4, 30_000)));
    let n = records.len();
    let feed = Feed::start(
        h.kafka.bootstrap(),
        Arc::clone(&records),
        200,
        Duration::from_millis(100),
    );
    let mut a = h.spawn_daemon("a", &group, &[]);
    let mut b = h.spawn_daemon("b", &group, &[]);
    wait_for(
        Duration::from_secs(40),
        "both processes to share the 8 partitions",
        || async {
            let (x, y) = (
                a.stat("/kafka/assigned_partitions").await,
                b.stat("/kafka/assigned_partitions").await,
            );
            x > 0 && y > 0 && x + y == 8
        },
    )
    .await;
    wait_for(Duration::from_secs(30), "both to write", || async {
        a.finished().await > 500 && b.finished().await > 500
    })
    .await;

    // SIGTERM one: it drains, commits, leaves, exits 0.
    let t = Instant::now();
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(25)), Some(0), "a's exit");
    let term_took = t.elapsed();
    wait_for(
        Duration::from_secs(30),
        "b to take every partition",
        || async { b.stat("/kafka/assigned_partitions").await == 8 },
    )
    .await;
    let b_before = b.finished().await;
    wait_for(
        Duration::from_secs(30),
        "b to make progress alone",
        || async { b.finished().await > b_before + 1_000 || feed.delivered() == n },
    )
    .await;

    // SIGKILL the other, and start a fresh one in its place.
    b.kill();
    let mut c = h.spawn_daemon("c", &group, &[]);
    let landed = feed.finish().await;
    assert_eq!(landed.len(), n);
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    assert!(h.unconsumed(&group).is_empty());
    assert_eq!(c.stat("/kafka/assigned_partitions").await, 8);
    c.signal("TERM");
    assert_eq!(c.wait_exit(Duration::from_secs(25)), Some(0), "c's exit");
    support::model::figure(&format!(
        "faults: group: SIGTERM exit took {:.1} s; every partition committed to its end",
        term_took.as_secs_f64()
    ));
    Model::of(records.iter()).compare(&mut h.redis()).report(
        "two-processes-sigterm-one-sigkill-other-start-fresh",
        n,
        2,
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_full_load_exits_zero_with_exactly_the_acknowledged_offsets_committed() {
    let started = Instant::now();
    let h = Harness::start(4);
    let group = group("sigterm");
    let records = generate(StreamSpec::new(6, 40_000));
    let n = records.len();
    // A large backlog first, then a daemon with smaller pipelines so the drain takes a
    // while: the signal lands in the middle of it.
    let landed = publish(&ordered_producer(h.kafka.bootstrap()), &records).await;
    let shutdown_timeout = Duration::from_secs(20);
    let tuning = [
        ("METACACHE__WRITER__MAX_BATCH", "256"),
        ("METACACHE__WRITER__MAX_IN_FLIGHT", "2"),
        ("METACACHE__SHUTDOWN__TIMEOUT_SECS", "20"),
    ];
    let mut daemon = h.spawn_daemon("loaded", &group, &tuning);
    wait_for(
        Duration::from_secs(40),
        "the drain to be under way",
        || async { daemon.finished().await > 2_000 },
    )
    .await;
    let t = Instant::now();
    daemon.signal("TERM");
    let code = daemon.wait_exit(shutdown_timeout + Duration::from_secs(5));
    let took = t.elapsed();
    assert_eq!(code, Some(0), "exit code; log:\n{}", daemon.log_tail(30));
    assert!(took < shutdown_timeout, "took {took:?}");

    // What was committed is exactly what Redis holds: the state of every partition's
    // prefix below its committed offset, nothing more, nothing less.
    let committed = h.committed_map(&group);
    let done: i64 = committed.values().map(|c| (*c).max(0)).sum();
    assert!(
        (done as usize) < n,
        "the signal should land mid-drain ({done} of {n} committed)"
    );
    let prefix = below(&records, &landed, &committed);
    assert_eq!(prefix.len(), done as usize);
    let at_exit = Model::of(prefix.iter().copied()).compare(&mut h.redis());
    assert!(
        at_exit.wrong.is_empty(),
        "Redis differs from the committed prefix: {:?}",
        &at_exit.wrong[..at_exit.wrong.len().min(10)]
    );

    // A fresh daemon in the same group finishes the rest, reading nothing twice.
    let mut fresh = h.spawn_daemon("fresh", &group, &[]);
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    let reread = consumed(&fresh).await;
    fresh.signal("TERM");
    assert_eq!(fresh.wait_exit(Duration::from_secs(25)), Some(0));
    assert_eq!(
        reread,
        (n as i64 - done) as u64,
        "the fresh daemon read exactly what was not committed"
    );
    support::model::figure(&format!(
        "faults: sigterm: exit 0 after {:.2} s with {done} of {n} committed; Redis held exactly that prefix ({} keys); the fresh daemon read the other {reread}",
        took.as_secs_f64(),
        at_exit.keys_checked
    ));
    Model::of(records.iter()).compare(&mut h.redis()).report(
        "sigterm-under-full-load",
        n,
        1,
        started.elapsed(),
    );
}
