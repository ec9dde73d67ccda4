//! When a batch goes: the records waiting for the next pipeline, and the linger clock.
//!
//! A batch goes when it is full, when its first record has lingered `linger`, or at once
//! if nothing is in flight: an idle connection gains nothing from waiting, and the events
//! arriving during one round trip make the next batch (under load the batches fill before
//! the linger, so throughput keeps its big pipelines).

use std::time::Duration;

use tokio::time::Instant;

use crate::pipeline::record::Record;

pub struct Batcher {
    pending: Vec<Record>,
    /// When the oldest waiting record has lingered long enough; `None` while none waits.
    deadline: Option<Instant>,
    max_batch: usize,
    linger: Duration,
}

impl Batcher {
    pub fn new(max_batch: usize, linger: Duration) -> Batcher {
        let max_batch = max_batch.max(1);
        Batcher {
            pending: Vec::with_capacity(max_batch),
            deadline: None,
            max_batch,
            linger,
        }
    }

    /// Whether more records may be taken in before the next batch goes.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.max_batch
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Where arriving records go; call [`arrived`](Self::arrived) after adding.
    pub fn pending_mut(&mut self) -> &mut Vec<Record> {
        &mut self.pending
    }

    /// Starts the linger clock if records wait and it is not running.
    pub fn arrived(&mut self) {
        if self.deadline.is_none() && !self.pending.is_empty() {
            self.deadline = Some(Instant::now() + self.linger);
        }
    }

    /// Whether a batch should go now: `closing` (the input ended), nothing `in_flight`, a
    /// full batch, or the linger passed.
    pub fn due(&self, closing: bool, in_flight: usize) -> bool {
        !self.pending.is_empty()
            && (closing
                || in_flight == 0
                || self.pending.len() >= self.max_batch
                || self.deadline.is_some_and(|d| Instant::now() >= d))
    }

    /// The next batch: at most `max_batch` records, oldest first. What stays behind
    /// (a chunk brought more than a full batch) lingers afresh.
    pub fn take(&mut self) -> Vec<Record> {
        let batch = if self.pending.len() > self.max_batch {
            self.pending.drain(..self.max_batch).collect()
        } else {
            std::mem::replace(&mut self.pending, Vec::with_capacity(self.max_batch))
        };
        self.deadline = (!self.pending.is_empty()).then(|| Instant::now() + self.linger);
        batch
    }

    /// Resolves when the linger passes; never while no record waits.
    pub async fn linger_passed(&self) {
        match self.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limits, TopicKind};
    use crate::pipeline::record::{Chunk, Origin};

    fn records(n: usize) -> Vec<Record> {
        let mut chunk = Chunk::new();
        for offset in 0..n as i64 {
            let origin = Origin {
                topic: TopicKind::Device,
                partition: 0,
                offset,
                generation: 1,
            };
            chunk.push(origin, 1, Some(b"d"), None);
        }
        chunk.decode(&Limits::default()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_goes_when_full_idle_lingered_or_closing() {
        let mut b = Batcher::new(4, Duration::from_millis(5));
        assert!(!b.due(true, 0), "nothing waits");
        b.pending_mut().extend(records(2));
        b.arrived();
        assert!(b.due(false, 0), "nothing in flight: at once");
        assert!(!b.due(false, 1), "in flight, not full, not lingered");
        assert!(b.due(true, 1), "closing");
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(b.due(false, 1), "lingered");
        assert_eq!(b.take().len(), 2);
        assert!(b.is_empty());
        b.pending_mut().extend(records(4));
        b.arrived();
        assert!(!b.has_room());
        assert!(b.due(false, 3), "full");
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_a_batch_leaves_the_rest_lingering_afresh() {
        let mut b = Batcher::new(3, Duration::from_millis(5));
        b.pending_mut().extend(records(7));
        b.arrived();
        tokio::time::advance(Duration::from_millis(4)).await;
        assert_eq!(b.take().len(), 3);
        assert_eq!(b.pending_mut().len(), 4);
        tokio::time::advance(Duration::from_millis(4)).await;
        assert!(b.due(false, 1), "still more than a full batch");
        assert_eq!(b.take().len(), 3);
        assert!(!b.due(false, 1), "one left, its linger started again");
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(b.due(false, 1));
        b.linger_passed().await;
    }
}
