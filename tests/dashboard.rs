//! The Grafana dashboard and the alert rules the chart ships query only metrics that
//! `/metrics` really exposes: every metric name in their expressions is checked against a
//! scrape of a real daemon that has written, refused and committed events.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// The `metacache_*` names in an expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("metacache_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Part of a longer word (a label value, say) is not a metric name.
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Every expression of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/metacache/dashboards/metacache.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["definition"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    exprs
}

/// Every `expr:` of the PrometheusRule template (one line each there).
fn alert_exprs() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/metacache/templates/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("the rule template");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

/// The sample names of a scrape (histograms as their `_bucket`, `_sum`, `_count`).
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_dashboard_and_the_alerts_is_in_a_real_scrape() {
    let h = Harness::start(2);
    let daemon = h.start_daemon(h.settings());
    let addr = daemon.http().await;
    let a = device_json("a", "temperature", "2026-11-22T10:00:00Z");
    h.produce(
        DEVICES,
        &[
            (Some("a"), Some(&a)),
            (Some("x"), Some(r#"{"device_id":"x"}"#)),
        ],
    )
    .await;
    h.produce(
        METRICS,
        &[(
            Some("ns"),
            Some(r#"{"op":"add","namespace":"ns","metric_names":["m"]}"#),
        )],
    )
    .await;
    daemon.wait_finished(3, Duration::from_secs(30)).await;

    // The monitor's figures (memory, policy) and the partitions' offsets arrive within a
    // refresh or two.
    let deadline = Instant::now() + Duration::from_secs(15);
    let scraped = loop {
        let (status, text) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let names = scraped_names(&text);
        if names.contains("metacache_redis_maxmemory_policy")
            && names.contains("metacache_consumer_lag")
            && names.contains("metacache_cache_oldest_device_timestamp_seconds")
        {
            break names;
        }
        assert!(Instant::now() < deadline, "figures never arrived:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let dashboard = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(
        dashboard.len() >= 20,
        "{} dashboard queries",
        dashboard.len()
    );
    assert_eq!(alerts.len(), 7, "{alerts:?}");
    let mut checked = BTreeSet::new();
    for (source, exprs) in [("dashboard", &dashboard), ("alert rules", &alerts)] {
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{source}: no metacache metric in {expr}");
            for name in names {
                assert!(
                    scraped.contains(&name),
                    "{source}: {name} is not exposed by /metrics (in {expr})"
                );
                checked.insert(name);
            }
        }
    }
    println!(
        "{} metric names checked against the scrape: {checked:?}",
        checked.len()
    );
    daemon.stop().await.expect("clean stop");
}

#[test]
fn metric_names_are_read_out_of_expressions() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(metacache_redis_pipeline_duration_seconds_bucket{job=~"$job"}[5m]))) / metacache_x"#
        ),
        [
            "metacache_redis_pipeline_duration_seconds_bucket",
            "metacache_x"
        ]
    );
    assert_eq!(
        metric_names(r#"up{job="my_metacache_y"}"#),
        Vec::<String>::new()
    );
}
