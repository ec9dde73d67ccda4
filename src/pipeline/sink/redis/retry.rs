//! The retry policy for transient failures, a small type of its own so the writer's loop
//! only asks "how long until the next try".
//!
//! Capped exponential backoff with jitter, never giving up: a cache populator that gave up
//! would have to drop events, and dropping is the one thing it must not do.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn new(initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            initial,
            max: max.max(initial),
        }
    }

    /// A fresh, endless sequence of delays for one failing operation.
    pub fn delays(&self) -> Delays {
        Delays {
            inner: ExponentialBuilder::default()
                .with_min_delay(self.initial)
                .with_max_delay(self.max)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build(),
            max: self.max,
        }
    }
}

/// Endless delays; jitter may add up to one more delay, so the cap is enforced here.
pub struct Delays {
    inner: ExponentialBackoff,
    max: Duration,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.inner.next().unwrap_or(self.max).min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_capped_and_never_end() {
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(200));
        let delays: Vec<Duration> = policy.delays().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays[0] >= Duration::from_millis(10));
        assert!(delays[0] < Duration::from_millis(40));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(delays[20..]
            .iter()
            .all(|d| *d >= Duration::from_millis(100)));
    }
}
