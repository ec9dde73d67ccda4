//! The benchmark's event streams, deterministic so two runs compare: device upserts
//! (~250-byte JSON over a fixed set of devices, with repeats), metric-catalog operations on
//! 1k namespaces, and a mix of both with 1% invalid events.

use std::fmt::Write;

/// Which stream a benchmark run produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Devices,
    Metrics,
    Mixed,
}

/// One record: which topic (device or metric), key and value.
pub struct BenchRecord {
    pub device_topic: bool,
    pub key: String,
    pub value: Vec<u8>,
}

impl BenchRecord {
    /// The kind of stream its topic carries.
    pub fn kind(&self) -> crate::model::TopicKind {
        if self.device_topic {
            crate::model::TopicKind::Device
        } else {
            crate::model::TopicKind::Metric
        }
    }
}

/// A small deterministic generator (no dependency, same stream every run).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const BASE_MS: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

/// A device event of about 250 bytes; `seq` moves `last_updated` forward so repeats are
/// fresh updates (the stale guard runs but rarely skips).
pub fn device_event(id: &str, seq: u64) -> Vec<u8> {
    let ms = BASE_MS + seq as i64;
    let secs = ms.div_euclid(1000);
    let when = time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                ms.rem_euclid(1000)
            )
        })
        .unwrap_or_else(|_| "2026-11-22T10:00:00Z".into());
    let mut s = String::with_capacity(272);
    let _ = write!(
        s,
        r#"{{"device_id":"{id}","datatype_id":"dt-{}","datatype_name":"temperature","datatype_unit":"C","persist":true,"last_updated":"{when}","site":"plant-{}","line":"assembly-{}","vendor":"acme-sensors","firmware":"4.2.{}","tags":["benchmark","{}"]}}"#,
        seq % 97,
        seq % 7,
        seq % 13,
        seq % 50,
        seq % 3
    );
    s.into_bytes()
}

/// Generates `count` records of `workload`.
pub fn generate(workload: Workload, count: u64, devices: u64, seed: u64) -> Vec<BenchRecord> {
    let mut rng = Lcg::new(seed);
    let mut out = Vec::with_capacity(count as usize);
    for seq in 0..count {
        let metric = match workload {
            Workload::Devices => false,
            Workload::Metrics => true,
            Workload::Mixed => rng.below(4) == 0,
        };
        let invalid = workload == Workload::Mixed && rng.below(100) == 0;
        let record = if metric {
            let ns = format!("ns-{}", rng.below(1000));
            let names: Vec<String> = (0..1 + rng.below(5))
                .map(|_| format!("metric_{}", rng.below(200)))
                .collect();
            let op = match rng.below(10) {
                0 => "replace",
                1..=6 => "add",
                _ => "remove",
            };
            let value = if invalid {
                format!(r#"{{"op":"rename","namespace":"{ns}","metric_names":[]}}"#)
            } else {
                serde_json::json!({"op": op, "namespace": ns, "metric_names": names}).to_string()
            };
            BenchRecord {
                device_topic: false,
                key: ns,
                value: value.into_bytes(),
            }
        } else {
            let id = format!("dev-{}", rng.below(devices));
            let value = if invalid {
                format!(r#"{{"device_id":"{id}","persist":"maybe"}}"#).into_bytes()
            } else {
                device_event(&id, seq)
            };
            BenchRecord {
                device_topic: true,
                key: id,
                value,
            }
        };
        out.push(record);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{decode, Limits, TopicKind};

    #[test]
    fn device_events_are_valid_and_about_250_bytes() {
        let v = device_event("dev-12345", 123_456);
        assert!((230..=290).contains(&v.len()), "{}", v.len());
        assert!(decode(
            TopicKind::Device,
            Some(b"dev-12345"),
            Some(&v),
            &Limits::default()
        )
        .is_ok());
    }

    #[test]
    fn mixed_stream_has_about_one_percent_invalid() {
        let records = generate(Workload::Mixed, 20_000, 1000, 7);
        let invalid = records
            .iter()
            .filter(|r| {
                decode(
                    r.kind(),
                    Some(r.key.as_bytes()),
                    Some(&r.value),
                    &Limits::default(),
                )
                .is_err()
            })
            .count();
        assert!((100..=300).contains(&invalid), "{invalid}");
        assert!(records.iter().any(|r| !r.device_topic));
    }
}
