//! Reading a child process from the outside: its CPU time and peak memory from `/proc`,
//! and its `/stats` over HTTP, so the figures are the daemon's own and nothing the
//! benchmark harness does is counted in them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// User + system CPU seconds of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after the closing paren are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / ticks.max(1) as f64)
}

/// Peak resident set size (VmHWM) of process `pid`, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GET `path` from the daemon's side server; the body as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (_, body) = raw.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Records the daemon finished: written, skipped as stale, or dead-lettered.
pub fn finished(stats: &serde_json::Value) -> u64 {
    stats["topics"]
        .as_object()
        .map(|topics| {
            topics
                .values()
                .map(|t| {
                    t["written"].as_u64().unwrap_or(0)
                        + t["stale"].as_u64().unwrap_or(0)
                        + t["dead_lettered"].as_u64().unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

pub fn consumed(stats: &serde_json::Value) -> u64 {
    stats["topics"]
        .as_object()
        .map(|topics| {
            topics
                .values()
                .map(|t| t["consumed"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds(pid).unwrap() > 0.0);
        assert!(peak_rss_bytes(pid).unwrap() > 1024 * 1024);
    }
}
