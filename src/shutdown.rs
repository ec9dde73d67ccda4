//! One cancellation everyone listens to. Signals trip it; async tasks await it, and the
//! Kafka thread (plain std) checks the flag between polls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    triggered: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything to stop; idempotent.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Resolves once [`trigger`](Self::trigger) was called (at once if it already was).
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

/// Trips `shutdown` on the first SIGTERM/SIGINT; a second one exits at once with code 130,
/// for an operator who does not want to wait for the drain.
pub fn install_signal_handlers(shutdown: Shutdown) -> std::io::Result<()> {
    use futures::StreamExt;
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
    tokio::spawn(async move {
        let mut seen = 0;
        while let Some(signal) = signals.next().await {
            seen += 1;
            if seen == 1 {
                tracing::info!(signal, "shutdown requested: draining, then committing");
                shutdown.trigger();
            } else {
                tracing::warn!(signal, "second signal: exiting without draining");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_trigger_even_if_triggered_first() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        s.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("waiter woke")
            .expect("task ok");
        // Already triggered: returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), s.wait())
            .await
            .expect("immediate");
    }
}
