//! What lands in Redis: every event type and operation in the documented keys, tombstones,
//! the stale guard, and rejected events in the dead-letter topics with their headers.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::Message;
use redis::Commands;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_land_in_the_documented_keys_and_the_stale_update_is_skipped() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());

    let v1 = device_json("dev-1", "temperature", "2026-11-22T10:00:00Z");
    let v2 = device_json("dev-2", "humidity", "2026-11-22T12:00:00+02:00");
    let newer = device_json("dev-1", "temperature-newer", "2026-11-22T11:00:00Z");
    let older = device_json("dev-1", "temperature-older", "2026-11-22T09:00:00Z");
    let gone = device_json("dev-3", "gone", "2026-11-22T10:00:00Z");
    let with_extra = r#"{"device_id":"dev 4 ü","datatype_id":"d","datatype_name":"n","persist":false,"last_updated":"2026-11-22T08:00:00.123Z","site":"plant-3","tags":["a"]}"#;
    h.produce(
        DEVICES,
        &[
            (Some("dev-1"), Some(&v1)),
            (Some("dev-2"), Some(&v2)),
            (Some("dev-1"), Some(&newer)),
            (Some("dev-1"), Some(&older)),
            (Some("dev-3"), Some(&gone)),
            (Some("dev-3"), None),
            (Some("dev 4 ü"), Some(with_extra)),
        ],
    )
    .await;
    daemon.wait_finished(7, Duration::from_secs(30)).await;

    let mut r = h.redis();
    let stored: String = r.get("device:dev-1").unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["datatype_name"], "temperature-newer");
    assert_eq!(stored["last_updated"], "2026-11-22T11:00:00.000Z");
    // dev-2 was published with a +02:00 offset: normalized to UTC.
    let dev2: String = r.get("device:dev-2").unwrap();
    assert!(
        dev2.contains(r#""last_updated":"2026-11-22T10:00:00.000Z""#),
        "{dev2}"
    );
    // Unknown fields are kept.
    let dev4: serde_json::Value =
        serde_json::from_str(&r.get::<_, String>("device:dev 4 ü").unwrap()).unwrap();
    assert_eq!(dev4["site"], "plant-3");
    assert_eq!(dev4["tags"], serde_json::json!(["a"]));
    assert_eq!(dev4["datatype_unit"], serde_json::Value::Null);
    // The tombstone deleted dev-3 from both places.
    assert!(!r.exists::<_, bool>("device:dev-3").unwrap());
    let index: Vec<(String, i64)> = r.zrange_withscores("devices", 0, -1).unwrap();
    assert_eq!(
        index,
        vec![
            ("dev 4 ü".to_owned(), 1_795_334_400_123),
            ("dev-2".to_owned(), 1_795_341_600_000),
            ("dev-1".to_owned(), 1_795_345_200_000),
        ]
    );

    let snap = daemon.stats.snapshot();
    assert_eq!(snap.devices.consumed, 7);
    assert_eq!(snap.devices.stale, 1);
    assert_eq!(snap.devices.written, 6);
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_operations_land_in_the_documented_sets() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());
    let events = [
        (
            Some("billing"),
            Some(r#"{"op":"replace","namespace":"billing","metric_names":["cpu","mem"]}"#),
        ),
        (
            Some("billing"),
            Some(r#"{"op":"add","namespace":"billing","metric_names":["disk"]}"#),
        ),
        (
            Some("billing"),
            Some(r#"{"op":"remove","namespace":"billing","metric_names":["cpu"]}"#),
        ),
        (
            // An empty namespace is the default one; the key must name it (an empty key
            // is no key: refused as missing_key).
            Some("default"),
            Some(r#"{"op":"replace","namespace":"","metric_names":["requests"]}"#),
        ),
        (
            Some("a#b:c"),
            Some(r#"{"op":"add","namespace":"a#b:c","metric_names":["x"]}"#),
        ),
        (
            Some("empty"),
            Some(r#"{"op":"add","namespace":"empty","metric_names":["x"]}"#),
        ),
        (
            Some("empty"),
            Some(r#"{"op":"replace","namespace":"empty","metric_names":[]}"#),
        ),
        (
            Some("scratch"),
            Some(r#"{"op":"add","namespace":"scratch","metric_names":["t"]}"#),
        ),
        (Some("scratch"), None),
    ];
    h.produce(METRICS, &events).await;
    daemon
        .wait_finished(events.len() as u64, Duration::from_secs(30))
        .await;

    let mut r = h.redis();
    let set =
        |r: &mut redis::Connection, key: &str| -> BTreeSet<String> { r.smembers(key).unwrap() };
    assert_eq!(
        set(&mut r, "billing#metric_names"),
        BTreeSet::from(["disk".into(), "mem".into()])
    );
    assert!(r
        .sismember::<_, _, bool>("billing#metric_names", "mem")
        .unwrap());
    assert!(!r
        .sismember::<_, _, bool>("billing#metric_names", "cpu")
        .unwrap());
    assert_eq!(
        set(&mut r, "default#metric_names"),
        BTreeSet::from(["requests".into()])
    );
    assert_eq!(
        set(&mut r, "a#b:c#metric_names"),
        BTreeSet::from(["x".into()])
    );
    assert!(set(&mut r, "empty#metric_names").is_empty());
    assert!(!r.exists::<_, bool>("scratch#metric_names").unwrap());
    assert_eq!(
        set(&mut r, "metric_namespaces"),
        BTreeSet::from([
            "a#b:c".into(),
            "billing".into(),
            "default".into(),
            "empty".into()
        ])
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reaches_the_dead_letter_topic_and_later_events_still_land() {
    let h = Harness::start(1);
    let mut settings = h.settings();
    settings.limits.max_message_bytes = 2048;
    let daemon = h.start_daemon(settings);

    let big = format!(r#"{{"device_id":"{}"}}"#, "x".repeat(3000));
    // (key, value, expected reason, expected field)
    type Bad<'a> = (Option<&'a str>, Option<&'a str>, &'a str, Option<&'a str>);
    let bad_devices: Vec<Bad> = vec![
        (Some("d1"), Some(big.as_str()), "too_large", None),
        (
            Some("d2"),
            Some("{\"device_id\": \"d2\","),
            "invalid_json",
            None,
        ),
        (
            Some("d3"),
            Some(
                r#"{"device_id":"d3","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#,
            ),
            "missing_field",
            Some("datatype_id"),
        ),
        (
            Some("d4"),
            Some(
                r#"{"device_id":"d4","datatype_id":"d","datatype_name":"n","persist":"yes","last_updated":"2026-11-22T10:00:00Z"}"#,
            ),
            "wrong_type",
            Some("persist"),
        ),
        (
            Some("d5"),
            Some(
                r#"{"device_id":"d5","datatype_id":"d","datatype_name":"n","persist":true,"last_updated":"yesterday"}"#,
            ),
            "invalid_timestamp",
            Some("last_updated"),
        ),
        (
            Some("other"),
            Some(
                r#"{"device_id":"d6","datatype_id":"d","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#,
            ),
            "key_mismatch",
            Some("device_id"),
        ),
        (None, None, "missing_key", None),
        (
            Some("d8"),
            Some(
                r#"{"device_id":"d8","device_id":"d8","datatype_id":"d","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#,
            ),
            "duplicate_field",
            Some("device_id"),
        ),
        (
            Some("d9"),
            Some(
                r#"{"device_id":"","datatype_id":"d","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#,
            ),
            "invalid_value",
            Some("device_id"),
        ),
    ];
    let records: Vec<(Option<&str>, Option<&str>)> =
        bad_devices.iter().map(|(k, v, _, _)| (*k, *v)).collect();
    h.produce(DEVICES, &records).await;
    // Invalid UTF-8 cannot travel as &str; send it raw.
    {
        use rdkafka::producer::FutureRecord;
        let producer = h.producer();
        producer
            .send(
                FutureRecord::<str, [u8]>::to(DEVICES)
                    .key("d10")
                    .payload(&[0xff, 0xfe, b'{'][..]),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }
    let valid = device_json("ok-1", "after the bad ones", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("ok-1"), Some(&valid))]).await;
    h.produce(
        METRICS,
        &[
            (
                Some("m"),
                Some(r#"{"op":"rename","namespace":"m","metric_names":[]}"#),
            ),
            (
                Some("m"),
                Some(r#"{"op":"add","namespace":"m","metric_names":["ok"]}"#),
            ),
        ],
    )
    .await;

    let total = bad_devices.len() as u64 + 1 + 1 + 2;
    daemon.wait_finished(total, Duration::from_secs(30)).await;
    let mut r = h.redis();
    assert!(r.exists::<_, bool>("device:ok-1").unwrap());
    assert!(r.sismember::<_, _, bool>("m#metric_names", "ok").unwrap());

    let dead = h.read_topic(
        "device-metadata.dlq",
        bad_devices.len() + 1,
        Duration::from_secs(20),
    );
    assert_eq!(dead.len(), bad_devices.len() + 1);
    for (i, (key, value, reason, field)) in bad_devices.iter().enumerate() {
        let m = &dead[i];
        assert_eq!(
            header(m, "metacache.reason").as_deref(),
            Some(*reason),
            "record {i}"
        );
        assert_eq!(
            header(m, "metacache.field").as_deref(),
            *field,
            "record {i}"
        );
        assert_eq!(
            header(m, "metacache.source.topic").as_deref(),
            Some(DEVICES)
        );
        assert_eq!(
            header(m, "metacache.source.partition").as_deref(),
            Some("0")
        );
        assert_eq!(header(m, "metacache.source.offset"), Some(i.to_string()));
        assert!(header(m, "metacache.error").unwrap().starts_with(reason));
        // The original key and value, as they came.
        assert_eq!(m.key(), key.map(str::as_bytes), "record {i}");
        assert_eq!(m.payload(), value.map(str::as_bytes), "record {i}");
    }
    assert_eq!(
        header(&dead[bad_devices.len()], "metacache.reason").as_deref(),
        Some("invalid_utf8")
    );
    let dead_metrics = h.read_topic("metric-catalog.dlq", 1, Duration::from_secs(20));
    assert_eq!(
        header(&dead_metrics[0], "metacache.reason").as_deref(),
        Some("unknown_op")
    );
    assert_eq!(
        header(&dead_metrics[0], "metacache.field").as_deref(),
        Some("op")
    );

    let snap = daemon.stats.snapshot();
    assert_eq!(snap.devices.dead_lettered, bad_devices.len() as u64 + 1);
    assert_eq!(snap.devices.rejected.get("invalid_json"), Some(&1));
    assert_eq!(snap.metrics.rejected.get("unknown_op"), Some(&1));
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_under_a_device_key_dead_letters_that_event_only() {
    let h = Harness::start(1);
    let mut r = h.redis();
    let _: () = r.hset("device:foreign", "field", "value").unwrap();
    let daemon = h.start_daemon(h.settings());
    let foreign = device_json("foreign", "t", "2026-11-22T10:00:00Z");
    let fine = device_json("fine", "t", "2026-11-22T10:00:00Z");
    h.produce(
        DEVICES,
        &[
            (Some("foreign"), Some(&foreign)),
            (Some("fine"), Some(&fine)),
        ],
    )
    .await;
    daemon.wait_finished(2, Duration::from_secs(30)).await;
    assert!(r.exists::<_, bool>("device:fine").unwrap());
    let dead = h.read_topic("device-metadata.dlq", 1, Duration::from_secs(20));
    assert_eq!(
        header(&dead[0], "metacache.reason").as_deref(),
        Some("redis_rejected")
    );
    assert!(header(&dead[0], "metacache.error")
        .unwrap()
        .contains("WRONGTYPE"));
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_hostile_input_reach_the_dead_letter_topic_like_any_rejection() {
    let h = Harness::start(1);
    let mut settings = h.settings();
    settings.limits.max_message_bytes = 4096;
    settings.limits.max_id_bytes = 16;
    settings.limits.max_metric_names = 3;
    let daemon = h.start_daemon(settings);

    let device = |id: &str| device_json(id, "t", "2026-11-22T10:00:00Z");
    let oversized = format!(
        r#"{{"device_id":"big","datatype_id":"t","datatype_name":"{}","persist":true,"last_updated":"2026-11-22T10:00:00Z"}}"#,
        "n".repeat(5000)
    );
    let long_id = "i".repeat(17);
    let deep = format!(
        r#"{{"device_id":"deep","extra":{}1{}}}"#,
        "[".repeat(1_000),
        "]".repeat(1_000)
    );
    let long_key = "k".repeat(100);
    // (key, value, expected reason, expected field)
    type Bad = (
        Option<String>,
        Option<String>,
        &'static str,
        Option<&'static str>,
    );
    let bad_devices: Vec<Bad> = vec![
        (Some("big".into()), Some(oversized), "too_large", None),
        (
            Some(long_id.clone()),
            Some(device(&long_id)),
            "invalid_value",
            Some("device_id"),
        ),
        (Some("deep".into()), Some(deep), "invalid_json", None),
        (Some("empty".into()), Some(String::new()), "invalid_json", None),
        (Some(long_key.clone()), None, "invalid_value", Some("key")),
        (
            Some("num".into()),
            Some(r#"{"device_id":42,"datatype_id":"t","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#.into()),
            "wrong_type",
            Some("device_id"),
        ),
        (
            Some("old".into()),
            Some(device("old").replace("2026-11-22T10:00:00Z", "1969-12-31T23:59:59Z")),
            "invalid_timestamp",
            Some("last_updated"),
        ),
    ];
    let bad_metrics: Vec<Bad> = vec![
        (
            Some("ns".into()),
            Some(r#"{"op":"add","namespace":"ns","metric_names":["a","b","c","d"]}"#.into()),
            "invalid_value",
            Some("metric_names"),
        ),
        (
            Some("ns".into()),
            Some(format!(
                r#"{{"op":"add","namespace":"ns","metric_names":["a","{}"]}}"#,
                "m".repeat(17)
            )),
            "invalid_value",
            Some("metric_names[1]"),
        ),
        (
            Some("ns".into()),
            Some(r#"{"op":"add","op":"remove","namespace":"ns","metric_names":[]}"#.into()),
            "duplicate_field",
            Some("op"),
        ),
    ];
    for (topic, bad) in [(DEVICES, &bad_devices), (METRICS, &bad_metrics)] {
        let records: Vec<(Option<&str>, Option<&str>)> = bad
            .iter()
            .map(|(k, v, _, _)| (k.as_deref(), v.as_deref()))
            .collect();
        h.produce(topic, &records).await;
    }
    let ok = device("ok-after");
    h.produce(DEVICES, &[(Some("ok-after"), Some(&ok))]).await;
    h.produce(
        METRICS,
        &[(
            Some("ns"),
            Some(r#"{"op":"add","namespace":"ns","metric_names":["a","b","c"]}"#),
        )],
    )
    .await;
    let total = (bad_devices.len() + bad_metrics.len() + 2) as u64;
    daemon.wait_finished(total, Duration::from_secs(30)).await;
    let mut r = h.redis();
    assert!(r.exists::<_, bool>("device:ok-after").unwrap());
    assert_eq!(r.scard::<_, usize>("ns#metric_names").unwrap(), 3);

    for (topic, bad) in [
        ("device-metadata.dlq", &bad_devices),
        ("metric-catalog.dlq", &bad_metrics),
    ] {
        let dead = h.read_topic(topic, bad.len(), Duration::from_secs(20));
        assert_eq!(dead.len(), bad.len(), "{topic}");
        for (i, (key, value, reason, field)) in bad.iter().enumerate() {
            let m = &dead[i];
            assert_eq!(
                header(m, "metacache.reason").as_deref(),
                Some(*reason),
                "{topic} record {i}"
            );
            assert_eq!(
                header(m, "metacache.field").as_deref(),
                *field,
                "{topic} {i}"
            );
            assert_eq!(header(m, "metacache.source.offset"), Some(i.to_string()));
            assert_eq!(m.key(), key.as_deref().map(str::as_bytes), "{topic} {i}");
            assert_eq!(
                m.payload(),
                value.as_deref().map(str::as_bytes),
                "{topic} {i}"
            );
            // Headers stay small whatever the input was.
            assert!(header(m, "metacache.error").unwrap().len() < 1024);
        }
    }
    daemon.stop().await.expect("clean stop");
}
