//! A randomized fault soak, the way Jepsen's nemesis mixes faults: three daemons in one
//! group (real `metacache` processes, each reaching Redis through a proxy of its own),
//! librdkafka's mock cluster and a real `redis-server`, a stream of device upserts,
//! tombstones and metric operations whose final state is known, and a seeded schedule of
//! faults while it flows:
//!
//! - `freeze`: one member `SIGSTOP`ped past its session timeout, then `SIGCONT`;
//! - `kill`: one member `SIGKILL`ed and started again;
//! - `hold`: one member's path to Redis holds its bytes for a while, then lets go;
//! - `cut`: every connection of one member to Redis is cut (as a proxy restart does);
//! - `broker`: the Kafka broker goes down and comes back;
//! - `redis-empty`: Redis restarts empty; the members are stopped, `metacache resync`
//!   rewinds the group, and they start again (the runbook's repair).
//!
//! After each fault the stream's part is finished, every member healed, and once the
//! group committed everything, Redis is compared with a model computed from the records
//! alone (`support::model`, independent of the daemon's code): 0 keys wrong, every time
//! and at the end.
//!
//! `METACACHE_SOAK_SECS` (default 60) and `METACACHE_SOAK_SEED` (default 1) set the run;
//! `scripts/soak.sh --minutes N --seed S` is the way to run a long one.

mod support;

use std::time::{Duration, Instant};

use support::feed::{ordered_producer, publish};
use support::model::{figure, generate, Lcg, Model, StreamSpec};
use support::process::Daemon;
use support::proxy::HoldingProxy;
use support::*;

const MEMBERS: usize = 3;
const FAULTS: [&str; 6] = ["freeze", "kill", "hold", "cut", "broker", "redis-empty"];

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
        Err(_) => default,
    }
}

struct Member {
    name: String,
    proxy: HoldingProxy,
    daemon: Option<Daemon>,
}

impl Member {
    fn start(&mut self, h: &Harness, group: &str) {
        let url = self.proxy.url();
        self.daemon = Some(h.spawn_daemon(
            &self.name,
            group,
            &[
                ("METACACHE__REDIS__URL", url.as_str()),
                ("METACACHE__REDIS__CONNECT_TIMEOUT_MS", "1000"),
            ],
        ));
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the member runs")
    }

    /// `SIGTERM` and the exit; a member that does not stop in time is a failure.
    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.signal("TERM");
            let code = d.wait_exit(Duration::from_secs(60));
            assert_eq!(code, Some(0), "{} stops cleanly", self.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_randomized_fault_soak_ends_with_redis_equal_to_the_stream() {
    let secs = env_u64("METACACHE_SOAK_SECS", 60);
    let seed = env_u64("METACACHE_SOAK_SEED", 1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    // Eight partitions keep each under the mock cluster's retention (about 5 MiB) for an
    // hour's stream, so a resync after Redis came back empty replays all of it.
    let mut h = Harness::start(8);
    let group = format!("soak-{seed}-{}", std::process::id());
    let mut rng = Lcg(seed);

    // Few keys, so late or replayed writes would show: metric add/remove/replace on a
    // dozen namespaces, upserts and tombstones on a hundred devices.
    let events = (secs as usize * 50).clamp(20_000, 150_000);
    let mut spec = StreamSpec::new(seed, events);
    spec.devices = 100;
    spec.namespaces = 12;
    spec.device_percent = 70;
    let stream = generate(spec);
    let producer = ordered_producer(h.kafka.bootstrap());

    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let mut m = Member {
            name: format!("soak-m{i}"),
            proxy: HoldingProxy::start(h.redis.port()).await,
            daemon: None,
        };
        m.start(&h, &group);
        members.push(m);
    }

    let mut published = 0usize;
    let mut injected: Vec<String> = Vec::new();
    let mut checks = 0usize;
    let mut keys_checked = 0usize;
    while (Instant::now() < deadline || injected.is_empty()) && published < stream.len() {
        let round = injected.len();
        let part_len = 200 + rng.below(400) as usize;
        let end = (published + part_len).min(stream.len());
        let (before, during) = stream[published..end].split_at((end - published) / 3);
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let who = rng.below(MEMBERS as u64) as usize;
        let label = format!("{round}:{fault}@{}", members[who].name);

        // A third of the part flows first, so the fault finds writes under way.
        publish(&producer, before).await;
        match fault {
            "freeze" => {
                let d = members[who].daemon();
                d.signal("STOP");
                let feed = publish(&producer, during);
                let wait = tokio::time::sleep(Duration::from_millis(4_500));
                let (_, _) = tokio::join!(feed, wait);
                members[who].daemon().signal("CONT");
            }
            "kill" => {
                let mut d = members[who].daemon.take().expect("runs");
                d.signal("KILL");
                assert_eq!(d.wait_exit(Duration::from_secs(10)), None, "killed");
                publish(&producer, during).await;
                members[who].start(&h, &group);
            }
            "hold" => {
                let before_held = members[who].proxy.bytes_held();
                members[who].proxy.hold();
                publish(&producer, during).await;
                tokio::time::sleep(Duration::from_millis(2_000 + rng.below(4_000))).await;
                let held = members[who].proxy.bytes_held() - before_held;
                members[who].proxy.release();
                figure(&format!("soak: {label}: {held} bytes held"));
            }
            "cut" => {
                let feed = publish(&producer, during);
                let cut = async {
                    tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                    members[who].proxy.switch_to(h.redis.port());
                };
                tokio::join!(feed, cut);
            }
            "broker" => {
                h.kafka.broker_down(1).expect("broker down");
                tokio::time::sleep(Duration::from_millis(3_000)).await;
                h.kafka.broker_up(1).expect("broker up");
                publish(&producer, during).await;
            }
            "redis-empty" => {
                h.redis.restart().expect("Redis restarts");
                publish(&producer, during).await;
                // The runbook: stop every member, rewind the group, start them again.
                for m in members.iter_mut() {
                    m.stop();
                }
                let (code, out, err) = resync(&h, &group, &["--assume-idle", "--yes"]);
                assert_eq!(code, Some(0), "resync: {out}{err}");
                for m in members.iter_mut() {
                    m.start(&h, &group);
                }
            }
            other => unreachable!("{other}"),
        }
        injected.push(label.clone());
        published = end;

        // Quiet period: everything published is written and committed.
        h.wait_all_committed(&group, Duration::from_secs(180)).await;
        let expected = Model::of(stream[..published].iter());
        let comparison = expected.compare(&mut h.redis());
        keys_checked += comparison.keys_checked;
        checks += 1;
        comparison.report(
            &format!("soak seed {seed} after {label}"),
            published,
            injected.len(),
            started.elapsed(),
        );
        for m in &members {
            assert!(
                m.daemon.is_some(),
                "{} was left stopped after {label}",
                m.name
            );
        }
    }

    // The end: every member stops cleanly, and Redis still equals the stream (a late
    // write of a member that lost its partitions would land now at the latest).
    for m in members.iter_mut() {
        m.stop();
    }
    let comparison = Model::of(stream[..published].iter()).compare(&mut h.redis());
    keys_checked += comparison.keys_checked;
    figure(&format!(
        "soak: seed {seed}, {} s, {published} events, {} faults ({}), {checks} checks, {keys_checked} keys checked in all",
        started.elapsed().as_secs(),
        injected.len(),
        injected.join(", ")
    ));
    comparison.report(
        &format!("soak seed {seed} at the end"),
        published,
        injected.len(),
        started.elapsed(),
    );
}
