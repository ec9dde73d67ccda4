//! The cluster run (`--stages cluster`): the real daemon drains the backlog into a Redis
//! Cluster of three primaries started here, once with one index key and once with 16
//! index shards, and Redis's CPU is read per node. The figure that matters is the spread:
//! with one index key, its node runs every event's `ZADD`; with shards, the busiest node's
//! share of Redis CPU should approach one third.

use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    flushall, probes, redis_cpu_seconds, reset_redis_stats, BenchOptions, Broker, Daemon,
    DEVICE_TOPIC, FETCH_WAIT_MS, METRIC_TOPIC,
};
use crate::tools::embedded::EmbeddedRedis;

/// One drain into the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRun {
    pub index_shards: u32,
    pub events_per_sec: f64,
    pub cpu_us_per_event: f64,
    /// Redis CPU µs per event on each primary (by port), busiest first.
    pub redis_cpu_us_per_event: Vec<(u16, f64)>,
    /// The busiest primary's share of the cluster's Redis CPU.
    pub busiest_share: f64,
}

/// A cluster of `primaries` primaries (no replicas) on free ports.
fn start_cluster(primaries: usize) -> Result<Vec<EmbeddedRedis>, String> {
    let mut nodes = Vec::with_capacity(primaries);
    let mut tries = 0;
    while nodes.len() < primaries {
        tries += 1;
        let bus = crate::tools::embedded::free_port()?.to_string();
        let started = EmbeddedRedis::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
        ]);
        match started {
            Ok(node) => nodes.push(node),
            Err(e) if tries > 10 => return Err(format!("a cluster node does not start: {e}")),
            Err(_) => {}
        }
    }
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
        .arg("--cluster-yes")
        .output()
        .map_err(|e| {
            format!("redis-cli (Debian: redis-tools) is needed for the cluster run: {e}")
        })?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        loop {
            let ok = super::info(&node.url(), "cluster").is_ok_and(|_| cluster_ok(node.port()));
            if ok {
                break;
            }
            if Instant::now() > deadline {
                return Err("the bench's Redis Cluster did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(nodes)
}

fn cluster_ok(port: u16) -> bool {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
        .is_ok_and(|info| info.contains("cluster_state:ok"))
}

/// Drains the backlog of `n` events into a fresh cluster, with 1 and with 16 index shards.
pub(super) fn run(broker: &Broker, n: u64, opts: &BenchOptions) -> Result<Vec<ClusterRun>, String> {
    let nodes = start_cluster(3)?;
    let seeds: Vec<String> = nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port()))
        .collect();
    let mut runs = Vec::new();
    for shards in [1u32, 16] {
        for node in &nodes {
            flushall(&node.url())?;
        }
        let mut o = opts.clone();
        o.settings.extend([
            ("redis.mode".to_owned(), "cluster".to_owned()),
            ("redis.nodes".to_owned(), seeds.join(",")),
            ("devices.index_shards".to_owned(), shards.to_string()),
        ]);
        let d = Daemon::start(
            &broker.bootstrap,
            &nodes[0].url(),
            &format!("bench-cluster-{shards}"),
            (DEVICE_TOPIC, METRIC_TOPIC),
            &o,
            false,
            FETCH_WAIT_MS,
        )?;
        let pid = d.child.id();
        d.wait(Duration::from_secs(30), "the first record", |s| {
            probes::consumed(s) > 0
        })?;
        for node in &nodes {
            reset_redis_stats(&node.url())?;
        }
        let cpu_before: Vec<f64> = nodes.iter().map(|n| redis_cpu_seconds(&n.url())).collect();
        let daemon_before = probes::cpu_seconds(pid).unwrap_or(0.0);
        let started = Instant::now();
        d.wait(Duration::from_secs(600), "the backlog to drain", |s| {
            probes::finished(s) >= n
        })?;
        let secs = started.elapsed().as_secs_f64();
        let per_event = |s: f64| s * 1e6 / n.max(1) as f64;
        let daemon_cpu = probes::cpu_seconds(pid).unwrap_or(0.0) - daemon_before;
        let mut per_node: Vec<(u16, f64)> = nodes
            .iter()
            .zip(&cpu_before)
            .map(|(node, before)| {
                (
                    node.port(),
                    per_event(redis_cpu_seconds(&node.url()) - before),
                )
            })
            .collect();
        d.stop();
        per_node.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = per_node.iter().map(|(_, c)| c).sum();
        runs.push(ClusterRun {
            index_shards: shards,
            events_per_sec: n as f64 / secs,
            cpu_us_per_event: per_event(daemon_cpu),
            busiest_share: per_node
                .first()
                .map_or(0.0, |(_, c)| c / total.max(f64::MIN_POSITIVE)),
            redis_cpu_us_per_event: per_node,
        });
    }
    Ok(runs)
}
