//! A real Redis Cluster from local binaries: `redis-server --cluster-enabled yes` on free
//! loopback ports, joined with `redis-cli --cluster create`, with a short
//! `cluster-node-timeout` so a failover takes seconds.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use metacache::tools::embedded::EmbeddedRedis;
use redis::Value;

pub struct RedisCluster {
    pub nodes: Vec<EmbeddedRedis>,
    /// With TLS: each node's TLS port, by its plain port (the harness itself talks plain).
    pub tls_ports: BTreeMap<u16, u16>,
}

/// How long a node may be unreachable before the others mark it failed.
pub const NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    /// `primaries` primaries, each with `replicas` replicas.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        Self::start_with(primaries, replicas, None)
    }

    /// [`start`](Self::start), each node also listening for TLS clients with the server
    /// certificate `server.pem`/`server.key` signed by `ca.pem` in `certs` (Redis answers
    /// a TLS client's `CLUSTER SLOTS` with the TLS ports).
    pub fn start_with(
        primaries: usize,
        replicas: usize,
        certs: Option<&std::path::Path>,
    ) -> RedisCluster {
        let count = primaries * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        let mut tls_ports = BTreeMap::new();
        while nodes.len() < count {
            let tls = certs.map(|dir| {
                let port = metacache::tools::embedded::free_port().expect("free port");
                let f = |n: &str| dir.join(n).display().to_string();
                let args = vec![
                    "--tls-port".to_owned(),
                    port.to_string(),
                    "--tls-cert-file".into(),
                    f("server.pem"),
                    "--tls-key-file".into(),
                    f("server.key"),
                    "--tls-ca-cert-file".into(),
                    f("ca.pem"),
                    "--tls-auth-clients".into(),
                    "no".into(),
                    "--tls-cluster".into(),
                    "yes".into(),
                ];
                (port, args)
            });
            let extra: Vec<String> = tls.as_ref().map(|(_, a)| a.clone()).unwrap_or_default();
            if let Some(node) = start_node_with(&extra) {
                if let Some((port, _)) = tls {
                    tls_ports.insert(node.port(), port);
                }
                nodes.push(node);
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        create
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes");
        let out = create.output().expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, tls_ports };
        cluster.wait_until(
            Duration::from_secs(30),
            "the cluster to be ok everywhere",
            |c| {
                c.nodes.iter().all(|n| {
                    let info = query_text(n.port(), &["CLUSTER", "INFO"]).unwrap_or_default();
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                }) && c.primaries().len() == primaries
                    && c.replicas_synced() == primaries * replicas
            },
        );
        cluster
    }

    /// Every node's URL: the seeds for `redis.nodes`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }

    /// A cluster client of the redis crate (sync), for checking what the cluster holds.
    pub fn client(&self) -> redis::cluster::ClusterConnection {
        let live: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| query_text(n.port(), &["PING"]).is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect();
        redis::cluster::ClusterClient::new(live)
            .expect("cluster client")
            .get_connection()
            .expect("cluster connection")
    }

    /// The ports of the primaries that serve slots, as the first live node sees them, with
    /// how many slots each serves.
    pub fn primaries(&self) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        let Some(nodes) = self.cluster_nodes() else {
            return out;
        };
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let slots: usize = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => {
                        b.parse::<usize>().unwrap_or(0) - a.parse::<usize>().unwrap_or(0) + 1
                    }
                    None => 1,
                })
                .sum();
            if slots > 0 {
                out.insert(port_of(fields[1]), slots);
            }
        }
        out
    }

    /// Adds an empty primary (`redis-cli --cluster add-node`); its port. It serves no slot
    /// until a reshard gives it some.
    pub fn add_primary(&mut self) -> u16 {
        let node = loop {
            if let Some(node) = start_node() {
                break node;
            }
        };
        let port = node.port();
        let seed = self.primaries().into_keys().next().expect("a primary");
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("add-node")
            .arg(format!("127.0.0.1:{port}"))
            .arg(format!("127.0.0.1:{seed}"))
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "add-node failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.nodes.push(node);
        let count = self.nodes.len();
        self.wait_until(
            Duration::from_secs(30),
            "every node to know the new one",
            |c| {
                c.nodes.iter().all(|n| {
                    let info = query_text(n.port(), &["CLUSTER", "INFO"]).unwrap_or_default();
                    info.contains(&format!("cluster_known_nodes:{count}"))
                        && info.contains("cluster_state:ok")
                })
            },
        );
        port
    }

    /// The port of the primary that holds `key` (`CLUSTER KEYSLOT`, then `CLUSTER SLOTS`).
    pub fn owner_of(&self, key: &str) -> u16 {
        let port = self.primaries().into_keys().next().expect("a primary");
        let Some(Value::Int(slot)) = query(port, &["CLUSTER", "KEYSLOT", key]) else {
            panic!("CLUSTER KEYSLOT {key}");
        };
        let Some(Value::Array(ranges)) = query(port, &["CLUSTER", "SLOTS"]) else {
            panic!("CLUSTER SLOTS");
        };
        for range in ranges {
            if let Value::Array(f) = range {
                if let (Value::Int(a), Value::Int(b), Value::Array(node)) = (&f[0], &f[1], &f[2]) {
                    if (*a..=*b).contains(&slot) {
                        if let Value::Int(p) = node[1] {
                            return p as u16;
                        }
                    }
                }
            }
        }
        panic!("slot {slot} unserved")
    }

    /// A primary's node id.
    pub fn id_of(&self, port: u16) -> String {
        let nodes = self.cluster_nodes().expect("a live node");
        nodes
            .lines()
            .find(|l| l.split(' ').nth(1).is_some_and(|a| port_of(a) == port))
            .and_then(|l| l.split(' ').next())
            .expect("node listed")
            .to_owned()
    }

    /// Replicas whose link to their primary is up.
    pub fn replicas_synced(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| {
                query_text(n.port(), &["INFO", "replication"]).is_some_and(|i| {
                    i.contains("role:slave") && i.contains("master_link_status:up")
                })
            })
            .count()
    }

    fn cluster_nodes(&self) -> Option<String> {
        self.nodes
            .iter()
            .find_map(|n| query_text(n.port(), &["CLUSTER", "NODES"]))
    }

    /// The node on `port`, to stop it.
    pub fn node(&mut self, port: u16) -> &mut EmbeddedRedis {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// Moves `slots` slots from one primary to another with `redis-cli --cluster reshard`
    /// (keys are migrated with MIGRATE while clients write).
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> String {
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{from}"))
            .args(["--cluster-from", &self.id_of(from)])
            .args(["--cluster-to", &self.id_of(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "reshard failed: {text}");
        text
    }

    pub fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keys per primary port (`DBSIZE`).
    pub fn keys_per_primary(&self) -> BTreeMap<u16, i64> {
        self.primaries()
            .keys()
            .map(|port| {
                let n = query(*port, &["DBSIZE"])
                    .and_then(|v| match v {
                        Value::Int(i) => Some(i),
                        _ => None,
                    })
                    .unwrap_or(-1);
                (*port, n)
            })
            .collect()
    }

    pub fn flushall(&self) {
        for port in self.primaries().keys() {
            query(*port, &["FLUSHALL"]).expect("FLUSHALL");
        }
    }
}

fn start_node() -> Option<EmbeddedRedis> {
    start_node_with(&[])
}

fn start_node_with(extra: &[String]) -> Option<EmbeddedRedis> {
    let timeout = NODE_TIMEOUT_MS.to_string();
    let mut args = vec![
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &timeout,
        // A replica takes over however long its link was down.
        "--cluster-replica-validity-factor",
        "0",
    ];
    // The cluster bus listens on port + 10000 unless told (Redis 7): pick a free one.
    let bus;
    if super::redis_major() >= 7 {
        bus = metacache::tools::embedded::free_port().ok()?.to_string();
        args.extend(["--cluster-port", &bus]);
    }
    args.extend(extra.iter().map(String::as_str));
    EmbeddedRedis::start_with(&args).ok()
}

fn port_of(address: &str) -> u16 {
    // host:port@bus
    address
        .split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

pub fn query(port: u16, args: &[&str]) -> Option<Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(300))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<Value>(&mut conn).ok()
}

pub fn query_text(port: u16, args: &[&str]) -> Option<String> {
    match query(port, args)? {
        Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::VerbatimString { text, .. } => Some(text),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}
