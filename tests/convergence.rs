//! A larger mixed stream (updates to the same keys, out-of-order timestamps, tombstones,
//! metric-set operations) against a small independent model of what Redis must hold, key
//! by key (`support::model`, shared with the fault suite). Also prints the throughput it
//! saw, for the record (not asserted: speed goals live in the benchmark).

mod support;

use std::time::{Duration, Instant};

use support::feed::{ordered_producer, publish};
use support::model::{generate, Model, StreamSpec};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_converges_to_the_state_the_stream_describes() {
    let h = Harness::start(4);
    let records = generate(StreamSpec {
        rejects_per_mille: 0,
        ..StreamSpec::new(42, 25_000)
    });
    let total = records.len() as u64;
    let device_events = records.iter().filter(|r| r.topic == DEVICES).count();
    publish(&ordered_producer(h.kafka.bootstrap()), &records).await;

    // The whole stream is a backlog before the daemon starts: time the drain from the
    // first record consumed, so the group join is not counted.
    let daemon = h.start_daemon(h.settings());
    wait_for(Duration::from_secs(30), "the first record", || async {
        daemon.stats.snapshot().devices.consumed > 0
    })
    .await;
    let started = Instant::now();
    daemon.wait_finished(total, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let snap = daemon.stats.snapshot();
    daemon.stop().await.expect("clean stop");

    let result = Model::of(records.iter()).compare(&mut h.redis());
    println!(
        "convergence: {total} events ({device_events} device, {} metric), {} stale skipped, \
         {} keys checked, {} wrong; backlog drained at {:.0} events/s ({:?}, {} build), {} batches, max batch {}, pipeline mean {} µs max {} µs",
        total as usize - device_events,
        snap.devices.stale,
        result.keys_checked,
        result.wrong.len(),
        total as f64 / elapsed.as_secs_f64(),
        elapsed,
        if cfg!(debug_assertions) { "debug" } else { "release" },
        snap.batches,
        snap.max_batch,
        snap.pipeline_micros_mean,
        snap.pipeline_micros_max
    );
    assert!(
        result.wrong.is_empty(),
        "{} keys wrong:\n{}",
        result.wrong.len(),
        result.wrong.join("\n")
    );
    assert!(snap.devices.stale > 0, "the stream had stale updates");
}
