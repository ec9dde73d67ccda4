//! Fault injection on the Redis side, against a real redis-server: an outage longer than
//! `max.poll.interval.ms` that ends with an empty Redis (repaired with `metacache resync`),
//! and Redis answering with errors (OOM, READONLY, BUSY, LOADING). Each scenario publishes
//! a generated stream and compares Redis, key by key, with the model of that stream.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::feed::{ordered_producer, publish, Feed};
use support::model::{generate, Model, StreamSpec};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_longer_than_max_poll_interval_then_back_empty_and_resynced() {
    let started = Instant::now();
    let mut h = Harness::start(4);
    let mut settings = h.settings();
    for (k, v) in [
        ("max.poll.interval.ms", "6000"),
        ("session.timeout.ms", "3000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        settings.kafka.client.insert(k.into(), v.into());
    }
    settings.http.redis_grace_secs = 1;
    let group = settings.kafka.group_id.clone();
    let records = Arc::new(generate(StreamSpec::new(1, 30_000)));
    let n = records.len();

    let daemon = h.start_daemon(settings.clone());
    let addr = daemon.http().await;
    // ~12 s of steady traffic, so events keep arriving all through the outage.
    let feed = Feed::start(
        h.kafka.bootstrap(),
        Arc::clone(&records),
        250,
        Duration::from_millis(100),
    );
    wait_for(Duration::from_secs(30), "3,000 events written", || async {
        daemon.finished() >= 3_000
    })
    .await;

    // The outage.
    h.redis.stop();
    let down_at = Instant::now();
    let before = daemon.stats.snapshot();
    let assigned = before.kafka_assigned_partitions;
    assert_eq!(assigned, 8, "both topics' 4 partitions");
    wait_for(
        Duration::from_secs(20),
        "the partitions to pause",
        || async { daemon.stats.snapshot().paused },
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "/readyz to say unhealthy",
        || async {
            let (status, body) = readyz(addr).await;
            status == 503 && body["checks"]["redis"]["status"] == "unhealthy"
        },
    )
    .await;
    // Stay down well past max.poll.interval.ms (6 s): a consumer that stopped polling
    // would be thrown out of the group by now. Watch the group the whole time.
    while down_at.elapsed() < Duration::from_secs(9) {
        let s = daemon.stats.snapshot();
        assert_eq!(s.kafka_assigned_partitions, assigned, "left the group");
        assert_eq!(s.rebalances, before.rebalances, "a rebalance happened");
        assert!(s.paused, "resumed while Redis is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished_during = daemon.finished();
    assert!(feed.delivered() > 3_000 + 1_000, "events kept coming");

    // Redis comes back on the same port, empty (no persistence).
    h.redis.restart().expect("redis restarts");
    let landed = feed.finish().await;
    assert_eq!(landed.len(), n);
    daemon
        .wait_finished(n as u64, Duration::from_secs(60))
        .await;
    h.wait_all_committed(&group, Duration::from_secs(30)).await;
    let after = daemon.stats.snapshot();
    assert!(!after.paused, "resumed");
    assert_eq!(after.rebalances, before.rebalances, "no rebalance at all");
    assert!(after.retries > 0);
    assert!(finished_during < n as u64);
    // The monitor looks at Redis once a second.
    wait_for(Duration::from_secs(10), "/readyz ready again", || async {
        readyz(addr).await.0 == 200
    })
    .await;

    // Every event after the restart landed, but the ones acknowledged before it went with
    // Redis's data: the cache is not the stream's state yet.
    let lost = Model::of(records.iter()).compare(&mut h.redis());
    assert!(
        !lost.wrong.is_empty(),
        "an empty Redis should have lost the early events"
    );
    support::model::figure(&format!(
        "faults: redis-outage: before resync {} of {} keys differ (lost with Redis's data)",
        lost.wrong.len(),
        lost.keys_checked
    ));

    // The runbook: stop the group, rewind it, start again.
    daemon.stop().await.expect("clean stop");
    let (code, out, err) = resync(&h, &group, &["--yes", "--assume-idle"]);
    assert_eq!(code, Some(0), "resync: {out}\n{err}");
    assert!(out.contains("done"), "{out}");
    assert_eq!(h.committed(&group, DEVICES), vec![0; 4]);
    assert_eq!(h.committed(&group, METRICS), vec![0; 4]);
    let daemon = h.start_daemon(settings);
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    daemon
        .wait_finished(n as u64, Duration::from_secs(30))
        .await;
    daemon.stop().await.expect("clean stop");

    Model::of(records.iter()).compare(&mut h.redis()).report(
        "redis-outage-longer-than-max-poll-interval+resync",
        n,
        1,
        started.elapsed(),
    );
}

/// One Redis error kind: how to cause it, what readiness must name, how to end it.
struct ErrorFault {
    name: &'static str,
    code: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_oom_readonly_busy_loading_hold_offsets_and_converge() {
    let started = Instant::now();
    // DEBUG RELOAD (for LOADING) needs the debug command; the busy threshold is short so
    // a runaway script answers BUSY at once.
    // Redis 6.2 allows DEBUG always and calls the busy threshold lua-time-limit.
    let args: &[&str] = if redis_major() >= 7 {
        &[
            "--enable-debug-command",
            "local",
            "--maxmemory-policy",
            "noeviction",
            "--busy-reply-threshold",
            "100",
        ]
    } else {
        &[
            "--maxmemory-policy",
            "noeviction",
            "--lua-time-limit",
            "100",
        ]
    };
    let h = Harness::start_with(4, args);
    let mut settings = h.settings();
    settings.writer.retry_initial_ms = 50;
    // Retries keep coming through every fault (Redis 6.2 answers a loading client only
    // every 2 MB read, about once a second here, so a 10 s cap would leave the test
    // counting retries for minutes).
    settings.writer.retry_max_ms = 1000;
    // Small pipelines: Redis 6.2 reads one 16 KB chunk per client each time it answers
    // during a load, so a large pipeline would see its LOADING replies only after the
    // response timeout.
    settings.writer.max_batch = 64;
    // Every fault here lasts less than the grace, so /readyz must say degraded, never
    // unhealthy (Redis 6.2 answers during a load only every 2 MB read, which stretches the
    // LOADING fault past the default 10 s).
    settings.http.redis_grace_secs = 60;
    let group = settings.kafka.group_id.clone();
    let records = generate(StreamSpec::new(2, 20_000));
    let n = records.len();
    let segments: Vec<&[support::model::Rec]> = records.chunks(n.div_ceil(9)).collect();
    let producer = ordered_producer(h.kafka.bootstrap());

    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    let faults = [
        ErrorFault {
            name: "OOM (maxmemory reached, noeviction)",
            code: "OOM",
        },
        ErrorFault {
            name: "READONLY (turned into a replica)",
            code: "READONLY",
        },
        ErrorFault {
            name: "BUSY (a script that never ends)",
            code: "BUSY",
        },
        ErrorFault {
            name: "LOADING (DEBUG RELOAD of a large dataset)",
            code: "LOADING",
        },
    ];
    let mut injected = 0;
    for (i, fault) in faults.iter().enumerate() {
        // Healthy traffic first, all of it committed.
        publish(&producer, segments[2 * i]).await;
        h.wait_all_committed(&group, Duration::from_secs(60)).await;

        let retries = daemon.stats.snapshot().retries;
        let ending = inject(&h, fault.code);
        injected += 1;
        publish(&producer, segments[2 * i + 1]).await;
        wait_for(
            Duration::from_secs(20),
            &format!("{}: the writer to retry", fault.name),
            || async { daemon.stats.snapshot().retries >= retries + 3 },
        )
        .await;
        wait_for(
            Duration::from_secs(10),
            &format!("{}: /readyz to name it", fault.name),
            || async {
                let (status, body) = readyz(addr).await;
                status == 200
                    && body["status"] == "degraded"
                    && body["checks"]["redis"]["status"] == "degraded"
                    && body["checks"]["redis"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(fault.code))
            },
        )
        .await;
        // While Redis refuses, nothing moves: no acknowledgement, no commit.
        let held = h.committed_map(&group);
        let finished = daemon.finished();
        let retries_now = daemon.stats.snapshot().retries;
        wait_for(
            Duration::from_secs(20),
            &format!("{}: more retries", fault.name),
            || async { daemon.stats.snapshot().retries >= retries_now + 4 },
        )
        .await;
        assert_eq!(daemon.finished(), finished, "{}: acknowledged", fault.name);
        assert_eq!(h.committed_map(&group), held, "{}: committed", fault.name);
        assert!(
            !h.unconsumed(&group).is_empty(),
            "{}: offsets held back",
            fault.name
        );
        ending.end(&h);
        h.wait_all_committed(&group, Duration::from_secs(60)).await;
    }
    publish(&producer, segments[8]).await;
    h.wait_all_committed(&group, Duration::from_secs(60)).await;
    daemon
        .wait_finished(n as u64, Duration::from_secs(30))
        .await;
    let snap = daemon.stats.snapshot();
    daemon.stop().await.expect("clean stop");
    support::model::figure(&format!(
        "faults: redis-errors: {} writer retries over {injected} faults",
        snap.retries
    ));
    Model::of(records.iter()).compare(&mut h.redis()).report(
        "redis-errors-oom-readonly-busy-loading",
        n,
        injected,
        started.elapsed(),
    );
}

/// How an injected error ends.
enum Ending {
    Command(Vec<Vec<String>>),
    Thread(std::thread::JoinHandle<()>, Option<Vec<String>>),
}

impl Ending {
    fn end(self, h: &Harness) {
        match self {
            Ending::Command(cmds) => {
                let mut c = h.redis();
                for cmd in cmds {
                    let mut q = redis::cmd(&cmd[0]);
                    for a in &cmd[1..] {
                        q.arg(a);
                    }
                    let _: redis::Value = q.query(&mut c).expect("healing command");
                }
            }
            Ending::Thread(thread, cmd) => {
                if let Some(cmd) = cmd {
                    let mut c = h.redis();
                    let mut q = redis::cmd(&cmd[0]);
                    for a in &cmd[1..] {
                        q.arg(a);
                    }
                    let _: redis::Value = q.query(&mut c).expect("healing command");
                }
                thread.join().expect("fault thread");
            }
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Makes the test's Redis answer writes with `code` errors; returns how to stop it.
fn inject(h: &Harness, code: &str) -> Ending {
    let mut c = h.redis();
    match code {
        "OOM" => {
            // Any limit below what is used: every command that may grow memory is refused.
            let _: () = redis::cmd("CONFIG")
                .arg(&["SET", "maxmemory", "1"][..])
                .query(&mut c)
                .unwrap();
            Ending::Command(vec![strings(&["CONFIG", "SET", "maxmemory", "0"])])
        }
        "READONLY" => {
            // A replica of a master that does not answer: it keeps its data (a reachable
            // empty master would replace it) and refuses writes until REPLICAOF NO ONE.
            let port = metacache::tools::embedded::free_port().unwrap();
            let _: () = redis::cmd("REPLICAOF")
                .arg("127.0.0.1")
                .arg(port)
                .query(&mut c)
                .unwrap();
            Ending::Command(vec![strings(&["REPLICAOF", "NO", "ONE"])])
        }
        "BUSY" => {
            let url = h.redis.url();
            let thread = std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                // Ends with an error once SCRIPT KILL stops it.
                let _ = redis::cmd("EVAL")
                    .arg("while true do end")
                    .arg(0)
                    .query::<redis::Value>(&mut c);
            });
            // Wait until the script runs (other clients then get BUSY).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match redis::cmd("PING").query::<String>(&mut c) {
                    Err(e)
                        if metacache::pipeline::sink::redis::describe_error(&e)
                            .contains("BUSY") =>
                    {
                        break
                    }
                    _ if Instant::now() > deadline => panic!("the script did not start"),
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            Ending::Thread(thread, Some(strings(&["SCRIPT", "KILL"])))
        }
        "LOADING" => {
            // Redis answers LOADING while it loads a dataset. DEBUG RELOAD saves and loads
            // it again; a filler database and a per-key delay of 1 ms make the load last up
            // to 20 s, and setting the delay back to 0 (CONFIG works while loading) ends it.
            // Redis 6.2 answers clients during a load only every 2 MB read (7 lets the
            // interval be set).
            // Keys, value bytes and per-key delay (µs): up to 20 s of loading. 7 ends it
            // early (CONFIG SET works while loading); 6.2 refuses that, so its load is
            // sized to end by itself in about 20 s, the 2 MB between answers passing in
            // about 1.2 s.
            let redis7 = redis_major() >= 7;
            let (keys, value_bytes, delay) = if redis7 {
                ("20000", "16", "1000")
            } else {
                ("200000", "100", "25")
            };
            let _: () = redis::cmd("SELECT").arg(1).query(&mut c).unwrap();
            let _: () = redis::cmd("DEBUG")
                .arg(&["POPULATE", keys, "filler", value_bytes][..])
                .query(&mut c)
                .unwrap();
            let _: () = redis::cmd("CONFIG")
                .arg(&["SET", "key-load-delay", delay][..])
                .query(&mut c)
                .unwrap();
            let (setting, value) = if redis7 {
                ("loading-process-events-interval-bytes", "1024")
            } else {
                // The filler is zero padding: uncompressed, so the file really is 20 MB.
                ("rdbcompression", "no")
            };
            let _: () = redis::cmd("CONFIG")
                .arg(&["SET", setting, value][..])
                .query(&mut c)
                .unwrap();
            let url = h.redis.url();
            let thread = std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
                let _: () = redis::cmd("CONFIG")
                    .arg(&["SET", "key-load-delay", "0"][..])
                    .query(&mut c)
                    .unwrap();
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match redis::cmd("PING").query::<String>(&mut c) {
                    Err(e)
                        if metacache::pipeline::sink::redis::describe_error(&e)
                            .contains("LOADING") =>
                    {
                        break
                    }
                    _ if Instant::now() > deadline => panic!("Redis did not start loading"),
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            Ending::Thread(
                thread,
                redis7.then(|| strings(&["CONFIG", "SET", "key-load-delay", "0"])),
            )
        }
        other => panic!("unknown fault {other}"),
    }
}
