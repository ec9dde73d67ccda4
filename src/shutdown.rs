//! One cancellation everyone listens to. Signals trip it; async tasks await it, and the
//! Kafka thread (plain std) checks the flag between polls.

/// The one cancellation: `tokio-util`'s token, which every task can await
/// (`cancelled()`) and the Kafka thread can poll (`is_cancelled()`) between polls.
pub use tokio_util::sync::CancellationToken as Shutdown;

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
                shutdown.cancel();
            } else {
                tracing::warn!(signal, "second signal: exiting without draining");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
