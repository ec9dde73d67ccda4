//! Go back N: after a transient failure, the failed batch and every batch sent after it
//! are sent again, in order, one at a time, until Redis takes each; between failed tries
//! the writer waits as the [`RetryPolicy`] says.
//!
//! Replaying a suffix of the stream in order is safe because every command metacache
//! sends is idempotent under it (the stale guard for devices, set semantics for metric
//! names); sending one batch at a time keeps a second failure from reordering anything.
//! This type holds the queue and the failure state; the writer does the sending.

use std::collections::VecDeque;
use std::time::Duration;

use super::retry::{Delays, RetryPolicy};

pub struct GoBackN<B> {
    queue: VecDeque<B>,
    /// Why the last try failed; `None` once a batch went through since.
    failure: Option<String>,
    /// The last failure said the scripts are gone (`NOSCRIPT`).
    reload_scripts: bool,
    policy: RetryPolicy,
    delays: Delays,
    /// Some try failed while this replay ran (so "writes succeed again" is worth saying).
    was_down: bool,
}

/// The wait before the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub delay: Duration,
    /// The first wait of this replay: the one worth a warning.
    pub first: bool,
}

impl<B> GoBackN<B> {
    /// A replay of `queue` (oldest first) after a failure said `reason`.
    pub fn new(
        queue: VecDeque<B>,
        reason: String,
        reload_scripts: bool,
        policy: RetryPolicy,
    ) -> Self {
        GoBackN {
            queue,
            failure: Some(reason),
            reload_scripts,
            policy,
            delays: policy.delays(),
            was_down: false,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn batches(&self) -> impl Iterator<Item = &B> {
        self.queue.iter()
    }

    /// Why the last try failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Whether the scripts must be loaded again before the next try.
    pub fn wants_scripts(&self) -> bool {
        self.reload_scripts
    }

    /// The next try failed too (or could not be made).
    pub fn failed(&mut self, reason: String, reload_scripts: bool) {
        self.failure = Some(reason);
        self.reload_scripts |= reload_scripts;
    }

    /// How long to wait before the next try: `None` right after a success (the next
    /// batch goes at once); otherwise the next delay, growing from the policy's initial
    /// delay to its cap.
    pub fn backoff(&mut self) -> Option<Backoff> {
        self.failure.as_ref()?;
        let first = !self.was_down;
        self.was_down = true;
        let delay = self.delays.next().unwrap_or(self.policy.max);
        Some(Backoff { delay, first })
    }

    /// The oldest batch not yet taken by Redis, to send now.
    pub fn take_next(&mut self) -> Option<B> {
        self.queue.pop_front()
    }

    /// `batch` (from [`take_next`](Self::take_next), maybe planned again) goes back to the front
    /// while its try is under way.
    pub fn put_back(&mut self, batch: B) {
        self.queue.push_front(batch);
    }

    /// Redis took the front batch: drops it and starts the delays afresh.
    pub fn succeeded(&mut self) -> Option<B> {
        self.failure = None;
        self.reload_scripts = false;
        self.delays = self.policy.delays();
        self.queue.pop_front()
    }

    /// Whether some try failed during this replay.
    pub fn was_down(&self) -> bool {
        self.was_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(batches: &[u32]) -> GoBackN<u32> {
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(80));
        GoBackN::new(
            batches.iter().copied().collect(),
            "boom".into(),
            false,
            policy,
        )
    }

    #[test]
    fn batches_go_in_order_and_a_failed_one_is_tried_again_first() {
        let mut r = replay(&[1, 2, 3]);
        assert!(r.backoff().is_some_and(|b| b.first));
        let first = r.take_next();
        assert_eq!(first, Some(1));
        r.put_back(1);
        r.failed("still down".into(), false);
        assert_eq!(r.failure(), Some("still down"));
        assert!(r.backoff().is_some_and(|b| !b.first));
        let again = r.take_next();
        assert_eq!(again, Some(1));
        r.put_back(1);
        assert_eq!(r.succeeded(), Some(1));
        // After a success the next batch goes without waiting.
        assert_eq!(r.backoff(), None);
        assert_eq!(r.batches().copied().collect::<Vec<_>>(), [2, 3]);
        assert!(r.was_down() && !r.is_empty());
    }

    #[test]
    fn delays_grow_to_the_cap_and_start_afresh_after_a_success() {
        let mut r = replay(&[1, 2]);
        let delays: Vec<Duration> = (0..8)
            .filter_map(|_| r.backoff())
            .map(|b| b.delay)
            .collect();
        assert_eq!(delays.len(), 8);
        assert!(delays[0] < Duration::from_millis(40));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        assert!(delays[7] >= Duration::from_millis(40));
        r.succeeded();
        r.failed("down again".into(), false);
        assert!(r
            .backoff()
            .is_some_and(|b| b.delay < Duration::from_millis(40)));
    }

    #[test]
    fn noscript_is_remembered_until_a_success() {
        let mut r = replay(&[1]);
        assert!(!r.wants_scripts());
        r.failed("NOSCRIPT".into(), true);
        r.failed("LOADING".into(), false);
        assert!(r.wants_scripts());
        r.succeeded();
        assert!(!r.wants_scripts() && r.failure().is_none() && r.is_empty());
    }
}
