//! What travels between the stages: a consumed record with its decoding outcome, and the
//! acknowledgements that flow back so offsets can be committed.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{Event, Reject, TopicKind};

/// Where a record came from: enough to commit its offset and to label dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub topic: TopicKind,
    pub partition: i32,
    pub offset: i64,
}

/// One Kafka record after decoding. The raw key and value stay with it until it is
/// acknowledged, because a record Redis refuses for good is dead-lettered as it came.
#[derive(Debug)]
pub struct Record {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub decoded: Result<Event, Reject>,
    /// The [`AssignmentEpoch`] it was consumed under.
    pub epoch: u64,
}

/// Counts partition assignment changes. The source bumps it on every revoke and assign;
/// the writer trusts what it learnt about a key only within one epoch, because after a
/// rebalance another consumer may have written that key.
#[derive(Debug, Default)]
pub struct AssignmentEpoch(AtomicU64);

impl AssignmentEpoch {
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Records that are done — written and acknowledged by Redis, or acknowledged by the
/// dead-letter topic — and may count towards the committed watermark.
#[derive(Debug, Default)]
pub struct Ack {
    pub done: Vec<Origin>,
}
