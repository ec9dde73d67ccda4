//! With TTLs set, expired entries leave the indexes too; entries of live keys stay.

mod support;

use std::time::Duration;

use redis::Commands;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_devices_and_namespaces_leave_the_indexes() {
    let h = Harness::start(1);
    let mut settings = h.settings();
    settings.devices.ttl_secs = 3;
    settings.metrics.ttl_secs = 1;
    settings.janitor.interval_secs = 1;
    let daemon = h.start_daemon(settings);
    let a = device_json("short-lived", "t", "2026-11-22T10:00:00Z");
    h.produce(DEVICES, &[(Some("short-lived"), Some(&a))]).await;
    h.produce(
        METRICS,
        &[(
            Some("ns"),
            Some(r#"{"op":"add","namespace":"ns","metric_names":["m"]}"#),
        )],
    )
    .await;
    daemon.wait_finished(2, Duration::from_secs(30)).await;
    let mut r = h.redis();
    assert!(
        r.ttl::<_, i64>("device:short-lived").unwrap() > 0,
        "EX applied"
    );
    assert!(
        r.ttl::<_, i64>("ns#metric_names").unwrap() > 0,
        "EX applied"
    );

    // After the keys expire, a janitor pass removes their index entries.
    wait_for(
        Duration::from_secs(15),
        "the index entries to go",
        || async {
            let mut r = h.redis();
            r.zcard::<_, u64>("devices").unwrap() == 0
                && r.scard::<_, u64>("metric_namespaces").unwrap() == 0
        },
    )
    .await;

    // A device written now stays indexed while its key lives.
    let b = device_json("fresh", "t", "2026-11-22T11:00:00Z");
    h.produce(DEVICES, &[(Some("fresh"), Some(&b))]).await;
    daemon.wait_finished(3, Duration::from_secs(30)).await;
    // An index entry whose key is gone, added after "fresh": once the janitor removed it,
    // a pass ran over "fresh" too.
    let _: () = r.zadd("devices", "ghost", 1).unwrap();
    wait_for(
        Duration::from_secs(15),
        "a janitor pass after the fresh device was written",
        || async {
            h.redis()
                .zscore::<_, _, Option<i64>>("devices", "ghost")
                .unwrap()
                .is_none()
        },
    )
    .await;
    assert!(r.exists::<_, bool>("device:fresh").unwrap());
    assert_eq!(
        r.zscore::<_, _, Option<i64>>("devices", "fresh").unwrap(),
        Some(1_795_345_200_000)
    );
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_index_shards_the_janitor_walks_every_shard() {
    let h = Harness::start(2);
    let mut settings = h.settings();
    settings.devices.ttl_secs = 2;
    settings.devices.index_shards = 16;
    settings.janitor.interval_secs = 1;
    let daemon = h.start_daemon(settings);
    let ids = produce_devices(&h, 40).await;
    daemon.wait_finished(40, Duration::from_secs(30)).await;
    let shards: std::collections::BTreeSet<String> = ids
        .iter()
        .map(|id| support::model::index_key(id, 16))
        .collect();
    assert!(
        shards.len() > 8,
        "the ids spread over the shards: {shards:?}"
    );
    let mut r = h.redis();
    for id in &ids {
        let key = support::model::index_key(id, 16);
        assert!(
            r.zscore::<_, _, Option<i64>>(&key, id).unwrap().is_some(),
            "{id} in {key}"
        );
    }

    wait_for(
        Duration::from_secs(15),
        "every shard's entries to go",
        || async {
            let mut r = h.redis();
            shards
                .iter()
                .all(|key| r.zcard::<_, u64>(key).unwrap() == 0)
        },
    )
    .await;
    daemon.stop().await.expect("clean stop");
}
