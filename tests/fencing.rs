//! Writes of a revoked partition never land after the new owner's. Only the first member's
//! path to Redis is slow (a proxy holds its bytes for longer than the revoke drain) while a
//! second member, connected straight to Redis, joins and takes partitions over; then the
//! proxy lets go. A global `CLIENT PAUSE` would not show the hole: both members would wait
//! alike and the old writes would still land first.

mod support;

use std::time::{Duration, Instant};

use support::feed::{ordered_producer, publish};
use support::model::{generate, Model, StreamSpec};
use support::proxy::HoldingProxy;
use support::*;

static GROUP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn group(name: &str) -> String {
    let n = GROUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("fencing-{name}-{}-{n}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_members_writes_in_flight_never_land_after_the_new_owners() {
    let started = Instant::now();
    let h = Harness::start(4);
    let proxy = HoldingProxy::start(h.redis.port()).await;

    // Few keys, so the new owner rewrites what the old owner's held writes touch: metric
    // operations, upserts and tombstones.
    let mut spec = StreamSpec::new(21, 9_000);
    spec.devices = 150;
    spec.namespaces = 12;
    spec.device_percent = 60;
    let records = generate(spec);
    let n = records.len();
    let parts: Vec<&[support::model::Rec]> = records.chunks(n.div_ceil(3)).collect();
    let producer = ordered_producer(h.kafka.bootstrap());

    let mut slow = h.settings();
    slow.redis.url = proxy.url();
    // The revoke waits this long (at most 15 s) for the records in flight.
    slow.shutdown.timeout_secs = 2;
    slow.redis.connect_timeout_ms = 500;
    let group = slow.kafka.group_id.clone();
    let mut direct = h.settings();
    direct.kafka.group_id = group.clone();

    let a = h.start_daemon(slow);
    publish(&producer, parts[0]).await;
    h.wait_all_committed(&group, Duration::from_secs(60)).await;

    // A's path stalls with writes on the wire.
    proxy.hold();
    publish(&producer, parts[1]).await;
    wait_for(
        Duration::from_secs(20),
        "the first member to have pipelines held in the proxy",
        || async { a.stats.snapshot().in_flight > 0 && proxy.bytes_held() > 0 },
    )
    .await;

    // B joins; A's revoke drain times out and A must give its writes up.
    let b = h.start_daemon(direct);
    wait_for(
        Duration::from_secs(30),
        "the second member to own partitions",
        || async { b.stats.snapshot().kafka_assigned_partitions > 0 },
    )
    .await;
    let fences = a.stats.fences.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fences > 0, "the first member fenced its connection");
    // The new owner writes the held records again and everything after them.
    publish(&producer, parts[2]).await;
    wait_for(
        Duration::from_secs(60),
        "the second member to write its share",
        || async { b.finished() > 0 },
    )
    .await;
    let b_partitions = b.stats.snapshot().kafka_assigned_partitions;
    // Let A's path go: whatever it still holds would land now, after B's writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.release();
    h.wait_all_committed(&group, Duration::from_secs(90)).await;
    let disowned = a.stats.disowned.load(std::sync::atomic::Ordering::Relaxed);
    a.stop().await.expect("the first member stops cleanly");
    b.stop().await.expect("the second member stops cleanly");

    support::model::figure(&format!(
        "faults: fencing: {} bytes held, {} discarded with the fenced connection; fences {fences}, records dropped unsent {disowned}; second member owned {b_partitions} partitions",
        proxy.bytes_held(),
        proxy.bytes_discarded()
    ));
    Model::of(records.iter()).compare(&mut h.redis()).report(
        "revoked-member-slow-path-new-owner-direct",
        n,
        1,
        started.elapsed(),
    );
    assert!(
        proxy.bytes_discarded() > 0,
        "the held writes were on the fenced connection"
    );
}

/// A writer that dies (SIGKILL) with pipelines in the kernel's buffers leaves bytes that
/// Redis runs whenever it reads them: here the proxy holds them and delivers them after the
/// process is gone, as a graceful close does, once the new owner has written newer
/// values. Plain `SET`s (the dead writer's local decisions), set operations and upserts
/// after tombstones carry no guard. The new owner closes every other writer's connection
/// before its first write, so none of the late bytes runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writers_late_bytes_never_land_after_the_new_owners() {
    use support::model::Rec;
    let started = Instant::now();
    let h = Harness::start(2);
    let proxy = HoldingProxy::start(h.redis.port()).await;
    proxy.deliver_after_close();
    let group = group("dead-writer");
    let device = |id: &str, at: &str| Rec::device(id, at);
    let catalog = |op: &str, names: &[&str]| Rec::metric(op, "ns", names);
    let ids: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    // 1: what the first writer writes and commits; 2: what it has on the wire when it
    // dies (newer devices as plain SETs, an add, an upsert); 3: what the new owner writes
    // on top (newer still, a remove, a tombstone).
    let mut first: Vec<Rec> = ids
        .iter()
        .map(|id| device(id, "2026-11-22T10:00:10Z"))
        .collect();
    first.push(catalog("replace", &["a"]));
    first.push(device("e", "2026-11-22T10:00:10Z"));
    let mut second: Vec<Rec> = ids
        .iter()
        .map(|id| device(id, "2026-11-22T10:00:20Z"))
        .collect();
    second.push(catalog("add", &["b"]));
    second.push(device("e", "2026-11-22T10:00:20Z"));
    let mut third: Vec<Rec> = ids
        .iter()
        .map(|id| device(id, "2026-11-22T10:00:30Z"))
        .collect();
    third.push(catalog("remove", &["b"]));
    third.push(Rec::tombstone("e"));
    let producer = ordered_producer(h.kafka.bootstrap());
    let proxied = proxy.url();

    let mut dead = h.spawn_daemon(
        "dead",
        &group,
        &[("METACACHE__REDIS__URL", proxied.as_str())],
    );
    publish(&producer, &first).await;
    wait_for(
        Duration::from_secs(60),
        "the first part written",
        || async { dead.finished().await >= first.len() as u64 },
    )
    .await;
    proxy.hold();
    publish(&producer, &second).await;
    // The second part's pipeline (its 42 events take about 6 kB on the wire).
    wait_for(
        Duration::from_secs(30),
        "the second part on the wire",
        || async { proxy.bytes_held() > 4_000 },
    )
    .await;
    dead.signal("KILL");
    assert_eq!(
        dead.wait_exit(Duration::from_secs(10)),
        None,
        "killed, not exited"
    );

    let mut owner = h.spawn_daemon("new-owner", &group, &[]);
    publish(&producer, &third).await;
    let total = |topic: &str| -> i64 {
        [&first, &second, &third]
            .iter()
            .map(|part| part.iter().filter(|r| r.topic == topic).count() as i64)
            .sum()
    };
    let (devices, metrics) = (total(DEVICES), total(METRICS));
    wait_for(Duration::from_secs(60), "everything committed", || async {
        let committed = |topic| {
            h.committed(&group, topic)
                .iter()
                .map(|c| (*c).max(0))
                .sum::<i64>()
        };
        committed(DEVICES) == devices && committed(METRICS) == metrics
    })
    .await;
    let fenced = owner.stat("/writer/writers_fenced").await;
    // The dead writer's bytes arrive now.
    proxy.release();
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "faults: dead writer: {} bytes held, {} delivered after its death, {} discarded",
        proxy.bytes_held(),
        proxy.bytes_delivered_late(),
        proxy.bytes_discarded()
    );
    assert!(
        proxy.bytes_delivered_late() + proxy.bytes_discarded() > 4_000,
        "the dead writer left no pipeline behind: the fault did not happen"
    );
    owner.signal("TERM");
    assert_eq!(owner.wait_exit(Duration::from_secs(25)), Some(0));

    let all: Vec<Rec> = first.into_iter().chain(second).chain(third).collect();
    Model::of(all.iter()).compare(&mut h.redis()).report(
        "a-dead-writers-late-bytes",
        all.len(),
        1,
        started.elapsed(),
    );
    assert!(
        fenced >= 1,
        "the new owner closed no connection of the dead writer"
    );
}
