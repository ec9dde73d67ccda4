//! What this writer knows of the `last_updated` Redis holds for the devices it wrote, so
//! most upserts skip the server-side stale guard.
//!
//! The guard script costs Redis several times a plain `SET` (it was 7.8 µs of Redis CPU
//! against 0.4 µs, and Redis's single core is the first limit the daemon meets). But Kafka
//! partitions by key and a consumer group gives each partition to one consumer, so while a
//! partition stays assigned here this writer is the only one writing its devices, in the
//! order it plans them. Once it has seen Redis's answer for a device (the guard wrote it)
//! or has planned a write itself, it knows what the key holds after everything planned so
//! far is applied, and it can decide locally: older → skipped as stale, not older → plain
//! `SET`. It never decides locally for what it cannot vouch for:
//!
//! - a record planned under another assignment epoch (a rebalance happened since the entry
//!   was learnt, or since the record was consumed): another consumer may have written the
//!   key meanwhile;
//! - a record without a Kafka key (the producer did not partition by device id);
//! - an entry whose key may have expired (`devices.ttl_secs`): the guard would write an
//!   older event to an absent key, so the entry is trusted only for the TTL;
//! - a device with a guard still in flight: its outcome is not known yet;
//! - a device that was deleted (tombstone) or refused by Redis: forgotten.
//!
//! Memory is bounded by two generations: when the current one holds half the capacity it
//! becomes the previous one and the old previous is dropped, so devices seen recently stay
//! and the rest are forgotten (and go through the guard again). Devices are held by a
//! 128-bit keyed fingerprint of their id (two independently keyed SipHashes), not by the
//! id itself: an entry is 32 bytes with no allocation of its own, and two ids sharing a
//! fingerprint is a 2^-128 event per pair. Pure bookkeeping, no I/O.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// What the planner should send for one device upsert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Older than what the key holds: skip it, count it stale, send nothing.
    Stale,
    /// Not older than what the key holds: a plain `SET`.
    Set,
    /// Unknown: the guard script decides; `seq` identifies this guard's answer.
    Guard { seq: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After everything planned so far is applied, the key holds `last_updated_ms`.
    Known {
        last_updated_ms: i64,
        /// The assignment epoch it was learnt under (its low 32 bits).
        epoch: u32,
        /// When the write that set it was planned, in seconds since `started` (bounds
        /// trust when keys expire).
        at_secs: u32,
    },
    /// The latest write planned for the key is the guard numbered `seq`.
    Guarding { seq: u64 },
}

/// [`State`] packed into 16 bytes (the enum takes 24): a decoded `last_updated` is never
/// negative, so a negative one marks a guard in flight. With the fingerprint a map bucket
/// is 32 bytes, not 48.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    last_updated_ms: i64,
    word: u64,
}

const GUARDING: i64 = -1;

impl From<State> for Slot {
    fn from(state: State) -> Slot {
        match state {
            State::Known {
                last_updated_ms,
                epoch,
                at_secs,
            } => Slot {
                last_updated_ms,
                word: u64::from(epoch) << 32 | u64::from(at_secs),
            },
            State::Guarding { seq } => Slot {
                last_updated_ms: GUARDING,
                word: seq,
            },
        }
    }
}

impl Slot {
    fn state(self) -> State {
        if self.last_updated_ms < 0 {
            State::Guarding { seq: self.word }
        } else {
            State::Known {
                last_updated_ms: self.last_updated_ms,
                epoch: (self.word >> 32) as u32,
                at_secs: self.word as u32,
            }
        }
    }
}

/// A device id's 128-bit fingerprint: already keyed hashes, so the maps use half of it as
/// their hash. Only meaningful to the [`KnownVersions`] that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64, u64);

impl std::hash::Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.1);
    }
}

type Map = HashMap<Fingerprint, Slot, BuildHasherDefault<PassThrough>>;

/// The per-device knowledge, bounded to about `capacity` entries.
#[derive(Debug)]
pub struct KnownVersions {
    capacity: usize,
    current: Map,
    previous: Map,
    next_seq: u64,
    /// How long a write may be relied on (the key's TTL, less a margin); `None` = forever.
    trust_for: Option<Duration>,
    started: Instant,
    keys: (RandomState, RandomState),
}

impl KnownVersions {
    /// `capacity` 0 turns local decisions off: every upsert goes through the guard.
    /// `ttl_secs` is `devices.ttl_secs` (0 = keys never expire).
    pub fn new(capacity: usize, ttl_secs: u64) -> Self {
        let trust_for = (ttl_secs > 0).then(|| {
            // A margin for clock granularity between planning here and expiry there.
            Duration::from_secs(ttl_secs).saturating_sub(Duration::from_secs(1))
        });
        KnownVersions {
            capacity,
            current: Map::default(),
            previous: Map::default(),
            next_seq: 0,
            trust_for,
            started: Instant::now(),
            keys: (RandomState::new(), RandomState::new()),
        }
    }

    pub fn fingerprint(&self, device_id: &str) -> Fingerprint {
        Fingerprint(
            self.keys.0.hash_one(device_id),
            self.keys.1.hash_one(device_id),
        )
    }

    fn secs(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.started)
            .as_secs()
            .min(u32::MAX as u64) as u32
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Entries held, both generations.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks up a batch's devices ahead of deciding them, so that their entries are in the
    /// CPU cache when [`KnownVersions::decide_fingerprint`] runs. With 100k devices the
    /// maps are megabytes: each lookup is two cache misses, and one after the other in a
    /// loop that does nothing else the CPU overlaps them (in the planner each waited on
    /// its own, between two JSON documents: 9% of the daemon's CPU).
    pub fn warm(&self, ids: impl IntoIterator<Item = Fingerprint>) {
        if !self.enabled() {
            return;
        }
        let mut held = 0usize;
        for id in ids {
            held += usize::from(self.current.contains_key(&id));
        }
        std::hint::black_box(held);
    }

    /// Decides how to write `device_id` at `last_updated_ms` and records the decision.
    ///
    /// `epoch` is `Some` only when the record may be decided locally: it carries a Kafka
    /// key and was consumed under the assignment that is still current.
    pub fn decide(
        &mut self,
        device_id: &str,
        last_updated_ms: i64,
        epoch: Option<u64>,
        now: Instant,
    ) -> Decision {
        if !self.enabled() {
            return Decision::Guard { seq: 0 };
        }
        let id = self.fingerprint(device_id);
        self.decide_fingerprint(id, last_updated_ms, epoch, now)
    }

    /// [`KnownVersions::decide`] for a device already fingerprinted here.
    pub fn decide_fingerprint(
        &mut self,
        id: Fingerprint,
        last_updated_ms: i64,
        epoch: Option<u64>,
        now: Instant,
    ) -> Decision {
        if !self.enabled() {
            return Decision::Guard { seq: 0 };
        }
        let update = Update {
            last_updated_ms,
            epoch,
            now_secs: self.secs(now),
            trust_for: self.trust_for,
        };
        // One probe when the device is in the current generation, as most are.
        if let Some(slot) = self.current.get_mut(&id) {
            let mut state = slot.state();
            let decision = update.apply(&mut state, &mut self.next_seq);
            *slot = state.into();
            return decision;
        }
        let mut state = self
            .previous
            .remove(&id)
            .map_or(State::Guarding { seq: 0 }, Slot::state);
        let decision = update.apply(&mut state, &mut self.next_seq);
        self.rotate_if_full();
        self.current.insert(id, state.into());
        decision
    }

    /// Redis answered guard `seq`: `written` if it stored the update. Only the latest
    /// guard planned for the device teaches anything; after it, the key holds this update
    /// if it was written, and something newer and unknown if it was not.
    pub fn guard_answered(
        &mut self,
        device_id: &str,
        seq: u64,
        last_updated_ms: i64,
        epoch: Option<u64>,
        written: bool,
        now: Instant,
    ) {
        if !self.enabled() {
            return;
        }
        let id = self.fingerprint(device_id);
        let at_secs = self.secs(now);
        let Some(slot) = self.current.get_mut(&id) else {
            return;
        };
        if slot.state() != (State::Guarding { seq }) {
            return;
        }
        match (written, epoch) {
            (true, Some(epoch)) => {
                *slot = State::Known {
                    last_updated_ms,
                    epoch: epoch as u32,
                    at_secs,
                }
                .into()
            }
            _ => {
                self.current.remove(&id);
            }
        }
    }

    /// The device was deleted, or Redis refused a write to it: nothing is known any more.
    pub fn forget(&mut self, device_id: &str) {
        if !self.enabled() {
            return;
        }
        let id = self.fingerprint(device_id);
        self.current.remove(&id);
        self.previous.remove(&id);
    }

    /// Redis may have lost what it held (it restarted, was flushed, failed over, or a
    /// write failed in a way that leaves its outcome unknown): nothing known about it
    /// holds any more. Guards still waiting for their answer stay: they run (or run again)
    /// on the Redis that is there now, so what they answer is true of it.
    pub fn forget_known(&mut self) {
        let guarding = |_: &Fingerprint, slot: &mut Slot| slot.last_updated_ms == GUARDING;
        self.current.retain(guarding);
        self.previous.retain(guarding);
    }

    fn rotate_if_full(&mut self) {
        if self.current.len() >= self.capacity.div_ceil(2) {
            self.previous = std::mem::take(&mut self.current);
        }
    }
}

/// One upsert being decided.
struct Update {
    last_updated_ms: i64,
    epoch: Option<u64>,
    now_secs: u32,
    trust_for: Option<Duration>,
}

impl Update {
    /// Decides against what `state` says the key holds, and records the decision there.
    fn apply(&self, state: &mut State, next_seq: &mut u64) -> Decision {
        let held = match (*state, self.epoch) {
            (
                State::Known {
                    last_updated_ms,
                    epoch: learnt,
                    at_secs,
                },
                Some(epoch),
            ) if learnt == epoch as u32 && self.fresh(at_secs) => Some((last_updated_ms, epoch)),
            _ => None,
        };
        match held {
            Some((held, _)) if self.last_updated_ms < held => Decision::Stale,
            Some((_, epoch)) => {
                *state = State::Known {
                    last_updated_ms: self.last_updated_ms,
                    epoch: epoch as u32,
                    at_secs: self.now_secs,
                };
                Decision::Set
            }
            None => {
                *next_seq += 1;
                *state = State::Guarding { seq: *next_seq };
                Decision::Guard { seq: *next_seq }
            }
        }
    }

    /// Whether a write planned at `at_secs` is still relied on (keys may expire).
    fn fresh(&self, at_secs: u32) -> bool {
        self.trust_for.is_none_or(|trust| {
            Duration::from_secs(u64::from(self.now_secs.saturating_sub(at_secs))) < trust
        })
    }
}

/// The maps' hasher: a fingerprint is a keyed hash already; hashing it again would only
/// cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only fingerprints are hashed here (through `write_u64`); fold anything else.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Option<u64> = Some(1);

    fn guard_seq(d: Decision) -> u64 {
        match d {
            Decision::Guard { seq } => seq,
            other => panic!("expected a guard, got {other:?}"),
        }
    }

    #[test]
    fn the_first_write_is_guarded_and_its_answer_makes_later_ones_local() {
        let now = Instant::now();
        let mut v = KnownVersions::new(100, 0);
        let seq = guard_seq(v.decide("d", 10, E, now));
        // Until the guard answers, nothing is decided locally.
        assert!(matches!(v.decide("d", 5, E, now), Decision::Guard { .. }));
        let seq2 = guard_seq(v.decide("d", 12, E, now));
        // An answer that is not the latest guard's teaches nothing.
        v.guard_answered("d", seq, 10, E, true, now);
        assert!(matches!(v.decide("d", 11, E, now), Decision::Guard { .. }));
        let seq3 = guard_seq(v.decide("d", 12, E, now));
        assert!(seq3 > seq2);
        v.guard_answered("d", seq3, 12, E, true, now);
        assert_eq!(v.decide("d", 11, E, now), Decision::Stale);
        // Equal is written again, as the guard does.
        assert_eq!(v.decide("d", 12, E, now), Decision::Set);
        assert_eq!(v.decide("d", 20, E, now), Decision::Set);
        assert_eq!(v.decide("d", 19, E, now), Decision::Stale);
    }

    #[test]
    fn forgetting_what_redis_held_keeps_the_guards_still_out() {
        let now = Instant::now();
        let mut v = KnownVersions::new(100, 0);
        let known = guard_seq(v.decide("k", 10, E, now));
        v.guard_answered("k", known, 10, E, true, now);
        let out = guard_seq(v.decide("g", 10, E, now));
        v.forget_known();
        // What was known is gone: the guard decides again.
        assert!(matches!(v.decide("k", 5, E, now), Decision::Guard { .. }));
        // A guard still out runs on the Redis that is there now: its answer still teaches.
        v.guard_answered("g", out, 10, E, true, now);
        assert_eq!(v.decide("g", 9, E, now), Decision::Stale);
    }

    #[test]
    fn a_guard_that_skipped_leaves_the_device_unknown() {
        let now = Instant::now();
        let mut v = KnownVersions::new(100, 0);
        let seq = guard_seq(v.decide("d", 10, E, now));
        v.guard_answered("d", seq, 10, E, false, now);
        // Redis holds something newer than 10, of unknown age: ask the guard again.
        assert!(matches!(v.decide("d", 11, E, now), Decision::Guard { .. }));
    }

    #[test]
    fn another_epoch_or_an_unkeyed_record_goes_through_the_guard() {
        let now = Instant::now();
        let mut v = KnownVersions::new(100, 0);
        let seq = guard_seq(v.decide("d", 10, E, now));
        v.guard_answered("d", seq, 10, E, true, now);
        // A rebalance since: another consumer may have written the key.
        let seq = guard_seq(v.decide("d", 5, Some(2), now));
        v.guard_answered("d", seq, 5, Some(2), false, now);
        assert!(matches!(
            v.decide("d", 30, Some(2), now),
            Decision::Guard { .. }
        ));
        // No Kafka key: not known to be partitioned by device id.
        let mut v = KnownVersions::new(100, 0);
        let seq = guard_seq(v.decide("d", 10, None, now));
        v.guard_answered("d", seq, 10, None, true, now);
        assert!(matches!(v.decide("d", 5, E, now), Decision::Guard { .. }));
    }

    #[test]
    fn with_a_ttl_a_write_is_trusted_only_while_the_key_can_still_exist() {
        let t0 = Instant::now();
        let mut v = KnownVersions::new(100, 10);
        let seq = guard_seq(v.decide("d", 10, E, t0));
        v.guard_answered("d", seq, 10, E, true, t0);
        assert_eq!(
            v.decide("d", 5, E, t0 + Duration::from_secs(8)),
            Decision::Stale
        );
        // The key may have expired: the guard would write even an older update.
        assert!(matches!(
            v.decide("d", 5, E, t0 + Duration::from_secs(10)),
            Decision::Guard { .. }
        ));
    }

    #[test]
    fn deleted_or_refused_devices_are_forgotten() {
        let now = Instant::now();
        let mut v = KnownVersions::new(100, 0);
        assert!(matches!(v.decide("d", 10, E, now), Decision::Guard { .. }));
        v.forget("d");
        assert!(v.is_empty());
        assert!(matches!(v.decide("d", 5, E, now), Decision::Guard { .. }));
    }

    #[test]
    fn memory_stays_bounded_and_keeps_recent_devices() {
        let now = Instant::now();
        let mut v = KnownVersions::new(1000, 0);
        for i in 0..10_000 {
            let id = format!("d{i}");
            let seq = guard_seq(v.decide(&id, 10, E, now));
            v.guard_answered(&id, seq, 10, E, true, now);
            assert!(v.len() <= 1000, "{} entries", v.len());
        }
        // The last few hundred are still known; the first ones went through eviction.
        assert_eq!(v.decide("d9999", 5, E, now), Decision::Stale);
        assert_eq!(v.decide("d9600", 5, E, now), Decision::Stale);
        assert!(matches!(v.decide("d0", 5, E, now), Decision::Guard { .. }));
    }

    #[test]
    fn a_slot_holds_every_state() {
        for state in [
            State::Guarding { seq: 0 },
            State::Guarding { seq: u64::MAX },
            State::Known {
                last_updated_ms: 0,
                epoch: u32::MAX,
                at_secs: 7,
            },
            State::Known {
                last_updated_ms: 253_402_300_799_999,
                epoch: 3,
                at_secs: u32::MAX,
            },
        ] {
            assert_eq!(Slot::from(state).state(), state);
        }
        assert_eq!(std::mem::size_of::<(Fingerprint, Slot)>(), 32);
    }

    #[test]
    fn capacity_zero_always_guards_and_remembers_nothing() {
        let now = Instant::now();
        let mut v = KnownVersions::new(0, 0);
        assert!(matches!(v.decide("d", 10, E, now), Decision::Guard { .. }));
        v.guard_answered("d", 0, 10, E, true, now);
        assert!(matches!(v.decide("d", 5, E, now), Decision::Guard { .. }));
        assert!(v.is_empty());
    }
}
