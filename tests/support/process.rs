//! The real `metacache` binary as a child process, configured through the environment as
//! a container would be, for the tests that kill it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{http_get, Harness};

/// The binary under test. Other worktrees may share the target directory and re-link
/// `target/debug/metacache` while this test runs, so keep a hard link to the file cargo
/// just built (its inode survives a re-link).
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_metacache"));
        // One link per test file (`faults_process-<hash>` -> `faults_process`), replaced on
        // each run, so old builds do not pile up.
        let test_name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| {
                n.rsplit_once('-')
                    .map_or(n.clone(), |(stem, _)| stem.to_owned())
            })
            .unwrap_or_else(|| "tests".into());
        let dir = std::env::temp_dir().join("metacache-test-bin");
        let _ = std::fs::create_dir_all(&dir);
        let link = dir.join(format!("metacache-for-{test_name}"));
        let _ = std::fs::remove_file(&link);
        if std::fs::hard_link(&built, &link).is_ok() || std::fs::copy(&built, &link).is_ok() {
            link
        } else {
            built
        }
    })
}

/// A running `metacache run` child. Killed on drop, so a failing test leaves nothing
/// behind.
pub struct Daemon {
    pub name: String,
    child: Child,
    pub http: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts `metacache run` against these servers, in `group`, with extra
    /// `METACACHE__*` settings.
    pub fn spawn_daemon(&self, name: &str, group: &str, extra_env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let port = metacache::tools::embedded::free_port().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(binary());
        for (key, _) in std::env::vars() {
            if key.starts_with("METACACHE") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("run")
            .current_dir(dir.path())
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("METACACHE__KAFKA__BROKERS", self.kafka.bootstrap())
            .env("METACACHE__KAFKA__GROUP_ID", group)
            .env("METACACHE__KAFKA__CLIENT__FETCH_WAIT_MAX_MS", "10")
            .env("METACACHE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "3000")
            .env("METACACHE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS", "500")
            .env("METACACHE__KAFKA__COMMIT_INTERVAL_MS", "100")
            .env("METACACHE__REDIS__URL", self.redis.url())
            .env("METACACHE__WRITER__RETRY_INITIAL_MS", "20")
            .env("METACACHE__WRITER__RETRY_MAX_MS", "200")
            .env("METACACHE__SHUTDOWN__TIMEOUT_SECS", "20")
            .env("METACACHE__HTTP__LISTEN", http.to_string());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("metacache starts");
        Daemon {
            name: name.to_owned(),
            child,
            http,
            log,
            _dir: dir,
        }
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit; `Some(code)`, or `None` when a signal ended it. Panics (after
    /// killing it) when it takes longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// `/stats` as JSON, or `None` while the side server is not up (or gone).
    pub async fn stats(&self) -> Option<serde_json::Value> {
        let probe = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::net::TcpStream::connect(self.http).await.ok()?;
            Some(http_get(self.http, "/stats").await)
        })
        .await
        .ok()
        .flatten()?;
        serde_json::from_str(&probe.1).ok()
    }

    /// A number out of `/stats` by JSON pointer, e.g. `/kafka/assigned_partitions`; 0 when
    /// unavailable.
    pub async fn stat(&self, pointer: &str) -> u64 {
        self.stats()
            .await
            .and_then(|s| s.pointer(pointer).and_then(|v| v.as_u64()))
            .unwrap_or(0)
    }

    /// Records finished (written, stale or dead-lettered), both topics.
    pub async fn finished(&self) -> u64 {
        let Some(s) = self.stats().await else {
            return 0;
        };
        let mut n = 0;
        for topic in ["device-metadata", "metric-catalog"] {
            for field in ["written", "stale", "dead_lettered"] {
                n += s["topics"][topic][field].as_u64().unwrap_or(0);
            }
        }
        n
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.exited() {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} log (last lines) ---\n{}",
                self.name,
                self.log_tail(60)
            );
        }
        // METACACHE_TEST_LOGS=DIR keeps every child's log for a look afterwards.
        if let Some(dir) = std::env::var_os("METACACHE_TEST_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            let name = format!("{}-{}.log", self.name, self.child.id());
            let _ = std::fs::copy(&self.log, std::path::Path::new(&dir).join(name));
        }
    }
}
