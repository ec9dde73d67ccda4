//! Offset watermarks, pure bookkeeping.
//!
//! Records finish out of order (a dead letter may be acknowledged before or after the Redis
//! batch around it), but Kafka only stores one offset per partition: "everything before
//! this is done". So per partition we keep the dispatched offsets in order and commit only
//! the first one not yet done. Marking records done one by one and committing the latest
//! would skip a record that failed — the mistake this module exists to avoid.

use std::collections::{HashMap, VecDeque};

use crate::model::TopicKind;

/// A topic (by kind) and partition.
pub type PartitionId = (TopicKind, i32);

/// Progress of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Dispatched offsets not yet covered by the watermark, ascending, with a done flag.
    pending: VecDeque<(i64, bool)>,
    /// The offset after the last one dispatched.
    next: Option<i64>,
    /// The last watermark handed to Kafka for commit.
    committed: Option<i64>,
}

impl PartitionProgress {
    /// Records that a record was handed to the pipeline. Offsets arrive ascending (Kafka
    /// order); gaps (compaction, transaction markers) are fine.
    pub fn dispatched(&mut self, offset: i64) {
        debug_assert!(self.next.is_none_or(|n| offset >= n));
        self.pending.push_back((offset, false));
        self.next = Some(offset + 1);
    }

    /// Takes back the latest dispatch (the record could not be handed over after all).
    pub fn undispatched(&mut self, offset: i64) {
        if self.pending.back() == Some(&(offset, false)) {
            self.pending.pop_back();
            // The offset is where this partition resumes: committing it is right even if
            // the records before it were gaps.
            self.next = Some(offset);
        }
    }

    /// Marks one record done; returns false if it is not pending here (already done, or
    /// from before a rebalance).
    pub fn done(&mut self, offset: i64) -> bool {
        // Records mostly finish in the order they were dispatched: the oldest one first.
        if self.pending.front() == Some(&(offset, false)) {
            self.pending.pop_front();
            while self.pending.front().is_some_and(|(_, done)| *done) {
                self.pending.pop_front();
            }
            return true;
        }
        let Ok(i) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        if self.pending[i].1 {
            return false;
        }
        self.pending[i].1 = true;
        while self.pending.front().is_some_and(|(_, done)| *done) {
            self.pending.pop_front();
        }
        true
    }

    /// The offset to commit: the first record not yet done, or the one after the last
    /// dispatched when all are done. `None` before anything was dispatched.
    pub fn watermark(&self) -> Option<i64> {
        match self.pending.front() {
            Some((offset, _)) => Some(*offset),
            None => self.next,
        }
    }

    /// Dispatched records not yet done.
    pub fn in_flight(&self) -> usize {
        self.pending.iter().filter(|(_, done)| !done).count()
    }

    /// The watermark, if it moved past what was last committed.
    pub fn to_commit(&self) -> Option<i64> {
        let w = self.watermark()?;
        match self.committed {
            Some(c) if c >= w => None,
            _ => Some(w),
        }
    }

    pub fn mark_committed(&mut self, offset: i64) {
        self.committed = Some(offset);
    }

    /// A commit failed: forget what we believed committed so the next round retries.
    pub fn commit_failed(&mut self) {
        self.committed = None;
    }

    pub fn committed(&self) -> Option<i64> {
        self.committed
    }
}

/// Progress of every assigned partition.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<PartitionId, PartitionProgress>,
}

impl Offsets {
    pub fn assign(&mut self, id: PartitionId) {
        self.partitions.entry(id).or_default();
    }

    pub fn revoke(&mut self, id: &PartitionId) -> Option<PartitionProgress> {
        self.partitions.remove(id)
    }

    pub fn get(&self, id: &PartitionId) -> Option<&PartitionProgress> {
        self.partitions.get(id)
    }

    pub fn get_mut(&mut self, id: &PartitionId) -> Option<&mut PartitionProgress> {
        self.partitions.get_mut(id)
    }

    pub fn dispatched(&mut self, id: PartitionId, offset: i64) {
        self.partitions.entry(id).or_default().dispatched(offset);
    }

    /// [`Offsets::dispatched`] for many records, one partition lookup per run of records
    /// from the same partition (a chunk holds long runs).
    pub fn dispatched_all(&mut self, records: impl IntoIterator<Item = (PartitionId, i64)>) {
        let mut run: Option<(PartitionId, &mut PartitionProgress)> = None;
        for (id, offset) in records {
            match &mut run {
                Some((current, progress)) if *current == id => progress.dispatched(offset),
                _ => {
                    let progress = self.partitions.entry(id).or_default();
                    progress.dispatched(offset);
                    run = Some((id, progress));
                }
            }
        }
    }

    /// [`Offsets::done`] for many records, one partition lookup per run of records from
    /// the same partition; records of partitions no longer assigned are ignored.
    pub fn done_all(&mut self, records: impl IntoIterator<Item = (PartitionId, i64)>) {
        let mut run: Option<(PartitionId, Option<&mut PartitionProgress>)> = None;
        for (id, offset) in records {
            match &mut run {
                Some((current, progress)) if *current == id => {
                    if let Some(p) = progress {
                        p.done(offset);
                    }
                }
                _ => {
                    let mut progress = self.partitions.get_mut(&id);
                    if let Some(p) = &mut progress {
                        p.done(offset);
                    }
                    run = Some((id, progress));
                }
            }
        }
    }

    pub fn undispatched(&mut self, id: PartitionId, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&id) {
            p.undispatched(offset);
        }
    }

    /// Marks records done; records of partitions no longer assigned are ignored (the new
    /// owner replays them from the committed offset).
    pub fn done(&mut self, id: PartitionId, offset: i64) -> bool {
        self.partitions.get_mut(&id).is_some_and(|p| p.done(offset))
    }

    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PartitionId, &PartitionProgress)> {
        self.partitions.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&PartitionId, &mut PartitionProgress)> {
        self.partitions.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_stops_at_the_first_record_not_done() {
        let mut p = PartitionProgress::default();
        assert_eq!(p.watermark(), None);
        for o in [10, 11, 12, 15] {
            p.dispatched(o);
        }
        assert_eq!(p.watermark(), Some(10));
        assert!(p.done(11));
        assert!(p.done(15));
        // 10 is still out: nothing past it may be committed.
        assert_eq!(p.watermark(), Some(10));
        assert_eq!(p.in_flight(), 2);
        assert!(p.done(10));
        assert_eq!(p.watermark(), Some(12));
        assert!(p.done(12));
        // All done: commit the offset after the last one dispatched (gap 13-14 skipped).
        assert_eq!(p.watermark(), Some(16));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn an_undone_dispatch_leaves_the_watermark_where_it_resumes() {
        let mut p = PartitionProgress::default();
        p.dispatched(4);
        p.done(4);
        p.dispatched(9);
        p.dispatched(10);
        p.undispatched(10);
        p.undispatched(9);
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.watermark(), Some(9));
        // Only the latest dispatch can be taken back.
        p.dispatched(9);
        p.undispatched(4);
        assert_eq!(p.in_flight(), 1);
    }

    #[test]
    fn duplicate_and_unknown_acks_change_nothing() {
        let mut p = PartitionProgress::default();
        p.dispatched(1);
        p.dispatched(2);
        assert!(p.done(2));
        assert!(!p.done(2));
        assert!(!p.done(7));
        assert_eq!(p.watermark(), Some(1));
    }

    #[test]
    fn commit_only_when_the_watermark_moves_and_again_after_a_failure() {
        let mut p = PartitionProgress::default();
        p.dispatched(0);
        assert_eq!(p.to_commit(), Some(0));
        p.mark_committed(0);
        assert_eq!(p.to_commit(), None);
        p.done(0);
        assert_eq!(p.to_commit(), Some(1));
        p.mark_committed(1);
        assert_eq!(p.to_commit(), None);
        p.commit_failed();
        assert_eq!(p.to_commit(), Some(1));
    }

    #[test]
    fn acks_for_revoked_partitions_are_ignored() {
        let mut offsets = Offsets::default();
        let id = (TopicKind::Device, 3);
        offsets.dispatched(id, 5);
        assert_eq!(offsets.in_flight(), 1);
        offsets.revoke(&id);
        assert!(!offsets.done(id, 5));
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn runs_of_records_across_partitions_keep_each_watermark() {
        let mut offsets = Offsets::default();
        let (a, b, gone) = (
            (TopicKind::Device, 0),
            (TopicKind::Metric, 0),
            (TopicKind::Device, 9),
        );
        offsets.dispatched_all([(a, 1), (a, 2), (b, 7), (a, 3), (b, 8), (b, 9)]);
        assert_eq!(offsets.in_flight(), 6);
        // Out of order within a partition, interleaved across partitions, plus a
        // partition this consumer does not hold and a repeat.
        offsets.done_all([(b, 8), (a, 1), (gone, 4), (a, 3), (a, 3), (b, 7)]);
        assert_eq!(offsets.get(&a).and_then(|p| p.watermark()), Some(2));
        assert_eq!(offsets.get(&b).and_then(|p| p.watermark()), Some(9));
        assert!(offsets.get(&gone).is_none());
        assert_eq!(offsets.in_flight(), 2);
        offsets.done_all([(a, 2), (b, 9)]);
        assert_eq!(offsets.get(&a).and_then(|p| p.watermark()), Some(4));
        assert_eq!(offsets.get(&b).and_then(|p| p.watermark()), Some(10));
    }
}
