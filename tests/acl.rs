//! The least-privilege ACL (`metacache check-config --print-acl`, `metacache::acl`) is
//! enough: a daemon logged in as a user with exactly that line runs the whole pipeline
//! (writer, scripts, fence marker, monitor, janitor, read API) without one refusal; a
//! user missing one command is named in `/readyz`.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

const PASSWORD: &str = "acl-test-password";
const TOKEN: &str = "acl-test-token-0123456789";

/// Creates the user an ACL line describes, with the test's password.
fn create_user(h: &Harness, line: &str) {
    let line = line.replace("<password>", PASSWORD);
    let mut words = line.split_whitespace();
    assert_eq!((words.next(), words.next()), (Some("ACL"), Some("SETUSER")));
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER");
    for w in words {
        cmd.arg(w);
    }
    cmd.query::<()>(&mut h.redis()).expect("ACL SETUSER");
}

fn settings(h: &Harness, dir: &tempfile::TempDir) -> metacache::config::Settings {
    let mut settings = h.settings();
    settings.redis.username = Some("metacache".into());
    settings.redis.password = Some(PASSWORD.into());
    settings.redis.key_prefix = "app:".into();
    // The janitor runs only with a TTL; the API only with a token.
    settings.devices.ttl_secs = 3600;
    settings.metrics.ttl_secs = 3600;
    settings.janitor.interval_secs = 1;
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    settings.api.token_file = token.display().to_string();
    settings
}

/// Devices `d{first}` .. `d{last - 1}`, updated `at`.
async fn produce_devices_at(h: &Harness, ids: std::ops::Range<usize>, at: &str) {
    let devices: Vec<(String, String)> = ids
        .map(|i| {
            let id = format!("d{i}");
            (id.clone(), device_json(&id, "t", at))
        })
        .collect();
    let records: Vec<(Option<&str>, Option<&str>)> = devices
        .iter()
        .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
        .collect();
    h.produce(DEVICES, &records).await;
}

async fn feed(h: &Harness) {
    produce_devices_at(h, 0..20, "2026-11-22T10:00:00Z").await;
    h.produce(DEVICES, &[(Some("d0"), None)]).await;
    h.produce(
        METRICS,
        &[
            (
                Some("ns"),
                Some(r#"{"op":"replace","namespace":"ns","metric_names":["a","b"]}"#),
            ),
            (
                Some("ns"),
                Some(r#"{"op":"remove","namespace":"ns","metric_names":["a"]}"#),
            ),
            (
                Some("gone"),
                Some(r#"{"op":"add","namespace":"gone","metric_names":["x"]}"#),
            ),
            (Some("gone"), None),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_acl_runs_the_whole_pipeline() {
    let h = Harness::start(2);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&h, &dir);
    create_user(&h, &metacache::acl::daemon_line(&settings));
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    feed(&h).await;
    daemon.wait_finished(25, Duration::from_secs(30)).await;

    let mut r = h.redis();
    assert_eq!(r.zcard::<_, u64>("app:devices").unwrap(), 19);
    assert!(!r.exists::<_, bool>("app:device:d0").unwrap());
    let names: Vec<String> = r.smembers("app:ns#metric_names").unwrap();
    assert_eq!(names, ["b"]);
    // Keys gone as if expired: the janitor (a pass a second) removes their index entries,
    // its guarded-removal script included.
    let _: () = r.del(&["app:device:d5", "app:ns#metric_names"]).unwrap();
    wait_for(
        Duration::from_secs(20),
        "the janitor to clean up",
        || async {
            let mut r = h.redis();
            r.zscore::<_, _, Option<f64>>("app:devices", "d5")
                .unwrap()
                .is_none()
                && !r
                    .sismember::<_, _, bool>("app:metric_namespaces", "ns")
                    .unwrap()
        },
    )
    .await;
    let (status, ready) = readyz(addr).await;
    assert_eq!(status, 200, "{ready:#}");
    assert_eq!(ready["checks"]["redis"]["status"], "healthy", "{ready:#}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (status, body) = http_get_with(addr, "/v1/devices/d3", &[&auth]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get_with(addr, "/v1/cache/info", &[&auth]).await;
    assert_eq!(status, 200, "{body}");
    let s = daemon.stats.snapshot();
    assert_eq!(s.retries, 0, "a command was refused: {:?}", s);
    // Nothing was refused anywhere: Redis logs every ACL denial (INFO's
    // acl_access_denied_* counters exist only from Redis 7.2 on).
    assert_acl_log_empty(&mut r);
    daemon.stop().await.expect("clean stop");
}

/// `ACL LOG` is empty: no command, key or authentication was refused.
fn assert_acl_log_empty(r: &mut redis::Connection) {
    let log: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(r).unwrap();
    assert!(log.is_empty(), "ACL denials: {log:?}");
}

/// Two members in one group, both as the printed user: when the second joins, it closes
/// the first one's named connection before its first write (`CLIENT LIST`, `CLIENT KILL`),
/// and the first opens, names and proves a new one. Every step of the fence runs as the
/// printed user, and Redis refuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_members_fences_as_the_printed_user() {
    let h = Harness::start(2);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&h, &dir);
    create_user(&h, &metacache::acl::daemon_line(&settings));
    let mut r = h.redis();
    redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query::<()>(&mut r)
        .unwrap();
    let first = h.start_daemon(settings.clone());
    feed(&h).await;
    first.wait_finished(25, Duration::from_secs(30)).await;

    let second = h.start_daemon(settings);
    wait_for(
        Duration::from_secs(30),
        "the second member to own partitions",
        || async { second.stats.snapshot().kafka_assigned_partitions > 0 },
    )
    .await;
    // Writes after the rebalance: the second member fences before its first one.
    produce_devices_at(&h, 20..60, "2026-11-22T11:00:00Z").await;
    wait_for(Duration::from_secs(30), "every device written", || async {
        h.redis().zcard::<_, u64>("app:devices").unwrap() == 59
    })
    .await;
    let fenced = second
        .stats
        .writers_fenced
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(fenced >= 1, "the second member fenced no connection");
    assert!(
        first
            .stats
            .ownership_proofs
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the first member wrote on a connection it proved no ownership on"
    );
    assert_acl_log_empty(&mut r);
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

/// A least-privilege user without what a safety mechanism needs stops the writes and
/// says why in `/readyz`, instead of writing without it: without `client|setname` no
/// connection can be named for the fence to find; without `client|list` the writer
/// cannot fence the previous writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_fence_permission_stops_the_writes_and_says_why() {
    for missing in ["client|setname", "client|list"] {
        let h = Harness::start(1);
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(&h, &dir);
        settings.shutdown.timeout_secs = 1;
        let group = settings.kafka.group_id.clone();
        let line: Vec<String> = metacache::acl::daemon_line(&settings)
            .split(' ')
            .filter(|word| *word != format!("+{missing}"))
            .map(str::to_owned)
            .collect();
        create_user(&h, &line.join(" "));
        let daemon = h.start_daemon(settings);
        let addr = daemon.http().await;
        feed(&h).await;
        wait_for(
            Duration::from_secs(30),
            &format!("/readyz to name {missing}"),
            || async {
                let (_, ready) = readyz(addr).await;
                // Redis 6.2 names the command, not the subcommand.
                let named = if redis_major() >= 7 {
                    missing
                } else {
                    "'client'"
                };
                ready["checks"]["redis"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("NOPERM") && m.contains(named))
            },
        )
        .await;
        // Nothing written, nothing acknowledged.
        assert_eq!(
            h.redis().zcard::<_, u64>("app:devices").unwrap(),
            0,
            "{missing}"
        );
        assert_eq!(
            h.committed(&group, DEVICES)
                .iter()
                .map(|c| (*c).max(0))
                .sum::<i64>(),
            0,
            "{missing}"
        );
        // Without client|list records were consumed and stay unacknowledged (the stop
        // gives up after its timeout); without client|setname the daemon never connected.
        let _ = daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_is_named_in_readiness() {
    let h = Harness::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(&h, &dir);
    settings.shutdown.timeout_secs = 1;
    let group = settings.kafka.group_id.clone();
    let line: Vec<String> = metacache::acl::daemon_line(&settings)
        .split(' ')
        .filter(|word| *word != "+hset")
        .map(str::to_owned)
        .collect();
    let line = line.join(" ");
    create_user(&h, &line);
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    feed(&h).await;
    wait_for(Duration::from_secs(30), "/readyz to name hset", || async {
        let (_, ready) = readyz(addr).await;
        ready["checks"]["redis"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NOPERM") && m.contains("hset"))
    })
    .await;
    // Nothing is acknowledged while the writer is refused.
    assert_eq!(
        h.committed(&group, DEVICES)
            .iter()
            .map(|c| (*c).max(0))
            .sum::<i64>(),
        0
    );
    assert!(daemon.stats.snapshot().retries > 0);
    // Records are still unacknowledged: the stop gives up after its timeout.
    assert!(daemon.stop().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_file_reaches_the_next_connection() {
    let h = Harness::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(&h, &dir);
    create_user(&h, &metacache::acl::daemon_line(&settings));
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    settings.redis.password = None;
    settings.redis.password_file = Some(file.display().to_string());
    let daemon = h.start_daemon(settings);
    let one = device_json("r1", "t", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("r1"), Some(&one))]).await;
    daemon.wait_finished(1, Duration::from_secs(30)).await;

    // The Secret rotates: the user's password changes and the file follows; then every
    // connection of the user is cut, so the daemon must log in again.
    let mut r = h.redis();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("metacache")
        .arg("resetpass")
        .arg(">rotated-password-2")
        .query::<()>(&mut r)
        .unwrap();
    std::fs::write(&file, "rotated-password-2\n").unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("metacache")
        .query(&mut r)
        .unwrap();
    assert!(killed > 0, "the daemon had no connection to cut");
    let two = device_json("r2", "t", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("r2"), Some(&two))]).await;
    daemon.wait_finished(2, Duration::from_secs(30)).await;
    assert!(r.exists::<_, bool>("app:device:r2").unwrap());
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_acl_predates_the_descriptor_still_reads_devices_and_is_told_why_not_the_index(
) {
    let h = Harness::start(1);
    h.redis.seed_demo("").expect("demo data");
    let settings = h.settings();
    let line = metacache::acl::reader_line(&settings);
    assert!(
        line.contains(" ~metacache:layout") && line.contains(" +hgetall"),
        "{line}"
    );
    // The line as printed before the layout descriptor existed.
    create_user(
        &h,
        &line
            .replace(" ~metacache:layout", "")
            .replace(" +hgetall", ""),
    );
    let reader = |user: &str| metacache_client::RedisSettings {
        url: h.redis.url(),
        username: Some(user.into()),
        password: Some(PASSWORD.into()),
        ..metacache_client::RedisSettings::default()
    };
    let old = metacache_client::CacheClient::from_settings(&reader("metacache-reader"))
        .await
        .expect("connects without the descriptor");
    assert!(old.get_device("dev-42").await.unwrap().is_some());
    let refused = old
        .list_devices(&metacache_client::ListOptions::default())
        .await
        .expect_err("the index cannot be read without the descriptor")
        .to_string();
    assert!(
        refused.to_ascii_uppercase().contains("NOPERM") && refused.contains("hgetall"),
        "{refused}"
    );

    // With the line printed now, everything reads.
    create_user(&h, &line);
    let new = metacache_client::CacheClient::from_settings(&reader("metacache-reader"))
        .await
        .expect("connects");
    let page = new
        .list_devices(&metacache_client::ListOptions::default())
        .await
        .expect("the index reads");
    assert_eq!(page.len(), 3);
}

/// The daemon, as its printed user, writes `feed` and stops cleanly (which signs the
/// writer out, as reindex checks); the users of `lines` are created, and `ACL LOG` is
/// emptied for what runs next. Returns the group.
async fn filled_by_the_daemon(
    h: &Harness,
    lines: &[fn(&metacache::config::Settings) -> String],
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(h, &dir);
    let group = settings.kafka.group_id.clone();
    create_user(h, &metacache::acl::daemon_line(&settings));
    for line in lines {
        create_user(h, &line(&settings));
    }
    let daemon = h.start_daemon(settings);
    feed(h).await;
    daemon.wait_finished(25, Duration::from_secs(30)).await;
    h.wait_all_committed(&group, Duration::from_secs(30)).await;
    daemon.stop().await.expect("clean stop");
    redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query::<()>(&mut h.redis())
        .unwrap();
    group
}

/// `metacache verify` as the user of the line `--print-acl` prints for it: the cache is
/// checked with nothing refused. As the reader user it cannot walk the keys (`SCAN`),
/// which is why it has a line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_runs_as_the_printed_verify_user() {
    let h = Harness::start(2);
    let group = filled_by_the_daemon(
        &h,
        &[metacache::acl::verify_line, metacache::acl::reader_line],
    )
    .await;
    let mut r = h.redis();

    let verify_as = |user: &str| {
        outcome(
            metacache()
                .args(["verify", "--brokers", h.kafka.bootstrap()])
                .args(["--redis-url", &h.redis.url(), "--group", &group])
                .env("METACACHE__REDIS__USERNAME", user)
                .env("METACACHE__REDIS__PASSWORD", PASSWORD)
                .env("METACACHE__REDIS__KEY_PREFIX", "app:")
                .env("METACACHE__DEVICES__TTL_SECS", "3600")
                .stdin(std::process::Stdio::null()),
        )
    };
    let (code, out, err) = verify_as("metacache-verify");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("result: the cache matches the stream"),
        "{out}"
    );
    assert_acl_log_empty(&mut r);

    let (code, out, err) = verify_as("metacache-reader");
    assert_eq!(code, Some(3), "the reader cannot walk the keys: {out}{err}");
    assert!(err.to_ascii_uppercase().contains("NOPERM"), "{err}");
}

/// `metacache reindex` as the user of the line `--print-acl` prints for it: the index is
/// rebuilt with four shards, readers find every device, and Redis refused nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_runs_as_the_printed_reindex_user() {
    let h = Harness::start(2);
    filled_by_the_daemon(&h, &[metacache::acl::reindex_line]).await;
    let mut r = h.redis();

    let (code, out, err) = outcome(
        metacache()
            .args(["reindex", "--redis-url", &h.redis.url()])
            .args(["--index-shards", "4", "--yes"])
            .env("METACACHE__REDIS__USERNAME", "metacache-reindex")
            .env("METACACHE__REDIS__PASSWORD", PASSWORD)
            .env("METACACHE__REDIS__KEY_PREFIX", "app:")
            .stdin(std::process::Stdio::null()),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_acl_log_empty(&mut r);
    let indexed: u64 = (0..4)
        .map(|k| r.zcard::<_, u64>(format!("app:devices:{{{k}}}")).unwrap())
        .sum();
    assert_eq!(
        indexed, 19,
        "every live device indexed over the four shards"
    );
    assert!(
        !r.exists::<_, bool>("app:devices").unwrap(),
        "the old index is gone"
    );
}
