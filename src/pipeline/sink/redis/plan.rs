//! Command planning: a batch of validated events becomes the Redis commands that apply
//! them. Pure — it only fills a [`redis::Pipeline`], which is plain data until the writer
//! sends it, and consults [`KnownVersions`], which is plain data too — so the layout and
//! the command choice are tested without a server.
//!
//! Two things make a batch cheaper for Redis than its events one by one, both measured
//! with `metacache bench` (docs/performance.md):
//!
//! - device upserts this writer can vouch for skip the guard script (see
//!   [`super::versions`]): stale ones are not sent at all, fresh ones are a plain `SET`;
//! - the index updates of a run of events become one command: one `ZADD devices GT` with
//!   every (score, id) pair, and one `SADD metric_namespaces` with every namespace, sent
//!   after the run. A tombstone ends the run (its `ZREM`/`SREM` must follow the adds it
//!   undoes), so order per key is kept. Each command still touches one key.

use std::time::Instant;

use redis::{Cmd, Pipeline, RedisWrite, ToRedisArgs};

use super::keys::KeyLayout;
use super::scripts;
use super::versions::{Decision, Fingerprint, KnownVersions};
use crate::model::{DeviceUpsert, Event, MetricOp};

/// Expiry applied to what metacache writes; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ttls {
    pub device_secs: u64,
    pub metric_secs: u64,
}

/// How the writer reads one event's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// The event's own commands are `first .. first + commands` in the pipeline.
    pub first: usize,
    pub commands: usize,
    /// The batched index update this event also depends on, if any.
    pub shared: Option<usize>,
    pub expect: Expect,
}

impl Planned {
    /// A record that plans no command (it never reaches Redis).
    pub fn none(at: usize) -> Self {
        Planned {
            first: at,
            commands: 0,
            shared: None,
            expect: Expect::Write,
        }
    }
}

/// What an event's replies mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Applied once every reply is fine.
    Write,
    /// The first own reply is the stale guard's verdict (1 written, 0 skipped as stale);
    /// `seq` tells [`KnownVersions`] which guard answered.
    Guarded { seq: u64 },
    /// Known here to be older than what the key holds: nothing was sent.
    Stale,
}

/// One event to plan. `epoch` is `Some` when the event may be decided locally: it has a
/// Kafka key and was consumed under the current partition assignment.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub event: Option<&'a Event>,
    pub epoch: Option<u64>,
}

/// A batch's commands and how to read their replies.
#[derive(Debug)]
pub struct BatchPlan {
    pub pipe: Pipeline,
    /// One per input, in input order.
    pub planned: Vec<Planned>,
    /// Some device was written without the guard: if the batch must be sent again after
    /// a rebalance, plan it again (all guarded), since another consumer may have written.
    pub unguarded: bool,
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

    pub fn ttls(&self) -> Ttls {
        self.ttls
    }

    /// Plans `inputs` in order as one pipeline.
    pub fn plan_batch<'a>(
        &self,
        inputs: impl IntoIterator<Item = PlanInput<'a>>,
        versions: &mut KnownVersions,
        now: Instant,
    ) -> BatchPlan {
        let inputs: Vec<PlanInput<'a>> = inputs.into_iter().collect();
        // Every upsert's fingerprint first, then their cache entries fetched in one pass,
        // then the decisions (see `KnownVersions::warm`).
        let fingerprints: Vec<Option<Fingerprint>> = if self.plain_devices || !versions.enabled() {
            Vec::new()
        } else {
            inputs
                .iter()
                .map(|input| match input.event {
                    Some(Event::DeviceUpsert(d)) => Some(versions.fingerprint(d.device_id())),
                    _ => None,
                })
                .collect()
        };
        versions.warm(fingerprints.iter().flatten().copied());
        let mut b = Builder {
            pipe: Pipeline::with_capacity(inputs.len() + 2),
            commands: 0,
            planned: Vec::with_capacity(inputs.len()),
            unguarded: false,
            index: Run::default(),
            namespaces: Run::default(),
        };
        b.pipe.ignore_errors();
        for (i, input) in inputs.into_iter().enumerate() {
            let planned = match input.event {
                None => Planned::none(b.commands),
                Some(Event::DeviceUpsert(device)) => {
                    let id = fingerprints.get(i).copied().flatten();
                    self.upsert_device(&mut b, device, id, input.epoch, versions, now)
                }
                Some(Event::DeviceDelete { device_id }) => {
                    self.flush_index(&mut b);
                    versions.forget(device_id);
                    let first = b.commands;
                    b.push(cmd2("DEL", DeviceKey(&self.keys, device_id)));
                    b.push(cmd3("ZREM", self.keys.index_key(device_id), device_id));
                    b.own(first, Expect::Write)
                }
                Some(Event::Metric(op)) => self.metric(&mut b, op),
            };
            b.planned.push(planned);
        }
        self.flush_index(&mut b);
        self.flush_namespaces(&mut b);
        BatchPlan {
            pipe: b.pipe,
            planned: b.planned,
            unguarded: b.unguarded,
        }
    }

    fn upsert_device<'a>(
        &self,
        b: &mut Builder<'a>,
        device: &'a DeviceUpsert,
        id: Option<Fingerprint>,
        epoch: Option<u64>,
        versions: &mut KnownVersions,
        now: Instant,
    ) -> Planned {
        let first = b.commands;
        let key = DeviceKey(&self.keys, device.device_id());
        if self.plain_devices {
            b.push(self.set_device(key, device));
            return b.own(first, Expect::Write);
        }
        let at = device.last_updated_ms();
        let decision = match id {
            Some(id) => versions.decide_fingerprint(id, at, epoch, now),
            None => versions.decide(device.device_id(), at, epoch, now),
        };
        let expect = match decision {
            Decision::Stale => return b.own(first, Expect::Stale),
            Decision::Set => {
                b.unguarded = true;
                b.push(self.set_device(key, device));
                Expect::Write
            }
            Decision::Guard { seq } => {
                let json = device.normalized_json();
                let mut cmd = Cmd::with_capacity(7, 96 + json.len() + 2 * device.device_id().len());
                cmd.arg("EVALSHA")
                    .arg(scripts::UPSERT_DEVICE.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(json)
                    .arg(Shown(device.last_updated_utc()))
                    .arg(self.ttls.device_secs);
                b.push(cmd);
                Expect::Guarded { seq }
            }
        };
        let planned = b.own(first, expect);
        // `ZADD GT` keeps the newest score by itself, so the pairs may go in one command
        // after the run, in any order.
        b.index
            .pairs
            .push((device.last_updated_ms(), device.device_id()));
        b.index.events.push(b.planned.len());
        planned
    }

    fn set_device(&self, key: DeviceKey<'_>, device: &DeviceUpsert) -> Cmd {
        let json = device.normalized_json();
        let mut cmd = Cmd::with_capacity(5, 32 + json.len() + device.device_id().len());
        cmd.arg("SET").arg(key).arg(json);
        if self.ttls.device_secs > 0 {
            cmd.arg("EX").arg(self.ttls.device_secs);
        }
        cmd
    }

    fn flush_index(&self, b: &mut Builder<'_>) {
        if b.index.pairs.is_empty() {
            return;
        }
        if self.keys.index_shards() == 1 {
            let key = &self.keys.index_keys()[0];
            let mut cmd = Cmd::with_capacity(3 + 2 * b.index.pairs.len(), 32 * b.index.pairs.len());
            cmd.arg("ZADD").arg(key).arg("GT");
            for (score, id) in b.index.pairs.drain(..) {
                cmd.arg(score).arg(id);
            }
            let at = b.push(cmd);
            for e in b.index.events.drain(..) {
                b.planned[e].shared = Some(at);
            }
            return;
        }
        // A sharded index: one `ZADD GT` per shard the run touched, in the order the run
        // first touched them (each command still touches one key, so the pipeline splits
        // by node on a cluster).
        let mut groups: Vec<(&str, Cmd, Vec<usize>)> = Vec::new();
        let mut group_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for ((score, id), e) in b.index.pairs.drain(..).zip(b.index.events.drain(..)) {
            let key = self.keys.index_key(id);
            let g = *group_of.entry(key).or_insert_with(|| {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(key).arg("GT");
                groups.push((key, cmd, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.arg(score).arg(id);
            groups[g].2.push(e);
        }
        for (_, cmd, events) in groups {
            let at = b.push(cmd);
            for e in events {
                b.planned[e].shared = Some(at);
            }
        }
    }

    fn flush_namespaces(&self, b: &mut Builder<'_>) {
        if b.namespaces.pairs.is_empty() {
            return;
        }
        let mut cmd = Cmd::with_capacity(2 + b.namespaces.pairs.len(), 64);
        cmd.arg("SADD").arg(self.keys.metric_namespaces());
        let mut names: Vec<&str> = b.namespaces.pairs.drain(..).map(|(_, ns)| ns).collect();
        names.sort_unstable();
        names.dedup();
        cmd.arg(names);
        let at = b.push(cmd);
        for e in b.namespaces.events.drain(..) {
            b.planned[e].shared = Some(at);
        }
    }

    fn metric<'a>(&self, b: &mut Builder<'a>, op: &'a MetricOp) -> Planned {
        let namespace = op.namespace();
        let set = self.keys.metric_names(namespace);
        let ttl = self.ttls.metric_secs;
        let first = b.commands;
        let mut in_index = false;
        match op {
            MetricOp::Replace { metric_names, .. } => {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(scripts::REPLACE_SET.get_hash())
                    .arg(1)
                    .arg(set)
                    .arg(ttl)
                    .arg(metric_names);
                b.push(cmd);
                in_index = true;
            }
            MetricOp::Add { metric_names, .. } => {
                if !metric_names.is_empty() {
                    let mut cmd = redis::cmd("SADD");
                    cmd.arg(&set).arg(metric_names);
                    b.push(cmd);
                    if ttl > 0 {
                        b.push(cmd3("EXPIRE", &set, ttl));
                    }
                }
                in_index = true;
            }
            MetricOp::Remove { metric_names, .. } => {
                if !metric_names.is_empty() {
                    let mut cmd = redis::cmd("SREM");
                    cmd.arg(set).arg(metric_names);
                    b.push(cmd);
                }
            }
            MetricOp::Delete { .. } => {
                self.flush_namespaces(b);
                let first = b.commands;
                b.push(cmd2("DEL", set));
                b.push(cmd3("SREM", self.keys.metric_namespaces(), namespace));
                return b.own(first, Expect::Write);
            }
        }
        if in_index {
            b.namespaces.pairs.push((0, namespace));
            b.namespaces.events.push(b.planned.len());
        }
        b.own(first, Expect::Write)
    }
}

/// A batch being planned.
struct Builder<'a> {
    pipe: Pipeline,
    commands: usize,
    planned: Vec<Planned>,
    unguarded: bool,
    /// `devices` index pairs waiting for the run's `ZADD`.
    index: Run<'a>,
    /// Namespaces waiting for the run's `SADD metric_namespaces` (scores unused).
    namespaces: Run<'a>,
}

impl Builder<'_> {
    /// Appends a command; returns its position in the pipeline.
    fn push(&mut self, cmd: Cmd) -> usize {
        self.pipe.add_command(cmd);
        self.commands += 1;
        self.commands - 1
    }

    /// The event's own commands are those pushed since `first`.
    fn own(&self, first: usize, expect: Expect) -> Planned {
        Planned {
            first,
            commands: self.commands - first,
            shared: None,
            expect,
        }
    }
}

/// Members waiting for one batched index command, and the events that depend on it.
#[derive(Default)]
struct Run<'a> {
    pairs: Vec<(i64, &'a str)>,
    events: Vec<usize>,
}

fn cmd2(name: &str, a: impl ToRedisArgs) -> Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(a);
    cmd
}

fn cmd3(name: &str, a: impl ToRedisArgs, b: impl ToRedisArgs) -> Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(a).arg(b);
    cmd
}

/// `device:{id}` under the prefix, written straight into the command buffer.
#[derive(Clone, Copy)]
struct DeviceKey<'a>(&'a KeyLayout, &'a str);

impl ToRedisArgs for DeviceKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        // Writing into the command's own buffer cannot fail.
        let _ = self
            .0
            .write_device_key(self.1, &mut out.writer_for_next_arg());
    }
}

/// Any `Display` value as one argument, formatted in place.
struct Shown<T>(T);

impl<T: std::fmt::Display> ToRedisArgs for Shown<T> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceMetadata;
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

    fn planner(prefix: &str, device_ttl: u64) -> Planner {
        Planner::new(
            KeyLayout::new(prefix),
            Ttls {
                device_secs: device_ttl,
                metric_secs: 0,
            },
        )
    }

    fn device(id: &str, ms: i64) -> DeviceUpsert {
        DeviceMetadata {
            device_id: id.into(),
            datatype_id: "dt-7".into(),
            datatype_name: "temperature".into(),
            datatype_unit: Some("C".into()),
            persist: true,
            last_updated_ms: ms,
            additional_properties: Map::new(),
        }
        .into()
    }

    const MS: i64 = 1_795_348_800_000;

    /// Plans `events`, all decidable locally under epoch 1 unless `epoch` says otherwise.
    fn plan(
        planner: &Planner,
        versions: &mut KnownVersions,
        events: &[Event],
        epoch: Option<u64>,
    ) -> (Vec<String>, Vec<Planned>, bool) {
        let plan = planner.plan_batch(
            events.iter().map(|e| PlanInput {
                event: Some(e),
                epoch,
            }),
            versions,
            Instant::now(),
        );
        (render(&plan.pipe), plan.planned, plan.unguarded)
    }

    fn guarded(d: &DeviceUpsert, prefix: &str, ttl: u64) -> String {
        format!(
            "EVALSHA {} 1 {prefix}device:{} {} {} {ttl}",
            scripts::UPSERT_DEVICE.get_hash(),
            d.device_id(),
            d.normalized_json(),
            d.last_updated_utc()
        )
    }

    #[test]
    fn unknown_devices_are_guarded_and_their_index_updates_go_in_one_zadd() {
        let p = planner("p:", 60);
        let mut versions = KnownVersions::new(1000, 60);
        let (a, b) = (device("a", MS), device("b", MS + 5));
        let events = [
            Event::DeviceUpsert(a.clone()),
            Event::DeviceUpsert(b.clone()),
        ];
        let (cmds, planned, unguarded) = plan(&p, &mut versions, &events, Some(1));
        assert_eq!(
            cmds,
            vec![
                guarded(&a, "p:", 60),
                guarded(&b, "p:", 60),
                format!("ZADD p:devices GT {MS} a {} b", MS + 5),
            ]
        );
        assert!(!unguarded);
        assert_eq!(planned[0].first, 0);
        assert_eq!(planned[1].first, 1);
        for e in &planned {
            assert_eq!(e.commands, 1);
            assert_eq!(e.shared, Some(2));
            assert!(matches!(e.expect, Expect::Guarded { .. }));
        }
    }

    #[test]
    fn a_sharded_index_gets_one_zadd_per_shard_and_tombstones_remove_from_their_shard() {
        let p = Planner::new(KeyLayout::with_index_shards("", 16), Ttls::default());
        let mut versions = KnownVersions::new(1000, 0);
        // dev-42 and dev-43 hash to shards 9 and 8 (the README's vectors), sensor/7 to 3.
        let (a, b, c) = (
            device("dev-42", MS),
            device("dev-43", MS + 1),
            device("sensor/7", MS + 2),
        );
        let events = [
            Event::DeviceUpsert(a.clone()),
            Event::DeviceUpsert(b.clone()),
            Event::DeviceUpsert(device("dev-42", MS + 3)),
            Event::DeviceDelete {
                device_id: "sensor/7".into(),
            },
            Event::DeviceUpsert(c.clone()),
        ];
        let (cmds, planned, _) = plan(&p, &mut versions, &events, None);
        let index: Vec<&String> = cmds.iter().filter(|c| !c.starts_with("EVALSHA")).collect();
        assert_eq!(
            index,
            [
                &format!("ZADD devices:{{9}} GT {MS} dev-42 {} dev-42", MS + 3),
                &format!("ZADD devices:{{8}} GT {} dev-43", MS + 1),
                &"DEL device:sensor/7".to_owned(),
                &"ZREM devices:{3} sensor/7".to_owned(),
                &format!("ZADD devices:{{3}} GT {} sensor/7", MS + 2),
            ]
        );
        // Each upsert depends on its own shard's ZADD.
        let at = |needle: &str| cmds.iter().position(|c| c.starts_with(needle));
        assert_eq!(planned[0].shared, at("ZADD devices:{9}"));
        assert_eq!(planned[1].shared, at("ZADD devices:{8}"));
        assert_eq!(planned[2].shared, at("ZADD devices:{9}"));
        assert_eq!(planned[4].shared, at("ZADD devices:{3}"));
    }

    #[test]
    fn a_device_known_from_the_guards_answer_is_a_plain_set_or_skipped_as_stale() {
        let p = planner("", 0);
        let mut versions = KnownVersions::new(1000, 0);
        let first = device("a", MS);
        let (_, planned, _) = plan(&p, &mut versions, &[Event::DeviceUpsert(first)], Some(1));
        let Expect::Guarded { seq } = planned[0].expect else {
            panic!("{planned:?}")
        };
        versions.guard_answered("a", seq, MS, Some(1), true, Instant::now());

        let newer = device("a", MS + 1);
        let older = device("a", MS - 1);
        let events = [
            Event::DeviceUpsert(older.clone()),
            Event::DeviceUpsert(newer.clone()),
        ];
        let (cmds, planned, unguarded) = plan(&p, &mut versions, &events, Some(1));
        assert_eq!(
            cmds,
            vec![
                format!("SET device:a {}", newer.normalized_json()),
                format!("ZADD devices GT {} a", MS + 1),
            ]
        );
        assert!(unguarded);
        assert_eq!(planned[0].expect, Expect::Stale);
        assert_eq!((planned[0].commands, planned[0].shared), (0, None));
        assert_eq!(planned[1].expect, Expect::Write);
        assert_eq!(
            (planned[1].first, planned[1].commands, planned[1].shared),
            (0, 1, Some(1))
        );

        // Under another assignment the same device is guarded again.
        let (cmds, _, unguarded) = plan(&p, &mut versions, &[Event::DeviceUpsert(older)], Some(2));
        assert!(cmds[0].starts_with("EVALSHA"), "{cmds:?}");
        assert!(!unguarded);
    }

    #[test]
    fn a_plain_set_keeps_the_ttl() {
        let p = planner("", 30);
        let mut versions = KnownVersions::new(1000, 30);
        let (_, planned, _) = plan(
            &p,
            &mut versions,
            &[Event::DeviceUpsert(device("a", MS))],
            Some(1),
        );
        let Expect::Guarded { seq } = planned[0].expect else {
            panic!()
        };
        versions.guard_answered("a", seq, MS, Some(1), true, Instant::now());
        let d = device("a", MS + 1);
        let (cmds, _, _) = plan(
            &p,
            &mut versions,
            &[Event::DeviceUpsert(d.clone())],
            Some(1),
        );
        assert_eq!(
            cmds[0],
            format!("SET device:a {} EX 30", d.normalized_json())
        );
    }

    #[test]
    fn a_tombstone_ends_the_index_run_so_its_zrem_follows_the_zadd() {
        let p = planner("", 0);
        let mut versions = KnownVersions::new(1000, 0);
        let (a1, a2) = (device("a", MS), device("a", MS + 1));
        let events = [
            Event::DeviceUpsert(a1.clone()),
            Event::DeviceDelete {
                device_id: "a".into(),
            },
            Event::DeviceUpsert(a2.clone()),
        ];
        let (cmds, planned, _) = plan(&p, &mut versions, &events, Some(1));
        assert_eq!(
            cmds,
            vec![
                guarded(&a1, "", 0),
                format!("ZADD devices GT {MS} a"),
                "DEL device:a".to_owned(),
                "ZREM devices a".to_owned(),
                guarded(&a2, "", 0),
                format!("ZADD devices GT {} a", MS + 1),
            ]
        );
        assert_eq!(planned[0].shared, Some(1));
        assert_eq!((planned[1].first, planned[1].commands), (2, 2));
        assert_eq!(planned[2].shared, Some(5));
    }

    #[test]
    fn the_benchmarks_plain_mode_is_one_set_without_guard_or_index() {
        let p = planner("p:", 0).with_plain_devices(true);
        let mut versions = KnownVersions::new(1000, 0);
        let d = device("dev-42", MS);
        let (cmds, planned, _) = plan(&p, &mut versions, &[Event::DeviceUpsert(d.clone())], None);
        assert_eq!(planned[0].commands, 1);
        assert_eq!(planned[0].expect, Expect::Write);
        assert_eq!(
            cmds,
            vec![format!("SET p:device:dev-42 {}", d.normalized_json())]
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
            let mut versions = KnownVersions::new(0, 0);
            let (cmds, planned, _) =
                plan(&planner, &mut versions, &[Event::Metric(op.clone())], None);
            assert_eq!(cmds, expected, "{op:?}");
            assert_eq!(planned[0].expect, Expect::Write);
            let reads = planned[0].commands + usize::from(planned[0].shared.is_some());
            assert_eq!(reads, expected.len(), "{op:?}");
        }
    }

    #[test]
    fn namespaces_are_indexed_once_per_run_and_before_a_tombstone() {
        let planner = metric_planner(0);
        let mut versions = KnownVersions::new(0, 0);
        let add = |ns: &str, m: &str| {
            Event::Metric(MetricOp::Add {
                namespace: ns.into(),
                metric_names: names(&[m]),
            })
        };
        let events = [
            add("b", "x"),
            add("a", "y"),
            add("b", "z"),
            Event::Metric(MetricOp::Delete {
                namespace: "a".into(),
            }),
            add("a", "w"),
        ];
        let (cmds, planned, _) = plan(&planner, &mut versions, &events, None);
        assert_eq!(
            cmds,
            vec![
                "SADD b#metric_names x",
                "SADD a#metric_names y",
                "SADD b#metric_names z",
                "SADD metric_namespaces a b",
                "DEL a#metric_names",
                "SREM metric_namespaces a",
                "SADD a#metric_names w",
                "SADD metric_namespaces a",
            ]
        );
        assert_eq!(planned[0].shared, Some(3));
        assert_eq!(planned[2].shared, Some(3));
        assert_eq!(planned[3].shared, None);
        assert_eq!(planned[4].shared, Some(7));
    }

    #[test]
    fn metric_ttl_is_refreshed_on_add() {
        let planner = metric_planner(300);
        let mut versions = KnownVersions::new(0, 0);
        let op = MetricOp::Add {
            namespace: "ns".into(),
            metric_names: names(&["a", "b"]),
        };
        let (cmds, _, _) = plan(&planner, &mut versions, &[Event::Metric(op)], None);
        assert_eq!(
            cmds,
            vec![
                "SADD ns#metric_names a b",
                "EXPIRE ns#metric_names 300",
                "SADD metric_namespaces ns"
            ]
        );
    }
}
