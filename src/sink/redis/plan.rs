//! Command planning: one validated event becomes the Redis commands that apply it. Pure —
//! it only fills a [`redis::Pipeline`], which is plain data until the writer sends it — so
//! the layout and the command choice are tested without a server.

use redis::Pipeline;

use super::keys::KeyLayout;
use super::scripts;
use crate::model::{DeviceMetadata, Event, MetricOp};

/// Expiry applied to what metacache writes; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ttls {
    pub device_secs: u64,
    pub metric_secs: u64,
}

/// How to read the replies of one event's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Commands appended to the pipeline for this event (0 for a no-op).
    pub commands: usize,
    /// The first reply is the stale guard's verdict: 1 written, 0 skipped as stale.
    pub guarded: bool,
}

/// Turns events into commands under one key layout.
#[derive(Debug, Clone)]
pub struct Planner {
    keys: KeyLayout,
    ttls: Ttls,
    /// Benchmark only: devices as plain `SET`s, without the stale guard and the index, to
    /// measure what those two cost. Never in production: out-of-order updates would win.
    plain_devices: bool,
}

impl Planner {
    pub fn new(keys: KeyLayout, ttls: Ttls) -> Self {
        Planner {
            keys,
            ttls,
            plain_devices: false,
        }
    }

    /// See [`Planner::plain_devices`]; used by `metacache bench`.
    pub fn with_plain_devices(mut self, plain: bool) -> Self {
        self.plain_devices = plain;
        self
    }

    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// Appends the commands for `event` to `pipe`.
    pub fn plan(&self, event: &Event, pipe: &mut Pipeline) -> Planned {
        match event {
            Event::DeviceUpsert(device) => self.upsert_device(device, pipe),
            Event::DeviceDelete { device_id } => {
                pipe.cmd("DEL").arg(self.keys.device(device_id));
                pipe.cmd("ZREM").arg(self.keys.devices()).arg(device_id);
                Planned {
                    commands: 2,
                    guarded: false,
                }
            }
            Event::Metric(op) => self.metric(op, pipe),
        }
    }

    /// The stale guard runs on the device key alone; `ZADD GT` keeps the index score at the
    /// newest `last_updated` by itself, so an out-of-order update moves neither.
    fn upsert_device(&self, device: &DeviceMetadata, pipe: &mut Pipeline) -> Planned {
        if self.plain_devices {
            let cmd = pipe
                .cmd("SET")
                .arg(self.keys.device(&device.device_id))
                .arg(device.to_normalized_json());
            if self.ttls.device_secs > 0 {
                cmd.arg("EX").arg(self.ttls.device_secs);
            }
            return Planned {
                commands: 1,
                guarded: false,
            };
        }
        pipe.cmd("EVALSHA")
            .arg(scripts::UPSERT_DEVICE.get_hash())
            .arg(1)
            .arg(self.keys.device(&device.device_id))
            .arg(device.to_normalized_json())
            .arg(device.last_updated_rfc3339())
            .arg(self.ttls.device_secs);
        pipe.cmd("ZADD")
            .arg(self.keys.devices())
            .arg("GT")
            .arg(device.last_updated_ms)
            .arg(&device.device_id);
        Planned {
            commands: 2,
            guarded: true,
        }
    }

    fn metric(&self, op: &MetricOp, pipe: &mut Pipeline) -> Planned {
        let namespace = op.namespace();
        let set = self.keys.metric_names(namespace);
        let ttl = self.ttls.metric_secs;
        let mut commands = 0;
        match op {
            MetricOp::Replace { metric_names, .. } => {
                pipe.cmd("EVALSHA")
                    .arg(scripts::REPLACE_SET.get_hash())
                    .arg(1)
                    .arg(set)
                    .arg(ttl)
                    .arg(metric_names);
                pipe.cmd("SADD")
                    .arg(self.keys.metric_namespaces())
                    .arg(namespace);
                commands += 2;
            }
            MetricOp::Add { metric_names, .. } => {
                if !metric_names.is_empty() {
                    pipe.cmd("SADD").arg(&set).arg(metric_names);
                    commands += 1;
                    if ttl > 0 {
                        pipe.cmd("EXPIRE").arg(&set).arg(ttl);
                        commands += 1;
                    }
                }
                pipe.cmd("SADD")
                    .arg(self.keys.metric_namespaces())
                    .arg(namespace);
                commands += 1;
            }
            MetricOp::Remove { metric_names, .. } => {
                if !metric_names.is_empty() {
                    pipe.cmd("SREM").arg(set).arg(metric_names);
                    commands += 1;
                }
            }
            MetricOp::Delete { .. } => {
                pipe.cmd("DEL").arg(set);
                pipe.cmd("SREM")
                    .arg(self.keys.metric_namespaces())
                    .arg(namespace);
                commands += 2;
            }
        }
        Planned {
            commands,
            guarded: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn render(pipe: &Pipeline) -> Vec<String> {
        pipe.cmd_iter()
            .map(|cmd| {
                cmd.args_iter()
                    .map(|arg| match arg {
                        redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                        _ => "<cursor>".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    fn device(ttl: u64) -> (Planner, DeviceMetadata) {
        let planner = Planner::new(
            KeyLayout::new("p:"),
            Ttls {
                device_secs: ttl,
                metric_secs: 0,
            },
        );
        let device = DeviceMetadata {
            device_id: "dev-42".into(),
            datatype_id: "dt-7".into(),
            datatype_name: "temperature".into(),
            datatype_unit: Some("C".into()),
            persist: true,
            last_updated_ms: 1_795_348_800_000,
            additional_properties: Map::new(),
        };
        (planner, device)
    }

    #[test]
    fn device_upsert_is_a_guarded_set_and_an_index_update_that_only_moves_forward() {
        let (planner, device) = device(60);
        let mut pipe = redis::pipe();
        let planned = planner.plan(&Event::DeviceUpsert(device.clone()), &mut pipe);
        assert_eq!(
            planned,
            Planned {
                commands: 2,
                guarded: true
            }
        );
        let cmds = render(&pipe);
        let sha = scripts::UPSERT_DEVICE.get_hash();
        assert_eq!(
            cmds[0],
            format!(
                "EVALSHA {sha} 1 p:device:dev-42 {} {} 60",
                device.to_normalized_json(),
                device.last_updated_rfc3339()
            )
        );
        assert_eq!(cmds[1], "ZADD p:devices GT 1795348800000 dev-42");
    }

    #[test]
    fn the_benchmarks_plain_mode_is_one_set_without_guard_or_index() {
        let (planner, device) = device(0);
        let planner = planner.with_plain_devices(true);
        let mut pipe = redis::pipe();
        let planned = planner.plan(&Event::DeviceUpsert(device.clone()), &mut pipe);
        assert_eq!(planned.commands, 1);
        assert!(!planned.guarded);
        assert_eq!(
            render(&pipe),
            vec![format!(
                "SET p:device:dev-42 {}",
                device.to_normalized_json()
            )]
        );
    }

    #[test]
    fn device_tombstone_deletes_the_key_and_the_index_entry() {
        let (planner, _) = device(0);
        let mut pipe = redis::pipe();
        let event = Event::DeviceDelete {
            device_id: "dev-42".into(),
        };
        assert_eq!(planner.plan(&event, &mut pipe).commands, 2);
        assert_eq!(
            render(&pipe),
            vec!["DEL p:device:dev-42", "ZREM p:devices dev-42"]
        );
    }

    fn metric_planner(ttl: u64) -> Planner {
        Planner::new(
            KeyLayout::new(""),
            Ttls {
                device_secs: 0,
                metric_secs: ttl,
            },
        )
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metric_operations_touch_the_set_and_the_namespace_index() {
        let planner = metric_planner(0);
        let replace_sha = scripts::REPLACE_SET.get_hash();
        let cases = vec![
            (
                MetricOp::Replace {
                    namespace: "billing".into(),
                    metric_names: names(&["cpu", "mem"]),
                },
                vec![
                    format!("EVALSHA {replace_sha} 1 billing#metric_names 0 cpu mem"),
                    "SADD metric_namespaces billing".to_owned(),
                ],
            ),
            (
                MetricOp::Replace {
                    namespace: "billing".into(),
                    metric_names: vec![],
                },
                vec![
                    format!("EVALSHA {replace_sha} 1 billing#metric_names 0"),
                    "SADD metric_namespaces billing".to_owned(),
                ],
            ),
            (
                MetricOp::Add {
                    namespace: "billing".into(),
                    metric_names: names(&["disk"]),
                },
                vec![
                    "SADD billing#metric_names disk".to_owned(),
                    "SADD metric_namespaces billing".to_owned(),
                ],
            ),
            (
                MetricOp::Remove {
                    namespace: "billing".into(),
                    metric_names: names(&["cpu"]),
                },
                vec!["SREM billing#metric_names cpu".to_owned()],
            ),
            (
                MetricOp::Remove {
                    namespace: "billing".into(),
                    metric_names: vec![],
                },
                vec![],
            ),
            (
                MetricOp::Delete {
                    namespace: "billing".into(),
                },
                vec![
                    "DEL billing#metric_names".to_owned(),
                    "SREM metric_namespaces billing".to_owned(),
                ],
            ),
        ];
        for (op, expected) in cases {
            let mut pipe = redis::pipe();
            let planned = planner.plan(&Event::Metric(op.clone()), &mut pipe);
            assert_eq!(render(&pipe), expected, "{op:?}");
            assert_eq!(planned.commands, expected.len(), "{op:?}");
            assert!(!planned.guarded);
        }
    }

    #[test]
    fn metric_ttl_is_refreshed_on_add() {
        let planner = metric_planner(300);
        let mut pipe = redis::pipe();
        let op = MetricOp::Add {
            namespace: "ns".into(),
            metric_names: names(&["a", "b"]),
        };
        planner.plan(&Event::Metric(op), &mut pipe);
        assert_eq!(
            render(&pipe),
            vec![
                "SADD ns#metric_names a b",
                "EXPIRE ns#metric_names 300",
                "SADD metric_namespaces ns"
            ]
        );
    }
}
