//! Graceful shutdown: one signal future and a token every task watches.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// A token that is cancelled when the process receives SIGINT or SIGTERM.
pub fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        child.cancel();
    });
    token
}

/// Waits for `tracker`'s tasks to finish, at most `grace`. Returns false when
/// the grace period ran out first.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = tracker.len(),
            ?grace,
            "grace period over, abandoning tasks"
        );
        return false;
    }
    true
}

/// Runs `fut` until it finishes or `token` is cancelled.
pub async fn until_cancelled<F: Future>(token: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = token.cancelled() => None,
        out = fut => Some(out),
    }
}
