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
