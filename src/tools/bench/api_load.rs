//! `metacache bench --api-load RATE`: readers of the daemon's HTTP read API while it
//! writes, to price what serving reads costs the writer (the API reads Redis through the
//! same client code the daemon's other side tasks use, never through the write path).
//!
//! The mix is what a service doing look-ups sends: 7 of 10 requests one device by id, 2 a
//! page of 100 devices, 1 the cache figures. Each request opens its own connection
//! (`Connection: close`), the worst case for the daemon's side server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The bearer token the bench's daemons are given when the API is on.
pub const TOKEN: &str = "metacache-bench-api-token-0123456789";

/// What the readers saw.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApiFigures {
    /// Requests per second asked for (0: the API on, no reader).
    pub rate: u64,
    pub requests: u64,
    /// Answers other than 200 and 404 (an unknown device), and failed connections.
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Reader threads sending requests at a fixed rate until [`ApiLoad::finish`].
pub struct ApiLoad {
    rate: u64,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<u32>>>,
}

impl ApiLoad {
    /// Starts readers of `addr` sending `rate` requests per second in all, spread over
    /// `devices` ids `dev-0` … (the bench's workload names its devices so).
    pub fn start(addr: SocketAddr, rate: u64, devices: u64) -> ApiLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        // Requests that take longer than the interval would lower the rate of one
        // thread; a few threads keep it.
        let threads_n = if rate == 0 {
            0
        } else {
            rate.div_ceil(250).clamp(1, 8)
        };
        let threads =
            (0..threads_n)
                .map(|t| {
                    let (stop, errors) = (Arc::clone(&stop), Arc::clone(&errors));
                    let interval = Duration::from_secs_f64(threads_n as f64 / rate as f64);
                    std::thread::spawn(move || {
                        let mut latencies_us = Vec::new();
                        let mut next = Instant::now();
                        let mut i: u64 = t;
                        while !stop.load(Ordering::Relaxed) {
                            let path = match i % 10 {
                                0 => "/v1/cache/info".to_owned(),
                                1 | 2 => "/v1/devices?limit=100".to_owned(),
                                _ => format!("/v1/devices/dev-{}", (i * 7919) % devices.max(1)),
                            };
                            let started = Instant::now();
                            match get_status(addr, &path) {
                                Some(200 | 404) => latencies_us
                                    .push(started.elapsed().as_micros().min(u128::from(u32::MAX))
                                        as u32),
                                _ => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            i += threads_n;
                            next += interval;
                            let now = Instant::now();
                            if next > now {
                                std::thread::sleep(next - now);
                            } else {
                                // Behind: do not burst to catch up.
                                next = now;
                            }
                        }
                        latencies_us
                    })
                })
                .collect();
        ApiLoad {
            rate,
            stop,
            errors,
            threads,
        }
    }

    pub fn finish(self) -> ApiFigures {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<u32> = Vec::new();
        for t in self.threads {
            all.extend(t.join().unwrap_or_default());
        }
        all.sort_unstable();
        let at = |q: f64| {
            if all.is_empty() {
                0.0
            } else {
                f64::from(all[((all.len() - 1) as f64 * q) as usize]) / 1000.0
            }
        };
        let errors = self.errors.load(Ordering::Relaxed);
        ApiFigures {
            rate: self.rate,
            requests: all.len() as u64 + errors,
            errors,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        }
    }
}

/// The status code of `GET path` with the bench's token, `None` when nothing answered.
fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let head = String::from_utf8_lossy(&raw[..raw.len().min(64)]);
    head.split_whitespace().nth(1)?.parse().ok()
}
