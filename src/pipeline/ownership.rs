//! Which partitions this process owns right now, shared by the source (which changes it)
//! and the writer (which obeys it).
//!
//! Every assignment of a partition gets a fresh *generation*; every record carries the
//! generation it was consumed under. A record whose generation is no longer owned was
//! given up: another consumer now owns its partition and replays it from the committed
//! offset, so this process must never send it to Redis again, and its acknowledgement
//! must not count (it would mark a record of the new generation with the same offset as
//! done). One check — "is `(partition, generation)` still owned?" — covers every way a
//! record can outlive its owner: a revoke whose drain timed out, a batch still being
//! retried after the rebalance, an offset reset that rewound the partition.
//!
//! The check costs one read lock per batch and one map lookup per run of records from one
//! partition ([`OwnedView::owns_origin`]): records come in long runs, so a batch of a
//! thousand events makes a handful of lookups.
//!
//! Bytes already handed to a connection cannot be called back. When a revoke gives up
//! records that are still in flight, the source asks the writer for a *fence*
//! ([`Ownership::request_fence`]): the writer drops every pipeline in flight and the
//! connection under them, opens a new one, and confirms; only then does the source
//! commit and let the partitions go. A dropped connection's unsent bytes are never
//! written; bytes Redis had already received may still run, which the writer narrows
//! with `CLIENT KILL` of the old connection on the new one (docs/reliability.md).
//!
//! A member cannot tell by itself that the group moved on without it: frozen past its
//! session timeout, or cut off from the coordinator, it still believes it owns its
//! partitions while their new owner writes. So before the writer writes on a connection it
//! has just opened, it asks for a *proof* ([`Ownership::request_proof`]): the source
//! commits the partitions' watermarks synchronously, and Kafka's coordinator accepts a
//! commit only from a member of the group's current generation. The order is what makes
//! this enough: the new connection is named before the proof, and a new owner fences (closes
//! every named writer connection) only after it joined a later generation, which is after
//! any commit of the earlier one succeeded. So a writer that proved ownership on a
//! connection either writes before the next owner's fence (the next owner writes after)
//! or on a connection that fence closed (the write fails and is never acknowledged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::model::TopicKind;
use crate::pipeline::record::Record;

/// A topic (by kind) and partition.
pub type PartitionId = (TopicKind, i32);

#[derive(Debug, Default)]
pub struct Ownership {
    owned: RwLock<HashMap<PartitionId, u64>>,
    /// The last generation handed out; generations are unique within the process.
    last_generation: AtomicU64,
    /// Bumped on every revoke: the writer re-checks its records when it moved.
    revocations: AtomicU64,
    /// Bumped at every rebalance; see [`Trust`].
    epoch: AtomicU64,
    fence: Fence,
    proof: Proof,
}

#[derive(Debug, Default)]
struct Proof {
    state: Mutex<ProofState>,
    answered: Notify,
}

#[derive(Debug, Default)]
struct ProofState {
    requested: u64,
    answered: u64,
    /// The last answer: `Err` says why ownership could not be shown.
    outcome: Option<Result<(), String>>,
}

#[derive(Debug, Default)]
struct Fence {
    /// (requested, confirmed) tickets.
    tickets: Mutex<(u64, u64)>,
    confirmed: Condvar,
    wanted: Notify,
}

impl Ownership {
    pub fn new() -> Self {
        Self::default()
    }

    /// The partition is (again) ours: a new generation, which records consumed from now
    /// on carry. Earlier generations of it stop being owned.
    pub fn assign(&self, id: PartitionId) -> u64 {
        let generation = self.last_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let previous = self.write().insert(id, generation);
        if previous.is_some() {
            self.revocations.fetch_add(1, Ordering::AcqRel);
        }
        generation
    }

    /// A rebalance is under way (called before a revoke drains, and again when partitions
    /// are assigned): from now on the sink may not decide records on what it learnt
    /// before, because another consumer may write those keys meanwhile.
    pub fn rebalancing(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The epoch records consumed now are stamped with.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// What the sink may rely on right now.
    pub fn trust(&self) -> Trust {
        Trust(self.epoch())
    }

    /// The partitions are no longer ours.
    pub fn revoke(&self, ids: &[PartitionId]) {
        let mut owned = self.write();
        for id in ids {
            owned.remove(id);
        }
        drop(owned);
        self.revocations.fetch_add(1, Ordering::AcqRel);
    }

    /// The generation the partition is owned under, if it is owned.
    pub fn generation(&self, id: PartitionId) -> Option<u64> {
        self.read().get(&id).copied()
    }

    pub fn owns(&self, id: PartitionId, generation: u64) -> bool {
        self.read().get(&id) == Some(&generation)
    }

    /// A view for checking many records under one lock.
    pub fn view(&self) -> OwnedView<'_> {
        OwnedView {
            owned: self.read(),
            last: None,
        }
    }

    /// How many revokes (and rewinds) happened so far.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Asks the writer to drop every connection that may still carry records no longer
    /// owned; returns the ticket to wait for.
    pub fn request_fence(&self) -> u64 {
        let ticket = {
            let mut tickets = self.tickets();
            tickets.0 += 1;
            tickets.0
        };
        self.fence.wanted.notify_one();
        ticket
    }

    /// The latest fence requested (the writer compares it with the last it served).
    pub fn fence_requested(&self) -> u64 {
        self.tickets().0
    }

    /// Resolves once a fence is requested after `served`.
    pub async fn fence_wanted(&self, served: u64) {
        loop {
            let notified = self.fence.wanted.notified();
            if self.fence_requested() > served {
                return;
            }
            notified.await;
        }
    }

    /// The writer served every fence up to `ticket`.
    pub fn confirm_fence(&self, ticket: u64) {
        let mut tickets = self.tickets();
        tickets.1 = tickets.1.max(ticket);
        drop(tickets);
        self.fence.confirmed.notify_all();
    }

    /// Blocks (the source's thread) until fence `ticket` is confirmed or `timeout` passes.
    pub fn wait_fenced(&self, ticket: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut tickets = self.tickets();
        while tickets.1 < ticket {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tickets = match self.fence.confirmed.wait_timeout(tickets, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// The writer asks the source to show that this member still owns its partitions in
    /// the group's current generation (see the module doc); returns the ticket whose
    /// answer [`proof`](Self::proof) waits for.
    pub fn request_proof(&self) -> u64 {
        let mut state = self.proof_state();
        state.requested += 1;
        state.requested
    }

    /// The source's side: the ticket of a proof asked for and not answered yet.
    pub fn proof_requested(&self) -> Option<u64> {
        let state = self.proof_state();
        (state.requested > state.answered).then_some(state.requested)
    }

    /// The source's answer to every proof asked for up to `ticket`.
    pub fn answer_proof(&self, ticket: u64, outcome: Result<(), String>) {
        let mut state = self.proof_state();
        if ticket > state.answered {
            state.answered = ticket;
            state.outcome = Some(outcome);
        }
        drop(state);
        self.proof.answered.notify_waiters();
    }

    /// Resolves with the answer to proof `ticket` (or to a later one).
    pub async fn proof(&self, ticket: u64) -> Result<(), String> {
        loop {
            let answered = self.proof.answered.notified();
            {
                let state = self.proof_state();
                if state.answered >= ticket {
                    return state.outcome.clone().unwrap_or(Ok(()));
                }
            }
            answered.await;
        }
    }

    fn proof_state(&self) -> std::sync::MutexGuard<'_, ProofState> {
        self.proof.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        // Nothing panics while holding these locks; a poisoned one still holds valid data.
        self.fence.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PartitionId, u64>> {
        self.owned.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PartitionId, u64>> {
        self.owned.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sink's licence to decide a record on what it remembers about its key, valid within
/// one assignment epoch. The sink compares trusts it was handed and never reads a Kafka
/// key or epoch itself: which records a trust covers is decided here, on the source's
/// side of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust(u64);

impl Trust {
    /// The scope under which the sink may decide `record` without asking Redis's stale
    /// guard: this trust's epoch, if the record was consumed under it and has a Kafka key
    /// (so the producer partitioned it by id, and no other consumer writes that device
    /// meanwhile); `None` when only the guard may decide.
    pub fn scope_of(self, record: &Record) -> Option<u64> {
        // An empty key is no key: the default partitioner spreads such records at random.
        let keyed = record.key().is_some_and(|k| !k.is_empty());
        (record.epoch == self.0 && keyed).then_some(self.0)
    }
}

/// The owned partitions, read-locked, with the last answer kept for runs of records.
pub struct OwnedView<'a> {
    owned: std::sync::RwLockReadGuard<'a, HashMap<PartitionId, u64>>,
    last: Option<((PartitionId, u64), bool)>,
}

impl OwnedView<'_> {
    pub fn owns(&self, id: PartitionId, generation: u64) -> bool {
        self.owned.get(&id) == Some(&generation)
    }

    /// [`owns`](Self::owns) for a record, looking the map up only when its partition or
    /// generation differs from the previous record's.
    pub fn owns_origin(&mut self, origin: &crate::pipeline::record::Origin) -> bool {
        let key = (origin.partition_id(), origin.generation);
        match self.last {
            Some((k, owned)) if k == key => owned,
            _ => {
                let owned = self.owns(key.0, key.1);
                self.last = Some((key, owned));
                owned
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reassigned_partition_disowns_its_earlier_generation() {
        let o = Ownership::new();
        let p = (TopicKind::Device, 0);
        let first = o.assign(p);
        assert!(o.owns(p, first));
        let before = o.revocations();
        o.revoke(&[p]);
        assert!(!o.owns(p, first));
        assert!(o.revocations() > before);
        let second = o.assign(p);
        assert_ne!(first, second);
        assert!(o.owns(p, second) && !o.owns(p, first));
        // Assigned again without a revoke (an offset rewind): the old one goes too.
        let revs = o.revocations();
        let third = o.assign(p);
        assert!(o.owns(p, third) && !o.owns(p, second));
        assert!(o.revocations() > revs);
        assert!(!o.owns((TopicKind::Metric, 0), third));
    }

    #[test]
    fn trust_covers_keyed_records_of_its_own_epoch_only() {
        let o = Ownership::new();
        let record = |epoch: u64, key: Option<&[u8]>| {
            let origin = crate::pipeline::record::Origin {
                topic: TopicKind::Device,
                partition: 0,
                offset: 0,
                generation: 1,
            };
            Record::decode(origin, epoch, key, None, &crate::model::Limits::default())
        };
        let trust = o.trust();
        assert_eq!(
            trust.scope_of(&record(o.epoch(), Some(b"d1"))),
            Some(o.epoch())
        );
        assert_eq!(trust.scope_of(&record(o.epoch(), None)), None);
        assert_eq!(trust.scope_of(&record(o.epoch(), Some(b""))), None);
        let before = o.epoch();
        o.rebalancing();
        assert_ne!(o.trust(), trust);
        assert_eq!(o.trust().scope_of(&record(before, Some(b"d1"))), None);
        assert_eq!(trust.scope_of(&record(before, Some(b"d1"))), Some(before));
    }

    #[tokio::test]
    async fn a_proof_is_answered_with_the_sources_outcome() {
        let o = std::sync::Arc::new(Ownership::new());
        assert_eq!(o.proof_requested(), None);
        let ticket = o.request_proof();
        assert_eq!(o.proof_requested(), Some(ticket));
        let source = std::sync::Arc::clone(&o);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let asked = source.proof_requested().unwrap();
            source.answer_proof(asked, Err("Broker: Unknown member".into()));
        });
        assert_eq!(o.proof(ticket).await, Err("Broker: Unknown member".into()));
        t.join().unwrap();
        assert_eq!(o.proof_requested(), None);
        let next = o.request_proof();
        o.answer_proof(next, Ok(()));
        assert_eq!(o.proof(next).await, Ok(()));
    }

    #[test]
    fn a_fence_waits_for_its_confirmation() {
        let o = std::sync::Arc::new(Ownership::new());
        let ticket = o.request_fence();
        assert!(!o.wait_fenced(ticket, Duration::from_millis(10)));
        let writer = std::sync::Arc::clone(&o);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.confirm_fence(ticket);
        });
        assert!(o.wait_fenced(ticket, Duration::from_secs(5)));
        t.join().unwrap();
        assert!(o.wait_fenced(ticket, Duration::ZERO));
    }
}
