//! `[redis.tls]`: a private CA and a client certificate against a redis-server that
//! requires mutual TLS (its own `--tls-port`, certificates made here with openssl). The
//! whole pipeline writes through it; a missing client certificate and an untrusted server
//! each give one clear line in `/readyz`.

mod support;

use std::path::Path;
use std::time::Duration;

use redis::Commands;
use support::certs::{ca, cert, cert_for_days};
use support::*;

struct Tls {
    dir: tempfile::TempDir,
    port: u16,
}

impl Tls {
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn settings(&self, h: &Harness, ca: &str, client: bool) -> metacache::config::Settings {
        let mut settings = h.settings();
        settings.redis.url = format!("rediss://localhost:{}/0", self.port);
        settings.redis.tls.ca_file = self.file(ca);
        if client {
            settings.redis.tls.client_cert_file = self.file("client.pem");
            settings.redis.tls.client_key_file = self.file("client.key");
        }
        settings.http.redis_grace_secs = 1;
        settings
    }
}

fn start() -> (Harness, Tls) {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path(), "ca");
    ca(dir.path(), "other-ca");
    cert(
        dir.path(),
        "server",
        "localhost",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    cert(
        dir.path(),
        "client",
        "metacache",
        "ca",
        "extendedKeyUsage=clientAuth\n",
    );
    let port = metacache::tools::embedded::free_port().unwrap();
    let args = tls_port_args(dir.path(), port, "server", "yes");
    let h = Harness::start_with(1, &args.iter().map(String::as_str).collect::<Vec<_>>());
    (h, Tls { dir, port })
}

/// `redis-server` arguments for a TLS port presenting certificate `cert` (signed by `ca`),
/// with `--tls-auth-clients auth`.
fn tls_port_args(dir: &Path, port: u16, cert: &str, auth: &str) -> Vec<String> {
    let f = |n: &str| dir.join(n).display().to_string();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        f(&format!("{cert}.pem")),
        "--tls-key-file".into(),
        f(&format!("{cert}.key")),
        "--tls-ca-cert-file".into(),
        f("ca.pem"),
        "--tls-auth-clients".into(),
        auth.into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_writes_over_mutual_tls() {
    let (h, tls) = start();
    // The URL names the TLS port, where Redis speaks nothing but TLS and requires a client
    // certificate signed by its CA: a write there is a write over mutual TLS.
    let daemon = h.start_daemon(tls.settings(&h, "ca.pem", true));
    let addr = daemon.http().await;
    let value = device_json("t1", "temperature", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("t1"), Some(&value))]).await;
    daemon.wait_finished(1, Duration::from_secs(30)).await;
    assert!(h.redis().exists::<_, bool>("device:t1").unwrap());
    wait_for(
        Duration::from_secs(10),
        "/readyz healthy over TLS",
        || async { readyz(addr).await.1["checks"]["redis"]["status"] == "healthy" },
    )
    .await;
    daemon.stop().await.expect("clean stop");
}

/// Waits for `/readyz` to call Redis unhealthy, and returns the check's message.
async fn redis_problem(addr: std::net::SocketAddr) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = readyz(addr).await;
        let check = &ready["checks"]["redis"];
        if check["status"] == "unhealthy" {
            return check["message"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never unhealthy: {ready:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_or_an_untrusted_server_is_one_clear_line() {
    let (h, tls) = start();
    let without = h.start_daemon(tls.settings(&h, "ca.pem", false));
    let message = redis_problem(without.http().await).await;
    println!("no client certificate: {message}");
    assert!(message.contains("Redis not usable"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    drop(without);

    let untrusted = h.start_daemon(tls.settings(&h, "other-ca.pem", true));
    let message = redis_problem(untrusted.http().await).await;
    println!("untrusted server: {message}");
    assert!(message.contains("TLS failed"), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_one_clear_line() {
    let (h, tls) = start();
    cert_for_days(
        tls.dir.path(),
        "expired",
        "localhost",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        "0",
    );
    let port = metacache::tools::embedded::free_port().unwrap();
    let args = tls_port_args(tls.dir.path(), port, "expired", "no");
    let _expired = metacache::tools::embedded::EmbeddedRedis::start_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .expect("redis-server with an expired certificate");
    // notAfter is the second it was made: past it for sure.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut settings = tls.settings(&h, "ca.pem", false);
    settings.redis.url = format!("rediss://localhost:{port}/0");
    let daemon = h.start_daemon(settings);
    let message = redis_problem(daemon.http().await).await;
    println!("expired server certificate: {message}");
    assert!(message.contains("TLS failed"), "{message}");
    assert!(message.to_lowercase().contains("expired"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}
