//! Shutdown, in three steps: detect ([`signal`]: SIGTERM from ECS, or SIGINT at a terminal), tell (the
//! `CancellationToken` that every task watches) and wait (the `TaskTracker`, under [`GRACE`]). The files
//! stay in place: ECS stops the app first (reverse `dependsOn` order), but an app still draining must
//! still be able to open connections.

use std::time::Duration;

/// How long tasks get to finish after the signal: well inside ECS's default `stopTimeout` of 30 s, and
/// inside the 2 s docs/http-api.md promises.
pub const GRACE: Duration = Duration::from_millis(1500);

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}
