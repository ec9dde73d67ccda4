//! The settings' tests: layering, every problem in one run, sources, redaction.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

use super::*;

/// The process environment is shared by every test thread.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Sets variables for one test and removes them afterwards, even on panic.
struct EnvVars {
    names: Vec<String>,
    _lock: MutexGuard<'static, ()>,
}

impl EnvVars {
    fn set(vars: &[(&str, &str)]) -> EnvVars {
        let lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        EnvVars {
            names: vars.iter().map(|(n, _)| n.to_string()).collect(),
            _lock: lock,
        }
    }
}

impl Drop for EnvVars {
    fn drop(&mut self) {
        for name in &self.names {
            std::env::remove_var(name);
        }
    }
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn no_fallback() -> &'static Path {
    Path::new("/nonexistent/metacache/default.toml")
}

fn load(file: Option<&Path>, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load_from(file, &env(vars), no_fallback(), &[])
}

#[test]
fn the_dead_letter_producer_must_fit_any_event_the_limits_accept() {
    let mut settings = Settings::default();
    assert!(
        settings.kafka.dead_letter_max_bytes(&settings.limits)
            >= settings.limits.max_message_bytes + DEAD_LETTER_OVERHEAD
    );
    assert!(settings.validate().is_ok());
    settings
        .kafka
        .client
        .insert("message.max.bytes".into(), "1000000".into());
    let found = problems(settings.validate().map(|_| Settings::default()));
    assert!(
        found
            .iter()
            .any(|(field, reason)| field == "kafka.client.message.max.bytes"
                && reason.contains("1114112")),
        "{found:?}"
    );
    settings.kafka.dead_letter = false;
    assert!(settings.validate().is_ok());
}

fn problems(result: Result<Settings, ConfigError>) -> Vec<(String, String)> {
    let error = result.expect_err("configuration should be rejected");
    error
        .problems
        .into_iter()
        .map(|p| (p.field, p.reason))
        .collect()
}

fn fields(result: Result<Settings, ConfigError>) -> Vec<String> {
    problems(result).into_iter().map(|(f, _)| f).collect()
}

fn default_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE)
}

#[test]
fn defaults_load_without_a_file() {
    let settings = load(None, &[]).unwrap();
    assert_eq!(
        settings.to_toml_string(),
        Settings::default().to_toml_string()
    );
    assert_eq!(settings.kafka.brokers, "localhost:9092");
    assert_eq!(settings.writer.max_batch, 1024);
    assert_eq!(settings.redis.password, None);
    assert!(settings.kafka.client.is_empty());
}

#[test]
fn the_shipped_default_file_matches_the_code() {
    let settings = load(Some(&default_file()), &[]).unwrap();
    assert_eq!(
        settings.to_toml_string(),
        Settings::default().to_toml_string()
    );
}

#[test]
fn the_shipped_default_file_names_every_setting() {
    // Equal values alone would not notice a setting missing from the file.
    let text = std::fs::read_to_string(default_file()).unwrap();
    let file: toml::Table = text.parse().unwrap();
    let code = serde_json::to_value(Settings::default()).unwrap();
    for (section, keys) in code.as_object().unwrap() {
        let in_file = file[section].as_table().unwrap();
        for (key, value) in keys.as_object().unwrap() {
            // Options without a default are documented as comments.
            if !value.is_null() {
                assert!(in_file.contains_key(key), "{section}.{key} missing");
            }
        }
    }
}

#[test]
fn the_fallback_file_is_used_only_when_nothing_is_named() {
    let fallback = toml_file("[writer]\nmax_batch = 7\n");
    let settings = Settings::load_from(None, &[], fallback.path(), &[]).unwrap();
    assert_eq!(settings.writer.max_batch, 7);

    let named = toml_file("[writer]\nmax_batch = 8\n");
    let settings = Settings::load_from(Some(named.path()), &[], fallback.path(), &[]).unwrap();
    assert_eq!(settings.writer.max_batch, 8);
}

#[test]
fn a_file_overrides_defaults() {
    let file = toml_file(
        r#"
        [kafka]
        brokers = "k1:9092,k2:9092"
        dead_letter = false
        [redis]
        key_prefix = "mc:"
        db = 3
        [writer]
        max_batch = 10
        [devices]
        ttl_secs = 86400
        "#,
    );
    let settings = load(Some(file.path()), &[]).unwrap();
    assert_eq!(settings.kafka.brokers, "k1:9092,k2:9092");
    assert!(!settings.kafka.dead_letter);
    assert_eq!(settings.redis.key_prefix, "mc:");
    assert_eq!(settings.redis.db, Some(3));
    assert_eq!(settings.writer.max_batch, 10);
    assert_eq!(settings.devices.ttl_secs, 86400);
    // Untouched settings keep their defaults.
    assert_eq!(settings.kafka.group_id, "metacache");
    assert_eq!(settings.writer.linger_ms, 5);
    assert_eq!(settings.metrics.ttl_secs, 0);
}

#[test]
fn the_environment_overrides_the_file() {
    let file = toml_file("[kafka]\nbrokers = \"file:9092\"\n[writer]\nmax_batch = 10\n");
    let _env = EnvVars::set(&[
        ("METACACHE__KAFKA__BROKERS", "env:9092"),
        ("METACACHE__WRITER__MAX_BATCH", "20"),
        ("METACACHE__KAFKA__DEAD_LETTER", "false"),
        ("METACACHE__REDIS__DB", "2"),
    ]);
    let settings = Settings::load(Some(file.path())).unwrap();
    assert_eq!(settings.kafka.brokers, "env:9092");
    assert_eq!(settings.writer.max_batch, 20);
    assert!(!settings.kafka.dead_letter);
    assert_eq!(settings.redis.db, Some(2));
}

#[test]
fn client_variables_become_dotted_librdkafka_properties() {
    let file = toml_file("[kafka.client]\n\"sasl.username\" = \"app\"\n");
    let _env = EnvVars::set(&[
        ("METACACHE__KAFKA__CLIENT__SASL_PASSWORD", "s3cret"),
        ("METACACHE__KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL"),
        // Numeric-looking values stay strings.
        ("METACACHE__KAFKA__CLIENT__FETCH_MAX_BYTES", "052428800"),
    ]);
    let settings = Settings::load(Some(file.path())).unwrap();
    let expected: BTreeMap<String, String> = [
        ("fetch.max.bytes", "052428800"),
        ("sasl.password", "s3cret"),
        ("sasl.username", "app"),
        ("security.protocol", "SASL_SSL"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(settings.kafka.client, expected);
}

#[test]
fn nested_client_keys_in_a_file_are_flattened() {
    let file = toml_file(
        "[kafka.client]\nsasl.mechanism = \"PLAIN\"\n\"socket.keepalive.enable\" = true\n",
    );
    let settings = load(Some(file.path()), &[]).unwrap();
    assert_eq!(settings.kafka.client["sasl.mechanism"], "PLAIN");
    assert_eq!(settings.kafka.client["socket.keepalive.enable"], "true");
    assert_eq!(settings.kafka.client.len(), 2);
}

#[test]
fn numeric_looking_strings_stay_strings() {
    for password in ["1234", "0123", "1e3", "TRUE", "nan"] {
        let settings = load(
            None,
            &[
                ("METACACHE__REDIS__PASSWORD", password),
                ("METACACHE__KAFKA__GROUP_ID", "007"),
                ("METACACHE__KAFKA__DEVICE_TOPIC", "9092"),
            ],
        )
        .unwrap();
        assert_eq!(settings.redis.password.as_deref(), Some(password));
        assert_eq!(settings.kafka.group_id, "007");
        assert_eq!(settings.kafka.device_topic, "9092");
    }
}

#[test]
fn the_config_file_variable_is_not_a_setting() {
    let file = toml_file("[writer]\nmax_batch = 9\n");
    let _env = EnvVars::set(&[("METACACHE_CONFIG", file.path().to_str().unwrap())]);
    let settings = Settings::load(None).unwrap();
    assert_eq!(settings.writer.max_batch, 9);
}

#[test]
fn a_missing_named_file_is_reported() {
    let missing = Path::new("/nonexistent/metacache.toml");
    assert_eq!(
        problems(load(Some(missing), &[])),
        [(
            "config".to_string(),
            "file /nonexistent/metacache.toml does not exist".to_string()
        )]
    );
    assert_eq!(
        problems(load(None, &[("METACACHE_CONFIG", "/nonexistent/m.toml")])),
        [(
            "config".to_string(),
            "file /nonexistent/m.toml does not exist (named by METACACHE_CONFIG)".to_string()
        )]
    );
}

#[test]
fn a_file_with_several_problems_reports_them_all() {
    let file = toml_file(
        r#"
        [kafka]
        auto_offset_reset = "oldest"
        client = { "enable.auto.commit" = "true", "group.id" = "other" }
        [redis]
        url = "http://127.0.0.1:6379"
        db = "zero"
        [writer]
        max_bach = 100
        max_batch = 0
        linger_ms = 5.5
        [limits]
        max_id_bytes = "lots"
        max_metric_names = -1
        [shutdown]
        timeout_secs = 0
        [http]
        listen = "localhost:8080"
        [log]
        format = "xml"
        [writr]
        max_batch = 1
        "#,
    );
    let path = file.path().display().to_string();
    let found = problems(load(Some(file.path()), &[]));
    let expected: Vec<(String, String)> = [
        // Type and name problems first, as the sections are read, then the checks.
        ("writr", "unknown section (did you mean `writer`?)"),
        ("redis.db", "expected an integer, got \"zero\""),
        ("writer.linger_ms", "expected an integer, got 5.5"),
        (
            "writer.max_bach",
            "unknown setting (did you mean `max_batch`?)",
        ),
        ("limits.max_id_bytes", "expected an integer, got \"lots\""),
        (
            "limits.max_metric_names",
            "expected a non-negative 64-bit integer, got -1",
        ),
        (
            "kafka.auto_offset_reset",
            "must be one of earliest, latest, got \"oldest\"",
        ),
        (
            "kafka.client.enable.auto.commit",
            "must not be set here: metacache commits offsets itself, after Redis \
             acknowledged the writes; remove it",
        ),
        (
            "kafka.client.group.id",
            "must not be set here: use kafka.group_id instead",
        ),
        (
            "redis.url",
            "scheme must be redis, rediss, redis+unix or unix, got \"http\"",
        ),
        ("writer.max_batch", "must be between 1 and 100000, got 0"),
        ("shutdown.timeout_secs", "must be between 1 and 3600, got 0"),
        (
            "http.listen",
            "must be an IP address and port such as 0.0.0.0:8080, got \"localhost:8080\"",
        ),
        ("log.format", "must be one of text, json, got \"xml\""),
    ]
    .into_iter()
    // Each names the file, semantic checks too.
    .map(|(f, r)| (f.to_string(), format!("{r} (in {path})")))
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn checks_name_the_source_of_every_setting_they_involve() {
    let file = toml_file(
        "[writer]\nretry_initial_ms = 5000\nmax_batch = \"abc\"\n[kafka]\nauto_offset_reset = \"x\"\n",
    );
    let path = file.path().display().to_string();
    let found = problems(load(
        Some(file.path()),
        &[
            ("METACACHE__WRITER__RETRY_MAX_MS", "100"),
            ("METACACHE__LOG__FORMAT", "xml"),
            ("METACACHE__KAFKA__CLIENT__ENABLE_AUTO_COMMIT", "true"),
        ],
    ));
    let expected: Vec<(String, String)> = [
        (
            "writer.max_batch",
            format!("expected an integer, got \"abc\" (in {path})"),
        ),
        (
            "kafka.auto_offset_reset",
            format!("must be one of earliest, latest, got \"x\" (in {path})"),
        ),
        (
            "kafka.client.enable.auto.commit",
            "must not be set here: metacache commits offsets itself, after Redis \
             acknowledged the writes; remove it (from \
             METACACHE__KAFKA__CLIENT__ENABLE_AUTO_COMMIT)"
                .to_string(),
        ),
        // A cross-field check runs although another writer setting failed, and names
        // where each of its settings came from.
        (
            "writer.retry_initial_ms",
            format!(
                "must not exceed writer.retry_max_ms (100), got 5000 \
                 (writer.retry_initial_ms in {path}, writer.retry_max_ms from \
                 METACACHE__WRITER__RETRY_MAX_MS)"
            ),
        ),
        (
            "log.format",
            "must be one of text, json, got \"xml\" (from METACACHE__LOG__FORMAT)".to_string(),
        ),
    ]
    .into_iter()
    .map(|(f, r)| (f.to_string(), r))
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn a_cross_field_check_is_skipped_only_when_one_of_its_own_fields_failed() {
    // retry_max_ms stands at its default (10000) after failing: comparing with it
    // would invent a problem.
    let file = toml_file(
        "[writer]\nretry_initial_ms = 20000\nretry_max_ms = \"abc\"\n\
         [kafka]\ndevice_topic = [\"x\"]\nmetric_topic = \"device-metadata\"\n",
    );
    assert_eq!(
        fields(load(Some(file.path()), &[])),
        ["kafka.device_topic", "writer.retry_max_ms"]
    );
}

#[test]
fn booleans_are_true_or_false_and_nothing_else() {
    for (written, got) in [
        ("\"yes\"", "\"yes\""),
        ("\"no\"", "\"no\""),
        ("\"off\"", "\"off\""),
        ("\"on\"", "\"on\""),
        ("0", "0"),
        ("1", "1"),
    ] {
        let file = toml_file(&format!("[kafka]\ndead_letter = {written}\n"));
        let path = file.path().display();
        assert_eq!(
            problems(load(Some(file.path()), &[])),
            [(
                "kafka.dead_letter".to_string(),
                format!("expected a boolean (true or false), got {got} (in {path})")
            )],
            "{written}"
        );
    }
    let file = toml_file("[kafka]\ndead_letter = \"false\"\n");
    assert_eq!(
        problems(load(Some(file.path()), &[])),
        [(
            "kafka.dead_letter".to_string(),
            format!(
                "expected a boolean (true or false), got the string \"false\" (write it \
                 without quotes) (in {})",
                file.path().display()
            )
        )]
    );
    // Environment values are strings: the words true and false, in any case.
    for (value, expected) in [("true", true), ("FALSE", false), ("True", true)] {
        let settings = load(None, &[("METACACHE__KAFKA__DEAD_LETTER", value)]).unwrap();
        assert_eq!(settings.kafka.dead_letter, expected, "{value}");
    }
    for value in ["yes", "no", "off", "1", "0", ""] {
        assert_eq!(
            problems(load(None, &[("METACACHE__KAFKA__DEAD_LETTER", value)])),
            [(
                "kafka.dead_letter".to_string(),
                format!(
                    "expected a boolean (true or false), got {value:?} (from \
                     METACACHE__KAFKA__DEAD_LETTER)"
                )
            )],
            "{value:?}"
        );
    }
}

#[test]
fn strings_are_not_made_from_numbers_or_booleans() {
    let file = toml_file(
        "[kafka]\nbrokers = 42\ngroup_id = true\n[redis]\npassword = 123456\nkey_prefix = 1.5\n",
    );
    let path = file.path().display().to_string();
    assert_eq!(
        problems(load(Some(file.path()), &[])),
        [
            ("kafka.brokers", "expected a string, got 42"),
            ("kafka.group_id", "expected a string, got true"),
            ("redis.key_prefix", "expected a string, got 1.5"),
            (
                "redis.password",
                "expected a string, got a value (not shown: secret)"
            ),
        ]
        .map(|(f, r)| (f.to_string(), format!("{r} (in {path})")))
    );
}

#[test]
fn brokers_are_host_port_entries() {
    let mut settings = Settings::default();
    for good in [
        "localhost:9092",
        "k1:9092,k2:9092",
        "k1:9092, k2:9092",
        "127.0.0.1:12345,127.0.0.1:12346",
        "[::1]:9092",
        "[fe80::1]:9093,kafka-0.kafka.kafka.svc:9093",
        "my_kafka:1",
    ] {
        settings.kafka.brokers = good.into();
        assert!(settings.validate().is_ok(), "{good}");
    }
    for (bad, reason) in [
        (
            "kafka:abc",
            "the port must be a number from 1 to 65535, got \"abc\"",
        ),
        (
            "kafka:99999",
            "the port must be a number from 1 to 65535, got \"99999\"",
        ),
        (
            "kafka:0",
            "the port must be a number from 1 to 65535, got \"0\"",
        ),
        (
            "kafka:",
            "the port must be a number from 1 to 65535, got \"\"",
        ),
        ("kafka", "has no port (e.g. \"kafka:9092\")"),
        (":9092", "has no host (e.g. \"kafka:9092\")"),
        (
            "http://kafka:9092",
            "must be host:port without a URL scheme (did you mean \"kafka:9092\"?); \
             http:// is not part of a broker address (the protocol is kafka.client's \
             security.protocol)",
        ),
        (
            "::1:9092",
            "has several ':'; an IPv6 address goes in brackets, e.g. [::1]:9092",
        ),
        ("[::1]", "has no port (e.g. \"kafka:9092\")"),
        (
            "[kafka]:9092",
            "\"kafka\" in brackets is not an IPv6 address (written [::1]:9092)",
        ),
        (
            "kafka 1:9092",
            "the host may only contain ASCII letters, digits, '.', '-' and '_', got \
             \"kafka 1\"",
        ),
    ] {
        settings.kafka.brokers = format!("ok:9092,{bad}");
        assert_eq!(
            problems(settings.validate().map(|()| Settings::default())),
            [(
                "kafka.brokers".to_string(),
                format!("entry {bad:?}: {reason}")
            )],
            "{bad}"
        );
    }
    // Each bad entry is its own problem, and names where the list came from.
    let found = problems(load(
        None,
        &[("METACACHE__KAFKA__BROKERS", "kafka:abc,kafka:99999,ok:1")],
    ));
    assert_eq!(
        found,
        [
            (
                "kafka.brokers".to_string(),
                "entry \"kafka:abc\": the port must be a number from 1 to 65535, got \
                 \"abc\" (from METACACHE__KAFKA__BROKERS)"
                    .to_string()
            ),
            (
                "kafka.brokers".to_string(),
                "entry \"kafka:99999\": the port must be a number from 1 to 65535, got \
                 \"99999\" (from METACACHE__KAFKA__BROKERS)"
                    .to_string()
            ),
        ]
    );
}

#[test]
fn every_bad_librdkafka_property_is_reported_in_one_run() {
    let file = toml_file(
        r#"
        [kafka.client]
        "sasl.pasword" = "secret-typo-1"
        "socket.timeout.ms" = "abc"
        "sasl.password" = ["secret-array-2"]
        "ssl.key.password" = { file = "secret-table-3" }
        # Longer property names spelt as nested keys under a shorter one.
        group.protocol.type = "consumer"
        "fetch.wait.max.ms" = 10
        "#,
    );
    let path = file.path().display().to_string();
    let error = load(
        Some(file.path()),
        &[("METACACHE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "soon")],
    )
    .expect_err("rejected");
    let printed = error.to_string();
    assert!(!printed.contains("secret-"), "{printed}");
    assert_eq!(
        problems(Err(error)),
        [
            (
                "kafka.client.ssl.key.password",
                format!("expected a string, got a table (in {path})"),
            ),
            (
                "kafka.client.sasl.password",
                format!(
                    "expected a string, got an array (librdkafka lists are \
                     comma-separated strings) (in {path})"
                ),
            ),
            (
                "kafka.client.sasl.pasword",
                format!("unknown librdkafka property (did you mean `sasl.password`?) (in {path})"),
            ),
            (
                "kafka.client.session.timeout.ms",
                "expected an integer, got \"soon\" (from \
                 METACACHE__KAFKA__CLIENT__SESSION_TIMEOUT_MS)"
                    .to_string(),
            ),
            (
                "kafka.client.socket.timeout.ms",
                format!("expected an integer, got \"abc\" (in {path})"),
            ),
        ]
        .map(|(f, r)| (f.to_string(), r))
    );
}

#[test]
fn command_line_options_win_and_are_named_as_the_source() {
    let file = toml_file("[kafka]\nbrokers = \"kafka:abc\"\n");
    let option = |value: &str| Override {
        field: "kafka.brokers",
        option: "--brokers",
        value: value.to_string(),
    };
    let vars = env(&[("METACACHE__REDIS__URL", "redis://h:6379/x")]);
    let found = problems(Settings::load_from(
        Some(file.path()),
        &vars,
        no_fallback(),
        &[option("kafka:99999")],
    ));
    assert_eq!(
        found,
        [
            (
                "kafka.brokers".to_string(),
                "entry \"kafka:99999\": the port must be a number from 1 to 65535, got \
                 \"99999\" (from --brokers)"
                    .to_string()
            ),
            (
                "redis.url".to_string(),
                "the path must be a database number, got \"x\" (from METACACHE__REDIS__URL)"
                    .to_string()
            ),
        ]
    );
    // A good option replaces the file's bad value before anything is checked.
    let settings =
        Settings::load_from(Some(file.path()), &[], no_fallback(), &[option("k:9092")]).unwrap();
    assert_eq!(settings.kafka.brokers, "k:9092");
}

#[test]
fn values_the_config_crate_would_coerce_are_rejected() {
    let file = toml_file(
        r#"
        shutdown = 5
        [kafka]
        client = ["a"]
        dead_letter = 1
        [writer]
        max_batch = true
        max_in_flight = "99999999999999999999999"
        "#,
    );
    let path = file.path().display().to_string();
    assert_eq!(
        problems(load(
            Some(file.path()),
            &[("METACACHE__KAFKA__GROUP_ID", "g")]
        )),
        [
            ("kafka.client", "expected a table, got an array".to_string()),
            (
                "kafka.dead_letter",
                "expected a boolean (true or false), got 1".to_string()
            ),
            (
                "writer.max_batch",
                "expected an integer, got true".to_string()
            ),
            (
                "writer.max_in_flight",
                "expected a non-negative 64-bit integer, got \"99999999999999999999999\""
                    .to_string()
            ),
            (
                "shutdown",
                "expected a table of settings, got 5".to_string()
            ),
        ]
        .map(|(f, r)| (f.to_string(), format!("{r} (in {path})")))
    );
}

#[test]
fn environment_problems_name_the_variable() {
    let found = problems(load(
        None,
        &[
            ("METACACHE__WRITER__MAX_BACH", "5"),
            ("METACACHE__WRITER__MAX_IN_FLIGHT", "many"),
            ("METACACHE__KAFKA__DEAD_LETTER", "2"),
            ("METACACHE__BROKERS", "k:9092"),
        ],
    ));
    assert_eq!(
        found,
        [
            (
                "brokers".to_string(),
                "unknown section (did you mean `kafka.brokers`?) (from METACACHE__BROKERS)"
                    .to_string()
            ),
            (
                "kafka.dead_letter".to_string(),
                "expected a boolean (true or false), got \"2\" (from \
                 METACACHE__KAFKA__DEAD_LETTER)"
                    .to_string()
            ),
            (
                "writer.max_bach".to_string(),
                "unknown setting (did you mean `max_batch`?) (from \
                 METACACHE__WRITER__MAX_BACH)"
                    .to_string()
            ),
            (
                "writer.max_in_flight".to_string(),
                "expected an integer, got \"many\" (from METACACHE__WRITER__MAX_IN_FLIGHT)"
                    .to_string()
            ),
        ]
    );
}

#[test]
fn the_error_prints_one_line_per_problem() {
    let error = ConfigError {
        problems: vec![
            Problem::new("writer.max_batch", "must be between 1 and 100000, got 0"),
            Problem::new("log.format", "must be one of text, json, got \"xml\""),
        ],
    };
    assert_eq!(
        error.to_string(),
        "configuration has 2 problem(s):\n  \
         - writer.max_batch: must be between 1 and 100000, got 0\n  \
         - log.format: must be one of text, json, got \"xml\""
    );
}

#[test]
fn topics_and_dead_letters_are_checked() {
    let mut settings = Settings::default();
    assert_eq!(settings.kafka.device_dlq(), "device-metadata.dlq");
    assert_eq!(settings.kafka.metric_dlq(), "metric-catalog.dlq");
    settings.kafka.device_dead_letter_topic = "rejects".into();
    assert_eq!(settings.kafka.device_dlq(), "rejects");

    settings.kafka.device_dead_letter_topic = "metric-catalog".into();
    settings.kafka.metric_topic = "bad topic!".into();
    settings.kafka.commit_interval_ms = 5;
    let found = problems(settings.validate().map(|()| Settings::default()));
    assert_eq!(
        found,
        [
            (
                "kafka.metric_topic".to_string(),
                "may only contain ASCII letters, digits, '.', '_' and '-', got \"bad topic!\""
                    .to_string()
            ),
            (
                "kafka.commit_interval_ms".to_string(),
                "must be at least 10, got 5".to_string()
            ),
        ]
    );

    let mut settings = Settings::default();
    settings.kafka.device_dead_letter_topic = "device-metadata".into();
    settings.kafka.metric_topic = "device-metadata".into();
    assert_eq!(
        fields(settings.validate().map(|()| Settings::default())),
        ["kafka.metric_topic", "kafka.device_dead_letter_topic"]
    );

    let mut settings = Settings::default();
    settings.kafka.device_dead_letter_topic = "metric-catalog".into();

    assert_eq!(
        problems(settings.validate().map(|()| Settings::default())),
        [(
            "kafka.device_dead_letter_topic".to_string(),
            "must differ from the source topics, got \"metric-catalog\"".to_string()
        )]
    );
    // Without dead letters the derived names do not matter.
    settings.kafka.dead_letter = false;
    settings.kafka.device_dead_letter_topic.clear();
    settings.kafka.device_topic = "d".repeat(249);
    assert!(settings.validate().is_ok());
}

#[test]
fn redis_urls_are_checked_without_showing_passwords() {
    let mut settings = Settings::default();
    for good in [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@cache.internal:6380",
        "redis+unix:///run/redis.sock",
        "unix:///run/redis.sock?db=1",
    ] {
        settings.redis.url = good.into();
        assert!(settings.validate().is_ok(), "{good}");
    }
    settings.redis.url = "redis://user:hunter2@/0".into();
    let found = problems(settings.validate().map(|()| Settings::default()));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "redis.url");
    assert!(!found[0].1.contains("hunter2"), "{}", found[0].1);

    settings.redis.url = "redis://h:6379/x".into();
    settings.redis.db = Some(-1);
    settings.redis.key_prefix = "a b".into();
    assert_eq!(
        problems(settings.validate().map(|()| Settings::default())),
        [
            (
                "redis.url".to_string(),
                "the path must be a database number, got \"x\"".to_string()
            ),
            (
                "redis.db".to_string(),
                "must be at least 0, got -1".to_string()
            ),
            (
                "redis.key_prefix".to_string(),
                "must not contain whitespace or control characters, got \"a b\"".to_string()
            ),
        ]
    );
}

#[test]
fn secrets_never_reach_printed_settings() {
    let mut settings = Settings::default();
    settings.redis.url = "redis://user:url-secret-1@cache:6379/0".into();
    settings.redis.password = Some("pw-secret-2".into());
    for (key, value) in [
        ("sasl.password", "sasl-secret-3"),
        ("sasl.jaas.config", "jaas-secret-4"),
        ("sasl.oauthbearer.config", "oauth-secret-5"),
        ("sasl.oauthbearer.client.secret", "client-secret-6"),
        ("ssl.key.pem", "pem-secret-7"),
        ("sasl.username", "alice"),
    ] {
        settings.kafka.client.insert(key.into(), value.into());
    }
    let printed = settings.to_toml_string();
    for secret in ["secret-1", "secret-2", "secret-3", "secret-4", "secret-5"] {
        assert!(!printed.contains(secret), "{secret} in:\n{printed}");
    }
    for secret in ["secret-6", "secret-7"] {
        assert!(!printed.contains(secret), "{secret} in:\n{printed}");
    }
    assert!(
        printed.contains("url = \"redis://user:***@cache:6379/0\""),
        "{printed}"
    );
    assert!(printed.contains("password = \"***\""), "{printed}");
    assert!(printed.contains("\"sasl.password\" = \"***\""), "{printed}");
    assert!(
        printed.contains("\"sasl.username\" = \"alice\""),
        "{printed}"
    );
    assert_eq!(
        settings.redis.redacted_url(),
        "redis://user:***@cache:6379/0"
    );
    // The original is untouched.
    assert_eq!(settings.redis.password.as_deref(), Some("pw-secret-2"));
}

#[test]
fn printed_settings_load_back_to_the_same_values() {
    let mut settings = Settings::default();
    settings.writer.max_batch = 77;
    settings.kafka.client.insert("linger.ms".into(), "3".into());
    settings.redis.db = Some(4);
    let file = toml_file(&settings.to_toml_string());
    let loaded = load(Some(file.path()), &[]).unwrap();
    assert_eq!(loaded.to_toml_string(), settings.to_toml_string());
}

#[test]
fn urls_are_redacted_in_every_form() {
    let cases = [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:only-pw@h:6379", "redis://:***@h:6379"),
        ("rediss://u:p%40ss@h/1", "rediss://u:***@h/1"),
        (
            "redis+unix:///run/r.sock?db=1&pass=qwerty",
            "redis+unix:///run/r.sock?db=1&pass=***",
        ),
        ("not a url://u:pw@host", "not a url://***@host"),
    ];
    for (raw, shown) in cases {
        assert_eq!(redact_url(raw), shown);
    }
}

#[test]
fn a_syntax_error_names_the_file_but_not_the_line() {
    let file = toml_file("[redis]\npassword = \"hunter2\nurl = 1\n");
    let found = problems(load(Some(file.path()), &[]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "config");
    assert!(found[0].1.starts_with("cannot parse "), "{}", found[0].1);
    assert!(found[0].1.contains("line 2"), "{}", found[0].1);
    assert!(!found[0].1.contains("hunter2"), "{}", found[0].1);
}

#[test]
fn the_probe_listener_is_an_address_apart_from_the_main_one() {
    let mut settings = Settings::default();
    settings.http.probe_listen = "0.0.0.0:8081".into();
    assert!(settings.validate().is_ok());
    for (probe, why) in [
        ("localhost:8081", "IP address and port"),
        ("0.0.0.0:8080", "must differ from http.listen"),
    ] {
        settings.http.probe_listen = probe.into();
        let found = problems(settings.validate().map(|()| Settings::default()));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "http.probe_listen");
        assert!(found[0].1.contains(why), "{}", found[0].1);
    }
}

#[test]
fn an_api_token_file_must_be_readable_and_long_enough_and_is_never_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").expect("written");
    let long = dir.path().join("long");
    std::fs::write(&long, "0123456789abcdef-secret\n").expect("written");
    let mut settings = Settings::default();
    for (file, wanted) in [
        (dir.path().join("missing"), "cannot read"),
        (short, "at least 16 characters"),
    ] {
        settings.api.token_file = file.display().to_string();
        let e = settings.validate().expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("api.token_file") && text.contains(wanted),
            "{text}"
        );
        assert!(!text.contains("abc"), "the token leaked: {text}");
    }
    settings.api.token_file = long.display().to_string();
    settings
        .validate()
        .expect("a readable token of 23 characters");
    assert_eq!(
        settings.api.token().expect("read").as_deref(),
        Some("0123456789abcdef-secret")
    );
}

#[test]
fn a_redis_password_file_must_be_readable_and_not_beside_a_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::default();
    settings.redis.password_file = Some(dir.path().join("missing").display().to_string());
    let text = settings.validate().expect_err("refused").to_string();
    assert!(
        text.contains("redis.password_file") && text.contains("cannot read"),
        "{text}"
    );
    let file = dir.path().join("password");
    std::fs::write(&file, "hunter2-secret\n").expect("written");
    settings.redis.password_file = Some(file.display().to_string());
    settings.validate().expect("a readable file");
    settings.redis.password = Some("other".into());
    let text = settings.validate().expect_err("refused").to_string();
    assert!(text.contains("not both"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

#[test]
fn sentinel_mode_needs_sentinels_and_a_master_and_takes_them_from_the_environment() {
    let found = problems(load(None, &[("METACACHE__REDIS__MODE", "sentinel")]));
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert!(fields.contains(&"redis.nodes"), "{found:?}");
    assert!(fields.contains(&"redis.sentinel_master"), "{found:?}");

    let settings = load(
        None,
        &[
            ("METACACHE__REDIS__MODE", "sentinel"),
            (
                "METACACHE__REDIS__NODES",
                "redis://s0:26379, redis://s1:26379,redis://s2:26379",
            ),
            ("METACACHE__REDIS__SENTINEL_MASTER", "cache"),
            ("METACACHE__REDIS__SENTINEL_PASSWORD", "sentinel-secret"),
        ],
    )
    .expect("a complete sentinel configuration");
    assert_eq!(
        settings.redis.nodes,
        ["redis://s0:26379", "redis://s1:26379", "redis://s2:26379"]
    );
    assert_eq!(settings.redis.mode(), RedisMode::Sentinel);
    let printed = settings.to_toml_string();
    assert!(!printed.contains("sentinel-secret"), "{printed}");

    let found = problems(load(
        None,
        &[
            ("METACACHE__REDIS__MODE", "sentinel"),
            (
                "METACACHE__REDIS__NODES",
                "redis://s0:26379,rediss://s1:26379,s2",
            ),
            ("METACACHE__REDIS__SENTINEL_MASTER", "cache"),
        ],
    ));
    assert!(
        found
            .iter()
            .any(|(f, r)| f == "redis.nodes" && r.contains("mixes")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(f, r)| f == "redis.nodes" && r.contains("\"s2\"")),
        "{found:?}"
    );
}

#[test]
fn cluster_mode_needs_seed_nodes_of_database_0_and_unknown_modes_are_refused_by_name() {
    let found = problems(load(None, &[("METACACHE__REDIS__MODE", "cluster")]));
    assert!(
        found
            .iter()
            .any(|(f, r)| f == "redis.nodes" && r.contains("seed nodes")),
        "{found:?}"
    );
    let found = problems(load(
        None,
        &[
            ("METACACHE__REDIS__MODE", "cluster"),
            (
                "METACACHE__REDIS__NODES",
                "redis://r0:7000/2,rediss://r1:7001,http://r2",
            ),
            ("METACACHE__REDIS__DB", "3"),
        ],
    ));
    for (field, words) in [
        ("redis.nodes", "only database 0"),
        ("redis.nodes", "mixes"),
        ("redis.nodes", "redis:// or rediss://"),
        ("redis.db", "only database 0"),
    ] {
        assert!(
            found.iter().any(|(f, r)| f == field && r.contains(words)),
            "{field} {words}: {found:?}"
        );
    }
    let settings = load(
        None,
        &[
            ("METACACHE__REDIS__MODE", "cluster"),
            ("METACACHE__REDIS__NODES", "redis://r0:7000,redis://r1:7001"),
        ],
    )
    .expect("a cluster with two seeds is valid");
    assert_eq!(settings.redis.mode(), RedisMode::Cluster);
    assert_eq!(settings.redis.nodes.len(), 2);
    let found = problems(load(None, &[("METACACHE__REDIS__MODE", "replicated")]));
    assert!(found.iter().any(|(f, _)| f == "redis.mode"), "{found:?}");
}

#[test]
fn librdkafka_properties_from_files_are_checked_read_and_never_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("password");
    std::fs::write(&password, "kafka-secret-1\n").expect("written");
    let path = password.display().to_string();
    let settings = load(
        None,
        &[
            ("METACACHE__KAFKA__CLIENT__SASL_USERNAME", "svc"),
            ("METACACHE__KAFKA__CLIENT_FILES__SASL_PASSWORD", &path),
        ],
    )
    .expect("a readable file");
    assert_eq!(settings.kafka.client_files["sasl.password"], path);
    assert_eq!(
        settings.kafka.client_properties()["sasl.password"],
        "kafka-secret-1",
        "the file's content, without the newline"
    );
    assert!(!settings.to_toml_string().contains("kafka-secret-1"));

    let file = toml_file(&format!(
        "[kafka.client]\n\"sasl.password\" = \"inline\"\n\
         [kafka.client_files]\n\"sasl.password\" = {path:?}\n\"group.id\" = {path:?}\n\
         \"socket.timeout.ms\" = {path:?}\nsasl.oauthbearer.config = \"/nowhere\"\n"
    ));
    let found = problems(load(Some(file.path()), &[]));
    let text = format!("{found:?}");
    assert!(text.contains("not both"), "{text}");
    assert!(text.contains("kafka.client_files.group.id"), "{text}");
    // A file whose content librdkafka refuses for the property, and a missing file.
    assert!(
        found
            .iter()
            .any(|(f, r)| f == "kafka.client_files.socket.timeout.ms" && r.contains("content")),
        "{text}"
    );
    assert!(
        found
            .iter()
            .any(|(f, r)| f == "kafka.client_files.sasl.oauthbearer.config"
                && r.contains("cannot read")),
        "{text}"
    );
    assert!(!text.contains("kafka-secret-1"), "{text}");
}
