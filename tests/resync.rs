//! `metacache resync`: rewinds an idle group to the earliest offsets, refuses while a
//! daemon is in the group, and never rewinds without being told to.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn without_a_terminal_it_needs_yes() {
    let out = std::process::Command::new(support::process::binary())
        .args(["resync", "--brokers", "127.0.0.1:1", "--group", "g"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--yes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_while_a_daemon_is_in_the_group_and_rewinds_once_it_left() {
    let h = Harness::start(2);
    let settings = h.settings();
    let group = settings.kafka.group_id.clone();
    let devices: Vec<(String, String)> = (0..20)
        .map(|i| {
            let id = format!("d{i}");
            let json = device_json(&id, "t", "2026-11-22T10:00:00Z");
            (id, json)
        })
        .collect();
    let records: Vec<(Option<&str>, Option<&str>)> = devices
        .iter()
        .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
        .collect();
    let daemon = h.start_daemon(settings.clone());
    h.produce(DEVICES, &records[..15]).await;
    wait_for(Duration::from_secs(30), "15 committed", || async {
        h.committed(&group, DEVICES).iter().sum::<i64>() == 15
    })
    .await;

    // A daemon is in the group. The mock broker cannot list members, so resync refuses
    // without looking by joining: the daemon keeps its partitions, with no rebalance and
    // nothing read twice (a join took them away and replayed records).
    let before = daemon.stats.snapshot();
    let (code, out, err) = resync(&h, &group, &["--yes"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    println!("refused:\n{out}{err}");
    assert!(err.contains("cannot list the members"), "{err}");
    assert!(err.contains("--assume-idle"), "{err}");
    assert_eq!(h.committed(&group, DEVICES).iter().sum::<i64>(), 15);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = daemon.stats.snapshot();
    assert_eq!(
        after.rebalances, before.rebalances,
        "resync disturbed the group"
    );
    assert_eq!(after.devices.consumed, 15, "records were read twice");

    // An operator who says the group is idle while it is not: joining, resync is handed
    // only part of the partitions, refuses and commits nothing.
    let (code, out, err) = resync(&h, &group, &["--yes", "--assume-idle"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("other active members"), "{err}");
    assert_eq!(h.committed(&group, DEVICES).iter().sum::<i64>(), 15);
    // The daemon carries on after resync's visit.
    h.produce(DEVICES, &records[15..]).await;
    wait_for(Duration::from_secs(30), "20 committed", || async {
        h.committed(&group, DEVICES).iter().sum::<i64>() == 20
    })
    .await;
    daemon.stop().await.expect("clean stop");

    // Stopped, but the broker still cannot tell: without the operator's word, refused.
    let (code, _, err) = resync(&h, &group, &["--yes"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(h.committed(&group, DEVICES).iter().sum::<i64>(), 20);

    // The group is idle: rewound, with the plan printed.
    let (code, out, err) = resync(&h, &group, &["--yes", "--assume-idle"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    println!("rewound:\n{out}");
    for needle in [
        "device-metadata[0]",
        "device-metadata[1]",
        "metric-catalog[1]",
        "20 records in 4 partitions will be read again",
        "done",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    assert_eq!(h.committed(&group, DEVICES), vec![0, 0]);
    assert_eq!(h.committed(&group, METRICS), vec![0, 0]);

    // The next start replays everything.
    redis::cmd("FLUSHALL").query::<()>(&mut h.redis()).unwrap();
    let daemon = h.start_daemon(settings);
    daemon.wait_finished(20, Duration::from_secs(30)).await;
    assert_eq!(daemon.stats.snapshot().devices.consumed, 20);
    let index: usize = redis::cmd("ZCARD")
        .arg("devices")
        .query(&mut h.redis())
        .unwrap();
    assert_eq!(index, 20);
    daemon.stop().await.expect("clean stop");
}
