//! The `metacache` binary as a user runs it: configuration errors, secret masking, the
//! demo, and signals.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

#[test]
fn a_bad_config_lists_every_problem_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[kafka]
brokers = ""
auto_offset_reset = "sometimes"
[writer]
max_batch = 0
max_bach = 5
[redis]
url = "http://cache:6379"
[http]
listen = "not an address"
"#,
    )
    .unwrap();
    for sub in ["check-config", "run"] {
        let out = metacache()
            .args([sub, "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        for field in [
            "kafka.brokers",
            "kafka.auto_offset_reset",
            "writer.max_batch",
            "writer.max_bach",
            "redis.url",
            "http.listen",
        ] {
            assert!(err.contains(field), "{sub}: `{field}` missing from:\n{err}");
        }
    }
}

/// Issue 14: a file with many mistakes used to need four runs, and some mistakes were
/// accepted. One run now lists every problem, each with the setting, where it came from
/// and why, and quotes no secret.
#[test]
fn check_config_lists_every_problem_of_a_file_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.toml");
    std::fs::write(
        &file,
        r#"
[kafka]
brokers = "kafka:abc,kafka:99999,http://kafka:9092,[::1]:9092"
auto_offset_reset = "sometimes"
dead_letter = "yes"
group_id = ""

[kafka.client]
"sasl.pasword" = "typo-secret-1"
"socket.timeout.ms" = "abc"
"sasl.password" = ["array-secret-2"]
"ssl.key.password" = { value = "table-secret-3" }
"enable.auto.commit" = "true"

[writer]
max_batch = 0
max_bach = 5
linger_ms = "soon"
retry_initial_ms = 5000
retry_max_ms = 100

[redis]
url = "http://cache:6379"
password = "redis-secret-4"

[http]
listen = "localhost:8080"
"#,
    )
    .unwrap();
    let out = metacache()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("METACACHE__WRITER__MAX_IN_FLIGHT", "0")
        .env("METACACHE__KAFKA__CLIENT__SASL_USERNAM", "env-secret-5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
    let f = file.display().to_string();
    let in_file = format!("in {f}");
    let expected = [
        (
            "kafka.client.ssl.key.password",
            "expected a string, got a table",
            in_file.as_str(),
        ),
        (
            "kafka.client.sasl.password",
            "expected a string, got an array (librdkafka lists are comma-separated strings)",
            &in_file,
        ),
        (
            "kafka.dead_letter",
            "expected a boolean (true or false), got \"yes\"",
            &in_file,
        ),
        (
            "writer.linger_ms",
            "expected an integer, got \"soon\"",
            &in_file,
        ),
        (
            "writer.max_bach",
            "unknown setting (did you mean `max_batch`?)",
            &in_file,
        ),
        (
            "kafka.brokers",
            "entry \"kafka:abc\": the port must be a number from 1 to 65535, got \"abc\"",
            &in_file,
        ),
        (
            "kafka.brokers",
            "entry \"kafka:99999\": the port must be a number from 1 to 65535, got \"99999\"",
            &in_file,
        ),
        (
            "kafka.brokers",
            "entry \"http://kafka:9092\": must be host:port without a URL scheme (did you mean \
             \"kafka:9092\"?); http:// is not part of a broker address (the protocol is \
             kafka.client's security.protocol)",
            &in_file,
        ),
        ("kafka.group_id", "must not be empty", &in_file),
        (
            "kafka.auto_offset_reset",
            "must be one of earliest, latest, got \"sometimes\"",
            &in_file,
        ),
        (
            "kafka.client.enable.auto.commit",
            "must not be set here: metacache commits offsets itself, after Redis acknowledged \
             the writes; remove it",
            &in_file,
        ),
        (
            "kafka.client.sasl.pasword",
            "unknown librdkafka property (did you mean `sasl.password`?)",
            &in_file,
        ),
        (
            "kafka.client.sasl.usernam",
            "unknown librdkafka property (did you mean `sasl.username`?)",
            "from METACACHE__KAFKA__CLIENT__SASL_USERNAM",
        ),
        (
            "kafka.client.socket.timeout.ms",
            "expected an integer, got \"abc\"",
            &in_file,
        ),
        (
            "redis.url",
            "scheme must be redis, rediss, redis+unix or unix, got \"http\"",
            &in_file,
        ),
        (
            "writer.max_batch",
            "must be between 1 and 100000, got 0",
            &in_file,
        ),
        (
            "writer.max_in_flight",
            "must be between 1 and 64, got 0",
            "from METACACHE__WRITER__MAX_IN_FLIGHT",
        ),
        (
            "writer.retry_initial_ms",
            "must not exceed writer.retry_max_ms (100), got 5000",
            &in_file,
        ),
        (
            "http.listen",
            "must be an IP address and port such as 0.0.0.0:8080, got \"localhost:8080\"",
            &in_file,
        ),
    ];
    let wanted: Vec<String> = expected
        .iter()
        .map(|(field, reason, source)| format!("{field}: {reason} ({source})"))
        .collect();
    let reported: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("  - ")).collect();
    assert_eq!(reported, wanted, "{err}");
    assert!(
        err.starts_with(&format!("configuration has {} problem(s):", wanted.len())),
        "{err}"
    );
    // The secrets' settings are reported, by name only.
    for (property, secret) in [
        ("sasl.pasword", "typo-secret-1"),
        ("sasl.password", "array-secret-2"),
        ("ssl.key.password", "table-secret-3"),
        ("sasl.usernam", "env-secret-5"),
    ] {
        let line = format!("kafka.client.{property}: ");
        assert!(
            reported.iter().any(|l| l.starts_with(&line)),
            "{property}: {err}"
        );
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    assert!(!all.contains("redis-secret-4"), "{all}");
}

/// The mistakes of issue 14 that share a setting with the file above.
#[test]
fn check_config_refuses_a_number_for_brokers_and_words_for_booleans() {
    let dir = tempfile::tempdir().unwrap();
    for word in ["no", "off"] {
        let file = dir.path().join(format!("{word}.toml"));
        std::fs::write(
            &file,
            format!("[kafka]\nbrokers = 42\ndead_letter = \"{word}\"\n"),
        )
        .unwrap();
        let out = metacache()
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{word}");
        let f = file.display();
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "configuration has 2 problem(s):\n  \
                 - kafka.brokers: expected a string, got 42 (in {f})\n  \
                 - kafka.dead_letter: expected a boolean (true or false), got \"{word}\" (in {f})\n"
            )
        );
    }
}

/// `--brokers` and `--redis-url` are checked with everything else and named as the source.
#[test]
fn command_line_overrides_are_checked_in_the_same_run() {
    let out = metacache()
        .args([
            "check-config",
            "--brokers",
            "kafka:abc",
            "--redis-url",
            "redis://h:1/x",
        ])
        .env("METACACHE__LOG__FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "configuration has 3 problem(s):\n  \
         - kafka.brokers: entry \"kafka:abc\": the port must be a number from 1 to 65535, got \
         \"abc\" (from --brokers)\n  \
         - redis.url: the path must be a database number, got \"x\" (from --redis-url)\n  \
         - log.format: must be one of text, json, got \"xml\" (from METACACHE__LOG__FORMAT)\n"
    );
}

/// The README's check-config example is a copy of real output.
#[test]
fn the_readmes_check_config_example_is_real_output() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### check-config").expect("the section")..];
    let block = &section[section.find("```text\n").expect("its example") + 8..];
    let block = &block[..block.find("```").expect("its end")];
    let (file, run) = block
        .strip_prefix("$ cat bad.toml\n")
        .expect("starts with the file")
        .split_once("\n$ ")
        .expect("then the command");
    let (command, shown) = run.split_once('\n').expect("then the output");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), file).unwrap();
    let mut cmd = metacache();
    cmd.current_dir(dir.path());
    let command = command
        .strip_suffix("; echo \"exit $?\"")
        .expect("prints the exit code");
    let mut words = command.split_whitespace();
    for word in words.by_ref() {
        match word.split_once('=') {
            Some((name, value)) => {
                cmd.env(name, value);
            }
            None => {
                assert_eq!(word, "metacache");
                break;
            }
        }
    }
    let out = cmd.args(words).output().unwrap();
    let real = format!(
        "{}{}exit {}\n",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    );
    assert_eq!(real, shown);
}

#[test]
fn check_config_prints_effective_settings_with_secrets_masked() {
    let out = metacache()
        .arg("check-config")
        .env(
            "METACACHE__REDIS__URL",
            "redis://app:urlsecret@cache:6379/0",
        )
        .env("METACACHE__REDIS__PASSWORD", "pwsecret")
        .env("METACACHE__KAFKA__CLIENT__SASL_PASSWORD", "saslsecret")
        .env("METACACHE__WRITER__MAX_BATCH", "512")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_batch = 512"), "{text}");
    assert!(text.contains("redis://app:***@cache:6379/0"), "{text}");
    for secret in ["urlsecret", "pwsecret", "saslsecret"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    }
}

#[test]
fn the_demo_shows_devices_metric_sets_the_stale_update_and_dead_letters() {
    let out = metacache().args(["demo", "--once"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "devices  consumed  11  written   6  skipped as stale   1  dead-lettered   4"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "metrics  consumed   9  written   7  skipped as stale   0  dead-lettered   2"
        ),
        "{text}"
    );
    assert!(
        text.contains(r#""datatype_unit":"K""#),
        "newest dev-42 wins:\n{text}"
    );
    assert!(
        text.contains("billing  SMEMBERS billing#metric_names -> disk, mem"),
        "{text}"
    );
    assert!(
        !text.contains("dev-45 "),
        "tombstoned device shown:\n{text}"
    );
    for reason in [
        "missing_field",
        "invalid_json",
        "key_mismatch",
        "invalid_timestamp",
        "unknown_op",
        "wrong_type",
    ] {
        assert!(text.contains(reason), "{reason} missing:\n{text}");
    }
    assert!(text.contains("redis-cli -p "), "{text}");

    // The README's sample is a copy of real output: every line it shows is printed, once
    // ports and timings (which change from run to run) are set aside.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let sample = readme
        .split("Real output, shortened")
        .nth(1)
        .and_then(|rest| rest.split("```text\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the README's demo sample");
    let normal = |line: &str| {
        let mut out = String::new();
        let mut digits = false;
        for c in line.trim_end().chars() {
            if c.is_ascii_digit() {
                if !digits {
                    out.push('N');
                }
                digits = true;
            } else {
                digits = false;
                out.push(c);
            }
        }
        out
    };
    let printed: Vec<String> = text.lines().map(normal).collect();
    let mut compared = 0;
    for line in sample
        .lines()
        .filter(|l| !l.trim().is_empty() && l.trim() != "…")
    {
        let wanted = normal(line);
        assert!(
            printed.contains(&wanted),
            "README line not in the demo's output: {line:?}\n{text}"
        );
        compared += 1;
    }
    assert!(compared > 20, "only {compared} README lines compared");
}

fn daemon_process(h: &Harness, group: &str) -> std::process::Child {
    metacache()
        .arg("run")
        .env("METACACHE__KAFKA__BROKERS", h.kafka.bootstrap())
        .env("METACACHE__KAFKA__GROUP_ID", group)
        .env("METACACHE__KAFKA__CLIENT__FETCH_WAIT_MAX_MS", "10")
        .env("METACACHE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "3000")
        .env("METACACHE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS", "500")
        .env("METACACHE__KAFKA__COMMIT_INTERVAL_MS", "100")
        .env("METACACHE__REDIS__URL", h.redis.url())
        .env("METACACHE__WRITER__RETRY_MAX_MS", "200")
        .env("METACACHE__SHUTDOWN__TIMEOUT_SECS", "20")
        .env("METACACHE__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("metacache starts")
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("metacache did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_zero_and_a_second_signal_exits_at_once() {
    let mut h = Harness::start(2);
    let group = "metacache-cli-sigterm";
    let mut child = daemon_process(&h, group);
    let events: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("d{i}"),
                device_json(&format!("d{i}"), "t", "2026-11-22T10:00:00Z"),
            )
        })
        .collect();
    let records: Vec<(Option<&str>, Option<&str>)> = events
        .iter()
        .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
        .collect();
    h.produce(DEVICES, &records).await;
    wait_for(Duration::from_secs(30), "20 devices in Redis", || async {
        redis::cmd("ZCARD")
            .arg("devices")
            .query::<usize>(&mut h.redis())
            .unwrap()
            == 20
    })
    .await;
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
    assert_eq!(h.committed(group, DEVICES).iter().sum::<i64>(), 20);

    // Now with Redis gone the drain cannot finish; a second signal ends it at once.
    let mut child = daemon_process(&h, group);
    let warm = device_json("warm", "t", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("warm"), Some(&warm))]).await;
    wait_for(
        Duration::from_secs(30),
        "the second daemon to write",
        || async { h.redis().exists::<_, bool>("device:warm").unwrap() },
    )
    .await;
    h.redis.stop();
    let late = device_json("late", "t", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("late"), Some(&late))]).await;
    std::thread::sleep(Duration::from_secs(2));
    signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "still draining");
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(130));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("second signal"), "{stderr}");
    assert_eq!(
        h.committed(group, DEVICES).iter().sum::<i64>(),
        21,
        "`warm` committed, `late` (never acknowledged) not"
    );
}

#[test]
fn a_misspelt_librdkafka_property_is_named_without_its_value() {
    for sub in ["check-config", "run"] {
        let out = metacache()
            .arg(sub)
            .env("METACACHE__KAFKA__CLIENT__SASL_PASWORD", "topsecret123")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("kafka.client.sasl.pasword"), "{sub}: {err}");
        let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            !all.contains("topsecret123"),
            "{sub} leaked the value: {all}"
        );
    }
}

/// The benchmark's unguarded mode is a hidden command of its own: a production start
/// that inherits the variable an older benchmark used keeps the stale guard and the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_start_cannot_be_switched_to_the_benchmarks_unguarded_mode() {
    let h = support::Harness::start(1);
    let group = format!("plain-env-{}", std::process::id());
    let mut daemon = h.spawn_daemon("plain", &group, &[("METACACHE_BENCH_PLAIN_DEVICES", "1")]);
    let newer = support::device_json("p", "temperature", "2026-11-22T10:30:00Z");
    let older = support::device_json("p", "temperature", "2026-11-22T09:00:00Z");
    h.produce(
        support::DEVICES,
        &[
            (Some("p"), Some(newer.as_str())),
            (Some("p"), Some(older.as_str())),
        ],
    )
    .await;
    h.produce(
        support::METRICS,
        &[(
            Some("n"),
            Some(r#"{"op":"add","namespace":"n","metric_names":["m"]}"#),
        )],
    )
    .await;
    h.wait_all_committed(&group, std::time::Duration::from_secs(60))
        .await;
    let mut r = h.redis();
    let stored: String = redis::Commands::get(&mut r, "device:p").expect("device written");
    assert!(
        stored.contains("10:30:00"),
        "the older update won: {stored}"
    );
    let score: Option<i64> = redis::Commands::zscore(&mut r, "devices", "p").expect("ZSCORE");
    assert!(score.is_some(), "the devices index is kept");
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(std::time::Duration::from_secs(30)),
        Some(0)
    );
}

/// Each subcommand offers only the options it uses, in clap's short layout (one line per
/// option), as the README's Commands section shows them.
#[test]
fn each_subcommand_takes_only_what_it_uses_in_one_help_layout() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_metacache"))
            .args(args)
            .arg("--help")
            .output()
            .expect("metacache runs");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all: &[&[&str]] = &[
        &["run"],
        &["check-config"],
        &["demo"],
        &["bench"],
        &["get", "device"],
        &["get", "devices"],
        &["get", "metrics"],
        &["check-metric"],
        &["info"],
        &["produce"],
        &["resync"],
        &["verify"],
    ];
    for args in all {
        let text = help(args);
        // The long layout puts each description on its own line, indented ten spaces.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("          ") && !l.trim().is_empty()),
            "{args:?} uses the long help layout:\n{text}"
        );
        let reads_redis = !matches!(args, ["produce"] | ["resync"] | ["bench"]);
        let reads_kafka = matches!(
            args,
            ["run"] | ["check-config"] | ["produce"] | ["resync"] | ["verify"]
        );
        if !matches!(args, ["demo"] | ["bench"]) {
            assert_eq!(
                text.contains("--redis-url"),
                reads_redis,
                "{args:?}:\n{text}"
            );
        }
        assert_eq!(text.contains("--brokers"), reads_kafka, "{args:?}:\n{text}");
    }
}
