//! `metacache resync`: rewinds the consumer group to the earliest retained offset of both
//! source topics, so the next start replays every event Kafka still holds into Redis.
//!
//! It exists for one situation: Redis lost its data (restarted without persistence,
//! flushed, failed over to an empty replica) while the group's committed offsets say
//! everything was written. Replaying is harmless — the stale guard and set semantics make
//! the stream idempotent — so rewinding is the whole repair. It is the same as
//! `kafka-consumer-groups --reset-offsets --to-earliest --execute` on both topics.
//!
//! Rewinding under a running daemon would be undone by that daemon's next commit, so the
//! group must have no active members, and checking that must not disturb a group that has
//! some: joining it would make the broker take partitions away from the running daemons
//! (a rebalance, and records read twice) only to find out they are there. So:
//!
//! 1. resync asks the broker to describe the group (ListGroups/DescribeGroups). Members
//!    listed: refused at once, naming them. No members: the offsets are committed from
//!    outside the group, which a broker accepts only while the group is empty (Kafka
//!    refuses it with `UNKNOWN_MEMBER_ID` or `ILLEGAL_GENERATION` once anyone joined).
//! 2. A broker that cannot describe groups (librdkafka's mock cluster, for one) gives no
//!    way to look without joining. resync then refuses unless the operator states that
//!    every metacache of the group is stopped (`--assume-idle`); only then does it join
//!    and commit as a member, which such brokers require. The join still checks: if
//!    anyone else is in the group, resync is handed only part of the partitions, and it
//!    refuses, commits nothing and leaves.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::pipeline::source::kafka::consumer_config;

/// How long each broker round trip may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long joining the group may take (a broker delays a first join by
/// `group.initial.rebalance.delay.ms`, 3 s by default).
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One partition's offsets before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub topic: String,
    pub partition: i32,
    /// The committed offset now; `None` when the group never committed one.
    pub committed: Option<i64>,
    /// The earliest offset Kafka still holds: what resync commits.
    pub earliest: i64,
    /// The end of the partition (the next offset to be written).
    pub latest: i64,
}

impl PartitionPlan {
    /// Records the next start reads again (or for the first time).
    pub fn replays(&self) -> i64 {
        self.latest - self.earliest
    }
}

/// What resync is about to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub group: String,
    pub partitions: Vec<PartitionPlan>,
}

impl Plan {
    pub fn replays(&self) -> i64 {
        self.partitions.iter().map(PartitionPlan::replays).sum()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "consumer group {:?}: committed offsets -> earliest retained offsets",
            self.group
        )?;
        for p in &self.partitions {
            let committed = p
                .committed
                .map_or_else(|| "none".to_owned(), |c| c.to_string());
            writeln!(
                f,
                "  {}[{}]  {committed} -> {}  (end {}, {} records to replay)",
                p.topic,
                p.partition,
                p.earliest,
                p.latest,
                p.replays()
            )?;
        }
        write!(
            f,
            "{} records in {} partitions will be read again on the next start",
            self.replays(),
            self.partitions.len()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0:?} not found (or it has no partitions)")]
    NoTopic(String),
    #[error("the group {group:?} has {} active member(s): {}; stop every metacache of this group first (scale it to 0), then run resync again", .members.len(), .members.join(", "))]
    ActiveMembers { group: String, members: Vec<String> },
    #[error("the broker cannot list the members of group {0:?} (it does not answer DescribeGroups), and finding out by joining would take partitions from any metacache still running; nothing was changed. Stop every metacache of this group (scale it to 0), then run resync again with --assume-idle")]
    CannotListMembers(String),
    #[error("the group {group:?} has other active members: joining it, resync was given {got} of {want} partitions; stop every metacache of this group first (scale it to 0), then run resync again. Nothing was changed.")]
    PartialAssignment {
        group: String,
        got: usize,
        want: usize,
    },
    #[error("joining the group {0:?} took longer than {1:?}; nothing was changed")]
    JoinTimeout(String, Duration),
    #[error("not confirmed; nothing was changed")]
    NotConfirmed,
    #[error("after the commit, {0} still shows a different offset; run resync again")]
    NotApplied(String),
}

/// The consumer resync uses: the daemon's own settings (brokers, SASL, SSL, group), so it
/// reaches the cluster exactly as the daemon does.
fn consumer(kafka: &KafkaSettings) -> Result<BaseConsumer, KafkaError> {
    let mut config = consumer_config(kafka);
    // Statistics are for the daemon's /stats; resync needs none.
    config.set("statistics.interval.ms", "0");
    config.create()
}

/// A partition, its earliest retained offset and its end.
pub type Watermarks = (i32, i64, i64);

/// Each partition of `topic` with its earliest retained offset and its end; `None` when
/// the topic does not exist or has no partitions. Shared with `metacache verify`.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<Vec<Watermarks>>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if count == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(count);
    for partition in 0..count as i32 {
        let (earliest, end) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
        out.push((partition, earliest, end));
    }
    Ok(Some(out))
}

/// Reads the partitions, their earliest and latest offsets, and the group's committed
/// offsets. Changes nothing.
pub fn plan(kafka: &KafkaSettings) -> Result<Plan, ResyncError> {
    let consumer = consumer(kafka)?;
    let mut partitions = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for topic in [&kafka.device_topic, &kafka.metric_topic] {
        let watermarks =
            watermarks(&consumer, topic)?.ok_or_else(|| ResyncError::NoTopic(topic.clone()))?;
        for (partition, earliest, latest) in watermarks {
            partitions.push(PartitionPlan {
                topic: topic.clone(),
                partition,
                committed: None,
                earliest,
                latest,
            });
            tpl.add_partition(topic, partition);
        }
    }
    let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
    for p in &mut partitions {
        if let Some(Offset::Offset(o)) = committed
            .find_partition(&p.topic, p.partition)
            .map(|e| e.offset())
        {
            p.committed = Some(o);
        }
    }
    Ok(Plan {
        group: kafka.group_id.clone(),
        partitions,
    })
}

/// Members of the group as the broker lists them; `None` when the broker cannot list
/// groups (librdkafka's mock cluster, for one).
fn listed_members(consumer: &BaseConsumer, group: &str) -> Option<Vec<String>> {
    let list = consumer
        .fetch_group_list(Some(group), REQUEST_TIMEOUT)
        .ok()?;
    let info = list.groups().iter().find(|g| g.name() == group)?;
    Some(
        info.members()
            .iter()
            .map(|m| format!("{} ({}{})", m.id(), m.client_id(), m.client_host()))
            .collect(),
    )
}

/// How resync knows the group is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// The broker described it with no members.
    Listed,
    /// The broker cannot describe groups; the operator said every member is stopped.
    Assumed,
}

/// Checks the group is idle without disturbing it, asks `confirm`, then commits the
/// earliest offsets and verifies them. `assume_idle` is the operator's word that no
/// member runs, for brokers that cannot list members. Progress goes to `out`.
pub fn run(
    kafka: &KafkaSettings,
    assume_idle: bool,
    confirm: impl FnOnce(&Plan) -> bool,
    out: &mut impl Write,
) -> Result<Plan, ResyncError> {
    let plan = plan(kafka)?;
    let _ = writeln!(out, "{plan}");
    let consumer = consumer(kafka)?;
    let idle = match listed_members(&consumer, &kafka.group_id) {
        Some(members) if !members.is_empty() => {
            return Err(ResyncError::ActiveMembers {
                group: kafka.group_id.clone(),
                members,
            })
        }
        Some(_) => Idle::Listed,
        None if assume_idle => Idle::Assumed,
        None => return Err(ResyncError::CannotListMembers(kafka.group_id.clone())),
    };
    if !confirm(&plan) {
        return Err(ResyncError::NotConfirmed);
    }

    match idle {
        Idle::Listed => {
            let _ = writeln!(
                out,
                "the broker lists no members: committing from outside the group ..."
            );
            if let Err(e) = consumer.commit(&earliest(&plan)?, CommitMode::Sync) {
                // Refused: either someone joined since the check (a real broker), or the
                // broker takes commits only from members. Look again before joining.
                match listed_members(&consumer, &kafka.group_id) {
                    Some(members) if members.is_empty() => {
                        tracing::debug!(error = %e, "commit from outside the group refused; joining the empty group");
                        join_and_commit(&consumer, kafka, &plan, out)?;
                    }
                    Some(members) => {
                        return Err(ResyncError::ActiveMembers {
                            group: kafka.group_id.clone(),
                            members,
                        })
                    }
                    None => return Err(e.into()),
                }
            }
        }
        Idle::Assumed => join_and_commit(&consumer, kafka, &plan, out)?,
    }

    let check = self::plan(kafka)?;
    for (before, after) in plan.partitions.iter().zip(&check.partitions) {
        if after.committed != Some(before.earliest) {
            return Err(ResyncError::NotApplied(format!(
                "{}[{}]",
                before.topic, before.partition
            )));
        }
    }
    let _ = writeln!(
        out,
        "done: group {:?} now starts at the earliest offsets; start metacache to replay {} records",
        plan.group,
        plan.replays()
    );
    Ok(plan)
}

/// Joins the group, commits as a member and leaves: for brokers that take commits only
/// from members.
fn join_and_commit(
    consumer: &BaseConsumer,
    kafka: &KafkaSettings,
    plan: &Plan,
    out: &mut impl Write,
) -> Result<(), ResyncError> {
    let _ = writeln!(
        out,
        "joining the group to commit as its member (and to check nobody else is in it) ..."
    );
    consumer.subscribe(&[&kafka.device_topic, &kafka.metric_topic])?;
    let result = commit_as_member(consumer, kafka, plan);
    consumer.unsubscribe();
    // Poll once more so the leave is sent before the consumer closes.
    let _ = consumer.poll(Duration::from_millis(100));
    result
}

/// The plan's earliest offsets, as a commit.
fn earliest(plan: &Plan) -> Result<TopicPartitionList, ResyncError> {
    let mut tpl = TopicPartitionList::new();
    for p in &plan.partitions {
        tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.earliest))?;
    }
    Ok(tpl)
}

fn commit_as_member(
    consumer: &BaseConsumer,
    kafka: &KafkaSettings,
    plan: &Plan,
) -> Result<(), ResyncError> {
    let want = plan.partitions.len();
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let assigned = loop {
        // Messages fetched meanwhile are dropped: nothing is stored or committed for them.
        let _ = consumer.poll(Duration::from_millis(100));
        let assigned = consumer.assignment()?.count();
        if assigned > 0 {
            break assigned;
        }
        if Instant::now() >= deadline {
            return Err(ResyncError::JoinTimeout(
                kafka.group_id.clone(),
                JOIN_TIMEOUT,
            ));
        }
    };
    if assigned != want {
        return Err(ResyncError::PartialAssignment {
            group: kafka.group_id.clone(),
            got: assigned,
            want,
        });
    }
    consumer.commit(&earliest(plan)?, CommitMode::Sync)?;
    Ok(())
}
