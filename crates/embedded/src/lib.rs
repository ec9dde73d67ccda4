//! The `redis-server` child the demo, the benchmark and the tests start on a free
//! loopback port, and the demo's sample events: what an example or a read-side test needs
//! to have a cache in a known state with nothing set up by hand. No Kafka here (the mock
//! cluster lives in the daemon, which links librdkafka), so the client crate can use it
//! for its own examples.
//!
//! Not for production: the server keeps nothing on disk.

pub mod samples;
mod seed;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a free loopback port, with no persistence, killed on
/// drop.
pub struct EmbeddedRedis {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra_args: Vec<String>,
}

impl EmbeddedRedis {
    /// Starts `redis-server` from `PATH` (Debian's `redis-server` package).
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--maxmemory", "1mb"]`.
    pub fn start_with(extra_args: &[&str]) -> Result<Self, String> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("metacache-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut redis = EmbeddedRedis {
            port,
            child: None,
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    "redis-server not found on PATH: install it (Debian: apt-get install redis-server) or pass --redis-url".to_owned()
                } else {
                    format!("cannot start redis-server: {e}")
                }
            })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("redis-server on port {} did not answer", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: its data is gone, as after a crash without persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `redis-server` to run: `METACACHE_REDIS_SERVER` when set (the test suite runs its
/// Redis-facing tests again on Redis 6.2 this way), else `redis-server` from `PATH`.
pub fn server_binary() -> String {
    std::env::var("METACACHE_REDIS_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "redis-server".to_owned())
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
