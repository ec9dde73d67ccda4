//! The side server against the real pipeline: counters that match what was sent, readiness
//! that follows a Redis outage while liveness stays up, Prometheus text that parses, and
//! cache figures that agree with redis-cli.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn redis_cli(h: &Harness, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &h.redis.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (Debian package redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn json(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, path).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.last().map(|c| c.count).unwrap_or(0.0),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_metrics_and_cache_figures_tell_the_truth() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());
    let addr = daemon.http().await;

    let d = |id: &str, ts: &str| device_json(id, "t", ts);
    let (a, b, c, a_old) = (
        d("a", "2026-11-22T10:00:00Z"),
        d("b", "2026-11-22T11:00:00Z"),
        d("c", "2026-11-22T12:00:00Z"),
        d("a", "2026-11-22T09:00:00Z"),
    );
    let missing = r#"{"device_id":"x","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#;
    h.produce(
        DEVICES,
        &[
            (Some("a"), Some(&a)),
            (Some("b"), Some(&b)),
            (Some("c"), Some(&c)),
            (Some("a"), Some(&a_old)),
            (Some("x"), Some(missing)),
            (Some("y"), Some("not json")),
        ],
    )
    .await;
    h.produce(
        METRICS,
        &[
            (
                Some("ns"),
                Some(r#"{"op":"add","namespace":"ns","metric_names":["m"]}"#),
            ),
            (
                Some("ns"),
                Some(r#"{"op":"explode","namespace":"ns","metric_names":[]}"#),
            ),
        ],
    )
    .await;
    daemon.wait_finished(8, Duration::from_secs(30)).await;

    let (status, stats) = json(addr, "/stats").await;
    assert_eq!(status, 200);
    let dev = &stats["topics"]["device-metadata"];
    assert_eq!(dev["consumed"], 6);
    assert_eq!(dev["written"], 3);
    assert_eq!(dev["stale"], 1);
    assert_eq!(dev["rejected"]["missing_field"], 1);
    assert_eq!(dev["rejected"]["invalid_json"], 1);
    assert_eq!(dev["dead_lettered"], 2);
    let met = &stats["topics"]["metric-catalog"];
    assert_eq!(met["written"], 1);
    assert_eq!(met["rejected"]["unknown_op"], 1);
    assert!(stats["writer"]["batches"].as_u64().unwrap() >= 1);
    assert!(stats["writer"]["pipeline_ms_max"].as_f64().unwrap() > 0.0);
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));

    // Cache figures and per-partition offsets arrive within a refresh or two.
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let (_, s) = json(addr, "/stats").await;
        let committed: i64 = s["kafka"]["partitions"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["topic"] == "device-metadata")
                    .map(|p| p["committed"].as_i64().unwrap_or(0).max(0))
                    .sum()
            })
            .unwrap_or(0);
        if s["cache"]["total_devices"] == 3 && committed == 6 {
            break s;
        }
        assert!(Instant::now() < deadline, "figures never settled: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cache = &stats["cache"];
    assert_eq!(
        cache["total_devices"].to_string(),
        redis_cli(&h, &["ZCARD", "devices"])
    );
    let oldest = redis_cli(&h, &["ZRANGE", "devices", "0", "0", "WITHSCORES"]);
    assert_eq!(oldest, format!("a\n{}", cache["oldest_device_ms"]));
    let newest = redis_cli(&h, &["ZRANGE", "devices", "-1", "-1", "WITHSCORES"]);
    assert_eq!(newest, format!("c\n{}", cache["newest_device_ms"]));
    assert_eq!(
        cache["metric_namespaces"].to_string(),
        redis_cli(&h, &["SCARD", "metric_namespaces"])
    );
    let policy = redis_cli(&h, &["CONFIG", "GET", "maxmemory-policy"]);
    assert_eq!(
        policy,
        format!(
            "maxmemory-policy\n{}",
            cache["maxmemory_policy"].as_str().unwrap()
        )
    );
    let server = redis_cli(&h, &["INFO", "server"]);
    assert!(server.contains(&format!(
        "redis_version:{}",
        cache["redis_version"].as_str().unwrap()
    )));
    assert!(cache["used_memory_bytes"].as_u64().unwrap() > 0);
    for p in stats["kafka"]["partitions"].as_array().unwrap() {
        assert_eq!(p["lag"], 0, "{p}");
    }

    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics parses as Prometheus text");
    let topic = [("topic", "device-metadata")];
    assert_eq!(
        sample(&scrape, "metacache_events_consumed_total", &topic),
        Some(6.0)
    );
    assert_eq!(
        sample(&scrape, "metacache_events_written_total", &topic),
        Some(3.0)
    );
    assert_eq!(
        sample(&scrape, "metacache_events_stale_total", &topic),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "metacache_events_rejected_total",
            &[("topic", "device-metadata"), ("reason", "missing_field")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "metacache_events_rejected_total",
            &[("topic", "metric-catalog"), ("reason", "unknown_op")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, "metacache_redis_up", &[]), Some(1.0));
    assert_eq!(sample(&scrape, "metacache_kafka_up", &[]), Some(1.0));
    assert_eq!(sample(&scrape, "metacache_cache_devices", &[]), Some(3.0));
    assert_eq!(
        sample(
            &scrape,
            "metacache_consumer_lag",
            &[("topic", "device-metadata"), ("partition", "0")]
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &scrape,
            "metacache_redis_pipeline_duration_seconds_count",
            &[]
        )
        .unwrap_or(0.0)
            >= 1.0
            || scrape.samples.iter().any(|s| s
                .metric
                .starts_with("metacache_redis_pipeline_duration_seconds")),
        "histogram present"
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_redis_outage_while_liveness_stays_up() {
    let mut h = Harness::start(1);
    let mut settings = h.settings();
    settings.http.redis_grace_secs = 2;
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    let ready = |want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = json(addr, "/readyz").await;
            if body["status"] == want {
                return (code, body);
            }
            assert!(Instant::now() < deadline, "never {want}: {body:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (code, body) = ready("healthy").await;
    assert_eq!(code, 200);
    assert_eq!(body["checks"]["redis"]["status"], "healthy");
    assert_eq!(body["checks"]["kafka"]["status"], "healthy");

    h.redis.stop();
    let (code, body) = ready("unhealthy").await;
    assert_eq!(code, 503);
    assert_eq!(body["checks"]["redis"]["status"], "unhealthy");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Redis not usable for"),
        "{body:#}"
    );
    let redis_says = body["checks"]["redis"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(redis_says.contains(": unreachable: "), "{body:#}");
    let (code, live) = json(addr, "/healthz").await;
    assert_eq!(code, 200, "liveness must not depend on Redis: {live}");

    h.redis.restart().expect("redis restarts");
    let (code, _) = ready("healthy").await;
    assert_eq!(code, 200);
    daemon.stop().await.expect("clean stop");
}

/// A wrong password used to read "cannot connect" on `/readyz` and `/stats`, sending the
/// operator after the network. Each way Redis can refuse says what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_why_redis_is_not_usable() {
    let h = Harness::start(1);
    let redis = metacache::tools::embedded::EmbeddedRedis::start().expect("a second redis-server");
    let mut admin = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("admin connection");
    let mut acl = |args: &[&str]| {
        redis::cmd("ACL")
            .arg(args)
            .query::<()>(&mut admin)
            .expect("ACL SETUSER");
    };
    acl(&["SETUSER", "writer", "on", ">right-pw", "~*", "+@all"]);
    // A user that may log in but run nothing.
    acl(&[
        "SETUSER", "idle", "on", ">idle-pw", "~*", "-@all", "+auth", "+hello",
    ]);
    let closed = metacache::tools::embedded::free_port().expect("a free port");
    let port = redis.port();
    // A TLS port whose self-signed certificate the client does not trust.
    let certs = tempfile::tempdir().expect("a temp dir");
    let (cert, key) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = metacache::tools::embedded::free_port().expect("a free port");
    let (tls_port_arg, cert_arg, key_arg) = (
        tls_port.to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let _tls_redis = metacache::tools::embedded::EmbeddedRedis::start_with(&[
        "--tls-port",
        &tls_port_arg,
        "--tls-cert-file",
        &cert_arg,
        "--tls-key-file",
        &key_arg,
        "--tls-ca-cert-file",
        &cert_arg,
        "--tls-auth-clients",
        "no",
    ])
    .expect("redis-server with a TLS port");
    for (url, user, password, expected) in [
        (
            format!("redis://127.0.0.1:{closed}/0"),
            None,
            None,
            "unreachable: ",
        ),
        (
            format!("redis://127.0.0.1:{port}/0"),
            Some("writer"),
            Some("wrong-pw"),
            "authentication failed: ",
        ),
        (
            format!("redis://127.0.0.1:{port}/0"),
            Some("idle"),
            Some("idle-pw"),
            "permission denied: NOPERM",
        ),
        (
            format!("rediss://127.0.0.1:{tls_port}/0"),
            None,
            None,
            "TLS failed: ",
        ),
    ] {
        let mut settings = h.settings();
        settings.redis.url = url.clone();
        settings.redis.username = user.map(str::to_owned);
        settings.redis.password = password.map(str::to_owned);
        let daemon = h.start_daemon(settings);
        let addr = daemon.http().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let check = loop {
            let (_, body) = json(addr, "/readyz").await;
            let message = body["checks"]["redis"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if message.contains("not usable") {
                break message;
            }
            assert!(Instant::now() < deadline, "{url}: never refused: {body:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("{url} as {user:?}: {check}");
        assert!(check.contains(expected), "{url} as {user:?}: {check}");
        let (_, stats) = json(addr, "/stats").await;
        let shown = stats.to_string();
        assert!(shown.contains(expected), "{url}: /stats says {shown}");
        for secret in ["wrong-pw", "idle-pw", "right-pw"] {
            assert!(
                !shown.contains(secret) && !check.contains(secret),
                "{secret} shown"
            );
        }
        daemon.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_reported() {
    let h = Harness::start_with(1, &["--maxmemory-policy", "allkeys-lru"]);
    let daemon = h.start_daemon(h.settings());
    let addr = daemon.http().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = json(addr, "/readyz").await;
        if body["checks"]["eviction"]["status"] == "degraded" {
            assert_eq!(code, 200);
            assert!(body["checks"]["eviction"]["message"]
                .as_str()
                .unwrap()
                .contains("allkeys-lru"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "eviction never reported: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await.expect("clean stop");
}

/// What scraping costs the pipeline: drains the same backlog twice, without and with a
/// client fetching `/metrics` and `/stats` every 100 ms, and prints both rates. A
/// measurement, not a test: `cargo test --release --test http -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scrape_cost() {
    const EVENTS: usize = 60_000;
    let mut rates = Vec::new();
    for scrape in [false, true].repeat(4) {
        let h = Harness::start(4);
        let records: Vec<(String, String)> = (0..EVENTS)
            .map(|i| {
                let id = format!("dev-{}", i % 10_000);
                let json = device_json(&id, "t", "2026-11-22T10:00:00Z");
                (id, json)
            })
            .collect();
        for chunk in records.chunks(5_000) {
            let refs: Vec<(Option<&str>, Option<&str>)> = chunk
                .iter()
                .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
                .collect();
            h.produce(DEVICES, &refs).await;
        }
        let daemon = h.start_daemon(h.settings());
        let addr = daemon.http().await;
        wait_for(Duration::from_secs(30), "first record", || async {
            daemon.stats.snapshot().devices.consumed > 0
        })
        .await;
        let started = Instant::now();
        let paths: Vec<String> = std::env::var("SCRAPE_PATHS")
            .unwrap_or_else(|_| "/metrics,/stats".into())
            .split(',')
            .map(str::to_owned)
            .collect();
        let scraper = scrape.then(|| {
            tokio::spawn(async move {
                let mut scrapes = 0u64;
                loop {
                    for path in &paths {
                        let _ = http_get(addr, path).await;
                    }
                    scrapes += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if scrapes > 10_000 {
                        return;
                    }
                }
            })
        });
        daemon
            .wait_finished(EVENTS as u64, Duration::from_secs(120))
            .await;
        let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
        if let Some(s) = scraper {
            s.abort();
        }
        println!(
            "scrape_cost: scraping every 100 ms: {scrape:5}  backlog drain {rate:.0} events/s"
        );
        rates.push((scrape, rate));
        daemon.stop().await.expect("clean stop");
    }
    let mean = |on: bool| {
        let v: Vec<f64> = rates
            .iter()
            .filter(|(s, _)| *s == on)
            .map(|(_, r)| *r)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let spread = |on: bool| {
        let v: Vec<f64> = rates
            .iter()
            .filter(|(s, _)| *s == on)
            .map(|(_, r)| *r)
            .collect();
        let lo = v.iter().cloned().fold(f64::MAX, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{lo:.0}..{hi:.0}")
    };
    println!(
        "scrape_cost: without {:.0} events/s ({}), with {:.0} events/s ({}), {:+.1}%",
        mean(false),
        spread(false),
        mean(true),
        spread(true),
        (mean(true) / mean(false) - 1.0) * 100.0
    );
}

/// Sends raw bytes and reads until the server closes (or `wait` passes): what came back.
async fn raw(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A server that refuses early may reset the connection while we still write.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_side_server_survives_slow_clients_and_junk_and_exposes_nothing_writable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(1);
    let daemon = h.start_daemon(h.settings());
    let addr = daemon.http().await;
    wait_for(Duration::from_secs(30), "partitions assigned", || async {
        daemon.stats.snapshot().kafka_assigned_partitions > 0
    })
    .await;
    let (_, before) = json(addr, "/stats").await;

    // Fifty clients send half a request and stall.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(s);
    }
    let stalled_at = Instant::now();
    // Others are served at once.
    for path in ["/healthz", "/readyz", "/stats", "/metrics"] {
        let t = Instant::now();
        let (status, _) = tokio::time::timeout(Duration::from_secs(2), http_get(addr, path))
            .await
            .expect("answered while slow clients stall");
        assert!(status == 200 || status == 503, "{path}: {status}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{path} took {:?}",
            t.elapsed()
        );
    }

    // Junk gets 400.
    for junk in [
        &b"HELLO THERE\r\n\r\n"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        &b"GET / HTTP/9.9\r\n\r\n"[..],
        &b"GET /stats HTTP/1.1\r\nHost x\r\n\r\n"[..],
    ] {
        let response = raw(addr, junk, Duration::from_secs(3)).await;
        assert_eq!(status_of(&response), Some(400), "{junk:?} -> {response}");
    }

    // Writing methods: 405 on the four endpoints, 404 elsewhere; nothing changes.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for (path, expected) in [
            ("/healthz", 405),
            ("/readyz", 405),
            ("/stats", 405),
            ("/metrics", 405),
            ("/", 404),
            ("/admin", 404),
            ("/stats/reset", 404),
            ("/shutdown", 404),
        ] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{{\"a\":true}}"
            );
            let response = raw(addr, request.as_bytes(), Duration::from_secs(3)).await;
            assert_eq!(
                status_of(&response),
                Some(expected),
                "{method} {path} -> {response}"
            );
        }
    }
    // A body announced as huge is never read: the refusal comes at once.
    let t = Instant::now();
    let response = raw(
        addr,
        b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\nabc",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&response), Some(405), "{response}");
    assert!(t.elapsed() < Duration::from_secs(3));

    // A huge header is refused (431), never served.
    let big = format!(
        "GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let response = raw(addr, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(
        status_of(&response) == Some(431) || response.is_empty(),
        "huge header -> {}",
        &response[..response.len().min(200)]
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = raw(
        addr,
        format!("GET /stats HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_ne!(status_of(&response), Some(200), "200 headers were served");

    // The stalled clients are cut off after the header read timeout.
    let limit = metacache::side::http::HEADER_READ_TIMEOUT + Duration::from_secs(3);
    for mut s in stalled {
        let mut buf = Vec::new();
        let left = limit.saturating_sub(stalled_at.elapsed());
        let read = tokio::time::timeout(left, s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a stalled client was still connected after {limit:?}"
        );
    }

    // Nothing changed, and the daemon works on.
    let (_, after) = json(addr, "/stats").await;
    assert_eq!(before["topics"], after["topics"]);
    assert_eq!(before["kafka"]["commits"], after["kafka"]["commits"]);
    let (status, _) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
    h.produce(
        DEVICES,
        &[(
            Some("d"),
            Some(&device_json("d", "t", "2026-11-22T10:00:00Z")),
        )],
    )
    .await;
    daemon.wait_finished(1, Duration::from_secs(30)).await;
    daemon.stop().await.expect("clean stop");
}

/// One probe as the kubelet sends it: a full request, an answer within `timeout`.
async fn probe(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        Some(status_of(&String::from_utf8_lossy(&raw)) == Some(200))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Clients that each send half a request head and stall: `held` at once, and `churn` more
/// every second, until `until`.
async fn flood(addr: std::net::SocketAddr, held: usize, churn: usize, until: Instant) -> usize {
    use tokio::io::AsyncWriteExt;
    let mut open = Vec::new();
    let mut opened = 0;
    let mut batch = held;
    while Instant::now() < until {
        for _ in 0..batch {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await;
                open.push(s);
                opened += 1;
            }
        }
        batch = churn;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Keep at most `held + churn` sockets on our side; the server closes the rest.
        let excess = open.len().saturating_sub(held + churn);
        open.drain(..excess);
    }
    opened
}

/// The report: ~300 connections holding half a request, and 260 new ones every few
/// seconds, made probes fail (2 of 57 answered before the fix). The kubelet's probes (the
/// chart's `timeoutSeconds: 2`) must keep answering, on `http.listen` under the flood and
/// on `http.probe_listen` beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_keep_answering_under_a_connection_flood() {
    let h = Harness::start(1);
    let mut settings = h.settings();
    settings.http.probe_listen = "127.0.0.1:0".into();
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    let probe_addr = *daemon.stats.probe_addr.get().expect("probe listener bound");
    wait_for(Duration::from_secs(30), "partitions assigned", || async {
        daemon.stats.snapshot().kafka_assigned_partitions > 0
    })
    .await;
    // The probe listener serves the probes and nothing else.
    assert_eq!(http_get(probe_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(probe_addr, "/stats").await.0, 404);
    assert_eq!(http_get(probe_addr, "/metrics").await.0, 404);

    let until = Instant::now() + Duration::from_secs(12);
    let attack = tokio::spawn(flood(addr, 600, 260, until));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut asked, mut on_listen, mut on_probe) = (0, 0, 0);
    while Instant::now() < until {
        asked += 1;
        let timeout = Duration::from_secs(2);
        let (a, b) = tokio::join!(
            probe(addr, "/healthz", timeout),
            probe(probe_addr, "/healthz", timeout)
        );
        on_listen += usize::from(a);
        on_probe += usize::from(b);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opened = attack.await.expect("the flood ran");
    let evicted = daemon
        .stats
        .http_evicted
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "flood: {opened} stalled connections, {evicted} closed to make room; /healthz answered: http.listen {on_listen} of {asked}, http.probe_listen {on_probe} of {asked}"
    );
    // The flood really filled the listener.
    assert!(opened >= 600 + 260 * 5, "the flood opened only {opened}");
    assert!(
        evicted > 0,
        "the flood never filled the {} slots",
        metacache::side::http::MAX_CONNECTIONS
    );
    assert_eq!(
        on_listen, asked,
        "probes on http.listen failed under the flood"
    );
    assert_eq!(on_probe, asked, "probes on http.probe_listen failed");
    let scrape = http_get(addr, "/metrics").await.1;
    assert!(
        scrape.contains("metacache_http_connections_evicted_total"),
        "{scrape}"
    );
    daemon.stop().await.expect("clean stop");
}
