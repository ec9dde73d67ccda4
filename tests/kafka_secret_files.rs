//! `kafka.client_files`: librdkafka properties read from files. The daemon reads them when
//! it makes its clients, and a rotated SASL password reaches the running consumer and
//! dead-letter producer (`rd_kafka_sasl_set_credentials`, used at the next
//! authentication). librdkafka's mock cluster speaks no SASL, so what is checked here is
//! that the rotation is noticed and accepted by librdkafka, and that the secret shows
//! nowhere; authentication against a SASL broker cannot be run on this machine.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_sasl_password_file_is_handed_to_the_running_clients() {
    let h = Harness::start(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("sasl-password");
    std::fs::write(&password, "first-secret\n").expect("written");
    let mut settings = h.settings();
    settings
        .kafka
        .client
        .insert("sasl.username".into(), "metacache".into());
    settings
        .kafka
        .client_files
        .insert("sasl.password".into(), password.display().to_string());
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    let device = device_json("a", "t", "2026-12-05T10:00:00Z");
    h.produce(DEVICES, &[(Some("a"), Some(&device))]).await;
    daemon.wait_finished(1, Duration::from_secs(30)).await;
    assert_eq!(daemon.stats.snapshot().kafka_credentials_applied, 0);

    std::fs::write(&password, "second-secret\n").expect("rotated");
    wait_for(
        Duration::from_secs(25),
        "the rotated password to be applied",
        || async { daemon.stats.snapshot().kafka_credentials_applied == 1 },
    )
    .await;
    // The daemon goes on consuming, and no secret reaches /stats or /metrics.
    let other = device_json("b", "t", "2026-12-05T10:00:01Z");
    h.produce(DEVICES, &[(Some("b"), Some(&other))]).await;
    daemon.wait_finished(2, Duration::from_secs(30)).await;
    for path in ["/stats", "/metrics"] {
        let (status, body) = http_get(addr, path).await;
        assert_eq!(status, 200);
        assert!(
            !body.contains("first-secret") && !body.contains("second-secret"),
            "{path} shows a secret"
        );
    }
    // Unchanged files are not applied again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(daemon.stats.snapshot().kafka_credentials_applied, 1);
}
