//! `redis.mode = "sentinel"`: the daemon writes to the primary the sentinels name and
//! follows a failover. The replication link breaks mid-stream (`CLIENT KILL TYPE
//! replica`, with the replica stopped so that it cannot reconnect and catch up), the
//! primary takes writes for half a second that exist nowhere else, and dies; the
//! sentinels promote the replica; the old primary comes back empty and the sentinels make
//! it a replica of the new one; the last third of the stream comes after that, so the
//! writer has to find the new primary.
//!
//! With `wait_replicas = 1` nothing the daemon acknowledged can be lost that way: 0 keys
//! wrong against the model. With 0, the writes the old primary acknowledged and never
//! replicated are gone; the figure is printed (the docs quote it), and every key that
//! differs differs the way a lost write explains.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::feed::Feed;
use support::model::{figure, generate, Model, Rec, StreamSpec};
use support::sentinel::{pid, SentinelSet, MASTER};
use support::*;

struct Outcome {
    events: usize,
    /// The sentinels' event lines, kept for the failure message (the set is gone by then).
    sentinel_events: String,
    wrong: Vec<String>,
    acknowledged_while_replica_behind: u64,
    /// Devices whose final value was sent after the failover.
    written_after_failover: BTreeSet<String>,
    /// The sentinels failed over a second time (see [`failover`]).
    failed_over_again: bool,
    took: Duration,
}

/// Records Redis took (dead letters and locally decided stale records need no Redis).
fn written(daemon: &Running) -> u64 {
    let s = daemon.stats.snapshot();
    s.devices.written + s.metrics.written
}

async fn failover(wait_replicas: u32, seed: u64) -> Outcome {
    let started = Instant::now();
    let h = Harness::start(4);
    let mut set = SentinelSet::start();
    let mut settings = h.settings();
    settings.redis.mode = "sentinel".into();
    settings.redis.nodes = set.nodes();
    settings.redis.sentinel_master = MASTER.into();
    settings.redis.wait_replicas = wait_replicas;
    settings.redis.wait_timeout_ms = 300;
    settings.redis.response_timeout_ms = 2000;
    settings.writer.retry_max_ms = 500;
    // Write errors of the failover leave /readyz's window soon after.
    settings.http.degraded_window_secs = 2;
    // Mostly distinct devices, so that a lost write is rarely hidden by a later one.
    let mut spec = StreamSpec::new(seed, 12_000);
    spec.devices = 20_000;
    let records = Arc::new(generate(spec));
    let n = records.len();
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    let old_primary = set.primary.port();
    wait_for(
        Duration::from_secs(20),
        "/readyz to name the primary",
        || async {
            readyz(addr).await.1["checks"]["redis"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("primary 127.0.0.1:{old_primary}")))
        },
    )
    .await;

    // Two thirds before and during the fault, the rest once the replica is promoted, so
    // the writer has to find the new primary.
    let (before_failover, after_failover) = records.split_at(n * 2 / 3);
    // The feed starts once the daemon consumes, so the fault meets traffic.
    wait_for(
        Duration::from_secs(30),
        "the partitions to be assigned",
        || async { daemon.stats.snapshot().kafka_assigned_partitions == 8 },
    )
    .await;
    let feed = Feed::start(
        h.kafka.bootstrap(),
        Arc::new(before_failover.to_vec()),
        200,
        Duration::from_millis(100),
    );
    wait_for(Duration::from_secs(60), "2,000 events written", || async {
        daemon.finished() >= 2_000
    })
    .await;

    // The replication link breaks and the replica cannot reconnect (stopped): from here on
    // the primary's writes exist only on the primary.
    let replica_pid = pid(set.replica.port());
    unsafe { libc::kill(replica_pid, libc::SIGSTOP) };
    let mut primary_conn = redis::Client::open(set.primary.url())
        .and_then(|c| c.get_connection())
        .expect("the primary answers");
    let cut: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut primary_conn)
        .expect("CLIENT KILL TYPE replica");
    assert_eq!(cut, 1, "the replication link was not cut");
    // Replies already on their way (WAITs answered before the cut) are counted first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = written(&daemon);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acknowledged_while_replica_behind = written(&daemon) - before;
    // The primary dies with them; the replica resumes and is promoted.
    set.primary.stop();
    unsafe { libc::kill(replica_pid, libc::SIGCONT) };
    let new_primary = set.replica.port();
    wait_for(
        Duration::from_secs(60),
        "the sentinels to promote the replica",
        || async { set.named_primary() == Some(new_primary) },
    )
    .await;
    // The old primary comes back empty; the sentinels make it the new one's replica
    // (until then WAIT 1 has no replica to count, and nothing is acknowledged).
    set.primary.restart().expect("the old primary restarts");

    let mut landed = feed.finish().await;
    landed.extend(
        Feed::start(
            h.kafka.bootstrap(),
            Arc::new(after_failover.to_vec()),
            200,
            Duration::from_millis(20),
        )
        .finish()
        .await,
    );
    assert_eq!(landed.len(), n);
    daemon
        .wait_finished(n as u64, Duration::from_secs(120))
        .await;
    let s = daemon.stats.snapshot();
    // The writer writes where the sentinels point. Usually that is the promoted replica;
    // in one full-suite run (both sentinel tests at once, 2026-12-06) the sentinels failed
    // over a second time, to the old primary after it came back as a replica, and the
    // writer followed (not reproduced in 8 runs of this test alone under stress-ng). What
    // matters is that it writes where they point, and that no key is wrong below.
    let current = set.named_primary().unwrap_or(new_primary);
    if current != new_primary {
        figure(&format!(
            "faults: sentinel failover: the sentinels failed over a second time, to {current}"
        ));
    }
    assert_eq!(
        s.redis_primary.as_deref(),
        Some(format!("127.0.0.1:{current}").as_str()),
        "the writer follows the sentinels; what they decided:\n{}",
        set.events()
    );
    assert!(s.retries > 0, "the failover was never seen by the writer");
    wait_for(
        Duration::from_secs(20),
        "/readyz to name the new primary",
        || async {
            let (status, body) = readyz(addr).await;
            status == 200
                && body["checks"]["redis"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("primary 127.0.0.1:{current}")))
        },
    )
    .await;
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{current}"))
        .and_then(|c| c.get_connection())
        .expect("the new primary answers");
    let comparison = Model::of(records.iter()).compare(&mut conn);
    /// Devices whose final value is an event of `after` (the stream's ordering by
    /// `last_updated` can make an earlier event win).
    fn decided_after(all: &[Rec], after: &[Rec]) -> BTreeSet<String> {
        let late = Model::of(after.iter());
        Model::of(all.iter())
            .devices
            .into_iter()
            .filter(|(id, value)| late.devices.get(id) == Some(value))
            .map(|(id, _)| id)
            .collect()
    }
    Outcome {
        events: n,
        sentinel_events: set.events(),
        wrong: comparison.wrong,
        acknowledged_while_replica_behind,
        written_after_failover: decided_after(&records, after_failover),
        failed_over_again: current != new_primary,
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_acknowledging_a_failover_loses_nothing() {
    let out = failover(1, 41).await;
    figure(&format!(
        "faults: sentinel failover, wait_replicas=1: events {}, acknowledged while the replica was behind {}, keys wrong {}, duration {:.1} s",
        out.events,
        out.acknowledged_while_replica_behind,
        out.wrong.len(),
        out.took.as_secs_f64()
    ));
    assert!(
        out.wrong.is_empty(),
        "{} keys wrong after the failover, e.g. {:?}\nwhat the sentinels decided:\n{}",
        out.wrong.len(),
        &out.wrong[..out.wrong.len().min(10)],
        out.sentinel_events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replica_acknowledgement_a_failover_loses_what_the_replica_lacked() {
    // When the sentinels fail over a second time, writes sent after the first may be lost
    // too (that is this test's loss, not a fault of the writer's), so the check of what
    // came after the failover needs a run with one failover: tried again, up to three
    // times, rather than passing without checking.
    for attempt in 0..3 {
        let out = failover(0, 42 + attempt).await;
        figure(&format!(
            "faults: sentinel failover, wait_replicas=0: events {}, acknowledged while the replica was behind {}, keys wrong (lost) {}, failed over again {}, duration {:.1} s",
            out.events,
            out.acknowledged_while_replica_behind,
            out.wrong.len(),
            out.failed_over_again,
            out.took.as_secs_f64()
        ));
        assert!(
            out.acknowledged_while_replica_behind > 0,
            "the primary acknowledged nothing while the replica was behind: the scenario did not happen"
        );
        if out.failed_over_again {
            continue;
        }
        // What the stream said after the failover landed on the new primary: no device
        // whose final value came then is wrong (a lost value with a later `last_updated`,
        // or a lost `add` to a metric set, stays lost for good).
        let late: Vec<&String> = out
            .wrong
            .iter()
            .filter(|w| {
                w.strip_prefix("device:")
                    .and_then(|rest| rest.split_once(": "))
                    .is_some_and(|(id, _)| out.written_after_failover.contains(id))
            })
            .collect();
        assert!(
            late.is_empty(),
            "{} devices written after the failover are wrong, e.g. {:?}\nwhat the sentinels decided:\n{}",
            late.len(),
            &late[..late.len().min(5)],
            out.sentinel_events
        );
        return;
    }
    panic!("the sentinels failed over twice in each of three runs: what came after a failover was never checked");
}
