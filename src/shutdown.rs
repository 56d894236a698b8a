//! Shutdown: the first SIGINT/SIGTERM asks every part to drain (`shutdown`); a second signal,
//! or a drain longer than `pipeline.shutdown_timeout_ms`, stops it hard (`hard_stop`) and the
//! process exits soon after. Offsets committed cover only acknowledged outputs, so whatever a
//! hard stop gives up is re-done by the partition's next owner.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// After a hard stop, how long the pipeline has to return by itself before the process exits.
const HARD_STOP_EXIT: Duration = Duration::from_millis(500);

/// `shutdown` turns true on the first SIGINT/SIGTERM; `hard_stop` when the drain has taken
/// longer than allowed, or on a second signal.
pub fn signals(grace: Duration) -> (watch::Receiver<bool>, watch::Receiver<bool>) {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (hard_tx, hard_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        next_signal(&mut term).await;
        tracing::info!("signal received: draining");
        let _ = shutdown_tx.send(true);
        let why = tokio::select! {
            _ = next_signal(&mut term) => "a second signal",
            _ = tokio::time::sleep(grace) => "shutdown_timeout_ms passed",
        };
        tracing::warn!(reason = why, "shutdown cut short: outputs not yet acknowledged are given up, their input offsets stay uncommitted");
        let _ = hard_tx.send(true);
        // Whatever still blocks (a broker gone, a client's close), the process ends now: the
        // offsets committed cover only acknowledged outputs, so the next owner re-does the rest.
        std::thread::spawn(move || {
            std::thread::sleep(HARD_STOP_EXIT);
            eprintln!("error: shutdown cut short by {why}; exiting with work undelivered (it is re-done from the committed offsets)");
            std::process::exit(3);
        });
    });
    (shutdown_rx, hard_rx)
}

async fn next_signal(term: &mut tokio::signal::unix::Signal) {
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
}

/// Resolves once the watched flag is true (never, if the sender is gone while false).
pub async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
