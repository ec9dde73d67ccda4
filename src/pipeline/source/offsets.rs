//! Offset watermarks, pure bookkeeping.
//!
//! Records finish out of order (a dead letter may be acknowledged before or after the Redis
//! batch around it), but Kafka only stores one offset per partition: "everything before
//! this is done". So per partition we keep the dispatched offsets in order and commit only
//! the first one not yet done. Marking records done one by one and committing the latest
//! would skip a record that failed — the mistake this module exists to avoid.
//!
//! Each partition is tracked under the ownership generation it was assigned with (see
//! [`crate::pipeline::ownership`]): a record or an acknowledgement of another generation belongs to
//! an assignment that is over and changes nothing here.

use std::collections::{HashMap, VecDeque};

use crate::pipeline::record::Origin;

pub use crate::pipeline::ownership::PartitionId;

/// Progress of one partition within one generation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    generation: u64,
    /// Dispatched offsets not yet covered by the watermark, ascending, with a done flag.
    pending: VecDeque<(i64, bool)>,
    /// The offset after the last one dispatched.
    next: Option<i64>,
    /// The offset after the last one consumed (records are consumed, then dispatched in
    /// chunks): a record below it means the partition was rewound.
    consumed_next: Option<i64>,
    /// The last watermark handed to Kafka for commit.
    committed: Option<i64>,
}

impl PartitionProgress {
    pub fn new(generation: u64) -> Self {
        PartitionProgress {
            generation,
            ..Self::default()
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Nothing was consumed yet in this generation.
    pub fn consumed_nothing(&self) -> bool {
        self.consumed_next.is_none()
    }

    /// The offset expected next from the consumer.
    pub fn consumed_next(&self) -> Option<i64> {
        self.consumed_next
    }

    /// Notes that the record at `offset` was consumed; false when it lies below one
    /// consumed before in this generation (librdkafka rewound the partition, for example
    /// after an offset reset), so the caller must start a new generation.
    pub fn consumed(&mut self, offset: i64) -> bool {
        if self.consumed_next.is_some_and(|n| offset < n) {
            return false;
        }
        self.consumed_next = Some(offset + 1);
        true
    }

    /// Records that a record was handed to the pipeline. Offsets arrive ascending (Kafka
    /// order; [`consumed`](Self::consumed) turns a rewind into a new generation); gaps
    /// (compaction, transaction markers) are fine. One that does not ascend is ignored.
    pub fn dispatched(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|n| offset < n) {
            return false;
        }
        self.pending.push_back((offset, false));
        self.next = Some(offset + 1);
        true
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

    /// librdkafka says `broker` is the offset the group coordinator last acknowledged.
    /// An asynchronous manual commit reports no result (librdkafka only delivers results
    /// of automatic commits and of commits with a callback of their own, which rdkafka
    /// does not expose), so a commit that failed is noticed here: when the acknowledged
    /// offset is not the one believed committed, the belief is dropped and the next round
    /// commits the watermark again. Returns whether it was dropped. A commit still on its
    /// way looks the same and is merely sent once more.
    pub fn reconcile(&mut self, broker: i64) -> bool {
        match self.committed {
            Some(c) if c != broker => {
                self.committed = None;
                true
            }
            _ => false,
        }
    }
}

/// Progress of every assigned partition.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<PartitionId, PartitionProgress>,
}

impl Offsets {
    /// Starts tracking `id` under `generation`, forgetting any earlier generation of it.
    pub fn assign(&mut self, id: PartitionId, generation: u64) {
        self.partitions
            .insert(id, PartitionProgress::new(generation));
    }

    /// Starts a new generation of a partition that stays assigned (it was rewound): what
    /// was pending under the old one will never count, and the next commit is the new
    /// watermark even though it lies below what was committed before (that is where the
    /// partition now really stands).
    pub fn restart(&mut self, id: PartitionId, generation: u64) {
        self.partitions
            .insert(id, PartitionProgress::new(generation));
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

    /// The progress of the partition `origin` came from, if it is of the current
    /// generation.
    fn current(&mut self, origin: &Origin) -> Option<&mut PartitionProgress> {
        self.partitions
            .get_mut(&(origin.topic, origin.partition))
            .filter(|p| p.generation == origin.generation)
    }

    pub fn dispatched(&mut self, origin: &Origin) -> bool {
        self.current(origin)
            .is_some_and(|p| p.dispatched(origin.offset))
    }

    /// [`Offsets::dispatched`] for many records, one partition lookup per run of records
    /// from the same partition and generation (a chunk holds long runs).
    pub fn dispatched_all<'a>(&mut self, records: impl IntoIterator<Item = &'a Origin>) {
        self.each_current(records.into_iter().copied(), |p, offset| {
            p.dispatched(offset);
        });
    }

    /// [`Offsets::done`] for many records, one partition lookup per run of records from
    /// the same partition; records of partitions no longer assigned, or of an earlier
    /// generation, are ignored.
    pub fn done_all(&mut self, records: impl IntoIterator<Item = Origin>) {
        self.each_current(records, |p, offset| {
            p.done(offset);
        });
    }

    fn each_current(
        &mut self,
        records: impl IntoIterator<Item = Origin>,
        mut f: impl FnMut(&mut PartitionProgress, i64),
    ) {
        let mut run: Option<((PartitionId, u64), Option<&mut PartitionProgress>)> = None;
        for origin in records {
            let key = ((origin.topic, origin.partition), origin.generation);
            match &mut run {
                Some((current, progress)) if *current == key => {
                    if let Some(p) = progress {
                        f(p, origin.offset);
                    }
                }
                _ => {
                    let mut progress = self
                        .partitions
                        .get_mut(&key.0)
                        .filter(|p| p.generation == key.1);
                    if let Some(p) = &mut progress {
                        f(p, origin.offset);
                    }
                    run = Some((key, progress));
                }
            }
        }
    }

    pub fn undispatched(&mut self, origin: &Origin) {
        if let Some(p) = self.current(origin) {
            p.undispatched(origin.offset);
        }
    }

    /// Marks a record done; records of partitions no longer assigned, or of an earlier
    /// generation, are ignored (the new owner replays them from the committed offset).
    pub fn done(&mut self, origin: &Origin) -> bool {
        self.current(origin).is_some_and(|p| p.done(origin.offset))
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
    use crate::model::TopicKind;

    #[test]
    fn a_commit_the_broker_never_acknowledged_is_sent_again() {
        let mut p = PartitionProgress::new(1);
        for offset in 0..10 {
            p.dispatched(offset);
            p.done(offset);
        }
        assert_eq!(p.to_commit(), Some(10));
        p.mark_committed(10);
        assert_eq!(p.to_commit(), None, "believed committed");
        // The broker acknowledged it: nothing to do.
        assert!(!p.reconcile(10));
        assert_eq!(p.to_commit(), None);
        // The broker still holds an older offset (the asynchronous commit failed).
        assert!(p.reconcile(4));
        assert_eq!(p.to_commit(), Some(10), "committed again at the next round");
        // Or holds nothing at all yet (librdkafka's invalid offset).
        p.mark_committed(10);
        assert!(p.reconcile(-1001));
        assert_eq!(p.to_commit(), Some(10));
    }

    fn at(id: PartitionId, generation: u64, offset: i64) -> Origin {
        Origin {
            topic: id.0,
            partition: id.1,
            offset,
            generation,
        }
    }

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
        offsets.assign(id, 1);
        offsets.dispatched(&at(id, 1, 5));
        assert_eq!(offsets.in_flight(), 1);
        offsets.revoke(&id);
        assert!(!offsets.done(&at(id, 1, 5)));
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn acks_of_an_earlier_generation_do_not_mark_the_new_one() {
        // Revoked while offset 5 was in flight, assigned back, 5 consumed again: the old
        // owner's ack for 5 says nothing about the new record 5, which is not written yet.
        let mut offsets = Offsets::default();
        let id = (TopicKind::Device, 3);
        offsets.assign(id, 1);
        offsets.dispatched(&at(id, 1, 5));
        offsets.revoke(&id);
        offsets.assign(id, 2);
        offsets.dispatched(&at(id, 2, 5));
        assert!(!offsets.done(&at(id, 1, 5)));
        offsets.done_all([at(id, 1, 5)]);
        assert_eq!(offsets.get(&id).and_then(|p| p.watermark()), Some(5));
        assert!(offsets.done(&at(id, 2, 5)));
        assert_eq!(offsets.get(&id).and_then(|p| p.watermark()), Some(6));
        // A record of the old generation still in a chunk is not tracked either.
        offsets.dispatched_all([&at(id, 1, 6)]);
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn a_rewind_is_seen_and_never_moves_the_watermark_backwards_silently() {
        let mut p = PartitionProgress::new(1);
        assert!(p.consumed(10));
        assert!(p.consumed(11));
        assert!(
            !p.consumed(3),
            "a lower offset in one generation is a rewind"
        );
        // Dispatching out of order within a generation is refused, not half-recorded.
        assert!(p.dispatched(10));
        assert!(p.dispatched(11));
        assert!(!p.dispatched(3));
        assert_eq!(p.watermark(), Some(10));
        // The source restarts the partition under a new generation at the rewound offset;
        // the next commit says where it really stands.
        let mut offsets = Offsets::default();
        let id = (TopicKind::Metric, 0);
        offsets.assign(id, 1);
        offsets.dispatched(&at(id, 1, 10));
        offsets.get_mut(&id).unwrap().mark_committed(10);
        offsets.restart(id, 2);
        assert_eq!(offsets.in_flight(), 0);
        assert!(offsets.dispatched(&at(id, 2, 3)));
        assert_eq!(offsets.get(&id).and_then(|p| p.watermark()), Some(3));
        assert_eq!(offsets.get(&id).and_then(|p| p.to_commit()), Some(3));
    }

    #[test]
    fn runs_of_records_across_partitions_keep_each_watermark() {
        let mut offsets = Offsets::default();
        let (a, b, gone) = (
            (TopicKind::Device, 0),
            (TopicKind::Metric, 0),
            (TopicKind::Device, 9),
        );
        offsets.assign(a, 1);
        offsets.assign(b, 1);
        let dispatched: Vec<Origin> = [(a, 1), (a, 2), (b, 7), (a, 3), (b, 8), (b, 9)]
            .into_iter()
            .map(|(id, o)| at(id, 1, o))
            .collect();
        offsets.dispatched_all(&dispatched);
        assert_eq!(offsets.in_flight(), 6);
        // Out of order within a partition, interleaved across partitions, plus a
        // partition this consumer does not hold and a repeat.
        offsets.done_all(
            [(b, 8), (a, 1), (gone, 4), (a, 3), (a, 3), (b, 7)]
                .into_iter()
                .map(|(id, o)| at(id, 1, o)),
        );
        assert_eq!(offsets.get(&a).and_then(|p| p.watermark()), Some(2));
        assert_eq!(offsets.get(&b).and_then(|p| p.watermark()), Some(9));
        assert!(offsets.get(&gone).is_none());
        assert_eq!(offsets.in_flight(), 2);
        offsets.done_all([at(a, 1, 2), at(b, 1, 9)]);
        assert_eq!(offsets.get(&a).and_then(|p| p.watermark()), Some(4));
        assert_eq!(offsets.get(&b).and_then(|p| p.watermark()), Some(10));
    }
}
