//! The pipelines handed to the connection and not answered yet, oldest first.
//!
//! Redis answers one connection in order, so the replies come back in the order the
//! batches went; each batch stays here until its own reply is read, which is what lets the
//! writer go back to it after a failure ([`super::go_back::GoBackN`]) or drop it under a
//! fence.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{FuturesOrdered, StreamExt};

/// A request on its way: resolves to the connection's answer.
pub type Flight<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub struct InFlight<B, T> {
    batches: VecDeque<B>,
    flights: FuturesOrdered<Flight<T>>,
}

impl<B, T> Default for InFlight<B, T> {
    fn default() -> Self {
        InFlight {
            batches: VecDeque::new(),
            flights: FuturesOrdered::new(),
        }
    }
}

impl<B, T> InFlight<B, T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn batches(&self) -> impl Iterator<Item = &B> {
        self.batches.iter()
    }

    /// `batch` went, as `flight`, after every batch already here.
    ///
    /// The flight is polled once, here: a request reaches the connection only when its
    /// future is first polled, and left to the set of flights that first poll can come
    /// late and out of order. Found by `faults_kafka` (a device's older value written last
    /// after a fast replay): once the writer task's cooperative budget is spent, tokio's
    /// channel send inside the flight answers `Pending` before queueing the request; the
    /// flight is put back behind the ones pushed after it, and a later pipeline reaches
    /// Redis first. So the first poll happens now, in the order of these calls, and out of
    /// the budget's reach ([`tokio::task::unconstrained`]): the redis crate queues the
    /// request on it. Its waker is a no-op: the set polls the flight again with its own.
    pub fn push(&mut self, batch: B, flight: Flight<T>)
    where
        T: Send + 'static,
    {
        let mut flight: Flight<T> = Box::pin(tokio::task::unconstrained(flight));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let flight: Flight<T> = match flight.as_mut().poll(&mut cx) {
            Poll::Ready(answer) => Box::pin(std::future::ready(answer)),
            Poll::Pending => flight,
        };
        self.batches.push_back(batch);
        self.flights.push_back(flight);
    }

    /// The answer to the oldest batch ([`front`](Self::front)); `None` when none is in
    /// flight. Cancel-safe: an answer not yet taken stays for the next call.
    pub async fn next(&mut self) -> Option<T> {
        if self.batches.is_empty() {
            return None;
        }
        self.flights.next().await
    }

    /// The oldest batch: the one [`next`](Self::next) answers.
    pub fn front(&self) -> Option<&B> {
        self.batches.front()
    }

    /// The oldest batch, once its answer was read.
    pub fn pop_front(&mut self) -> Option<B> {
        self.batches.pop_front()
    }

    /// Waits until every flight has its answer, and throws the answers away: after a
    /// failure, the batches behind it may or may not have been applied, and only a replay
    /// in order tells.
    pub async fn settle(&mut self) {
        while self.flights.next().await.is_some() {}
    }

    /// Drops every flight (the requests, and whatever connection they hold); the batches
    /// stay, unanswered.
    pub fn abandon(&mut self) {
        self.flights = FuturesOrdered::new();
    }

    /// Every batch, oldest first, with their flights dropped: what a replay starts from.
    pub fn take(&mut self) -> VecDeque<B> {
        self.abandon();
        std::mem::take(&mut self.batches)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn after(ms: u64, answer: u32) -> Flight<u32> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer
        })
    }

    #[tokio::test]
    async fn requests_leave_in_the_order_the_batches_went_even_when_the_budget_is_spent() {
        // Each flight takes a permit of a tokio semaphore before it "sends" (as the redis
        // crate's connection takes a slot of a tokio channel): with the task's cooperative
        // budget spent, that step answers Pending first.
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut inflight = InFlight::new();
        while tokio::task::coop::has_budget_remaining() {
            tokio::task::coop::consume_budget().await;
        }
        for id in 0..4u32 {
            let (gate, sent) = (Arc::clone(&gate), Arc::clone(&sent));
            let flight: Flight<u32> = Box::pin(async move {
                let _permit = gate.acquire().await;
                sent.lock().unwrap().push(id);
                id
            });
            inflight.push(id, flight);
        }
        let mut answers = Vec::new();
        while let Some(answer) = inflight.next().await {
            inflight.pop_front();
            answers.push(answer);
        }
        assert_eq!(answers, [0, 1, 2, 3]);
        assert_eq!(
            *sent.lock().unwrap(),
            [0, 1, 2, 3],
            "the order requests left in"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_come_in_the_order_the_batches_went() {
        let mut inflight = InFlight::new();
        // The later flight finishes first; its answer still waits for the earlier one.
        inflight.push("a", after(30, 1));
        inflight.push("b", after(10, 2));
        assert_eq!(inflight.front(), Some(&"a"));
        assert_eq!(inflight.next().await, Some(1));
        assert_eq!(inflight.pop_front(), Some("a"));
        assert_eq!(inflight.next().await, Some(2));
        assert_eq!(inflight.pop_front(), Some("b"));
        assert!(inflight.is_empty());
        assert_eq!(inflight.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn settling_waits_for_every_flight_and_keeps_the_batches() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut inflight = InFlight::new();
        for (batch, ms) in [("a", 5), ("b", 50), ("c", 20)] {
            let done = Arc::clone(&done);
            inflight.push(
                batch,
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    done.fetch_add(1, Ordering::SeqCst);
                }),
            );
        }
        inflight.settle().await;
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert_eq!(inflight.take(), ["a", "b", "c"]);
        assert!(inflight.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_flights_never_finish() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut inflight = InFlight::new();
        let counter = Arc::clone(&done);
        inflight.push(
            "a",
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        inflight.abandon();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 0);
        assert_eq!(inflight.batches().collect::<Vec<_>>(), [&"a"]);
    }
}
