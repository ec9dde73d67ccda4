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

/// Member A reaches Redis through a proxy that holds its bytes, with pipelines on the wire
/// and more records consumed; A is then frozen (`SIGSTOP`) past its session timeout, or,
/// awake, stuck in a revoke drain longer than the session timeout. Either way the
/// coordinator evicts it, member B takes every partition, fences and writes newer values
/// of the same keys. Then the proxy lets go (and A gets `SIGCONT`): whatever A still
/// holds, replays or retries must not land after B's writes.
async fn evicted_member_scenario(freeze: bool) {
    let started = Instant::now();
    let h = Harness::start(4);
    let proxy = HoldingProxy::start(h.redis.port()).await;
    let name = if freeze { "frozen" } else { "evicted-draining" };
    let group = group(name);

    // Few keys, so B rewrites what A's held writes touch: metric `add`/`remove`/`replace`,
    // device upserts and tombstones.
    let mut spec = StreamSpec::new(28, 3_000);
    spec.devices = 60;
    spec.namespaces = 8;
    spec.device_percent = 60;
    let records = generate(spec);
    let n = records.len();
    let parts: Vec<&[support::model::Rec]> = records.chunks(n.div_ceil(3)).collect();
    let producer = ordered_producer(h.kafka.bootstrap());
    let proxied = proxy.url();

    // A revoke drain of 15 s (the most it waits), longer than the 3 s session timeout.
    let a = h.spawn_daemon(
        &format!("{name}-a"),
        &group,
        &[
            ("METACACHE__REDIS__URL", proxied.as_str()),
            ("METACACHE__SHUTDOWN__TIMEOUT_SECS", "30"),
            ("METACACHE__REDIS__RESPONSE_TIMEOUT_MS", "60000"),
        ],
    );
    publish(&producer, parts[0]).await;
    h.wait_all_committed(&group, Duration::from_secs(60)).await;

    // A's path stalls with writes on the wire and more consumed.
    proxy.hold();
    publish(&producer, parts[1]).await;
    wait_for(
        Duration::from_secs(30),
        "member A to have pipelines held in the proxy",
        || async { proxy.bytes_held() > 2_000 && a.stat("/writer/in_flight_pipelines").await > 0 },
    )
    .await;
    if freeze {
        a.signal("STOP");
        // Past the session timeout (3 s): the coordinator evicts A.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    let b = h.spawn_daemon(&format!("{name}-b"), &group, &[]);
    let all = 2 * h.partitions as u64;
    wait_for(
        Duration::from_secs(60),
        "member B to own every partition (A evicted)",
        || async { b.stat("/kafka/assigned_partitions").await == all },
    )
    .await;
    // B writes the held records again and everything after them.
    publish(&producer, parts[2]).await;
    h.wait_all_committed(&group, Duration::from_secs(90)).await;
    let fenced = b.stat("/writer/writers_fenced").await;

    // A's path comes back: whatever it still holds would land now, after B's writes.
    proxy.release();
    if freeze {
        a.signal("CONT");
    }
    // A finds out it was evicted, rejoins, and the group settles with both members.
    wait_for(
        Duration::from_secs(60),
        "member A to rejoin the group",
        || async { a.stat("/kafka/assigned_partitions").await > 0 },
    )
    .await;
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    let mut a = a;
    let mut b = b;
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(
        a.wait_exit(Duration::from_secs(40)),
        Some(0),
        "A exits cleanly"
    );
    assert_eq!(
        b.wait_exit(Duration::from_secs(40)),
        Some(0),
        "B exits cleanly"
    );

    support::model::figure(&format!(
        "faults: {name}: {} bytes held, {} discarded; B fenced {fenced} connection(s)",
        proxy.bytes_held(),
        proxy.bytes_discarded()
    ));
    assert!(
        fenced >= 1,
        "B fenced no connection of A: the fault did not happen"
    );
    Model::of(records.iter()).compare(&mut h.redis()).report(
        &format!("{name}-member-new-owner-direct"),
        n,
        1,
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_never_writes_after_it_lost_its_partitions() {
    evicted_member_scenario(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_evicted_while_draining_never_writes_after_the_new_owner() {
    evicted_member_scenario(false).await;
}
