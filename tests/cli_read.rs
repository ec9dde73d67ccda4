//! The look-ups (`get device`, `get devices`, `get metrics`, `check-metric`, `info`) and
//! `produce`, run as the binary: exit codes, text for people, JSON for scripts, settings
//! from the environment and the command line, and bad input lines named by number.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use metacache::tools::embedded::{Apply, EmbeddedRedis};
use rdkafka::Message;
use serde_json::{json, Value};
use support::*;

/// Runs `metacache ARGS --redis-url URL`.
fn lookup(url: &str, args: &[&str]) -> Output {
    metacache()
        .args(args)
        .args(["--redis-url", url])
        .output()
        .expect("metacache runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", stdout(out)))
}

/// A redis-server holding the demo's end state.
fn demo_redis(prefix: &str) -> EmbeddedRedis {
    let redis = EmbeddedRedis::start().expect("redis-server");
    redis
        .apply(prefix, &metacache::tools::demo::valid_sample_events())
        .expect("demo data");
    redis
}

#[test]
fn get_device_prints_fields_or_json_and_exits_1_when_missing() {
    let redis = demo_redis("");
    let url = redis.url();

    let out = lookup(&url, &["get", "device", "dev-44"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "device_id      dev-44\n\
         datatype_id    dt-2\n\
         datatype_name  door_open\n\
         datatype_unit  (none)\n\
         persist        true\n\
         last_updated   2026-11-22T10:05:00.000Z\n\
         site           plant-1\n\
         tags           [\"entrance\",\"north\"]\n"
    );

    let out = lookup(&url, &["get", "device", "dev-42", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let stored: String = redis::cmd("GET")
        .arg("device:dev-42")
        .query(&mut redis::Client::open(url.as_str()).unwrap())
        .unwrap();
    assert_eq!(stdout(&out).trim_end(), stored, "exactly what Redis holds");
    assert_eq!(json_of(&out)["datatype_unit"], "K");

    let out = lookup(&url, &["get", "device", "dev-45"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("\"dev-45\" is not in the cache"),
        "{}",
        stderr(&out)
    );
    let out = lookup(&url, &["get", "device", "dev-45", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out), Value::Null);
}

#[test]
fn get_devices_pages_filters_and_orders() {
    let redis = demo_redis("");
    let url = redis.url();
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["get", "devices", "--json"];
        all.extend_from_slice(args);
        let out = lookup(&url, &all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        json_of(&out)
            .as_array()
            .expect("an array")
            .iter()
            .map(|e| e["device_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&[]), ["dev-42", "dev-44", "dev-43"]);
    assert_eq!(ids(&["--limit", "2"]), ["dev-42", "dev-44"]);
    assert_eq!(ids(&["--oldest-first", "--limit", "1"]), ["dev-43"]);
    assert_eq!(
        ids(&["--pattern", "dev-4[34]", "--offset", "1"]),
        ["dev-43"]
    );
    assert!(ids(&["--offset", "3"]).is_empty());
    assert!(ids(&["--limit", "0"]).is_empty());

    let out = lookup(&url, &["get", "devices", "--limit", "1", "--json"]);
    assert_eq!(
        json_of(&out),
        json!([{
            "device_id": "dev-42",
            "last_updated": "2026-11-22T10:30:00.000Z",
            "last_updated_ms": 1_795_343_400_000_i64
        }])
    );
    let out = lookup(&url, &["get", "devices", "--oldest-first"]);
    assert_eq!(
        stdout(&out),
        "dev-43  2026-11-22T10:00:00.000Z\n\
         dev-44  2026-11-22T10:05:00.000Z\n\
         dev-42  2026-11-22T10:30:00.000Z\n"
    );
    let out = lookup(&url, &["get", "devices", "--limit", "x"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    // A class never closed is a typo, not an empty page.
    for typo in ["h-[", "dev-4[34", "dev\\"] {
        let out = lookup(&url, &["get", "devices", "--pattern", typo]);
        assert_eq!(out.status.code(), Some(2), "{typo}: {}", stdout(&out));
        assert!(stderr(&out).contains("usage: pattern"), "{}", stderr(&out));
        assert_eq!(stdout(&out), "", "{typo}");
    }
    assert_eq!(ids(&["--pattern", "dev-4\\[34]"]), Vec::<String>::new());
}

#[test]
fn get_metrics_and_check_metric() {
    let redis = demo_redis("");
    let url = redis.url();

    let out = lookup(&url, &["get", "metrics", "billing"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "disk\nmem\n");
    let out = lookup(&url, &["get", "metrics", "", "--json"]);
    assert_eq!(
        json_of(&out),
        json!(["errors", "requests"]),
        "empty = default"
    );
    // Unknown and empty differ: exit 1 for a namespace metacache never wrote.
    let out = lookup(&url, &["get", "metrics", "nope", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out), json!([]));
    assert!(
        stderr(&out).contains("unknown namespace \"nope\""),
        "{}",
        stderr(&out)
    );
    let mut conn = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    // What `replace []` leaves: listed, no set key.
    let _: () = redis::cmd("SADD")
        .arg("metric_namespaces")
        .arg("emptied")
        .query(&mut conn)
        .expect("SADD");
    let out = lookup(&url, &["get", "metrics", "emptied"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("is known and has no metric names"),
        "{}",
        stderr(&out)
    );
    // A namespace metacache refuses to write is a usage error.
    let out = lookup(&url, &["get", "metrics", "device:dev-42"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = lookup(&url, &["check-metric", "billing", "disk"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        "valid: \"disk\" is a metric name in namespace \"billing\"\n"
    );
    let out = lookup(&url, &["check-metric", "billing", "cpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("not valid:"), "{}", stdout(&out));
    let out = lookup(&url, &["check-metric", "", "requests", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        json_of(&out),
        json!({"namespace": "default", "name": "requests", "valid": true})
    );
    let out = lookup(&url, &["check-metric", "infra", "load15", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["valid"], false);
}

#[test]
fn info_reports_the_cache_and_health() {
    let redis = demo_redis("");
    let url = redis.url();
    let out = lookup(&url, &["info", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let info = json_of(&out);
    assert_eq!(info["total_devices"], 3);
    assert_eq!(info["metric_namespaces"], 3);
    assert_eq!(info["oldest_entry"]["device_id"], "dev-43");
    assert_eq!(info["newest_entry"]["device_id"], "dev-42");
    assert!(info["memory_usage_bytes"].as_u64().unwrap() > 0);
    assert_eq!(info["health"]["status"], "healthy");
    assert_eq!(info["health"]["maxmemory_policy"], "noeviction");
    assert!(info["health"]["timestamp"].as_str().unwrap().ends_with('Z'));

    let out = lookup(&url, &["info"]);
    let text = stdout(&out);
    assert!(text.contains("health             healthy: PING"), "{text}");
    assert!(text.contains("devices            3\n"), "{text}");
    assert!(
        text.contains("  oldest           dev-43  2026-11-22T10:00:00.000Z\n"),
        "{text}"
    );

    let evicting = EmbeddedRedis::start_with(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
    let out = lookup(&evicting.url(), &["info", "--json"]);
    assert_eq!(out.status.code(), Some(0), "degraded is still an answer");
    assert_eq!(json_of(&out)["health"]["status"], "degraded");
}

#[test]
fn settings_come_from_the_environment_and_errors_have_their_own_exit_code() {
    let redis = demo_redis("tenant-a:");
    let out = metacache()
        .args(["get", "devices", "--json"])
        .env("METACACHE__REDIS__URL", redis.url())
        .env("METACACHE__REDIS__KEY_PREFIX", "tenant-a:")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out).as_array().unwrap().len(), 3);

    // --redis-url wins over the environment.
    let port = metacache::tools::embedded::free_port().unwrap();
    let out = metacache()
        .args(["get", "device", "dev-42"])
        .args([
            "--redis-url",
            &format!("redis://:hunter2@127.0.0.1:{port}/0"),
        ])
        .env("METACACHE__REDIS__URL", redis.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "Redis unreachable");
    let err = stderr(&out);
    assert!(err.contains("cannot reach Redis"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // A corrupt entry is an error, not a crash.
    let mut r = redis::Client::open(redis.url()).unwrap();
    let _: () = redis::cmd("SET")
        .arg("device:bad")
        .arg("{}")
        .query(&mut r)
        .unwrap();
    let out = lookup(&redis.url(), &["get", "device", "bad"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("corrupt entry under key \"device:bad\""),
        "{}",
        stderr(&out)
    );

    let out = lookup(&redis.url(), &["info", "--config", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(2), "configuration problem");
}

/// `metacache produce` with `input` on stdin.
fn produce(h: &Harness, args: &[&str], input: &str) -> Output {
    let mut child = metacache()
        .arg("produce")
        .args(args)
        .args(["--brokers", h.kafka.bootstrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const DEVICE_LINES: &str = concat!(
    r#"{"device_id":"p-1","datatype_id":"dt-1","datatype_name":"rpm","persist":true,"last_updated":"2026-11-24T08:00:00Z"}"#,
    "\n",
    r#"{"device_id":"p-2","datatype_id":"dt-1","persist":true,"last_updated":"2026-11-24T08:00:00Z"}"#,
    "\n",
    "\n",
    r#"{"device_id":"p 3 ü","datatype_id":"dt-1","datatype_name":"rpm","persist":false,"last_updated":"2026-11-24T09:00:00+01:00","site":"x"}"#,
    "\n",
    "{\"device_id\": \"p-4\",\n",
    r#"{"tombstone":"p-1"}"#,
    "\n",
);

#[test]
fn produce_reports_bad_lines_by_number_and_sends_nothing() {
    let h = Harness::start(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("devices.jsonl");
    std::fs::write(&file, DEVICE_LINES).unwrap();
    let out = metacache()
        .args(["produce", "--topic", "devices"])
        .arg(&file)
        .args(["--brokers", h.kafka.bootstrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("line 2: missing_field: field `datatype_name`"),
        "{err}"
    );
    assert!(err.contains("line 5: invalid_json"), "{err}");
    assert!(
        !err.contains("line 1:") && !err.contains("line 4:"),
        "{err}"
    );
    assert!(
        err.contains("2 invalid line(s); nothing sent (--skip-invalid sends the 3 valid one(s))"),
        "{err}"
    );
    assert_eq!(stdout(&out), "");
    assert!(
        h.read_topic(DEVICES, 1, Duration::from_secs(2)).is_empty(),
        "nothing was sent"
    );

    // The same from stdin with `-` and bad metric lines.
    let out = produce(&h, &["--topic", "metrics", "-"], "{\"op\":\"add\"}\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("stdin: line 1: missing_field: field `metric_names`"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_skip_invalid_sends_the_good_lines_which_the_daemon_writes() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());

    let out = produce(&h, &["--topic", "devices", "--skip-invalid"], DEVICE_LINES);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "sent 3 event(s) to device-metadata, skipped 2 invalid line(s)\n"
    );
    assert!(
        stderr(&out).contains("line 2:"),
        "bad lines are still reported"
    );
    let records = h.read_topic(DEVICES, 3, Duration::from_secs(10));
    let mut seen: Vec<(String, bool)> = records
        .iter()
        .map(|m| {
            (
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                m.payload().is_some(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("p 3 ü".to_owned(), true),
            ("p-1".to_owned(), false),
            ("p-1".to_owned(), true)
        ],
        "keyed by device id; the tombstone has no value"
    );

    let metric_lines = "{\"op\":\"replace\",\"namespace\":\"\",\"metric_names\":[\"a\",\"b\"]}\n\
                        {\"op\":\"add\",\"namespace\":\"x#y:z\",\"metric_names\":[\"m\"]}\n\
                        {\"tombstone\":\"x#y:z\"}\n\
                        {\"op\":\"add\",\"namespace\":\"x#y:z\",\"metric_names\":[\"n\"]}\n";
    let out = produce(&h, &["--topic", "metrics"], metric_lines);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "sent 4 event(s) to metric-catalog\n");

    daemon.wait_finished(7, Duration::from_secs(30)).await;
    let url = h.redis.url();
    let out = lookup(&url, &["get", "devices", "--json"]);
    let listed: Vec<String> = json_of(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["device_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["p 3 ü"], "p-1 was deleted by its tombstone");
    let out = lookup(&url, &["get", "device", "p 3 ü", "--json"]);
    assert_eq!(json_of(&out)["last_updated"], "2026-11-24T08:00:00.000Z");
    let out = lookup(&url, &["get", "metrics", "", "--json"]);
    assert_eq!(json_of(&out), json!(["a", "b"]));
    let out = lookup(&url, &["get", "metrics", "x#y:z", "--json"]);
    assert_eq!(
        json_of(&out),
        json!(["n"]),
        "in order: the tombstone, then the add"
    );
    assert_eq!(daemon.stats.snapshot().devices.dead_lettered, 0);
    daemon.stop().await.expect("clean stop");
}

/// Runs `openssl ARGS` in `dir`; false when openssl is missing or fails.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn rediss_urls_connect_over_tls_and_check_the_certificate() {
    // A throwaway CA and a server certificate for localhost.
    let dir = tempfile::tempdir().unwrap();
    let made = openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=metacache test CA",
        ],
    ) && openssl(
        dir.path(),
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ) && std::fs::write(
        dir.path().join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .is_ok()
        && openssl(
            dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
            ],
        );
    if !made {
        println!("SKIPPED: openssl is not available to make test certificates");
        return;
    }
    let file = |name: &str| dir.path().join(name).display().to_string();
    let tls_port = metacache::tools::embedded::free_port().unwrap().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let redis = EmbeddedRedis::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ])
    .expect("redis-server with TLS");
    redis
        .apply("", &metacache::tools::demo::valid_sample_events())
        .unwrap();
    let url = format!("rediss://localhost:{tls_port}/0");

    // The CA is trusted through SSL_CERT_FILE, which rustls-native-certs reads.
    let out = metacache()
        .args(["get", "device", "dev-42", "--json", "--redis-url", &url])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out)["datatype_unit"], "K");

    // With only the system's CAs the certificate is refused.
    let out = metacache()
        .args(["info", "--redis-url", &url])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
}
