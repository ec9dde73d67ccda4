//! A real Sentinel deployment from local binaries: a primary, one replica, and three
//! sentinels (`redis-server <conf> --sentinel`) on free loopback ports, with short
//! timeouts so a failover takes seconds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metacache::tools::embedded::EmbeddedRedis;

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "cache";

pub struct SentinelSet {
    pub primary: EmbeddedRedis,
    pub replica: EmbeddedRedis,
    sentinels: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let primary = EmbeddedRedis::start().expect("primary starts");
        let replica =
            EmbeddedRedis::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()])
                .expect("replica starts");
        wait_until(Duration::from_secs(20), "the replica to sync", || {
            info(replica.port(), "replication").contains("master_link_status:up")
        });
        let dir = std::env::temp_dir().join(format!(
            "metacache-sentinels-{}-{}",
            std::process::id(),
            primary.port()
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = metacache::tools::embedded::free_port().expect("free port");
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel-{i}.log\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 4000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.display(),
                    primary = primary.port()
                ),
            )
            .expect("sentinel conf");
            let child = Command::new(metacache_embedded::server_binary())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            sentinels.push((port, child));
        }
        let set = SentinelSet {
            primary,
            replica,
            sentinels,
            dir,
        };
        // A failover needs the sentinels to know each other and the replica.
        for (port, _) in &set.sentinels {
            wait_until(Duration::from_secs(30), "the sentinels to meet", || {
                let peers = sentinel_query(*port, &["SENTINEL", "SENTINELS", MASTER]);
                let replicas = sentinel_query(*port, &["SENTINEL", "REPLICAS", MASTER]);
                matches!((peers, replicas), (Some(p), Some(r)) if p == 2 && r == 1)
            });
        }
        set
    }

    /// The sentinels' URLs, for `redis.nodes`.
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The port of the primary the first answering sentinel names.
    pub fn named_primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(port, _)| {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
            let mut conn = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .ok()?;
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER)
                .query(&mut conn)
                .ok()?;
            Some(port)
        })
    }
}

impl SentinelSet {
    /// What the sentinels decided (their `#` and `+` event lines), for a failure message:
    /// a test that asserts after the set is gone keeps this first.
    pub fn events(&self) -> String {
        let mut out = String::new();
        for i in 0..self.sentinels.len() {
            let log = std::fs::read_to_string(self.dir.join(format!("sentinel-{i}.log")))
                .unwrap_or_else(|e| format!("(no log: {e})"));
            out.push_str(&format!("--- sentinel {i} ---\n"));
            for line in log
                .lines()
                .filter(|l| l.contains(" # ") || l.contains(" * +") || l.starts_with("(no log"))
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        // A test failing while the set is alive shows what the sentinels decided.
        if std::thread::panicking() {
            eprintln!("{}", self.events());
        }
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `INFO <section>` of the server on `port` (empty when it does not answer).
pub fn info(port: u16, section: &str) -> String {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        .and_then(|mut c| redis::cmd("INFO").arg(section).query::<String>(&mut c))
        .unwrap_or_default()
}

/// The process id of the server on `port`.
pub fn pid(port: u16) -> i32 {
    let mut pid = None;
    wait_until(
        Duration::from_secs(10),
        "INFO server to name the process id",
        || {
            pid = info(port, "server")
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse().ok());
            pid.is_some()
        },
    );
    pid.unwrap_or_default()
}

/// How many entries a sentinel's list reply has.
fn sentinel_query(port: u16, args: &[&str]) -> Option<usize> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let reply: Vec<redis::Value> = cmd.query(&mut conn).ok()?;
    Some(reply.len())
}

fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
